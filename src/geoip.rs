//! Where a client address is: a MaxMind *City* database plus the
//! `[[geoip.network]]` overrides, behind one small wrapper.
//!
//! The database is read into memory rather than mapped: geoipupdate
//! replaces the file by rename, but a file overwritten in place under a
//! mapping would fault the process. A changed file is noticed by its
//! stamp (size, mtime, inode) and re-opened whole; a bad new file leaves
//! the old one serving.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Deserialize;

mod scope;
mod watch;

pub use scope::{ScopeTree, ScopeTrees, TreeStats};
pub use watch::watch;

use crate::config::{Cidr, Config, ConfigError, GeoIpConfig, GeoNetwork, LatLon};

#[derive(Debug, thiserror::Error)]
pub enum GeoIpError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{} is not a MaxMind DB file: {source}", path.display())]
    Format {
        path: PathBuf,
        source: maxminddb::MaxMindDbError,
    },
    #[error(
        "{} is a {kind:?} database, which has no coordinates: use a City database \
         (GeoLite2-City or GeoIP2-City)",
        path.display()
    )]
    NotCity { path: PathBuf, kind: String },
    #[error("{}: cannot walk its networks for ECS scopes: {reason}", path.display())]
    Walk { path: PathBuf, reason: String },
    #[error("{}: its records do not decode as City records: {source}", path.display())]
    Decode {
        path: PathBuf,
        source: maxminddb::MaxMindDbError,
    },
}

/// What identifies one version of a file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl FileStamp {
    fn of(path: &Path) -> Option<FileStamp> {
        let meta = fs::metadata(path).ok()?;
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&meta);
        #[cfg(not(unix))]
        let inode = 0;
        Some(FileStamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            inode,
        })
    }
}

/// An open City database.
pub struct GeoDb {
    path: PathBuf,
    stamp: Option<FileStamp>,
    reader: maxminddb::Reader<Vec<u8>>,
    /// A record that fails to decode is logged once, not per query.
    decode_failure_logged: AtomicBool,
    /// Coordinates and region by record (data-section offset): a City
    /// record is mostly names to skip, and few records serve most clients.
    positions: Mutex<HashMap<usize, (Option<LatLon>, Region), foldhash::fast::FixedState>>,
}

/// Records whose coordinates are kept; past this the cache starts over.
const POSITIONS_KEPT: usize = 1 << 16;

impl std::fmt::Debug for GeoDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoDb")
            .field("path", &self.path)
            .field("database_type", &self.database_type())
            .finish()
    }
}

/// Only the fields geolb uses: serde skips the rest without expanding them.
#[derive(Deserialize)]
struct CityRecord<'a> {
    #[serde(borrow, default)]
    city: Option<Named<'a>>,
    #[serde(borrow, default)]
    country: Option<Country<'a>>,
    #[serde(borrow, default)]
    continent: Option<Continent<'a>>,
    #[serde(borrow, default)]
    subdivisions: Option<Vec<Country<'a>>>,
    #[serde(default)]
    location: Option<Coordinates>,
}

/// [`CityRecord`] less the names: what answering needs.
#[derive(Deserialize)]
struct PositionRecord<'a> {
    #[serde(borrow, default)]
    country: Option<Country<'a>>,
    #[serde(borrow, default)]
    continent: Option<Continent<'a>>,
    #[serde(borrow, default)]
    subdivisions: Option<Vec<Country<'a>>>,
    #[serde(default)]
    location: Option<Coordinates>,
}

#[derive(Deserialize)]
struct Named<'a> {
    #[serde(borrow, default)]
    names: Option<Names<'a>>,
}

#[derive(Deserialize)]
struct Names<'a> {
    #[serde(borrow, default)]
    en: Option<&'a str>,
}

#[derive(Deserialize)]
struct Country<'a> {
    #[serde(borrow, default)]
    iso_code: Option<&'a str>,
}

#[derive(Deserialize)]
struct Continent<'a> {
    #[serde(borrow, default)]
    code: Option<&'a str>,
}

