//! `[dns]`: listen addresses, `[[dns.zone]]` with their static records,
//! and the geo names of `[[dns.geo]]`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use toml::de::DeValue;

use super::geoip;
use super::model::*;
use super::record::{mailbox, owner_name, record_data, record_type};
use super::values::{dns_name, in_zone, parse_cidr, parse_socket};
use super::walk::{Ctx, Field, Tbl, first_seen};

/// The most data centers one failed data center's clients are spread over.
const MAX_SPILL_OVER: i64 = 64;

const SOA_EXAMPLE: &str = "{ mname = \"ns1.mysite.com.\", rname = \"hostmaster.mysite.com.\", \
     serial = 1, refresh = \"1h\", retry = \"10m\", expire = \"14d\", minimum = \"60s\" }";

const DNSSEC_KEY_EXAMPLE: &str = "{ file = \"keys/mysite.com.pem\", role = \"csk\" }";
const DNSSEC_KEYS_EXAMPLE: &str = "[{ file = \"keys/mysite.com.pem\", role = \"csk\" }]";
const DNSSEC_EXAMPLE: &str = "{ keys = [{ file = \"keys/mysite.com.pem\", role = \"csk\" }], validity = \"14d\", refresh = \"7d\" }";

/// A zone as far as it could be validated: later checks (geo names, nested
/// zones) need its origin and good records even when something else in it
/// is bad.
struct ParsedZone<'t, 'i> {
    origin: Option<String>,
    /// Each valid record with its table, where conflicts are reported.
    records: Vec<(Field<'t, 'i>, RecordConfig)>,
    config: Option<ZoneConfig>,
}

/// `cookie_secret`: 128 bits in hex, as BIND's `cookie-secret` (siphash24).
fn cookie_secret(s: &str) -> Result<[u8; 16], String> {
    const FORM: &str = "expected 32 hex digits (128 bits), like \"e5b8c8f5a4b0c1d2e3f405162738495a\"; \
         generate one with `openssl rand -hex 16`";
    hex(s)
        .ok()
        .and_then(|octets| <[u8; 16]>::try_from(octets).ok())
        .ok_or_else(|| FORM.to_owned())
}

/// An identity is one TXT character-string (RFC 1035 §3.3) at most.
const IDENTITY_MAX: usize = 255;

fn identity_octets(octets: Vec<u8>) -> Result<Identity, String> {
    match octets.len() {
        0 => Err("empty: set false to give none".to_owned()),
        n if n > IDENTITY_MAX => Err(format!(
            "{n} octets: at most {IDENTITY_MAX} (one TXT string)"
        )),
        _ => Ok(Identity::Text(octets)),
    }
}

/// Hex digits (an even number of them) as octets.
fn hex(s: &str) -> Result<Vec<u8>, String> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("expected an even number of hex digits, like \"6e73312d667261\"".to_owned());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| e.to_string()))
        .collect()
}

/// A TSIG secret in base64, as `keymgr`, `tsig-keygen` and `knotc` print it.
fn tsig_secret(s: &str) -> Result<Vec<u8>, String> {
    const FORM: &str = "expected the key in base64, like \"gF8Ac3x4q9PZTaGaJ1cPrqCB4nYn1mS2rhVfQkX2dAk=\"; \
         generate one with `keymgr -t NAME hmac-sha256` or `openssl rand -base64 32`";
    let bytes = data_encoding::BASE64
        .decode(s.trim().as_bytes())
        .map_err(|_| FORM.to_owned())?;
    if bytes.is_empty() {
        return Err(FORM.to_owned());
    }
    Ok(bytes)
}

/// A `secret_file`'s key: its base64 text (whitespace around it ignored).
pub fn read_tsig_secret(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    tsig_secret(&text)
}

