//! The validated configuration: what the rest of the daemon reads.
//!
//! Every value here has passed validation, so consumers never re-check
//! ranges or cross-references. Names that the DNS side uses are stored
//! absolute, lower-case and with a trailing dot (`api.mysite.com.`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    /// The file this was read from (absolute when loaded from disk).
    pub source: PathBuf,
    /// The text read, when it is not `source`'s alone (a document from
    /// etcd with the node's own sections): where errors found after
    /// parsing are placed.
    pub text: Option<Arc<str>>,
    pub runtime: RuntimeConfig,
    pub log: LogConfig,
    pub admin: Option<AdminConfig>,
    pub geoip: Option<GeoIpConfig>,
    pub dns: Option<DnsConfig>,
    pub datacenters: Vec<DatacenterConfig>,
    pub pools: Vec<PoolConfig>,
    pub listeners: Vec<ListenerConfig>,
    /// `[cluster]` (optional): overrides shared with other nodes through
    /// etcd; absent, this node stands alone.
    pub cluster: Option<ClusterConfig>,
}

/// `[cluster]`: the etcd cluster and this node's place in it. Read at
/// start-up only: a reload that changes it is told so and keeps the one
/// running (the watch and the persisted state belong to one cluster).
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// `etcd`: client URLs (`http://` or `https://`, scheme host and port).
    pub etcd: Vec<String>,
    /// `prefix` (optional, "/geolb/"): every key geolb reads or writes.
    pub prefix: String,
    /// `node`: this node's unique name, written as `by` of its overrides.
    pub node: String,
    /// `datacenter` (optional): the `[[datacenter]]` this node serves.
    pub datacenter: Option<String>,
    /// `ca` (optional): the CA that signed etcd's certificates (PEM).
    pub ca: Option<PathBuf>,
    /// `cert`, `key` (optional, together): a client certificate for etcd.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// `user`, `password_file` (optional, together): etcd authentication.
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    /// `dial_timeout` (optional, "5s"): to connect, and to notice a
    /// connection that stopped answering.
    pub dial_timeout: Duration,
    /// `lease` (optional, "10s"): the TTL of the lease this node's
    /// published data-center views live under; a node gone this long
    /// stops counting in the quorum.
    pub lease: Duration,
    /// `config` (optional, "file"): where the rest of the config comes
    /// from.
    pub config: ConfigFrom,
}

/// `[cluster] config`: where a node's config comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ConfigFrom {
    /// The local file, whole.
    #[default]
    File,
    /// The document at `PREFIX config/current` in etcd, with the node's
    /// own sections (`[cluster]`, `[runtime]`, `[admin]`, `[log]`) from
    /// the local file.
    Etcd,
}

/// `[runtime]` (an extension of the contract; the whole section is optional).
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeConfig {
    /// `worker_threads` (optional, the number of CPUs).
    pub worker_threads: Option<usize>,
    /// `shutdown_grace` (optional, "30s"): how long in-flight work may take after SIGTERM.
    pub shutdown_grace: Duration,
    /// `state_dir` (optional, "/var/lib/geolb"): what outlives the process
    /// (overrides, the takeover socket, the last OCSP responses).
    pub state_dir: PathBuf,
    /// `huge_pages` (optional, true): the workers' heaps on transparent
    /// huge pages (see `huge_pages`); read at start-up.
    pub huge_pages: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            worker_threads: None,
            shutdown_grace: Duration::from_secs(30),
            state_dir: PathBuf::from("/var/lib/geolb"),
            huge_pages: true,
        }
    }
}

/// `[log]` (an extension; the whole section is optional).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogConfig {
    /// `format` (optional, text).
    pub format: LogFormat,
    /// `file` (optional): every line goes there, reopened on SIGUSR1;
    /// none: stderr.
    pub file: Option<PathBuf>,
    /// `access_file` (optional): the access lines (targets `geolb::access`
    /// and below) go there instead, reopened on SIGUSR1 too.
    pub access_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// `key=value` lines, tracing-subscriber's own format.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// `token_file` (optional): the bearer token every POST needs.
    pub token_file: Option<PathBuf>,
    /// `tls` (optional): certificates; when set, `listen` speaks HTTPS only.
    pub tls: Vec<TlsCertConfig>,
    /// `socket` (optional): a Unix stream socket serving the same admin API.
    pub socket: Option<PathBuf>,
    /// `socket_mode` (optional, "0600"): the socket file's permission bits.
    pub socket_mode: u32,
}

/// The longest path a Unix socket can be bound at: `sockaddr_un.sun_path`
/// is 108 bytes on Linux, the terminating NUL included.
pub const UNIX_SOCKET_PATH_MAX: usize = 107;

/// `[admin] socket_mode` when not set: the owner alone.
pub const DEFAULT_SOCKET_MODE: u32 = 0o600;