#[derive(Deserialize)]
struct Coordinates {
    #[serde(default)]
    latitude: Option<f64>,
    #[serde(default)]
    longitude: Option<f64>,
}

/// What the database says about one address.
struct DbAnswer {
    /// In the looked-up address's family.
    network: (IpAddr, u8),
    place: Option<Place>,
}

#[derive(Default)]
struct Place {
    coords: Option<LatLon>,
    region: Region,
    city: Option<String>,
    country: Option<String>,
    continent: Option<String>,
}

impl GeoDb {
    /// Reads the whole file, checks that it is a City database and that
    /// its records decode.
    pub fn open(path: &Path) -> Result<GeoDb, GeoIpError> {
        // Stamp first: a change while reading is then seen on the next check.
        let stamp = FileStamp::of(path);
        let bytes = fs::read(path).map_err(|source| GeoIpError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let reader =
            maxminddb::Reader::from_source(bytes).map_err(|source| GeoIpError::Format {
                path: path.to_path_buf(),
                source,
            })?;
        let kind = &reader.metadata().database_type;
        if !kind.contains("City") {
            return Err(GeoIpError::NotCity {
                path: path.to_path_buf(),
                kind: kind.clone(),
            });
        }
        let db = GeoDb {
            path: path.to_path_buf(),
            stamp,
            reader,
            decode_failure_logged: AtomicBool::new(false),
            positions: Mutex::default(),
        };
        // A few addresses spread over the tree: a schema that does not
        // decode fails here rather than on the first query.
        let probes: [IpAddr; 4] = [
            Ipv4Addr::new(81, 2, 69, 160).into(),
            Ipv4Addr::new(8, 8, 8, 8).into(),
            Ipv4Addr::new(1, 1, 1, 1).into(),
            Ipv6Addr::new(0x2001, 0x480, 0x10, 0, 0, 0, 0, 1).into(),
        ];
        for ip in probes {
            if ip.is_ipv6() && db.reader.metadata().ip_version == 4 {
                continue;
            }
            let result = db.reader.lookup(ip).map_err(|source| GeoIpError::Decode {
                path: path.to_path_buf(),
                source,
            })?;
            result.network().map_err(|source| GeoIpError::Decode {
                path: path.to_path_buf(),
                source,
            })?;
            result
                .decode::<CityRecord<'_>>()
                .map_err(|source| GeoIpError::Decode {
                    path: path.to_path_buf(),
                    source,
                })?;
        }
        Ok(db)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `GeoIP2-City`, `GeoLite2-City`, ...
    pub fn database_type(&self) -> &str {
        &self.reader.metadata().database_type
    }

    /// Seconds since the Unix epoch.
    pub fn build_epoch(&self) -> u64 {
        self.reader.metadata().build_epoch
    }

    /// True when the file on disk is no longer the one that was read.
    pub fn changed_on_disk(&self) -> bool {
        FileStamp::of(&self.path) != self.stamp
    }

    /// `ip` is looked up as given (callers unmap IPv4-mapped addresses).
    #[inline]
    fn lookup(&self, ip: IpAddr, names: bool) -> DbAnswer {
        let whole = |ip: IpAddr| match ip {
            IpAddr::V4(_) => (IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            IpAddr::V6(_) => (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
        };
        // An IPv6 address in an IPv4-only database is an error, not a miss.
        let Ok(result) = self.reader.lookup(ip) else {
            return DbAnswer {
                network: whole(ip),
                place: None,
            };
        };
        let network = match result.network() {
            // A v4 address matched above the IPv4 subtree of a v6 tree: the
            // whole IPv4 space shares that answer.
            Ok(net) if net.ip().is_ipv4() == ip.is_ipv4() => (net.ip(), net.prefix()),
            _ => whole(ip),
        };
        let decoded = if names {
            result
                .decode::<CityRecord<'_>>()
                .map(|r| r.map(Place::from))
        } else {
            self.position(&result).map(|found| {
                found.map(|(coords, region)| Place {
                    coords,
                    region,
                    ..Place::default()
                })
            })
        };
        let place = match decoded {
            Ok(Some(place)) => Some(place),
            Ok(None) => None,
            Err(error) => {
                if !self.decode_failure_logged.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        path = %self.path.display(),
                        %ip,
                        %error,
                        "GeoIP record does not decode; treating such addresses as unknown"
                    );
                }
                None
            }
        };
        DbAnswer { network, place }
    }
}

impl GeoDb {
    /// The record's coordinates (None: a record without usable ones) and
    /// region, from the cache when it was seen before.
    fn position(
        &self,
        result: &maxminddb::LookupResult<'_, Vec<u8>>,
    ) -> Result<Option<(Option<LatLon>, Region)>, maxminddb::MaxMindDbError> {
        let Some(offset) = result.offset() else {
            return Ok(None);
        };
        let cached = |positions: &Mutex<HashMap<_, _, _>>| {
            positions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&offset)
                .copied()
        };
        if let Some(coords) = cached(&self.positions) {
            return Ok(Some(coords));
        }
        let Some(found) = decode_position(result)? else {
            return Ok(None);
        };
        let mut positions = self.positions.lock().unwrap_or_else(|e| e.into_inner());
        if positions.len() >= POSITIONS_KEPT {
            positions.clear();
        }
        positions.insert(offset, found);
        Ok(Some(found))
    }
}

/// The record's coordinates (None inside: a record without usable ones)
/// and region codes, decoded: what queries (through the cache) and the
/// scope trees read.
fn decode_position(
    result: &maxminddb::LookupResult<'_, Vec<u8>>,
) -> Result<Option<(Option<LatLon>, Region)>, maxminddb::MaxMindDbError> {
    Ok(result.decode::<PositionRecord<'_>>()?.map(|record| {
        (
            record.location.and_then(Coordinates::valid),
            Region::of(
                record.continent.and_then(|c| c.code),
                record.country.and_then(|c| c.iso_code),
                first_iso_code(record.subdivisions.as_deref()),
            ),
        )
    }))
}

