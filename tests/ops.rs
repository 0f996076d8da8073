//! Operations, end to end through the real binary: the admin token, the
//! commands that talk to a running daemon (`geolb reload`, `status`,
//! `override`), systemd readiness notifications and the unit file.

mod support;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use support::{Backend, Geolb, get, request};

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

/// A token file in a directory of its own (the daemon's is made by
/// `Geolb::start`, after the config naming this file is written).
fn token_file(token: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("admin.token");
    std::fs::write(&file, token).unwrap();
    (dir, file)
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