impl Ctx {
    pub(super) fn dns(&mut self, f: &Field<'_, '_>, dc_names: &[String]) -> Option<DnsConfig> {
        self.table(f, "expected a [dns] table", |c, t| {
            let listen = c.req(t, "listen", "[\"127.0.0.1:53\"]", |c, f| {
                let items = c.array(f, "expected a list of addresses like [\"127.0.0.1:53\"]")?;
                if items.is_empty() {
                    c.bad(
                        f,
                        "list at least one address to serve DNS on, like [\"127.0.0.1:53\"]",
                    );
                    return None;
                }
                c.each(&items, Ctx::bind)
            });
            let udp_threads = c.opt(t, "udp_threads", 1, |c, f| c.uint(f, 1, 64));
            let query_log = c.opt(t, "query_log", 0.0, Ctx::fraction);
            let tsig = c.opt(t, "tsig", Vec::new(), Ctx::tsig_keys);
            let key_names: Vec<String> = tsig
                .iter()
                .flatten()
                .map(|k: &TsigKeyConfig| k.name.clone())
                .collect();
            let ixfr_versions = c.opt(t, "ixfr_versions", 10, |c, f| c.uint(f, 1, 1000));
            let zones = t
                .field("zone")
                .map(|f| c.zones(&f, &key_names))
                .unwrap_or_default();
            c.records_in_child_zones(&zones);
            let geo = c.opt(t, "geo", Vec::new(), |c, f| c.geos(f, &zones, dc_names));
            let zones: Option<Vec<ZoneConfig>> = zones.into_iter().map(|z| z.config).collect();
            let rrl = c.opt(t, "rrl", RrlConfig::default(), Ctx::rrl);
            let cookie_secret = c.maybe(t, "cookie_secret", |c, f| c.parsed(f, cookie_secret));
            let tcp = c.dns_tcp(t);
            let nsid = c.opt(t, "nsid", Identity::HostName, |c, f| {
                c.identity(f, Identity::HostName, true)
            });
            let chaos = c.opt(t, "chaos", ChaosConfig::default(), Ctx::chaos);
            Some(DnsConfig {
                listen: listen?,
                udp_threads: udp_threads? as usize,
                query_log: query_log?,
                zones: zones?,
                geo: geo?,
                rrl: rrl?,
                cookie_secret: cookie_secret?,
                tcp: tcp?,
                nsid: nsid?,
                chaos: chaos?,
                tsig: tsig?,
                ixfr_versions: ixfr_versions? as usize,
            })
        })
    }

    fn chaos(&mut self, f: &Field<'_, '_>) -> Option<ChaosConfig> {
        self.table(
            f,
            "expected a table like [dns.chaos] version_bind = true",
            |c, t| {
                let d = ChaosConfig::default();
                let host =
                    |c: &mut Ctx, f: &Field<'_, '_>| c.identity(f, Identity::HostName, false);
                let id_server = c.opt(t, "id_server", d.id_server, host);
                let hostname_bind = c.opt(t, "hostname_bind", d.hostname_bind, host);
                let version_bind = c.opt(t, "version_bind", d.version_bind, |c, f| {
                    c.identity(f, Identity::Version, false)
                });
                Some(ChaosConfig {
                    id_server: id_server?,
                    hostname_bind: hostname_bind?,
                    version_bind: version_bind?,
                })
            },
        )
    }

    /// An identity: false, true (`on`), a string, or (`hex_ok`, for NSID,
    /// which is binary) `{ hex = "..." }`.
    fn identity(&mut self, f: &Field<'_, '_>, on: Identity, hex_ok: bool) -> Option<Identity> {
        let expected = if hex_ok {
            "expected true, false, a string like \"ns1-fra\" or { hex = \"6e73312d667261\" }"
        } else {
            "expected true, false or a string like \"ns1-fra\""
        };
        match f.get() {
            DeValue::Boolean(true) => Some(on),
            DeValue::Boolean(false) => Some(Identity::Off),
            DeValue::String(_) => self.parsed(f, |s| identity_octets(s.as_bytes().to_vec())),
            DeValue::Table(_) if hex_ok => self.table(f, expected, |c, t| {
                c.req(t, "hex", "\"6e73312d667261\"", |c, f| {
                    c.parsed(f, |s| identity_octets(hex(s)?))
                })
            }),
            _ => {
                self.bad(f, expected);
                None
            }
        }
    }

    fn rrl(&mut self, f: &Field<'_, '_>) -> Option<RrlConfig> {
        self.table(
            f,
            "expected a table like [dns.rrl] responses_per_second = 1000",
            |c, t| {
                let d = RrlConfig::default();
                let rate = c.opt(t, "responses_per_second", d.responses_per_second, |c, f| {
                    c.uint(f, 0, 1_000_000)
                });
                let slip = c.opt(t, "slip", d.slip, |c, f| c.uint(f, 0, 100));
                let v4 = c.opt(t, "ipv4_prefix_length", d.ipv4_prefix_length, |c, f| {
                    c.uint(f, 8, 32).map(|n| n as u8)
                });
                let v6 = c.opt(t, "ipv6_prefix_length", d.ipv6_prefix_length, |c, f| {
                    c.uint(f, 16, 128).map(|n| n as u8)
                });
                Some(RrlConfig {
                    responses_per_second: rate?,
                    slip: slip?,
                    ipv4_prefix_length: v4?,
                    ipv6_prefix_length: v6?,
                })
            },
        )
    }

