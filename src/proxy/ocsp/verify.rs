//! The pure half of OCSP stapling: the request for one certificate, and
//! the checks an answer must pass before it is stapled (RFC 6960): status
//! "good", for this certificate (CertID), current, and signed by the
//! issuer or by a responder the issuer delegated to (id-kp-OCSPSigning).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use der::asn1::{Null, ObjectIdentifier, OctetString};
use der::{Decode, Encode};
use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use spki::AlgorithmIdentifierOwned;
use x509_cert::Certificate;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{AuthorityInfoAccessSyntax, ExtendedKeyUsage};
use x509_cert::serial_number::SerialNumber;
use x509_ocsp::{
    BasicOcspResponse, CertId, CertStatus, OcspRequest, OcspResponse, OcspResponseStatus, Request,
    TbsRequest,
};

const SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
const SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const OCSP_BASIC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.1");
const AIA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.1.1");
const AD_OCSP: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1");
const EXT_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");
const KP_OCSP_SIGNING: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.9");

/// How far a responder's clock may run ahead of ours (thisUpdate in the
/// future), as browsers allow.
const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);
/// How long a response without nextUpdate counts as current: RFC 6960
/// leaves it open ("newer information is always available"); a day is
/// what most clients accept for such a staple.
pub const WITHOUT_NEXT_UPDATE: Duration = Duration::from_secs(24 * 3600);

/// Why an answer was not stapled (logged, counted in
/// `geolb_tls_ocsp_fetch_errors_total`).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Rejected {
    #[error("not a DER OCSP response: {0}")]
    Malformed(String),
    #[error("the responder answered {0:?}")]
    Unsuccessful(OcspResponseStatus),
    #[error("not a basic OCSP response")]
    NotBasic,
    #[error("no answer for this certificate in it (CertID differs)")]
    OtherCertificate,
    #[error("the certificate is revoked")]
    Revoked,
    #[error("the responder does not know the certificate (status unknown)")]
    Unknown,
    #[error("its thisUpdate is in the future")]
    NotYetValid,
    #[error("it expired (nextUpdate passed)")]
    Expired,
    #[error("its signature is not the issuer's nor a delegated responder's")]
    BadSignature,
}

/// The certificate to staple for, the CA that issued it, and what asks
/// about it.
#[derive(Debug)]
pub struct Subject {
    issuer: Certificate,
    cert_id: CertId,
}

/// A response that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct Good {
    pub der: Vec<u8>,
    pub this_update: SystemTime,
    /// nextUpdate, or thisUpdate + [`WITHOUT_NEXT_UPDATE`] without one.
    pub next_update: SystemTime,
}

impl Subject {
    /// `leaf` and `issuer` as DER; `None` when either does not parse.
    pub fn new(leaf: &[u8], issuer: &[u8]) -> Result<Subject, String> {
        let leaf = Certificate::from_der(leaf).map_err(|e| format!("the certificate: {e}"))?;
        let issuer = Certificate::from_der(issuer).map_err(|e| format!("its issuer: {e}"))?;
        if leaf.tbs_certificate.issuer != issuer.tbs_certificate.subject {
            return Err("the next certificate in the chain did not issue it".into());
        }
        let serial = leaf.tbs_certificate.serial_number.clone();
        let cert_id = cert_id(&issuer, serial, SHA1).map_err(|e| e.to_string())?;
        Ok(Subject { issuer, cert_id })
    }

    /// The DER OCSP request (SHA-1 CertID, as RFC 5019 asks of clients
    /// talking to high-volume responders; no nonce, so a responder may
    /// answer from its cache).
    pub fn request(&self) -> Vec<u8> {
        let request = OcspRequest {
            tbs_request: TbsRequest {
                request_list: vec![Request {
                    req_cert: self.cert_id.clone(),
                    single_request_extensions: None,
                }],
                ..TbsRequest::default()
            },
            optional_signature: None,
        };
        request.to_der().unwrap_or_default()
    }

