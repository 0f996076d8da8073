//! The README's "Recipes": every config block there passes `geolb check`,
//! and the ones that need no outside CA are served and behave as the
//! README says, through the real binary on port 0.

mod support;

use std::path::Path;
use std::time::Duration;

use support::library::Pki;
use support::{Backend, Geolb, get};

/// The ```toml blocks of the README's "## Recipes" section, in order.
fn recipes() -> Vec<String> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let start = readme.find("\n## Recipes\n").expect("a Recipes section");
    let section = &readme[start + 1..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    section
        .split("```toml\n")
        .skip(1)
        .map(|block| block.split("```").next().unwrap().to_owned())
        .collect()
}

/// The recipe whose README text just before its block names `title`.
fn recipe(title: &str) -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let at = readme
        .find(title)
        .unwrap_or_else(|| panic!("no recipe {title:?}"));
    let block = &readme[at..];
    let block = &block[block.find("```toml\n").unwrap() + 8..];
    block[..block.find("```").unwrap()].to_owned()
}

/// `config` with every listener on a free loopback port, the given
/// backends in place of the documentation addresses (in order), the
/// state directory in `dir`, and an admin listener (which the tests ask
/// for the listeners' ports).
fn on_loopback(config: &str, backends: &[&Backend], dir: &Path) -> String {
    let mut out = String::new();
    let mut next = backends.iter();
    for line in config.lines() {
        let mut line = line.to_owned();
        if line.starts_with("bind = ") {
            line = "bind = \"127.0.0.1:0\"".to_owned();
        }
        // Geolb::start writes the config elsewhere: files by absolute path.
        line = line.replace("\"certs/", &format!("\"{}/certs/", dir.display()));
        while let Some(at) = line.find("addr = \"10.") {
            let end = at + 8 + line[at + 8..].find('"').unwrap();
            let backend = next.next().expect("a backend for every address");
            line.replace_range(at..=end, &format!("addr = \"{}\"", backend.addr));
        }
        out.push_str(&line);
        out.push('\n');
    }
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [runtime]\nstate_dir = \"{}\"\nshutdown_grace = \"1s\"\n\n{out}",
        dir.display()
    )
}

/// A directory holding the files the recipes name (`certs/site.pem`,
/// `certs/site.key`, `certs/clients-ca.pem`), and its PKI.
fn files() -> (tempfile::TempDir, Pki) {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let site = pki.leaf("site", &["localhost"]);
    std::fs::create_dir(dir.path().join("certs")).unwrap();
    std::fs::copy(&site.cert, dir.path().join("certs/site.pem")).unwrap();
    std::fs::copy(&site.key, dir.path().join("certs/site.key")).unwrap();
    std::fs::copy(pki.ca_file(), dir.path().join("certs/clients-ca.pem")).unwrap();
    (dir, pki)
}

fn check(dir: &Path, config: &str) -> (bool, String) {
    let path = dir.join("geolb.toml");
    std::fs::write(&path, config).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_geolb"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn every_recipe_passes_geolb_check() {
    let recipes = recipes();
    assert_eq!(recipes.len(), 5, "five recipes: {recipes:#?}");
    let (dir, _pki) = files();
    let state = dir.path().join("state");
    for config in &recipes {
        let config = format!("[runtime]\nstate_dir = \"{}\"\n\n{config}", state.display());
        let (ok, text) = check(dir.path(), &config);
        assert!(ok, "geolb check refused a recipe:\n{config}\n{text}");
    }
}

#[tokio::test]
async fn http_to_https_redirects_with_path_and_query() {
    let web = Backend::start("web").await;
    let (dir, _pki) = files();
    let config = on_loopback(&recipe("**http → https in one line**"), &[&web], dir.path());
    let geolb = Geolb::start(&config).await;
    let (status, headers, _) = get(
        geolb.listener("http"),
        "/shop/cart?item=7",
        &[("host", "www.example.com")],
    )
    .await
    .unwrap();
    assert_eq!(status, 308);
    assert_eq!(
        headers["location"],
        "https://www.example.com/shop/cart?item=7"
    );
    assert_eq!(web.hits(), 0, "a redirect is never forwarded");
}

#[tokio::test]
async fn the_path_routed_api_strips_its_prefix_and_limits_methods() {
    let web = Backend::start("web").await;
    let (api1, api2) = (Backend::start("api").await, Backend::start("api").await);
    let (dir, _pki) = files();
    let config = on_loopback(
        &recipe("**A path-routed API with the prefix stripped**"),
        &[&web, &api1, &api2],
        dir.path(),
    );
    let geolb = Geolb::start(&config).await;
    let addr = geolb.listener("web");
    support::eventually("the api pool healthy", Duration::from_secs(10), || async {
        get(addr, "/api/v1/users", &[]).await.map(|r| r.2) == Ok("api".into())
    })
    .await;
    let (status, _, body) = get(addr, "/about", &[]).await.unwrap();
    assert_eq!((status, &body[..]), (200, &b"web"[..]));
    let (status, headers, _) = support::request(addr, "PUT", "/api/v1/users/7", &[], "x".into())
        .await
        .unwrap();
    assert_eq!(status, 405);
    assert_eq!(headers["allow"], "GET, HEAD, POST, DELETE");
}

#[tokio::test]
async fn sticky_sessions_set_a_cookie_that_later_requests_follow() {
    let backends = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ];
    let (dir, _pki) = files();
    let config = on_loopback(
        &recipe("**Sticky sessions**"),
        &backends.iter().collect::<Vec<_>>(),
        dir.path(),
    );
    let geolb = Geolb::start(&config).await;
    let addr = geolb.listener("app");
    support::eventually("a backend answering", Duration::from_secs(10), || async {
        get(addr, "/", &[]).await.is_ok_and(|r| r.0 == 200)
    })
    .await;
    let (_, headers, chosen) = get(addr, "/", &[]).await.unwrap();
    let cookie = headers["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.starts_with("SRV=") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_owned();
    for _ in 0..9 {
        let (status, headers, body) = get(addr, "/", &[("cookie", &pair)]).await.unwrap();
        assert_eq!((status, &body), (200, &chosen));
        assert!(headers.get("set-cookie").is_none());
    }
}