#[derive(Debug, Clone, PartialEq)]
pub struct GeoIpConfig {
    /// Absolute path (resolved against the config file's directory).
    pub database: Option<PathBuf>,
    pub networks: Vec<GeoNetwork>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The network address with every bit past `prefix` zero.
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in this network (an IPv4 network holds no IPv6
    /// address: map those with `to_canonical` first).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (net, addr, width) = match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => (u32::from(n).into(), u32::from(a).into(), 32),
            (IpAddr::V6(n), IpAddr::V6(a)) => (u128::from(n), u128::from(a), 128),
            _ => return false,
        };
        let host_bits = width - u32::from(self.prefix);
        (net ^ addr).checked_shr(host_bits).unwrap_or(0) == 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatLon {
    /// Degrees, -90..=90.
    pub lat: f64,
    /// Degrees, -180..=180.
    pub lon: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GeoNetwork {
    pub cidr: Cidr,
    pub location: LatLon,
    /// Upper-case ISO 3166-1 alpha-2.
    pub country: Option<String>,
    /// Upper-case two-letter continent code (AF AN AS EU NA OC SA).
    pub continent: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DnsConfig {
    pub listen: Vec<SocketAddr>,
    /// UDP sockets (and threads) per listen address, sharing its port by
    /// SO_REUSEPORT (optional, 1).
    pub udp_threads: usize,
    /// `query_log` (optional, 0): the fraction of answered queries logged
    /// (target `geolb::access::dns`), 0 to 1.
    pub query_log: f64,
    pub zones: Vec<ZoneConfig>,
    pub geo: Vec<GeoNameConfig>,
    /// `[dns.rrl]`: response rate limiting over UDP.
    pub rrl: RrlConfig,
    /// `cookie_secret`: the server cookie key (RFC 9018), shared by the
    /// servers of one anycast address; None: random per process.
    pub cookie_secret: Option<[u8; 16]>,
    pub tcp: DnsTcpConfig,
    /// `nsid` (optional, the host name): the NSID option (RFC 5001) given
    /// to queries that ask for it.
    pub nsid: Identity,
    /// `[dns.chaos]`: the CHAOS-class TXT names (RFC 4892).
    pub chaos: ChaosConfig,
    /// `[[dns.tsig]]`: the keys transfers and NOTIFY are signed with.
    pub tsig: Vec<TsigKeyConfig>,
    /// `ixfr_versions` (optional, 10): versions of each zone kept in
    /// memory for IXFR.
    pub ixfr_versions: usize,
}

/// What geolb says it is, in an NSID option or a CHAOS TXT answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// Nothing: no NSID, REFUSED for the CHAOS name.
    Off,
    /// The host's name, read whenever the config is (re)loaded.
    HostName,
    /// "geolb" and its version.
    Version,
    /// As configured (1 to 255 octets).
    Text(Vec<u8>),
}

/// `[dns.chaos]`: CH TXT answers for `id.server`, `hostname.bind` and
/// `version.bind` (also asked as `version.server`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChaosConfig {
    pub id_server: Identity,
    pub hostname_bind: Identity,
    pub version_bind: Identity,
}

impl Default for ChaosConfig {
    fn default() -> Self {
        // Knot's defaults for the first two; the version is not given out
        // unless asked for, as it tells an attacker which bugs to try.
        ChaosConfig {
            id_server: Identity::HostName,
            hostname_bind: Identity::HostName,
            version_bind: Identity::Off,
        }
    }
}

/// `[[dns.tsig]]`: a TSIG key (RFC 8945).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TsigKeyConfig {
    /// Absolute, lower-case, trailing dot.
    pub name: String,
    pub algorithm: TsigAlgorithm,
    pub secret: TsigSecret,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsigAlgorithm {
    HmacSha1,
    HmacSha256,
    HmacSha384,
    HmacSha512,
}

/// A key's secret: given inline, or read (base64) from a file when the
/// DNS data is compiled, so a reload picks up a rotated file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TsigSecret {
    Bytes(Vec<u8>),
    File(PathBuf),
}

/// `transfer` of a `[[dns.zone]]`: who may transfer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferConfig {
    pub allow: Vec<Cidr>,
    /// A `[[dns.tsig]]` name: transfers must be signed with it, and NOTIFY
    /// is signed with it.
    pub key: Option<String>,
}

/// `[dns.rrl]`: responses per client network and answer, per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RrlConfig {
    /// 0: no limit.
    pub responses_per_second: u32,
    /// Every `slip`-th limited response goes out truncated (TC); 0: none.
    pub slip: u32,
    pub ipv4_prefix_length: u8,
    pub ipv6_prefix_length: u8,
}

impl Default for RrlConfig {
    fn default() -> Self {
        RrlConfig {
            responses_per_second: 1000,
            slip: 2,
            ipv4_prefix_length: 24,
            ipv6_prefix_length: 56,
        }
    }
}

/// `[dns] tcp_*`: DNS over TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DnsTcpConfig {
    /// Connections open at once, over all `dns.listen` addresses.
    pub max_connections: u32,
    pub idle_timeout: Duration,
    /// Queries answered per connection before it is closed; 0: no cap.
    pub max_queries: u32,
}

