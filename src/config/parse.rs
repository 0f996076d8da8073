//! TOML text -> validated [`Config`].
//!
//! The document is parsed with spans (`toml::de::DeTable`), then walked by
//! hand. Every parser below reports its own errors and returns `None` for a
//! bad value; callers evaluate all their fields before combining them with
//! `?`, so one bad key never hides the errors of its neighbours.

use std::cell::RefCell;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt::{Display, Write as _};
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::error::{ConfigError, ConfigErrors};
use super::model::*;

/// Reads and validates the file at `path`; `Config::source` is made absolute.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let source = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let text = std::fs::read_to_string(&source).map_err(|e| ConfigError {
        path: String::new(),
        message: format!("cannot read {}: {e}", source.display()),
        line: None,
    })?;
    parse_str(&text, &source)
}

/// Validates `text`; relative paths in it are resolved against `source`'s
/// directory. No file is opened (see [`check_files`]).
pub fn parse_str(text: &str, source: &Path) -> Result<Config, ConfigErrors> {
    let (config, mut ctx) = read_document(text, source)?;
    if ctx.errors.is_empty() {
        return Ok(config);
    }
    ctx.errors.sort_by_key(|(at, _)| *at);
    Err(ConfigErrors(
        ctx.errors.into_iter().map(|(_, e)| e).collect(),
    ))
}

/// The whole walk, with what it found along the way. The config is only
/// valid when `errors` is empty.
fn read_document(text: &str, source: &Path) -> Result<(Config, Ctx), ConfigError> {
    let lines = Lines::new(text);
    let root = DeTable::parse(text).map_err(|e| syntax_error(&e, text, &lines))?;
    let mut ctx = Ctx {
        lines,
        base: source.parent().unwrap_or(Path::new("")).to_path_buf(),
        errors: Vec::new(),
        seq: 0,
        binds: HashMap::new(),
        #[cfg(test)]
        looked_up: Default::default(),
    };
    let config = ctx.config(root.get_ref(), source);
    Ok((config, ctx))
}

/// Opens every file `config` names (GeoIP database, zone files, TLS
/// certificates and keys) and reports each one that cannot be opened.
pub fn check_files(config: &Config) -> Vec<ConfigError> {
    let mut files: Vec<(String, &Path)> = Vec::new();
    if let Some(db) = config.geoip.as_ref().and_then(|g| g.database.as_deref()) {
        files.push(("geoip.database".to_owned(), db));
    }
    if let Some(dns) = &config.dns {
        for (i, zone) in dns.zones.iter().enumerate() {
            if let Some(file) = &zone.file {
                files.push((format!("dns.zone[{i}].file"), file));
            }
        }
    }
    for (i, listener) in config.listeners.iter().enumerate() {
        for (j, tls) in listener.tls.iter().enumerate() {
            files.push((format!("listener[{i}].tls[{j}].cert"), &tls.cert));
            files.push((format!("listener[{i}].tls[{j}].key"), &tls.key));
        }
    }
    let ca_of = |check: &'_ CheckConfig| match &check.probe {
        Probe::Http(h) => h.ca.clone(),
        Probe::Tcp => None,
    };
    let mut cas: Vec<(String, PathBuf)> = Vec::new();
    for (i, pool) in config.pools.iter().enumerate() {
        if let Some(ca) = pool.check.as_ref().and_then(ca_of) {
            cas.push((format!("pool[{i}].check.ca"), ca));
        }
        if let Some(ca) = pool.tls.as_ref().and_then(|t| t.ca.clone()) {
            cas.push((format!("pool[{i}].tls.ca"), ca));
        }
    }
    for (i, dc) in config.datacenters.iter().enumerate() {
        if let Some(ca) = dc.check.as_ref().and_then(|r| ca_of(&r.check)) {
            cas.push((format!("datacenter[{i}].check.ca"), ca));
        }
    }
    files.extend(cas.iter().map(|(k, p)| (k.clone(), p.as_path())));
    // The validated Config keeps no spans; the lines come from the source
    // file when it still parses (best effort: it may have changed since).
    let text = std::fs::read_to_string(&config.source).ok();
    let located = text
        .as_deref()
        .and_then(|text| Some((DeTable::parse(text).ok()?, Lines::new(text))));
    files
        .into_iter()
        .filter_map(|(path, file)| {
            let problem = match std::fs::File::open(file).and_then(|f| f.metadata()) {
                Ok(meta) if meta.is_file() => return None,
                Ok(_) => "not a regular file".to_owned(),
                Err(e) => e.to_string(),
            };
            let line = located.as_ref().and_then(|(root, lines)| {
                locate(root.get_ref(), &path).map(|offset| lines.line(offset))
            });
            let mut shown = String::new();
            quote(&file.display().to_string(), &mut shown);
            Some(ConfigError {
                message: format!("= {shown}: cannot open: {problem}"),
                path,
                line,
            })
        })
        .collect()
}

/// The byte offset of the value at a key path like `listener[1].tls[0].cert`.
fn locate(root: &DeTable<'_>, path: &str) -> Option<usize> {
    let mut table = root;
    let mut found: Option<&Spanned<DeValue<'_>>> = None;
    for segment in path.split('.') {
        if let Some(value) = found {
            table = value.get_ref().as_table()?;
        }
        let (key, index) = match segment.split_once('[') {
            Some((key, rest)) => (key, Some(rest.strip_suffix(']')?.parse::<usize>().ok()?)),
            None => (segment, None),
        };
        let mut value = table.get(key)?;
        if let Some(i) = index {
            value = value.get_ref().as_array()?.get(i)?;
        }
        found = Some(value);
    }
    found.map(|value| value.span().start)
}

fn syntax_error(e: &toml::de::Error, text: &str, lines: &Lines) -> ConfigError {
    match e.span() {
        Some(span) => ConfigError {
            path: String::new(),
            message: format!(
                "TOML syntax error at column {}: {}",
                lines.column(text, span.start),
                e.message()
            ),
            line: Some(lines.line(span.start)),
        },
        None => ConfigError {
            path: String::new(),
            message: format!("TOML syntax error: {}", e.message()),
            line: None,
        },
    }
}

/// Byte offsets of line starts, to turn spans into 1-based line numbers.
struct Lines(Vec<usize>);

impl Lines {
    fn new(text: &str) -> Self {
        Lines(
            std::iter::once(0)
                .chain(text.match_indices('\n').map(|(i, _)| i + 1))
                .collect(),
        )
    }

    fn line(&self, offset: usize) -> usize {
        self.0.partition_point(|&start| start <= offset)
    }

    fn column(&self, text: &str, offset: usize) -> usize {
        let start = self.0.get(self.line(offset) - 1).copied().unwrap_or(0);
        text.get(start..offset).map_or(1, |s| s.chars().count() + 1)
    }
}

// ---------------------------------------------------------------------------
// Walking the document

/// A value and its key path (`pool[1].backends[0].addr`).
#[derive(Clone)]
struct Field<'t, 'i> {
    path: String,
    value: &'t Spanned<DeValue<'i>>,
}

impl<'t, 'i> Field<'t, 'i> {
    fn get(&self) -> &'t DeValue<'i> {
        self.value.get_ref()
    }

    fn offset(&self) -> usize {
        self.value.span().start
    }
}

/// A table being read. Every key the code asks for, present or not, is
/// recorded: those are the keys this table accepts, so once its code has
/// run, any other key in it is unknown (see [`Ctx::table`]). No list of
/// keys is kept by hand, so a new key cannot be forgotten in one.
struct Tbl<'t, 'i> {
    path: String,
    /// Where a missing key is reported: the `[[header]]` or the `{`.
    offset: usize,
    map: &'t DeTable<'i>,
    /// In the order first asked for, which is the order they are listed
    /// in "accepted here".
    known: RefCell<Vec<&'static str>>,
    /// Where this table's unknown keys sort among errors at the same
    /// offset: as if they were reported on entering the table.
    seq: usize,
}

impl<'t, 'i> Tbl<'t, 'i> {
    fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn field(&self, key: &'static str) -> Option<Field<'t, 'i>> {
        let mut known = self.known.borrow_mut();
        if !known.contains(&key) {
            known.push(key);
        }
        self.map.get(key).map(|value| Field {
            path: self.key_path(key),
            value,
        })
    }
}

/// `pool[2].backends[0].addr` -> `pool[].backends[].addr`.
#[cfg(test)]
fn normalise(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => in_index = true,
            ']' => {
                in_index = false;
                out.push_str("[]");
            }
            _ if in_index => {}
            c => out.push(c),
        }
    }
    out
}

/// Records `key` as first seen at `path`; on a second sighting returns the
/// first one's path.
fn first_seen<K: Eq + Hash>(seen: &mut HashMap<K, String>, key: K, path: &str) -> Option<String> {
    match seen.entry(key) {
        Entry::Occupied(e) => Some(e.get().clone()),
        Entry::Vacant(e) => {
            e.insert(path.to_owned());
            None
        }
    }
}

struct Ctx {
    lines: Lines,
    base: PathBuf,
    /// Sorted by byte offset, then by `seq` so that errors at one offset
    /// stay in the order the walk met them.
    errors: Vec<((usize, usize), ConfigError)>,
    /// The next error's place among errors at its offset.
    seq: usize,
    /// TCP addresses bound so far (admin, DNS, listeners), with the key that
    /// binds each: two sockets cannot share one.
    binds: HashMap<SocketAddr, String>,
    /// Every key path asked for (array indexes as `[]`), and whether it was
    /// present anywhere: the reference config must set every one.
    #[cfg(test)]
    looked_up: std::collections::BTreeMap<String, bool>,
}

const LOCATION_EXAMPLE: &str = "{ lat = 50.11, lon = 8.68 }";
const SOA_EXAMPLE: &str = "{ mname = \"ns1.mysite.com.\", rname = \"hostmaster.mysite.com.\", \
     serial = 1, refresh = \"1h\", retry = \"10m\", expire = \"14d\", minimum = \"60s\" }";
/// RFC 2181 §8: TTLs with the top bit set are treated as 0 by resolvers.
const MAX_TTL: i64 = 0x7fff_ffff;

#[derive(Clone, Copy, PartialEq)]
enum CheckKind {
    Http,
    Https,
    Tcp,
}

const CHECK_KINDS: &[(&str, CheckKind)] = &[
    ("http", CheckKind::Http),
    ("https", CheckKind::Https),
    ("tcp", CheckKind::Tcp),
];

/// The probe-independent part of a check.
struct Timing {
    interval: Duration,
    timeout: Duration,
    rise: u32,
    fall: u32,
}

impl Timing {
    fn with(self, probe: Probe) -> CheckConfig {
        CheckConfig {
            probe,
            interval: self.interval,
            timeout: self.timeout,
            rise: self.rise,
            fall: self.fall,
        }
    }
}

/// A zone as far as it could be validated: later checks (geo names, nested
/// zones) need its origin and good records even when something else in it
/// is bad.
struct ParsedZone<'t, 'i> {
    origin: Option<String>,
    /// Each valid record with its table, where conflicts are reported.
    records: Vec<(Field<'t, 'i>, RecordConfig)>,
    config: Option<ZoneConfig>,
}

impl Ctx {
    // --- reporting -------------------------------------------------------

    fn err(&mut self, path: String, offset: usize, message: String) {
        let seq = self.next_seq();
        self.push((offset, seq), path, message);
    }

    fn next_seq(&mut self) -> usize {
        self.seq += 1;
        self.seq
    }

    fn push(&mut self, at: (usize, usize), path: String, message: String) {
        let line = Some(self.lines.line(at.0));
        self.errors.push((
            at,
            ConfigError {
                path,
                message,
                line,
            },
        ));
    }

    fn bad(&mut self, f: &Field<'_, '_>, message: impl Display) {
        let message = format!("= {}: {message}", show(f.get()));
        self.err(f.path.clone(), f.offset(), message);
    }

    fn missing(&mut self, t: &Tbl<'_, '_>, key: &str, example: &str) {
        self.err(
            t.key_path(key),
            t.offset,
            format!("required key is missing; add e.g. {key} = {example}"),
        );
    }

    // --- structure -------------------------------------------------------

    /// Reads the table at `f` with `read`, then reports every key in it
    /// that `read` never asked for.
    fn table<'t, 'i, T>(
        &mut self,
        f: &Field<'t, 'i>,
        expected: &str,
        read: impl FnOnce(&mut Self, &Tbl<'t, 'i>) -> Option<T>,
    ) -> Option<T> {
        let DeValue::Table(map) = f.get() else {
            self.bad(f, expected);
            return None;
        };
        self.walk(f.path.clone(), f.offset(), map, read)
    }

    /// [`Ctx::table`] for a table already known to be one (the root).
    fn walk<'t, 'i, T>(
        &mut self,
        path: String,
        offset: usize,
        map: &'t DeTable<'i>,
        read: impl FnOnce(&mut Self, &Tbl<'t, 'i>) -> T,
    ) -> T {
        let t = Tbl {
            path,
            offset,
            map,
            known: RefCell::default(),
            seq: self.next_seq(),
        };
        let out = read(self, &t);
        self.unknown_keys(&t);
        out
    }

