//! Sticky sessions by an inserted cookie (a pool's `sticky`) and client
//! certificates (an https listener's `client_auth`), through the real
//! binary: HTTP/1.1 and HTTP/2 clients, TLS with and without a client
//! certificate, health changes and reloads.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use support::library::{Leaf, Pki, tls_list};
use support::{Backend, Geolb, backend_list, bounded, eventually, geolb_check, request};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const LIMIT: Duration = Duration::from_secs(10);

fn config(pool_extra: &str, backends: &str, listeners: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[runtime]\nshutdown_grace = \"1s\"\n\n\
         [[pool]]\nname = \"p\"\nbackends = [{backends}]\n{pool_extra}\n\n{listeners}"
    )
}

const WEB: &str = "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n";

async fn reload(geolb: &Geolb, config: &str) {
    geolb.write_config(config).unwrap();
    let (code, _, body) = request(geolb.admin, "POST", "/reload", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
}

/// An HTTP/1.1 connection to `addr` (TCP or TLS stream given).
async fn h1<S>(stream: S) -> http1::SendRequest<Empty<Bytes>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    sender
}

/// GET `path` with `headers` on an open HTTP/1.1 connection: status,
/// response headers and body.
async fn get_on(
    sender: &mut http1::SendRequest<Empty<Bytes>>,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, HeaderMap, String), String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    let mut req = http::Request::get(path).header("host", "a.test");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = bounded(
        LIMIT,
        "request",
        sender.send_request(req.body(Empty::new()).unwrap()),
    )
    .await
    .map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((
        parts.status.as_u16(),
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    ))
}

/// One GET on a new connection.
async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, HeaderMap, String) {
    let mut c = h1(TcpStream::connect(addr).await.unwrap()).await;
    get_on(&mut c, path, headers).await.unwrap()
}

/// The `name=value` part of a Set-Cookie for `name`, if the response set one.
fn set_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| v.split(';').next().unwrap().to_owned())
}

fn header_lines(body: &str, name: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(str::to_owned)
        .collect()
}

async fn three_backends() -> (Backend, Backend, Backend) {
    (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    )
}

