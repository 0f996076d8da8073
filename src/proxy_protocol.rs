//! The PROXY protocol (HAProxy's spec, v1 text and v2 binary): read from
//! clients behind a front load balancer, written towards backends that want
//! the real client address.
//!
//! Reading takes exactly the header's bytes off the stream and never more,
//! so whatever follows (a TLS hello, an HTTP request, a database protocol)
//! is left for the next reader without any buffer to hand over.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::config::ProxyProtocolVersion;
use crate::metrics::PROXY_PROTOCOL_ERRORS;

const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The spec's limit for a v1 line, CRLF included.
const V1_MAX: usize = 107;
/// The shortest header of either version (`PROXY UNKNOWN\r\n`); reading
/// this much first can never take bytes past a header.
const MIN_HEADER: usize = 15;

const V2_LOCAL: [u8; 16] = *b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";
const V1_LOCAL: &[u8] = b"PROXY UNKNOWN\r\n";

/// The endpoints of the client's original connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    pub source: SocketAddr,
    pub destination: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("malformed PROXY header: {0}")]
    Malformed(&'static str),
}

fn malformed<T>(why: &'static str) -> Result<T, HeaderError> {
    Err(HeaderError::Malformed(why))
}

/// Reads one v1 or v2 header. `None`: the sender speaks for itself (v2
/// LOCAL, v1 UNKNOWN, or a v2 family other than IPv4/IPv6), so the real
/// connection endpoints apply.
pub async fn read_header<R: AsyncRead + Unpin>(
    io: &mut R,
) -> Result<Option<Addresses>, HeaderError> {
    let mut buf = [0u8; V1_MAX];
    io.read_exact(&mut buf[..MIN_HEADER]).await?;
    if buf.starts_with(&V2_SIGNATURE) {
        io.read_exact(&mut buf[MIN_HEADER..16]).await?;
        let mut fixed = [0u8; 16];
        fixed.copy_from_slice(&buf[..16]);
        read_v2(io, fixed).await
    } else if buf.starts_with(b"PROXY ") {
        let len = read_v1_line(io, &mut buf).await?;
        parse_v1(&buf[..len - 2])
    } else {
        malformed("no PROXY signature")
    }
}

/// Reads the rest of a v1 line into `buf` (which holds its first
/// `MIN_HEADER` bytes) and returns its length, CRLF included.
async fn read_v1_line<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut [u8; V1_MAX],
) -> Result<usize, HeaderError> {
    let mut len = MIN_HEADER;
    let mut checked = 0;
    loop {
        // A CR or LF anywhere but in the final CRLF is an error, so once
        // checked, a prefix never needs looking at again.
        while checked < len {
            match buf[checked] {
                b'\n' => return malformed("v1 line has a bare LF"),
                b'\r' if checked + 1 < len => {
                    if buf[checked + 1] != b'\n' {
                        return malformed("v1 line has a bare CR");
                    }
                    if checked + 2 != len {
                        return malformed("v1 line has bytes after its CRLF");
                    }
                    return Ok(len);
                }
                b'\r' => break,
                _ => checked += 1,
            }
        }
        // The line needs at least its CRLF (or the LF after a final CR), so
        // reading that much more cannot run into the next protocol's bytes.
        let want = if buf[len - 1] == b'\r' { 1 } else { 2 };
        if len + want > V1_MAX {
            return malformed("v1 line longer than 107 bytes");
        }
        io.read_exact(&mut buf[len..len + want]).await?;
        len += want;
    }
}

