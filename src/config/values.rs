//! Values: the readers every section uses (strings, numbers, durations,
//! addresses, paths, choices, references) and the pure text parsers behind
//! them, whose `Err` text becomes the message after the shown value.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::DeValue;

use super::model::*;
use super::walk::{Ctx, Field, first_seen, suggest};

pub(super) const LOCATION_EXAMPLE: &str = "{ lat = 50.11, lon = 8.68 }";
/// RFC 2181 §8: TTLs with the top bit set are treated as 0 by resolvers.
pub(super) const MAX_TTL: i64 = 0x7fff_ffff;

impl Ctx {
    /// A byte count up to `max`: an integer, or a string with a unit
    /// (`"10MB"`, `"1KiB"`).
    pub(super) fn byte_size(&mut self, f: &Field<'_, '_>, max: u64) -> Option<u64> {
        let n = match f.get() {
            DeValue::Integer(_) => self.int(f, 0, i64::try_from(max).unwrap_or(i64::MAX))? as u64,
            DeValue::String(s) => parse_size(s).map_err(|why| self.bad(f, why)).ok()?,
            _ => {
                self.bad(f, SIZE_FORM);
                return None;
            }
        };
        if n > max {
            self.bad(f, format!("at most {}", show_size(max)));
            return None;
        }
        Some(n)
    }

