//! Controlling a running daemon, end to end through the real binary: the admin token, the
//! commands that talk to a running daemon (`geolb reload`, `status`,
//! `override`), systemd readiness notifications and the unit file.

mod support;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use support::{Backend, Geolb, bounded, geolb_command, get, request, token_file};

/// One data center "one" over pool "p" (backend `backend`), one listener
/// "web", and the admin listener asking for the token in `token_file`.
fn config_with_token(token_file: Option<&Path>, backend: &Backend) -> String {
    let token = token_file
        .map(|f| format!("token_file = \"{}\"\n", f.display()))
        .unwrap_or_default();
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{token}\n\
         [runtime]\nshutdown_grace = \"5s\"\n\n\
         [[datacenter]]\nname = \"one\"\nlocation = {{ lat = 0, lon = 0 }}\naddresses = [\"192.0.2.1\"]\npools = [\"p\"]\n\n\
         [[pool]]\nname = \"p\"\nbackends = [{{ addr = \"{}\" }}]\n\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n",
        backend.addr
    )
}

async fn post(geolb: &Geolb, path: &str, token: Option<&str>) -> (u16, http::HeaderMap, String) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    let (code, headers, body) = request(geolb.admin, "POST", path, &headers, Bytes::new())
        .await
        .expect("POST");
    (code, headers, String::from_utf8_lossy(&body).into_owned())
}