impl Coordinates {
    fn valid(self) -> Option<LatLon> {
        let (lat, lon) = (self.latitude?, self.longitude?);
        let valid = lat.is_finite()
            && lon.is_finite()
            && (-90.0..=90.0).contains(&lat)
            && (-180.0..=180.0).contains(&lon);
        valid.then_some(LatLon { lat, lon })
    }
}

fn first_iso_code<'a>(subdivisions: Option<&[Country<'a>]>) -> Option<&'a str> {
    subdivisions?.first()?.iso_code
}

impl From<CityRecord<'_>> for Place {
    fn from(r: CityRecord<'_>) -> Place {
        Place {
            coords: r.location.and_then(Coordinates::valid),
            region: Region::of(
                r.continent.as_ref().and_then(|c| c.code),
                r.country.as_ref().and_then(|c| c.iso_code),
                first_iso_code(r.subdivisions.as_deref()),
            ),
            city: r
                .city
                .and_then(|c| c.names)
                .and_then(|n| n.en)
                .map(str::to_owned),
            country: r.country.and_then(|c| c.iso_code).map(str::to_owned),
            continent: r.continent.and_then(|c| c.code).map(str::to_owned),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocationSource {
    /// A `[[geoip.network]]` matched.
    Override,
    /// The database has a record for the address (it may lack coordinates).
    Database,
    /// Nothing matched: the location is unknown.
    Miss,
}

impl LocationSource {
    pub fn as_str(self) -> &'static str {
        match self {
            LocationSource::Override => "override",
            LocationSource::Database => "database",
            LocationSource::Miss => "miss",
        }
    }
}

/// The ISO codes of a place, what policy maps match on, kept inline so the
/// answering path has them without an allocation: upper-case ASCII, zero
/// bytes where unknown (and padding a shorter subdivision code).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Region {
    /// AF AN AS EU NA OC SA.
    pub continent: [u8; 2],
    /// ISO 3166-1 alpha-2.
    pub country: [u8; 2],
    /// The part after the dash of the first (largest) subdivision's ISO
    /// 3166-2 code: "WA" of US-WA. Up to 3 characters.
    pub subdivision: [u8; 3],
}

