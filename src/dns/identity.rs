//! What the server says it is: the NSID option (RFC 5001) and the
//! CHAOS-class TXT names `id.server`, `hostname.bind` and `version.bind`
//! (RFC 4892), compiled from `[dns] nsid` and `[dns.chaos]`.

use hickory_proto::rr::LowerName;
use hickory_proto::rr::rdata::opt::EdnsOption;

use super::answer::Reply;
use super::ecs;
use crate::config::{DnsConfig, Identity};

/// EDNS option code of NSID (RFC 5001 §2.3).
pub(super) const OPTION_NSID: u16 = 3;

/// Where the kernel keeps this host's name (the one `hostname` prints).
const HOST_NAME_FILE: &str = "/proc/sys/kernel/hostname";

/// The identities given out, resolved; None: not given.
#[derive(Debug, Default)]
pub(super) struct Identities {
    nsid: Option<Box<[u8]>>,
    id_server: Option<Box<[u8]>>,
    hostname_bind: Option<Box<[u8]>>,
    version_bind: Option<Box<[u8]>>,
}

impl Identities {
    /// The identities of `dns`, the host name read now (so a reload sees a
    /// renamed host); none without `[dns]`.
    pub(super) fn compile(dns: Option<&DnsConfig>) -> Identities {
        let Some(dns) = dns else {
            return Identities::default();
        };
        let wanted = [
            &dns.nsid,
            &dns.chaos.id_server,
            &dns.chaos.hostname_bind,
            &dns.chaos.version_bind,
        ];
        // Read only when something gives it, so a host without one warns
        // only when that matters.
        let host = wanted
            .contains(&&Identity::HostName)
            .then(|| {
                host_name()
                    .inspect_err(|why| {
                        tracing::warn!(
                            file = HOST_NAME_FILE,
                            %why,
                            "cannot read the host name: NSID and CHAOS names set to it give none"
                        );
                    })
                    .ok()
            })
            .flatten();
        let resolve = |identity: &Identity| -> Option<Box<[u8]>> {
            match identity {
                Identity::Off => None,
                Identity::HostName => host.as_deref().map(|name| name.as_bytes().into()),
                Identity::Version => Some(
                    format!("geolb {}", env!("CARGO_PKG_VERSION"))
                        .into_bytes()
                        .into(),
                ),
                Identity::Text(octets) => Some(octets.as_slice().into()),
            }
        };
        Identities {
            nsid: resolve(&dns.nsid),
            id_server: resolve(&dns.chaos.id_server),
            hostname_bind: resolve(&dns.chaos.hostname_bind),
            version_bind: resolve(&dns.chaos.version_bind),
        }
    }

    /// Adds the NSID option to `reply` when it has an OPT and NSID is
    /// given (RFC 5001 §2.2: only to queries that asked, which the caller
    /// checks).
    pub(super) fn add_nsid(&self, reply: &mut Reply) {
        if let (Some(nsid), Some(edns)) = (&self.nsid, reply.edns.as_mut()) {
            edns.options_mut()
                .insert(EdnsOption::Unknown(OPTION_NSID, nsid.to_vec()));
        }
    }

    /// The TXT text of a CHAOS name: Some(None) for one of the names that
    /// is configured off, None for any other name.
    pub(super) fn chaos_text(&self, name: &LowerName) -> Option<Option<&[u8]>> {
        let text = match name.to_string().as_str() {
            "id.server." => &self.id_server,
            "hostname.bind." => &self.hostname_bind,
            // Knot, NSD and BIND answer both spellings with the version.
            "version.bind." | "version.server." => &self.version_bind,
            _ => return None,
        };
        Some(text.as_deref())
    }
}

/// This host's name, as `hostname` prints it; one TXT string at most.
fn host_name() -> Result<String, String> {
    let name = std::fs::read_to_string(HOST_NAME_FILE).map_err(|e| e.to_string())?;
    match name.trim() {
        "" => Err("it is empty".to_owned()),
        name if name.len() > 255 => Err("it is over 255 octets".to_owned()),
        name => Ok(name.to_owned()),
    }
}

/// Whether the raw `message` has an OPT with an NSID option (whatever its
/// payload, which RFC 5001 §2.2 says to ignore), for queries
/// hickory-proto could not parse: options are read up to the first
/// malformed one.
pub(super) fn asks_nsid(message: &[u8]) -> bool {
    ecs::option_codes(message).any(|code| code == OPTION_NSID)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::Name;

    fn lower(s: &str) -> LowerName {
        LowerName::from(Name::from_ascii(s).unwrap())
    }

    #[test]
    fn identities_resolve_per_key_and_names_match_in_any_case() {
        let mut dns = crate::config::parse_str(
            "[dns]\nlisten = [\"127.0.0.1:0\"]\nnsid = { hex = \"00ff\" }\n\
             [dns.chaos]\nid_server = \"ns1-fra\"\nversion_bind = true",
            std::path::Path::new("/tmp/geolb.toml"),
        )
        .unwrap()
        .dns
        .unwrap();
        let ids = Identities::compile(Some(&dns));
        assert_eq!(ids.nsid.as_deref(), Some(&[0u8, 0xff][..]));
        assert_eq!(
            ids.chaos_text(&lower("ID.Server.")),
            Some(Some(&b"ns1-fra"[..]))
        );
        let version = format!("geolb {}", env!("CARGO_PKG_VERSION"));
        for name in ["version.bind.", "VERSION.server."] {
            assert_eq!(ids.chaos_text(&lower(name)), Some(Some(version.as_bytes())));
        }
        let host = std::fs::read_to_string(HOST_NAME_FILE).unwrap();
        assert_eq!(
            ids.chaos_text(&lower("hostname.bind.")),
            Some(Some(host.trim().as_bytes()))
        );
        assert_eq!(ids.chaos_text(&lower("authors.bind.")), None);
        assert_eq!(ids.chaos_text(&lower("id.server.example.")), None);

        dns.chaos.id_server = Identity::Off;
        dns.nsid = Identity::Off;
        let ids = Identities::compile(Some(&dns));
        assert_eq!(ids.chaos_text(&lower("id.server.")), Some(None));
        assert!(ids.nsid.is_none());
        let none = Identities::compile(None);
        assert_eq!(none.chaos_text(&lower("hostname.bind.")), Some(None));
    }

    #[test]
    fn nsid_is_found_in_raw_options_up_to_a_malformed_one() {
        // A query for "a." with an OPT carrying `rdata`.
        let query = |rdata: &[u8]| {
            let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
            m.extend([1, b'a', 0, 0, 1, 0, 1]);
            m.extend([0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0]);
            m.extend((rdata.len() as u16).to_be_bytes());
            m.extend(rdata);
            m
        };
        assert!(asks_nsid(&query(&[0, 3, 0, 0])));
        assert!(asks_nsid(&query(&[0, 8, 0, 1, 9, 0, 3, 0, 2, 1, 2])));
        // After an option running past the record: not seen.
        assert!(!asks_nsid(&query(&[0, 8, 0, 9, 0, 3, 0, 0])));
        assert!(asks_nsid(&query(&[0, 3, 0, 0, 0, 8, 0, 9])));
        assert!(!asks_nsid(&query(&[0, 10, 0, 0])));
        assert!(!asks_nsid(&query(&[])[..20]));
    }
}