    fn unknown_keys(&mut self, t: &Tbl<'_, '_>) {
        let known = t.known.borrow();
        #[cfg(test)]
        for key in known.iter() {
            let path = normalise(&t.key_path(key));
            *self.looked_up.entry(path).or_default() |= t.map.contains_key(*key);
        }
        for (key, _) in t.map.iter() {
            let name: &str = key.get_ref();
            if known.contains(&name) {
                continue;
            }
            let hint = suggest(name, known.iter().copied())
                .map(|s| format!(" (did you mean {s}?)"))
                .unwrap_or_default();
            self.push(
                (key.span().start, t.seq),
                t.key_path(name),
                format!("unknown key{hint}; accepted here: {}", known.join(", ")),
            );
        }
    }

    fn array<'t, 'i>(&mut self, f: &Field<'t, 'i>, expected: &str) -> Option<Vec<Field<'t, 'i>>> {
        let DeValue::Array(items) = f.get() else {
            self.bad(f, expected);
            return None;
        };
        Some(
            items
                .iter()
                .enumerate()
                .map(|(i, value)| Field {
                    path: format!("{}[{i}]", f.path),
                    value,
                })
                .collect(),
        )
    }

    /// Parses every item, reporting all bad ones; `None` if any was bad.
    fn each<'t, 'i, T>(
        &mut self,
        items: &[Field<'t, 'i>],
        mut parse: impl FnMut(&mut Self, &Field<'t, 'i>) -> Option<T>,
    ) -> Option<Vec<T>> {
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for item in items {
            match parse(self, item) {
                Some(value) => out.push(value),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn req<'t, 'i, T>(
        &mut self,
        t: &Tbl<'t, 'i>,
        key: &'static str,
        example: &str,
        parse: impl FnOnce(&mut Self, &Field<'t, 'i>) -> Option<T>,
    ) -> Option<T> {
        match t.field(key) {
            Some(f) => parse(self, &f),
            None => {
                self.missing(t, key, example);
                None
            }
        }
    }

    fn opt<'t, 'i, T>(
        &mut self,
        t: &Tbl<'t, 'i>,
        key: &'static str,
        default: T,
        parse: impl FnOnce(&mut Self, &Field<'t, 'i>) -> Option<T>,
    ) -> Option<T> {
        match t.field(key) {
            Some(f) => parse(self, &f),
            None => Some(default),
        }
    }

    /// An optional key without a default: `Some(None)` when absent.
    fn maybe<'t, 'i, T>(
        &mut self,
        t: &Tbl<'t, 'i>,
        key: &'static str,
        parse: impl FnOnce(&mut Self, &Field<'t, 'i>) -> Option<T>,
    ) -> Option<Option<T>> {
        match t.field(key) {
            Some(f) => parse(self, &f).map(Some),
            None => Some(None),
        }
    }

    /// Reports each of `keys` that is present: they do not apply here.
    fn misplaced(&mut self, t: &Tbl<'_, '_>, keys: &[&'static str], why: &str) -> bool {
        let mut any = false;
        for f in keys.iter().filter_map(|key| t.field(key)) {
            self.bad(&f, why);
            any = true;
        }
        any
    }

    // --- scalars ---------------------------------------------------------

    fn string<'t>(&mut self, f: &Field<'t, '_>) -> Option<&'t str> {
        match f.get() {
            DeValue::String(s) => Some(&**s),
            DeValue::Integer(_) | DeValue::Float(_) | DeValue::Boolean(_) => {
                self.bad(f, "expected a string (in quotes)");
                None
            }
            _ => {
                self.bad(f, "expected a string");
                None
            }
        }
    }

    /// A string checked by `parse`, whose error message is reported as is.
    fn parsed<T>(
        &mut self,
        f: &Field<'_, '_>,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let s = self.string(f)?;
        parse(s).map_err(|message| self.bad(f, message)).ok()
    }

    fn bool(&mut self, f: &Field<'_, '_>) -> Option<bool> {
        match f.get() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.bad(f, "expected true or false");
                None
            }
        }
    }

    /// An integer in `min..=max` (`max == i64::MAX` means no upper bound).
    fn int(&mut self, f: &Field<'_, '_>, min: i64, max: i64) -> Option<i64> {
        let expected = if max == i64::MAX {
            format!("expected an integer >= {min}")
        } else {
            format!("expected an integer from {min} to {max}")
        };
        match f.get() {
            DeValue::Integer(n) => match i64::from_str_radix(n.as_str(), n.radix()) {
                Ok(n) if (min..=max).contains(&n) => Some(n),
                _ => {
                    self.bad(f, expected);
                    None
                }
            },
            DeValue::String(s) if s.trim().parse::<i64>().is_ok() => {
                self.bad(f, format!("{expected}, without quotes"));
                None
            }
            _ => {
                self.bad(f, expected);
                None
            }
        }
    }

    fn uint(&mut self, f: &Field<'_, '_>, min: i64, max: i64) -> Option<u32> {
        self.int(f, min, max.min(u32::MAX.into())).map(|n| n as u32)
    }

    fn ttl(&mut self, f: &Field<'_, '_>) -> Option<u32> {
        self.uint(f, 0, MAX_TTL)
    }

    fn duration(&mut self, f: &Field<'_, '_>, zero_ok: bool) -> Option<Duration> {
        match f.get() {
            DeValue::String(s) => match parse_duration(s) {
                Ok(d) if d.is_zero() && !zero_ok => {
                    self.bad(f, "must be longer than 0");
                    None
                }
                Ok(d) => Some(d),
                Err(message) => {
                    self.bad(f, message);
                    None
                }
            },
            DeValue::Integer(n) => {
                self.bad(f, format!("{DURATION_FORM}: write \"{n}s\" for seconds"));
                None
            }
            _ => {
                self.bad(f, DURATION_FORM);
                None
            }
        }
    }

    /// A listening address; a fixed port may be bound only once.
    fn bind(&mut self, f: &Field<'_, '_>) -> Option<SocketAddr> {
        let addr = self.parsed(f, |s| parse_socket(s, true))?;
        // Port 0 asks the kernel for a fresh port, so those never collide.
        if addr.port() != 0
            && let Some(first) = first_seen(&mut self.binds, addr, &f.path)
        {
            self.bad(f, format!("{first} already listens on this address"));
        }
        Some(addr)
    }

    fn path(&mut self, f: &Field<'_, '_>) -> Option<PathBuf> {
        let base = self.base.clone();
        self.parsed(f, |s| {
            if s.is_empty() {
                Err("expected a file path".to_owned())
            } else {
                Ok(base.join(s))
            }
        })
    }

    fn choice<T: Copy>(&mut self, f: &Field<'_, '_>, options: &[(&str, T)]) -> Option<T> {
        let s = self.string(f)?;
        if let Some((_, value)) = options.iter().find(|(name, _)| *name == s) {
            return Some(*value);
        }
        let names: Vec<String> = options
            .iter()
            .map(|(name, _)| format!("\"{name}\""))
            .collect();
        let hint = suggest(s, options.iter().map(|(name, _)| *name))
            .map(|name| format!(" (did you mean \"{name}\"?)"))
            .unwrap_or_default();
        self.bad(f, format!("expected one of {}{hint}", names.join(" | ")));
        None
    }

    fn degrees(&mut self, f: &Field<'_, '_>, limit: f64) -> Option<f64> {
        let value = match f.get() {
            DeValue::Float(x) => x.as_str().parse::<f64>().ok(),
            DeValue::Integer(n) => i64::from_str_radix(n.as_str(), n.radix())
                .ok()
                .map(|n| n as f64),
            _ => None,
        };
        match value {
            Some(v) if (-limit..=limit).contains(&v) => Some(v),
            _ => {
                self.bad(
                    f,
                    format!("expected a number of degrees from -{limit} to {limit}"),
                );
                None
            }
        }
    }

    fn location(&mut self, f: &Field<'_, '_>) -> Option<LatLon> {
        self.table(
            f,
            &format!("expected a table like {LOCATION_EXAMPLE}"),
            |c, t| {
                let lat = c.req(t, "lat", "50.11", |c, f| c.degrees(f, 90.0));
                let lon = c.req(t, "lon", "8.68", |c, f| c.degrees(f, 180.0));
                Some(LatLon {
                    lat: lat?,
                    lon: lon?,
                })
            },
        )
    }

    /// A reference to a `[[kind]]` by name.
    fn reference(&mut self, f: &Field<'_, '_>, kind: &str, defined: &[String]) -> Option<String> {
        let s = self.string(f)?;
        if defined.iter().any(|name| name == s) {
            return Some(s.to_owned());
        }
        let message = if defined.is_empty() {
            format!("no [[{kind}]] is defined")
        } else {
            let hint = suggest(s, defined.iter().map(String::as_str))
                .map(|name| format!(" (did you mean \"{name}\"?)"))
                .unwrap_or_default();
            format!(
                "no [[{kind}]] has this name{hint}; defined: {}",
                defined.join(", ")
            )
        };
        self.bad(f, message);
        None
    }

    fn references(
        &mut self,
        f: &Field<'_, '_>,
        kind: &str,
        defined: &[String],
    ) -> Option<Vec<String>> {
        let items = self.array(f, &format!("expected a list of [[{kind}]] names"))?;
        let mut seen = HashMap::new();
        self.each(&items, |c, item| {
            let name = c.reference(item, kind, defined)?;
            if let Some(first) = first_seen(&mut seen, name.clone(), &item.path) {
                c.bad(item, format!("listed twice (also {first})"));
                return None;
            }
            Some(name)
        })
    }

    // --- sections --------------------------------------------------------

    fn config(&mut self, root: &DeTable<'_>, source: &Path) -> Config {
        self.walk(String::new(), 0, root, |c, t| {
            // Asked for in the order "accepted here" lists them; read in the
            // order their references need: pools, data centers, then DNS.
            let runtime = t.field("runtime");
            let admin = t.field("admin");
            let geoip = t.field("geoip");
            let dns = t.field("dns");
            let datacenter = t.field("datacenter");
            let pool = t.field("pool");
            let listener = t.field("listener");
            let runtime = runtime.and_then(|f| c.runtime(&f)).unwrap_or_default();
            let admin = admin.and_then(|f| c.admin(&f));
            let geoip = geoip.and_then(|f| c.geoip(&f));
            let mut pool_names = Vec::new();
            let pools = pool
                .map(|f| c.pools(&f, &mut pool_names))
                .unwrap_or_default();
            let mut dc_names = Vec::new();
            let datacenters = datacenter
                .map(|f| c.datacenters(&f, &mut dc_names, &pool_names))
                .unwrap_or_default();
            let dns = dns.and_then(|f| c.dns(&f, &dc_names));
            let listeners = listener
                .map(|f| c.listeners(&f, &pools, &pool_names))
                .unwrap_or_default();
            Config {
                source: source.to_path_buf(),
                runtime,
                admin,
                geoip,
                dns,
                datacenters,
                pools,
                listeners,
            }
        })
    }

    fn runtime(&mut self, f: &Field<'_, '_>) -> Option<RuntimeConfig> {
        self.table(f, "expected a [runtime] table", |c, t| {
            let worker_threads = c.maybe(t, "worker_threads", |c, f| {
                c.int(f, 1, 1024).map(|n| n as usize)
            });
            // 0 is meaningful here: stop at once, without waiting for anything.
            let shutdown_grace = c.opt(
                t,
                "shutdown_grace",
                RuntimeConfig::default().shutdown_grace,
                |c, f| c.duration(f, true),
            );
            Some(RuntimeConfig {
                worker_threads: worker_threads?,
                shutdown_grace: shutdown_grace?,
            })
        })
    }

    fn admin(&mut self, f: &Field<'_, '_>) -> Option<AdminConfig> {
        self.table(f, "expected an [admin] table", |c, t| {
            let listen = c.req(t, "listen", "\"127.0.0.1:9100\"", Ctx::bind);
            Some(AdminConfig { listen: listen? })
        })
    }

    fn geoip(&mut self, f: &Field<'_, '_>) -> Option<GeoIpConfig> {
        self.table(f, "expected a [geoip] table", |c, t| {
            let database = c.maybe(t, "database", Ctx::path);
            let networks = c.opt(t, "network", Vec::new(), Ctx::networks);
            Some(GeoIpConfig {
                database: database?,
                networks: networks?,
            })
        })
    }

    fn networks(&mut self, f: &Field<'_, '_>) -> Option<Vec<GeoNetwork>> {
        let items = self.array(
            f,
            "expected [[geoip.network]] tables (note the double brackets)",
        )?;
        let mut seen = HashMap::new();
        self.each(&items, |c, item| {
            c.table(item, "expected a [[geoip.network]] table", |c, t| {
                let cidr = c.req(t, "cidr", "\"10.0.0.0/8\"", |c, f| {
                    let cidr = c.parsed(f, parse_cidr)?;
                    if let Some(first) = first_seen(&mut seen, cidr, &f.path) {
                        c.bad(f, format!("duplicate network: {first} is the same"));
                    }
                    Some(cidr)
                });
                let location = c.req(t, "location", LOCATION_EXAMPLE, Ctx::location);
                let country = c.maybe(t, "country", |c, f| c.parsed(f, country));
                let continent = c.maybe(t, "continent", |c, f| c.parsed(f, continent));
                Some(GeoNetwork {
                    cidr: cidr?,
                    location: location?,
                    country: country?,
                    continent: continent?,
                })
            })
        })
    }

    /// The `[[kind]]` tables under `f`, each read by `read` with its name.
    /// Names are collected into `names` even when the rest of their table
    /// is bad, so that references to them are not also reported.
    fn named_tables<'t, 'i, T>(
        &mut self,
        f: &Field<'t, 'i>,
        kind: &str,
        names: &mut Vec<String>,
        mut read: impl FnMut(&mut Self, &Tbl<'t, 'i>, Option<String>) -> Option<T>,
    ) -> Vec<T> {
        let Some(items) = self.array(
            f,
            &format!("expected [[{kind}]] tables (note the double brackets)"),
        ) else {
            return Vec::new();
        };
        let mut seen = HashMap::new();
        let mut out = Vec::new();
        for item in &items {
            let expected = format!("expected a [[{kind}]] table");
            let parsed = self.table(item, &expected, |c, t| {
                let name = c.req(t, "name", &format!("\"my-{kind}\""), |c, f| {
                    let name = c.parsed(f, ident)?;
                    match first_seen(&mut seen, name.clone(), &f.path) {
                        Some(first) => c.bad(f, format!("duplicate name: {first} is the same")),
                        None => names.push(name.clone()),
                    }
                    Some(name)
                });
                read(c, t, name)
            });
            out.extend(parsed);
        }
        out
    }

    fn pools(&mut self, f: &Field<'_, '_>, names: &mut Vec<String>) -> Vec<PoolConfig> {
        self.named_tables(f, "pool", names, Ctx::pool)
    }

    fn pool(&mut self, t: &Tbl<'_, '_>, name: Option<String>) -> Option<PoolConfig> {
        let balance = self.opt(t, "balance", Balance::RoundRobin, |c, f| {
            c.choice(f, Balance::SPELLINGS)
        });
        let hash = self.opt(t, "hash", HashKey::ClientIp, |c, f| c.parsed(f, hash_key));
        let count = t
            .map
            .get("backends")
            .and_then(|b| b.get_ref().as_array())
            .map_or(0, |a| a.len());
        let min_healthy = self.opt(t, "min_healthy", 1, |c, f| {
            let n = c.int(f, 0, i64::MAX)? as usize;
            // With no backends at all, `backends` already carries the error.
            if count > 0 && n > count {
                c.bad(
                    f,
                    format!("the pool has only {count} backend(s): at most {count}"),
                );
                return None;
            }
            Some(n)
        });
        let check = self.maybe(t, "check", Ctx::pool_check);
        let backends = self.req(
            t,
            "backends",
            "[{ addr = \"127.0.0.1:8080\" }]",
            Ctx::backends,
        );
        let proxy_protocol = self.maybe(t, "proxy_protocol", |c, f| {
            c.choice(f, ProxyProtocolVersion::SPELLINGS)
        });
        let backend_protocol = self.opt(t, "backend_protocol", BackendProtocol::Http1, |c, f| {
            c.choice(f, BackendProtocol::SPELLINGS)
        });
        let tls = self.opt(t, "tls", None, Ctx::backend_tls);
        if let (Some(protocol), Some(tls), Some(f)) =
            (backend_protocol, &tls, t.field("backend_protocol"))
        {
            match (protocol, tls) {
                (BackendProtocol::H2c, Some(_)) => self.bad(
                    &f,
                    "h2c is HTTP/2 in cleartext, but this pool has tls: use \"h2\" for HTTP/2 over TLS",
                ),
                (BackendProtocol::H2, None) => self.bad(
                    &f,
                    "h2 is HTTP/2 over TLS: add tls = true, or use \"h2c\" for cleartext",
                ),
                _ => {}
            }
        }
        Some(PoolConfig {
            name: name?,
            balance: balance?,
            hash: hash?,
            min_healthy: min_healthy?,
            check: check?,
            backends: backends?,
            proxy_protocol: proxy_protocol?,
            backend_protocol: backend_protocol?,
            tls: tls?,
        })
    }

    /// A pool's `tls`: `true`/`false`, or a table of settings (which means
    /// TLS on).
    fn backend_tls(&mut self, f: &Field<'_, '_>) -> Option<Option<BackendTls>> {
        if let DeValue::Boolean(on) = f.get() {
            return Some(on.then_some(BackendTls {
                ca: None,
                verify: true,
                sni: None,
            }));
        }
        let expected = "expected true, false or a table like \
                        { ca = \"certs/ca.pem\", sni = \"origin.internal\" }";
        self.table(f, expected, |c, t| {
            let ca = c.maybe(t, "ca", Ctx::path);
            let verify = c.opt(t, "verify", true, Ctx::bool);
            let sni = c.maybe(t, "sni", |c, f| c.parsed(f, host_name));
            Some(Some(BackendTls {
                ca: ca?,
                verify: verify?,
                sni: sni?,
            }))
        })
    }

    fn backends(&mut self, f: &Field<'_, '_>) -> Option<Vec<BackendConfig>> {
        let example = "[{ addr = \"127.0.0.1:8080\" }]";
        let items = self.array(f, &format!("expected a list of backends like {example}"))?;
        if items.is_empty() {
            self.bad(
                f,
                format!("a pool needs at least one backend, like {example}"),
            );
            return None;
        }
        let mut seen = HashMap::new();
        self.each(&items, |c, item| {
            c.table(
                item,
                "expected a table like { addr = \"127.0.0.1:8080\", weight = 1 }",
                |c, t| {
                    let addr = c.req(t, "addr", "\"127.0.0.1:8080\"", |c, f| {
                        let addr = c.parsed(f, |s| parse_socket(s, false))?;
                        if let Some(first) = first_seen(&mut seen, addr, &f.path) {
                            c.bad(f, format!("duplicate backend: {first} is the same address"));
                        }
                        Some(addr)
                    });
                    let weight = c.opt(t, "weight", 1, |c, f| c.uint(f, 1, 1_000_000));
                    let drain = c.opt(t, "drain", false, Ctx::bool);
                    Some(BackendConfig {
                        addr: addr?,
                        weight: weight?,
                        drain: drain?,
                    })
                },
            )
        })
    }

    fn timing(&mut self, t: &Tbl<'_, '_>) -> Option<Timing> {
        let interval = self.opt(t, "interval", Duration::from_secs(2), |c, f| {
            c.duration(f, false)
        });
        let timeout = self.opt(t, "timeout", Duration::from_secs(1), |c, f| {
            c.duration(f, false)
        });
        let rise = self.opt(t, "rise", 2, |c, f| c.uint(f, 1, 1000));
        let fall = self.opt(t, "fall", 3, |c, f| c.uint(f, 1, 1000));
        Some(Timing {
            interval: interval?,
            timeout: timeout?,
            rise: rise?,
            fall: fall?,
        })
    }

    fn expect(&mut self, f: &Field<'_, '_>) -> Option<Vec<u16>> {
        let status = |c: &mut Self, f: &Field<'_, '_>| c.int(f, 100, 599).map(|n| n as u16);
        match f.get() {
            DeValue::Array(items) if items.is_empty() => {
                self.bad(f, "list at least one status code, like [200, 204]");
                None
            }
            DeValue::Array(_) => {
                let items = self.array(f, "expected a status code or a list of them")?;
                self.each(&items, status)
            }
            _ => status(self, f).map(|n| vec![n]),
        }
    }

    fn pool_check(&mut self, f: &Field<'_, '_>) -> Option<CheckConfig> {
        self.table(
            f,
            "expected a table like { kind = \"http\", path = \"/health\" }",
            |c, t| {
                let kind = c.req(t, "kind", "\"http\"", |c, f| c.choice(f, CHECK_KINDS));
                let path = c.opt(t, "path", "/".to_owned(), |c, f| c.parsed(f, http_path));
                let host = c.maybe(t, "host", |c, f| c.parsed(f, host_name));
                let expect = c.opt(t, "expect", vec![200], Ctx::expect);
                let timing = c.timing(t);
                let ca = c.maybe(t, "ca", Ctx::path);
                let verify = c.opt(t, "verify", true, Ctx::bool);
                let kind = kind?;
                if kind != CheckKind::Https
                    && c.misplaced(t, &["ca", "verify"], "ca and verify are for https checks")
                {
                    return None;
                }
                let probe = match kind {
                    CheckKind::Tcp => {
                        let why = "a tcp check only connects: \
                           path, host and expect are for http and https checks";
                        if c.misplaced(t, &["path", "host", "expect"], why) {
                            return None;
                        }
                        Probe::Tcp
                    }
                    kind => Probe::Http(HttpProbe {
                        tls: kind == CheckKind::Https,
                        path: path?,
                        host: host?,
                        expect: expect?,
                        ca: ca?,
                        verify: verify?,
                    }),
                };
                Some(timing?.with(probe))
            },
        )
    }

    fn remote_check(&mut self, f: &Field<'_, '_>) -> Option<RemoteCheck> {
        let expected = "expected a table like \
                        { kind = \"http\", url = \"http://192.0.2.1:9100/datacenters/eu-west\" }";
        self.table(f, expected, |c, t| {
        let kind = c.req(t, "kind", "\"http\"", |c, f| c.choice(f, CHECK_KINDS));
        let url = c.maybe(t, "url", |c, f| c.parsed(f, parse_url));
        let addr = c.maybe(t, "addr", |c, f| c.parsed(f, |s| parse_socket(s, false)));
        let expect = c.opt(t, "expect", vec![200], Ctx::expect);
        let timing = c.timing(t);
        let ca = c.maybe(t, "ca", Ctx::path);
        let verify = c.opt(t, "verify", true, Ctx::bool);
        let kind = kind?;
        if kind != CheckKind::Https
            && c.misplaced(t, &["ca", "verify"], "ca and verify are for https checks")
        {
            return None;
        }
        let (target, probe) = match kind {
            CheckKind::Tcp => {
                let why =
                    "a tcp check connects to addr: url and expect are for http and https checks";
                let misplaced = c.misplaced(t, &["url", "expect"], why);
                let Some(addr) = addr? else {
                    c.missing(t, "addr", "\"192.0.2.1:443\"");
                    return None;
                };
                if misplaced {
                    return None;
                }
                (addr.to_string(), Probe::Tcp)
            }
            kind => {
                let tls = kind == CheckKind::Https;
                let why = "an http or https check fetches url: addr is for tcp checks \
                           (put the address in the url, like \"http://192.0.2.1:9100/\")";
                let misplaced = c.misplaced(t, &["addr"], why);
                let Some(url) = url? else {
                    c.missing(t, "url", "\"http://192.0.2.1:9100/datacenters/eu-west\"");
                    return None;
                };
                if url.tls != tls {
                    if let Some(f) = t.field("url") {
                        let scheme = if tls { "https" } else { "http" };
                        c.bad(&f, format!("the url's scheme must match kind: {scheme}://"));
                    }
                    return None;
                }
                if misplaced {
                    return None;
                }
                let probe = HttpProbe {
                    tls,
                    path: url.path,
                    host: Some(url.host),
                    expect: expect?,
                    ca: ca?,
                    verify: verify?,
                };
                (url.target, Probe::Http(probe))
            }
        };
        Some(RemoteCheck {
            target,
            check: timing?.with(probe),
        })
})
    }

    fn datacenters(
        &mut self,
        f: &Field<'_, '_>,
        names: &mut Vec<String>,
        pool_names: &[String],
    ) -> Vec<DatacenterConfig> {
        self.named_tables(f, "datacenter", names, |c, t, name| {
            c.datacenter(t, name, pool_names)
        })
    }

    fn datacenter(
        &mut self,
        t: &Tbl<'_, '_>,
        name: Option<String>,
        pool_names: &[String],
    ) -> Option<DatacenterConfig> {
        let location = self.req(t, "location", LOCATION_EXAMPLE, Ctx::location);
        let addresses = self.req(t, "addresses", "[\"198.51.100.10\"]", Ctx::dc_addresses);
        let pools = self.opt(t, "pools", Vec::new(), |c, f| {
            c.references(f, "pool", pool_names)
        });
        let check = self.maybe(t, "check", Ctx::remote_check);
        let drain = self.opt(t, "drain", false, Ctx::bool);
        Some(DatacenterConfig {
            name: name?,
            location: location?,
            addresses: addresses?,
            pools: pools?,
            check: check?,
            drain: drain?,
        })
    }

    fn dc_addresses(&mut self, f: &Field<'_, '_>) -> Option<Vec<IpAddr>> {
        let items = self.array(
            f,
            "expected a list of IP addresses like [\"198.51.100.10\", \"2001:db8::10\"]",
        )?;
        if items.is_empty() {
            self.bad(
                f,
                "a data center needs at least one address to give out in DNS answers",
            );
            return None;
        }
        let mut seen = HashMap::new();
        self.each(&items, |c, item| {
            let ip = c.parsed(item, public_ip)?;
            if let Some(first) = first_seen(&mut seen, ip, &item.path) {
                c.bad(item, format!("listed twice (also {first})"));
            }
            Some(ip)
        })
    }

    fn listeners(
        &mut self,
        f: &Field<'_, '_>,
        pools: &[PoolConfig],
        pool_names: &[String],
    ) -> Vec<ListenerConfig> {
        let mut names = Vec::new();
        self.named_tables(f, "listener", &mut names, |c, t, name| {
            c.listener(t, name, pools, pool_names)
        })
    }

    fn listener(
        &mut self,
        t: &Tbl<'_, '_>,
        name: Option<String>,
        pools: &[PoolConfig],
        pool_names: &[String],
    ) -> Option<ListenerConfig> {
        let bind = self.req(t, "bind", "\"127.0.0.1:8080\"", Ctx::bind);
        let protocol = self.opt(t, "protocol", Protocol::Http, |c, f| {
            c.choice(f, Protocol::SPELLINGS)
        });
        let pool = self.req(t, "pool", "\"web\"", |c, f| {
            c.reference(f, "pool", pool_names)
        });
        let routes = self.opt(t, "routes", Vec::new(), |c, f| c.routes(f, pool_names));
        let timeouts = self.opt(t, "timeouts", Timeouts::default(), Ctx::timeouts);
        let retries = self.opt(t, "retries", 2, |c, f| c.uint(f, 0, 100));
        let tls = self.maybe(t, "tls", Ctx::tls);
        let accept_proxy_protocol = self.opt(t, "accept_proxy_protocol", false, Ctx::bool);
        let access_log = self.opt(t, "access_log", false, Ctx::bool);
        let protocol = protocol?;
        if !self.protocol_rules(t, protocol, pools) {
            return None;
        }
        Some(ListenerConfig {
            name: name?,
            bind: bind?,
            protocol,
            pool: pool?,
            routes: routes?,
            timeouts: timeouts?,
            retries: retries?,
            tls: tls?.unwrap_or_default(),
            accept_proxy_protocol: accept_proxy_protocol?,
            access_log: access_log?,
        })
    }

    /// What a listener's protocol requires of its other keys; false if broken.
    fn protocol_rules(
        &mut self,
        t: &Tbl<'_, '_>,
        protocol: Protocol,
        pools: &[PoolConfig],
    ) -> bool {
        let before = self.errors.len();
        let tls = t.field("tls");
        match (protocol, &tls) {
            (Protocol::Https, None) => {
                self.missing(t, "tls", "[{ cert = \"cert.pem\", key = \"key.pem\" }]");
            }
            (Protocol::Https, Some(f)) => {
                if f.get().as_array().is_some_and(|a| a.is_empty()) {
                    self.bad(f, "an https listener needs at least one certificate");
                }
            }
            (_, Some(f)) => {
                self.bad(
                    f,
                    "only https listeners use certificates: set protocol = \"https\" or remove tls",
                );
            }
            (_, None) => {}
        }
        if protocol == Protocol::Tcp {
            if let Some(f) = t.field("routes")
                && f.get().as_array().is_some_and(|a| !a.is_empty())
            {
                let why = "routes choose a pool by HTTP host and path, \
                           which a tcp listener never sees: remove them";
                self.bad(&f, why);
            }
            if let Some(f) = t.field("pool")
                && let Some(name) = f.get().as_str()
                && let Some(pool) = pools.iter().find(|p| p.name == name)
                && (pool.tls.is_some() || pool.backend_protocol != BackendProtocol::Http1)
            {
                self.bad(
                    &f,
                    format!(
                        "pool \"{name}\" sets tls or backend_protocol, which only http and https \
                         listeners use: a tcp listener copies bytes as they come"
                    ),
                );
            }
            return self.errors.len() == before;
        }
        // A PROXY header names one client, but HTTP backend connections are
        // pooled and reused for requests of many clients.
        let mut refs: Vec<Field<'_, '_>> = t.field("pool").into_iter().collect();
        if let Some(routes) = t.field("routes")
            && let DeValue::Array(items) = routes.get()
        {
            for (i, item) in items.iter().enumerate() {
                if let Some(value) = item.get_ref().as_table().and_then(|r| r.get("pool")) {
                    refs.push(Field {
                        path: format!("{}[{i}].pool", routes.path),
                        value,
                    });
                }
            }
        }
        for f in &refs {
            let Some(name) = f.get().as_str() else {
                continue;
            };
            if let Some(version) = pools
                .iter()
                .find(|p| p.name == name)
                .and_then(|p| p.proxy_protocol)
            {
                let version = version.as_str();
                self.bad(
                    f,
                    format!(
                        "pool \"{name}\" has proxy_protocol = \"{version}\", which only tcp listeners \
                         can send: HTTP connections to backends carry requests of many clients"
                    ),
                );
            }
        }
        self.errors.len() == before
    }

    fn routes(&mut self, f: &Field<'_, '_>, pool_names: &[String]) -> Option<Vec<RouteConfig>> {
        let example = "{ host = \"us.mysite.com\", pool = \"web-us\" }";
        let items = self.array(f, &format!("expected a list like [{example}]"))?;
        self.each(&items, |c, item| {
            c.table(item, &format!("expected a table like {example}"), |c, t| {
            let host = c.maybe(t, "host", |c, f| c.parsed(f, host_name));
            let path_prefix = c.maybe(t, "path_prefix", |c, f| c.parsed(f, path_prefix));
            let pool = c.req(t, "pool", "\"web\"", |c, f| c.reference(f, "pool", pool_names));
            if t.field("host").is_none() && t.field("path_prefix").is_none() {
                c.err(
                    t.path.clone(),
                    t.offset,
                    "a route needs host, path_prefix or both (requests matching no route go to the listener's pool)"
                        .to_owned(),
                );
                return None;
            }
            Some(RouteConfig {
                host: host?,
                path_prefix: path_prefix?,
                pool: pool?,
            })
})
})
    }

    fn timeouts(&mut self, f: &Field<'_, '_>) -> Option<Timeouts> {
        self.table(
            f,
            "expected a table like { connect = \"5s\", idle = \"60s\" }",
            |c, t| {
                let d = Timeouts::default();
                let connect = c.opt(t, "connect", d.connect, |c, f| c.duration(f, false));
                let header = c.opt(t, "header", d.header, |c, f| c.duration(f, false));
                let request = c.opt(t, "request", d.request, |c, f| c.duration(f, false));
                let idle = c.opt(t, "idle", d.idle, |c, f| c.duration(f, false));
                Some(Timeouts {
                    connect: connect?,
                    header: header?,
                    request: request?,
                    idle: idle?,
                })
            },
        )
    }

    fn tls(&mut self, f: &Field<'_, '_>) -> Option<Vec<TlsCertConfig>> {
        let example = "{ cert = \"cert.pem\", key = \"key.pem\" }";
        let items = self.array(f, &format!("expected a list like [{example}]"))?;
        self.each(&items, |c, item| {
            c.table(item, &format!("expected a table like {example}"), |c, t| {
                let cert = c.req(t, "cert", "\"cert.pem\"", Ctx::path);
                let key = c.req(t, "key", "\"key.pem\"", Ctx::path);
                Some(TlsCertConfig {
                    cert: cert?,
                    key: key?,
                })
            })
        })
    }

    // --- DNS -------------------------------------------------------------

    fn dns(&mut self, f: &Field<'_, '_>, dc_names: &[String]) -> Option<DnsConfig> {
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
            let zones = t.field("zone").map(|f| c.zones(&f)).unwrap_or_default();
            c.records_in_child_zones(&zones);
            let geo = c.opt(t, "geo", Vec::new(), |c, f| c.geos(f, &zones, dc_names));
            let zones: Option<Vec<ZoneConfig>> = zones.into_iter().map(|z| z.config).collect();
            Some(DnsConfig {
                listen: listen?,
                udp_threads: udp_threads? as usize,
                zones: zones?,
                geo: geo?,
            })
        })
    }

