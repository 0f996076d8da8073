//! OCSP stapling through real sockets: a test CA made with `openssl`, a
//! responder on loopback that answers with `openssl ocsp` in responder
//! mode (index file, signer), the real `geolb run`, and a rustls client
//! that records the staple its handshake carries.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use support::{Geolb, eventually, metric_value};
use tokio::net::TcpListener;

const LIMIT: Duration = Duration::from_secs(20);
/// Retries and refreshes this short (`GEOLB_OCSP_MIN_INTERVAL_MS`), so a
/// responder that comes up is seen within a second or two.
const MIN_INTERVAL_MS: &str = "100";

fn openssl_missing() -> bool {
    let found = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("SKIPPED: `openssl` is not installed (apt-get install openssl)");
    }
    !found
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for `ocsp.test` (serial 1001) whose AIA
/// names `responder`, its chain file (leaf then CA), and what the
/// responder signs with.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new(dir: tempfile::TempDir, responder: SocketAddr) -> Pki {
        let pki = Pki { dir };
        pki.ca("ca", "/CN=Test OCSP CA");
        pki.issue(
            "leaf",
            "/CN=ocsp.test",
            "1001",
            &format!(
                "subjectAltName=DNS:ocsp.test\nauthorityInfoAccess=OCSP;URI:http://{responder}/\n"
            ),
        );
        let chain = [pki.read("leaf.pem"), pki.read("ca.pem")].concat();
        std::fs::write(pki.path("chain.pem"), chain).unwrap();
        pki.set_status('V');
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap()
    }

    /// A self-signed CA `name`.pem / `name`.key.
    fn ca(&self, name: &str, subject: &str) {
        openssl(
            self.dir.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.pem"),
                "-days",
                "30",
                "-subj",
                subject,
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
            ],
        );
    }

    /// `name`.pem / `name`.key signed by the CA, with extensions `ext`.
    fn issue(&self, name: &str, subject: &str, serial: &str, ext: &str) {
        let dir = self.dir.path();
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                subject,
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                &format!("0x{serial}"),
                "-days",
                "30",
                "-out",
                &format!("{name}.pem"),
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
    }

    /// The index the responder answers from: the leaf valid (`V`) or
    /// revoked (`R`).
    fn set_status(&self, status: char) {
        let revoked = if status == 'R' { "260101000000Z" } else { "" };
        let line = format!("{status}\t301231000000Z\t{revoked}\t1001\tunknown\t/CN=ocsp.test\n");
        std::fs::write(self.path("index.txt"), line).unwrap();
    }

    /// The https listener's config over the chain and key.
    fn config(&self, extra: &str) -> String {
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\n\
             [[pool]]\nname = \"web\"\nbackends = [{{ addr = \"{}\" }}]\n\n\
             [[listener]]\nname = \"tls\"\nbind = \"127.0.0.1:0\"\nprotocol = \"https\"\n\
             pool = \"web\"\ntls = [{{ cert = {:?}, key = {:?}{extra} }}]\n",
            "127.0.0.1:9",
            self.path("chain.pem").display().to_string(),
            self.path("leaf.key").display().to_string(),
        )
    }

    /// Whether `staple` is a response that openssl verifies against the
    /// CA and reports "good" for the leaf.
    fn says_good(&self, staple: &[u8]) -> bool {
        std::fs::write(self.path("staple.der"), staple).unwrap();
        let out = Command::new("openssl")
            .args([
                "ocsp",
                "-respin",
                "staple.der",
                "-issuer",
                "ca.pem",
                "-cert",
                "leaf.pem",
                "-CAfile",
                "ca.pem",
            ])
            .current_dir(self.dir.path())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("leaf.pem: good")
    }
}

/// An OCSP responder on loopback: each POSTed request answered by
/// `openssl ocsp` in responder mode, signed by `signer` (.pem/.key in the
/// PKI's directory). While `down`, connections are closed unanswered.
struct Responder {
    addr: SocketAddr,
    down: Arc<AtomicBool>,
    served: Arc<AtomicUsize>,
    signer: Arc<Mutex<String>>,
    _stop: tokio_util::sync::DropGuard,
}

