//! What an on-call engineer reads, through the real binary on port 0:
//! process and build series, reload gauges, health-check results and
//! their reasons, series present at 0 from the start and gone after a
//! reload removes what they count, the status page in a real browser, and
//! the Prometheus alerting rules under `promtool test rules`.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use support::library::promtool_check;
use support::{Backend, Geolb, bounded, eventually, metric_value as value, refused_addr, request};

const WAIT: Duration = Duration::from_secs(10);

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

const DNS: &str = "[dns]\nlisten = [\"127.0.0.1:0\"]\n\
    [[dns.zone]]\norigin = \"example.test\"\n\
    soa = { mname = \"ns1.example.test.\", rname = \"hostmaster.example.test.\", serial = 1, refresh = \"1h\", retry = \"10m\", expire = \"14d\", minimum = \"60s\" }\n\
    ns = [\"ns1.example.test.\"]\n\
    [[dns.geo]]\nname = \"www.example.test\"\n";

/// Two clients' places, as the status page names them.
const NETWORKS: &str = "[[geoip.network]]\ncidr = \"10.1.0.0/16\"\nlocation = { lat = 48.85, lon = 2.35 }\ncountry = \"FR\"\n\
    [[geoip.network]]\ncidr = \"10.2.0.0/16\"\nlocation = { lat = 40.71, lon = -74.0 }\ncountry = \"US\"\n";

/// `web` (http) -> pool `web` (`web_backends`, http check every 100 ms)
/// in data center `paris`; with `extra`: a tcp listener `db` -> pool `db`
/// in data center `newyork`, taking PROXY headers from its clients.
fn config(web_backends: &[SocketAddr], extra: Option<SocketAddr>) -> String {
    let list: Vec<String> = web_backends
        .iter()
        .map(|a| format!("{{ addr = \"{a}\" }}"))
        .collect();
    let mut text = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[geoip]\n{NETWORKS}\n{DNS}\n\
         [[datacenter]]\nname = \"paris\"\nlocation = {{ lat = 48.85, lon = 2.35 }}\naddresses = [\"192.0.2.1\"]\npools = [\"web\"]\n\
         [[pool]]\nname = \"web\"\nmin_healthy = 1\n\
         check = {{ kind = \"http\", path = \"/health\", expect = 200, interval = \"100ms\", timeout = \"500ms\", rise = 1, fall = 1 }}\n\
         backends = [{}]\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\n",
        list.join(", ")
    );
    if let Some(db) = extra {
        text.push_str(&format!(
            "[[datacenter]]\nname = \"newyork\"\nlocation = {{ lat = 40.71, lon = -74.0 }}\naddresses = [\"192.0.2.2\"]\npools = [\"db\"]\n\
             [[pool]]\nname = \"db\"\ncheck = {{ kind = \"tcp\", interval = \"100ms\", timeout = \"500ms\" }}\nbackends = [{{ addr = \"{db}\" }}]\n\
             [[listener]]\nname = \"db\"\nbind = \"127.0.0.1:0\"\nprotocol = \"tcp\"\npool = \"db\"\naccept_proxy_protocol = true\n"
        ));
    }
    text
}

async fn reload(geolb: &Geolb) -> u16 {
    request(geolb.admin, "POST", "/reload", &[], Bytes::new())
        .await
        .expect("POST /reload")
        .0
}