fn datacenter_override(status: &serde_json::Value) -> String {
    status["datacenters"][0]["override"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn backend_override(status: &serde_json::Value) -> String {
    status["pools"][0]["backends"][0]["override"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn admin_posts_need_the_token_and_reads_stay_open() {
    let a = Backend::start("a").await;
    let (_token_dir, file) = token_file("first-token\nnot part of the token\n");
    let geolb = Geolb::start(&config_with_token(Some(&file), &a)).await;

    // Refused without a token or with a wrong one, changing nothing.
    for token in [None, Some("wrong"), Some("first-token-and-more"), Some("")] {
        let (code, headers, body) = post(&geolb, "/datacenters/one/drain", token).await;
        assert_eq!(code, 401, "{token:?}: {body}");
        assert!(
            headers["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer"),
            "{headers:?}"
        );
        assert!(body.contains("unauthorized"), "{body}");
        let (code, _, _) = post(&geolb, &format!("/backends/{}/down", a.addr), token).await;
        assert_eq!(code, 401);
        let (code, _, _) = post(&geolb, "/reload", token).await;
        assert_eq!(code, 401);
    }
    // Reads are open, and show that nothing changed.
    let status = geolb.status().await;
    assert_eq!(status["config_generation"], 1, "no reload happened");
    assert_eq!(datacenter_override(&status), "auto");
    assert_eq!(backend_override(&status), "auto");
    for path in ["/healthz", "/metrics", "/", "/datacenters/one"] {
        let (code, _, _) = get(geolb.admin, path, &[]).await.unwrap();
        assert_eq!(code, 200, "GET {path}");
    }
    let metrics = geolb.metrics().await;
    for result in ["success", "failure"] {
        let series = format!("geolb_config_reloads_total{{result=\"{result}\"}} 0");
        assert!(
            metrics.contains(&series),
            "a refused reload is not even tried: {metrics}"
        );
    }

    // The right token: the override and the reload happen.
    let (code, _, body) = post(&geolb, "/datacenters/one/drain", Some("first-token")).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(datacenter_override(&geolb.status().await), "drain");
    let (code, _, body) = post(&geolb, "/reload", Some("first-token")).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(geolb.status().await["config_generation"], 2);

    // A new token is read by the next reload: the old one is refused after it.
    std::fs::write(&file, "second-token\n").unwrap();
    let (code, _, body) = post(&geolb, "/reload", Some("first-token")).await;
    assert_eq!(code, 200, "{body}");
    let (code, _, _) = post(&geolb, "/datacenters/one/auto", Some("first-token")).await;
    assert_eq!(code, 401);
    assert_eq!(datacenter_override(&geolb.status().await), "drain");
    let (code, _, _) = post(&geolb, "/datacenters/one/auto", Some("second-token")).await;
    assert_eq!(code, 200);
    assert_eq!(datacenter_override(&geolb.status().await), "auto");

    // An emptied token file refuses the reload, naming the key; the token
    // in force stays.
    std::fs::write(&file, "\n").unwrap();
    let (code, _, body) = post(&geolb, "/reload", Some("second-token")).await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("admin.token_file"), "{body}");
    assert!(body.contains("empty"), "{body}");
    let (code, _, _) = post(&geolb, "/reload", Some("second-token")).await;
    assert_eq!(
        code, 400,
        "still refused (the file is still empty), not 401"
    );
    let (code, _, _) = post(&geolb, "/reload", None).await;
    assert_eq!(code, 401);
}

#[tokio::test]
async fn a_reload_adds_and_removes_the_token() {
    let a = Backend::start("a").await;
    let (_token_dir, file) = token_file("the-token\n");
    let geolb = Geolb::start(&config_with_token(None, &a)).await;
    // Through the harness, which keeps the test's state directory in the
    // config: written raw, the reloaded daemon saved the drain below in
    // the machine's /var/lib/geolb.
    geolb
        .write_config(&config_with_token(Some(&file), &a))
        .unwrap();
    let (code, _, body) = post(&geolb, "/reload", None).await;
    assert_eq!(code, 200, "token_file is not a restart-only change: {body}");
    let (code, _, _) = post(&geolb, "/datacenters/one/drain", None).await;
    assert_eq!(code, 401);
    geolb.write_config(&config_with_token(None, &a)).unwrap();
    let (code, _, body) = post(&geolb, "/reload", Some("the-token")).await;
    assert_eq!(code, 200, "{body}");
    let (code, _, _) = post(&geolb, "/datacenters/one/drain", None).await;
    assert_eq!(code, 200);
}

#[tokio::test]
async fn check_names_admin_token_file_when_it_is_missing_or_empty() {
    let a = Backend::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such.token");
    let (ok, _, stderr) = support::geolb_check(&config_with_token(Some(&missing), &a));
    assert!(!ok);
    assert!(stderr.contains("admin.token_file"), "{stderr}");
    assert!(stderr.contains("no-such.token"), "{stderr}");
    for empty in ["", "  \n", "\nthe first line is empty\n"] {
        let (_token_dir, file) = token_file(empty);
        let (ok, _, stderr) = support::geolb_check(&config_with_token(Some(&file), &a));
        assert!(!ok, "{empty:?}");
        assert!(stderr.contains("admin.token_file"), "{stderr}");
        assert!(stderr.contains("empty"), "{stderr}");
    }
    let (_token_dir, file) = token_file("fine\n");
    let (ok, _, stderr) = support::geolb_check(&config_with_token(Some(&file), &a));
    assert!(ok, "{stderr}");
}

#[tokio::test]
async fn geolb_reload_and_status_talk_to_the_running_daemon() {
    let a = Backend::start("a").await;
    let (_token_dir, file) = token_file("the-token\n");
    let cfg = config_with_token(Some(&file), &a);
    let geolb = Geolb::start(&cfg).await;
    let admin = geolb.admin.to_string();
    let token = file.to_str().unwrap();
    let config = geolb.config_path();
    let config = config.to_str().unwrap();

    // The contract's form, then the token taken from the config.
    let (ok, stdout, stderr) =
        geolb_command(&["reload", "--admin", &admin, "--token-file", token]).await;
    assert!(ok, "{stderr}");
    let summary: serde_json::Value = serde_json::from_str(&stdout).expect("the JSON summary");
    assert_eq!(summary["config_generation"], 2, "{stdout}");
    let (ok, stdout, stderr) =
        geolb_command(&["reload", "--admin", &admin, "--config", config]).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("\"config_generation\": 3"), "{stdout}");

    // No token, a wrong one: 1, saying why, and no reload.
    let (ok, _, stderr) = geolb_command(&["reload", "--admin", &admin]).await;
    assert!(!ok);
    assert!(stderr.contains("401"), "{stderr}");
    assert!(stderr.contains("--token-file"), "{stderr}");
    let (_wrong_dir, wrong) = token_file("not-the-token\n");
    let (ok, _, stderr) = geolb_command(&[
        "reload",
        "--admin",
        &admin,
        "--token-file",
        wrong.to_str().unwrap(),
    ])
    .await;
    assert!(!ok);
    assert!(stderr.contains("401"), "{stderr}");
    assert_eq!(geolb.status().await["config_generation"], 3);

    // A bad config: 1, each error on its own line; the old config serves.
    std::fs::write(
        geolb.config_path(),
        cfg.replace(&a.addr.to_string(), "127.0.0.1"),
    )
    .unwrap();
    let (ok, stdout, stderr) =
        geolb_command(&["reload", "--config", config, "--admin", &admin]).await;
    assert!(!ok, "{stdout}");
    assert!(stderr.contains("refused"), "{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("line ") && l.contains("pool[0].backends[0].addr")),
        "{stderr}"
    );
    assert_eq!(geolb.status().await["config_generation"], 3);

    // Nobody listening: 1.
    let nobody = support::refused_addr().to_string();
    let (ok, _, stderr) = geolb_command(&["reload", "--admin", &nobody]).await;
    assert!(!ok);
    assert!(stderr.contains("cannot reach"), "{stderr}");

    // `geolb status`: the JSON, pretty; 1 when unreachable.
    let (ok, stdout, stderr) = geolb_command(&["status", "--admin", &admin]).await;
    assert!(ok, "{stderr}");
    let status: serde_json::Value = serde_json::from_str(&stdout).expect("status JSON");
    assert_eq!(status["config_generation"], 3);
    assert!(stdout.lines().count() > 10, "pretty-printed: {stdout}");
    let (ok, _, stderr) = geolb_command(&["status", "--admin", &nobody]).await;
    assert!(!ok);
    assert!(stderr.contains("cannot reach"), "{stderr}");
}

#[tokio::test]
async fn geolb_override_sets_and_clears_overrides() {
    let a = Backend::start("a").await;
    let (_token_dir, file) = token_file("the-token\n");
    let geolb = Geolb::start(&config_with_token(Some(&file), &a)).await;
    let admin = geolb.admin.to_string();
    let token = file.to_str().unwrap();
    let backend = a.addr.to_string();

    // `geolb override ARGS --admin A --token-file T`.
    let with_token = |args: &[&str]| {
        let mut all = vec!["override".to_owned()];
        all.extend(args.iter().map(|a| a.to_string()));
        all.extend(["--admin", &admin, "--token-file", token].map(str::to_owned));
        async move {
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            geolb_command(&all).await
        }
    };

    let (ok, stdout, stderr) = with_token(&["datacenter", "one", "drain"]).await;
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "data center one: drain");
    assert_eq!(datacenter_override(&geolb.status().await), "drain");
    // The flags may come before the target too.
    let (ok, _, stderr) = geolb_command(&[
        "override",
        "--admin",
        &admin,
        "--token-file",
        token,
        "backend",
        &backend,
        "down",
    ])
    .await;
    assert!(ok, "{stderr}");
    assert_eq!(backend_override(&geolb.status().await), "down");
    // One pool only, against the daemon's per-pool endpoint.
    let (ok, stdout, stderr) = with_token(&["backend", &backend, "--pool", "p", "drain"]).await;
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), format!("backend {backend} (pool p): drain"));
    let status = geolb.status().await;
    assert_eq!(status["pools"][0]["backends"][0]["override_scope"], "pool");
    let (ok, _, stderr) = with_token(&["backend", &backend, "--pool", "p", "auto"]).await;
    assert!(ok, "{stderr}");

    // Refusals exit 1 and change nothing.
    let (ok, _, stderr) =
        geolb_command(&["override", "datacenter", "one", "auto", "--admin", &admin]).await;
    assert!(!ok);
    assert!(stderr.contains("401"), "{stderr}");
    let (ok, _, stderr) = with_token(&["datacenter", "nowhere", "drain"]).await;
    assert!(!ok);
    assert!(stderr.contains("404"), "{stderr}");
    let (ok, _, stderr) = with_token(&["datacenter", "one", "sideways"]).await;
    assert!(!ok);
    assert!(stderr.contains("drain, down, auto"), "{stderr}");
    assert_eq!(datacenter_override(&geolb.status().await), "drain");

    for target in [["datacenter", "one"], ["backend", backend.as_str()]] {
        let (ok, _, stderr) = with_token(&[target[0], target[1], "auto"]).await;
        assert!(ok, "{stderr}");
    }
    let status = geolb.status().await;
    assert_eq!(datacenter_override(&status), "auto");
    assert_eq!(backend_override(&status), "auto");
}

