//! The EDNS Client Subnet option (RFC 7871), and the COOKIE option
//! (RFC 7873, checked in `cookie`), read from the raw request; and the
//! codes of its options (NSID, for a query hickory-proto cannot parse).
//!
//! hickory-proto 0.26 rejects some malformed options itself (unknown
//! family, a prefix past 32 bits for IPv4 or 128 for IPv6, too few address
//! octets: the whole message is then answered with a FORMERR keeping its
//! question and an OPT, see `wire`),
//! but it accepts address bits set past the source prefix and extra
//! address octets, and drops the options of a badly framed OPT record
//! without a word. So the option is parsed here from the wire bytes, where
//! every one of those is visible.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// EDNS option code of Client Subnet.
const OPTION_ECS: u16 = 8;
const TYPE_OPT: u16 = 41;

/// A well-formed Client Subnet option of a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClientSubnet {
    /// Zero past `source_prefix` (checked).
    pub addr: IpAddr,
    pub source_prefix: u8,
}

/// Why an option is refused with FORMERR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Malformed(pub &'static str);

/// The query's Client Subnet option, if any.
pub(crate) fn client_subnet(message: &[u8]) -> Result<Option<ClientSubnet>, Malformed> {
    options(message).map(|o| o.ecs)
}

/// The options of a query's OPT record that change its answer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Options<'m> {
    pub ecs: Option<ClientSubnet>,
    /// The COOKIE option (RFC 7873), well-formed.
    pub cookie: Option<super::cookie::Presented<'m>>,
}

/// The query's Client Subnet and COOKIE options; one of either at most.
pub(crate) fn options(message: &[u8]) -> Result<Options<'_>, Malformed> {
    let Some(options) = opt_rdata(message)? else {
        return Ok(Options::default());
    };
    let mut found = Options::default();
    let mut rest = options;
    while !rest.is_empty() {
        let (code, data, tail) = option(rest)?;
        rest = tail;
        match code {
            OPTION_ECS if found.ecs.is_some() => {
                return Err(Malformed("more than one Client Subnet option"));
            }
            OPTION_ECS => found.ecs = Some(parse(data)?),
            super::cookie::OPTION_COOKIE if found.cookie.is_some() => {
                return Err(Malformed("more than one COOKIE option"));
            }
            super::cookie::OPTION_COOKIE => {
                found.cookie = Some(super::cookie::parse(data).map_err(Malformed)?)
            }
            _ => {}
        }
    }
    Ok(found)
}

pub(super) fn parse(data: &[u8]) -> Result<ClientSubnet, Malformed> {
    let [f0, f1, source_prefix, _scope, address @ ..] = data else {
        return Err(Malformed("Client Subnet option shorter than 4 bytes"));
    };
    let width = match u16::from_be_bytes([*f0, *f1]) {
        1 => 32,
        2 => 128,
        _ => {
            return Err(Malformed(
                "Client Subnet family is neither IPv4 (1) nor IPv6 (2)",
            ));
        }
    };
    let source_prefix = *source_prefix;
    if u32::from(source_prefix) > width {
        return Err(Malformed(
            "Client Subnet source prefix longer than the address",
        ));
    }
    if address.len() != usize::from(source_prefix).div_ceil(8) {
        return Err(Malformed(
            "Client Subnet address is not exactly the octets the source prefix needs",
        ));
    }
    if let Some(last) = address.last() {
        let used = source_prefix % 8;
        if used != 0 && last & (0xff >> used) != 0 {
            return Err(Malformed(
                "Client Subnet address has bits set past the source prefix",
            ));
        }
    }
    let addr = if width == 32 {
        let mut octets = [0u8; 4];
        octets[..address.len()].copy_from_slice(address);
        IpAddr::V4(Ipv4Addr::from(octets))
    } else {
        let mut octets = [0u8; 16];
        octets[..address.len()].copy_from_slice(address);
        IpAddr::V6(Ipv6Addr::from(octets))
    };
    Ok(ClientSubnet {
        addr,
        source_prefix,
    })
}

/// One option: code, data, and what follows.
fn option(bytes: &[u8]) -> Result<(u16, &[u8], &[u8]), Malformed> {
    let [c0, c1, l0, l1, rest @ ..] = bytes else {
        return Err(Malformed("truncated EDNS option header"));
    };
    let len = usize::from(u16::from_be_bytes([*l0, *l1]));
    if rest.len() < len {
        return Err(Malformed("EDNS option longer than the OPT record"));
    }
    let (data, tail) = rest.split_at(len);
    Ok((u16::from_be_bytes([*c0, *c1]), data, tail))
}

/// The codes of the options of the message's OPT record, up to the first
/// malformed one.
pub(crate) fn option_codes(message: &[u8]) -> impl Iterator<Item = u16> + '_ {
    let mut rest = opt_rdata(message).ok().flatten().unwrap_or_default();
    std::iter::from_fn(move || {
        let (code, _, tail) = option(rest).ok()?;
        rest = tail;
        Some(code)
    })
}

/// The RDATA of the message's OPT record, walking the wire format.
fn opt_rdata(message: &[u8]) -> Result<Option<&[u8]>, Malformed> {
    Ok(opt_record(message)?.map(|(_, rdata)| rdata))
}

