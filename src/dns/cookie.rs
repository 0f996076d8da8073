//! DNS cookies (RFC 7873) with the interoperable server cookie of RFC
//! 9018: version 1, three reserved octets, a 32-bit timestamp and
//! SipHash-2-4 over the client cookie, those eight octets and the client's
//! address, under a 128-bit secret. Servers sharing the secret (one
//! anycast address) accept each other's cookies, as BIND's, Knot's and
//! NSD's do.

use std::hash::Hasher;
use std::io::Read;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use siphasher::sip::SipHasher24;

/// EDNS option code of COOKIE.
pub(super) const OPTION_COOKIE: u16 = 10;
const CLIENT_LEN: usize = 8;
/// What geolb sends: version, reserved, timestamp, hash.
pub(super) const SERVER_LEN: usize = 16;
const VERSION: u8 = 1;
/// RFC 9018 §4.3: a cookie is valid up to an hour after its timestamp…
const MAX_AGE: u32 = 3600;
/// … and from five minutes before it (clocks of servers sharing a secret).
const MAX_AHEAD: u32 = 300;

/// The secret server cookies are made with.
pub(super) type Secret = [u8; 16];

/// The key when the config sets none: random, once per process, so that a
/// reload keeps the cookies clients hold.
pub(super) fn process_secret() -> Secret {
    static SECRET: OnceLock<Secret> = OnceLock::new();
    *SECRET.get_or_init(|| {
        let mut secret = [0u8; 16];
        let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut secret));
        if read.is_err() {
            // The standard library's hash keys come from the OS's random
            // source too; two draws make 128 bits.
            use std::hash::BuildHasher;
            let state = std::collections::hash_map::RandomState::new();
            secret[..8].copy_from_slice(&state.hash_one(0u8).to_le_bytes());
            secret[8..].copy_from_slice(&state.hash_one(1u8).to_le_bytes());
        }
        secret
    })
}

#[cfg(test)]
thread_local! {
    /// A fixed `unix_now` for this thread's tests.
    static PINNED: std::cell::Cell<Option<u32>> = const { std::cell::Cell::new(None) };
}

/// Makes `unix_now` return `now` on this thread (tests comparing both
/// paths' cookies, which would differ across a second's boundary).
#[cfg(test)]
pub(super) fn pin_now(now: Option<u32>) {
    PINNED.set(now);
}

/// The seconds since the Unix epoch, as cookie timestamps count them.
pub(super) fn unix_now() -> u32 {
    #[cfg(test)]
    if let Some(now) = PINNED.get() {
        return now;
    }
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as u32)
}

/// A COOKIE option of a query: the client cookie and the server cookie
/// it presents (empty on a first contact).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Presented<'a> {
    pub client: [u8; CLIENT_LEN],
    pub server: &'a [u8],
}

/// RFC 7873 §5.2.2: 8 octets (client cookie only) or 16 to 40 (a server
/// cookie of 8 to 32); anything else is FORMERR.
/// Err: why the option is malformed (FORMERR).
pub(super) fn parse(data: &[u8]) -> Result<Presented<'_>, &'static str> {
    if data.len() != CLIENT_LEN && !(16..=40).contains(&data.len()) {
        return Err("COOKIE option neither 8 nor 16 to 40 octets");
    }
    let (client, server) = data.split_at(CLIENT_LEN);
    Ok(Presented {
        client: client.try_into().expect("8 octets"),
        server,
    })
}

/// The server cookie for `client` at `ip` made at `timestamp`.
pub(super) fn server_cookie(
    secret: &Secret,
    client: &[u8; CLIENT_LEN],
    ip: IpAddr,
    timestamp: u32,
) -> [u8; SERVER_LEN] {
    let mut cookie = [0u8; SERVER_LEN];
    cookie[0] = VERSION;
    cookie[4..8].copy_from_slice(&timestamp.to_be_bytes());
    let mut hasher = SipHasher24::new_with_key(secret);
    hasher.write(client);
    hasher.write(&cookie[..8]);
    match ip {
        IpAddr::V4(v4) => hasher.write(&v4.octets()),
        IpAddr::V6(v6) => hasher.write(&v6.octets()),
    }
    // RFC 9018 §4.4 takes the 64-bit result in the byte order SipHash's
    // reference code writes it: little-endian.
    cookie[8..].copy_from_slice(&hasher.finish().to_le_bytes());
    cookie
}