impl Default for DnsTcpConfig {
    fn default() -> Self {
        DnsTcpConfig {
            max_connections: 1000,
            idle_timeout: Duration::from_secs(10),
            max_queries: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ZoneConfig {
    /// Absolute, lower-case, trailing dot.
    pub origin: String,
    /// `ttl` (optional, 3600): TTL of static records.
    pub ttl: u32,
    pub soa: SoaConfig,
    /// Absolute names.
    pub ns: Vec<String>,
    /// Absolute path of an RFC 1035 master file, if any.
    pub file: Option<PathBuf>,
    pub records: Vec<RecordConfig>,
    /// `dnssec`: online signing with these keys; None: unsigned.
    pub dnssec: Option<DnssecConfig>,
    /// `transfer` (optional): none means AXFR and IXFR are refused.
    pub transfer: Option<TransferConfig>,
    /// `notify` (optional): secondaries sent NOTIFY when the zone changes.
    pub notify: Vec<SocketAddr>,
}

/// A zone's `dnssec = { keys, validity, refresh }`.
#[derive(Debug, Clone, PartialEq)]
pub struct DnssecConfig {
    pub keys: Vec<DnssecKeyConfig>,
    /// How long a signature is valid from when it is made.
    pub validity: Duration,
    /// A cached signature with less than this left is made anew.
    pub refresh: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DnssecKeyConfig {
    /// Absolute path of a PKCS#8 PEM private key (P-256 or Ed25519).
    pub file: PathBuf,
    pub role: KeyRole,
    pub state: KeyState,
}

/// What a key signs: the DNSKEY RRset (and CDS, CDNSKEY), the rest of the
/// zone, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRole {
    Csk,
    Ksk,
    Zsk,
}

/// Where a key is in its life: published only (before it signs), signing,
/// or published only (after, while signatures made with it are cached).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    Publish,
    Active,
    Retire,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SoaConfig {
    pub mname: String,
    pub rname: String,
    pub serial: u32,
    pub refresh: Duration,
    pub retry: Duration,
    pub expire: Duration,
    pub minimum: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RecordConfig {
    /// Absolute owner name.
    pub name: String,
    /// `ttl` (optional, the zone's ttl).
    pub ttl: u32,
    pub data: RecordData,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RecordData {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    /// Absolute target.
    Cname(String),
    Ns(String),
    Mx {
        preference: u16,
        exchange: String,
    },
    Txt(String),
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: String,
    },
    Caa {
        flags: u8,
        tag: String,
        value: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct GeoNameConfig {
    /// Absolute, lower-case, trailing dot; inside one of the zones.
    pub name: String,
    pub ttl: u32,
    /// Candidate data-center names, in the order used for unknown locations.
    pub datacenters: Vec<String>,
    /// 1..=datacenters.len()
    pub answers: usize,
    /// `[[dns.geo.map]]`: policy by client region or network, in the
    /// order written.
    pub maps: Vec<GeoMapConfig>,
    /// `spill_over` (optional, 1): over how many of the next available
    /// data centers the clients of one that fails are spread, in
    /// proportion to their `capacity`. 1: all go to the next one.
    pub spill_over: usize,
}

/// What a `[[dns.geo.map]]` entry matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MapMatch {
    /// Upper-case continent code (AF AN AS EU NA OC SA).
    Continent(String),
    /// Upper-case ISO 3166-1 alpha-2.
    Country(String),
    /// ISO 3166-2, upper case: the country and the code after the dash
    /// ("US", "WA").
    Subdivision(String, String),
    Cidr(Cidr),
}

/// One `[[dns.geo.map]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct GeoMapConfig {
    /// Its key path (`dns.geo[0].map[1]`), for explanations.
    pub path: String,
    pub matches: MapMatch,
    /// `datacenters` (optional, none): tried first, in this order.
    pub datacenters: Vec<String>,
    /// `weight`s of `datacenters`, one each; empty: no split (the list's
    /// order). With weights, each client network starts at one of them,
    /// picked in proportion.
    pub weights: Vec<u32>,
    /// `only` (optional, false): the listed data centers alone answer.
    pub only: bool,
    /// `exclude` (optional, none): never answer this region.
    pub exclude: Vec<String>,
    /// `failover_outside` (optional, false): when every data center left
    /// to the region is down, answer from the excluded ones rather than
    /// failing open inside the region.
    pub failover_outside: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DatacenterConfig {
    pub name: String,
    pub location: LatLon,
    pub addresses: Vec<IpAddr>,
    /// `weight`s of `addresses`, one each; empty when none is given (every
    /// address goes into each answer). With weights, an answer carries one
    /// address of the family, picked in proportion per client network.
    pub weights: Vec<u32>,
    /// `capacity` (optional, 1): this data center's share of the clients
    /// spilled over from a failed one (see `spill_over`).
    pub capacity: u32,
    pub pools: Vec<String>,
    pub check: Option<RemoteCheck>,
    pub drain: bool,
    /// `always_up` (optional, false): neither pools nor check, meant. Only
    /// then is a data center up whatever happens (else a config error).
    pub always_up: bool,
}

/// A data center's remote check: where to probe, and how.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RemoteCheck {
    /// `host:port` taken from `url` (http/https) or `addr` (tcp).
    pub target: String,
    pub check: CheckConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CheckConfig {
    pub probe: Probe,
    /// `interval` (optional, "2s")
    pub interval: Duration,
    /// `timeout` (optional, "1s")
    pub timeout: Duration,
    /// `rise` (optional, 2), >= 1
    pub rise: u32,
    /// `fall` (optional, 3), >= 1
    pub fall: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Probe {
    /// Connect, then close.
    Tcp,
    Http(HttpProbe),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HttpProbe {
    /// `kind = "https"`
    pub tls: bool,
    /// Starts with `/` (for remote checks: the URL's path and query).
    pub path: String,
    /// Host header and SNI; None = the target address.
    pub host: Option<String>,
    /// Accepted status codes (optional, `[200]`).
    pub expect: Vec<u16>,
    /// https: a PEM file of CA certificates to verify the target with
    /// (optional: the bundled Mozilla roots).
    pub ca: Option<PathBuf>,
    /// https: verify the certificate (optional, true).
    pub verify: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Balance {
    RoundRobin,
    LeastConn,
    RandomTwo,
    Maglev,
}

impl Balance {
    pub const SPELLINGS: &[(&str, Self)] = &[
        ("round_robin", Self::RoundRobin),
        ("least_conn", Self::LeastConn),
        ("random_two", Self::RandomTwo),
        ("maglev", Self::Maglev),
    ];

    pub fn as_str(self) -> &'static str {
        spelling(Self::SPELLINGS, self)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HashKey {
    ClientIp,
    /// Lower-case header name.
    Header(String),
    Cookie(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProxyProtocolVersion {
    V1,
    V2,
}

impl ProxyProtocolVersion {
    pub const SPELLINGS: &[(&str, Self)] = &[("v1", Self::V1), ("v2", Self::V2)];

    pub fn as_str(self) -> &'static str {
        spelling(Self::SPELLINGS, self)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    pub name: String,
    pub balance: Balance,
    pub hash: HashKey,
    pub min_healthy: usize,
    pub check: Option<CheckConfig>,
    pub backends: Vec<BackendConfig>,
    pub proxy_protocol: Option<ProxyProtocolVersion>,
    /// How requests are spoken to the backends (optional, HTTP/1.1).
    pub backend_protocol: BackendProtocol,
    /// `http1_client` (extension): which HTTP/1.1 client speaks to
    /// cleartext HTTP/1.1 backends.
    pub http1_client: Http1Client,
    /// Backends are reached over TLS (`tls = true` or a table).
    pub tls: Option<BackendTls>,
    /// `max_connections`, `queue`, `queue_timeout` (extension).
    pub limits: BackendLimits,
    /// `outlier` (extension): passive health.
    pub outlier: OutlierConfig,
    /// `retry_budget` (extension).
    pub retry_budget: RetryBudgetConfig,
    /// `sticky` (extension): sessions kept on one backend by a cookie
    /// geolb sets.
    pub sticky: Option<StickyConfig>,
    /// `discovery` (extension): more backends, read from etcd.
    pub discovery: Option<DiscoveryConfig>,
}

/// `discovery = { prefix = ... }` of a pool: backends that register
/// themselves in etcd under `[cluster] prefix` + `prefix`, joining the
/// static ones without a reload (see [`crate::discovery`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DiscoveryConfig {
    /// `prefix` (required): relative to `[cluster] prefix`, ending in '/'.
    pub prefix: String,
}

/// `sticky = { cookie = ..., ... }` of a pool: HAProxy's
/// `cookie NAME insert indirect nocache`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StickyConfig {
    /// `cookie` (required): the cookie's name, an RFC 6265 token.
    pub cookie: String,
    /// `max_age` (optional): none makes a session cookie.
    pub max_age: Option<Duration>,
    /// `secure` (optional): none means Secure exactly on https listeners.
    pub secure: Option<bool>,
    /// `http_only` (optional, true).
    pub http_only: bool,
    /// `same_site` (optional, none).
    pub same_site: Option<SameSite>,
    /// `secret` (optional): keys the cookie values, so that no one can
    /// compute a backend's value from its address.
    pub secret: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SameSite {
    Strict,
    Lax,
    None,
}

impl SameSite {
    pub const SPELLINGS: &[(&str, Self)] = &[
        ("Strict", Self::Strict),
        ("Lax", Self::Lax),
        ("None", Self::None),
    ];

    pub fn as_str(self) -> &'static str {
        spelling(Self::SPELLINGS, self)
    }
}

/// How much one backend of a pool takes at once, and what waits for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BackendLimits {
    /// `max_connections` (optional, none): requests (HTTP, HTTP/2 streams
    /// included) or connections (TCP) in flight to one backend at once.
    pub max_connections: Option<u32>,
    /// `queue` (optional, 1024): requests of the pool that may wait for a
    /// backend with room; 0 answers 503 at once.
    pub queue: u32,
    /// `queue_timeout` (optional, the listener's `timeouts.connect`): how
    /// long one may wait.
    pub queue_timeout: Option<std::time::Duration>,
    /// `max_idle` (optional, 1024): idle HTTP/1.1 connections kept per
    /// backend for the next requests; 0 keeps none.
    pub max_idle: u32,
}

/// `queue` when unset: Envoy's default `max_pending_requests`.
pub const DEFAULT_QUEUE: u32 = 1024;

/// `max_idle` when unset: room for 1,024 client connections busy on one
/// backend at once to find a connection at their next request.
pub const DEFAULT_MAX_IDLE: u32 = 1024;

/// `outlier = { ... }` of a pool: ejecting backends on failed requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierConfig {
    /// `consecutive_failures` (optional, 5; 0 = off): connect failures,
    /// resets and timeouts in a row that eject a backend.
    pub consecutive_failures: u32,
    /// `consecutive_5xx` (optional, 0 = off): 5xx responses in a row that
    /// eject a backend.
    pub consecutive_5xx: u32,
    /// `ejection` (optional, "10s"): the first ejection's length; the n-th
    /// in a row lasts n times as long.
    pub ejection: Duration,
    /// `max_ejection` (optional, "300s"): the longest an ejection lasts.
    pub max_ejection: Duration,
    /// `max_ejected_percent` (optional, 50): at most this share of the
    /// pool's backends ejected at once (rounded down).
    pub max_ejected_percent: u8,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: 5,
            consecutive_5xx: 0,
            ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
            max_ejected_percent: 50,
        }
    }
}

impl OutlierConfig {
    pub fn enabled(&self) -> bool {
        self.consecutive_failures > 0 || self.consecutive_5xx > 0
    }
}

/// `retry_budget = { percent, min_concurrent }` of a pool (Envoy's
/// `retry_budget`): retries in flight at most max(`min_concurrent`,
/// `percent` of the pool's active requests). Retries after a failed
/// connect are not counted: no backend received those requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBudgetConfig {
    /// `percent` (optional, 20), 0 to 100.
    pub percent: u8,
    /// `min_concurrent` (optional, 3).
    pub min_concurrent: u32,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        RetryBudgetConfig {
            percent: 20,
            min_concurrent: 3,
        }
    }
}

/// `retry_on` of a listener: what a request is sent again after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryOn {
    /// "connect": the connection to the backend failed (any request).
    pub connect: bool,
    /// "reset": the backend closed or reset without a byte of response
    /// (body-less idempotent requests).
    pub reset: bool,
    /// Statuses ("502", "503", "504") answered by the backend (body-less
    /// idempotent requests), as a bit per status - 500.
    statuses: u8,
}

impl Default for RetryOn {
    fn default() -> Self {
        RetryOn {
            connect: true,
            reset: true,
            statuses: 0,
        }
    }
}

impl RetryOn {
    pub const SPELLINGS: &[&str] = &["connect", "reset", "502", "503", "504"];

    pub const NONE: RetryOn = RetryOn {
        connect: false,
        reset: false,
        statuses: 0,
    };

    /// Adds one of [`RetryOn::SPELLINGS`]; false for anything else.
    pub fn add(&mut self, spelling: &str) -> bool {
        match spelling {
            "connect" => self.connect = true,
            "reset" => self.reset = true,
            "502" | "503" | "504" => self.statuses |= 1 << (spelling.as_bytes()[2] - b'0'),
            _ => return false,
        }
        true
    }

    /// Whether a response with `status` is retried.
    pub fn status(&self, status: u16) -> bool {
        matches!(status, 502..=504) && self.statuses & (1 << (status - 500)) != 0
    }

    /// Whether any status is retried.
    pub fn any_status(&self) -> bool {
        self.statuses != 0
    }
}

/// `backend_protocol` of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum BackendProtocol {
    #[default]
    Http1,
    /// HTTP/2 in cleartext, by prior knowledge (RFC 9113 §3.3).
    H2c,
    /// HTTP/2 over TLS, negotiated by ALPN; needs `tls`.
    H2,
}

impl BackendProtocol {
    pub const SPELLINGS: &[(&str, Self)] =
        &[("http1", Self::Http1), ("h2c", Self::H2c), ("h2", Self::H2)];

