//! Who may reach the admin API, end to end through the real binary:
//! `[admin] tls` (the admin listener speaking HTTPS only) and `[admin]
//! socket` (the same API on a Unix socket with file permissions), and the
//! commands that talk to both (`--admin https://...`, `--admin unix:...`).

mod support;

use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use support::library::{Pki, tls_list};
use support::{Backend, Geolb, bounded, eventually, geolb_check, geolb_command, raw, token_file};
use tokio::io::{AsyncRead, AsyncWrite};

const LIMIT: Duration = Duration::from_secs(15);

/// One data center "one" over pool "p" (backend `backend`), one listener,
/// and `[admin]` on port 0 with `admin_keys` added.
fn config(backend: &Backend, admin_keys: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{admin_keys}\n\
         [runtime]\nshutdown_grace = \"5s\"\n\n\
         [[datacenter]]\nname = \"one\"\nlocation = {{ lat = 0, lon = 0 }}\naddresses = [\"192.0.2.1\"]\npools = [\"p\"]\n\n\
         [[pool]]\nname = \"p\"\nbackends = [{{ addr = \"{}\" }}]\n\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n",
        backend.addr
    )
}

fn quoted(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

/// One request over `io`: (status, body).
async fn exchange<I>(io: I, method: &str, path: &str, token: Option<&str>) -> (u16, String)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .expect("HTTP handshake");
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let resp = bounded(
        LIMIT,
        "the admin answer",
        sender.send_request(req.body(Empty::<Bytes>::new()).unwrap()),
    )
    .await
    .expect("an answer");
    let code = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (code, String::from_utf8_lossy(&body).into_owned())
}

/// A request over TLS to `admin`, trusting `pki`'s CA.
async fn over_tls(
    admin: std::net::SocketAddr,
    pki: &Pki,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> Result<(u16, String), std::io::Error> {
    let tcp = tokio::net::TcpStream::connect(admin).await?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = bounded(
        LIMIT,
        "the TLS handshake",
        pki.client(&[b"http/1.1"]).connect(name, tcp),
    )
    .await?;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(b"http/1.1".as_ref()));
    Ok(exchange(tls, method, path, token).await)
}

async fn over_unix(socket: &Path, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .expect("connect to the admin socket");
    exchange(stream, method, path, token).await
}