#[tokio::test]
async fn the_first_response_sets_the_cookie_and_later_requests_follow_it() {
    let (a, b, c) = three_backends().await;
    let sticky = "sticky = { cookie = \"SRV\", max_age = \"1h\", same_site = \"Lax\" }";
    let geolb = Geolb::start(&config(sticky, &backend_list(&[&a, &b, &c]), WEB)).await;
    let web = geolb.listener("web");

    // Without a cookie round robin spreads: three requests, three backends.
    let mut seen = std::collections::BTreeSet::new();
    let mut cookies = std::collections::BTreeSet::new();
    for _ in 0..3 {
        let (code, headers, name) = get(web, "/", &[]).await;
        assert_eq!(code, 200);
        seen.insert(name);
        let line = headers["set-cookie"].to_str().unwrap().to_owned();
        let (pair, attributes) = line.split_once("; ").unwrap();
        assert!(pair.starts_with("SRV=") && pair.len() == 4 + 16, "{line}");
        // Opaque: the value is not the address.
        assert!(!line.contains("127.0.0.1"), "{line}");
        // A cleartext listener: no Secure by default.
        assert_eq!(attributes, "Path=/; Max-Age=3600; HttpOnly; SameSite=Lax");
        assert_eq!(headers["cache-control"], "private");
        cookies.insert(pair.to_owned());
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(cookies.len(), 3, "{cookies:?}");

    // With one, every request goes to its backend, and no cookie is set again.
    let (_, headers, first) = get(web, "/", &[]).await;
    let cookie = set_cookie(&headers, "SRV").unwrap();
    let mut c = h1(TcpStream::connect(web).await.unwrap()).await;
    for _ in 0..12 {
        let (code, headers, name) = get_on(&mut c, "/", &[("cookie", &cookie)]).await.unwrap();
        assert_eq!((code, name.as_str()), (200, first.as_str()));
        assert!(headers.get("set-cookie").is_none());
        assert!(headers.get("cache-control").is_none());
    }

    // The backend never sees the cookie; the client's others pass.
    let (_, _, echoed) = get_on(
        &mut c,
        "/headers",
        &[("cookie", &format!("a=1; {cookie}; b=2"))],
    )
    .await
    .unwrap();
    assert_eq!(header_lines(&echoed, "cookie"), ["a=1; b=2"], "{echoed}");
    let (_, _, echoed) = get_on(&mut c, "/headers", &[("cookie", &cookie)])
        .await
        .unwrap();
    assert!(header_lines(&echoed, "cookie").is_empty(), "{echoed}");

    // A forged or unknown value: balanced as without one, and set afresh.
    let (code, headers, _) = get_on(&mut c, "/", &[("cookie", "SRV=0123456789abcdef")])
        .await
        .unwrap();
    assert_eq!(code, 200);
    let fresh = set_cookie(&headers, "SRV").expect("a forged cookie is replaced");
    assert!(cookies.contains(&fresh), "{fresh} names no backend");
}

#[tokio::test]
async fn a_backend_gone_down_or_removed_moves_its_clients() {
    let (a, b, c) = three_backends().await;
    let pool = "sticky = { cookie = \"SRV\" }\n\
                check = { kind = \"http\", path = \"/health\", interval = \"100ms\", timeout = \"1s\", rise = 1, fall = 1 }";
    let geolb = Geolb::start(&config(pool, &backend_list(&[&a, &b, &c]), WEB)).await;
    let web = geolb.listener("web");
    for backend in [&a, &b, &c] {
        eventually("backends up", LIMIT, || async {
            geolb.backend_state("p", backend.addr).await == "up"
        })
        .await;
    }
    let (_, headers, first) = get(web, "/", &[]).await;
    let cookie = set_cookie(&headers, "SRV").unwrap();
    let pinned = [&a, &b, &c].into_iter().find(|x| x.name == first).unwrap();

    // Its check fails: the next request goes elsewhere and is re-pinned.
    pinned.set_health(500);
    eventually("pinned backend down", LIMIT, || async {
        geolb.backend_state("p", pinned.addr).await == "down"
    })
    .await;
    let (code, headers, moved) = get(web, "/", &[("cookie", &cookie)]).await;
    assert_eq!(code, 200);
    assert_ne!(moved, first);
    let second = set_cookie(&headers, "SRV").expect("re-set after moving");
    assert_ne!(second, cookie);
    let (_, headers, again) = get(web, "/", &[("cookie", &second)]).await;
    assert_eq!(again, moved);
    assert!(headers.get("set-cookie").is_none());

    // Back up, the old cookie leads back to it: the value names the
    // backend, not a moment.
    pinned.set_health(200);
    eventually("pinned backend up", LIMIT, || async {
        geolb.backend_state("p", pinned.addr).await == "up"
    })
    .await;
    let (_, _, back) = get(web, "/", &[("cookie", &cookie)]).await;
    assert_eq!(back, first);

    // Removed by a reload: its cookie names nothing, and is replaced. The
    // others' values survive the reload.
    let now = set_cookie(&get(web, "/", &[("cookie", &second)]).await.1, "SRV");
    assert_eq!(now, None);
    let rest: Vec<&Backend> = [&a, &b, &c]
        .into_iter()
        .filter(|x| x.name != first)
        .collect();
    reload(&geolb, &config(pool, &backend_list(&rest), WEB)).await;
    let (code, headers, name) = get(web, "/", &[("cookie", &cookie)]).await;
    assert_eq!(code, 200);
    assert_ne!(name, first);
    assert!(set_cookie(&headers, "SRV").is_some());
    let (_, headers, name) = get(web, "/", &[("cookie", &second)]).await;
    assert_eq!(name, moved);
    assert!(headers.get("set-cookie").is_none());
}

#[tokio::test]
async fn http2_clients_are_pinned_too() {
    let (a, b, c) = three_backends().await;
    let geolb = Geolb::start(&config(
        "sticky = { cookie = \"SRV\" }",
        &backend_list(&[&a, &b, &c]),
        WEB,
    ))
    .await;
    let web = geolb.listener("web");
    let stream = TcpStream::connect(web).await.unwrap();
    let (mut sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut send = async |path: &str, cookies: &[&str]| {
        let mut req = http::Request::get(format!("http://a.test{path}"));
        // HTTP/2 lets a client send each cookie in a field of its own.
        for cookie in cookies {
            req = req.header("cookie", *cookie);
        }
        let resp = bounded(
            LIMIT,
            "h2 request",
            sender.send_request(req.body(Empty::<Bytes>::new()).unwrap()),
        )
        .await
        .unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (parts.headers, String::from_utf8_lossy(&body).into_owned())
    };
    let (headers, first) = send("/", &[]).await;
    let cookie = set_cookie(&headers, "SRV").expect("set over HTTP/2");
    for _ in 0..6 {
        let (headers, name) = send("/", &["x=1", &cookie]).await;
        assert_eq!(name, first);
        assert!(headers.get("set-cookie").is_none());
    }
    let (_, echoed) = send("/headers", &["x=1", &cookie, "y=2"]).await;
    assert_eq!(header_lines(&echoed, "cookie"), ["x=1; y=2"], "{echoed}");
}

#[tokio::test]
async fn a_full_pinned_backend_is_waited_for_not_left() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let pool =
        "sticky = { cookie = \"SRV\" }\nmax_connections = 1\nqueue = 10\nqueue_timeout = \"5s\"";
    let geolb = Geolb::start(&config(pool, &backend_list(&[&a, &b]), WEB)).await;
    let web = geolb.listener("web");
    // A cookie for a.
    let cookie = loop {
        let (_, headers, name) = get(web, "/", &[]).await;
        if name == "a" {
            break set_cookie(&headers, "SRV").unwrap();
        }
    };
    let hits = a.hits();
    let slow = {
        let cookie = cookie.clone();
        tokio::spawn(async move { get(web, "/slow?ms=400", &[("cookie", &cookie)]).await })
    };
    eventually("the slow request at a", LIMIT, || async { a.hits() > hits }).await;
    // a is full; b is free, but the client's session is on a.
    let (code, headers, name) = get(web, "/", &[("cookie", &cookie)]).await;
    assert_eq!((code, name.as_str()), (200, "a"));
    assert!(headers.get("set-cookie").is_none());
    assert_eq!(slow.await.unwrap().2, "a");
}

#[tokio::test]
async fn a_reload_turns_stickiness_on_for_an_open_connection() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let backends = backend_list(&[&a, &b]);
    let geolb = Geolb::start(&config("", &backends, WEB)).await;
    let mut c = h1(TcpStream::connect(geolb.listener("web")).await.unwrap()).await;
    let (_, headers, _) = get_on(&mut c, "/", &[]).await.unwrap();
    assert!(headers.get("set-cookie").is_none());
    reload(
        &geolb,
        &config(
            "sticky = { cookie = \"S2\", secure = true }",
            &backends,
            WEB,
        ),
    )
    .await;
    // The same connection, its next request: the new rule.
    let (code, headers, _) = get_on(&mut c, "/", &[]).await.unwrap();
    assert_eq!(code, 200);
    let line = headers["set-cookie"].to_str().unwrap();
    assert!(
        line.starts_with("S2=") && line.contains("; Secure"),
        "{line}"
    );
}