    pub fn as_str(self) -> &'static str {
        spelling(Self::SPELLINGS, self)
    }
}

/// `http1_client` of a pool: geolb's own HTTP/1.1 client (driven in the
/// request's task) or hyper's (a task per backend connection). TLS and
/// HTTP/2 backends, and upgrades, always go through hyper.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Http1Client {
    #[default]
    Geolb,
    Hyper,
}

impl Http1Client {
    pub const SPELLINGS: &[(&str, Self)] = &[("geolb", Self::Geolb), ("hyper", Self::Hyper)];

    pub fn as_str(self) -> &'static str {
        spelling(Self::SPELLINGS, self)
    }
}

/// `tls = true` or `tls = { ca = "...", verify = ..., sni = "..." }` on a
/// pool.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendTls {
    /// PEM CA certificates to verify backends with (optional: the bundled
    /// Mozilla roots).
    pub ca: Option<PathBuf>,
    /// Verify the backend's certificate (optional, true).
    pub verify: bool,
    /// SNI and the name the certificate must carry (optional: the
    /// backend's IP address, checked against its IP SANs).
    pub sni: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BackendConfig {
    pub addr: SocketAddr,
    /// >= 1
    pub weight: u32,
    pub drain: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http,
    Https,
    Tcp,
}

impl Protocol {
    pub const SPELLINGS: &[(&str, Self)] = &[
        ("http", Self::Http),
        ("https", Self::Https),
        ("tcp", Self::Tcp),
    ];

