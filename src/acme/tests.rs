use super::*;
use crate::config::{AcmeChallenge, DEFAULT_RENEW_BEFORE};

fn config(names: &[&str]) -> AcmeConfig {
    AcmeConfig {
        directory: "https://127.0.0.1:14000/dir".into(),
        directory_host: "127.0.0.1:14000".into(),
        contact: Vec::new(),
        names: names.iter().map(|n| n.to_string()).collect(),
        challenge: AcmeChallenge::Http01,
        ca: None,
        renew_before: DEFAULT_RENEW_BEFORE,
    }
}

/// A self-signed certificate for `names` valid until `not_after` (Unix
/// seconds), as PEM chain and key.
fn pem(names: &[&str], not_after: i64) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    params.not_after = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(not_after as u64);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

#[test]
fn an_order_is_due_without_a_certificate_for_missing_names_and_near_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let cert = Certificate::of(&config(&["a.example", "b.example"]), dir.path());
    let now = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
    assert_eq!(cert.due(now), Due::Now("no certificate yet".into()));

    let far = 2_000_000_000 + 90 * 86_400;
    let (chain, key) = pem(&["a.example"], far);
    cert.current.store(Some(Arc::new(
        Issued::from_pem(chain.as_bytes(), key.as_bytes()).unwrap(),
    )));
    assert_eq!(
        cert.due(now),
        Due::Now("the certificate does not cover b.example".into())
    );

    let (chain, key) = pem(&["a.example", "b.example"], far);
    cert.store
        .write_cert(chain.as_bytes(), key.as_bytes())
        .unwrap();
    cert.load();
    assert_eq!(cert.due(now), Due::In(Duration::from_secs(60 * 86_400)));
    let later = now + Duration::from_secs(61 * 86_400);
    assert_eq!(
        cert.due(later),
        Due::Now("the certificate expires in 29 days".into())
    );
    // Another table in the same state directory is another certificate;
    // the same table is the same one (what a reload relies on).
    let again = Certificate::of(&config(&["a.example", "b.example"]), dir.path());
    assert!(Arc::ptr_eq(&cert, &again));
    let (file, names, not_after) = again.in_service().unwrap();
    assert_eq!((names.len(), not_after), (2, far));
    assert!(file.ends_with("acme/127.0.0.1:14000/a.example/cert.pem"));
}

#[test]
fn a_stored_pair_that_does_not_match_is_refused() {
    let (chain, _) = pem(&["a.example"], 2_000_000_000);
    let (_, other_key) = pem(&["a.example"], 2_000_000_000);
    let e = Issued::from_pem(chain.as_bytes(), other_key.as_bytes())
        .err()
        .unwrap();
    assert!(e.contains("does not match"), "{e}");
    let e = Issued::from_pem(b"junk", other_key.as_bytes())
        .err()
        .unwrap();
    assert!(e.contains("no certificate"), "{e}");
}

#[test]
fn http01_tokens_are_answered_only_while_their_order_runs() {
    let path = "/.well-known/acme-challenge/tok-123";
    assert_eq!(http01(path), None);
    {
        let mut answering = Answering::default();
        answering.http01("tok-123", "tok-123.thumb");
        assert_eq!(http01(path), Some(Bytes::from_static(b"tok-123.thumb")));
        assert_eq!(http01("/.well-known/acme-challenge/other"), None);
        assert_eq!(http01("/tok-123"), None);
    }
    assert_eq!(http01(path), None);
}

#[test]
fn retries_back_off_to_a_cap_and_the_test_knob_parses() {
    let t = Timing {
        check: Duration::from_secs(100),
        retry: Duration::from_secs(60),
        max_retry: Duration::from_secs(6 * 3600),
        jitter: Duration::ZERO,
    };
    assert_eq!(t.retry_after(1), Duration::from_secs(60));
    assert_eq!(t.retry_after(3), Duration::from_secs(240));
    assert_eq!(t.retry_after(40), Duration::from_secs(6 * 3600));
    assert_eq!(t.next_check(Duration::from_secs(5)), Duration::from_secs(5));
    assert_eq!(
        t.next_check(Duration::from_secs(500)),
        Duration::from_secs(100)
    );
    assert_eq!(parse_interval("250ms"), Some(Duration::from_millis(250)));
    assert_eq!(parse_interval("2s"), Some(Duration::from_secs(2)));
    assert_eq!(parse_interval("0s"), None);
    assert_eq!(parse_interval("2h"), None);
}
