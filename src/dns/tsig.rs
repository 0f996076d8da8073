//! TSIG (RFC 8945): checking signed requests and signing what answers
//! them, on the message bytes. The MAC covers the bytes as sent, so this
//! works on the wire form and never re-encodes a message; HMACs are
//! ring's. hickory-proto signs only with its DNSSEC features, which geolb
//! builds without.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use hickory_proto::rr::rdata::tsig::{TSIG, TsigAlgorithm, TsigError};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};
use ring::hmac;

use crate::config::{self, ConfigError, DnsConfig, TsigSecret};

/// The fudge geolb signs with and allows: RFC 8945 §10's recommended 300 s.
pub(crate) const FUDGE: u16 = 300;

/// A key of `[[dns.tsig]]`, ready to sign and verify.
pub(crate) struct Key {
    /// Lower case, absolute.
    pub name: Name,
    algorithm: TsigAlgorithm,
    hmac: hmac::Key,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({})", self.name)
    }
}

impl Key {
    pub(crate) fn new(name: Name, algorithm: config::TsigAlgorithm, secret: &[u8]) -> Key {
        let (algorithm, hmac_algorithm) = match algorithm {
            config::TsigAlgorithm::HmacSha1 => {
                (TsigAlgorithm::HmacSha1, hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY)
            }
            config::TsigAlgorithm::HmacSha256 => (TsigAlgorithm::HmacSha256, hmac::HMAC_SHA256),
            config::TsigAlgorithm::HmacSha384 => (TsigAlgorithm::HmacSha384, hmac::HMAC_SHA384),
            config::TsigAlgorithm::HmacSha512 => (TsigAlgorithm::HmacSha512, hmac::HMAC_SHA512),
        };
        Key {
            name: name.to_lowercase(),
            algorithm,
            hmac: hmac::Key::new(hmac_algorithm, secret),
        }
    }

    fn mac_len(&self) -> usize {
        self.hmac.algorithm().digest_algorithm().output_len()
    }
}

/// The keys of `[[dns.tsig]]`, `secret_file`s read; errors name the key.
pub(crate) fn keys(dns: &DnsConfig) -> Result<Vec<Arc<Key>>, Vec<ConfigError>> {
    let mut keys = Vec::new();
    let mut errors = Vec::new();
    for (i, k) in dns.tsig.iter().enumerate() {
        let secret = match &k.secret {
            TsigSecret::Bytes(bytes) => bytes.clone(),
            TsigSecret::File(path) => match config::read_tsig_secret(path) {
                Ok(bytes) => bytes,
                Err(e) => {
                    let shown = format!("{:?}", path.display().to_string());
                    errors.push(ConfigError::value(
                        format!("dns.tsig[{i}].secret_file"),
                        shown,
                        e,
                    ));
                    continue;
                }
            },
        };
        match Name::from_ascii(&k.name) {
            Ok(name) => keys.push(Arc::new(Key::new(name, k.algorithm, &secret))),
            Err(e) => errors.push(ConfigError::value(
                format!("dns.tsig[{i}].name"),
                format_args!("{:?}", k.name),
                format_args!("not a domain name: {e}"),
            )),
        }
    }
    if errors.is_empty() {
        Ok(keys)
    } else {
        Err(errors)
    }
}

/// What a message's TSIG says.
#[derive(Debug)]
pub(crate) enum Check {
    Unsigned,
    /// A TSIG RR that is not the last record (RFC 8945 §5.1): FORMERR.
    Misplaced,
    /// A key geolb does not have, or an algorithm other than the key's
    /// (§5.2.1): BADKEY.
    UnknownKey(Name, TSIG),
    /// §5.2.2: BADSIG, answered unsigned.
    BadSig(Name, TSIG),
    /// §5.2.3: BADTIME, answered signed.
    BadTime(Signed),
    Valid(Signed),
}

/// A request signed with one of our keys: what signing its answer takes.
#[derive(Debug, Clone)]
pub(crate) struct Signed {
    pub key: Arc<Key>,
    /// The request's MAC, which the answer's MAC covers.
    pub mac: Vec<u8>,
    /// The request's time signed.
    pub time: u64,
}

impl Signed {
    /// The bytes a TSIG RR of this key adds to a message, at most.
    pub(crate) fn size(&self) -> usize {
        // Owner, fixed fields, algorithm, time, fudge, MAC size, MAC, id,
        // error, other length and 6 bytes of other data.
        let name = |n: &Name| n.to_bytes().map_or(256, |b| b.len());
        name(&self.key.name)
            + 10
            + name(&self.key.algorithm.to_name())
            + 16
            + self.key.mac_len()
            + 6
    }
}