    pub fn as_str(self) -> &'static str {
        spelling(Self::SPELLINGS, self)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    pub name: String,
    pub bind: SocketAddr,
    pub protocol: Protocol,
    pub pool: String,
    pub routes: Vec<RouteConfig>,
    pub timeouts: Timeouts,
    pub retries: u32,
    /// `retry_on` (extension; optional, ["connect", "reset"]).
    pub retry_on: RetryOn,
    pub tls: Vec<TlsCertConfig>,
    /// `tls = { acme = { ... } }` (extension; https only, instead of the
    /// list): certificates ordered from an ACME CA; `tls` is then empty.
    pub acme: Option<AcmeConfig>,
    pub accept_proxy_protocol: bool,
    /// `access_log` (extension; optional, false): one line per request on stderr.
    pub access_log: bool,
    /// `splice` (extension; tcp and http; optional, true): bytes moved
    /// between the sockets with splice(2) through pipes, else through
    /// buffers. On http listeners, the rest of a response body of known
    /// length from geolb's own HTTP/1 client, once its head is out.
    pub splice: bool,
    /// `max_connections` (extension; optional, none): client connections
    /// open at once, 1..=1_000_000; at the limit, accepting pauses.
    pub max_connections: Option<u32>,
    /// `client_limits` (extension; optional, none): limits per client
    /// address prefix.
    pub client_limits: Option<ClientLimits>,
    /// `max_concurrent_streams` (extension; http and https only; optional,
    /// 100): HTTP/2 streams a client may have open at once on a connection.
    pub max_concurrent_streams: u32,
    /// `http1_server` (extension; http and https only; optional,
    /// "geolb"): which code serves HTTP/1.x client connections.
    pub http1_server: Http1Server,
    /// `request_headers`, `response_headers`, `request_id`, `hsts`
    /// (extension; http and https only).
    pub headers: ListenerHeaders,
    /// `client_auth` (extension; https only; optional, none): client
    /// certificates asked for and verified.
    pub client_auth: Option<ClientAuthConfig>,
    /// `compress` (http and https only; optional, off): responses
    /// compressed on the way to the client.
    pub compress: Option<Arc<CompressConfig>>,
    /// `redirect`, `max_body`, `methods`, `allow`, `deny` (extension; http
    /// and https only): for every request, unless its route sets its own.
    pub rules: RequestRules,
    /// `error_pages` (extension; http and https only; optional, none):
    /// bodies for the 4xx and 5xx answers geolb makes itself.
    pub error_pages: Vec<ErrorPageConfig>,
}