impl Region {
    /// From the database's strings; a code of another shape counts as
    /// unknown (a policy map could never name it).
    pub fn of(continent: Option<&str>, country: Option<&str>, subdivision: Option<&str>) -> Region {
        Region {
            continent: code(continent).unwrap_or_default(),
            country: code(country).unwrap_or_default(),
            subdivision: code(subdivision).unwrap_or_default(),
        }
    }

    /// The code in `bytes`, less its padding.
    fn text(bytes: &[u8]) -> Option<&str> {
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        (end > 0).then(|| std::str::from_utf8(&bytes[..end]).unwrap_or(""))
    }

    pub fn continent(&self) -> Option<&str> {
        Region::text(&self.continent)
    }

    pub fn country(&self) -> Option<&str> {
        Region::text(&self.country)
    }

    /// The subdivision's code after the dash ("WA").
    pub fn subdivision(&self) -> Option<&str> {
        Region::text(&self.subdivision)
    }
}

/// `s` in `N` bytes (zero-padded): 1 to N ASCII letters or digits,
/// upper-cased; None otherwise.
pub fn code<const N: usize>(s: Option<&str>) -> Option<[u8; N]> {
    let s = s?;
    if s.is_empty() || s.len() > N || !s.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    let mut out = [0u8; N];
    out[..s.len()].copy_from_slice(s.as_bytes());
    out.make_ascii_uppercase();
    Some(out)
}

#[derive(Debug, Clone, PartialEq)]
pub struct Location {
    /// None: unknown location (miss, or a record without coordinates).
    pub coords: Option<LatLon>,
    /// Continent, country and subdivision codes, with or without the
    /// place names: what policy maps match.
    pub region: Region,
    /// The network that decided: the override's cidr, or the database's
    /// network (also on a miss: the empty part of the tree around the
    /// address). In the family the address was looked up in, so an
    /// IPv4-mapped address is decided by an IPv4 network.
    pub network: (IpAddr, u8),
    /// How many leading bits of the queried address decide this answer,
    /// counted in the queried address's family (`::ffff:81.2.69.160` in a
    /// /27 gives 123). At least `network.1`; longer when an override lies
    /// inside `network` without containing the address, since addresses in
    /// that override get another answer.
    pub prefix_len: u8,
    pub city: Option<String>,
    pub country: Option<String>,
    pub continent: Option<String>,
    pub source: LocationSource,
}

#[derive(Debug, Clone)]
struct Override {
    /// Normalised: IPv4-mapped IPv6 networks are stored as IPv4.
    cidr: Cidr,
    location: LatLon,
    country: Option<String>,
    continent: Option<String>,
    region: Region,
}

impl Override {
    /// Where the override places its addresses (`names`: with them).
    fn location(&self, names: bool) -> Location {
        Location {
            coords: Some(self.location),
            region: self.region,
            network: (self.cidr.addr, self.cidr.prefix),
            prefix_len: self.cidr.prefix,
            city: None,
            country: self.country.clone().filter(|_| names),
            continent: self.continent.clone().filter(|_| names),
            source: LocationSource::Override,
        }
    }
}

impl Location {
    /// What the database (or its absence) says, overrides aside.
    fn from_database(answer: DbAnswer) -> Location {
        let source = if answer.place.is_some() {
            LocationSource::Database
        } else {
            LocationSource::Miss
        };
        let place = answer.place.unwrap_or_default();
        Location {
            coords: place.coords,
            region: place.region,
            network: answer.network,
            prefix_len: answer.network.1,
            city: place.city,
            country: place.country,
            continent: place.continent,
            source,
        }
    }
}

/// The database (optional) and the overrides, immutable once built.
#[derive(Debug, Default)]
pub struct Locator {
    db: Option<Arc<GeoDb>>,
    /// Longest prefix first, so the first match is the longest.
    overrides: Vec<Override>,
}