    fn zones<'t, 'i>(&mut self, f: &Field<'t, 'i>) -> Vec<ParsedZone<'t, 'i>> {
        let Some(items) = self.array(f, "expected [[dns.zone]] tables (note the double brackets)")
        else {
            return Vec::new();
        };
        let mut seen = HashMap::new();
        items
            .iter()
            .filter_map(|item| {
                self.table(item, "expected a [[dns.zone]] table", |c, t| {
                    Some(c.zone(t, &mut seen))
                })
            })
            .collect()
    }

    fn zone<'t, 'i>(
        &mut self,
        t: &Tbl<'t, 'i>,
        seen: &mut HashMap<String, String>,
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
        let config = match (origin.clone(), ttl, soa, ns, file, records_ok) {
            (Some(origin), Some(ttl), Some(soa), Some(ns), Some(file), true) => Some(ZoneConfig {
                origin,
                ttl,
                soa,
                ns,
                file,
                records: records.iter().map(|(_, r)| r.clone()).collect(),
            }),
            _ => None,
        };
        ParsedZone {
            origin,
            records,
            config,
        }
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
            Some(GeoNameConfig {
                name: name?,
                ttl: ttl?,
                datacenters: datacenters?.unwrap_or_else(|| dc_names.to_vec()),
                answers: answers?,
            })
        })
    }
}