    fn dns_tcp(&mut self, t: &Tbl<'_, '_>) -> Option<DnsTcpConfig> {
        let d = DnsTcpConfig::default();
        let max_connections = self.opt(t, "tcp_max_connections", d.max_connections, |c, f| {
            c.uint(f, 1, 1_000_000)
        });
        let idle_timeout = self.opt(t, "tcp_idle_timeout", d.idle_timeout, |c, f| {
            c.duration(f, false)
        });
        let max_queries = self.opt(t, "tcp_max_queries", d.max_queries, |c, f| {
            c.uint(f, 0, u32::MAX.into())
        });
        Some(DnsTcpConfig {
            max_connections: max_connections?,
            idle_timeout: idle_timeout?,
            max_queries: max_queries?,
        })
    }

    fn tsig_keys(&mut self, f: &Field<'_, '_>) -> Option<Vec<TsigKeyConfig>> {
        let items = self.array(f, "expected [[dns.tsig]] tables (note the double brackets)")?;
        let mut seen = HashMap::new();
        self.each(&items, |c, item| {
            c.table(item, "expected a [[dns.tsig]] table", |c, t| {
                let name = c.req(t, "name", "\"xfr-key\"", |c, f| {
                    let name = c.parsed(f, |s| dns_name(s, None, false))?;
                    if let Some(first) = first_seen(&mut seen, name.clone(), &f.path) {
                        c.bad(f, format!("duplicate key: {first} has the same name"));
                    }
                    Some(name)
                });
                let algorithm = c.opt(t, "algorithm", TsigAlgorithm::HmacSha256, |c, f| {
                    c.choice(
                        f,
                        &[
                            ("hmac-sha256", TsigAlgorithm::HmacSha256),
                            ("hmac-sha384", TsigAlgorithm::HmacSha384),
                            ("hmac-sha512", TsigAlgorithm::HmacSha512),
                            ("hmac-sha1", TsigAlgorithm::HmacSha1),
                        ],
                    )
                });
                let inline = c.maybe(t, "secret", |c, f| c.parsed(f, tsig_secret));
                let file = c.maybe(t, "secret_file", Ctx::path);
                let secret = match (inline?, file?) {
                    (Some(bytes), None) => TsigSecret::Bytes(bytes),
                    (None, Some(path)) => TsigSecret::File(path),
                    (Some(_), Some(_)) => {
                        if let Some(f) = t.field("secret_file") {
                            c.bad(&f, "give the secret once: secret or secret_file, not both");
                        }
                        return None;
                    }
                    (None, None) => {
                        c.missing(t, "secret", "\"base64 from `keymgr -t NAME hmac-sha256`\"");
                        return None;
                    }
                };
                Some(TsigKeyConfig {
                    name: name?,
                    algorithm: algorithm?,
                    secret,
                })
            })
        })
    }

    /// `transfer = { allow = [...], key = "..." }` of a zone.
    fn transfer(&mut self, f: &Field<'_, '_>, keys: &[String]) -> Option<TransferConfig> {
        self.table(
            f,
            "expected a table like { allow = [\"192.0.2.2/32\"], key = \"xfr-key\" }",
            |c, t| {
                let allow = c.req(t, "allow", "[\"192.0.2.2/32\"]", |c, f| {
                    let items =
                        c.array(f, "expected a list of networks like [\"192.0.2.2/32\"]")?;
                    if items.is_empty() {
                        c.bad(f, "list at least one network allowed to transfer the zone");
                        return None;
                    }
                    c.each(&items, |c, item| c.parsed(item, parse_cidr))
                });
                let key = c.maybe(t, "key", |c, f| {
                    let name = c.parsed(f, |s| dns_name(s, None, false))?;
                    if keys.contains(&name) {
                        return Some(name);
                    }
                    let defined = if keys.is_empty() {
                        "none is defined".to_owned()
                    } else {
                        format!("defined: {}", keys.join(", "))
                    };
                    c.bad(f, format!("no [[dns.tsig]] key has this name; {defined}"));
                    None
                });
                Some(TransferConfig {
                    allow: allow?,
                    key: key?,
                })
            },
        )
    }

    fn zones<'t, 'i>(&mut self, f: &Field<'t, 'i>, keys: &[String]) -> Vec<ParsedZone<'t, 'i>> {
        let Some(items) = self.array(f, "expected [[dns.zone]] tables (note the double brackets)")
        else {
            return Vec::new();
        };
        let mut seen = HashMap::new();
        items
            .iter()
            .filter_map(|item| {
                self.table(item, "expected a [[dns.zone]] table", |c, t| {
                    Some(c.zone(t, &mut seen, keys))
                })
            })
            .collect()
    }

