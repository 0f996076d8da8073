//! Certificates from an ACME CA (`tls = { acme = ... }`), end to end
//! against Pebble (Let's Encrypt's test CA) on loopback: Pebble resolves
//! the names through geolb's own DNS listener and validates the
//! challenges on geolb's http (HTTP-01) and https (TLS-ALPN-01)
//! listeners. Without the `pebble` binary these tests say SKIPPED,
//! unless GEOLB_REQUIRE_PEBBLE is set (CI); the directory-down test needs
//! no Pebble.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use support::library::{Pki, path_str};
use support::{Backend, Geolb, bounded, eventually, get, metric_value, refused_addr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const LIMIT: Duration = Duration::from_secs(30);
const NAME: &str = "www.acme.test";

/// The pebble binary, or None (the test then skips) unless it is required.
fn pebble_binary() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("pebble"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("GEOLB_REQUIRE_PEBBLE").is_none(),
            "GEOLB_REQUIRE_PEBBLE is set but pebble is not installed (apt-get install pebble)"
        );
        eprintln!("SKIPPED: pebble is not installed (Debian: apt-get install pebble)");
    }
    found
}

/// `N` different ports for Pebble and geolb, which must know each other's
/// ports before either starts. Taken below the range of port-0 binds
/// (`support::port_for_a_program`): a port picked by a bind to port 0 and
/// let go could be taken by another test's connection or listener before
/// Pebble or geolb binds it (seen once in CI: "Address already in use").
async fn free_ports<const N: usize>() -> [u16; N] {
    std::array::from_fn(|_| support::port_for_a_program())
}

/// A Pebble process, killed on drop.
struct Pebble {
    child: Child,
    /// The directory URL.
    directory: String,
    management: SocketAddr,
    /// The CA that signed Pebble's own HTTPS certificate (geolb's `ca`).
    https_ca: PathBuf,
    pki: Pki,
    dir: tempfile::TempDir,
}