    /// `der` if it may be stapled at `now`.
    pub fn check(&self, der: &[u8], now: SystemTime) -> Result<Good, Rejected> {
        let malformed = |e: der::Error| Rejected::Malformed(e.to_string());
        let response = OcspResponse::from_der(der).map_err(malformed)?;
        if response.response_status != OcspResponseStatus::Successful {
            return Err(Rejected::Unsuccessful(response.response_status));
        }
        let bytes = response.response_bytes.ok_or(Rejected::NotBasic)?;
        if bytes.response_type != OCSP_BASIC {
            return Err(Rejected::NotBasic);
        }
        let basic = BasicOcspResponse::from_der(bytes.response.as_bytes()).map_err(malformed)?;
        self.check_signature(&basic, now)?;
        let single = basic
            .tbs_response_data
            .responses
            .iter()
            .find(|r| self.is_ours(&r.cert_id))
            .ok_or(Rejected::OtherCertificate)?;
        match single.cert_status {
            CertStatus::Good(_) => {}
            CertStatus::Revoked(_) => return Err(Rejected::Revoked),
            CertStatus::Unknown(_) => return Err(Rejected::Unknown),
        }
        let this_update = UNIX_EPOCH + single.this_update.0.to_unix_duration();
        let next_update = match &single.next_update {
            Some(t) => UNIX_EPOCH + t.0.to_unix_duration(),
            None => this_update + WITHOUT_NEXT_UPDATE,
        };
        if this_update > now + CLOCK_SKEW {
            return Err(Rejected::NotYetValid);
        }
        if next_update <= now {
            return Err(Rejected::Expired);
        }
        Ok(Good {
            der: der.to_vec(),
            this_update,
            next_update,
        })
    }

    /// Responders may hash with another algorithm than the request's:
    /// compare by recomputing with theirs.
    fn is_ours(&self, id: &CertId) -> bool {
        if id.serial_number != self.cert_id.serial_number {
            return false;
        }
        match id.hash_algorithm.oid {
            SHA1 => *id == self.cert_id,
            oid => {
                cert_id(&self.issuer, id.serial_number.clone(), oid).is_ok_and(|mine| mine == *id)
            }
        }
    }

    /// Signed by the issuer itself, or by a certificate in the response
    /// that the issuer signed for OCSP signing and that is current.
    fn check_signature(&self, basic: &BasicOcspResponse, now: SystemTime) -> Result<(), Rejected> {
        let tbs = basic
            .tbs_response_data
            .to_der()
            .map_err(|e| Rejected::Malformed(e.to_string()))?;
        let signature = basic.signature.raw_bytes();
        let alg = &basic.signature_algorithm;
        if verify(&self.issuer, alg, &tbs, signature) {
            return Ok(());
        }
        let delegated = basic.certs.iter().flatten().any(|responder| {
            self.delegated(responder, now) && verify(responder, alg, &tbs, signature)
        });
        if delegated {
            Ok(())
        } else {
            Err(Rejected::BadSignature)
        }
    }

    fn delegated(&self, responder: &Certificate, now: SystemTime) -> bool {
        let tbs = &responder.tbs_certificate;
        if tbs.issuer != self.issuer.tbs_certificate.subject {
            return false;
        }
        let Ok(signed) = tbs.to_der() else {
            return false;
        };
        let signature = responder.signature.raw_bytes();
        if !verify(
            &self.issuer,
            &responder.signature_algorithm,
            &signed,
            signature,
        ) {
            return false;
        }
        let since = UNIX_EPOCH + tbs.validity.not_before.to_unix_duration();
        let until = UNIX_EPOCH + tbs.validity.not_after.to_unix_duration();
        if now < since || now > until {
            return false;
        }
        tbs.extensions.iter().flatten().any(|e| {
            e.extn_id == EXT_KEY_USAGE
                && ExtendedKeyUsage::from_der(e.extn_value.as_bytes())
                    .is_ok_and(|eku| eku.0.contains(&KP_OCSP_SIGNING))
        })
    }
}

/// The first http:// OCSP responder in `leaf`'s Authority Information
/// Access, if any.
pub fn responder_url(leaf: &[u8]) -> Option<String> {
    let leaf = Certificate::from_der(leaf).ok()?;
    let aia = leaf
        .tbs_certificate
        .extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id == AIA)?;
    let aia = AuthorityInfoAccessSyntax::from_der(aia.extn_value.as_bytes()).ok()?;
    aia.0.into_iter().find_map(|d| match d.access_location {
        GeneralName::UniformResourceIdentifier(uri) if d.access_method == AD_OCSP => {
            let uri = uri.to_string();
            uri.get(..7)
                .is_some_and(|s| s.eq_ignore_ascii_case("http://"))
                .then_some(uri)
        }
        _ => None,
    })
}

fn digest(oid: ObjectIdentifier, data: &[u8]) -> Result<Vec<u8>, der::Error> {
    let alg = match oid {
        SHA1 => &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        SHA256 => &ring::digest::SHA256,
        _ => return Err(der::Tag::ObjectIdentifier.value_error()),
    };
    Ok(ring::digest::digest(alg, data).as_ref().to_vec())
}