// ---------------------------------------------------------------------------
// Values

const DURATION_FORM: &str = "expected a whole number and a unit (ms, s, m, h or d), \
                             like \"250ms\", \"2s\", \"5m\" or \"14d\"";
/// Also keeps every duration representable as 32-bit seconds (SOA timers)
/// and far from `Instant` overflow.
const MAX_DURATION_MS: u64 = u32::MAX as u64 * 1000;

fn parse_duration(s: &str) -> Result<Duration, String> {
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits);
    if number.is_empty() {
        return Err(DURATION_FORM.to_owned());
    }
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "" => {
            return Err(format!(
                "{DURATION_FORM}: the unit is missing (\"{number}s\" for seconds)"
            ));
        }
        _ if unit.starts_with('.') => {
            return Err(format!(
                "{DURATION_FORM}: whole numbers only (\"1500ms\", not \"1.5s\")"
            ));
        }
        _ if unit.starts_with(char::is_whitespace) => {
            return Err(format!("{DURATION_FORM}, without a space"));
        }
        _ => return Err(DURATION_FORM.to_owned()),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_ms))
        .filter(|ms| *ms <= MAX_DURATION_MS)
        .map(Duration::from_millis)
        .ok_or_else(|| "too long: at most 4294967295s (about 136 years)".to_owned())
}

fn parse_socket(s: &str, bind: bool) -> Result<SocketAddr, String> {
    const FORM: &str = "expected an IP address and port like \"127.0.0.1:8080\"";
    let Ok(addr) = s.parse::<SocketAddr>() else {
        let why = if let Ok(ip) = s.parse::<IpAddr>() {
            match ip {
                IpAddr::V4(_) => " (the port is missing)".to_owned(),
                IpAddr::V6(_) => {
                    format!(" (the port is missing; IPv6 goes in brackets: \"[{ip}]:8080\")")
                }
            }
        } else if s.starts_with('[') && s.ends_with(']') {
            " (the port is missing)".to_owned()
        } else if s.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && !host.contains(':') && port.parse::<u16>().is_ok()
        }) {
            " (host names are not accepted: give an IP address)".to_owned()
        } else {
            " or \"[::1]:8080\"".to_owned()
        };
        return Err(format!("{FORM}{why}"));
    };
    if !bind {
        if addr.port() == 0 {
            return Err("port 0 is only for listening: give the port to connect to".to_owned());
        }
        if addr.ip().is_unspecified() {
            return Err(format!("{} is not an address to connect to", addr.ip()));
        }
    }
    Ok(addr)
}

/// An address given out in DNS answers.
fn public_ip(s: &str) -> Result<IpAddr, String> {
    match s.parse::<IpAddr>() {
        Ok(ip) if ip.is_unspecified() => Err(format!("{ip} cannot be given out in DNS answers")),
        Ok(ip) => Ok(ip),
        Err(_) if s.parse::<SocketAddr>().is_ok() => {
            Err("expected an IP address without a port".to_owned())
        }
        Err(_) => {
            Err("expected an IP address like \"198.51.100.10\" or \"2001:db8::10\"".to_owned())
        }
    }
}

fn parse_cidr(s: &str) -> Result<Cidr, String> {
    const FORM: &str = "expected a network like \"10.0.0.0/8\" or \"2001:db8::/32\"";
    let Some((ip, prefix)) = s.split_once('/') else {
        return Err(match s.parse::<IpAddr>() {
            Ok(IpAddr::V4(_)) => {
                format!("{FORM} (the prefix length is missing: \"{s}/32\" for one address)")
            }
            Ok(IpAddr::V6(_)) => {
                format!("{FORM} (the prefix length is missing: \"{s}/128\" for one address)")
            }
            Err(_) => FORM.to_owned(),
        });
    };
    let addr: IpAddr = ip.parse().map_err(|_| FORM.to_owned())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = Some(prefix)
        .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|p| p.parse::<u8>().ok())
        .filter(|p| *p <= max)
        .ok_or_else(|| format!("{FORM} (the prefix length is 0 to {max})"))?;
    let network = match addr {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    };
    if network != addr {
        return Err(format!(
            "bits are set past the /{prefix} prefix: write \"{network}/{prefix}\""
        ));
    }
    Ok(Cidr {
        addr: network,
        prefix,
    })
}

/// Pool, listener and data-center names: they appear in metric labels and
/// in admin URLs (`/datacenters/NAME`), hence no "." or "..".
fn ident(s: &str) -> Result<String, String> {
    let valid = !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if valid {
        Ok(s.to_owned())
    } else {
        Err("expected a name of letters, digits, '_', '.' and '-', like \"web-eu\"".to_owned())
    }
}

fn country(s: &str) -> Result<String, String> {
    if s.len() == 2 && s.bytes().all(|b| b.is_ascii_alphabetic()) {
        Ok(s.to_ascii_uppercase())
    } else {
        Err("expected a two-letter country code (ISO 3166-1), like \"DE\"".to_owned())
    }
}