/// `client_auth = { ca = ..., required = ... }` of an https listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuthConfig {
    /// PEM CA certificates that client certificates must chain to.
    pub ca: PathBuf,
    /// `required` (optional, true): a client without a valid certificate
    /// fails the handshake; false serves it, without the certificate.
    pub required: bool,
}

/// `[[listener]] client_limits`: what one client, known by its address
/// prefix, may use of a listener.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClientLimits {
    /// Connections open at once per prefix; past it new ones are closed.
    pub max_connections: Option<u32>,
    /// Requests per second per prefix (http and https), with `burst`.
    pub requests_per_second: Option<u32>,
    /// Tokens a bucket holds; `requests_per_second` unless set.
    pub burst: u32,
    /// Bits of an IPv4 client address that make its prefix, 0..=32.
    pub ipv4_prefix: u8,
    /// Bits of an IPv6 client address that make its prefix, 0..=128.
    pub ipv6_prefix: u8,
}

/// `[[listener]] http1_server`: who serves HTTP/1.x client connections.
/// HTTP/2 (prior knowledge or ALPN) and upgrades are hyper's either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Http1Server {
    /// hyper's server, as before geolb had its own: a way back should
    /// geolb's own misread a client.
    Hyper,
    /// geolb's own (`proxy::h1`): one parse, one write per response head.
    #[default]
    Geolb,
}

impl Http1Server {
    pub const SPELLINGS: &[(&str, Self)] = &[("hyper", Self::Hyper), ("geolb", Self::Geolb)];
}

/// Default `max_concurrent_streams`: HAProxy's
/// `tune.h2.max-concurrent-streams` and the RFC 9113 §6.5.2 recommendation
/// of at least 100.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 100;

#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// Lower-case, without a port.
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub pool: String,
    /// `request_headers` and `response_headers` (extension; optional):
    /// applied after the listener's.
    pub headers: HeaderRuleSet,
    /// `compress` of this route: `None` takes the listener's, `Some(None)`
    /// is off.
    pub compress: Option<Option<Arc<CompressConfig>>>,
    /// Its own request rules; each one set wins over the listener's.
    pub rules: RequestRules,
    /// `strip_prefix` or `replace_prefix` (only with `path_prefix`).
    pub rewrite: PathRewrite,
}

/// A listener's header settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerHeaders {
    pub rules: HeaderRuleSet,
    /// `request_id` (optional, true): an `X-Request-Id` for every request.
    pub request_id: bool,
    /// `hsts` (https only; optional, none): the `Strict-Transport-Security`
    /// value, rendered at load.
    pub hsts: Option<http::HeaderValue>,
}

impl Default for ListenerHeaders {
    fn default() -> Self {
        ListenerHeaders {
            rules: HeaderRuleSet::default(),
            request_id: true,
            hsts: None,
        }
    }
}

/// `request_headers` and `response_headers` of a listener or a route.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeaderRuleSet {
    pub request: HeaderRules,
    pub response: HeaderRules,
}

/// One `request_headers` or `response_headers` table, applied in this
/// order: `remove`, `set` (replacing every value), `add` (appending).
/// Names are lower-case.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeaderRules {
    pub remove: Vec<http::HeaderName>,
    pub set: Vec<(http::HeaderName, HeaderTemplate)>,
    pub add: Vec<(http::HeaderName, HeaderTemplate)>,
}

impl HeaderRules {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }
}