#[test]
fn a_tcp_listener_refuses_a_sticky_pool() {
    let text = config(
        "sticky = { cookie = \"SRV\" }",
        "{ addr = \"127.0.0.1:9\" }",
        "[[listener]]\nname = \"db\"\nbind = \"127.0.0.1:0\"\nprotocol = \"tcp\"\npool = \"p\"\n",
    );
    let (ok, _, stderr) = geolb_check(&text);
    assert!(!ok);
    assert!(
        stderr.contains("listener[0].pool") && stderr.contains("sticky"),
        "{stderr}"
    );
}

// ---- client certificates ----

/// A client offering `cert` (chain and key files), trusting `pki`.
fn client_with(pki: &Pki, cert: Option<&Leaf>) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match cert {
        Some(leaf) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&leaf.cert)
                .unwrap()
                .map(|c| c.unwrap())
                .collect();
            let key = PrivateKeyDer::from_pem_file(&leaf.key).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    TlsConnector::from(Arc::new(config))
}

/// A TLS connection to `addr` and an HTTP/1.1 client on it; Err when the
/// handshake fails (with TLS 1.3 a refused client certificate shows on
/// the first request instead, which `get_on` reports).
async fn https(
    connector: &TlsConnector,
    addr: SocketAddr,
) -> Result<http1::SendRequest<Empty<Bytes>>, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let tls = bounded(
        LIMIT,
        "handshake",
        connector.connect(ServerName::try_from("a.test").unwrap(), tcp),
    )
    .await
    .map_err(|e| e.to_string())?;
    let (sender, conn) = http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(sender)
}