fn parse_v1(line: &[u8]) -> Result<Option<Addresses>, HeaderError> {
    let Ok(line) = std::str::from_utf8(line) else {
        return malformed("v1 line is not ASCII");
    };
    let mut fields = line.split(' ');
    fields.next(); // "PROXY", checked by the caller
    let v6 = match fields.next() {
        Some("TCP4") => false,
        Some("TCP6") => true,
        // The spec lets anything follow UNKNOWN; it is ignored.
        Some("UNKNOWN") => return Ok(None),
        _ => return malformed("v1 protocol is not TCP4, TCP6 or UNKNOWN"),
    };
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return malformed("v1 line does not have 6 fields");
    };
    let ip = |s: &str| -> Result<IpAddr, HeaderError> {
        let parsed = if v6 {
            s.parse::<Ipv6Addr>().map(IpAddr::V6)
        } else {
            s.parse::<Ipv4Addr>().map(IpAddr::V4)
        };
        parsed.or(malformed("v1 address is not of the stated family"))
    };
    let port = |s: &str| -> Result<u16, HeaderError> {
        // `u16::from_str` would accept a leading '+'.
        if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return malformed("v1 port is not a decimal number");
        }
        s.parse().or(malformed("v1 port is out of range"))
    };
    Ok(Some(Addresses {
        source: SocketAddr::new(ip(src)?, port(sport)?),
        destination: SocketAddr::new(ip(dst)?, port(dport)?),
    }))
}

async fn read_v2<R: AsyncRead + Unpin>(
    io: &mut R,
    fixed: [u8; 16],
) -> Result<Option<Addresses>, HeaderError> {
    if fixed[12] >> 4 != 2 {
        return malformed("v2 version nibble is not 2");
    }
    let proxied = match fixed[12] & 0x0f {
        0 => false,
        1 => true,
        _ => return malformed("v2 command is neither LOCAL nor PROXY"),
    };
    let family = fixed[13] >> 4;
    if family > 3 || fixed[13] & 0x0f > 2 {
        return malformed("v2 address family or transport is undefined");
    }
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    let addr_len = match (proxied, family) {
        (true, 1) => 12,
        (true, 2) => 36,
        // LOCAL, UNSPEC and UNIX: the spec's receiver uses the real
        // endpoints; only the length matters.
        _ => 0,
    };
    if len < addr_len {
        return malformed("v2 address block shorter than its family needs");
    }
    let mut addr = [0u8; 36];
    io.read_exact(&mut addr[..addr_len]).await?;
    skip(io, len - addr_len).await?;
    let port = |i: usize| u16::from_be_bytes([addr[i], addr[i + 1]]);
    Ok(match addr_len {
        12 => {
            let ip = |i: usize| Ipv4Addr::new(addr[i], addr[i + 1], addr[i + 2], addr[i + 3]);
            Some(Addresses {
                source: SocketAddr::new(ip(0).into(), port(8)),
                destination: SocketAddr::new(ip(4).into(), port(10)),
            })
        }
        36 => {
            let ip = |i: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&addr[i..i + 16]);
                Ipv6Addr::from(octets)
            };
            Some(Addresses {
                source: SocketAddr::new(ip(0).into(), port(32)),
                destination: SocketAddr::new(ip(16).into(), port(34)),
            })
        }
        _ => None,
    })
}

/// Discards TLVs (up to 64 KiB) without holding them.
async fn skip<R: AsyncRead + Unpin>(io: &mut R, mut n: usize) -> io::Result<()> {
    let mut scratch = [0u8; 256];
    while n > 0 {
        let step = n.min(scratch.len());
        io.read_exact(&mut scratch[..step]).await?;
        n -= step;
    }
    Ok(())
}