/// What a reply needs of a query's OPT record (the first, whatever its
/// owner) when hickory-proto could not parse the query: the client's UDP
/// size and the DO bit. None without one, or when the message breaks off
/// before it.
pub(crate) fn opt_size_and_do(message: &[u8]) -> Option<(u16, bool)> {
    let (fixed, _) = opt_record(message).ok()??;
    Some((
        u16::from_be_bytes([fixed[2], fixed[3]]),
        fixed[6] & 0x80 != 0,
    ))
}

/// An OPT record: its fixed part (type, class, TTL, RDLENGTH) and RDATA.
type OptRecord<'m> = (&'m [u8], &'m [u8]);

/// The message's OPT record.
fn opt_record(message: &[u8]) -> Result<Option<OptRecord<'_>>, Malformed> {
    const TRUNCATED: Malformed = Malformed("message truncated");
    let count = |at: usize| -> Result<usize, Malformed> {
        let b = message.get(at..at + 2).ok_or(TRUNCATED)?;
        Ok(usize::from(u16::from_be_bytes([b[0], b[1]])))
    };
    let (questions, answers, authorities, additionals) =
        (count(4)?, count(6)?, count(8)?, count(10)?);
    let mut at = 12;
    for _ in 0..questions {
        at = skip_name(message, at)? + 4;
    }
    for i in 0..answers + authorities + additionals {
        at = skip_name(message, at)?;
        let fixed = message.get(at..at + 10).ok_or(TRUNCATED)?;
        let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let len = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
        let rdata = message.get(at + 10..at + 10 + len).ok_or(TRUNCATED)?;
        at += 10 + len;
        if rtype == TYPE_OPT && i >= answers + authorities {
            return Ok(Some((fixed, rdata)));
        }
    }
    Ok(None)
}

/// The offset just past the name at `at`.
fn skip_name(message: &[u8], mut at: usize) -> Result<usize, Malformed> {
    loop {
        let len = *message
            .get(at)
            .ok_or(Malformed("message truncated in a name"))?;
        match len & 0xc0 {
            0x00 if len == 0 => return Ok(at + 1),
            0x00 => at += 1 + usize::from(len),
            // A compression pointer ends the name.
            0xc0 => return Ok(at + 2),
            _ => return Err(Malformed("unknown label type")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ecs(family: u16, source: u8, scope: u8, address: &[u8]) -> Vec<u8> {
        let mut data = family.to_be_bytes().to_vec();
        data.extend([source, scope]);
        data.extend(address);
        data
    }

    /// A query for "a." with an OPT record carrying `options`.
    fn query(options: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
        m.extend([1, b'a', 0, 0, 1, 0, 1]);
        let mut rdata = Vec::new();
        for (code, data) in options {
            rdata.extend(code.to_be_bytes());
            rdata.extend((data.len() as u16).to_be_bytes());
            rdata.extend(data);
        }
        m.extend([0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0]);
        m.extend((rdata.len() as u16).to_be_bytes());
        m.extend(rdata);
        m
    }

    #[test]
    fn well_formed_options_are_read() {
        let got = client_subnet(&query(&[(8, ecs(1, 24, 0, &[81, 2, 69]))])).unwrap();
        assert_eq!(
            got,
            Some(ClientSubnet {
                addr: "81.2.69.0".parse().unwrap(),
                source_prefix: 24
            })
        );
        let got = client_subnet(&query(&[(10, vec![1; 8]), (8, ecs(2, 0, 0, &[]))])).unwrap();
        assert_eq!(got.unwrap().source_prefix, 0);
        let got = client_subnet(&query(&[(8, ecs(1, 27, 0, &[81, 2, 69, 160]))])).unwrap();
        assert_eq!(got.unwrap().addr, "81.2.69.160".parse::<IpAddr>().unwrap());
        assert_eq!(client_subnet(&query(&[])).unwrap(), None);
    }

    #[test]
    fn malformed_options_are_refused() {
        let bad = [
            ecs(1, 33, 0, &[1, 2, 3, 4, 5]),
            ecs(2, 129, 0, &[0; 17]),
            ecs(3, 8, 0, &[1]),
            // Bits past the prefix.
            ecs(1, 24, 0, &[81, 2, 69, 160]),
            ecs(1, 20, 0, &[81, 2, 0x4f]),
            // Too many and too few octets.
            ecs(1, 16, 0, &[81, 2, 0]),
            ecs(1, 24, 0, &[81, 2]),
            vec![0, 1, 24],
        ];
        for option in bad {
            assert!(
                client_subnet(&query(&[(8, option.clone())])).is_err(),
                "{option:?}"
            );
        }
        let twice = query(&[(8, ecs(1, 8, 0, &[10])), (8, ecs(1, 8, 0, &[10]))]);
        assert!(client_subnet(&twice).is_err());
        // An option running past the OPT record.
        let mut framed = query(&[(8, ecs(1, 8, 0, &[10]))]);
        let len = framed.len();
        framed[len - 6] = 40;
        assert!(client_subnet(&framed).is_err());
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x9e37_79b9_u32;
        for len in 0..200 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    seed as u8
                })
                .collect();
            let _ = client_subnet(&bytes);
        }
        let q = query(&[(8, ecs(1, 24, 0, &[81, 2, 69]))]);
        for cut in 0..q.len() {
            let _ = client_subnet(&q[..cut]);
        }
    }
}