/// The headers the backend saw for one GET /headers over `connector`
/// with `headers`, or why it failed.
async fn seen_over(
    connector: &TlsConnector,
    addr: SocketAddr,
    headers: &[(&str, &str)],
) -> Result<String, String> {
    let mut c = https(connector, addr).await?;
    let (code, _, body) = get_on(&mut c, "/headers", headers).await?;
    assert_eq!(code, 200, "{body}");
    Ok(body)
}

fn https_listener(server: &Leaf, client_auth: &str) -> String {
    format!(
        "{WEB}[[listener]]\nname = \"tls\"\nbind = \"127.0.0.1:0\"\nprotocol = \"https\"\npool = \"p\"\n{}\n{client_auth}\n",
        tls_list(&[server])
    )
}

fn client_auth(ca: &Path, required: bool) -> String {
    format!(
        "client_auth = {{ ca = {:?}, required = {required} }}",
        ca.display().to_string()
    )
}

fn alice_of(pki: &Pki) -> Leaf {
    pki.leaf_with("alice", &[], |p| {
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "Example, Inc.");
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "alice");
    })
}

const FORGED: &[(&str, &str)] = &[
    ("x-client-cert-verified", "SUCCESS"),
    ("x-client-cert-subject", "CN=admin"),
    ("x-client-cert-fingerprint", "00"),
];

#[tokio::test]
async fn a_required_client_certificate_is_verified_and_passed_on() {
    let pki = Pki::new();
    let server = pki.leaf("server", &["a.test"]);
    let clients = Pki::new();
    let alice = alice_of(&clients);
    let stranger = Pki::new();
    let mallory = alice_of(&stranger);
    let backend = Backend::start("a").await;
    let geolb = Geolb::start(&config(
        "",
        &backend_list(&[&backend]),
        &https_listener(&server, &client_auth(&clients.ca_file(), true)),
    ))
    .await;
    let tls = geolb.listener("tls");

    let seen = seen_over(&client_with(&pki, Some(&alice)), tls, FORGED)
        .await
        .unwrap();
    assert_eq!(header_lines(&seen, "x-client-cert-verified"), ["SUCCESS"]);
    assert_eq!(
        header_lines(&seen, "x-client-cert-subject"),
        ["CN=alice,O=Example\\, Inc."]
    );
    let digest = ring::digest::digest(&ring::digest::SHA256, alice.der.as_ref());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(header_lines(&seen, "x-client-cert-fingerprint"), [hex]);

    let refused = seen_over(&client_with(&pki, None), tls, &[]).await;
    assert!(
        refused.is_err(),
        "served without a certificate: {refused:?}"
    );
    let refused = seen_over(&client_with(&pki, Some(&mallory)), tls, &[]).await;
    assert!(
        refused.is_err(),
        "served with another CA's certificate: {refused:?}"
    );
    let failed = geolb.metrics().await;
    assert!(
        support::metric_value(
            &failed,
            "geolb_tls_handshake_errors_total{listener=\"tls\"}"
        )
        .is_some_and(|n| n >= 2.0),
        "{failed}"
    );

    // The cleartext listener: what a client claims is removed, nothing added.
    let (_, _, seen) = get(geolb.listener("web"), "/headers", FORGED).await;
    assert!(!seen.contains("x-client-cert"), "{seen}");
}