fn continent(s: &str) -> Result<String, String> {
    const CODES: [&str; 7] = ["AF", "AN", "AS", "EU", "NA", "OC", "SA"];
    let upper = s.to_ascii_uppercase();
    if CODES.contains(&upper.as_str()) {
        Ok(upper)
    } else {
        Err(format!(
            "expected a continent code: one of {}",
            CODES.join(", ")
        ))
    }
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn hash_key(s: &str) -> Result<HashKey, String> {
    const FORM: &str = "expected \"client_ip\", \"header:<name>\" or \"cookie:<name>\"";
    if s == "client_ip" {
        return Ok(HashKey::ClientIp);
    }
    let (kind, name) = s.split_once(':').ok_or(FORM)?;
    if !matches!(kind, "header" | "cookie") {
        return Err(FORM.to_owned());
    }
    if name.is_empty() || !name.bytes().all(is_tchar) {
        return Err(format!(
            "{FORM}, where <name> is letters, digits and !#$%&'*+-.^_`|~"
        ));
    }
    Ok(if kind == "header" {
        HashKey::Header(name.to_ascii_lowercase())
    } else {
        HashKey::Cookie(name.to_owned())
    })
}

fn http_path(s: &str) -> Result<String, String> {
    if !s.starts_with('/') {
        return Err("expected a path starting with \"/\", like \"/health\"".to_owned());
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("spaces and non-ASCII characters must be percent-encoded (\"%20\")".to_owned());
    }
    if s.contains('#') {
        return Err("a #fragment is never sent to a server: remove it".to_owned());
    }
    Ok(s.to_owned())
}

fn path_prefix(s: &str) -> Result<String, String> {
    let path = http_path(s)?;
    if path.contains('?') {
        return Err("path_prefix matches the path only: remove the ?query".to_owned());
    }
    Ok(path)
}

/// A Host header / SNI name or an IP address, lower-case, without a port
/// or a trailing dot; IPv6 in brackets.
fn host_name(s: &str) -> Result<String, String> {
    const FORM: &str = "expected a host name like \"mysite.com\" or an IP address";
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return inner
            .parse::<Ipv6Addr>()
            .map(|ip| format!("[{ip}]"))
            .map_err(|_| FORM.to_owned());
    }
    if s.contains(':') {
        return Err(if s.parse::<Ipv6Addr>().is_ok() {
            format!("IPv6 addresses go in brackets: \"[{s}]\"")
        } else {
            format!("{FORM}, without a port")
        });
    }
    let name = s.strip_suffix('.').unwrap_or(s);
    if name.is_empty() || name.ends_with('.') {
        return Err(FORM.to_owned());
    }
    let mut name = dns_name(name, None, false)?;
    name.pop();
    Ok(name)
}

struct Url {
    tls: bool,
    /// As in [`host_name`].
    host: String,
    /// `host:port`.
    target: String,
    /// Path and query; at least "/".
    path: String,
}

fn parse_url(s: &str) -> Result<Url, String> {
    const FORM: &str = "expected a URL like \"http://192.0.2.1:9100/datacenters/eu-west\"";
    let scheme_end = s.find("://").ok_or(FORM)?;
    let tls = match s[..scheme_end].to_ascii_lowercase().as_str() {
        "http" => false,
        "https" => true,
        _ => return Err(format!("{FORM} (http:// or https://)")),
    };
    let rest = &s[scheme_end + 3..];
    let (authority, path) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    if authority.contains('@') {
        return Err("user names and passwords in the URL are not supported".to_owned());
    }
    let (host, port) = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => (&authority[..i], Some(&authority[i + 1..])),
        _ => (authority, None),
    };
    let host = host_name(host).map_err(|e| format!("in the URL's host: {e}"))?;
    let port = match port {
        None => {
            if tls {
                443
            } else {
                80
            }
        }
        Some(p) => Some(p)
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse::<u16>().ok())
            .filter(|p| *p != 0)
            .ok_or("the URL's port must be a number from 1 to 65535")?,
    };
    let path = match path {
        "" => "/".to_owned(),
        p if p.starts_with('?') => http_path(&format!("/{p}"))?,
        p => http_path(p)?,
    };
    Ok(Url {
        tls,
        target: format!("{host}:{port}"),
        host,
        path,
    })
}

/// An absolute, lower-case domain name with a trailing dot.
///
/// With an `origin`, names without a trailing dot are relative to it and "@"
/// is the origin itself; without one, the trailing dot is optional. A `*`
/// is accepted as the whole leftmost label only when `wildcard`.
fn dns_name(s: &str, origin: Option<&str>, wildcard: bool) -> Result<String, String> {
    if s == "@" {
        return origin.map(str::to_owned).ok_or_else(|| {
            "\"@\" (the zone's origin) is only meaningful inside a zone: give the full name"
                .to_owned()
        });
    }
    if s == "." {
        return Ok(".".to_owned());
    }
    if s.is_empty() {
        return Err("expected a domain name like \"mysite.com\"".to_owned());
    }
    if !s.is_ascii() {
        return Err("write international names in their ASCII (xn--) form".to_owned());
    }
    let lower = s.to_ascii_lowercase();
    let (body, absolute) = match lower.strip_suffix('.') {
        Some(body) => (body, true),
        None => (lower.as_str(), false),
    };
    for (i, label) in body.split('.').enumerate() {
        if label.is_empty() {
            return Err("empty label: two dots in a row, or a leading dot".to_owned());
        }
        if label == "*" {
            if wildcard && i == 0 {
                continue;
            }
            return Err(
                "\"*\" is only allowed as the whole leftmost label of a record's name".to_owned(),
            );
        }
        if label.len() > 63 {
            return Err(format!(
                "the label \"{label}\" is longer than 63 characters"
            ));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "the label \"{label}\" may hold only letters, digits, '-' and '_'"
            ));
        }
    }
    let name = match (absolute, origin) {
        (false, Some(origin)) if origin != "." => format!("{body}.{origin}"),
        _ => format!("{body}."),
    };
    if name.len() > 254 {
        return Err(format!("{name} is longer than 253 characters"));
    }
    Ok(name)
}

fn in_zone(name: &str, origin: &str) -> bool {
    origin == "."
        || name == origin
        || name
            .strip_suffix(origin)
            .is_some_and(|head| head.ends_with('.'))
}

/// A record's owner: relative to `origin`, and inside its zone.
fn owner_name(s: &str, origin: &str) -> Result<String, String> {
    let name = dns_name(s, Some(origin), true)?;
    if !in_zone(&name, origin) {
        return Err(format!(
            "{name} is outside the zone {origin}: write names relative to the origin (\"www\"), \
             or ending in \".{origin}\""
        ));
    }
    Ok(name)
}

/// The SOA RNAME: a mailbox written as a name.
fn mailbox(s: &str, origin: &str) -> Result<String, String> {
    if s.contains('@') {
        let fixed = s.replacen('@', ".", 1);
        let fixed = if fixed.ends_with('.') {
            fixed
        } else {
            fixed + "."
        };
        return Err(format!("a mailbox is written as a name: \"{fixed}\""));
    }
    dns_name(s, Some(origin), false)
}

#[derive(Clone, Copy, Debug)]
enum RecordType {
    A,
    Aaaa,
    Cname,
    Ns,
    Mx,
    Txt,
    Srv,
    Caa,
}

impl RecordType {
    fn example(self) -> &'static str {
        match self {
            RecordType::A => "\"192.0.2.1\"",
            RecordType::Aaaa => "\"2001:db8::1\"",
            RecordType::Cname => "\"api.mysite.com.\"",
            RecordType::Ns => "\"ns1.mysite.com.\"",
            RecordType::Mx => "\"10 mail.mysite.com.\"",
            RecordType::Txt => "\"v=spf1 -all\"",
            RecordType::Srv => "\"10 5 5060 sip.mysite.com.\"",
            RecordType::Caa => "'0 issue \"letsencrypt.org\"'",
        }
    }
}

fn record_type(s: &str) -> Result<RecordType, String> {
    match s.to_ascii_uppercase().as_str() {
        "A" => Ok(RecordType::A),
        "AAAA" => Ok(RecordType::Aaaa),
        "CNAME" => Ok(RecordType::Cname),
        "NS" => Ok(RecordType::Ns),
        "MX" => Ok(RecordType::Mx),
        "TXT" => Ok(RecordType::Txt),
        "SRV" => Ok(RecordType::Srv),
        "CAA" => Ok(RecordType::Caa),
        "SOA" => Err("the zone's SOA record comes from its soa key: remove this record".to_owned()),
        _ => Err("expected one of A, AAAA, CNAME, NS, MX, TXT, SRV, CAA".to_owned()),
    }
}

fn number<T: std::str::FromStr>(s: &str, what: &str, max: u32) -> Result<T, String> {
    Some(s)
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("the {what} must be a number from 0 to {max}"))
}

fn record_data(rtype: RecordType, s: &str, origin: &str) -> Result<RecordData, String> {
    let name = |s: &str, what: &str| {
        dns_name(s, Some(origin), false).map_err(|e| format!("the {what}: {e}"))
    };
    let parts: Vec<&str> = s.split_whitespace().collect();
    match rtype {
        RecordType::A => s.parse().map(RecordData::A).map_err(|_| {
            if s.parse::<Ipv6Addr>().is_ok() {
                "an IPv6 address goes in type = \"AAAA\"".to_owned()
            } else {
                "expected an IPv4 address like \"192.0.2.1\"".to_owned()
            }
        }),
        RecordType::Aaaa => s.parse().map(RecordData::Aaaa).map_err(|_| {
            if s.parse::<Ipv4Addr>().is_ok() {
                "an IPv4 address goes in type = \"A\"".to_owned()
            } else {
                "expected an IPv6 address like \"2001:db8::1\"".to_owned()
            }
        }),
        RecordType::Cname => name(s, "target").map(RecordData::Cname),
        RecordType::Ns => name(s, "name server").map(RecordData::Ns),
        RecordType::Txt => Ok(RecordData::Txt(s.to_owned())),
        RecordType::Mx => match parts[..] {
            [preference, exchange] => Ok(RecordData::Mx {
                preference: number(preference, "preference", u16::MAX.into())?,
                exchange: name(exchange, "exchange")?,
            }),
            _ => Err("expected \"preference exchange\", like \"10 mail.mysite.com.\"".to_owned()),
        },
        RecordType::Srv => match parts[..] {
            [priority, weight, port, target] => Ok(RecordData::Srv {
                priority: number(priority, "priority", u16::MAX.into())?,
                weight: number(weight, "weight", u16::MAX.into())?,
                port: number(port, "port", u16::MAX.into())?,
                target: name(target, "target")?,
            }),
            _ => Err(
                "expected \"priority weight port target\", like \"10 5 5060 sip.mysite.com.\""
                    .to_owned(),
            ),
        },
        RecordType::Caa => caa(s),
    }
}

fn caa(s: &str) -> Result<RecordData, String> {
    const FORM: &str = "expected \"flags tag value\", like '0 issue \"letsencrypt.org\"'";
    let (flags, rest) = s.trim().split_once(char::is_whitespace).ok_or(FORM)?;
    let (tag, value) = rest
        .trim_start()
        .split_once(char::is_whitespace)
        .ok_or(FORM)?;
    let flags = number(flags, "flags", u8::MAX.into())?;
    if tag.is_empty() || tag.len() > 15 || !tag.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err("the tag is letters and digits, like issue, issuewild or iodef".to_owned());
    }
    let value = value.trim();
    let value = match value.strip_prefix('"') {
        Some(quoted) => quoted
            .strip_suffix('"')
            .filter(|inner| !inner.contains('"'))
            .ok_or("the quoted value needs its closing quote, and no quote inside")?,
        None if value.contains('"') => return Err(FORM.to_owned()),
        None => value,
    };
    Ok(RecordData::Caa {
        flags,
        tag: tag.to_ascii_lowercase(),
        value: value.to_owned(),
    })
}

// ---------------------------------------------------------------------------
// Messages

/// How much of a value an error shows.
const SHOW_LIMIT: usize = 80;

/// A value as TOML-ish text, shortened for an error message.
fn show(value: &DeValue<'_>) -> String {
    let mut out = String::new();
    render(value, &mut out);
    if out.len() > SHOW_LIMIT {
        let mut end = SHOW_LIMIT;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.push_str("...");
    }
    out
}

fn render(value: &DeValue<'_>, out: &mut String) {
    match value {
        DeValue::String(s) => {
            // Only the start of a long string is shown anyway.
            let head: String = s.chars().take(SHOW_LIMIT).collect();
            quote(&head, out);
        }
        DeValue::Integer(n) => {
            let _ = write!(out, "{n}");
        }
        DeValue::Float(x) => out.push_str(x.as_str()),
        DeValue::Boolean(b) => {
            let _ = write!(out, "{b}");
        }
        DeValue::Datetime(d) => {
            let _ = write!(out, "{d}");
        }
        DeValue::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if out.len() > SHOW_LIMIT {
                    break;
                }
                if i > 0 {
                    out.push_str(", ");
                }
                render(item.get_ref(), out);
            }
            out.push(']');
        }
        DeValue::Table(table) if table.is_empty() => out.push_str("{}"),
        DeValue::Table(table) => {
            out.push_str("{ ");
            for (i, (key, item)) in table.iter().enumerate() {
                if out.len() > SHOW_LIMIT {
                    break;
                }
                if i > 0 {
                    out.push_str(", ");
                }
                let key: &str = key.get_ref();
                if !key.is_empty()
                    && key
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                {
                    out.push_str(key);
                } else {
                    quote(key, out);
                }
                out.push_str(" = ");
                render(item.get_ref(), out);
            }
            out.push_str(" }");
        }
    }
}