/// Seconds since the epoch, as TSIG counts time.
pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Where a message's TSIG RR starts, with the RR, if it has one.
fn find(message: &[u8]) -> Result<Option<(usize, Record)>, ()> {
    let count = |at: usize| {
        message
            .get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
            .ok_or(())
    };
    // Most queries have no additional record, or an OPT alone: no need to
    // walk them.
    if count(10)? == 0 {
        return Ok(None);
    }
    let (questions, records) = (count(4)?, count(6)? + count(8)? + count(10)?);
    let mut at = 12;
    for _ in 0..questions {
        at = skip_name(message, at)? + 4;
    }
    let mut found = None;
    for i in 0..records {
        let start = at;
        at = skip_name(message, at)?;
        let rtype = count(at)?;
        let len = count(at + 8)?;
        at += 10 + len;
        if at > message.len() {
            return Err(());
        }
        if rtype == usize::from(u16::from(RecordType::TSIG)) {
            // RFC 8945 §5.1: only as the last record.
            if i + 1 != records {
                return Err(());
            }
            found = Some(start);
        }
    }
    let Some(start) = found else {
        return Ok(None);
    };
    let mut decoder = BinDecoder::new(message);
    decoder.read_slice(start).map_err(|_| ())?;
    let record = Record::read(&mut decoder).map_err(|_| ())?;
    Ok(Some((start, record)))
}

/// The offset after the name at `at` (pointers not followed).
fn skip_name(message: &[u8], mut at: usize) -> Result<usize, ()> {
    loop {
        let len = *message.get(at).ok_or(())?;
        match len {
            0 => return Ok(at + 1),
            l if l & 0xc0 == 0xc0 => return Ok(at + 2),
            l if l & 0xc0 == 0 => at += 1 + usize::from(l),
            _ => return Err(()),
        }
    }
}

/// Checks `message`'s TSIG against `keys` at `now` (RFC 8945 §5.2: key,
/// then MAC, then time).
pub(crate) fn check(keys: &[Arc<Key>], message: &[u8], now: u64) -> Check {
    let (start, record) = match find(message) {
        Ok(Some(found)) => found,
        Ok(None) => return Check::Unsigned,
        Err(()) => return Check::Misplaced,
    };
    let RData::TSIG(tsig) = record.data else {
        return Check::Misplaced;
    };
    let key = keys
        .iter()
        .find(|k| k.name == record.name.to_lowercase() && k.algorithm == tsig.algorithm);
    let Some(key) = key else {
        return Check::UnknownKey(record.name, tsig);
    };
    let mut signed = message[..start].to_vec();
    // What was signed: the message before the TSIG RR was added, with its
    // original id.
    signed[..2].copy_from_slice(&tsig.oid.to_be_bytes());
    let additionals = u16::from_be_bytes([signed[10], signed[11]]).saturating_sub(1);
    signed[10..12].copy_from_slice(&additionals.to_be_bytes());
    if variables(&mut signed, &key.name, &tsig).is_err()
        || tsig.mac.len() != key.mac_len()
        || hmac::verify(&key.hmac, &signed, &tsig.mac).is_err()
    {
        return Check::BadSig(record.name, tsig);
    }
    let signed = Signed {
        key: key.clone(),
        mac: tsig.mac.clone(),
        time: tsig.time,
    };
    if now.abs_diff(tsig.time) > u64::from(tsig.fudge) {
        return Check::BadTime(signed);
    }
    Check::Valid(signed)
}

/// Appends the TSIG variables of §4.3.3 to `out`.
fn variables(out: &mut Vec<u8>, key: &Name, tsig: &TSIG) -> Result<(), ()> {
    // At the end: an encoder writes from its offset, not the Vec's end.
    let mut encoder = BinEncoder::with_offset(out, out.len() as u32);
    tsig.emit_tsig_for_mac(&mut encoder, key).map_err(|_| ())
}