/// For a listener with `accept_proxy_protocol`: the client's real
/// endpoints, from its header read within `deadline`, or the connection's
/// own (`peer`, `local`) when the header speaks for the front proxy itself.
/// `None`: drop the connection (already logged and counted).
pub async fn accept<R: AsyncRead + Unpin>(
    io: &mut R,
    peer: SocketAddr,
    local: SocketAddr,
    deadline: Duration,
    listener: &str,
) -> Option<Addresses> {
    let problem = match tokio::time::timeout(deadline, read_header(io)).await {
        Ok(Ok(Some(addresses))) => return Some(addresses),
        Ok(Ok(None)) => {
            return Some(Addresses {
                source: peer,
                destination: local,
            });
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no complete PROXY header within {deadline:?}"),
    };
    crate::log_limited!(info, listener, client = %peer, problem = %crate::lograte::clip(&problem), "PROXY header refused");
    ::metrics::counter!(PROXY_PROTOCOL_ERRORS, "listener" => listener.to_string()).increment(1);
    None
}

/// Creates a listener's error series at 0 (for listeners that expect
/// PROXY headers), so the first error is a rate change.
pub fn register_series(listener: &str) {
    ::metrics::counter!(PROXY_PROTOCOL_ERRORS, "listener" => listener.to_string()).increment(0);
}

/// The header that tells a backend the client's real endpoints. Mixed
/// families (an IPv4 client on an IPv6 listener) are sent as IPv6.
pub fn encode(
    version: ProxyProtocolVersion,
    source: SocketAddr,
    destination: SocketAddr,
) -> Vec<u8> {
    let (src, dst) = match (source.ip().to_canonical(), destination.ip().to_canonical()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (IpAddr::V4(s), IpAddr::V4(d)),
        (s, d) => (IpAddr::V6(as_v6(s)), IpAddr::V6(as_v6(d))),
    };
    let (sport, dport) = (source.port(), destination.port());
    match version {
        ProxyProtocolVersion::V1 => {
            let proto = if src.is_ipv4() { "TCP4" } else { "TCP6" };
            format!("PROXY {proto} {src} {dst} {sport} {dport}\r\n").into_bytes()
        }
        ProxyProtocolVersion::V2 => {
            let mut out = Vec::with_capacity(16 + 36);
            out.extend_from_slice(&V2_SIGNATURE);
            out.push(0x21); // version 2, PROXY
            match (src, dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    out.extend_from_slice(&[0x11, 0, 12]); // INET, STREAM
                    out.extend_from_slice(&s.octets());
                    out.extend_from_slice(&d.octets());
                }
                (s, d) => {
                    out.extend_from_slice(&[0x21, 0, 36]); // INET6, STREAM
                    out.extend_from_slice(&as_v6(s).octets());
                    out.extend_from_slice(&as_v6(d).octets());
                }
            }
            out.extend_from_slice(&sport.to_be_bytes());
            out.extend_from_slice(&dport.to_be_bytes());
            out
        }
    }
}

fn as_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}