/// `geolb override backend ADDR --pool POOL` sends the per-pool request
/// (the admin listener here records it and answers 200).
#[tokio::test]
async fn geolb_override_with_a_pool_posts_to_the_pool_endpoint() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = listener.local_addr().unwrap().to_string();
    let recorded = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the request ended early");
            head.extend_from_slice(&buf[..n]);
        }
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 14\r\n\r\n10.0.0.1:80 ok")
            .await
            .unwrap();
        String::from_utf8(head).unwrap()
    });
    let (_token_dir, file) = token_file("the-token\n");
    let (ok, stdout, stderr) = geolb_command(&[
        "override",
        "backend",
        "10.0.0.1:80",
        "drain",
        "--pool",
        "web-eu",
        "--admin",
        &admin,
        "--token-file",
        file.to_str().unwrap(),
    ])
    .await;
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "10.0.0.1:80 ok");
    let head = bounded(Duration::from_secs(10), "the request", recorded)
        .await
        .unwrap();
    assert!(
        head.starts_with("POST /pools/web-eu/backends/10.0.0.1:80/drain HTTP/1.1\r\n"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("authorization: bearer the-token\r\n"),
        "{head}"
    );
}

/// What the daemon tells systemd: a Unix datagram socket standing in for
/// `NOTIFY_SOCKET`.
struct Notifications {
    socket: tokio::net::UnixDatagram,
    /// What `NOTIFY_SOCKET` is set to.
    name: String,
    /// Holds a path socket's directory.
    _dir: Option<tempfile::TempDir>,
}