#[tokio::test]
async fn an_optional_client_certificate_and_a_reload_that_requires_it() {
    let pki = Pki::new();
    let server = pki.leaf("server", &["a.test"]);
    let alice = alice_of(&pki);
    let backend = Backend::start("a").await;
    let backends = backend_list(&[&backend]);
    let optional = config(
        "",
        &backends,
        &https_listener(&server, &client_auth(&pki.ca_file(), false)),
    );
    let geolb = Geolb::start(&optional).await;
    let tls = geolb.listener("tls");

    let anonymous = client_with(&pki, None);
    let seen = seen_over(&anonymous, tls, FORGED).await.unwrap();
    assert_eq!(header_lines(&seen, "x-client-cert-verified"), ["NONE"]);
    assert!(
        header_lines(&seen, "x-client-cert-subject").is_empty(),
        "{seen}"
    );
    assert!(
        header_lines(&seen, "x-client-cert-fingerprint").is_empty(),
        "{seen}"
    );
    let seen = seen_over(&client_with(&pki, Some(&alice)), tls, &[])
        .await
        .unwrap();
    assert_eq!(header_lines(&seen, "x-client-cert-verified"), ["SUCCESS"]);
    // Optional is not anything goes: a certificate shown must be valid.
    let other_ca = Pki::new();
    let stranger = alice_of(&other_ca);
    let refused = seen_over(&client_with(&pki, Some(&stranger)), tls, &[]).await;
    assert!(
        refused.is_err(),
        "served with another CA's certificate: {refused:?}"
    );

    // A connection open before the reload keeps what it was accepted with.
    let mut open = https(&anonymous, tls).await.unwrap();
    get_on(&mut open, "/", &[]).await.unwrap();
    reload(
        &geolb,
        &config(
            "",
            &backends,
            &https_listener(&server, &client_auth(&pki.ca_file(), true)),
        ),
    )
    .await;
    let refused = seen_over(&anonymous, tls, &[]).await;
    assert!(
        refused.is_err(),
        "a new connection without a certificate: {refused:?}"
    );
    assert!(
        seen_over(&client_with(&pki, Some(&alice)), tls, &[])
            .await
            .is_ok()
    );
    let (code, _, _) = get_on(&mut open, "/", &[]).await.unwrap();
    assert_eq!(code, 200);
}

#[test]
fn an_unreadable_or_empty_ca_file_is_a_config_error() {
    let pki = Pki::new();
    let server = pki.leaf("server", &["a.test"]);
    let missing = pki.dir.path().join("missing.pem");
    let empty = pki.dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    for (ca, words) in [(&missing, "cannot open"), (&empty, "no CA certificate")] {
        let text = config(
            "",
            "{ addr = \"127.0.0.1:9\" }",
            &https_listener(&server, &client_auth(ca, true)),
        );
        let (ok, _, stderr) = geolb_check(&text);
        assert!(!ok, "{stderr}");
        assert!(
            stderr.contains("listener[1].client_auth.ca") && stderr.contains(words),
            "{stderr}"
        );
    }
}