    fn zone<'t, 'i>(
        &mut self,
        t: &Tbl<'t, 'i>,
        seen: &mut HashMap<String, String>,
        keys: &[String],
    ) -> ParsedZone<'t, 'i> {
        let origin = self.req(t, "origin", "\"mysite.com\"", |c, f| {
            let origin = c.parsed(f, |s| dns_name(s, None, false))?;
            if let Some(first) = first_seen(seen, origin.clone(), &f.path) {
                c.bad(f, format!("duplicate zone: {first} is the same"));
            }
            Some(origin)
        });
        let ttl = self.opt(t, "ttl", 3600, Ctx::ttl);
        // With a bad origin, relative names are still checked, against the root.
        let rel = origin.clone().unwrap_or_else(|| ".".to_owned());
        let soa = self.req(t, "soa", SOA_EXAMPLE, |c, f| c.soa(f, &rel));
        let ns = self.req(t, "ns", "[\"ns1.mysite.com.\"]", |c, f| c.ns_list(f, &rel));
        let file = self.maybe(t, "file", Ctx::path);
        let (records, records_ok) = match t.field("records") {
            Some(f) => self.records(&f, &rel, ttl.unwrap_or(3600)),
            None => (Vec::new(), true),
        };
        self.record_rules(&rel, &records);
        let dnssec = self.maybe(t, "dnssec", Ctx::dnssec);
        let transfer = self.maybe(t, "transfer", |c, f| c.transfer(f, keys));
        let notify = self.opt(t, "notify", Vec::new(), |c, f| {
            let items = c.array(f, "expected a list of addresses like [\"192.0.2.2:53\"]")?;
            c.each(&items, |c, item| c.parsed(item, |s| parse_socket(s, false)))
        });
        if let (Some(f), Some(None)) = (t.field("notify"), &transfer) {
            self.bad(
                &f,
                "a secondary sent NOTIFY could not transfer the zone: add transfer = { allow = [...] }",
            );
        }
        let config = match (
            origin.clone(),
            ttl,
            soa,
            ns,
            file,
            records_ok,
            dnssec,
            transfer,
            notify,
        ) {
            (
                Some(origin),
                Some(ttl),
                Some(soa),
                Some(ns),
                Some(file),
                true,
                Some(dnssec),
                Some(transfer),
                Some(notify),
            ) => Some(ZoneConfig {
                origin,
                ttl,
                soa,
                ns,
                file,
                records: records.iter().map(|(_, r)| r.clone()).collect(),
                dnssec,
                transfer,
                notify,
            }),
            _ => None,
        };
        ParsedZone {
            origin,
            records,
            config,
        }
    }

    fn dnssec(&mut self, f: &Field<'_, '_>) -> Option<DnssecConfig> {
        self.table(f, &format!("expected a table like {DNSSEC_EXAMPLE}"), |c, t| {
            let keys = c.req(t, "keys", DNSSEC_KEYS_EXAMPLE, |c, f| {
                let items = c.array(f, &format!("expected a list like {DNSSEC_KEYS_EXAMPLE}"))?;
                let mut seen = HashMap::new();
                let keys = c.each(&items, |c, item| c.dnssec_key(item, &mut seen))?;
                let signs = |role: KeyRole| {
                    keys.iter().any(|k| {
                        k.state == KeyState::Active && (k.role == role || k.role == KeyRole::Csk)
                    })
                };
                if !signs(KeyRole::Ksk) || !signs(KeyRole::Zsk) {
                    c.bad(
                        f,
                        "the zone needs an active key for its DNSKEY set (role \"ksk\" or \"csk\") \
                         and one for the rest (\"zsk\" or \"csk\"): set state = \"active\" on one",
                    );
                    return None;
                }
                Some(keys)
            });
            let validity = c.opt(t, "validity", Duration::from_secs(14 * 86400), |c, f| {
                c.duration(f, false)
            });
            let refresh = c.opt(t, "refresh", Duration::from_secs(7 * 86400), |c, f| {
                c.duration(f, false)
            });
            let (validity, refresh) = (validity?, refresh?);
            // A signature is backdated an hour and must outlive a refresh.
            if validity < Duration::from_secs(2 * 3600) || refresh >= validity {
                c.err(
                    t.key_path("refresh"),
                    t.offset,
                    format!(
                        "refresh ({}s) must be shorter than validity ({}s), and validity at least 2h: \
                         signatures are made anew when less than refresh is left",
                        refresh.as_secs(),
                        validity.as_secs()
                    ),
                );
                return None;
            }
            Some(DnssecConfig {
                keys: keys?,
                validity,
                refresh,
            })
        })
    }