impl Notifications {
    /// On a path in a temporary directory.
    fn at_path() -> Notifications {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = tokio::net::UnixDatagram::bind(&path).unwrap();
        Notifications {
            socket,
            name: path.to_str().unwrap().to_owned(),
            _dir: Some(dir),
        }
    }

    /// In the abstract namespace (`@name`).
    fn abstract_name(tag: &str) -> Notifications {
        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("geolb-test-{}-{tag}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let std_socket = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
        std_socket.set_nonblocking(true).unwrap();
        Notifications {
            socket: tokio::net::UnixDatagram::from_std(std_socket).unwrap(),
            name: format!("@{name}"),
            _dir: None,
        }
    }

    /// The next datagram.
    async fn next(&self) -> String {
        let mut buf = vec![0u8; 4096];
        let n = bounded(
            Duration::from_secs(15),
            "a notification",
            self.socket.recv(&mut buf),
        )
        .await
        .unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    /// The next datagram with the line `line`, skipping watchdog pings.
    async fn until(&self, line: &str) -> String {
        loop {
            let message = self.next().await;
            if message.lines().any(|l| l == line) {
                return message;
            }
        }
    }

    /// The next datagram that is not a watchdog ping.
    async fn next_state(&self) -> String {
        loop {
            let message = self.next().await;
            if message != "WATCHDOG=1" {
                return message;
            }
        }
    }
}

fn monotonic_usec() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    now.tv_sec() as u64 * 1_000_000 + now.tv_nsec() as u64 / 1_000
}

/// The value of `KEY=` in a notification.
fn field<'a>(message: &'a str, key: &str) -> Option<&'a str> {
    message
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

/// A pool "p" whose backend is checked: READY=1 must wait for its first result.
fn checked_config(backend: &Backend) -> String {
    config_with_token(None, backend).replace(
        "name = \"p\"\n",
        "name = \"p\"\ncheck = { kind = \"http\", path = \"/health\", interval = \"100ms\", timeout = \"2s\", rise = 2, fall = 2 }\n",
    )
}

