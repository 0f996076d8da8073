//! A request's `X-Request-Id`: one geolb makes (32 hex digits, kept as
//! bytes of its own until something needs it as a field value), or the
//! client's, kept.
//!
//! geolb's own HTTP/1 server and client write an id made here straight
//! into the request's and the answer's heads; only what takes a field
//! value (header rules, HTTP/2, hyper, the access log) has one made of it.
//! As a field value from the start, each id was cut from a shared chunk,
//! counted, copied for the answer and let go twice: about 180
//! instructions of a request's 15,500 (`benches/instructions.sh`).

use std::cell::RefCell;

use bytes::BytesMut;
use http::{HeaderName, HeaderValue};

/// Passed to backends and shown in the access log (as nginx's
/// `$http_x_request_id`).
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A request's id.
#[derive(Clone, Debug, PartialEq)]
pub enum RequestId {
    /// geolb's own: 32 lower-case hex digits.
    Made([u8; 32]),
    /// The client's, valid, as it came.
    Kept(HeaderValue),
}

impl RequestId {
    /// 32 lower-case hex digits, as nginx's `$request_id`: the thread's
    /// prefix, then its count scrambled by a bijection (so still unique),
    /// which makes consecutive ids look unrelated. An id, not a secret:
    /// fastrand is no cryptographic generator.
    pub fn made() -> RequestId {
        RequestId::Made(IDS.with_borrow_mut(|ids| {
            let mut id = [0u8; 32];
            id[..16].copy_from_slice(&ids.prefix_hex);
            id[16..].copy_from_slice(&hex(mix(ids.count.wrapping_add(ids.prefix))));
            ids.count = ids.count.wrapping_add(1);
            id
        }))
    }

    /// The client's `value`, found valid.
    pub fn kept(value: HeaderValue) -> RequestId {
        RequestId::Kept(unindexed(value))
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            RequestId::Made(id) => id,
            RequestId::Kept(v) => v.as_bytes(),
        }
    }

    /// The id as a field value, [`unindexed`]. A made one is cut from the
    /// thread's chunk of ids: one allocation (shared, counted) serves
    /// many, and a clone of it is no promotion.
    pub fn value(&self) -> HeaderValue {
        match self {
            RequestId::Made(id) => {
                let bytes = IDS.with_borrow_mut(|ids| {
                    crate::arena::cut(&mut ids.arena, ARENA, id.len(), |a| a.extend_from_slice(id))
                });
                unindexed(hex_value(bytes))
            }
            RequestId::Kept(v) => v.clone(),
        }
    }
}

/// Hex digits as a field value, not checked one by one (4 instructions a
/// byte): they are visible ASCII, which any field value may hold. The
/// call is `unsafe` only as a warning against bytes that could split a
/// message (see `upstream::parsed_value`); a debug build still checks.
#[allow(unsafe_code)]
fn hex_value(digits: bytes::Bytes) -> HeaderValue {
    debug_assert!(digits.iter().all(u8::is_ascii_hexdigit));
    // SAFETY: hex digits only, made by `RequestId::made`.
    unsafe { HeaderValue::from_maybe_shared_unchecked(digits) }
}

/// An id, which no other message repeats, marked for HTTP/2's header
/// compression (HPACK) to send as a literal that is never indexed. Put
/// into the connection's table, each would push out the fields that do
/// repeat (`server`, `content-type`, ...), and every response would be
/// encoded afresh: 6,905 instructions a response before, measured with
/// `CLIENT=h2 benches/instructions.sh`. The bytes are the same.
fn unindexed(mut id: HeaderValue) -> HeaderValue {
    id.set_sensitive(true);
    id
}

/// A thread's id maker.
struct Ids {
    /// Random: two threads share one with odds of 2^-64.
    prefix: u64,
    /// `prefix` in hex digits, written once rather than for each id.
    prefix_hex: [u8; 16],
    /// Ids made so far: they never repeat within a thread.
    count: u64,
    /// Field values of ids are cut from this (see [`RequestId::value`]).
    arena: BytesMut,
}

/// Bytes of ids' field values per allocation: 64 ids.
const ARENA: usize = 64 * 32;

thread_local! {
    static IDS: RefCell<Ids> = RefCell::new({
        let prefix = fastrand::u64(..);
        let prefix_hex = hex(prefix);
        Ids {
            prefix,
            prefix_hex,
            count: 0,
            arena: BytesMut::new(),
        }
    });
}

/// splitmix64's finaliser: a bijection on u64.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `n` as 16 lower-case hex digits, the high one first.
fn hex(n: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&hex_word((n >> 32) as u32));
    out[8..].copy_from_slice(&hex_word(n as u32));
    out
}

/// `x` as 8 hex digits, all at once: each nibble spread to a byte of its
/// own, then made a digit (a byte at a time, the id's 16 digits cost 58
/// more instructions a request, `benches/instructions.sh`).
fn hex_word(x: u32) -> [u8; 8] {
    let x = u64::from(x);
    let x = (x | (x << 16)) & 0x0000_ffff_0000_ffff;
    let x = (x | (x << 8)) & 0x00ff_00ff_00ff_00ff;
    let x = (x | (x << 4)) & 0x0f0f_0f0f_0f0f_0f0f;
    // 1 in each byte from 10 up: those become `a` to `f`, 39 past the
    // digit `0` + 10 would give. No byte carries into the next.
    let letters = ((x + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    (x + 0x3030_3030_3030_3030 + letters * 39).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_writes_the_high_digit_first() {
        assert_eq!(&hex(0x0123_4567_89ab_cdef), b"0123456789abcdef");
        assert_eq!(&hex(u64::MAX), b"ffffffffffffffff");
        assert_eq!(&hex(0), b"0000000000000000");
        let mut n = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..10_000 {
            assert_eq!(hex(n).as_slice(), format!("{n:016x}").as_bytes());
            n = mix(n);
        }
    }

    #[test]
    fn made_ids_are_32_hex_digits_differ_and_give_the_same_bytes_as_values() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let id = RequestId::made();
            let bytes = id.as_bytes().to_vec();
            assert_eq!(bytes.len(), 32);
            assert!(
                bytes
                    .iter()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
            let value = id.value();
            assert_eq!(value.as_bytes(), &bytes[..]);
            assert!(value.is_sensitive(), "never indexed by HPACK");
            assert!(seen.insert(bytes));
        }
        let kept = RequestId::kept(HeaderValue::from_static("req-42"));
        assert_eq!(kept.as_bytes(), b"req-42");
        assert!(kept.value().is_sensitive());
    }
}