#[tokio::test]
async fn with_admin_tls_the_admin_listener_speaks_https_only() {
    let a = Backend::start("a").await;
    let pki = Pki::new();
    let leaf = pki.leaf("admin", &["127.0.0.1", "localhost"]);
    let (_token_dir, token) = token_file("the-token\n");
    let keys = format!("token_file = {}\n{}\n", quoted(&token), tls_list(&[&leaf]));
    let mut geolb = Geolb::spawn(&config(&a, &keys), &[]);
    let admin = geolb.wait_admin().await;

    // A client trusting the test CA: /status, with ALPN http/1.1.
    let (code, body) = over_tls(admin, &pki, "GET", "/status", None)
        .await
        .expect("GET /status over TLS");
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["config_generation"], 1);
    let (code, _) = over_tls(admin, &pki, "POST", "/reload", None)
        .await
        .unwrap();
    assert_eq!(code, 401, "the token rule holds over TLS");

    // Plain HTTP gets no HTTP answer.
    let plain = raw(
        admin,
        b"GET /status HTTP/1.1\r\nhost: localhost\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(!plain.starts_with("HTTP/"), "{plain:?}");
    assert!(support::get(admin, "/status", &[]).await.is_err());

    // `geolb status --admin https://... --ca`: the JSON; another CA: exit 1.
    let https = format!("https://127.0.0.1:{}", admin.port());
    let ca = pki.ca_file();
    let ca = ca.to_str().unwrap();
    let (ok, stdout, stderr) = geolb_command(&["status", "--admin", &https, "--ca", ca]).await;
    assert!(ok, "{stderr}");
    let status: serde_json::Value = serde_json::from_str(&stdout).expect("status JSON");
    assert_eq!(status["config_generation"], 1);
    let other = Pki::new();
    let other_ca = other.ca_file();
    let (ok, _, stderr) = geolb_command(&[
        "status",
        "--admin",
        &https,
        "--ca",
        other_ca.to_str().unwrap(),
    ])
    .await;
    assert!(!ok);
    assert!(
        stderr.contains("TLS") && stderr.contains("--ca"),
        "{stderr}"
    );
    // The bundled roots do not know the test CA either; --insecure skips it.
    let (ok, _, stderr) = geolb_command(&["status", "--admin", &https]).await;
    assert!(!ok, "{stderr}");
    let (ok, _, stderr) = geolb_command(&["status", "--admin", &https, "--insecure"]).await;
    assert!(ok, "{stderr}");
    // Plain HTTP from the client: no answer, exit 1.
    let (ok, _, _) = geolb_command(&["status", "--admin", &admin.to_string()]).await;
    assert!(!ok);

    // With --config, the client speaks https (and takes the token there).
    // The config's port is 0, so the address comes from --admin here.
    let config = geolb.config_path();
    let config = config.to_str().unwrap();
    let (ok, stdout, stderr) =
        geolb_command(&["reload", "--config", config, "--admin", &https, "--ca", ca]).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("\"config_generation\": 2"), "{stdout}");

    // New certificates (another CA) in the same files: a reload swaps them
    // in for new connections.
    let renewed = other.leaf("renewed", &["127.0.0.1"]);
    std::fs::copy(&renewed.cert, &leaf.cert).unwrap();
    std::fs::copy(&renewed.key, &leaf.key).unwrap();
    let (code, body) = over_tls(admin, &pki, "POST", "/reload", Some("the-token"))
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(over_tls(admin, &pki, "GET", "/status", None).await.is_err());
    let (code, _) = over_tls(admin, &other, "GET", "/status", None)
        .await
        .unwrap();
    assert_eq!(code, 200);

    // A broken key file: the reload is refused with its key path, and the
    // certificates in force stay.
    let renewed_key = std::fs::read(&leaf.key).unwrap();
    std::fs::write(&leaf.key, "not a key\n").unwrap();
    let (code, body) = over_tls(admin, &other, "POST", "/reload", Some("the-token"))
        .await
        .unwrap();
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("admin.tls[0].key"), "{body}");
    std::fs::write(&leaf.key, renewed_key).unwrap();
    let (code, _) = over_tls(admin, &other, "GET", "/status", None)
        .await
        .unwrap();
    assert_eq!(code, 200);

    // Turning TLS off needs a restart: refused, naming the key.
    geolb
        .write_config(&config_for_token(&a, &token, ""))
        .unwrap();
    let (code, body) = over_tls(admin, &other, "POST", "/reload", Some("the-token"))
        .await
        .unwrap();
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("admin.tls") && body.contains("restart"),
        "{body}"
    );
    let (code, _) = over_tls(admin, &other, "GET", "/status", None)
        .await
        .unwrap();
    assert_eq!(code, 200, "still HTTPS");
}

fn config_for_token(backend: &Backend, token: &Path, more: &str) -> String {
    config(backend, &format!("token_file = {}\n{more}", quoted(token)))
}

#[tokio::test]
async fn the_admin_api_on_a_unix_socket() {
    let a = Backend::start("a").await;
    let (_token_dir, token) = token_file("the-token\n");
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    // A socket file left by a crash is replaced.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let keys = format!("socket = {}\nsocket_mode = \"0660\"", quoted(&socket));
    let mut geolb = Geolb::start(&config_for_token(&a, &token, &keys)).await;
    eventually("the admin socket serves", LIMIT, || async {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    })
    .await;
    let meta = std::fs::symlink_metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o660);

    let (code, body) = over_unix(&socket, "GET", "/status", None).await;
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["config_generation"], 1);
    // The token rule holds on the socket too.
    let (code, body) = over_unix(&socket, "POST", "/datacenters/one/drain", None).await;
    assert_eq!(code, 401, "{body}");
    let (code, _) = over_unix(&socket, "POST", "/reload", Some("wrong")).await;
    assert_eq!(code, 401);
    assert_eq!(geolb.status().await["datacenters"][0]["override"], "auto");
    let (code, body) =
        over_unix(&socket, "POST", "/datacenters/one/drain", Some("the-token")).await;
    assert_eq!(code, 200, "{body}");

    // The commands: `--admin unix:PATH`, and `--config` choosing the socket.
    let unix = format!("unix:{}", socket.display());
    let token_arg = token.to_str().unwrap();
    let (ok, stdout, stderr) =
        geolb_command(&["reload", "--admin", &unix, "--token-file", token_arg]).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("\"config_generation\": 2"), "{stdout}");
    let (ok, _, stderr) = geolb_command(&["reload", "--admin", &unix]).await;
    assert!(!ok);
    assert!(stderr.contains("401") && stderr.contains(&unix), "{stderr}");
    let config = geolb.config_path();
    let (ok, stdout, stderr) = geolb_command(&[
        "override",
        "datacenter",
        "one",
        "auto",
        "--config",
        config.to_str().unwrap(),
    ])
    .await;
    assert!(
        ok,
        "the config's port is 0: only the socket reaches the daemon: {stderr}"
    );
    assert!(stdout.contains("auto"), "{stdout}");
    let missing = format!("unix:{}", dir.path().join("nothing.sock").display());
    let (ok, _, stderr) = geolb_command(&["status", "--admin", &missing]).await;
    assert!(!ok);
    assert!(
        stderr.contains("cannot reach") && stderr.contains(&missing),
        "{stderr}"
    );

    // Changing the mode needs a restart.
    geolb
        .write_config(&config_for_token(
            &a,
            &token,
            &format!("socket = {}\nsocket_mode = \"0600\"", quoted(&socket)),
        ))
        .unwrap();
    let (code, body) = over_unix(&socket, "POST", "/reload", Some("the-token")).await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("admin.socket_mode"), "{body}");

    // A clean exit removes the file.
    geolb.signal("TERM");
    assert!(geolb.wait_exit(LIMIT).await.success());
    assert!(!socket.exists(), "the socket file is removed at exit");
}