/// Whether `presented` carries a server cookie geolb (or a server sharing
/// its secret) gave this client at `ip`, made within the last hour (or up
/// to five minutes ahead of `now`).
pub(super) fn is_valid(secret: &Secret, presented: &Presented<'_>, ip: IpAddr, now: u32) -> bool {
    let Ok(server) = <&[u8; SERVER_LEN]>::try_from(presented.server) else {
        return false;
    };
    if server[0] != VERSION {
        return false;
    }
    let timestamp = u32::from_be_bytes([server[4], server[5], server[6], server[7]]);
    // Serial number arithmetic (RFC 1982), as RFC 9018 asks: the
    // timestamp wraps in 2106.
    let age = now.wrapping_sub(timestamp);
    let fresh = age <= MAX_AGE || timestamp.wrapping_sub(now) <= MAX_AHEAD;
    fresh && server_cookie(secret, &presented.client, ip, timestamp) == *server
}

/// The option data geolb answers with: the client cookie and a fresh
/// server cookie.
pub(super) fn answer(
    secret: &Secret,
    client: &[u8; CLIENT_LEN],
    ip: IpAddr,
    now: u32,
) -> [u8; CLIENT_LEN + SERVER_LEN] {
    let mut data = [0u8; CLIENT_LEN + SERVER_LEN];
    data[..CLIENT_LEN].copy_from_slice(client);
    data[CLIENT_LEN..].copy_from_slice(&server_cookie(secret, client, ip, now));
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 9018 Appendix A.1 and A.2: server cookies made with secret
    /// e5e973e5a6b2a43f48e7dc849e37bfcf for 198.51.100.100.
    #[test]
    fn rfc_9018_test_vector() {
        let secret: Secret = [
            0xe5, 0xe9, 0x73, 0xe5, 0xa6, 0xb2, 0xa4, 0x3f, 0x48, 0xe7, 0xdc, 0x84, 0x9e, 0x37,
            0xbf, 0xcf,
        ];
        let client = [0x24, 0x64, 0xc4, 0xab, 0xcf, 0x10, 0xc9, 0x57];
        let ip: IpAddr = "198.51.100.100".parse().unwrap();
        let cookie = server_cookie(&secret, &client, ip, 1_559_731_985);
        assert_eq!(
            cookie,
            [
                0x01, 0x00, 0x00, 0x00, 0x5c, 0xf7, 0x9f, 0x11, 0x1f, 0x81, 0x30, 0xc3, 0xee, 0xe2,
                0x94, 0x80
            ]
        );
        // A.2: the same client 40 minutes later, its cookie still valid.
        let presented = Presented {
            client,
            server: &cookie,
        };
        assert!(is_valid(&secret, &presented, ip, 1_559_734_385));
        assert_eq!(
            server_cookie(&secret, &client, ip, 1_559_734_385),
            [
                0x01, 0x00, 0x00, 0x00, 0x5c, 0xf7, 0xa8, 0x71, 0xd4, 0xa5, 0x64, 0xa1, 0x44, 0x2a,
                0xca, 0x77
            ]
        );
    }

    #[test]
    fn validity_window_and_binding() {
        let secret = [7u8; 16];
        let client = [1, 2, 3, 4, 5, 6, 7, 8];
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let now = 1_800_000_000;
        let check = |made: u32, at: IpAddr, secret: &Secret| {
            let server = server_cookie(&[7u8; 16], &client, ip, made);
            let presented = Presented {
                client,
                server: &server,
            };
            is_valid(secret, &presented, at, now)
        };
        assert!(check(now, ip, &secret));
        assert!(check(now - 3600, ip, &secret));
        assert!(!check(now - 3601, ip, &secret));
        assert!(check(now + 300, ip, &secret));
        assert!(!check(now + 301, ip, &secret));
        assert!(!check(now, "192.0.2.2".parse().unwrap(), &secret));
        assert!(!check(now, ip, &[8u8; 16]));
        // Other lengths and versions are not ours.
        let short = Presented {
            client,
            server: &[1; 8],
        };
        assert!(!is_valid(&secret, &short, ip, now));
    }

    #[test]
    fn option_lengths() {
        assert!(parse(&[0; 8]).unwrap().server.is_empty());
        for len in [0, 7, 9, 15, 41, 64] {
            assert!(parse(&vec![0; len]).is_err(), "{len}");
        }
        for len in [16, 24, 40] {
            assert_eq!(parse(&vec![0; len]).unwrap().server.len(), len - 8);
        }
    }
}