impl Responder {
    async fn start(dir: PathBuf) -> Responder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let r = Responder {
            addr: listener.local_addr().unwrap(),
            down: Arc::new(AtomicBool::new(false)),
            served: Arc::new(AtomicUsize::new(0)),
            signer: Arc::new(Mutex::new("ca".to_owned())),
            _stop: stop.clone().drop_guard(),
        };
        let (down, served, signer) = (r.down.clone(), r.served.clone(), r.signer.clone());
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = stop.cancelled() => return,
                    s = listener.accept() => match s { Ok((s, _)) => s, Err(_) => continue },
                };
                if down.load(Ordering::SeqCst) {
                    continue;
                }
                let (dir, served, signer) = (dir.clone(), served.clone(), signer.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (dir, served, signer) = (dir.clone(), served.clone(), signer.clone());
                        async move {
                            let body = req.into_body().collect().await?.to_bytes();
                            let signer = signer.lock().unwrap().clone();
                            let answer = answer(&dir, &body, &signer);
                            served.fetch_add(1, Ordering::SeqCst);
                            Ok::<_, hyper::Error>(
                                hyper::Response::builder()
                                    .header("content-type", "application/ocsp-response")
                                    .body(Full::new(Bytes::from(answer)))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        r
    }

    fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}

/// openssl's answer to the DER `request`, from the index, signed by `signer`.
fn answer(dir: &Path, request: &[u8], signer: &str) -> Vec<u8> {
    let id = fastrand::u64(..);
    let (req, resp) = (format!("req-{id}.der"), format!("resp-{id}.der"));
    std::fs::write(dir.join(&req), request).unwrap();
    openssl(
        dir,
        &[
            "ocsp",
            "-index",
            "index.txt",
            "-CA",
            "ca.pem",
            "-rsigner",
            &format!("{signer}.pem"),
            "-rkey",
            &format!("{signer}.key"),
            "-reqin",
            &req,
            "-respout",
            &resp,
            "-ndays",
            "1",
        ],
    );
    std::fs::read(dir.join(resp)).unwrap()
}

/// Accepts any server certificate and keeps the OCSP response the
/// handshake carried (what a browser would check).
#[derive(Debug, Default)]
struct Recorder(Mutex<Vec<u8>>);

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        ocsp_response: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.0.lock().unwrap() = ocsp_response.to_vec();
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The staple of one fresh handshake with `addr` (empty: none).
async fn staple(addr: SocketAddr) -> Vec<u8> {
    let recorder = Arc::new(Recorder::default());
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(recorder.clone())
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("ocsp.test").unwrap(), tcp)
        .await
        .expect("the handshake never fails for OCSP's sake");
    recorder.0.lock().unwrap().clone()
}

/// A responder answering from the files of a PKI whose certificate
/// names it.
async fn setup() -> (Pki, Responder) {
    let dir = tempfile::tempdir().unwrap();
    let responder = Responder::start(dir.path().to_path_buf()).await;
    (Pki::new(dir, responder.addr), responder)
}

async fn start_geolb(config: &str) -> Geolb {
    let mut geolb = Geolb::spawn(config, &[("GEOLB_OCSP_MIN_INTERVAL_MS", MIN_INTERVAL_MS)]);
    geolb.wait_started().await;
    geolb
}

async fn fetch_errors(geolb: &Geolb, pki: &Pki) -> f64 {
    let series = format!(
        "geolb_tls_ocsp_fetch_errors_total{{cert=\"{}\"}}",
        pki.path("chain.pem").display()
    );
    metric_value(&geolb.metrics().await, &series).unwrap_or(0.0)
}

#[tokio::test]
async fn a_good_response_is_stapled_and_kept_across_a_reload() {
    if openssl_missing() {
        return;
    }
    let (pki, responder) = setup().await;
    let geolb = start_geolb(&pki.config("")).await;
    let tls = geolb.listener("tls");
    eventually("a staple in the handshake", LIMIT, || async {
        !staple(tls).await.is_empty()
    })
    .await;
    assert!(pki.says_good(&staple(tls).await));
    let metrics = geolb.metrics().await;
    let series = format!(
        "geolb_tls_ocsp_staple_valid_seconds{{listener=\"tls\",cert=\"{}\"}}",
        pki.path("chain.pem").display()
    );
    let valid = metric_value(&metrics, &series).expect("the staple gauge");
    assert!(valid > 23.0 * 3600.0 && valid <= 24.0 * 3600.0, "{valid}");
    support::library::promtool_check(&metrics);

    // A reload with the same certificate keeps the staple and its fetcher:
    // no window without it, no new request to the responder.
    let served = responder.served();
    responder.down.store(true, Ordering::SeqCst);
    geolb
        .write_config(&pki.config("").replace("127.0.0.1:9", "127.0.0.1:10"))
        .unwrap();
    geolb.signal("HUP");
    eventually("the reload", LIMIT, || async {
        geolb
            .metrics()
            .await
            .contains("geolb_config_reloads_total{result=\"success\"} 1")
    })
    .await;
    assert!(pki.says_good(&staple(tls).await));
    assert_eq!(responder.served(), served);
    assert_eq!(fetch_errors(&geolb, &pki).await, 0.0);
}