/// A TOML basic string.
fn quote(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The closest of `options` to a misspelt `word`, if close enough to be a
/// plausible typo.
fn suggest<'a>(word: &str, options: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    if word.len() > 64 {
        return None;
    }
    let word = word.to_ascii_lowercase();
    let allowed = if word.chars().count() <= 4 { 1 } else { 2 };
    options
        .into_iter()
        .map(|option| (edit_distance(&word, &option.to_ascii_lowercase()), option))
        // A one-letter word is "close" to every other one-letter word.
        .filter(|(distance, _)| *distance <= allowed && *distance < word.len())
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, option)| option)
}

/// Levenshtein distance where swapping two neighbours also counts as one
/// edit (optimal string alignment), the commonest typo.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let width = b.len() + 1;
    let mut d: Vec<usize> = vec![0; (a.len() + 1) * width];
    for i in 0..=a.len() {
        for j in 0..=b.len() {
            d[i * width + j] = if i == 0 || j == 0 {
                i + j
            } else {
                let substitution = d[(i - 1) * width + j - 1] + usize::from(a[i - 1] != b[j - 1]);
                let mut best = substitution
                    .min(d[(i - 1) * width + j] + 1)
                    .min(d[i * width + j - 1] + 1);
                if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                    best = best.min(d[(i - 2) * width + j - 2] + 1);
                }
                best
            };
        }
    }
    d[a.len() * width + b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The configuration half of the outside contract, which lives beside
    /// the project rather than in it (CI lays `shared/` beside the clone too).
    const CONTRACT_PATH: &str =
        concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/contract/geolb.toml");

    fn contract() -> String {
        std::fs::read_to_string(CONTRACT_PATH)
            .unwrap_or_else(|e| panic!("cannot read {CONTRACT_PATH}: {e}"))
    }

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        parse_str(text, Path::new("/etc/geolb/geolb.toml"))
    }

    fn errors(text: &str) -> Vec<ConfigError> {
        match parse(text) {
            Ok(_) => panic!("expected errors from:\n{text}"),
            Err(ConfigErrors(errors)) => errors,
        }
    }

    #[test]
    fn contract_file_parses_with_its_meaning() {
        let config =
            parse_str(&contract(), Path::new(CONTRACT_PATH)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.runtime, RuntimeConfig::default());
        assert_eq!(
            config.admin.unwrap().listen,
            "127.0.0.1:9100".parse().unwrap()
        );

        let geoip = config.geoip.unwrap();
        assert_eq!(
            geoip.database,
            Some(PathBuf::from("/var/lib/geolb/GeoLite2-City.mmdb"))
        );
        let network = &geoip.networks[0];
        assert_eq!(
            network.cidr,
            Cidr {
                addr: "10.0.0.0".parse().unwrap(),
                prefix: 8
            }
        );
        assert_eq!(
            network.location,
            LatLon {
                lat: 50.11,
                lon: 8.68
            }
        );
        assert_eq!(network.country.as_deref(), Some("DE"));
        assert_eq!(network.continent.as_deref(), Some("EU"));

        let pools = &config.pools;
        assert_eq!(pools.len(), 3);
        assert_eq!(pools[0].balance, Balance::RoundRobin);
        assert_eq!(pools[0].hash, HashKey::ClientIp);
        assert_eq!(pools[0].min_healthy, 1);
        let check = pools[0].check.as_ref().unwrap();
        assert_eq!(
            check.probe,
            Probe::Http(HttpProbe {
                tls: false,
                path: "/health".into(),
                host: None,
                expect: vec![200],
                ca: None,
                verify: true,
            })
        );
        assert_eq!(
            (check.interval, check.timeout, check.rise, check.fall),
            (Duration::from_secs(2), Duration::from_secs(1), 2, 3)
        );
        let weights: Vec<(u32, bool)> = pools[0]
            .backends
            .iter()
            .map(|b| (b.weight, b.drain))
            .collect();
        assert_eq!(weights, [(1, false), (2, false), (1, true)]);
        assert_eq!(pools[1].balance, Balance::LeastConn);
        assert_eq!(pools[1].check.as_ref().unwrap().probe, Probe::Tcp);
        assert_eq!(pools[2].proxy_protocol, Some(ProxyProtocolVersion::V2));
        assert_eq!(pools[0].proxy_protocol, None);

        let listeners = &config.listeners;
        assert_eq!(listeners[0].protocol, Protocol::Http);
        assert_eq!(
            listeners[0].timeouts,
            Timeouts {
                connect: Duration::from_secs(2),
                header: Duration::from_secs(10),
                request: Duration::from_secs(30),
                idle: Duration::from_secs(60),
            }
        );
        assert_eq!(listeners[0].retries, 2);
        assert_eq!(
            listeners[0].routes,
            [
                RouteConfig {
                    host: Some("us.mysite.com".into()),
                    path_prefix: None,
                    pool: "web-us".into()
                },
                RouteConfig {
                    host: None,
                    path_prefix: Some("/us/".into()),
                    pool: "web-us".into()
                },
            ]
        );
        assert_eq!(listeners[1].protocol, Protocol::Https);
        assert_eq!(listeners[1].timeouts, Timeouts::default());
        assert_eq!(
            listeners[1].tls[0].cert,
            Path::new(CONTRACT_PATH).with_file_name("certs/mysite.com.pem")
        );
        assert_eq!(
            listeners[1].tls[1].key,
            Path::new(CONTRACT_PATH).with_file_name("certs/us.mysite.com.key")
        );
        assert_eq!(listeners[2].protocol, Protocol::Tcp);
        assert!(!listeners[2].accept_proxy_protocol && !listeners[2].access_log);

        let dcs = &config.datacenters;
        assert_eq!(dcs[0].name, "eu-west");
        assert_eq!(
            dcs[0].location,
            LatLon {
                lat: 53.35,
                lon: -6.26
            }
        );
        assert_eq!(
            dcs[0].addresses,
            [
                "198.51.100.10".parse::<IpAddr>().unwrap(),
                "2001:db8:e::10".parse().unwrap()
            ]
        );
        assert_eq!(dcs[0].pools, ["web-eu"]);
        assert!(!dcs[0].drain && dcs[0].check.is_none());
        assert!(dcs[1].pools == ["web-us"] && dcs[2].pools.is_empty());
        let remote = dcs[2].check.as_ref().unwrap();
        assert_eq!(remote.target, "127.0.0.1:18093");
        assert_eq!(remote.check.probe, Probe::Tcp);

        let dns = config.dns.unwrap();
        assert_eq!(
            dns.listen,
            ["127.0.0.1:5353".parse::<SocketAddr>().unwrap()]
        );
        let zone = &dns.zones[0];
        assert_eq!(zone.origin, "mysite.com.");
        assert_eq!(zone.ttl, 300);
        assert_eq!(zone.soa.serial, 2026112701);
        assert_eq!(zone.soa.expire, Duration::from_secs(14 * 86400));
        assert_eq!(zone.ns, ["ns1.mysite.com.", "ns2.mysite.com."]);
        assert_eq!(zone.file, None);
        let www = &zone.records[2];
        assert_eq!((www.name.as_str(), www.ttl), ("www.mysite.com.", 300));
        assert_eq!(www.data, RecordData::Cname("api.mysite.com.".into()));
        assert_eq!(zone.records[3].name, "mysite.com.");
        assert_eq!(
            zone.records[3].data,
            RecordData::Mx {
                preference: 10,
                exchange: "mail.mysite.com.".into()
            }
        );
        assert_eq!(zone.records[4].data, RecordData::Txt("v=spf1 -all".into()));
        let geo = &dns.geo[0];
        assert_eq!(geo.name, "api.mysite.com.");
        assert_eq!((geo.ttl, geo.answers), (30, 1));
        assert_eq!(geo.datacenters, ["us-east", "eu-west", "ap-southeast"]);
    }

    #[test]
    fn the_example_configs_parse() {
        for text in [
            include_str!("../../config/geolb.toml"),
            include_str!("../../config/minimal.toml"),
        ] {
            parse(text).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn an_empty_file_is_an_empty_config() {
        let config = parse("").unwrap();
        assert_eq!(
            config,
            Config {
                source: PathBuf::from("/etc/geolb/geolb.toml"),
                runtime: RuntimeConfig::default(),
                admin: None,
                geoip: None,
                dns: None,
                datacenters: vec![],
                pools: vec![],
                listeners: vec![],
            }
        );
    }

    #[test]
    fn defaults_and_extensions() {
        let config = parse(
            r#"
            [runtime]
            worker_threads = 4
            shutdown_grace = "0s"
            [[pool]]
            name = "p"
            balance = "maglev"
            hash = "header:X-User"
            check = { kind = "https", host = "App.Example.com" }
            backends = [{ addr = "[::1]:8080" }]
            [[listener]]
            name = "l"
            bind = "[::]:0"
            pool = "p"
            access_log = true
            accept_proxy_protocol = true
            [[datacenter]]
            name = "dc"
            location = { lat = -33, lon = 151.2 }
            addresses = ["192.0.2.1"]
            check = { kind = "https", url = "HTTPS://Status.Example.com?q=1", expect = [200, 204] }
            [dns]
            listen = ["127.0.0.1:0", "[::1]:0"]
            [[dns.zone]]
            origin = "Example.COM."
            soa = { mname = "ns1", rname = "hostmaster", serial = 0, refresh = "1h", retry = "10m", expire = "14d", minimum = "0s" }
            ns = ["ns1", "ns.other.net."]
            file = "zones/example.com.zone"
            records = [
              { name = "*.WILD", type = "a", value = "192.0.2.9", ttl = 5 },
              { name = "_sip._udp", type = "SRV", value = "10 5 5060 sip" },
              { name = "@", type = "CAA", value = "0 issue \"letsencrypt.org\"" },
              { name = "@", type = "NS", value = "ns3.other.net." },
            ]
            [[dns.zone]]
            origin = "example.net"
            soa = { mname = "ns1", rname = "hostmaster", serial = 0, refresh = "1h", retry = "10m", expire = "14d", minimum = "0s" }
            ns = ["ns1.example.com."]
            [[dns.geo]]
            name = "example.net"
            [[dns.geo]]
            name = "www.example.com"
            ttl = 0
            "#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.runtime.worker_threads, Some(4));
        assert_eq!(config.runtime.shutdown_grace, Duration::ZERO);
        let pool = &config.pools[0];
        assert_eq!(pool.hash, HashKey::Header("x-user".into()));
        assert_eq!(
            pool.check.as_ref().unwrap().probe,
            Probe::Http(HttpProbe {
                tls: true,
                path: "/".into(),
                host: Some("app.example.com".into()),
                expect: vec![200],
                ca: None,
                verify: true,
            })
        );
        let listener = &config.listeners[0];
        assert!(listener.access_log && listener.accept_proxy_protocol);
        assert_eq!(listener.bind, "[::]:0".parse().unwrap());
        let remote = config.datacenters[0].check.as_ref().unwrap();
        assert_eq!(remote.target, "status.example.com:443");
        assert_eq!(
            remote.check.probe,
            Probe::Http(HttpProbe {
                tls: true,
                path: "/?q=1".into(),
                host: Some("status.example.com".into()),
                expect: vec![200, 204],
                ca: None,
                verify: true,
            })
        );
        let dns = config.dns.unwrap();
        let zone = &dns.zones[0];
        assert_eq!(zone.origin, "example.com.");
        assert_eq!(zone.ttl, 3600);
        assert_eq!(zone.soa.mname, "ns1.example.com.");
        assert_eq!(zone.soa.rname, "hostmaster.example.com.");
        assert_eq!(zone.ns, ["ns1.example.com.", "ns.other.net."]);
        assert_eq!(
            zone.file,
            Some(PathBuf::from("/etc/geolb/zones/example.com.zone"))
        );
        assert_eq!(zone.records[0].name, "*.wild.example.com.");
        assert_eq!(zone.records[0].ttl, 5);
        assert_eq!(
            zone.records[1].data,
            RecordData::Srv {
                priority: 10,
                weight: 5,
                port: 5060,
                target: "sip.example.com.".into()
            }
        );
        assert_eq!(
            zone.records[2].data,
            RecordData::Caa {
                flags: 0,
                tag: "issue".into(),
                value: "letsencrypt.org".into()
            }
        );
        assert_eq!(dns.geo[0].name, "example.net.");
        assert_eq!(dns.geo[0].datacenters, ["dc"]);
        assert_eq!((dns.geo[1].ttl, dns.geo[1].answers), (0, 1));
    }

    /// Each case: a config, then the key path and line of one error it must report.
    #[test]
    fn each_mistake_is_reported_with_its_key_path_and_line() {
        const POOL: &str = "[[pool]]\nname = \"p\"\nbackends = [{ addr = \"127.0.0.1:8080\" }]\n";
        const PROXY_POOL: &str = "[[pool]]\nname = \"pp\"\nproxy_protocol = \"v1\"\nbackends = [{ addr = \"127.0.0.1:5432\" }]\n";
        const DC: &str = "[[datacenter]]\nname = \"eu\"\nlocation = { lat = 1, lon = 2 }\naddresses = [\"192.0.2.1\"]\n";
        const ZONE: &str = "[dns]\nlisten = [\"127.0.0.1:5353\"]\n[[dns.zone]]\norigin = \"mysite.com\"\n\
            soa = { mname = \"ns1\", rname = \"hostmaster\", serial = 1, refresh = \"1h\", retry = \"10m\", expire = \"14d\", minimum = \"60s\" }\n\
            ns = [\"ns1\"]\n";
        let cases: Vec<(String, &str, usize)> = vec![
            ("[admin]\nlisten = \"127.0.0.1\"".into(), "admin.listen", 2),
            ("admin = 5".into(), "admin", 1),
            ("\n[pools]\n".into(), "pools", 2),
            ("[runtime]\nworker_threads = 0".into(), "runtime.worker_threads", 2),
            ("[runtime]\n\nshutdown_grace = \"30\"".into(), "runtime.shutdown_grace", 3),
            (
                "[[geoip.network]]\ncidr = \"10.0.0.1/8\"\nlocation = { lat = 1, lon = 2 }".into(),
                "geoip.network[0].cidr",
                2,
            ),
            (
                "[[geoip.network]]\ncidr = \"10.0.0.0/8\"\nlocation = { lat = 91, lon = 2 }".into(),
                "geoip.network[0].location.lat",
                3,
            ),
            ("[geoip]\n[[geoip.network]]\ncidr = \"10.0.0.0/8\"".into(), "geoip.network[0].location", 2),
            (
                "[[pool]]\nname = \"p\"\nbackends = [\n  { addr = \"127.0.0.1\" },\n]".into(),
                "pool[0].backends[0].addr",
                4,
            ),
            ("[[pool]]\nname = \"p\"".into(), "pool[0].backends", 1),
            (format!("{POOL}{POOL}"), "pool[1].name", 5),
            (format!("{POOL}balance = \"fastest\""), "pool[0].balance", 4),
            (format!("{POOL}hash = \"header:\""), "pool[0].hash", 4),
            (format!("{POOL}min_healthy = 2"), "pool[0].min_healthy", 4),
            (format!("{POOL}\ncheck = {{ path = \"/\" }}"), "pool[0].check.kind", 5),
            (format!("{POOL}check = {{ kind = \"tcp\", path = \"/\" }}"), "pool[0].check.path", 4),
            (format!("{POOL}check = {{ kind = \"http\", expect = 600 }}"), "pool[0].check.expect", 4),
            (
                "[[pool]]\nname = \"p\"\nbackends = [\n{ addr = \"127.0.0.1:1\" },\n{ addr = \"127.0.0.1:1\" }]".into(),
                "pool[0].backends[1].addr",
                5,
            ),
            (
                "[[pool]]\nname = \"p\"\nbackends = [{ addr = \"127.0.0.1:1\", weight = 0 }]".into(),
                "pool[0].backends[0].weight",
                3,
            ),
            (format!("{POOL}proxy_protocol = \"v3\""), "pool[0].proxy_protocol", 4),
            (format!("{POOL}[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:80\"\npool = \"q\""), "listener[0].pool", 7),
            (
                format!("{POOL}[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:80\"\npool = \"p\"\nprotocol = \"https\""),
                "listener[0].tls",
                4,
            ),
            (
                format!("{POOL}[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:80\"\npool = \"p\"\ntls = [{{ cert = \"c\", key = \"k\" }}]"),
                "listener[0].tls",
                8,
            ),
            (
                format!("{POOL}[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:80\"\npool = \"p\"\nprotocol = \"tcp\"\nroutes = [{{ host = \"a.com\", pool = \"p\" }}]"),
                "listener[0].routes",
                9,
            ),
            (
                format!("{POOL}[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:80\"\npool = \"p\"\ntimeouts = {{ connect = \"0s\" }}"),
                "listener[0].timeouts.connect",
                8,
            ),
            (
                format!("{POOL}[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:80\"\npool = \"p\"\nretries = 101"),
                "listener[0].retries",
                8,
            ),
            (
                format!("{POOL}[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:80\"\npool = \"p\"\n[[listener]]\nname = \"b\"\nbind = \"127.0.0.1:80\"\npool = \"p\""),
                "listener[1].bind",
                10,
            ),
            (
                format!("{PROXY_POOL}[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:80\"\npool = \"pp\""),
                "listener[0].pool",
                8,
            ),
            (
                "[dns]\nlisten = [\"127.0.0.1:5353\"]\nudp_threads = 0".into(),
                "dns.udp_threads",
                3,
            ),
            (format!("{POOL}backend_protocol = \"h3\""), "pool[0].backend_protocol", 4),
            (format!("{POOL}backend_protocol = \"h2\""), "pool[0].backend_protocol", 4),
            (
                format!("{POOL}tls = true\nbackend_protocol = \"h2c\""),
                "pool[0].backend_protocol",
                5,
            ),
            (format!("{POOL}tls = \"yes\""), "pool[0].tls", 4),
            (format!("{POOL}tls = {{ cafile = \"ca.pem\" }}"), "pool[0].tls.cafile", 4),
            (format!("{POOL}tls = {{ sni = \"a b\" }}"), "pool[0].tls.sni", 4),
            (
                format!("{POOL}tls = true\n[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:80\"\nprotocol = \"tcp\"\npool = \"p\""),
                "listener[0].pool",
                9,
            ),
            (
                format!("{POOL}{PROXY_POOL}[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:80\"\npool = \"p\"\nroutes = [\n{{ path_prefix = \"/db/\", pool = \"pp\" }}]"),
                "listener[0].routes[0].pool",
                13,
            ),
            (
                format!("{POOL}[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:80\"\npool = \"p\"\nroutes = [{{ path_prefix = \"us/\", pool = \"p\" }}]"),
                "listener[0].routes[0].path_prefix",
                8,
            ),
            (format!("{DC}check = {{ kind = \"ftp\" }}"), "datacenter[0].check.kind", 5),
            (format!("{DC}check = {{ kind = \"tcp\", url = \"http://192.0.2.1/\" }}"), "datacenter[0].check.url", 5),
            (format!("{DC}check = {{ kind = \"https\", url = \"http://192.0.2.1/\" }}"), "datacenter[0].check.url", 5),
            (format!("{DC}pools = [\"nope\"]"), "datacenter[0].pools[0]", 5),
            (format!("{DC}{DC}"), "datacenter[1].name", 6),
            ("[[datacenter]]\nname = \"eu\"\nlocation = { lat = 1, lon = 2 }\naddresses = []".into(), "datacenter[0].addresses", 4),
            ("[dns]\nlisten = []".into(), "dns.listen", 2),
            ("[dns]\n".into(), "dns.listen", 1),
            (format!("{ZONE}records = [\n{{ name = \"www\", type = \"A\", value = \"192.0.2.300\" }}]"), "dns.zone[0].records[0].value", 8),
            (format!("{ZONE}records = [\n{{ name = \"@\", type = \"SOA\", value = \"x\" }}]"), "dns.zone[0].records[0].type", 8),
            (
                format!("{ZONE}records = [\n{{ name = \"www\", type = \"CNAME\", value = \"api\" }},\n{{ name = \"www\", type = \"TXT\", value = \"x\" }}]"),
                "dns.zone[0].records[1]",
                9,
            ),
            (format!("{ZONE}records = [{{ name = \"x.other.com.\", type = \"A\", value = \"192.0.2.1\" }}]"), "dns.zone[0].records[0].name", 7),
            (format!("{ZONE}ttl = -1"), "dns.zone[0].ttl", 7),
            (
                format!("{ZONE}records = [\n{{ name = \"@\", type = \"TXT\", value = \"a\" }},\n{{ name = \"@\", type = \"TXT\", value = \"b\", ttl = 5 }}]"),
                "dns.zone[0].records[1]",
                9,
            ),
            (
                format!("{ZONE}records = [\n{{ name = \"@\", type = \"TXT\", value = \"a\" }},\n{{ name = \"@\", type = \"TXT\", value = \"a\" }}]"),
                "dns.zone[0].records[1]",
                9,
            ),
            (format!("{ZONE}records = [{{ name = \"@\", type = \"CNAME\", value = \"www\" }}]"), "dns.zone[0].records[0]", 7),
            (format!("{ZONE}records = [{{ name = \"sub\", type = \"NS\", value = \"ns.other.net.\" }}]"), "dns.zone[0].records[0]", 7),
            (
                format!(
                    "{ZONE}records = [{{ name = \"a.sub\", type = \"A\", value = \"192.0.2.1\" }}]\n\
                     [[dns.zone]]\norigin = \"sub.mysite.com\"\nns = [\"ns1\"]\n\
                     soa = {{ mname = \"ns1\", rname = \"h\", serial = 1, refresh = \"1h\", retry = \"1h\", expire = \"1h\", minimum = \"1h\" }}"
                ),
                "dns.zone[0].records[0]",
                7,
            ),
            (
                ZONE.replace("serial = 1", "serial = -1"),
                "dns.zone[0].soa.serial",
                5,
            ),
            (format!("{ZONE}[[dns.zone]]\norigin = \"MYSITE.com.\""), "dns.zone[1].origin", 8),
            (format!("{DC}{ZONE}[[dns.geo]]\nname = \"api.other.com\""), "dns.geo[0].name", 12),
            (format!("{DC}{ZONE}[[dns.geo]]\nname = \"api.mysite.com\"\nanswers = 2"), "dns.geo[0].answers", 13),
            (format!("{DC}{ZONE}[[dns.geo]]\nname = \"api.mysite.com\"\ndatacenters = [\"eu\", \"us\"]"), "dns.geo[0].datacenters[1]", 13),
            (
                format!("{DC}{ZONE}records = [{{ name = \"api\", type = \"A\", value = \"192.0.2.1\" }}]\n[[dns.geo]]\nname = \"api.mysite.com\""),
                "dns.zone[0].records[0]",
                11,
            ),
        ];
        assert!(cases.len() >= 25);
        for (text, path, line) in &cases {
            let found = errors(text);
            assert!(
                found
                    .iter()
                    .any(|e| e.path == *path && e.line == Some(*line)),
                "expected an error at {path} on line {line} from:\n{text}\ngot:\n{}",
                ConfigErrors(found.clone())
            );
        }
    }

    #[test]
    fn every_mistake_in_one_file_is_reported_in_line_order() {
        let text = r#"
[runtime]
worker_threads = 0
[admin]
listen = "localhost:9100"
[[pool]]
name = "web"
balance = "roundrobin"
backends = [{ addr = "127.0.0.1" }, { addr = "127.0.0.1:8081", weight = 0 }]
[[listener]]
name = "web"
bind = "127.0.0.1:8080"
pool = "wbe"
timeouts = { connect = "5" }
"#;
        let found = errors(text);
        let got: Vec<(&str, Option<usize>)> =
            found.iter().map(|e| (e.path.as_str(), e.line)).collect();
        assert_eq!(
            got,
            [
                ("runtime.worker_threads", Some(3)),
                ("admin.listen", Some(5)),
                ("pool[0].balance", Some(8)),
                ("pool[0].backends[0].addr", Some(9)),
                ("pool[0].backends[1].weight", Some(9)),
                ("listener[0].pool", Some(13)),
                ("listener[0].timeouts.connect", Some(14)),
            ]
        );
        assert!(
            found[2].message.contains("did you mean \"round_robin\""),
            "{}",
            found[2]
        );
        assert!(
            found[5].message.contains("did you mean \"web\""),
            "{}",
            found[5]
        );
    }

    #[test]
    fn messages_show_the_value_and_what_is_accepted() {
        let found = errors("[[pool]]\nname = \"p\"\nbackends = [{ addr = \"127.0.0.1\" }]");
        assert_eq!(
            found[0].to_string(),
            "line 3: pool[0].backends[0].addr = \"127.0.0.1\": expected an IP address and port like \
             \"127.0.0.1:8080\" (the port is missing)"
        );
        let found = errors("[[pool]]\nname = \"p\"\nbackends = [{ addr = \"db.local:5432\" }]");
        assert!(
            found[0].message.contains("host names are not accepted"),
            "{}",
            found[0]
        );
        let found = errors("[admin]\nlisen = \"127.0.0.1:1\"");
        let texts: Vec<String> = found.iter().map(ToString::to_string).collect();
        assert_eq!(
            texts,
            [
                "line 1: admin.listen: required key is missing; add e.g. listen = \"127.0.0.1:9100\"",
                "line 2: admin.lisen: unknown key (did you mean listen?); accepted here: listen",
            ]
        );
        let syntax = errors("[admin\nlisten = 1");
        assert_eq!(syntax.len(), 1);
        assert_eq!((syntax[0].path.as_str(), syntax[0].line), ("", Some(1)));
        assert!(
            syntax[0]
                .to_string()
                .starts_with("line 1: TOML syntax error"),
            "{}",
            syntax[0]
        );
        let all = ConfigErrors(vec![
            ConfigError {
                path: "a".into(),
                message: "= 1: bad".into(),
                line: Some(2),
            },
            ConfigError {
                path: String::new(),
                message: "cannot read x".into(),
                line: None,
            },
        ]);
        assert_eq!(all.to_string(), "line 2: a = 1: bad\ncannot read x");
    }

    #[test]
    fn durations() {
        let ok = [
            ("250ms", Duration::from_millis(250)),
            ("2s", Duration::from_secs(2)),
            ("5m", Duration::from_secs(300)),
            ("1h", Duration::from_secs(3600)),
            ("14d", Duration::from_secs(14 * 86400)),
            ("0s", Duration::ZERO),
            ("4294967295s", Duration::from_secs(u32::MAX.into())),
        ];
        for (text, want) in ok {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
        for text in [
            "",
            "2",
            "2 s",
            " 2s",
            "-2s",
            "+2s",
            "1.5s",
            "2sec",
            "s",
            "2S",
            "4294967296s",
            "99999999999999999999999d",
        ] {
            assert!(parse_duration(text).is_err(), "{text}");
        }
        let found = errors(
            "[[pool]]\nname = \"p\"\nbackends = [{ addr = \"127.0.0.1:1\" }]\ncheck = { kind = \"tcp\", interval = 2, timeout = \"0ms\" }",
        );
        let paths: Vec<&str> = found.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["pool[0].check.interval", "pool[0].check.timeout"]);
        assert!(found[0].message.contains("write \"2s\""), "{}", found[0]);
        let found = errors(&contract().replace("minimum = \"60s\"", "minimum = \"1500ms\""));
        assert_eq!(found[0].path, "dns.zone[0].soa.minimum");
    }

    #[test]
    fn cidrs() {
        let cidr = |s| parse_cidr(s).map(|c| (c.addr.to_string(), c.prefix));
        assert_eq!(cidr("10.0.0.0/8"), Ok(("10.0.0.0".into(), 8)));
        assert_eq!(cidr("0.0.0.0/0"), Ok(("0.0.0.0".into(), 0)));
        assert_eq!(cidr("192.0.2.1/32"), Ok(("192.0.2.1".into(), 32)));
        assert_eq!(cidr("2001:db8::/32"), Ok(("2001:db8::".into(), 32)));
        assert_eq!(cidr("::/0"), Ok(("::".into(), 0)));
        assert_eq!(cidr("2001:db8::1/128"), Ok(("2001:db8::1".into(), 128)));
        let err = parse_cidr("10.1.2.3/8").unwrap_err();
        assert!(err.contains("write \"10.0.0.0/8\""), "{err}");
        let err = parse_cidr("2001:db8::1/32").unwrap_err();
        assert!(err.contains("\"2001:db8::/32\""), "{err}");
        let err = parse_cidr("10.0.0.1").unwrap_err();
        assert!(err.contains("\"10.0.0.1/32\""), "{err}");
        for bad in [
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0/8",
            "x/8",
            "10.0.0.0/8/8",
            "",
        ] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names() {
        assert_eq!(
            dns_name("MySite.COM", None, false),
            Ok("mysite.com.".into())
        );
        assert_eq!(
            dns_name("mysite.com.", None, false),
            Ok("mysite.com.".into())
        );
        assert_eq!(
            dns_name("_sip._tcp.x", None, false),
            Ok("_sip._tcp.x.".into())
        );
        assert_eq!(dns_name(".", None, false), Ok(".".into()));
        let long_label = "a".repeat(64);
        let long_name = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(62),
        ]
        .join(".");
        assert_eq!(long_name.len(), 254);
        assert!(dns_name(&long_name[1..], None, false).is_ok());
        for bad in [
            "",
            "a..b",
            ".a",
            "a b",
            "é.com",
            "*.a",
            "a.*",
            "-@",
            "@",
            &long_label,
            &long_name,
        ] {
            assert!(dns_name(bad, None, false).is_err(), "{bad}");
        }
        assert!(dns_name("*.a", Some("x."), true).is_ok());
        assert!(dns_name("a.*", Some("x."), true).is_err());
        assert!(dns_name("a*", Some("x."), true).is_err());

        assert_eq!(ident("web-eu_1.a"), Ok("web-eu_1.a".into()));
        for bad in ["", "a b", "a/b", ".", "..", "é"] {
            assert!(ident(bad).is_err(), "{bad}");
        }
        assert_eq!(host_name("US.MySite.com"), Ok("us.mysite.com".into()));
        assert_eq!(host_name("mysite.com."), Ok("mysite.com".into()));
        assert_eq!(host_name("[2001:DB8::1]"), Ok("[2001:db8::1]".into()));
        assert_eq!(host_name("192.0.2.1"), Ok("192.0.2.1".into()));
        for bad in ["", ".", "a..", "mysite.com:80", "::1", "a b", "[x]"] {
            assert!(host_name(bad).is_err(), "{bad}");
        }
        assert_eq!(
            hash_key("cookie:Session"),
            Ok(HashKey::Cookie("Session".into()))
        );
        for bad in ["header:", "cookie:a b", "ip", "header:a:b", "Header:x"] {
            assert!(hash_key(bad).is_err(), "{bad}");
        }
        assert!(in_zone("a.b.", "b.") && in_zone("b.", "b.") && in_zone("x.", "."));
        assert!(!in_zone("ab.", "b.") && !in_zone("b.", "a.b."));
    }

    #[test]
    fn relative_names_resolve_against_the_origin() {
        let origin = "mysite.com.";
        assert_eq!(owner_name("www", origin), Ok("www.mysite.com.".into()));
        assert_eq!(owner_name("@", origin), Ok(origin.into()));
        assert_eq!(
            owner_name("WWW.MySite.Com.", origin),
            Ok("www.mysite.com.".into())
        );
        assert_eq!(owner_name("*", origin), Ok("*.mysite.com.".into()));
        assert!(owner_name("www.other.com.", origin).is_err());
        assert!(owner_name("mysite.com", origin).is_ok_and(|n| n == "mysite.com.mysite.com."));
        assert_eq!(dns_name("www", Some("."), false), Ok("www.".into()));
        assert_eq!(
            mailbox("hostmaster", origin),
            Ok("hostmaster.mysite.com.".into())
        );
        assert!(
            mailbox("hostmaster@mysite.com", origin)
                .unwrap_err()
                .contains("\"hostmaster.mysite.com.\"")
        );

        let data = |t: &str, v: &str| record_data(record_type(t).unwrap(), v, origin);
        assert_eq!(
            data("CNAME", "api"),
            Ok(RecordData::Cname("api.mysite.com.".into()))
        );
        assert_eq!(data("CNAME", "@"), Ok(RecordData::Cname(origin.into())));
        assert_eq!(
            data("NS", "ns.other.net."),
            Ok(RecordData::Ns("ns.other.net.".into()))
        );
        assert_eq!(
            data("MX", "10 mail"),
            Ok(RecordData::Mx {
                preference: 10,
                exchange: "mail.mysite.com.".into()
            })
        );
        assert_eq!(
            data("MX", "0 ."),
            Ok(RecordData::Mx {
                preference: 0,
                exchange: ".".into()
            })
        );
        assert_eq!(
            data("SRV", "1 2 443 svc.other.org."),
            Ok(RecordData::Srv {
                priority: 1,
                weight: 2,
                port: 443,
                target: "svc.other.org.".into()
            })
        );
        assert_eq!(
            data("CAA", "128 iodef mailto:x@mysite.com"),
            Ok(RecordData::Caa {
                flags: 128,
                tag: "iodef".into(),
                value: "mailto:x@mysite.com".into()
            })
        );
        assert_eq!(
            data("TXT", "a \"quoted\" text"),
            Ok(RecordData::Txt("a \"quoted\" text".into()))
        );
        assert_eq!(
            data("AAAA", "2001:db8::1"),
            Ok(RecordData::Aaaa("2001:db8::1".parse().unwrap()))
        );
        for (t, v) in [
            ("A", "2001:db8::1"),
            ("AAAA", "192.0.2.1"),
            ("MX", "mail"),
            ("MX", "-1 mail"),
            ("MX", "70000 mail"),
            ("SRV", "1 2 mail"),
            ("CAA", "0 issue"),
            ("CAA", "256 issue x"),
            ("CAA", "0 is-sue x"),
            ("CAA", "0 issue \"x"),
            ("CNAME", "a..b"),
        ] {
            assert!(data(t, v).is_err(), "{t} {v}");
        }
        assert!(record_type("SOA").unwrap_err().contains("soa key"));
        assert!(record_type("PTR").is_err());
    }

    #[test]
    fn addresses_and_urls() {
        assert_eq!(
            parse_socket("[::1]:53", true),
            Ok("[::1]:53".parse().unwrap())
        );
        assert_eq!(
            parse_socket("0.0.0.0:0", true),
            Ok("0.0.0.0:0".parse().unwrap())
        );
        for bad in [
            "127.0.0.1:0",
            "0.0.0.0:80",
            "[::]:80",
            "localhost:80",
            "127.0.0.1",
            "::1:53",
            "[::1]",
            "127.0.0.1:65536",
            "",
        ] {
            assert!(parse_socket(bad, false).is_err(), "{bad}");
        }
        assert!(
            parse_socket("::1", true)
                .unwrap_err()
                .contains("\"[::1]:8080\"")
        );

        let url = parse_url("http://[2001:db8::1]/datacenters/eu").unwrap();
        assert_eq!(
            (
                url.target.as_str(),
                url.host.as_str(),
                url.path.as_str(),
                url.tls
            ),
            (
                "[2001:db8::1]:80",
                "[2001:db8::1]",
                "/datacenters/eu",
                false
            )
        );
        let url = parse_url("https://192.0.2.1:9443").unwrap();
        assert_eq!(
            (url.target.as_str(), url.path.as_str(), url.tls),
            ("192.0.2.1:9443", "/", true)
        );
        for bad in [
            "192.0.2.1:80/x",
            "ftp://a/",
            "http://",
            "http://a:0/",
            "http://a:x/",
            "http://u@a/",
            "http://a/#x",
            "http://a/b c",
            "http://a:b:c/",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_input_never_panics() {
        let contract = contract();
        let mut inputs: Vec<String> = contract
            .char_indices()
            .map(|(i, _)| contract[..i].to_owned())
            .step_by(7)
            .collect();
        let lines: Vec<&str> = contract.lines().collect();
        for skip in 0..lines.len() {
            let mut without = lines.clone();
            without.remove(skip);
            inputs.push(without.join("\n"));
        }
        inputs.extend(
            [
                "pool = [[]]",
                "pool = [1, 2]",
                "[[pool]]\nname = 1\nbackends = {}",
                "[[pool]]\nbackends = [[], {}, { addr = 1 }]\nmin_healthy = -1\ncheck = []",
                "[dns]\nlisten = \"127.0.0.1:53\"\nzone = [{ soa = [], ns = [1], records = [{}] }]\ngeo = 5",
                "[[dns.zone]]\norigin = \"@\"\nrecords = [{ name = \"@\", type = \"CNAME\", value = \"@\" }]",
                "[[dns.geo]]\nname = \"a.\"\nanswers = 99999999999999999999999\ndatacenters = []",
                "[[datacenter]]\nlocation = 1970-01-01T00:00:00Z\naddresses = [1.5]\ncheck = { kind = \"http\" }",
                "[[listener]]\nprotocol = \"https\"\ntls = [{ cert = \"\" }]\nroutes = [{}, 1]\ntimeouts = []",
                "[geoip]\nnetwork = { cidr = \"x\" }\ndatabase = 1",
                "[runtime]\nworker_threads = 1e400\nshutdown_grace = \"18446744073709551615d\"",
                "a.b.c.d.e = 1\n\"\u{7f}é\" = \"\u{0}\"",
            ]
            .map(str::to_owned),
        );
        let deep = format!("[admin]\nlisten = {}1{}", "[".repeat(60), "]".repeat(60));
        inputs.push(deep);
        for input in &inputs {
            let _ = parse(input);
        }
    }

    #[test]
    fn check_files_names_each_unreadable_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cert.pem"), "x").unwrap();
        std::fs::create_dir(dir.path().join("geo.mmdb")).unwrap();
        let text = r#"[geoip]
database = "geo.mmdb"
[[pool]]
name = "p"
backends = [{ addr = "127.0.0.1:1" }]
[[listener]]
name = "l"
bind = "127.0.0.1:0"
pool = "p"
protocol = "https"
tls = [
  { cert = "cert.pem", key = "missing.key" },
]
"#;
        let path = dir.path().join("geolb.toml");
        std::fs::write(&path, text).unwrap();
        let config = load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.source, path);
        let found = check_files(&config);
        let got: Vec<(&str, Option<usize>)> =
            found.iter().map(|e| (e.path.as_str(), e.line)).collect();
        assert_eq!(
            got,
            [
                ("geoip.database", Some(2)),
                ("listener[0].tls[0].key", Some(12))
            ]
        );
        assert!(
            found[0].message.contains("not a regular file"),
            "{}",
            found[0]
        );
        assert!(found[1].message.contains("missing.key"), "{}", found[1]);

        let missing = load(&dir.path().join("nope.toml")).unwrap_err();
        assert_eq!(missing.0.len(), 1);
        assert_eq!((missing.0[0].path.as_str(), missing.0[0].line), ("", None));
        assert!(
            missing.0[0].message.starts_with("cannot read "),
            "{missing}"
        );
    }

    #[test]
    fn backend_tls_and_protocol() {
        let pools = |extra: &str| {
            let text = format!(
                "[[pool]]\nname = \"p\"\nbackends = [{{ addr = \"127.0.0.1:8443\" }}]\n{extra}"
            );
            let config = parse(&text).unwrap_or_else(|e| panic!("{e}"));
            let pool = &config.pools[0];
            (pool.backend_protocol, pool.tls.clone())
        };
        assert_eq!(pools(""), (BackendProtocol::Http1, None));
        assert_eq!(pools("tls = false"), (BackendProtocol::Http1, None));
        assert_eq!(
            pools("backend_protocol = \"h2c\""),
            (BackendProtocol::H2c, None)
        );
        let on = BackendTls {
            ca: None,
            verify: true,
            sni: None,
        };
        assert_eq!(pools("tls = true"), (BackendProtocol::Http1, Some(on)));
        assert_eq!(
            pools(
                "backend_protocol = \"h2\"\ntls = { ca = \"ca.pem\", verify = false, sni = \"origin.internal\" }"
            ),
            (
                BackendProtocol::H2,
                Some(BackendTls {
                    ca: Some(PathBuf::from("/etc/geolb/ca.pem")),
                    verify: false,
                    sni: Some("origin.internal".into()),
                })
            )
        );
    }
}