impl Pebble {
    /// Pebble validating HTTP-01 on `http`, TLS-ALPN-01 on `tls` (geolb's
    /// listener ports) and resolving names through the DNS server `dns`.
    async fn start(binary: &Path, http: u16, tls: u16, dns: u16) -> Pebble {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new();
        let leaf = pki.leaf("pebble", &["127.0.0.1", "localhost"]);
        let [acme, management] = free_ports().await;
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{acme}"),
                "managementListenAddress": format!("127.0.0.1:{management}"),
                "certificate": path_str(&leaf.cert),
                "privateKey": path_str(&leaf.key),
                "httpPort": http,
                "tlsPort": tls,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false
            }
        });
        let config_path = dir.path().join("pebble.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let log = std::fs::File::create(dir.path().join("pebble.log")).unwrap();
        let child = Command::new(binary)
            .arg("-config")
            .arg(&config_path)
            .arg("-dnsserver")
            .arg(format!("127.0.0.1:{dns}"))
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_VA_ALWAYS_VALID", "0")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            // Every order validates again: a renewal proves the challenge.
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn pebble");
        let mut pebble = Pebble {
            child,
            directory: format!("https://127.0.0.1:{acme}/dir"),
            management: SocketAddr::from(([127, 0, 0, 1], management)),
            https_ca: pki.ca_file(),
            pki,
            dir,
        };
        let deadline = std::time::Instant::now() + LIMIT;
        while TcpStream::connect(("127.0.0.1", acme)).await.is_err()
            || TcpStream::connect(pebble.management).await.is_err()
        {
            // A port taken since it was picked, a bad config: its log says.
            let log = || std::fs::read_to_string(pebble.dir.path().join("pebble.log"));
            if let Some(status) = pebble.child.try_wait().unwrap() {
                panic!(
                    "pebble exited with {status}:\n{}",
                    log().unwrap_or_default()
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "pebble does not listen:\n{}",
                log().unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        pebble
    }

    /// The root that issues this Pebble's certificates (regenerated at
    /// each start), from its management interface.
    async fn issuing_root(&self) -> CertificateDer<'static> {
        let connector = self.pki.client(&[b"http/1.1"]);
        let tcp = TcpStream::connect(self.management).await.unwrap();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        tls.write_all(b"GET /roots/0 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out).await;
        let text = String::from_utf8_lossy(&out);
        let body = text.split_once("\r\n\r\n").expect("an HTTP response").1;
        CertificateDer::from_pem_slice(body.as_bytes()).expect("a PEM root")
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The ports geolb listens on, fixed before start so that Pebble can be
/// told them.
struct Ports {
    http: u16,
    https: u16,
    dns: u16,
}

impl Ports {
    async fn pick() -> Ports {
        let [http, https, dns] = free_ports().await;
        Ports { http, https, dns }
    }
}

/// geolb with a DNS zone answering `names` with 127.0.0.1, an http
/// listener "plain" and an https listener "secure" whose certificate for
/// `names` comes from `directory`.
fn config(ports: &Ports, backend: SocketAddr, state_dir: &Path, acme: &str) -> String {
    let https = ports.https;
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[runtime]
state_dir = {state:?}

[dns]
listen = ["127.0.0.1:{dns}"]

[[dns.zone]]
origin = "acme.test"
soa = {{ mname = "ns1.acme.test.", rname = "hostmaster.acme.test.", serial = 1, refresh = "1h", retry = "10m", expire = "14d", minimum = "60s" }}
ns = ["ns1.acme.test."]
records = [
  {{ name = "ns1", type = "A", value = "127.0.0.1" }},
  {{ name = "www", type = "A", value = "127.0.0.1" }},
  {{ name = "api", type = "A", value = "127.0.0.1" }},
]

[[pool]]
name = "web"
backends = [{{ addr = "{backend}" }}]

[[listener]]
name = "plain"
bind = "127.0.0.1:{http}"
pool = "web"

[[listener]]
name = "secure"
bind = "127.0.0.1:{https}"
protocol = "https"
pool = "web"
tls = {{ acme = {{ {acme} }} }}
"#,
        state = path_str(state_dir),
        dns = ports.dns,
        http = ports.http,
    )
}

fn acme_table(pebble: &Pebble, names: &[&str], challenge: &str, extra: &str) -> String {
    format!(
        "directory = {:?}, names = {names:?}, challenge = {challenge:?}, ca = {:?}, \
         contact = [\"mailto:ops@acme.test\"]{extra}",
        pebble.directory,
        path_str(&pebble.https_ca),
    )
}

/// Pebble pointed at geolb's ports, a backend and a state directory.
struct Setup {
    ports: Ports,
    pebble: Pebble,
    backend: Backend,
    state: tempfile::TempDir,
}

impl Setup {
    /// None when Pebble is not installed (and not required).
    async fn new() -> Option<Setup> {
        let binary = pebble_binary()?;
        let ports = Ports::pick().await;
        let pebble = Pebble::start(&binary, ports.http, ports.https, ports.dns).await;
        Some(Setup {
            ports,
            pebble,
            backend: Backend::start("web").await,
            state: tempfile::tempdir().unwrap(),
        })
    }

    /// The config for `names` validated by `challenge`, `extra` keys added
    /// to the acme table.
    fn config(&self, names: &[&str], challenge: &str, extra: &str) -> String {
        let table = acme_table(&self.pebble, names, challenge, extra);
        config(&self.ports, self.backend.addr, self.state.path(), &table)
    }
}

/// Waits for the first certificate from Pebble; its serial.
async fn first_certificate(connector: &TlsConnector, addr: SocketAddr) -> Vec<u8> {
    bounded(LIMIT, "a certificate from pebble", async {
        loop {
            if let Ok((serial, _)) = served(connector, addr, NAME).await {
                return serial;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

fn start(config: &str) -> Geolb {
    Geolb::spawn(config, &[("GEOLB_ACME_INTERVAL", "500ms")])
}

/// A client trusting only `root`.
fn client(root: &CertificateDer<'static>) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// A verified handshake with `name` as SNI: the leaf's serial and SANs.
async fn served(
    connector: &TlsConnector,
    addr: SocketAddr,
    name: &str,
) -> Result<(Vec<u8>, Vec<String>), String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let server_name = ServerName::try_from(name.to_string()).unwrap();
    let tls = connector
        .connect(server_name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (_, parsed) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let mut names = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push(d.to_string());
            }
        }
    }
    Ok((parsed.raw_serial().to_vec(), names))
}

async fn orders(geolb: &Geolb, result: &str) -> f64 {
    let series = format!("geolb_tls_acme_orders_total{{name=\"{NAME}\",result=\"{result}\"}}");
    metric_value(&geolb.metrics().await, &series).unwrap_or(0.0)
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// HTTP-01 through geolb's http listener: the certificate is obtained,
/// stored with private files, served to a client trusting Pebble's root,
/// kept by a reload (and a reload adding a name gets it on the next
/// handshake, the open connection served on), and a restart uses the
/// stored one without ordering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_certificate_is_obtained_stored_served_and_reused_after_restart() {
    let Some(setup) = Setup::new().await else {
        return;
    };
    let mut geolb = start(&setup.config(&[NAME], "http-01", ""));
    geolb.wait_started().await;
    let https = geolb.listener("secure");
    let connector = client(&setup.pebble.issuing_root().await);
    let serial = first_certificate(&connector, https).await;
    let (_, names) = served(&connector, https, NAME).await.unwrap();
    assert_eq!(names, [NAME]);
    assert_eq!(orders(&geolb, "success").await, 1.0);
    let metrics = geolb.metrics().await;
    let expiry = metrics
        .lines()
        .find(|l| l.starts_with("geolb_tls_certificate_expiry_seconds{listener=\"secure\""))
        .unwrap_or_else(|| panic!("no expiry gauge for the ACME certificate:\n{metrics}"));
    assert!(expiry.contains("acme/127.0.0.1:"), "{expiry}");
    let dir = std::fs::read_dir(setup.state.path().join("acme"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_eq!(mode(&dir.join("account.json")), 0o600);
    assert_eq!(mode(&dir.join(NAME).join("key.pem")), 0o600);
    // The http listener still routes everything that is no challenge.
    let (status, _, _) = get(
        geolb.listener("plain"),
        "/.well-known/acme-challenge/unknown",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "an unknown token goes to the backend");

    // A reload: same certificate, no order; then one adding a name: the
    // next handshake gets a certificate for both, while a connection
    // opened before keeps being served.
    let (_, _, body) = support::request(geolb.admin, "POST", "/reload", &[], Default::default())
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&body).contains("config_generation"),
        "{body:?}"
    );
    assert_eq!(served(&connector, https, NAME).await.unwrap().0, serial);
    let mut open = open_keep_alive(&connector, https).await;
    let two = setup.config(&[NAME, "api.acme.test"], "http-01", "");
    geolb.write_config(&two).unwrap();
    support::request(geolb.admin, "POST", "/reload", &[], Default::default())
        .await
        .unwrap();
    eventually("a certificate covering the added name", LIMIT, || async {
        served(&connector, https, "api.acme.test")
            .await
            .is_ok_and(|(_, n)| n.len() == 2)
    })
    .await;
    assert_eq!(keep_alive_request(&mut open).await, 200);
    drop(open);

    // A restart with the same state directory: served at once, no order.
    drop(geolb);
    let mut again = start(&two);
    again.wait_started().await;
    let (_, names) = served(&connector, https, "api.acme.test")
        .await
        .expect("the stored certificate, at once");
    assert_eq!(names.len(), 2);
    assert!(
        again.log().contains("stored certificate in service"),
        "{}",
        again.log()
    );
    // Longer than several check intervals: still no order.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(orders(&again, "success").await, 0.0);
    assert_eq!(orders(&again, "failure").await, 0.0);
    assert!(
        !again.log().contains("ordering a certificate"),
        "{}",
        again.log()
    );
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn open_keep_alive(connector: &TlsConnector, addr: SocketAddr) -> Tls {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = connector
        .connect(ServerName::try_from(NAME).unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(keep_alive_request(&mut tls).await, 200);
    tls
}

/// One GET on an open HTTP/1.1 connection; its status.
async fn keep_alive_request(tls: &mut Tls) -> u16 {
    tls.write_all(format!("GET / HTTP/1.1\r\nHost: {NAME}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    bounded(LIMIT, "a response on the open connection", async {
        loop {
            let n = tls.read(&mut buf).await.unwrap();
            assert!(n > 0, "the connection closed");
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if body.len() >= length {
                    return head.split(' ').nth(1).unwrap().parse().unwrap();
                }
            }
        }
    })
    .await
}

/// TLS-ALPN-01 on the https listener itself, then renewals (renew_before
/// longer than Pebble's certificates last): each new certificate is
/// served without a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_certificate_is_obtained_and_renewed_without_a_reload() {
    let Some(setup) = Setup::new().await else {
        return;
    };
    let renew_always = ", renew_before = \"36500d\"";
    let mut geolb = start(&setup.config(&[NAME], "tls-alpn-01", renew_always));
    geolb.wait_started().await;
    let https = geolb.listener("secure");
    let connector = client(&setup.pebble.issuing_root().await);
    let first = first_certificate(&connector, https).await;
    let generation = geolb.status().await["config_generation"].clone();
    eventually("a renewed certificate served", LIMIT, || async {
        served(&connector, https, NAME)
            .await
            .is_ok_and(|(s, _)| s != first)
    })
    .await;
    assert!(orders(&geolb, "success").await >= 2.0);
    assert_eq!(orders(&geolb, "failure").await, 0.0, "{}", geolb.log());
    assert_eq!(
        geolb.status().await["config_generation"],
        generation,
        "no reload"
    );
    // Requests go on over the renewed certificate.
    let mut open = open_keep_alive(&connector, https).await;
    assert_eq!(keep_alive_request(&mut open).await, 200);
}

/// A directory that does not answer: logged with the reason, retried,
/// and the daemon keeps serving its other listener; the ACME listener
/// refuses handshakes (no certificate yet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_down_is_logged_and_retried_while_other_listeners_serve() {
    let ports = Ports::pick().await;
    let backend = Backend::start("web").await;
    let state = tempfile::tempdir().unwrap();
    let down = refused_addr();
    let table = format!("directory = \"https://{down}/dir\", names = [\"{NAME}\"]");
    let mut geolb = start(&config(&ports, backend.addr, state.path(), &table));
    geolb.wait_started().await;
    eventually("two failed orders", LIMIT, || async {
        orders(&geolb, "failure").await >= 2.0
    })
    .await;
    let log = geolb.log();
    let line = log
        .lines()
        .find(|l| l.contains("ACME: order failed"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("retry_in"), "{line}");
    assert!(
        line.to_ascii_lowercase().contains("refused"),
        "the reason: {line}"
    );
    let (status, _, _) = get(geolb.listener("plain"), "/", &[]).await.unwrap();
    assert_eq!(status, 200);
    let pki = Pki::new();
    let handshake = served(&pki.client(&[]), geolb.listener("secure"), NAME).await;
    assert!(handshake.is_err(), "no certificate to serve yet");
    eventually("the refusal logged", LIMIT, || async {
        geolb.log().contains("no ACME certificate yet")
    })
    .await;
    assert_eq!(orders(&geolb, "success").await, 0.0);
}

/// `geolb check` reads the `ca` file as the orders will: one that holds no
/// certificate is a config error naming the key and its line.
#[tokio::test]
async fn check_names_an_unusable_ca_file_with_its_key_path() {
    let ports = Ports::pick().await;
    let state = tempfile::tempdir().unwrap();
    let bad = state.path().join("not-a-ca.pem");
    std::fs::write(&bad, "no certificate here\n").unwrap();
    let table = format!(
        "directory = \"https://127.0.0.1:1/dir\", names = [\"{NAME}\"], ca = {:?}",
        path_str(&bad)
    );
    let text = config(&ports, refused_addr(), state.path(), &table);
    let (ok, stdout, stderr) = support::geolb_check(&text);
    assert!(!ok, "{stdout}{stderr}");
    let said = format!("{stdout}{stderr}");
    let line = said
        .lines()
        .find(|l| l.contains("listener[1].tls.acme.ca"))
        .unwrap_or_else(|| panic!("{said}"));
    let tls_line = text.lines().position(|l| l.starts_with("tls =")).unwrap() + 1;
    assert!(line.contains(&format!("line {tls_line}:")), "{line}");
    assert!(line.contains("not-a-ca.pem"), "{line}");
}
