//! The text of DNS records and names inside a zone: owners relative to
//! the origin, the SOA mailbox, and each record type's value.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::model::*;
use super::values::{dns_name, in_zone};

/// A record's owner: relative to `origin`, and inside its zone.
pub(super) fn owner_name(s: &str, origin: &str) -> Result<String, String> {
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
pub(super) fn mailbox(s: &str, origin: &str) -> Result<String, String> {
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
pub(super) enum RecordType {
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
    pub(super) fn example(self) -> &'static str {
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

pub(super) fn record_type(s: &str) -> Result<RecordType, String> {
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

pub(super) fn number<T: std::str::FromStr>(s: &str, what: &str, max: u32) -> Result<T, String> {
    Some(s)
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("the {what} must be a number from 0 to {max}"))
}

pub(super) fn record_data(rtype: RecordType, s: &str, origin: &str) -> Result<RecordData, String> {
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

pub(super) fn caa(s: &str) -> Result<RecordData, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