/// The CertID of the certificate numbered `serial` that `issuer` issued,
/// hashed by `hash`.
fn cert_id(
    issuer: &Certificate,
    serial: SerialNumber,
    hash: ObjectIdentifier,
) -> der::Result<CertId> {
    let name = issuer.tbs_certificate.subject.to_der()?;
    let key = issuer
        .tbs_certificate
        .subject_public_key_info
        .subject_public_key
        .raw_bytes();
    Ok(CertId {
        hash_algorithm: AlgorithmIdentifierOwned {
            oid: hash,
            parameters: Some(Null.into()),
        },
        issuer_name_hash: OctetString::new(digest(hash, &name)?)?,
        issuer_key_hash: OctetString::new(digest(hash, key)?)?,
        serial_number: serial,
    })
}

/// Whether `signature` over `message` is `signer`'s under `alg`.
fn verify(
    signer: &Certificate,
    alg: &AlgorithmIdentifierOwned,
    message: &[u8],
    signature: &[u8],
) -> bool {
    let key = signer
        .tbs_certificate
        .subject_public_key_info
        .subject_public_key
        .raw_bytes();
    algorithms(alg.oid).iter().any(|a| {
        UnparsedPublicKey::new(*a, key)
            .verify(message, signature)
            .is_ok()
    })
}

/// ring's verifiers for a signature algorithm OID. ECDSA names only the
/// hash; the curve is the key's, so both are tried (a wrong curve fails).
fn algorithms(oid: ObjectIdentifier) -> Vec<&'static dyn VerificationAlgorithm> {
    match oid.to_string().as_str() {
        "1.2.840.113549.1.1.5" => vec![&signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY],
        "1.2.840.113549.1.1.11" => vec![&signature::RSA_PKCS1_2048_8192_SHA256],
        "1.2.840.113549.1.1.12" => vec![&signature::RSA_PKCS1_2048_8192_SHA384],
        "1.2.840.113549.1.1.13" => vec![&signature::RSA_PKCS1_2048_8192_SHA512],
        "1.2.840.10045.4.3.2" => vec![
            &signature::ECDSA_P256_SHA256_ASN1,
            &signature::ECDSA_P384_SHA256_ASN1,
        ],
        "1.2.840.10045.4.3.3" => vec![
            &signature::ECDSA_P384_SHA384_ASN1,
            &signature::ECDSA_P256_SHA384_ASN1,
        ],
        "1.3.101.112" => vec![&signature::ED25519],
        _ => vec![],
    }
}

#[cfg(test)]
mod tests {
    use der::asn1::{BitString, GeneralizedTime};
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
    use x509_ocsp::{
        OcspGeneralizedTime, ResponderId, ResponseData, RevokedInfo, SingleResponse, Version,
    };

    use super::*;

    const ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
    const HOUR: Duration = Duration::from_secs(3600);

    struct Ca {
        issuer: CertifiedIssuer<'static, KeyPair>,
        signer: EcdsaKeyPair,
    }