/// `geolb_config_reloads_total{result="success"}` reaches `n`.
async fn reloaded(geolb: &Geolb, n: u32) {
    let series = format!("geolb_config_reloads_total{{result=\"success\"}} {n}");
    eventually("the reload", LIMIT, || async {
        geolb.metrics().await.contains(&series)
    })
    .await;
}

#[tokio::test]
async fn a_revoked_certificate_is_not_stapled_until_it_is_good() {
    if openssl_missing() {
        return;
    }
    let (pki, responder) = setup().await;
    pki.set_status('R');
    let geolb = start_geolb(&pki.config("")).await;
    let tls = geolb.listener("tls");
    eventually("the revoked answer counted", LIMIT, || async {
        fetch_errors(&geolb, &pki).await >= 1.0
    })
    .await;
    assert!(responder.served() >= 1);
    assert!(staple(tls).await.is_empty());
    // The log line is written after the failure is counted: waited for.
    eventually("the revocation logged", LIMIT, || async {
        geolb.log().contains("the certificate is revoked")
    })
    .await;
    // The same certificate good again (a test's liberty): the retry staples.
    pki.set_status('V');
    eventually("a staple once the answer is good", LIMIT, || async {
        !staple(tls).await.is_empty()
    })
    .await;
    assert!(pki.says_good(&staple(tls).await));
}

#[tokio::test]
async fn a_responder_down_at_start_is_retried_while_handshakes_go_on() {
    if openssl_missing() {
        return;
    }
    let (pki, responder) = setup().await;
    responder.down.store(true, Ordering::SeqCst);
    let geolb = start_geolb(&pki.config("")).await;
    let tls = geolb.listener("tls");
    eventually("failed fetches counted", LIMIT, || async {
        fetch_errors(&geolb, &pki).await >= 2.0
    })
    .await;
    assert!(staple(tls).await.is_empty(), "no staple while down");
    let metrics = geolb.metrics().await;
    let series = format!(
        "geolb_tls_ocsp_staple_valid_seconds{{listener=\"tls\",cert=\"{}\"}}",
        pki.path("chain.pem").display()
    );
    assert_eq!(metric_value(&metrics, &series), Some(0.0), "{metrics}");
    responder.down.store(false, Ordering::SeqCst);
    eventually("a staple once the responder is up", LIMIT, || async {
        !staple(tls).await.is_empty()
    })
    .await;
    assert!(pki.says_good(&staple(tls).await));
}

#[tokio::test]
async fn a_response_signed_by_an_unrelated_key_is_not_stapled() {
    if openssl_missing() {
        return;
    }
    let (pki, responder) = setup().await;
    pki.ca("other", "/CN=Unrelated CA");
    *responder.signer.lock().unwrap() = "other".to_owned();
    let geolb = start_geolb(&pki.config("")).await;
    let tls = geolb.listener("tls");
    eventually("the forged answer counted", LIMIT, || async {
        fetch_errors(&geolb, &pki).await >= 1.0
    })
    .await;
    assert!(staple(tls).await.is_empty());
    // The log line is written after the failure is counted: waited for.
    eventually("the bad signature logged", LIMIT, || async {
        geolb.log().contains("signature")
    })
    .await;
}

#[tokio::test]
async fn a_responder_the_issuer_delegated_to_is_trusted() {
    if openssl_missing() {
        return;
    }
    let (pki, responder) = setup().await;
    pki.issue(
        "delegate",
        "/CN=Test OCSP responder",
        "2002",
        "extendedKeyUsage=OCSPSigning\n",
    );
    *responder.signer.lock().unwrap() = "delegate".to_owned();
    let geolb = start_geolb(&pki.config("")).await;
    let tls = geolb.listener("tls");
    eventually("a staple signed by the delegate", LIMIT, || async {
        !staple(tls).await.is_empty()
    })
    .await;
    assert!(pki.says_good(&staple(tls).await));
}