/// The header for the proxy's own connections (health checks): v2 LOCAL,
/// v1 UNKNOWN.
pub fn local(version: ProxyProtocolVersion) -> &'static [u8] {
    match version {
        ProxyProtocolVersion::V1 => V1_LOCAL,
        ProxyProtocolVersion::V2 => &V2_LOCAL,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `input`; also returns the bytes left unread.
    fn parse(input: &[u8]) -> (Result<Option<Addresses>, HeaderError>, Vec<u8>) {
        thread_local! {
            static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
        }
        let mut rest = input;
        let result = RT.with(|rt| rt.block_on(read_header(&mut rest)));
        (result, rest.to_vec())
    }

    fn addrs(source: &str, destination: &str) -> Addresses {
        Addresses {
            source: source.parse().unwrap(),
            destination: destination.parse().unwrap(),
        }
    }

    #[test]
    fn v1_tcp4_and_tcp6_leave_the_payload_unread() {
        let (r, rest) = parse(b"PROXY TCP4 192.0.2.1 198.51.100.2 51234 443\r\nGET / HTTP/1.1\r\n");
        assert_eq!(
            r.unwrap(),
            Some(addrs("192.0.2.1:51234", "198.51.100.2:443"))
        );
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");

        let (r, rest) = parse(b"PROXY TCP6 2001:db8::1 ::1 1 65535\r\n\x16\x03\x01");
        assert_eq!(r.unwrap(), Some(addrs("[2001:db8::1]:1", "[::1]:65535")));
        assert_eq!(rest, b"\x16\x03\x01");
    }

    #[test]
    fn v1_unknown_is_local() {
        let (r, rest) = parse(b"PROXY UNKNOWN\r\nx");
        assert_eq!(r.unwrap(), None);
        assert_eq!(rest, b"x");
        let (r, rest) = parse(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n");
        assert_eq!(r.unwrap(), None);
        assert!(rest.is_empty());
    }

    #[test]
    fn v1_longest_line_is_accepted_and_one_more_byte_is_not() {
        let longest = "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert!(longest.len() <= V1_MAX);
        assert!(parse(longest.as_bytes()).0.unwrap().is_some());
        let mut unknown = b"PROXY UNKNOWN ".to_vec();
        unknown.resize(V1_MAX - 2, b'a');
        unknown.extend_from_slice(b"\r\n");
        assert_eq!(parse(&unknown).0.unwrap(), None);
        let mut too_long = b"PROXY UNKNOWN ".to_vec();
        too_long.resize(V1_MAX - 1, b'a');
        too_long.extend_from_slice(b"\r\n");
        assert!(matches!(parse(&too_long).0, Err(HeaderError::Malformed(_))));
        // Without any CRLF at all: refused at the limit, not read further.
        let (r, rest) = parse(&[b'a'; 300]);
        assert!(r.is_err());
        assert_eq!(rest.len(), 300 - MIN_HEADER);
        let mut endless = b"PROXY UNKNOWN ".to_vec();
        endless.resize(300, b'a');
        let (r, rest) = parse(&endless);
        assert!(matches!(r, Err(HeaderError::Malformed(_))));
        assert_eq!(rest.len(), 300 - V1_MAX);
    }

    #[test]
    fn v1_malformed() {
        for bad in [
            &b"PROXY TCP4 192.0.2.1 198.51.100.2 51234\r\n"[..],
            b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2 3\r\n",
            b"PROXY TCP4 2001:db8::1 198.51.100.2 1 2\r\n",
            b"PROXY TCP6 192.0.2.1 ::1 1 2\r\n",
            b"PROXY TCP4 192.0.2.256 198.51.100.2 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 +1 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 1 \r\n",
            b"PROXY TCP4  192.0.2.1 198.51.100.2 1 2\r\n",
            b"PROXY UDP4 192.0.2.1 198.51.100.2 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\n\r\n",
            b"PROXY TCP4 192.0.2.1\r198.51.100.2 1 2\r\n",
            b"PROXY TCP4 192.0.2.\xff 198.51.100.2 1 2\r\n",
            b"proxy TCP4 192.0.2.1 198.51.100.2 1 2\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            let (r, _) = parse(bad);
            assert!(
                r.is_err(),
                "accepted {:?}: {r:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn truncated_headers_are_errors() {
        let full = encode(
            ProxyProtocolVersion::V2,
            "[2001:db8::1]:1000".parse().unwrap(),
            "[2001:db8::2]:2000".parse().unwrap(),
        );
        for cut in 0..full.len() {
            assert!(parse(&full[..cut]).0.is_err(), "v2 cut at {cut}");
        }
        let v1 = b"PROXY TCP4 192.0.2.1 198.51.100.2 51234 443\r\n";
        for cut in 0..v1.len() {
            assert!(parse(&v1[..cut]).0.is_err(), "v1 cut at {cut}");
        }
    }

    #[test]
    fn v2_roundtrip_both_families_and_v1_too() {
        for (s, d) in [
            ("192.0.2.1:51234", "198.51.100.2:443"),
            ("[2001:db8::1]:1", "[2001:db8::2]:65535"),
        ] {
            for version in [ProxyProtocolVersion::V1, ProxyProtocolVersion::V2] {
                let mut bytes = encode(version, s.parse().unwrap(), d.parse().unwrap());
                bytes.extend_from_slice(b"payload");
                let (r, rest) = parse(&bytes);
                assert_eq!(r.unwrap(), Some(addrs(s, d)), "{version:?}");
                assert_eq!(rest, b"payload");
            }
        }
    }

    #[test]
    fn encode_normalizes_mapped_and_mixed_families() {
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:5".parse().unwrap();
        let v4: SocketAddr = "198.51.100.2:6".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::2]:7".parse().unwrap();
        assert_eq!(
            encode(ProxyProtocolVersion::V1, mapped, v4),
            b"PROXY TCP4 192.0.2.1 198.51.100.2 5 6\r\n"
        );
        assert_eq!(
            encode(ProxyProtocolVersion::V1, v4, v6),
            b"PROXY TCP6 ::ffff:198.51.100.2 2001:db8::2 6 7\r\n"
        );
        let v2 = encode(ProxyProtocolVersion::V2, v4, v6);
        assert_eq!(v2[13], 0x21);
        assert_eq!(v2.len(), 16 + 36);
    }

    #[test]
    fn v2_exact_bytes() {
        let h = encode(
            ProxyProtocolVersion::V2,
            "192.0.2.1:258".parse().unwrap(),
            "198.51.100.2:443".parse().unwrap(),
        );
        let mut want = V2_SIGNATURE.to_vec();
        want.extend_from_slice(&[
            0x21, 0x11, 0, 12, 192, 0, 2, 1, 198, 51, 100, 2, 1, 2, 1, 0xbb,
        ]);
        assert_eq!(h, want);
    }

    #[test]
    fn v2_local_unspec_and_unix_use_the_real_endpoints() {
        let (r, rest) = parse(&[&V2_LOCAL[..], b"x"].concat());
        assert_eq!(r.unwrap(), None);
        assert_eq!(rest, b"x");
        // LOCAL with an address block: skipped.
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x11, 0, 12]);
        local.extend_from_slice(&[1; 12]);
        local.push(b'y');
        let (r, rest) = parse(&local);
        assert_eq!(r.unwrap(), None);
        assert_eq!(rest, b"y");
        // PROXY over UNIX sockets (216 address bytes), and UNSPEC.
        for (fam, len) in [(0x31u8, 216u16), (0x00, 0), (0x01, 4)] {
            let mut h = V2_SIGNATURE.to_vec();
            h.extend_from_slice(&[0x21, fam]);
            h.extend_from_slice(&len.to_be_bytes());
            h.extend(std::iter::repeat_n(7u8, usize::from(len)));
            h.push(b'z');
            let (r, rest) = parse(&h);
            assert_eq!(r.unwrap(), None, "family {fam:#x}");
            assert_eq!(rest, b"z");
        }
    }

    #[test]
    fn v2_tlvs_are_skipped() {
        let mut h = encode(
            ProxyProtocolVersion::V2,
            "192.0.2.1:1".parse().unwrap(),
            "192.0.2.2:2".parse().unwrap(),
        );
        let tlvs = 60_000u16;
        h[14..16].copy_from_slice(&(12 + tlvs).to_be_bytes());
        h.extend(std::iter::repeat_n(0xAAu8, usize::from(tlvs)));
        h.extend_from_slice(b"rest");
        let (r, rest) = parse(&h);
        assert_eq!(r.unwrap(), Some(addrs("192.0.2.1:1", "192.0.2.2:2")));
        assert_eq!(rest, b"rest");
    }

    #[test]
    fn v2_malformed() {
        let good = encode(
            ProxyProtocolVersion::V2,
            "192.0.2.1:1".parse().unwrap(),
            "192.0.2.2:2".parse().unwrap(),
        );
        let with = |i: usize, b: u8| {
            let mut h = good.clone();
            h[i] = b;
            h
        };
        for (what, bad) in [
            ("signature", with(11, b'X')),
            ("signature start", with(0, b'\n')),
            ("version 1", with(12, 0x11)),
            ("command 2", with(12, 0x22)),
            ("family 4", with(13, 0x41)),
            ("transport 3", with(13, 0x13)),
            ("short inet block", with(15, 11)),
            ("inet6 with inet length", with(13, 0x21)),
        ] {
            assert!(parse(&bad).0.is_err(), "{what} accepted");
        }
    }

    #[test]
    fn no_panic_on_arbitrary_input() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let prefixes: [&[u8]; 4] = [b"", b"PROXY ", b"PROXY TCP4 ", &V2_SIGNATURE];
        for i in 0..20_000 {
            let mut input = prefixes[i % prefixes.len()].to_vec();
            let len = (next() % 120) as usize;
            input.extend((0..len).map(|_| {
                let r = next();
                // Bias towards the bytes the parsers branch on.
                match r % 8 {
                    0 => b'\r',
                    1 => b'\n',
                    2 => b' ',
                    3 => b'0' + (r >> 8) as u8 % 10,
                    _ => (r >> 16) as u8,
                }
            }));
            let _ = parse(&input);
        }
    }

    /// A valid header of any kind, with what reading it must return.
    fn valid_header(rng: &mut fastrand::Rng) -> (Vec<u8>, Option<Addresses>) {
        let ip = |rng: &mut fastrand::Rng, v6: bool| -> IpAddr {
            if v6 {
                Ipv6Addr::from(rng.u128(..)).into()
            } else {
                Ipv4Addr::from(rng.u32(..)).into()
            }
        };
        match rng.u8(0..6) {
            0 | 1 => {
                let v6 = rng.bool();
                let source = SocketAddr::new(ip(rng, v6), rng.u16(..));
                let destination = SocketAddr::new(ip(rng, v6), rng.u16(..));
                let version = if rng.bool() {
                    ProxyProtocolVersion::V1
                } else {
                    ProxyProtocolVersion::V2
                };
                let bytes = encode(version, source, destination);
                // What encode normalises (mapped addresses) is read back so.
                let (r, _) = parse(&bytes);
                let got = r.expect("an encoded header reads back").unwrap();
                assert_eq!(got.source.port(), source.port());
                assert_eq!(got.destination.port(), destination.port());
                assert_eq!(got.source.ip().to_canonical(), source.ip().to_canonical());
                assert_eq!(
                    got.destination.ip().to_canonical(),
                    destination.ip().to_canonical()
                );
                (bytes, Some(got))
            }
            2 => (V1_LOCAL.to_vec(), None),
            3 => {
                // UNKNOWN with anything printable after it, up to the limit.
                let mut line = b"PROXY UNKNOWN ".to_vec();
                let extra = rng.usize(0..=V1_MAX - 2 - line.len());
                line.extend((0..extra).map(|_| rng.u8(b' '..=b'~')));
                line.extend_from_slice(b"\r\n");
                (line, None)
            }
            4 => (V2_LOCAL.to_vec(), None),
            _ => {
                // v2 with TLVs, or a family that speaks for itself.
                let mut h = V2_SIGNATURE.to_vec();
                let (fam, addr_len) = *rng
                    .choice(&[
                        (0x11u8, 12usize),
                        (0x21, 36),
                        (0x31, 216),
                        (0x00, 0),
                        (0x12, 12),
                    ])
                    .unwrap();
                let tlvs = rng.usize(0..300);
                h.extend_from_slice(&[0x21, fam]);
                h.extend_from_slice(&((addr_len + tlvs) as u16).to_be_bytes());
                h.extend((0..addr_len + tlvs).map(|_| rng.u8(..)));
                let (r, _) = parse(&h);
                (h, r.expect("a v2 header reads"))
            }
        }
    }

    /// Damages a header: the ways a sender or the network gets it wrong.
    fn damage(rng: &mut fastrand::Rng, h: &mut Vec<u8>) {
        for _ in 0..rng.usize(1..4) {
            match rng.u8(0..8) {
                0 => h.truncate(rng.usize(0..=h.len())),
                1 if !h.is_empty() => {
                    let i = rng.usize(0..h.len());
                    h[i] ^= 1 << rng.u8(0..8);
                }
                2 if h.len() >= 16 => {
                    // The v2 length field, or any two bytes, set at random.
                    let i = if rng.bool() {
                        14
                    } else {
                        rng.usize(0..h.len() - 1)
                    };
                    h[i..i + 2].copy_from_slice(&rng.u16(..).to_be_bytes());
                }
                3 => {
                    // A v1 line of 100 to 120 bytes, CRLF or not.
                    let mut line = b"PROXY ".to_vec();
                    let len = rng.usize(100..=120);
                    while line.len() < len {
                        line.push(*rng.choice(b"TCP46UNKOWabcdef0123456789.: ").unwrap());
                    }
                    if rng.bool() {
                        line.truncate(len - 2);
                        line.extend_from_slice(b"\r\n");
                    }
                    *h = line;
                }
                4 => {
                    // Missing CRLF, or half of it.
                    while h.last().is_some_and(|&b| b == b'\n' || b == b'\r') {
                        h.pop();
                    }
                    if rng.bool() {
                        h.push(*rng.choice(b"\r\n").unwrap());
                    }
                }
                5 => {
                    let i = rng.usize(0..=h.len());
                    let b = *rng.choice(b"\r\n :.0").unwrap_or(&b' ');
                    h.insert(i, if rng.bool() { b } else { rng.u8(..) });
                }
                6 if !h.is_empty() => {
                    h.remove(rng.usize(0..h.len()));
                }
                _ => {
                    let i = rng.usize(0..=h.len());
                    let extra: Vec<u8> = (0..rng.usize(0..40)).map(|_| rng.u8(..)).collect();
                    h.splice(i..i, extra);
                }
            }
        }
    }

    /// The property test (README "Tests"): random bytes, valid headers, and
    /// damaged ones. Never a panic; a header that reads is never read past:
    /// the marker after it is left whole, and what the read took is itself
    /// a header that reads the same.
    #[test]
    fn proptest_read_header() {
        const MARKER: &[u8] = b"\xfe\xedMARKER";
        let cases = crate::proptest_cases(200_000);
        let seed = 0x7072_6f78_795f_7631u64;
        let mut rng = fastrand::Rng::with_seed(seed);
        let started = std::time::Instant::now();
        let (mut accepted, mut valid) = (0usize, 0usize);
        for i in 0..cases {
            let kind = rng.u8(0..8);
            let mut input = match kind {
                0 => (0..rng.usize(0..200)).map(|_| rng.u8(..)).collect(),
                1 | 2 => {
                    let (h, want) = valid_header(&mut rng);
                    valid += 1;
                    let mut input = h.clone();
                    input.extend_from_slice(MARKER);
                    let (r, rest) = parse(&input);
                    assert_eq!(
                        r.unwrap(),
                        want,
                        "valid header {i} (seed {seed:#x}): {h:02x?}"
                    );
                    assert_eq!(rest, MARKER, "valid header {i} read past: {h:02x?}");
                    continue;
                }
                _ => {
                    let (mut h, _) = valid_header(&mut rng);
                    damage(&mut rng, &mut h);
                    h
                }
            };
            input.extend_from_slice(MARKER);
            let outcome = std::panic::catch_unwind(|| parse(&input));
            let Ok((r, rest)) = outcome else {
                panic!("input {i} (seed {seed:#x}) panicked: {input:02x?}");
            };
            if let Ok(got) = r {
                accepted += 1;
                // What was taken is exactly a header: alone, it reads the
                // same and leaves nothing (a damaged v2 length may make the
                // marker's bytes part of it; that is still a header).
                let taken = &input[..input.len() - rest.len()];
                let (again, left) = parse(taken);
                assert_eq!(again.unwrap(), got, "input {i}: {taken:02x?}");
                assert!(left.is_empty(), "input {i}: {taken:02x?}");
                if let Some(a) = got {
                    // And it re-encodes to a header that reads the same.
                    for version in [ProxyProtocolVersion::V1, ProxyProtocolVersion::V2] {
                        let (back, _) = parse(&encode(version, a.source, a.destination));
                        let back = back.unwrap().unwrap();
                        assert_eq!(back.source.port(), a.source.port());
                        assert_eq!(
                            back.source.ip().to_canonical(),
                            a.source.ip().to_canonical()
                        );
                        assert_eq!(back.destination.port(), a.destination.port());
                        assert_eq!(
                            back.destination.ip().to_canonical(),
                            a.destination.ip().to_canonical()
                        );
                    }
                }
            }
        }
        eprintln!(
            "proptest_read_header: {cases} inputs ({valid} valid, {accepted} damaged or random accepted) in {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn local_headers() {
        assert_eq!(local(ProxyProtocolVersion::V1), b"PROXY UNKNOWN\r\n");
        let (r, rest) = parse(local(ProxyProtocolVersion::V2));
        assert_eq!(r.unwrap(), None);
        assert!(rest.is_empty());
    }
}
