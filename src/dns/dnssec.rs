//! DNSSEC online signing (RFC 4033–4035) of a zone with `dnssec`: its keys
//! read from their files, the DNSKEY, CDS and CDNSKEY RRsets at its apex,
//! RRSIGs made while answering and cached, and the NSEC records of compact
//! denial of existence (RFC 9824).
//!
//! Signing happens when a query has DO = 1 (RFC 4035 §3.1.1), in
//! `answer::build`; the fast path leaves those queries for signed zones to
//! it. A signature is cached by what it covers (owner, type, TTL, data), so
//! a static RRset is signed once per validity window and a geo answer once
//! per set of addresses; it is made anew when less than `refresh` of its
//! validity is left, which also keeps signatures fresh without a reload.

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::dnssec::crypto::{EcdsaSigningKey, Ed25519SigningKey};
use hickory_proto::dnssec::rdata::{CDNSKEY, CDS, DNSKEY, DNSSECRData, NSEC, RRSIG, SigInput};
use hickory_proto::dnssec::{Algorithm, DigestType, PublicKeyBuf, SigningKey, TBS};
use hickory_proto::rr::{DNSClass, Label, Name, RData, Record, RecordType, SerialNumber};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair};
use rustls::pki_types::PrivatePkcs8KeyDer;
use rustls::pki_types::pem::PemObject;

use crate::config::{DnssecConfig, KeyRole, KeyState};
use crate::metrics::DNS_DNSSEC_SIGNATURES;

/// RFC 9824 §3.2: the meta-type NXNAME in the NSEC of a name that does
/// not exist.
pub(crate) const NXNAME: RecordType = RecordType::Unknown(128);
/// Signatures start this far in the past, for validators whose clocks lag.
const BACKDATE: u64 = 3600;
/// Cached signatures per zone; past it the cache starts over (random names
/// under a wildcard would otherwise grow it without end).
const MAX_CACHED: usize = 50_000;

/// One signing key of a zone.
struct Key {
    tag: u16,
    algorithm: Algorithm,
    signing: Arc<dyn SigningKey>,
}

/// What a signed zone signs with and how, and the signatures it made.
pub(crate) struct Signer {
    origin: Name,
    /// Sign the DNSKEY, CDS and CDNSKEY RRsets: active KSKs and CSKs.
    key_signing: Vec<Key>,
    /// Sign every other RRset: active ZSKs and CSKs.
    zone_signing: Vec<Key>,
    validity: u64,
    refresh: u64,
    /// The DS records to give the parent, one line each.
    ds: Vec<String>,
    cache: Mutex<HashMap<Vec<u8>, Cached>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("origin", &self.origin)
            .field("ds", &self.ds)
            .finish_non_exhaustive()
    }
}

struct Cached {
    expiration: u64,
    rrsigs: Vec<Record>,
}

/// A signed zone's signer and the RRsets its keys put at the apex.
pub(crate) struct Keys {
    pub signer: Signer,
    /// DNSKEY, CDS and CDNSKEY, each one RRset (CDS and CDNSKEY empty when
    /// no KSK or CSK is being published or is active).
    pub apex: Vec<(RecordType, Vec<Record>)>,
}