/// A header value as configured, split at load into text and variables.
#[derive(Debug, Clone, PartialEq)]
pub struct HeaderTemplate {
    pub parts: Vec<TemplatePart>,
    /// The value itself when it names no variable: made once, so a fixed
    /// value costs a clone per request, not a parse.
    pub fixed: Option<http::HeaderValue>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TemplatePart {
    Text(String),
    Var(HeaderVar),
}

/// A variable of a header value, expanded per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderVar {
    ClientIp,
    ClientPort,
    Listener,
    RequestId,
    /// Empty on plain http.
    TlsVersion,
    /// Lower-case, without a port.
    Host,
    Scheme,
}

impl HeaderVar {
    pub const SPELLINGS: &[(&str, Self)] = &[
        ("client_ip", Self::ClientIp),
        ("client_port", Self::ClientPort),
        ("listener", Self::Listener),
        ("request_id", Self::RequestId),
        ("tls_version", Self::TlsVersion),
        ("host", Self::Host),
        ("scheme", Self::Scheme),
    ];

    pub fn as_str(self) -> &'static str {
        spelling(Self::SPELLINGS, self)
    }
}

/// The request rules a listener or a route may set, each optional: a
/// route's value (when set) replaces the listener's for its requests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestRules {
    /// `redirect = { to, code, port }`: answered by geolb, never forwarded.
    pub redirect: Option<RedirectConfig>,
    /// `max_body`: request body bytes at most; past it 413.
    pub max_body: Option<u64>,
    /// `methods`: the methods forwarded (case-sensitive); others 405.
    pub methods: Option<Vec<String>>,
    /// `allow`: client networks let in; empty lets in any.
    pub allow: Option<Vec<Cidr>>,
    /// `deny`: client networks refused (403), before `allow` is looked at.
    pub deny: Option<Vec<Cidr>>,
}

impl RequestRules {
    /// `self` with every rule `over` sets replaced by its value.
    pub fn overridden_by(&self, over: &RequestRules) -> RequestRules {
        RequestRules {
            redirect: over.redirect.clone().or_else(|| self.redirect.clone()),
            max_body: over.max_body.or(self.max_body),
            methods: over.methods.clone().or_else(|| self.methods.clone()),
            allow: over.allow.clone().or_else(|| self.allow.clone()),
            deny: over.deny.clone().or_else(|| self.deny.clone()),
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == RequestRules::default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectConfig {
    pub to: RedirectTarget,
    /// 301, 302, 303, 307 or 308.
    pub code: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedirectTarget {
    /// `to = "https"`: the same host (on `port` when set and not 443),
    /// path and query, over https.
    Https { port: Option<u16> },
    /// A URL or path with `{host}`, `{path}`, `{query}` in it; used as
    /// written when it has neither `{path}` nor `{query}`.
    Template(String),
}

/// What a route does to the path of the requests it forwards.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PathRewrite {
    #[default]
    Keep,
    /// `strip_prefix = true`: the route's `path_prefix` removed.
    Strip,
    /// `replace_prefix`: the route's `path_prefix` replaced by this.
    Replace(String),
}

/// One entry of `error_pages`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorPageConfig {
    pub status: ErrorStatus,
    /// Absolute path.
    pub file: PathBuf,
}

/// The key of an `error_pages` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorStatus {
    /// One status, 400 to 599.
    Code(u16),
    /// `"4xx"` (4) or `"5xx"` (5): any status of the class without an
    /// entry of its own.
    Class(u8),
}

impl std::fmt::Display for ErrorStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ErrorStatus::Code(code) => write!(f, "{code}"),
            ErrorStatus::Class(class) => write!(f, "{class}xx"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeouts {
    pub connect: Duration,
    pub header: Duration,
    pub request: Duration,
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            header: Duration::from_secs(10),
            request: Duration::from_secs(60),
            idle: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsCertConfig {
    /// Absolute paths.
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ocsp: OcspConfig,
}

/// OCSP stapling for one certificate.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OcspConfig {
    /// `ocsp`; None when not set: on when the certificate names a responder.
    pub enabled: Option<bool>,
    /// `ocsp_responder`: an http:// URL used instead of the certificate's.
    pub responder: Option<String>,
}

/// `tls = { acme = { ... } }` of an https listener.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AcmeConfig {
    /// `directory` (required): the CA's directory URL, https.
    pub directory: String,
    /// The directory's `host:port`: where its account and certificates
    /// are kept under `state_dir/acme/`.
    pub directory_host: String,
    /// `contact` (optional, []): `mailto:` URLs for the CA's notices.
    pub contact: Vec<String>,
    /// `names` (required, at least one): lower-case DNS names, no
    /// wildcards; the first names the certificate's files.
    pub names: Vec<String>,
    /// `challenge` (optional, tls-alpn-01).
    pub challenge: AcmeChallenge,
    /// `ca` (optional): PEM CA certificates to verify the directory's
    /// HTTPS with; the bundled Mozilla roots otherwise.
    pub ca: Option<PathBuf>,
    /// `renew_before` (optional, 30 days): a certificate closer than
    /// this to its notAfter is renewed.
    pub renew_before: Duration,
}

/// `renew_before` when unset: Let's Encrypt's certificates last 90 days,
/// and certbot renews 30 days before the end too.
pub const DEFAULT_RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);

/// How the CA checks that geolb answers for a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AcmeChallenge {
    /// A token at `http://<name>/.well-known/acme-challenge/` (port 80),
    /// answered by every http listener of the process.
    Http01,
    /// A TLS handshake with ALPN `acme-tls/1` (RFC 8737, port 443),
    /// answered by the https listener itself.
    TlsAlpn01,
}