#[tokio::test]
async fn a_takeover_moves_the_admin_socket_to_the_new_process() {
    let a = Backend::start("a").await;
    let state = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let cfg = config(&a, &format!("socket = {}", quoted(&socket)));
    let mut old = Geolb::start_with_state(&cfg, Some(state.path())).await;
    eventually("the old process's socket", LIMIT, || async {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    })
    .await;
    let mut new = Geolb::start_with(&cfg, Some(state.path()), &["--takeover"]).await;
    assert!(old.wait_exit(LIMIT).await.success(), "{}", old.log());
    // The old process left the new one's socket in place.
    let (code, body) = over_unix(&socket, "GET", "/status", None).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        std::fs::symlink_metadata(&socket)
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600,
        "the default mode"
    );
    new.signal("TERM");
    assert!(new.wait_exit(LIMIT).await.success());
    assert!(!socket.exists());
}

#[tokio::test]
async fn bad_admin_tls_and_socket_settings_are_clear_errors() {
    let a = Backend::start("a").await;
    let expect_error = |keys: String, wanted: &'static [&'static str]| {
        let (ok, _, stderr) = geolb_check(&config(&a, &keys));
        assert!(!ok, "{keys}");
        for w in wanted {
            assert!(stderr.contains(w), "{w:?} in:\n{stderr}");
        }
    };
    expect_error(
        "socket = \"admin.sock\"\nsocket_mode = \"999\"".into(),
        &["admin.socket_mode = \"999\"", "octal"],
    );
    expect_error(
        "socket = \"/nonexistent-geolb-dir/admin.sock\"".into(),
        &["admin.socket", "/nonexistent-geolb-dir", "create it first"],
    );
    let pki = Pki::new();
    let leaf = pki.leaf("admin", &["127.0.0.1"]);
    let other = pki.leaf("other", &["127.0.0.1"]);
    expect_error(
        "tls = [{ cert = \"/nonexistent/admin.pem\", key = \"/nonexistent/admin.key\" }]".into(),
        &["admin.tls[0].cert", "admin.tls[0].key", "cannot open"],
    );
    expect_error(
        format!(
            "tls = [{{ cert = {}, key = {} }}]",
            quoted(&leaf.cert),
            quoted(&other.key)
        ),
        &["admin.tls[0].key", "does not match"],
    );

    // At start: the same errors, exit 1; a path that is not a socket.
    let mut geolb = Geolb::spawn(
        &config(&a, "socket = \"/nonexistent-geolb-dir/admin.sock\""),
        &[],
    );
    assert_eq!(geolb.wait_exit(LIMIT).await.code(), Some(1));
    assert!(geolb.log().contains("admin.socket"), "{}", geolb.log());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, "keep me").unwrap();
    let mut geolb = Geolb::spawn(&config(&a, &format!("socket = {}", quoted(&file))), &[]);
    assert_eq!(geolb.wait_exit(LIMIT).await.code(), Some(1));
    assert!(
        geolb.log().contains("admin.socket") && geolb.log().contains("not a socket"),
        "{}",
        geolb.log()
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}