impl Locator {
    pub fn new(db: Option<Arc<GeoDb>>, networks: &[GeoNetwork]) -> Locator {
        let mut overrides: Vec<Override> = networks
            .iter()
            .map(|n| Override {
                cidr: normalise(n.cidr),
                location: n.location,
                country: n.country.clone(),
                continent: n.continent.clone(),
                region: Region::of(n.continent.as_deref(), n.country.as_deref(), None),
            })
            .collect();
        overrides.sort_by_key(|o| std::cmp::Reverse(o.cidr.prefix));
        Locator { db, overrides }
    }

    /// Builds the locator `geoip` describes, reusing `previous`'s database
    /// when it is the same file, unchanged on disk.
    pub fn from_config(
        geoip: Option<&GeoIpConfig>,
        previous: Option<&Locator>,
    ) -> Result<Locator, GeoIpError> {
        let Some(geoip) = geoip else {
            return Ok(Locator::default());
        };
        let db = match &geoip.database {
            None => None,
            Some(path) => {
                let reusable = previous
                    .and_then(|p| p.db.as_ref())
                    .filter(|db| db.path == *path && !db.changed_on_disk());
                match reusable {
                    Some(db) => Some(db.clone()),
                    None => Some(Arc::new(GeoDb::open(path)?)),
                }
            }
        };
        Ok(Locator::new(db, &geoip.networks))
    }

    pub fn database(&self) -> Option<&Arc<GeoDb>> {
        self.db.as_ref()
    }

    /// A locator with the database re-read, when its file changed on disk:
    /// `Ok(None)` when it did not; an error (the caller keeps this one) when
    /// the new file is bad.
    pub fn refreshed(&self) -> Result<Option<Locator>, GeoIpError> {
        let Some(db) = &self.db else { return Ok(None) };
        if !db.changed_on_disk() {
            return Ok(None);
        }
        let fresh = GeoDb::open(&db.path)?;
        Ok(Some(Locator {
            db: Some(Arc::new(fresh)),
            overrides: self.overrides.clone(),
        }))
    }

    pub fn locate(&self, ip: IpAddr) -> Location {
        self.locate_with(ip, true)
    }

    /// [`locate`](Self::locate) without the place names (None): what
    /// answering needs, without decoding and copying names per query.
    pub fn position(&self, ip: IpAddr) -> Location {
        self.locate_with(ip, false)
    }

    fn locate_with(&self, ip: IpAddr, names: bool) -> Location {
        let (addr, offset) = match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), 96),
                None => (ip, 0),
            },
            IpAddr::V4(_) => (ip, 0),
        };
        let mut location = if let Some(o) = self.overrides.iter().find(|o| contains(o.cidr, addr)) {
            o.location(names)
        } else {
            Location::from_database(match &self.db {
                Some(db) => db.lookup(addr, names),
                None => DbAnswer {
                    network: (unspecified_like(addr), 0),
                    place: None,
                },
            })
        };
        // An override inside the deciding network answers its addresses
        // differently: the scope must be long enough to exclude it.
        for o in &self.overrides {
            if o.cidr.addr.is_ipv4() == addr.is_ipv4() && !contains(o.cidr, addr) {
                let split = common_prefix(o.cidr.addr, addr) + 1;
                location.prefix_len = location.prefix_len.max(split);
            }
        }
        location.prefix_len += offset;
        location
    }
}

/// Builds the locator for `config`, as a config error naming
/// `geoip.database` when the database cannot be used.
pub fn load(config: &Config, previous: Option<&Locator>) -> Result<Locator, ConfigError> {
    Locator::from_config(config.geoip.as_ref(), previous).map_err(|e| config_error(config, e))
}

/// `error` as a config error naming `geoip.database` and its value.
pub fn config_error(config: &Config, error: GeoIpError) -> ConfigError {
    let shown = config
        .geoip
        .as_ref()
        .and_then(|g| g.database.as_ref())
        .map(|p| format!("{:?}", p.display().to_string()))
        .unwrap_or_default();
    ConfigError::value("geoip.database", shown, error)
}

fn unspecified_like(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    }
}

/// `cidr` with an IPv4-mapped IPv6 network written as the IPv4 one.
pub(crate) fn normalise(cidr: Cidr) -> Cidr {
    match cidr.addr {
        IpAddr::V6(v6) if cidr.prefix >= 96 => match v6.to_ipv4_mapped() {
            Some(v4) => Cidr {
                addr: v4.into(),
                prefix: cidr.prefix - 96,
            },
            None => cidr,
        },
        _ => cidr,
    }
}