/// How a message is signed.
pub(crate) enum Chain<'a> {
    /// A request: nothing before it.
    Request,
    /// The first (or only) answer to a request with this MAC.
    Answer(&'a [u8]),
    /// A later message of a multi-message answer (§5.3.1): the previous
    /// message's MAC; only the timers are covered.
    Next(&'a [u8]),
}

/// Signs the encoded message in `message` (its id the original id) with
/// `key` at `time`, appending the TSIG RR and counting it in ARCOUNT;
/// returns the MAC, which the next message of a chain covers.
pub(crate) fn sign(
    message: &mut Vec<u8>,
    key: &Key,
    chain: Chain<'_>,
    time: u64,
    error: Option<TsigError>,
    other: Vec<u8>,
) -> Vec<u8> {
    let oid = u16::from_be_bytes([message[0], message[1]]);
    let mut tsig = TSIG::new(
        key.algorithm.clone(),
        time,
        FUDGE,
        Vec::new(),
        oid,
        error,
        other,
    );
    let mut context = hmac::Context::with_key(&key.hmac);
    match chain {
        Chain::Request => {}
        Chain::Answer(mac) | Chain::Next(mac) => {
            context.update(&(mac.len() as u16).to_be_bytes());
            context.update(mac);
        }
    }
    context.update(message);
    let mut covered = Vec::new();
    if let Chain::Next(_) = chain {
        covered.extend_from_slice(&((time >> 32) as u16).to_be_bytes());
        covered.extend_from_slice(&(time as u32).to_be_bytes());
        covered.extend_from_slice(&FUDGE.to_be_bytes());
    } else {
        // Encoding a name and fixed fields into a Vec cannot fail.
        let _ = variables(&mut covered, &key.name, &tsig);
    }
    context.update(&covered);
    let mac = context.sign().as_ref().to_vec();
    tsig = tsig.set_mac(mac.clone());
    append(message, &key.name, tsig);
    mac
}

/// Appends a TSIG RR (class ANY, TTL 0, names uncompressed) to `message`,
/// counted in its ARCOUNT.
pub(crate) fn append(message: &mut Vec<u8>, key: &Name, tsig: TSIG) {
    let mut record = Record::from_rdata(key.clone(), 0, RData::TSIG(tsig));
    record.dns_class = DNSClass::ANY;
    let mut bytes = Vec::new();
    let mut encoder = BinEncoder::new(&mut bytes);
    if record.emit(&mut encoder).is_err() {
        return;
    }
    message.extend_from_slice(&bytes);
    let additionals = u16::from_be_bytes([message[10], message[11]]).wrapping_add(1);
    message[10..12].copy_from_slice(&additionals.to_be_bytes());
}

/// The Other Data of a BADTIME answer: our time, 48 bits (§5.2.3).
pub(crate) fn time_other(now: u64) -> Vec<u8> {
    let mut other = ((now >> 32) as u16).to_be_bytes().to_vec();
    other.extend_from_slice(&(now as u32).to_be_bytes());
    other
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Message, MessageType, OpCode, Query};

    fn key() -> Arc<Key> {
        Arc::new(Key::new(
            Name::from_ascii("xfr.key.").unwrap(),
            config::TsigAlgorithm::HmacSha256,
            b"0123456789abcdef0123456789abcdef",
        ))
    }

    fn query() -> Vec<u8> {
        let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(
            Name::from_ascii("mysite.com.").unwrap(),
            RecordType::AXFR,
        ));
        m.to_vec().unwrap()
    }

    #[test]
    fn a_signed_request_checks_and_tampering_does_not() {
        let k = key();
        let now = 1_800_000_000;
        let mut q = query();
        let mac = sign(&mut q, &k, Chain::Request, now, None, Vec::new());
        let Check::Valid(signed) = check(std::slice::from_ref(&k), &q, now + 10) else {
            panic!()
        };
        assert_eq!(signed.mac, mac);
        assert!(matches!(
            check(std::slice::from_ref(&k), &q, now + 301),
            Check::BadTime(_)
        ));
        assert!(matches!(check(&[], &q, now), Check::UnknownKey(..)));
        let mut bad = q.clone();
        bad[13] ^= 1;
        assert!(matches!(
            check(std::slice::from_ref(&k), &bad, now),
            Check::BadSig(..)
        ));
        // The id may change on the way (a forwarder): the original id is
        // what was signed.
        let mut forwarded = q.clone();
        forwarded[0] = 0x77;
        assert!(matches!(
            check(std::slice::from_ref(&k), &forwarded, now),
            Check::Valid(_)
        ));
        assert!(matches!(check(&[k], &query(), now), Check::Unsigned));
    }

    #[test]
    fn a_tsig_before_another_record_is_misplaced() {
        let k = key();
        let mut q = query();
        sign(&mut q, &k, Chain::Request, 1, None, Vec::new());
        let a = Record::from_rdata(
            Name::from_ascii("x.").unwrap(),
            1,
            RData::A(hickory_proto::rr::rdata::A::new(192, 0, 2, 1)),
        );
        let end = q.len() as u32;
        a.emit(&mut BinEncoder::with_offset(&mut q, end)).unwrap();
        let n = u16::from_be_bytes([q[10], q[11]]) + 1;
        q[10..12].copy_from_slice(&n.to_be_bytes());
        assert!(matches!(check(&[k], &q, 1), Check::Misplaced));
    }
}