#[tokio::test]
async fn process_and_build_series() {
    let web = Backend::start("web").await;
    let geolb = Geolb::start(&config(&[web.addr], None)).await;
    let metrics = geolb.metrics().await;
    let get = |name: &str| value(&metrics, name).unwrap_or_else(|| panic!("no {name}:\n{metrics}"));
    let (open, max) = (get("process_open_fds"), get("process_max_fds"));
    assert!(open > 0.0 && max >= open, "open {open}, max {max}");
    assert!(get("process_resident_memory_bytes") > 1e6);
    assert!(get("process_virtual_memory_bytes") >= get("process_resident_memory_bytes"));
    assert!(get("process_cpu_seconds_total") >= 0.0);
    let started = get("process_start_time_seconds");
    assert!(
        started <= unix_now() + 1.0 && started > unix_now() - 120.0,
        "start time {started}"
    );

    // The commit this test was built from, as git says; `unknown` without git.
    let git = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8(o.stdout).unwrap().trim().to_owned());
    let commit = std::env::var("GEOLB_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or(git)
        .unwrap_or_else(|| "unknown".to_owned());
    let build = format!(
        "geolb_build_info{{version=\"{}\",commit=\"{commit}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(value(&metrics, &build), Some(1.0), "{metrics}");
    promtool_check(&metrics);
}

#[tokio::test]
async fn reload_gauges_flip_on_a_failed_and_a_good_reload() {
    const OK: &str = "geolb_config_last_reload_successful";
    const WHEN: &str = "geolb_config_last_reload_success_timestamp_seconds";
    let web = Backend::start("web").await;
    let good = config(&[web.addr], None);
    let geolb = Geolb::start(&good).await;
    let metrics = geolb.metrics().await;
    assert_eq!(value(&metrics, OK), Some(1.0), "{metrics}");
    let first = value(&metrics, WHEN).unwrap();
    assert!((unix_now() - first).abs() < 60.0, "start-up time {first}");

    geolb
        .write_config(&good.replace("min_healthy = 1", "min_healthy = -1"))
        .unwrap();
    assert_eq!(reload(&geolb).await, 400);
    let metrics = geolb.metrics().await;
    assert_eq!(value(&metrics, OK), Some(0.0), "{metrics}");
    assert_eq!(
        value(&metrics, WHEN),
        Some(first),
        "a failure moved the time"
    );

    // Timestamps have millisecond resolution or better: a later success shows.
    tokio::time::sleep(Duration::from_millis(20)).await;
    geolb.write_config(&good).unwrap();
    assert_eq!(reload(&geolb).await, 200);
    let metrics = geolb.metrics().await;
    assert_eq!(value(&metrics, OK), Some(1.0), "{metrics}");
    assert!(value(&metrics, WHEN).unwrap() > first);
    promtool_check(&metrics);
}

/// The `last_check` of backend `addr` in pool `web` per /status.
async fn last_check(geolb: &Geolb, addr: SocketAddr) -> serde_json::Value {
    let status = geolb.status().await;
    status["pools"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["addr"] == addr.to_string())
        .map(|b| b["last_check"].clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn health_reasons_for_a_refused_connect_and_a_500() {
    let refused = refused_addr();
    let failing = Backend::start("failing").await;
    failing.set_health(500);
    let geolb = Geolb::start(&config(&[refused, failing.addr], None)).await;
    eventually("both checks failed once", WAIT, || async {
        last_check(&geolb, refused).await["result"] == "fail"
            && last_check(&geolb, failing.addr).await["result"] == "fail"
    })
    .await;
    let check = last_check(&geolb, refused).await;
    let reason = check["reason"].as_str().unwrap().to_lowercase();
    assert!(
        reason.contains("connect") && reason.contains("refused"),
        "{check}"
    );
    assert!(check["duration"].as_f64().unwrap() < 0.5, "{check}");
    assert!(
        (unix_now() - check["at"].as_f64().unwrap()).abs() < 30.0,
        "{check}"
    );
    let check = last_check(&geolb, failing.addr).await;
    assert!(
        check["reason"].as_str().unwrap().contains("status 500"),
        "{check}"
    );

    let metrics = geolb.metrics().await;
    let labels = |addr: SocketAddr| format!("{{pool=\"web\",backend=\"{addr}\"}}");
    for addr in [refused, failing.addr] {
        let failures = value(
            &metrics,
            &format!("geolb_health_check_failures_total{}", labels(addr)),
        );
        assert!(failures.is_some_and(|n| n >= 1.0), "{metrics}");
        let probes = value(
            &metrics,
            &format!("geolb_health_check_duration_seconds_count{}", labels(addr)),
        );
        assert!(probes.is_some_and(|n| n >= 1.0), "{metrics}");
    }
    let changed = |metrics: &str| {
        value(
            metrics,
            &format!(
                "geolb_backend_last_change_timestamp_seconds{}",
                labels(failing.addr)
            ),
        )
        .unwrap()
    };
    let down_since = changed(&metrics);
    assert!((unix_now() - down_since).abs() < 30.0, "{metrics}");
    promtool_check(&metrics);

    // Healthy again: the check passes, with no reason, and the change is dated.
    failing.set_health(200);
    eventually("the check passes", WAIT, || async {
        last_check(&geolb, failing.addr).await["result"] == "pass"
    })
    .await;
    assert_eq!(last_check(&geolb, failing.addr).await["reason"], "");
    assert!(changed(&geolb.metrics().await) > down_since);
}

/// Lines of `metrics` that are samples (not comments) naming `needle`.
fn samples_with<'a>(metrics: &'a str, needle: &str) -> Vec<&'a str> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains(needle))
        .collect()
}

#[tokio::test]
async fn series_present_at_zero_then_gone_with_what_they_count() {
    let web = Backend::start("web").await;
    let gone = Backend::start("gone").await;
    let db = Backend::start("db").await;
    let full = config(&[web.addr, gone.addr], Some(db.addr));
    let geolb = Geolb::start(&full).await;
    let metrics = geolb.metrics().await;
    let zero = [
        "geolb_http_request_duration_seconds_count{listener=\"web\",pool=\"web\"}".to_owned(),
        "geolb_http_retries_total{listener=\"web\",pool=\"web\"}".to_owned(),
        "geolb_tcp_connections_total{listener=\"db\",pool=\"db\"}".to_owned(),
        "geolb_tcp_connect_errors_total{listener=\"db\",pool=\"db\"}".to_owned(),
        "geolb_tcp_bytes_total{listener=\"db\",pool=\"db\",direction=\"in\"}".to_owned(),
        "geolb_tcp_bytes_total{listener=\"db\",pool=\"db\",direction=\"out\"}".to_owned(),
        "geolb_dns_geo_answers_total{name=\"www.example.test\",datacenter=\"newyork\"}".to_owned(),
        "geolb_dns_geo_answers_total{name=\"www.example.test\",datacenter=\"paris\"}".to_owned(),
        format!(
            "geolb_health_check_failures_total{{pool=\"db\",backend=\"{}\"}}",
            db.addr
        ),
        format!(
            "geolb_health_check_failures_total{{pool=\"web\",backend=\"{}\"}}",
            gone.addr
        ),
        "geolb_listener_connections_limited_total{listener=\"db\"}".to_owned(),
        "geolb_proxy_protocol_errors_total{listener=\"db\"}".to_owned(),
    ];
    for series in &zero {
        assert_eq!(value(&metrics, series), Some(0.0), "{series}:\n{metrics}");
    }
    for rcode in ["NOERROR", "SERVFAIL", "REFUSED", "NXDOMAIN"] {
        for qtype in ["A", "AAAA", "other"] {
            let series = format!("geolb_dns_queries_total{{qtype=\"{qtype}\",rcode=\"{rcode}\"}}");
            assert_eq!(value(&metrics, &series), Some(0.0), "{series}:\n{metrics}");
        }
    }
    let min = value(&metrics, "geolb_pool_min_healthy_backends{pool=\"web\"}");
    assert_eq!(min, Some(1.0), "{metrics}");
    promtool_check(&metrics);

    // One connection through the tcp listener, so the removed series are
    // not merely zeros that happen to be left out.
    let mut conn = tokio::net::TcpStream::connect(geolb.listener("db"))
        .await
        .unwrap();
    use tokio::io::AsyncWriteExt;
    conn.write_all(b"PROXY TCP4 192.0.2.7 192.0.2.8 4711 80\r\nGET / HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    drop(conn);
    eventually("the tcp connection counted", WAIT, || async {
        let metrics = geolb.metrics().await;
        value(
            &metrics,
            "geolb_tcp_connections_total{listener=\"db\",pool=\"db\"}",
        ) == Some(1.0)
    })
    .await;

    geolb.write_config(&config(&[web.addr], None)).unwrap();
    assert_eq!(reload(&geolb).await, 200);
    let metrics = geolb.metrics().await;
    for needle in [
        "pool=\"db\"".to_owned(),
        "listener=\"db\"".to_owned(),
        "datacenter=\"newyork\"".to_owned(),
        format!("backend=\"{}\"", gone.addr),
    ] {
        let left = samples_with(&metrics, &needle);
        assert!(left.is_empty(), "{needle} left after the reload: {left:#?}");
    }
    for series in &zero[..2] {
        assert_eq!(value(&metrics, series), Some(0.0), "{series}:\n{metrics}");
    }
    assert!(
        !metrics.contains("geolb_tcp_connections_total{"),
        "{metrics}"
    );
    promtool_check(&metrics);
}

/// Chromium, if installed: `chromium` or `chromium-browser`.
fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser"].into_iter().find(|name| {
        std::process::Command::new(name)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Runs headless Chromium with `args` (a fresh profile each time), within
/// a deadline; its stdout.
async fn run_chromium(browser: &str, profile: &Path, args: &[String]) -> String {
    let run = tokio::process::Command::new(browser)
        .args([
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = bounded(Duration::from_secs(60), "chromium", run)
        .await
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The status page in a real browser: what it renders names each
/// backend's last check and why it failed, the data centers with the geo
/// names they answer first for, and the traffic. Set `GEOLB_SCREENSHOT` to
/// a path (tests/status-page.png for the README) to keep the screenshot.
#[tokio::test]
async fn status_page_in_a_real_browser() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("GEOLB_REQUIRE_CHROMIUM").is_none(),
            "GEOLB_REQUIRE_CHROMIUM is set but chromium is not installed"
        );
        eprintln!(
            "SKIPPED status_page_in_a_real_browser: chromium is not installed (apt-get install chromium)"
        );
        return;
    };
    let refused = refused_addr();
    let failing = Backend::start("failing").await;
    failing.set_health(500);
    let web = Backend::start("web").await;
    let db = Backend::start("db").await;
    let geolb = Geolb::start(&config(&[web.addr, refused, failing.addr], Some(db.addr))).await;
    eventually("every check has a result", WAIT, || async {
        last_check(&geolb, refused).await["result"] == "fail"
            && last_check(&geolb, failing.addr).await["result"] == "fail"
            && last_check(&geolb, web.addr).await["result"] == "pass"
    })
    .await;
    for _ in 0..3 {
        let (code, _, _) = support::get(geolb.listener("web"), "/", &[("host", "x")])
            .await
            .unwrap();
        assert_eq!(code, 200);
    }
    let (code, _, _) = request(
        geolb.admin,
        "POST",
        "/datacenters/newyork/drain",
        &[],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(code, 200);

    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://{}/", geolb.admin);
    let dom = run_chromium(
        browser,
        profile.path(),
        &["--dump-dom".to_owned(), url.clone()],
    )
    .await;
    // The text a person reads, tags aside.
    let text = dom
        .split('<')
        .map(|part| part.split_once('>').map_or(part, |(_, t)| t))
        .collect::<Vec<_>>()
        .join(" ")
        .replace("&amp;", "&");
    let words = text.split_whitespace().collect::<Vec<_>>().join(" ");
    for want in [
        "geolb".to_owned(),
        format!("{refused} down"),
        "fail: connect: Connection refused".to_owned(),
        format!("{} down", failing.addr),
        "fail: status 500".to_owned(),
        format!("{} up", web.addr),
        // weight 1, 0 active, 3 responses, 0 failures: its own traffic.
        format!("{} up auto 1 0 3 0", web.addr),
        "pass".to_owned(),
        "paris up".to_owned(),
        "newyork drained drain db".to_owned(),
        "www.example.test ← 10.1.0.0/16 (FR)".to_owned(),
        "www.example.test ← 10.2.0.0/16 (US)".to_owned(),
        "3 requests".to_owned(),
        "0 5xx".to_owned(),
        "1 of 3 backends healthy (min 1)".to_owned(),
    ] {
        assert!(words.contains(&want), "{want:?} not on the page:\n{words}");
    }
    // Paris is the only data center up: it answers first for both places.
    let paris = words.split("paris up").nth(1).unwrap();
    let paris_row = paris.split("newyork").next().unwrap();
    assert!(paris_row.contains("(US)"), "{paris_row}");

    let shot: PathBuf = std::env::var_os("GEOLB_SCREENSHOT")
        .map(|p| Path::new(env!("CARGO_MANIFEST_DIR")).join(p))
        .unwrap_or_else(|| profile.path().join("status.png"));
    run_chromium(
        browser,
        profile.path(),
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1280,900".to_owned(),
            "--hide-scrollbars".to_owned(),
            url,
        ],
    )
    .await;
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "not a PNG"
    );
}

/// promtool is the judge; without it the rules go unchecked unless
/// `GEOLB_REQUIRE_PROMTOOL` says it must be there.
#[test]
fn alerting_rules_pass_promtool_check_and_their_unit_tests() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/prometheus");
    let promtool = |args: &[&str]| {
        std::process::Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
    };
    let checked = match promtool(&["check", "rules", "geolb.rules.yml"]) {
        Ok(out) => out,
        Err(e) => {
            let required = std::env::var_os("GEOLB_REQUIRE_PROMTOOL").is_some()
                || std::env::var_os("CI").is_some();
            assert!(!required, "promtool is required but cannot run: {e}");
            eprintln!("SKIPPED: promtool is not installed (Debian: apt-get install prometheus)");
            return;
        }
    };
    let said = |out: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    assert!(checked.status.success(), "{}", said(&checked));
    let tested = promtool(&["test", "rules", "geolb.rules.test.yml"]).unwrap();
    assert!(tested.status.success(), "{}", said(&tested));
    // Every alert of the rules file has a unit test where it fires and one
    // where it does not (`exp_alerts: []`).
    let rules = std::fs::read_to_string(dir.join("geolb.rules.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("geolb.rules.test.yml")).unwrap();
    let cases: Vec<(&str, bool)> = tests
        .split("alertname: ")
        .skip(1)
        .map(|case| {
            let name = case.split_whitespace().next().unwrap_or_default();
            let quiet = case
                .lines()
                .nth(1)
                .is_some_and(|l| l.trim() == "exp_alerts: []");
            (name, !quiet)
        })
        .collect();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 9, "{alerts:?}");
    for alert in alerts {
        for fires in [true, false] {
            assert!(
                cases.contains(&(alert, fires)),
                "alert {alert}: no unit test where it {}",
                if fires { "fires" } else { "stays quiet" }
            );
        }
    }
}