    fn new_ca(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let signer = signer(&key);
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, key).unwrap();
        Ca { issuer, signer }
    }

    fn signer(key: &KeyPair) -> EcdsaKeyPair {
        let rng = SystemRandom::new();
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &key.serialize_der(), &rng)
            .unwrap()
    }

    /// A leaf of `ca` and the Subject for it.
    fn subject(ca: &Ca) -> (Subject, Certificate) {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["a.test".to_string()]).unwrap();
        let leaf = params.signed_by(&key, &ca.issuer).unwrap();
        let s = Subject::new(leaf.der(), ca.issuer.der()).unwrap();
        (s, Certificate::from_der(leaf.der()).unwrap())
    }

    fn time(t: SystemTime) -> OcspGeneralizedTime {
        let d = t.duration_since(UNIX_EPOCH).unwrap();
        OcspGeneralizedTime(GeneralizedTime::from_unix_duration(d).unwrap())
    }

    /// An answer about `id`, signed by `by`, with `certs` attached.
    fn answer(
        id: CertId,
        status: CertStatus,
        this: SystemTime,
        next: Option<SystemTime>,
        by: &EcdsaKeyPair,
        certs: Option<Vec<Certificate>>,
    ) -> Vec<u8> {
        let tbs = ResponseData {
            version: Version::V1,
            responder_id: ResponderId::ByKey(OctetString::new(vec![1; 20]).unwrap()),
            produced_at: time(this),
            responses: vec![SingleResponse {
                cert_id: id,
                cert_status: status,
                this_update: time(this),
                next_update: next.map(time),
                single_extensions: None,
            }],
            response_extensions: None,
        };
        let signature = by
            .sign(&SystemRandom::new(), &tbs.to_der().unwrap())
            .unwrap();
        let basic = BasicOcspResponse {
            tbs_response_data: tbs,
            signature_algorithm: AlgorithmIdentifierOwned {
                oid: ECDSA_SHA256,
                parameters: None,
            },
            signature: BitString::from_bytes(signature.as_ref()).unwrap(),
            certs,
        };
        OcspResponse::successful(basic).unwrap().to_der().unwrap()
    }

    #[test]
    fn only_good_current_answers_for_this_certificate_signed_by_its_issuer() {
        let ca = new_ca("CA");
        let (s, leaf) = subject(&ca);
        let issuer = Certificate::from_der(ca.issuer.der()).unwrap();
        let now = SystemTime::now();
        let ours = s.cert_id.clone();
        let good = CertStatus::good();
        let answer_for = |id: CertId, status, this, next| {
            s.check(&answer(id, status, this, next, &ca.signer, None), now)
        };

        let ok = answer_for(ours.clone(), good, now - HOUR, Some(now + HOUR)).unwrap();
        assert_eq!(
            ok.next_update,
            UNIX_EPOCH + time(now + HOUR).0.to_unix_duration()
        );
        // Hashed by SHA-256 instead of the request's SHA-1.
        let sha256 = cert_id(&issuer, leaf.tbs_certificate.serial_number.clone(), SHA256).unwrap();
        assert!(answer_for(sha256, good, now - HOUR, Some(now + HOUR)).is_ok());
        // No nextUpdate: a day from thisUpdate.
        let ok = answer_for(ours.clone(), good, now - HOUR, None).unwrap();
        assert_eq!(ok.next_update, ok.this_update + WITHOUT_NEXT_UPDATE);

        let expired = answer_for(ours.clone(), good, now - 2 * HOUR, Some(now - HOUR));
        assert_eq!(expired, Err(Rejected::Expired));
        let early = answer_for(ours.clone(), good, now + HOUR, Some(now + 2 * HOUR));
        assert_eq!(early, Err(Rejected::NotYetValid));
        let revoked = CertStatus::Revoked(RevokedInfo {
            revocation_time: time(now - HOUR),
            revocation_reason: None,
        });
        let r = answer_for(ours.clone(), revoked, now - HOUR, Some(now + HOUR));
        assert_eq!(r, Err(Rejected::Revoked));
        let r = answer_for(ours.clone(), CertStatus::unknown(), now, Some(now + HOUR));
        assert_eq!(r, Err(Rejected::Unknown));

        // Another certificate of the same CA.
        let (other, _) = subject(&ca);
        let r = answer_for(other.cert_id.clone(), good, now, Some(now + HOUR));
        assert_eq!(r, Err(Rejected::OtherCertificate));

        // Signed by another CA's key, even with its certificate attached.
        let stranger = new_ca("Stranger");
        let attached = Certificate::from_der(stranger.issuer.der()).unwrap();
        let forged = answer(
            ours,
            good,
            now,
            Some(now + HOUR),
            &stranger.signer,
            Some(vec![attached]),
        );
        assert_eq!(s.check(&forged, now), Err(Rejected::BadSignature));
    }

    #[test]
    fn what_is_not_an_answer_is_refused_without_panicking() {
        let ca = new_ca("CA");
        let (s, _) = subject(&ca);
        let now = SystemTime::now();
        let later = OcspResponse::try_later().to_der().unwrap();
        assert_eq!(
            s.check(&later, now),
            Err(Rejected::Unsuccessful(OcspResponseStatus::TryLater))
        );
        assert!(matches!(s.check(b"", now), Err(Rejected::Malformed(_))));
        let good = answer(
            s.cert_id.clone(),
            CertStatus::good(),
            now,
            None,
            &ca.signer,
            None,
        );
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2_000 {
            let mut damaged = good.clone();
            let at = rng.usize(..damaged.len());
            damaged[at] ^= 1 << rng.u8(..8);
            damaged.truncate(rng.usize(at..=damaged.len()));
            // Whatever it says, a damaged answer is never stapled.
            assert!(s.check(&damaged, now).is_err());
        }
        let request = s.request();
        assert_eq!(
            OcspRequest::from_der(&request)
                .unwrap()
                .tbs_request
                .request_list[0]
                .req_cert,
            s.cert_id
        );
    }

    #[test]
    fn the_issuer_must_be_the_next_certificate() {
        let ca = new_ca("CA");
        let stranger = new_ca("Stranger");
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["a.test".to_string()]).unwrap();
        let leaf = params.signed_by(&key, &ca.issuer).unwrap();
        let e = Subject::new(leaf.der(), stranger.issuer.der()).unwrap_err();
        assert!(e.contains("did not issue"), "{e}");
        assert!(Subject::new(b"junk", ca.issuer.der()).is_err());
    }
}