impl AcmeChallenge {
    pub const SPELLINGS: &[(&str, Self)] =
        &[("http-01", Self::Http01), ("tls-alpn-01", Self::TlsAlpn01)];

    pub fn as_str(self) -> &'static str {
        spelling(Self::SPELLINGS, self)
    }
}

// ---- compress ----

/// A content coding geolb can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    Zstd,
    Br,
    Gzip,
}

impl Encoding {
    pub const SPELLINGS: &[(&str, Self)] =
        &[("zstd", Self::Zstd), ("br", Self::Br), ("gzip", Self::Gzip)];

    /// The token of `Content-Encoding` and `Accept-Encoding`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Zstd => "zstd",
            Self::Br => "br",
            Self::Gzip => "gzip",
        }
    }
}

/// What `compress` says; `None` in a listener means off.
#[derive(Debug, Clone, PartialEq)]
pub struct CompressConfig {
    /// Preference order: on a tie of the client's q-values the first wins.
    pub algorithms: Vec<Encoding>,
    /// Responses whose Content-Length is below this stay as they are.
    pub min_size: u64,
    /// Media types, lower-case: "type/subtype" or "type/*".
    pub types: Vec<String>,
    pub levels: CompressLevels,
}

/// One level per algorithm: their scales differ (gzip 1-9, br 0-11, zstd
/// 1-22), so one number cannot mean the same for all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompressLevels {
    pub gzip: u32,
    pub br: u32,
    pub zstd: i32,
}

/// The fast end of each scale: compressing on the fly is paid per request,
/// and higher levels buy a few percent for several times the CPU. gzip 2:
/// the gzip backend is zlib-rs, whose levels are zlib-ng's; its level 1 is
/// deflate_quick (static Huffman codes, about a quarter more bytes), its
/// level 2 the algorithm of zlib's level 1, nginx's `gzip_comp_level`
/// default, and still faster than nginx (README, benches/compression.sh).
impl Default for CompressLevels {
    fn default() -> Self {
        CompressLevels {
            gzip: 2,
            br: 1,
            zstd: 1,
        }
    }
}

/// Below one TCP segment (about 1.4 KB on Ethernet) a smaller body arrives
/// no sooner, so compressing it costs CPU for nothing.
pub const DEFAULT_MIN_SIZE: u64 = 1024;

/// Text formats, compressible, that browsers and API clients fetch;
/// images, video, archives and fonts in woff/woff2 are compressed already.
pub const DEFAULT_TYPES: &[&str] = &[
    "text/*",
    "application/json",
    "application/javascript",
    "application/x-javascript",
    "application/xml",
    "application/xhtml+xml",
    "application/rss+xml",
    "application/atom+xml",
    "application/ld+json",
    "application/manifest+json",
    "application/geo+json",
    "application/problem+json",
    "application/vnd.api+json",
    "application/wasm",
    "image/svg+xml",
    "image/x-icon",
    "image/vnd.microsoft.icon",
    "font/ttf",
    "font/otf",
    "application/vnd.ms-fontobject",
];

impl Default for CompressConfig {
    fn default() -> Self {
        CompressConfig {
            algorithms: vec![Encoding::Zstd, Encoding::Br, Encoding::Gzip],
            min_size: DEFAULT_MIN_SIZE,
            types: DEFAULT_TYPES.iter().map(|t| (*t).to_owned()).collect(),
            levels: CompressLevels::default(),
        }
    }
}

/// The config spelling of `value`: one table per enum serves both the
/// parser and everything that shows the value (/status, logs), so the two
/// never disagree.
fn spelling<T: Copy + PartialEq>(table: &[(&'static str, T)], value: T) -> &'static str {
    table
        .iter()
        .find(|(_, v)| *v == value)
        .map_or_else(|| unreachable!("every variant has a spelling"), |(s, _)| s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trips<T: Copy + PartialEq + std::fmt::Debug>(
        table: &[(&str, T)],
        as_str: fn(T) -> &'static str,
    ) {
        for (name, value) in table {
            assert_eq!(as_str(*value), *name, "{value:?}");
        }
    }

    #[test]
    fn each_value_is_shown_as_it_is_spelt_in_the_config() {
        round_trips(Balance::SPELLINGS, Balance::as_str);
        round_trips(Protocol::SPELLINGS, Protocol::as_str);
        round_trips(AcmeChallenge::SPELLINGS, AcmeChallenge::as_str);
        round_trips(SameSite::SPELLINGS, SameSite::as_str);
        round_trips(BackendProtocol::SPELLINGS, BackendProtocol::as_str);
        round_trips(Http1Client::SPELLINGS, Http1Client::as_str);
        round_trips(
            ProxyProtocolVersion::SPELLINGS,
            ProxyProtocolVersion::as_str,
        );
        assert_eq!(Balance::RoundRobin.as_str(), "round_robin");
        assert_eq!(Balance::Maglev.as_str(), "maglev");
        assert_eq!(Protocol::Tcp.as_str(), "tcp");
        assert_eq!(BackendProtocol::H2c.as_str(), "h2c");
        assert_eq!(ProxyProtocolVersion::V2.as_str(), "v2");
    }
}