/// Reads the keys of `config` for the zone `origin`; records at the apex
/// get `ttl`. Errors are `(index into keys, message)`.
pub(crate) fn load(
    config: &DnssecConfig,
    origin: &Name,
    ttl: u32,
) -> Result<Keys, Vec<(usize, String)>> {
    let mut errors = Vec::new();
    let mut signer = Signer {
        origin: origin.clone(),
        key_signing: Vec::new(),
        zone_signing: Vec::new(),
        validity: config.validity.as_secs(),
        refresh: config.refresh.as_secs(),
        ds: Vec::new(),
        cache: Mutex::new(HashMap::new()),
    };
    let (mut dnskeys, mut cds, mut cdnskeys) = (Vec::new(), Vec::new(), Vec::new());
    let record = |data: DNSSECRData| Record::from_rdata(origin.clone(), ttl, RData::DNSSEC(data));
    for (i, key) in config.keys.iter().enumerate() {
        let (signing, public) = match read_key(&key.file) {
            Ok(k) => k,
            Err(e) => {
                errors.push((i, e));
                continue;
            }
        };
        let sep = key.role != KeyRole::Zsk;
        let dnskey = DNSKEY::new(true, sep, false, public.clone());
        let algorithm = signing.algorithm();
        let tag = match dnskey.calculate_key_tag() {
            Ok(tag) => tag,
            Err(e) => {
                errors.push((i, format!("cannot compute the key tag: {e}")));
                continue;
            }
        };
        dnskeys.push(record(DNSSECRData::DNSKEY(dnskey.clone())));
        // RFC 7344 §4: CDS and CDNSKEY say which DS the parent should
        // have: the keys coming in and in use, not those going out.
        if sep && key.state != KeyState::Retire {
            match dnskey.to_digest(origin, DigestType::SHA256) {
                Ok(digest) => {
                    let hex = digest
                        .as_ref()
                        .iter()
                        .map(|b| format!("{b:02X}"))
                        .collect::<String>();
                    signer.ds.push(format!(
                        "{origin} IN DS {tag} {} 2 {hex}",
                        u8::from(algorithm)
                    ));
                    cds.push(record(DNSSECRData::CDS(CDS::new(
                        tag,
                        Some(algorithm),
                        DigestType::SHA256,
                        digest.as_ref().to_vec(),
                    ))));
                    cdnskeys.push(record(DNSSECRData::CDNSKEY(CDNSKEY::new(
                        true,
                        true,
                        false,
                        Some(algorithm),
                        public.clone().into_inner(),
                    ))));
                }
                Err(e) => errors.push((i, format!("cannot compute the DS digest: {e}"))),
            }
        }
        if key.state == KeyState::Active {
            let to = match key.role {
                KeyRole::Ksk => &mut signer.key_signing,
                KeyRole::Zsk => &mut signer.zone_signing,
                KeyRole::Csk => {
                    signer.key_signing.push(Key {
                        tag,
                        algorithm,
                        signing: signing.clone(),
                    });
                    &mut signer.zone_signing
                }
            };
            to.push(Key {
                tag,
                algorithm,
                signing,
            });
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Keys {
        signer,
        apex: vec![
            (RecordType::DNSKEY, dnskeys),
            (RecordType::CDS, cds),
            (RecordType::CDNSKEY, cdnskeys),
        ],
    })
}

/// A PKCS#8 PEM private key, P-256 or Ed25519, and its public key.
fn read_key(path: &Path) -> Result<(Arc<dyn SigningKey>, PublicKeyBuf), String> {
    const MAKE: &str = "make one with `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256` \
         or `openssl genpkey -algorithm ed25519`";
    let pem = fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let der = PrivatePkcs8KeyDer::from_pem_slice(&pem).map_err(|e| {
        format!(
            "{}: not a PKCS#8 PEM private key (-----BEGIN PRIVATE KEY-----): {e:?}; {MAKE}",
            path.display()
        )
    })?;
    let bytes = der.secret_pkcs8_der();
    // OpenSSL writes Ed25519 keys without the public key (PKCS#8 v1),
    // which ring's checked constructor refuses.
    let signing: Arc<dyn SigningKey> = if let Ok(pair) =
        Ed25519KeyPair::from_pkcs8_maybe_unchecked(bytes)
    {
        Arc::new(Ed25519SigningKey::from_ed25519(pair))
    } else if let Ok(pair) = EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        bytes,
        &SystemRandom::new(),
    ) {
        Arc::new(EcdsaSigningKey::from_ecdsa(
            pair,
            Algorithm::ECDSAP256SHA256,
        ))
    } else {
        return Err(format!(
            "{}: neither an ECDSA P-256 nor an Ed25519 key (algorithms 13 and 15 are supported); {MAKE}",
            path.display()
        ));
    };
    let public = signing
        .to_public_key()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((signing, public))
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

impl Signer {
    /// The DS records for the parent zone, as zone-file lines.
    pub(crate) fn ds(&self) -> &[String] {
        &self.ds
    }

    /// The RRSIGs of `rrset` (records of one owner and type, not empty) at
    /// `now`, from the cache while they have more than `refresh` left.
    pub(crate) fn sign(&self, rrset: &[Record], now: u64) -> Vec<Record> {
        let Some(first) = rrset.first() else {
            return Vec::new();
        };
        let key = cache_key(rrset);
        if let Some(cached) = crate::locked(&self.cache).get(&key)
            && cached.expiration.saturating_sub(now) > self.refresh
        {
            return owned(&cached.rrsigs, &first.name);
        }
        let (expiration, rrsigs) = self.sign_now(rrset, now);
        let mut cache = crate::locked(&self.cache);
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        let out = rrsigs.clone();
        cache.insert(key, Cached { expiration, rrsigs });
        out
    }

    fn sign_now(&self, rrset: &[Record], now: u64) -> (u64, Vec<Record>) {
        let first = &rrset[0];
        let rtype = first.record_type();
        let keys = match rtype {
            RecordType::DNSKEY | RecordType::CDS | RecordType::CDNSKEY => &self.key_signing,
            _ => &self.zone_signing,
        };
        // RRSIG times are 32-bit serial numbers (RFC 4034 §3.1.5): modulo 2^32.
        let expiration = now + self.validity;
        let mut rrsigs = Vec::with_capacity(keys.len());
        for key in keys {
            let input = SigInput {
                type_covered: rtype,
                algorithm: key.algorithm,
                // Wildcard answers are signed as the name asked for, as an
                // online signer may (RFC 9824 §4): no wildcard proof needed.
                num_labels: first.name.num_labels(),
                original_ttl: first.ttl,
                sig_expiration: SerialNumber::new(expiration as u32),
                sig_inception: SerialNumber::new(now.saturating_sub(BACKDATE) as u32),
                key_tag: key.tag,
                signer_name: self.origin.clone(),
            };
            let signature = TBS::from_input(&first.name, DNSClass::IN, &input, rrset.iter())
                .map_err(|e| e.to_string())
                .and_then(|tbs| key.signing.sign(&tbs).map_err(|e| e.to_string()));
            match signature {
                Ok(sig) => rrsigs.push(Record::from_rdata(
                    first.name.clone(),
                    first.ttl,
                    RData::DNSSEC(DNSSECRData::RRSIG(RRSIG::from_sig(input, sig))),
                )),
                // The answer goes out unsigned; a validator calls it bogus.
                Err(error) => crate::log_limited!(warn, %error, "cannot sign an RRset"),
            }
        }
        metrics::counter!(DNS_DNSSEC_SIGNATURES, "zone" => self.origin.to_ascii())
            .increment(rrsigs.len() as u64);
        (expiration, rrsigs)
    }

    /// The NSEC of compact denial (RFC 9824) at `owner`: next name
    /// `\000.owner`, and `types` with RRSIG and NSEC. None when `owner` is
    /// too long to have a child.
    pub(crate) fn denial(
        &self,
        owner: &Name,
        ttl: u32,
        types: impl IntoIterator<Item = RecordType>,
    ) -> Option<Record> {
        let zero = Label::from_raw_bytes(&[0]).ok()?;
        let next = owner.prepend_label(zero).ok()?;
        let nsec = NSEC::new_cover_self(next, types);
        Some(Record::from_rdata(
            owner.clone(),
            ttl,
            RData::DNSSEC(DNSSECRData::NSEC(nsec)),
        ))
    }
}

/// `rrsigs` with `owner`'s spelling (a cache hit may come from a query
/// spelled otherwise).
fn owned(rrsigs: &[Record], owner: &Name) -> Vec<Record> {
    rrsigs
        .iter()
        .map(|r| {
            let mut r = r.clone();
            if !r.name.eq_case(owner) {
                r.name = owner.clone();
            }
            r
        })
        .collect()
}

/// What a signature covers: owner (lower case), type, TTL, and the data in
/// canonical order, so a geo answer's addresses in another order hit too.
fn cache_key(rrset: &[Record]) -> Vec<u8> {
    let first = &rrset[0];
    let mut key = first.name.to_lowercase().to_ascii().into_bytes();
    key.extend_from_slice(&u16::from(first.record_type()).to_be_bytes());
    key.extend_from_slice(&first.ttl.to_be_bytes());
    let mut datas: Vec<Vec<u8>> = rrset
        .iter()
        .map(|r| {
            let mut bytes = Vec::new();
            let mut encoder = BinEncoder::new(&mut bytes);
            encoder.set_canonical_form(true);
            // An RData that cannot be encoded cannot be sent either.
            let _ = r.data.emit(&mut encoder);
            bytes
        })
        .collect();
    datas.sort();
    for data in datas {
        key.extend_from_slice(&(data.len() as u16).to_be_bytes());
        key.extend_from_slice(&data);
    }
    key
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::path::PathBuf;
    use std::process::Command;

    use hickory_proto::dnssec::Verifier;
    use hickory_proto::rr::rdata::A;

    use super::*;
    use crate::config::DnssecKeyConfig;

    /// A key made by `openssl genpkey`, as users make theirs.
    fn openssl_key(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
        let path = dir.join(name);
        let status = Command::new("openssl")
            .arg("genpkey")
            .args(args)
            .arg("-out")
            .arg(&path)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl");
        assert!(status.success());
        path
    }

    fn config(keys: &[(&Path, KeyRole, KeyState)]) -> DnssecConfig {
        DnssecConfig {
            keys: keys
                .iter()
                .map(|(file, role, state)| DnssecKeyConfig {
                    file: file.to_path_buf(),
                    role: *role,
                    state: *state,
                })
                .collect(),
            validity: Duration::from_secs(14 * 86400),
            refresh: Duration::from_secs(7 * 86400),
        }
    }

    fn a_set(owner: &Name, addrs: &[[u8; 4]]) -> Vec<Record> {
        addrs
            .iter()
            .map(|a| Record::from_rdata(owner.clone(), 30, RData::A(A(Ipv4Addr::from(*a)))))
            .collect()
    }

    fn rrsig(record: &Record) -> &RRSIG {
        match &record.data {
            RData::DNSSEC(DNSSECRData::RRSIG(sig)) => sig,
            other => panic!("not an RRSIG: {other:?}"),
        }
    }

    fn dnskeys(keys: &Keys) -> Vec<DNSKEY> {
        keys.apex[0]
            .1
            .iter()
            .map(|r| match &r.data {
                RData::DNSSEC(DNSSECRData::DNSKEY(k)) => k.clone(),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    /// Each RRSIG verifies, with hickory-proto's verifier, against the
    /// DNSKEY its tag names; changed data does not.
    fn assert_verifies(keys: &Keys, owner: &Name, rrset: &[Record], rrsigs: &[Record]) {
        assert!(!rrsigs.is_empty());
        for r in rrsigs {
            let sig = rrsig(r);
            let key = dnskeys(keys)
                .into_iter()
                .find(|k| k.calculate_key_tag().unwrap() == sig.input().key_tag)
                .expect("the signing key is published");
            key.verify_rrsig(owner, DNSClass::IN, sig, rrset.iter())
                .expect("verifies");
            let forged = a_set(owner, &[[192, 0, 2, 66]]);
            assert!(
                key.verify_rrsig(owner, DNSClass::IN, sig, forged.iter())
                    .is_err()
            );
        }
    }

    #[test]
    fn p256_and_ed25519_signatures_verify_and_are_cached() {
        let dir = tempfile::tempdir().unwrap();
        let p256 = openssl_key(
            dir.path(),
            "p256.pem",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        );
        let ed = openssl_key(dir.path(), "ed.pem", &["-algorithm", "ed25519"]);
        let origin = Name::from_ascii("mysite.com.").unwrap();
        let owner = Name::from_ascii("api.mysite.com.").unwrap();
        for (file, algorithm) in [(&p256, 13), (&ed, 15)] {
            let keys = load(
                &config(&[(file, KeyRole::Csk, KeyState::Active)]),
                &origin,
                300,
            )
            .unwrap();
            let ds = keys.signer.ds();
            assert_eq!(ds.len(), 1);
            assert!(
                ds[0].starts_with("mysite.com. IN DS ")
                    && ds[0].contains(&format!(" {algorithm} 2 ")),
                "{ds:?}"
            );
            let now = unix_now();
            let rrset = a_set(&owner, &[[192, 0, 2, 1], [192, 0, 2, 2]]);
            let first = keys.signer.sign(&rrset, now);
            assert_verifies(&keys, &owner, &rrset, &first);
            let input = rrsig(&first[0]).input();
            assert_eq!(input.sig_inception.get() as u64, now - BACKDATE);
            assert_eq!(input.sig_expiration.get() as u64, now + 14 * 86400);
            assert_eq!(input.num_labels, 3);
            // The same addresses in another order: the cached signature
            // (ECDSA signatures differ each time they are made).
            let mut reversed = rrset.clone();
            reversed.reverse();
            assert_eq!(keys.signer.sign(&reversed, now + 60), first);
            // Less than refresh left: made anew.
            let later = now + 7 * 86400 + 1;
            let renewed = keys.signer.sign(&rrset, later);
            assert_eq!(
                rrsig(&renewed[0]).input().sig_expiration.get() as u64,
                later + 14 * 86400
            );
            assert_verifies(&keys, &owner, &rrset, &renewed);
            // The DNSKEY set is signed (by the CSK) and verifies too.
            let dnskey_set = &keys.apex[0].1;
            let sigs = keys.signer.sign(dnskey_set, now);
            for r in &sigs {
                dnskeys(&keys)[0]
                    .verify_rrsig(&origin, DNSClass::IN, rrsig(r), dnskey_set.iter())
                    .unwrap();
            }
        }
    }

    #[test]
    fn roles_and_states_choose_who_signs_and_what_is_published() {
        let dir = tempfile::tempdir().unwrap();
        let gen_ed = |name| openssl_key(dir.path(), name, &["-algorithm", "ed25519"]);
        let (ksk, zsk, next, old) = (gen_ed("k"), gen_ed("z"), gen_ed("n"), gen_ed("o"));
        let origin = Name::from_ascii("mysite.com.").unwrap();
        let keys = load(
            &config(&[
                (&ksk, KeyRole::Ksk, KeyState::Active),
                (&zsk, KeyRole::Zsk, KeyState::Active),
                (&next, KeyRole::Ksk, KeyState::Publish),
                (&old, KeyRole::Ksk, KeyState::Retire),
            ]),
            &origin,
            300,
        )
        .unwrap();
        let published = dnskeys(&keys);
        assert_eq!(published.len(), 4, "every state is published");
        let flags: Vec<u16> = published.iter().map(|k| k.flags()).collect();
        assert_eq!(flags, [257, 256, 257, 257]);
        let tag = |i: usize| published[i].calculate_key_tag().unwrap();
        // CDS: the active and the incoming KSK, not the retiring one.
        assert_eq!(keys.apex[1].1.len(), 2);
        assert_eq!(keys.signer.ds().len(), 2);
        let now = unix_now();
        let owner = Name::from_ascii("www.mysite.com.").unwrap();
        let data = a_set(&owner, &[[192, 0, 2, 9]]);
        let tags = |sigs: Vec<Record>| -> Vec<u16> {
            sigs.iter().map(|r| rrsig(r).input().key_tag).collect()
        };
        assert_eq!(tags(keys.signer.sign(&data, now)), [tag(1)]);
        assert_eq!(tags(keys.signer.sign(&keys.apex[0].1, now)), [tag(0)]);
        assert_eq!(tags(keys.signer.sign(&keys.apex[1].1, now)), [tag(0)]);
    }

    #[test]
    fn a_file_that_is_not_a_usable_key_names_itself() {
        let dir = tempfile::tempdir().unwrap();
        let rsa = openssl_key(
            dir.path(),
            "rsa.pem",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"],
        );
        let text = dir.path().join("text.pem");
        fs::write(&text, "not a key").unwrap();
        let missing = dir.path().join("missing.pem");
        let origin = Name::from_ascii("mysite.com.").unwrap();
        let errors = load(
            &config(&[
                (&rsa, KeyRole::Csk, KeyState::Active),
                (&text, KeyRole::Csk, KeyState::Active),
                (&missing, KeyRole::Csk, KeyState::Active),
            ]),
            &origin,
            300,
        )
        .err()
        .unwrap();
        let indexes: Vec<usize> = errors.iter().map(|(i, _)| *i).collect();
        assert_eq!(indexes, [0, 1, 2]);
        assert!(
            errors[0]
                .1
                .contains("neither an ECDSA P-256 nor an Ed25519"),
            "{errors:?}"
        );
        assert!(errors[1].1.contains("PKCS#8"), "{errors:?}");
        assert!(errors[2].1.contains("cannot read"), "{errors:?}");
    }

    #[test]
    fn compact_denial_points_just_past_the_name() {
        let dir = tempfile::tempdir().unwrap();
        let ed = openssl_key(dir.path(), "ed.pem", &["-algorithm", "ed25519"]);
        let origin = Name::from_ascii("mysite.com.").unwrap();
        let keys = load(
            &config(&[(&ed, KeyRole::Csk, KeyState::Active)]),
            &origin,
            300,
        )
        .unwrap();
        let owner = Name::from_ascii("nothing.mysite.com.").unwrap();
        let nsec = keys.signer.denial(&owner, 60, [NXNAME]).unwrap();
        let RData::DNSSEC(DNSSECRData::NSEC(n)) = &nsec.data else {
            panic!("{nsec:?}");
        };
        assert_eq!(n.next_domain_name().to_ascii(), "\\000.nothing.mysite.com.");
        let types: Vec<RecordType> = n.type_bit_maps().collect();
        assert_eq!(types, [RecordType::RRSIG, RecordType::NSEC, NXNAME]);
        assert_eq!(nsec.ttl, 60);
        // A name with no room for one more label has no NSEC.
        // 3 × 64 + 50 + 12 = 254 octets: one more label of any length is too much.
        let labels = [63, 63, 63, 49].map(|n| "a".repeat(n)).join(".");
        let long = Name::from_ascii(format!("{labels}.mysite.com.")).unwrap();
        assert!(keys.signer.denial(&long, 60, [NXNAME]).is_none());
    }
}