    fn dnssec_key(
        &mut self,
        f: &Field<'_, '_>,
        seen: &mut HashMap<PathBuf, String>,
    ) -> Option<DnssecKeyConfig> {
        self.table(
            f,
            &format!("expected a table like {DNSSEC_KEY_EXAMPLE}"),
            |c, t| {
                let file = c.req(t, "file", "\"keys/mysite.com.pem\"", |c, f| {
                    let path = c.path(f)?;
                    if let Some(first) = first_seen(seen, path.clone(), &f.path) {
                        c.bad(f, format!("the same key file as {first}"));
                    }
                    Some(path)
                });
                let role = c.req(t, "role", "\"csk\"", |c, f| {
                    c.choice(
                        f,
                        &[
                            ("csk", KeyRole::Csk),
                            ("ksk", KeyRole::Ksk),
                            ("zsk", KeyRole::Zsk),
                        ],
                    )
                });
                let state = c.opt(t, "state", KeyState::Active, |c, f| {
                    c.choice(
                        f,
                        &[
                            ("active", KeyState::Active),
                            ("publish", KeyState::Publish),
                            ("retire", KeyState::Retire),
                        ],
                    )
                });
                Some(DnssecKeyConfig {
                    file: file?,
                    role: role?,
                    state: state?,
                })
            },
        )
    }

    fn soa(&mut self, f: &Field<'_, '_>, origin: &str) -> Option<SoaConfig> {
        self.table(
            f,
            &format!("expected a table like {SOA_EXAMPLE}"),
            |c, t| {
                let mname = c.req(t, "mname", "\"ns1.mysite.com.\"", |c, f| {
                    c.parsed(f, |s| dns_name(s, Some(origin), false))
                });
                let rname = c.req(t, "rname", "\"hostmaster.mysite.com.\"", |c, f| {
                    c.parsed(f, |s| mailbox(s, origin))
                });
                let serial = c.req(t, "serial", "2026112701", |c, f| {
                    c.uint(f, 0, u32::MAX.into())
                });
                let refresh = c.req(t, "refresh", "\"1h\"", |c, f| c.soa_timer(f, false));
                let retry = c.req(t, "retry", "\"10m\"", |c, f| c.soa_timer(f, false));
                let expire = c.req(t, "expire", "\"14d\"", |c, f| c.soa_timer(f, false));
                // A negative-caching time of 0 is legitimate: do not cache misses.
                let minimum = c.req(t, "minimum", "\"60s\"", |c, f| c.soa_timer(f, true));
                Some(SoaConfig {
                    mname: mname?,
                    rname: rname?,
                    serial: serial?,
                    refresh: refresh?,
                    retry: retry?,
                    expire: expire?,
                    minimum: minimum?,
                })
            },
        )
    }

    /// SOA timers go on the wire as 32-bit seconds.
    fn soa_timer(&mut self, f: &Field<'_, '_>, zero_ok: bool) -> Option<Duration> {
        let d = self.duration(f, zero_ok)?;
        if d.subsec_nanos() != 0 {
            self.bad(f, "SOA timers are whole seconds");
            return None;
        }
        Some(d)
    }

    fn ns_list(&mut self, f: &Field<'_, '_>, origin: &str) -> Option<Vec<String>> {
        let items = self.array(
            f,
            "expected a list of name servers like [\"ns1.mysite.com.\"]",
        )?;
        if items.is_empty() {
            self.bad(
                f,
                "list at least one name server, like [\"ns1.mysite.com.\"]",
            );
            return None;
        }
        let mut seen = HashMap::new();
        self.each(&items, |c, item| {
            let name = c.parsed(item, |s| dns_name(s, Some(origin), false))?;
            if let Some(first) = first_seen(&mut seen, name.clone(), &item.path) {
                c.bad(item, format!("listed twice (also {first})"));
            }
            Some(name)
        })
    }

    /// The valid records, and whether all were valid.
    fn records<'t, 'i>(
        &mut self,
        f: &Field<'t, 'i>,
        origin: &str,
        zone_ttl: u32,
    ) -> (Vec<(Field<'t, 'i>, RecordConfig)>, bool) {
        let Some(items) = self.array(
            f,
            "expected a list like [{ name = \"www\", type = \"A\", value = \"192.0.2.1\" }]",
        ) else {
            return (Vec::new(), false);
        };
        let mut out = Vec::new();
        let mut ok = true;
        for item in items {
            match self.record(&item, origin, zone_ttl) {
                Some(record) => out.push((item, record)),
                None => ok = false,
            }
        }
        (out, ok)
    }