#[tokio::test]
async fn systemd_hears_ready_reloading_and_stopping() {
    let a = Backend::start("a").await;
    let notes = Notifications::at_path();
    let mut geolb = Geolb::spawn(&checked_config(&a), &[("NOTIFY_SOCKET", &notes.name)]);

    // READY=1 is the first word, and everything serves by then: the admin
    // listener, the proxy, and the backend's first check result.
    let ready = notes.next().await;
    assert_eq!(field(&ready, "READY"), Some("1"), "{ready}");
    assert!(
        field(&ready, "STATUS").is_some_and(|s| s.contains("generation 1")),
        "{ready}"
    );
    geolb.wait_started().await;
    assert_eq!(geolb.backend_state("p", a.addr).await, "up");
    let (code, _, body) = get(geolb.listener("web"), "/", &[]).await.unwrap();
    assert_eq!((code, body.as_ref()), (200, b"a".as_ref()));

    // A reload by SIGHUP: RELOADING=1 stamped with CLOCK_MONOTONIC, then READY=1.
    let before = monotonic_usec();
    geolb.signal("HUP");
    let reloading = notes.next_state().await;
    let after = monotonic_usec();
    assert_eq!(field(&reloading, "RELOADING"), Some("1"), "{reloading}");
    let stamp: u64 = field(&reloading, "MONOTONIC_USEC")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC: {reloading}"));
    assert!(
        before <= stamp && stamp <= after,
        "{before} <= {stamp} <= {after}"
    );
    let ready = notes.next_state().await;
    assert_eq!(field(&ready, "READY"), Some("1"), "{ready}");
    assert!(
        field(&ready, "STATUS").is_some_and(|s| s.contains("generation 2")),
        "{ready}"
    );

    // A refused reload (POST /reload) ends with READY=1 too, saying so.
    std::fs::write(geolb.config_path(), "[[pool]]\nname = 1\n").unwrap();
    let (code, _, _) = request(geolb.admin, "POST", "/reload", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(code, 400);
    let reloading = notes.next_state().await;
    assert_eq!(field(&reloading, "RELOADING"), Some("1"), "{reloading}");
    let ready = notes.next_state().await;
    assert_eq!(field(&ready, "READY"), Some("1"), "{ready}");
    assert!(
        field(&ready, "STATUS").is_some_and(|s| s.contains("reload refused")),
        "{ready}"
    );

    geolb.signal("TERM");
    let stopping = notes.next_state().await;
    assert_eq!(field(&stopping, "STOPPING"), Some("1"), "{stopping}");
    assert!(geolb.wait_exit(Duration::from_secs(10)).await.success());
}

#[tokio::test]
async fn the_watchdog_is_fed_every_half_period_on_an_abstract_socket() {
    let a = Backend::start("a").await;
    let notes = Notifications::abstract_name("watchdog");
    let mut geolb = Geolb::spawn(
        &config_with_token(None, &a),
        &[("NOTIFY_SOCKET", &notes.name), ("WATCHDOG_USEC", "200000")],
    );
    notes.until("READY=1").await;
    let first = std::time::Instant::now();
    for _ in 0..5 {
        notes.until("WATCHDOG=1").await;
    }
    // Five pings 100 ms apart: at least 400 ms after the first.
    assert!(
        first.elapsed() >= Duration::from_millis(350),
        "{:?}",
        first.elapsed()
    );
    geolb.signal("TERM");
    notes.until("STOPPING=1").await;
    assert!(geolb.wait_exit(Duration::from_secs(10)).await.success());

    // WATCHDOG_PID names another process: the watchdog is not ours to feed.
    let notes = Notifications::abstract_name("other-pid");
    let _geolb = Geolb::spawn(
        &config_with_token(None, &a),
        &[
            ("NOTIFY_SOCKET", &notes.name),
            ("WATCHDOG_USEC", "200000"),
            ("WATCHDOG_PID", "1"),
        ],
    );
    notes.until("READY=1").await;
    let ping = tokio::time::timeout(Duration::from_millis(700), notes.until("WATCHDOG=1")).await;
    assert!(ping.is_err(), "a ping for another process's watchdog");
}

/// `systemd-analyze ARGS`, or None where systemd-analyze is not installed.
fn systemd_analyze(args: &[&std::ffi::OsStr]) -> Option<std::process::Output> {
    std::process::Command::new("systemd-analyze")
        .args(args)
        .output()
        .ok()
}

#[test]
fn the_systemd_unit_is_notify_reloads_through_geolb_and_is_sandboxed() {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/geolb.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let has = |line: &str| lines.contains(&line);
    assert!(has("Type=notify"));
    assert!(has(
        "ExecStartPre=/usr/local/bin/geolb check --config /etc/geolb/geolb.toml"
    ));
    assert!(has(
        "ExecReload=/usr/local/bin/geolb reload --config /etc/geolb/geolb.toml"
    ));
    assert!(has("StateDirectory=geolb"));

    // Exposure as systemd rates it (skipped where systemd-analyze is absent).
    let Some(out) = systemd_analyze(&[
        "security".as_ref(),
        "--offline=true".as_ref(),
        unit.as_os_str(),
    ]) else {
        return;
    };
    let report = String::from_utf8_lossy(&out.stdout);
    let score: f64 = report
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for geolb.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no exposure level in:\n{report}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert!(score <= 2.0, "exposure {score}:\n{report}");

    // The unit verifies, once its commands point at a binary that exists.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("geolb.service");
    std::fs::write(
        &copy,
        text.replace("/usr/local/bin/geolb", env!("CARGO_BIN_EXE_geolb")),
    )
    .unwrap();
    let out = systemd_analyze(&["verify".as_ref(), copy.as_os_str()]).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
}