    pub(super) fn string<'t>(&mut self, f: &Field<'t, '_>) -> Option<&'t str> {
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
    pub(super) fn parsed<T>(
        &mut self,
        f: &Field<'_, '_>,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let s = self.string(f)?;
        parse(s).map_err(|message| self.bad(f, message)).ok()
    }

    pub(super) fn bool(&mut self, f: &Field<'_, '_>) -> Option<bool> {
        match f.get() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.bad(f, "expected true or false");
                None
            }
        }
    }

    /// An integer in `min..=max` (`max == i64::MAX` means no upper bound).
    pub(super) fn int(&mut self, f: &Field<'_, '_>, min: i64, max: i64) -> Option<i64> {
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

    pub(super) fn uint(&mut self, f: &Field<'_, '_>, min: i64, max: i64) -> Option<u32> {
        self.int(f, min, max.min(u32::MAX.into())).map(|n| n as u32)
    }

    pub(super) fn ttl(&mut self, f: &Field<'_, '_>) -> Option<u32> {
        self.uint(f, 0, MAX_TTL)
    }

    pub(super) fn duration(&mut self, f: &Field<'_, '_>, zero_ok: bool) -> Option<Duration> {
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
    pub(super) fn bind(&mut self, f: &Field<'_, '_>) -> Option<SocketAddr> {
        let addr = self.parsed(f, |s| parse_socket(s, true))?;
        // Port 0 asks the kernel for a fresh port, so those never collide.
        if addr.port() != 0
            && let Some(first) = first_seen(&mut self.binds, addr, &f.path)
        {
            self.bad(f, format!("{first} already listens on this address"));
        }
        Some(addr)
    }

    pub(super) fn path(&mut self, f: &Field<'_, '_>) -> Option<PathBuf> {
        let base = self.base.clone();
        self.parsed(f, |s| {
            if s.is_empty() {
                Err("expected a file path".to_owned())
            } else {
                Ok(base.join(s))
            }
        })
    }

    pub(super) fn choice<T: Copy>(
        &mut self,
        f: &Field<'_, '_>,
        options: &[(&str, T)],
    ) -> Option<T> {
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

    pub(super) fn degrees(&mut self, f: &Field<'_, '_>, limit: f64) -> Option<f64> {
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

    pub(super) fn location(&mut self, f: &Field<'_, '_>) -> Option<LatLon> {
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
    pub(super) fn reference(
        &mut self,
        f: &Field<'_, '_>,
        kind: &str,
        defined: &[String],
    ) -> Option<String> {
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

    pub(super) fn references(
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
}

pub(super) const DURATION_FORM: &str = "expected a whole number and a unit (ms, s, m, h or d), \
                             like \"250ms\", \"2s\", \"5m\" or \"14d\"";
/// Also keeps every duration representable as 32-bit seconds (SOA timers)
/// and far from `Instant` overflow.
pub(super) const MAX_DURATION_MS: u64 = u32::MAX as u64 * 1000;

const SIZE_FORM: &str = "expected a number of bytes, or a string with a unit (B, KB, MB, GB: \
                         powers of 1000; KiB, MiB, GiB: powers of 1024), like \"10MB\"";

/// `"10MB"`, `"512KiB"`, `"0"`: a byte count.
pub(super) fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = s.split_at(digits);
    let number: u64 = number.parse().map_err(|_| SIZE_FORM.to_owned())?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1000,
        "MB" => 1000 * 1000,
        "GB" => 1000 * 1000 * 1000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(SIZE_FORM.to_owned()),
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| "too large: at most 2^64 - 1 bytes".to_owned())
}

/// `n` bytes in the largest binary unit that divides it.
fn show_size(n: u64) -> String {
    [("GiB", 30), ("MiB", 20), ("KiB", 10)]
        .iter()
        .find(|(_, shift)| n >= 1 << shift && n.is_multiple_of(1 << shift))
        .map_or_else(
            || format!("{n} bytes"),
            |(unit, shift)| format!("{}{unit}", n >> shift),
        )
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
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

pub(super) fn parse_socket(s: &str, bind: bool) -> Result<SocketAddr, String> {
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
pub(super) fn public_ip(s: &str) -> Result<IpAddr, String> {
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

pub(super) fn parse_cidr(s: &str) -> Result<Cidr, String> {
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
pub(super) fn ident(s: &str) -> Result<String, String> {
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

/// RFC 9110 `tchar`.
pub(super) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

pub(super) fn hash_key(s: &str) -> Result<HashKey, String> {
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

pub(super) fn http_path(s: &str) -> Result<String, String> {
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

pub(super) fn path_prefix(s: &str) -> Result<String, String> {
    let path = http_path(s)?;
    if path.contains('?') {
        return Err("path_prefix matches the path only: remove the ?query".to_owned());
    }
    // Requests are matched with these decoded (RFC 3986 §6.2.2.2), so a
    // prefix holding one would never match.
    let b = path.as_bytes();
    for (i, _) in path.match_indices('%') {
        if let Some(&[h, l]) = b.get(i + 1..i + 3)
            && let (Some(h), Some(l)) = ((h as char).to_digit(16), (l as char).to_digit(16))
            && let c = (h * 16 + l) as u8 as char
            && (c.is_ascii_alphanumeric() || "-._~".contains(c))
        {
            return Err(format!(
                "write {} as {c:?}: requests are routed with letters, digits and -._~ decoded",
                &path[i..i + 3]
            ));
        }
    }
    Ok(path)
}

/// A Unix socket path, resolved against `base`, short enough to bind.
pub(super) fn unix_socket_path(base: &Path, s: &str) -> Result<PathBuf, String> {
    if s.is_empty() || s.ends_with('/') {
        return Err("expected a socket file path like \"/run/geolb/admin.sock\"".to_owned());
    }
    let path = base.join(s);
    let len = path.as_os_str().len();
    if len > UNIX_SOCKET_PATH_MAX {
        return Err(format!(
            "{len} bytes once resolved, longer than a Unix socket path may be \
             ({UNIX_SOCKET_PATH_MAX}): choose a shorter one"
        ));
    }
    Ok(path)
}

/// Permission bits written in octal, as chmod takes them: "0660", "600".
pub(super) fn file_mode(s: &str) -> Result<u32, String> {
    const FORM: &str = "expected permission bits in octal like \"0660\" or \"0600\"";
    let digits = s.strip_prefix("0o").unwrap_or(s);
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
    {
        return Err(format!("{FORM} (digits 0 to 7, at most 4)"));
    }
    let mode = u32::from_str_radix(digits, 8).map_err(|e| format!("{FORM}: {e}"))?;
    if mode > 0o777 {
        return Err(format!(
            "{FORM}: setuid, setgid and sticky bits mean nothing on a socket"
        ));
    }
    if mode & 0o200 == 0 {
        return Err(format!(
            "{s:?} leaves the owner without write permission, which connecting needs: \
             e.g. \"0600\" (owner) or \"0660\" (owner and group)"
        ));
    }
    Ok(mode)
}

/// A Host header / SNI name or an IP address, lower-case, without a port
/// or a trailing dot; IPv6 in brackets.
pub(super) fn host_name(s: &str) -> Result<String, String> {
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

pub(super) struct Url {
    pub(super) tls: bool,
    /// As in [`host_name`].
    pub(super) host: String,
    /// `host:port`.
    pub(super) target: String,
    /// Path and query; at least "/".
    pub(super) path: String,
}

pub(super) fn parse_url(s: &str) -> Result<Url, String> {
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
pub(super) fn dns_name(s: &str, origin: Option<&str>, wildcard: bool) -> Result<String, String> {
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

pub(super) fn in_zone(name: &str, origin: &str) -> bool {
    origin == "."
        || name == origin
        || name
            .strip_suffix(origin)
            .is_some_and(|head| head.ends_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