/// The address as a number, and its family's width in bits.
fn bits(ip: IpAddr) -> (u128, u8) {
    match ip {
        IpAddr::V4(v4) => (u32::from(v4).into(), 32),
        IpAddr::V6(v6) => (u128::from(v6), 128),
    }
}

fn contains(cidr: Cidr, ip: IpAddr) -> bool {
    cidr.contains(ip)
}

/// Leading bits `a` and `b` (same family) share.
pub(crate) fn common_prefix(a: IpAddr, b: IpAddr) -> u8 {
    let ((a, width), (b, _)) = (bits(a), bits(b));
    let same = (a ^ b).leading_zeros() - (128 - u32::from(width));
    same.min(width.into()) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_db() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("geoip/GeoIP2-City-Test.mmdb")
    }

    fn db_locator() -> Locator {
        Locator::new(Some(Arc::new(GeoDb::open(&test_db()).unwrap())), &[])
    }

    fn net(s: &str) -> (IpAddr, u8) {
        let (a, p) = s.split_once('/').unwrap();
        (a.parse().unwrap(), p.parse().unwrap())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_test_table_resolves_with_networks_in_the_query_family() {
        let l = db_locator();
        let cases = [
            (
                "81.2.69.160",
                "81.2.69.160/27",
                Some("London"),
                "GB",
                "EU",
                51.5142,
                -0.0931,
            ),
            (
                "216.160.83.56",
                "216.160.83.56/29",
                Some("Milton"),
                "US",
                "NA",
                47.2513,
                -122.3149,
            ),
            (
                "214.0.0.1",
                "214.0.0.0/24",
                Some("Singapore"),
                "SG",
                "AS",
                1.336,
                103.7716,
            ),
            (
                "149.101.100.1",
                "149.101.100.0/28",
                None,
                "US",
                "NA",
                37.751,
                -97.822,
            ),
            (
                "2001:480:10::1",
                "2001:480:10::/48",
                Some("San Diego"),
                "US",
                "NA",
                32.7203,
                -117.1552,
            ),
            (
                "2a02:e700::1",
                "2a02:e700::/29",
                None,
                "LY",
                "AF",
                28.0,
                17.0,
            ),
        ];
        for (addr, network, city, country, continent, lat, lon) in cases {
            let loc = l.locate(ip(addr));
            assert_eq!(loc.source, LocationSource::Database, "{addr}");
            assert_eq!(loc.network, net(network), "{addr}");
            assert_eq!(loc.prefix_len, net(network).1, "{addr}");
            assert_eq!(loc.city.as_deref(), city, "{addr}");
            assert_eq!(loc.country.as_deref(), Some(country), "{addr}");
            assert_eq!(loc.continent.as_deref(), Some(continent), "{addr}");
            assert_eq!(loc.coords, Some(LatLon { lat, lon }), "{addr}");
            // What answers use: the same place, without the names.
            let position = l.position(ip(addr));
            assert_eq!(
                (
                    position.coords,
                    position.network,
                    position.prefix_len,
                    position.source
                ),
                (loc.coords, loc.network, loc.prefix_len, loc.source),
                "{addr}"
            );
            assert!(
                position.city.is_none() && position.country.is_none(),
                "{addr}"
            );
        }
    }

    #[test]
    fn records_without_coordinates_are_found_but_unplaced() {
        let l = db_locator();
        let anycast = l.locate(ip("214.1.1.1"));
        assert_eq!(anycast.source, LocationSource::Database);
        assert_eq!(anycast.network, net("214.1.1.0/24"));
        assert_eq!(
            (anycast.coords, anycast.country, anycast.continent),
            (None, None, None)
        );

        let continent_only = l.locate(ip("2.3.3.1"));
        assert_eq!(continent_only.source, LocationSource::Database);
        assert_eq!(continent_only.network, net("2.3.3.0/24"));
        assert_eq!(continent_only.coords, None);
        assert_eq!(continent_only.continent.as_deref(), Some("EU"));
        assert_eq!(continent_only.country, None);
    }

    #[test]
    fn a_miss_still_reports_the_empty_network_around_the_address() {
        let l = db_locator();
        for addr in ["1.1.1.1", "127.0.0.1", "::1"] {
            let loc = l.locate(ip(addr));
            assert_eq!(loc.source, LocationSource::Miss, "{addr}");
            assert_eq!(loc.coords, None);
            let (network, prefix) = loc.network;
            assert_eq!(network.is_ipv4(), ip(addr).is_ipv4(), "{addr}: {network}");
            assert!(
                contains(
                    Cidr {
                        addr: network,
                        prefix
                    },
                    ip(addr)
                ),
                "{addr}"
            );
            assert!(prefix > 0 && prefix < 128, "{addr}: /{prefix}");
        }
    }

    #[test]
    fn ipv4_mapped_addresses_are_ipv4_with_the_prefix_in_ipv6_terms() {
        let l = db_locator();
        let loc = l.locate(ip("::ffff:81.2.69.160"));
        assert_eq!(loc.city.as_deref(), Some("London"));
        assert_eq!(loc.network, net("81.2.69.160/27"));
        assert_eq!(loc.prefix_len, 123);
        // 6to4 is an alias inside the database, answered in IPv6 terms.
        let six_to_four = l.locate(ip("2002:5102:45a0::1"));
        assert_eq!(six_to_four.city.as_deref(), Some("London"));
        assert!(six_to_four.network.0.is_ipv6());
    }

    fn network(cidr: &str, lat: f64) -> GeoNetwork {
        let (addr, prefix) = net(cidr);
        GeoNetwork {
            cidr: Cidr { addr, prefix },
            location: LatLon { lat, lon: 0.0 },
            country: Some("DE".into()),
            continent: None,
        }
    }

    #[test]
    fn overrides_win_over_the_database_with_the_longest_prefix() {
        let db = Arc::new(GeoDb::open(&test_db()).unwrap());
        let l = Locator::new(
            Some(db),
            &[
                network("81.0.0.0/8", 1.0),
                network("81.2.69.0/24", 2.0),
                network("10.0.0.0/8", 3.0),
            ],
        );
        let london = l.locate(ip("81.2.69.160"));
        assert_eq!(london.source, LocationSource::Override);
        assert_eq!(london.coords.unwrap().lat, 2.0);
        assert_eq!(london.network, net("81.2.69.0/24"));
        assert_eq!(london.prefix_len, 24);

        // The /8 decides, but the /24 inside it answers differently: the
        // scope must not cover it.
        let other = l.locate(ip("81.2.70.1"));
        assert_eq!(other.coords.unwrap().lat, 1.0);
        assert_eq!(other.network, net("81.0.0.0/8"));
        assert_eq!(other.prefix_len, 23);

        let mapped = l.locate(ip("::ffff:10.1.2.3"));
        assert_eq!(mapped.coords.unwrap().lat, 3.0);
        assert_eq!(mapped.prefix_len, 96 + 8);
    }

    #[test]
    fn without_a_database_only_overrides_place_clients() {
        let l = Locator::new(
            None,
            &[
                network("192.0.2.0/24", 5.0),
                network("::ffff:198.51.100.0/120", 6.0),
            ],
        );
        assert_eq!(l.locate(ip("192.0.2.7")).coords.unwrap().lat, 5.0);
        assert_eq!(l.locate(ip("198.51.100.7")).coords.unwrap().lat, 6.0);
        let miss = l.locate(ip("192.0.3.1"));
        assert_eq!(miss.source, LocationSource::Miss);
        assert_eq!(miss.network, net("0.0.0.0/0"));
        // 192.0.3.1 shares 23 bits with 192.0.2.0: /24 keeps the override out.
        assert_eq!(miss.prefix_len, 24);
        assert_eq!(l.locate(ip("2001:db8::1")).prefix_len, 0);
    }

    #[test]
    fn a_country_database_is_refused_and_bad_files_name_their_path() {
        let country = test_db().with_file_name("GeoIP2-Country-Test.mmdb");
        let err = GeoDb::open(&country).unwrap_err().to_string();
        assert!(
            err.contains("GeoIP2-Country") && err.contains("City"),
            "{err}"
        );
        assert!(err.contains("GeoIP2-Country-Test.mmdb"), "{err}");

        let missing = Path::new("/nonexistent/geo.mmdb");
        let err = GeoDb::open(missing).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/geo.mmdb"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.mmdb");
        fs::write(&garbage, b"not a database at all").unwrap();
        let err = GeoDb::open(&garbage).unwrap_err().to_string();
        assert!(
            err.contains("garbage.mmdb") && err.contains("MaxMind"),
            "{err}"
        );
    }

    #[test]
    fn a_changed_file_is_reread_and_a_bad_one_keeps_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("city.mmdb");
        fs::copy(test_db(), &path).unwrap();
        let config = GeoIpConfig {
            database: Some(path.clone()),
            networks: vec![],
        };
        let first = Locator::from_config(Some(&config), None).unwrap();
        assert!(first.refreshed().unwrap().is_none());
        let again = Locator::from_config(Some(&config), Some(&first)).unwrap();
        assert!(Arc::ptr_eq(
            first.database().unwrap(),
            again.database().unwrap()
        ));

        // Overwritten in place with garbage: refused, the old one still answers.
        fs::write(&path, b"garbage").unwrap();
        assert!(first.refreshed().is_err());
        assert_eq!(
            first.locate(ip("81.2.69.160")).city.as_deref(),
            Some("London")
        );

        // Replaced by rename with a good file: picked up.
        let next = dir.path().join("next.mmdb");
        fs::copy(test_db(), &next).unwrap();
        fs::rename(&next, &path).unwrap();
        let fresh = first.refreshed().unwrap().expect("a new file");
        assert_eq!(
            fresh.locate(ip("214.0.0.1")).city.as_deref(),
            Some("Singapore")
        );
    }

    #[test]
    fn common_prefix_and_contains() {
        assert_eq!(common_prefix(ip("10.0.0.0"), ip("10.0.0.0")), 32);
        assert_eq!(common_prefix(ip("10.0.0.0"), ip("11.0.0.0")), 7);
        assert_eq!(common_prefix(ip("::"), ip("8000::")), 0);
        assert!(contains(
            Cidr {
                addr: ip("0.0.0.0"),
                prefix: 0
            },
            ip("1.2.3.4")
        ));
        assert!(!contains(
            Cidr {
                addr: ip("::"),
                prefix: 0
            },
            ip("1.2.3.4")
        ));
    }

    #[test]
    fn regions_come_with_and_without_names_and_from_overrides() {
        let l = db_locator();
        for (addr, continent, country, subdivision) in [
            ("216.160.83.56", Some("NA"), Some("US"), Some("WA")),
            ("81.2.69.160", Some("EU"), Some("GB"), Some("ENG")),
            ("2.3.3.1", Some("EU"), None, None),
            ("1.1.1.1", None, None, None),
        ] {
            for location in [
                l.locate(ip(addr)),
                l.position(ip(addr)),
                l.position(ip(addr)),
            ] {
                let r = location.region;
                assert_eq!(
                    (r.continent(), r.country(), r.subdivision()),
                    (continent, country, subdivision),
                    "{addr}"
                );
            }
        }
        let network = GeoNetwork {
            cidr: Cidr {
                addr: ip("10.0.0.0"),
                prefix: 8,
            },
            location: LatLon { lat: 1.0, lon: 2.0 },
            country: Some("DE".into()),
            continent: Some("EU".into()),
        };
        let l = Locator::new(None, &[network]);
        let r = l.position(ip("10.1.2.3")).region;
        assert_eq!(
            (r.continent(), r.country(), r.subdivision()),
            (Some("EU"), Some("DE"), None)
        );
        assert_eq!(code::<2>(Some("toolong")), None);
        assert_eq!(code::<3>(Some("en")), Some(*b"EN\0"));
    }
}