    fn record(&mut self, f: &Field<'_, '_>, origin: &str, zone_ttl: u32) -> Option<RecordConfig> {
        self.table(
            f,
            "expected a table like { name = \"www\", type = \"A\", value = \"192.0.2.1\" }",
            |c, t| {
                let name = c.req(t, "name", "\"www\"", |c, f| {
                    c.parsed(f, |s| owner_name(s, origin))
                });
                let rtype = c.req(t, "type", "\"A\"", |c, f| c.parsed(f, record_type));
                let data = match rtype {
                    Some(rtype) => c.req(t, "value", rtype.example(), |c, f| {
                        c.parsed(f, |s| record_data(rtype, s, origin))
                    }),
                    // Unreadable without a type, but still a key of records.
                    None => {
                        t.field("value");
                        None
                    }
                };
                let ttl = c.opt(t, "ttl", zone_ttl, Ctx::ttl);
                Some(RecordConfig {
                    name: name?,
                    ttl: ttl?,
                    data: data?,
                })
            },
        )
    }

    /// Rules between the records of one zone.
    fn record_rules(&mut self, origin: &str, records: &[(Field<'_, '_>, RecordConfig)]) {
        let mut seen = HashMap::new();
        let mut rrset_ttls: HashMap<_, (u32, &str)> = HashMap::new();
        let mut by_owner: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, (f, r)) in records.iter().enumerate() {
            match &r.data {
                RecordData::Ns(_) if r.name != origin => self.bad(
                    f,
                    format!(
                        "an NS record below the apex would delegate {} to other servers, \
                         which geolb does not do; serve it as its own [[dns.zone]]",
                        r.name
                    ),
                ),
                RecordData::Cname(_) if r.name == origin => self.bad(
                    f,
                    "a CNAME cannot be at the zone apex, which holds the SOA and NS records",
                ),
                _ => {}
            }
            let key = (r.name.clone(), format!("{:?}", r.data));
            if let Some(first) = first_seen(&mut seen, key, &f.path) {
                self.bad(
                    f,
                    format!("duplicate record: {first} has the same name, type and value"),
                );
            }
            // RFC 2181 §5.2: the records of one name and type share one TTL.
            let rrset = (r.name.as_str(), std::mem::discriminant(&r.data));
            match rrset_ttls.get(&rrset) {
                Some((ttl, first)) if *ttl != r.ttl => self.bad(
                    f,
                    format!(
                        "{first} has the same name and type with ttl = {ttl}: \
                         records of one name and type share one TTL"
                    ),
                ),
                Some(_) => {}
                None => {
                    rrset_ttls.insert(rrset, (r.ttl, f.path.as_str()));
                }
            }
            by_owner.entry(r.name.as_str()).or_default().push(i);
        }
        for indexes in by_owner.values() {
            let has_cname = indexes
                .iter()
                .any(|&i| matches!(records[i].1.data, RecordData::Cname(_)));
            if let [first, rest @ ..] = indexes.as_slice()
                && has_cname
            {
                let first = &records[*first].0.path;
                for &i in rest {
                    let (f, r) = &records[i];
                    let message = format!(
                        "{first} is also at {}, and a CNAME must be the only record at its name",
                        r.name
                    );
                    self.bad(f, message);
                }
            }
        }
    }

    /// A record inside a nested zone would never be served from the parent.
    fn records_in_child_zones(&mut self, zones: &[ParsedZone<'_, '_>]) {
        let origins: Vec<&str> = zones.iter().filter_map(|z| z.origin.as_deref()).collect();
        for zone in zones {
            let Some(origin) = zone.origin.as_deref() else {
                continue;
            };
            for (f, r) in &zone.records {
                if let Some(child) = origins
                    .iter()
                    .find(|o| **o != origin && in_zone(o, origin) && in_zone(&r.name, o))
                {
                    let message = format!(
                        "{} lies in the zone {child}, which answers for it: move the record there",
                        r.name
                    );
                    self.bad(f, message);
                }
            }
        }
    }

    fn geos(
        &mut self,
        f: &Field<'_, '_>,
        zones: &[ParsedZone<'_, '_>],
        dc_names: &[String],
    ) -> Option<Vec<GeoNameConfig>> {
        let items = self.array(f, "expected [[dns.geo]] tables (note the double brackets)")?;
        let mut seen = HashMap::new();
        self.each(&items, |c, item| c.geo(item, zones, dc_names, &mut seen))
    }

    fn geo(
        &mut self,
        f: &Field<'_, '_>,
        zones: &[ParsedZone<'_, '_>],
        dc_names: &[String],
        seen: &mut HashMap<String, String>,
    ) -> Option<GeoNameConfig> {
        self.table(f, "expected a [[dns.geo]] table", |c, t| {
            let name = c.req(t, "name", "\"api.mysite.com\"", |c, f| {
                let name = c.parsed(f, |s| dns_name(s, None, false))?;
                if let Some(first) = first_seen(seen, name.clone(), &f.path) {
                    c.bad(f, format!("duplicate geo name: {first} is the same"));
                }
                // A zone with a bad origin has its own error; this one would be noise.
                let origins: Vec<&str> = zones.iter().filter_map(|z| z.origin.as_deref()).collect();
                if origins.len() == zones.len() && !origins.iter().any(|o| in_zone(&name, o)) {
                    let message = if origins.is_empty() {
                        "not inside any zone: add a [[dns.zone]] whose origin contains it"
                            .to_owned()
                    } else {
                        format!("not inside any zone (origins: {})", origins.join(", "))
                    };
                    c.bad(f, message);
                    return None;
                }
                for (rf, r) in zones.iter().flat_map(|z| &z.records) {
                    if r.name == name {
                        c.bad(
                        rf,
                        format!(
                            "{name} is a geo name ({}): its answers come from the data centers, \
                             so it cannot have static records",
                            f.path
                        ),
                    );
                    }
                }
                Some(name)
            });
            let ttl = c.opt(t, "ttl", 30, Ctx::ttl);
            let datacenters = c.maybe(t, "datacenters", |c, f| {
                let list = c.references(f, "datacenter", dc_names)?;
                if list.is_empty() {
                    c.bad(
                    f,
                    "list at least one data center, or leave datacenters out to use all of them",
                );
                    return None;
                }
                Some(list)
            });
            if t.field("datacenters").is_none() && dc_names.is_empty() {
                c.err(
                    t.key_path("datacenters"),
                    t.offset,
                    "no [[datacenter]] is defined to answer with".to_owned(),
                );
            }
            let candidates = match &datacenters {
                Some(Some(list)) => Some(list.len()),
                Some(None) => Some(dc_names.len()),
                None => None,
            };
            let answers = c.opt(t, "answers", 1, |c, f| {
                let n = c.int(f, 1, i64::MAX)? as usize;
                if let Some(max) = candidates
                    && max > 0
                    && n > max
                {
                    c.bad(
                        f,
                        format!("only {max} data center(s) are candidates: at most {max}"),
                    );
                    return None;
                }
                Some(n)
            });
            let spill_over = c.opt(t, "spill_over", 1, |c, f| {
                c.int(f, 1, MAX_SPILL_OVER).map(|n| n as usize)
            });
            // Map entries name candidates of this geo name; with a bad
            // `datacenters`, every data center counts (its error is out).
            let candidate_names = match &datacenters {
                Some(Some(list)) => list.clone(),
                _ => dc_names.to_vec(),
            };
            let maps = c.opt(t, "map", Vec::new(), |c, f| {
                c.geo_maps(f, &candidate_names, dc_names)
            });
            Some(GeoNameConfig {
                name: name?,
                ttl: ttl?,
                datacenters: datacenters?.unwrap_or_else(|| dc_names.to_vec()),
                answers: answers?,
                maps: maps?,
                spill_over: spill_over?,
            })
        })
    }

    fn geo_maps(
        &mut self,
        f: &Field<'_, '_>,
        candidates: &[String],
        dc_names: &[String],
    ) -> Option<Vec<GeoMapConfig>> {
        let items = self.array(
            f,
            "expected [[dns.geo.map]] tables (note the double brackets)",
        )?;
        let mut seen = HashMap::new();
        self.each(&items, |c, item| {
            c.table(item, "expected a [[dns.geo.map]] table", |c, t| {
                c.geo_map(t, candidates, dc_names, &mut seen)
            })
        })
    }

    fn geo_map(
        &mut self,
        t: &Tbl<'_, '_>,
        candidates: &[String],
        dc_names: &[String],
        seen: &mut HashMap<MapMatch, String>,
    ) -> Option<GeoMapConfig> {
        let continent = self.maybe(t, "continent", |c, f| c.parsed(f, geoip::continent));
        let country = self.maybe(t, "country", |c, f| c.parsed(f, geoip::country));
        let subdivision = self.maybe(t, "subdivision", |c, f| c.parsed(f, geoip::subdivision));
        let cidr = self.maybe(t, "cidr", |c, f| c.parsed(f, parse_cidr));
        let candidate = |c: &mut Ctx, f: &Field<'_, '_>| {
            let name = c.string(f)?;
            if candidates.iter().any(|n| n == name) {
                return Some(name.to_owned());
            }
            if dc_names.iter().any(|n| n == name) {
                c.bad(
                    f,
                    format!(
                        "not a candidate of this geo name (its datacenters: {}); add it there",
                        candidates.join(", ")
                    ),
                );
                return None;
            }
            c.reference(f, "datacenter", dc_names)
        };
        let listed = self.opt(t, "datacenters", Vec::new(), |c, f| {
            let items = c.array(
                f,
                "expected a list of data centers like [\"eu-west\", { name = \"eu-canary\", \
                 weight = 1 }]",
            )?;
            let mut names = HashMap::new();
            c.each(&items, |c, item| {
                let (name, weight) = c.weighted(item, "name", "\"eu-west\"", candidate)?;
                if let Some(first) = first_seen(&mut names, name.clone(), &item.path) {
                    c.bad(item, format!("listed twice (also {first})"));
                    return None;
                }
                Some((name, weight))
            })
        });
        let only = self.opt(t, "only", false, Ctx::bool);
        let exclude = self.opt(t, "exclude", Vec::new(), |c, f| {
            let items = c.array(f, "expected a list of data-center names")?;
            let mut names = HashMap::new();
            c.each(&items, |c, item| {
                let name = candidate(c, item)?;
                if let Some(first) = first_seen(&mut names, name.clone(), &item.path) {
                    c.bad(item, format!("listed twice (also {first})"));
                    return None;
                }
                Some((name, item.clone()))
            })
        });
        let failover_outside = self.opt(t, "failover_outside", false, Ctx::bool);

        let given: Vec<MapMatch> = [
            continent.clone().flatten().map(MapMatch::Continent),
            country.clone().flatten().map(MapMatch::Country),
            subdivision
                .clone()
                .flatten()
                .map(|(cc, sub)| MapMatch::Subdivision(cc, sub)),
            cidr.flatten().map(MapMatch::Cidr),
        ]
        .into_iter()
        .flatten()
        .collect();
        let keys_present = [
            !matches!(continent, Some(None)),
            !matches!(country, Some(None)),
            !matches!(subdivision, Some(None)),
            !matches!(cidr, Some(None)),
        ]
        .iter()
        .filter(|present| **present)
        .count();
        let matches = match (keys_present, given.as_slice()) {
            (0, _) => {
                self.err(
                    t.path.clone(),
                    t.offset,
                    "a map entry needs what it matches: one of continent = \"EU\", \
                     country = \"DE\", subdivision = \"US-WA\" or cidr = \"192.0.2.0/24\""
                        .to_owned(),
                );
                None
            }
            (1, [one]) => Some(one.clone()),
            (1, _) => None,
            _ => {
                self.err(
                    t.path.clone(),
                    t.offset,
                    "a map entry matches one thing: give only one of continent, country, \
                     subdivision or cidr (more specific entries win on their own)"
                        .to_owned(),
                );
                None
            }
        };
        if let Some(m) = &matches
            && let Some(first) = first_seen(seen, m.clone(), &t.path)
        {
            self.err(
                t.path.clone(),
                t.offset,
                format!("{first} matches the same clients; merge the two"),
            );
        }
        let (listed, only, exclude, failover_outside) =
            (listed?, only?, exclude?, failover_outside?);
        let mut ok = matches.is_some();
        let complain = |c: &mut Ctx, key: &str, message: &str| {
            c.err(t.key_path(key), t.offset, message.to_owned());
        };
        if listed.is_empty() && exclude.is_empty() {
            complain(
                self,
                "datacenters",
                "this entry changes nothing: give datacenters = [...] (tried first, in order), \
                 exclude = [...], or both",
            );
            ok = false;
        }
        if only && listed.is_empty() {
            complain(
                self,
                "only",
                "only = true needs datacenters = [...] to keep the region in",
            );
            ok = false;
        }
        if only && !exclude.is_empty() {
            complain(
                self,
                "exclude",
                "with only = true everything not in datacenters is excluded already; drop exclude",
            );
            ok = false;
        }
        for (name, item) in &exclude {
            if listed.iter().any(|(n, _)| n == name) {
                self.bad(
                    item,
                    "also in datacenters: a data center is either tried or excluded",
                );
                ok = false;
            }
        }
        let excluded_all = !only
            && candidates
                .iter()
                .all(|n| exclude.iter().any(|(e, _)| e == n));
        if excluded_all {
            complain(self, "exclude", "excludes every candidate of this geo name");
            ok = false;
        }
        if failover_outside && !only && exclude.is_empty() {
            complain(
                self,
                "failover_outside",
                "nothing is excluded for this region, so there is no outside to fail over to",
            );
            ok = false;
        }
        if !ok {
            return None;
        }
        let (datacenters, weights) = super::datacenter::split_weights(listed);
        Some(GeoMapConfig {
            path: t.path.clone(),
            matches: matches?,
            datacenters,
            weights,
            only,
            exclude: exclude.into_iter().map(|(n, _)| n).collect(),
            failover_outside,
        })
    }
}