#[tokio::test]
async fn ocsp_false_and_ocsp_responder_by_reload() {
    if openssl_missing() {
        return;
    }
    let (pki, responder) = setup().await;
    let geolb = start_geolb(&pki.config(", ocsp = false")).await;
    let tls = geolb.listener("tls");
    assert!(staple(tls).await.is_empty());
    // A second responder, named by ocsp_responder instead of the
    // certificate's AIA (which points at the first, now down).
    responder.down.store(true, Ordering::SeqCst);
    let other = Responder::start(pki.dir.path().to_path_buf()).await;
    let url = format!(", ocsp_responder = \"http://{}/\"", other.addr);
    geolb.write_config(&pki.config(&url)).unwrap();
    geolb.signal("HUP");
    reloaded(&geolb, 1).await;
    eventually("a staple from ocsp_responder", LIMIT, || async {
        !staple(tls).await.is_empty()
    })
    .await;
    assert_eq!(responder.served(), 0, "the AIA responder was never asked");
    assert!(other.served() >= 1);
    // Stapling turned off by reload: the next handshake has none.
    geolb.write_config(&pki.config(", ocsp = false")).unwrap();
    geolb.signal("HUP");
    reloaded(&geolb, 2).await;
    assert!(staple(tls).await.is_empty());
}

#[test]
fn ocsp_true_needs_a_responder_and_an_issuer() {
    use geolb::config::{OcspConfig, TlsCertConfig};
    use support::library::Pki as TestCa;
    let ca = TestCa::new();
    // rcgen's leaf: no AIA, its file the leaf then the CA; `alone` the
    // leaf without its issuer.
    let leaf = ca.leaf("a", &["a.test"]);
    let pem = std::fs::read_to_string(&leaf.cert).unwrap();
    let end = "-----END CERTIFICATE-----\n";
    let alone = ca.dir.path().join("alone.pem");
    std::fs::write(&alone, &pem[..pem.find(end).unwrap() + end.len()]).unwrap();
    let entry = |cert: &Path, enabled, responder: Option<&str>| TlsCertConfig {
        cert: cert.to_path_buf(),
        key: leaf.key.clone(),
        ocsp: OcspConfig {
            enabled,
            responder: responder.map(str::to_owned),
        },
    };
    let shown = |e: Vec<geolb::config::ConfigError>| {
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].path, "listener[3].tls[0].ocsp");
        e[0].to_string()
    };
    let tls = geolb::proxy::tls::server_config;
    let url = Some("http://127.0.0.1:9/");
    let e = shown(tls(3, &[entry(&leaf.cert, Some(true), None)]).unwrap_err());
    assert!(e.contains("names no OCSP responder"), "{e}");
    let e = shown(tls(3, &[entry(&alone, Some(true), url)]).unwrap_err());
    assert!(e.contains("no issuer certificate after it"), "{e}");
    // Not asked for: served without stapling, or stapled where it can be.
    let (_, infos) = tls(3, &[entry(&alone, None, url)]).unwrap();
    assert!(infos[0].ocsp.is_none());
    let (_, infos) = tls(3, &[entry(&leaf.cert, None, None)]).unwrap();
    assert!(infos[0].ocsp.is_none());
    let (_, infos) = tls(3, &[entry(&leaf.cert, None, url)]).unwrap();
    assert!(infos[0].ocsp.is_some());
}

#[tokio::test]
async fn a_restart_staples_the_saved_response_at_once() {
    if openssl_missing() {
        return;
    }
    let (pki, responder) = setup().await;
    let state = tempfile::tempdir().unwrap();
    let mut first = Geolb::start_with_state(&pki.config(""), Some(state.path())).await;
    let tls = first.listener("tls");
    eventually("a staple in the handshake", LIMIT, || async {
        !staple(tls).await.is_empty()
    })
    .await;
    first.signal("TERM");
    first.wait_exit(LIMIT).await;
    // Down for the whole life of the second daemon: its staple can only
    // come from the state directory.
    responder.down.store(true, Ordering::SeqCst);
    let served = responder.served();
    let second = Geolb::start_with_state(&pki.config(""), Some(state.path())).await;
    let staple = staple(second.listener("tls")).await;
    assert!(pki.says_good(&staple), "the first handshake carries it");
    assert_eq!(responder.served(), served);
}
