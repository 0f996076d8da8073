//! Operating geolb: runtime overrides (correct everywhere they are read,
//! per pool or for every pool, kept across restarts), through the real
//! binary on port 0.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use support::{Backend, Geolb, backend_list, bounded, eventually, get, request};

const WAIT: Duration = Duration::from_secs(10);

/// Two data centers ("one" first in config order, "two"), a geo name, and
/// pools `p` (listener `web`) and `q` (listener `other`) sharing backends.
fn two_datacenters(backends: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[runtime]\nshutdown_grace = \"2s\"\n\n\
         [dns]\nlisten = [\"127.0.0.1:0\"]\n\
         [[dns.zone]]\norigin = \"mysite.com\"\n\
         soa = {{ mname = \"ns1.mysite.com.\", rname = \"hostmaster.mysite.com.\", serial = 1, refresh = \"1h\", retry = \"10m\", expire = \"14d\", minimum = \"60s\" }}\n\
         ns = [\"ns1.mysite.com.\"]\n\
         [[dns.geo]]\nname = \"api.mysite.com\"\n\
         [[datacenter]]\nname = \"one\"\nlocation = {{ lat = 0, lon = 0 }}\naddresses = [\"192.0.2.1\"]\npools = [\"p\"]\n\
         [[datacenter]]\nname = \"two\"\nlocation = {{ lat = 0, lon = 1 }}\naddresses = [\"192.0.2.2\"]\n\
         [[pool]]\nname = \"p\"\nbackends = [{backends}]\n\
         [[pool]]\nname = \"q\"\nbackends = [{backends}]\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
         [[listener]]\nname = \"other\"\nbind = \"127.0.0.1:0\"\npool = \"q\"\n"
    )
}

async fn post(geolb: &Geolb, path: &str) -> (u16, String) {
    let (code, _, body) = request(geolb.admin, "POST", path, &[], Bytes::new())
        .await
        .expect("admin request");
    (code, String::from_utf8_lossy(&body).into_owned())
}

async fn dns_addr(geolb: &Geolb) -> SocketAddr {
    geolb.dns_addr().await
}

/// The A records answered for `name`, asked over UDP from 127.0.0.1
/// without ECS (no location, so the configured order decides).
async fn answers(server: SocketAddr, name: &str) -> Vec<String> {
    support::dns_a_from(server, "127.0.0.1", name, None).await
}

fn metric_line<'a>(metrics: &'a str, prefix: &str) -> Option<&'a str> {
    metrics.lines().find(|l| l.starts_with(prefix))
}

fn backend_status(status: &serde_json::Value, pool: &str, addr: SocketAddr) -> serde_json::Value {
    let pool = status["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == pool)
        .unwrap_or_else(|| panic!("no pool {pool} in {status}"));
    pool["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["addr"] == addr.to_string())
        .unwrap_or_else(|| panic!("no backend {addr} in {pool}"))
        .clone()
}

#[tokio::test]
async fn a_datacenter_forced_down_is_down_everywhere_until_auto() {
    let a = Backend::start("a").await;
    let geolb = Geolb::start(&two_datacenters(&backend_list(&[&a]))).await;
    let dns = dns_addr(&geolb).await;
    assert_eq!(answers(dns, "api.mysite.com").await, ["192.0.2.1"]);

    let (code, body) = post(&geolb, "/datacenters/one/down").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(answers(dns, "api.mysite.com").await, ["192.0.2.2"]);
    let (code, _, body) = get(geolb.admin, "/datacenters/one", &[]).await.unwrap();
    assert_eq!((code, &body[..]), (503, &b"down\n"[..]));
    let status = geolb.status().await;
    let one = &status["datacenters"][0];
    assert_eq!(
        (&one["up"], &one["healthy"], &one["override"]),
        (&false.into(), &false.into(), &"down".into()),
        "{one}"
    );
    let metrics = geolb.metrics().await;
    assert_eq!(
        metric_line(&metrics, "geolb_datacenter_up{datacenter=\"one\"}"),
        Some("geolb_datacenter_up{datacenter=\"one\"} 0")
    );
    assert!(
        metrics.contains(
            "geolb_override_active{kind=\"datacenter\",target=\"one\",pool=\"\",state=\"down\"} 1"
        ),
        "{metrics}"
    );
    support::library::promtool_check(&metrics);
    // The drill's own traffic keeps flowing: HTTP is not DNS.
    let (code, _, _) = get(geolb.listener("web"), "/", &[]).await.unwrap();
    assert_eq!(code, 200);

    assert_eq!(post(&geolb, "/datacenters/one/auto").await.0, 200);
    assert_eq!(answers(dns, "api.mysite.com").await, ["192.0.2.1"]);
    let (code, _, _) = get(geolb.admin, "/datacenters/one", &[]).await.unwrap();
    assert_eq!(code, 200);
    let metrics = geolb.metrics().await;
    assert!(
        !metrics.contains("geolb_override_active{"),
        "auto leaves no override series: {metrics}"
    );
    assert_eq!(
        metric_line(&metrics, "geolb_datacenter_up{datacenter=\"one\"}"),
        Some("geolb_datacenter_up{datacenter=\"one\"} 1")
    );
}

#[tokio::test]
async fn a_backend_override_acts_in_one_pool_or_in_all_and_shows_where() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let geolb = Geolb::start(&two_datacenters(&backend_list(&[&a, &b]))).await;
    let path = |pool: &str, state: &str| format!("/pools/{pool}/backends/{}/{state}", b.addr);

    assert_eq!(post(&geolb, &path("p", "down")).await.0, 200);
    let status = geolb.status().await;
    let in_p = backend_status(&status, "p", b.addr);
    assert_eq!(
        (
            &in_p["state"],
            &in_p["up"],
            &in_p["override"],
            &in_p["override_scope"]
        ),
        (
            &"down".into(),
            &false.into(),
            &"down".into(),
            &"pool".into()
        ),
        "{in_p}"
    );
    let in_q = backend_status(&status, "q", b.addr);
    assert_eq!(
        (&in_q["state"], &in_q["override"]),
        (&"up".into(), &"auto".into())
    );
    assert!(in_q.get("override_scope").is_none(), "{in_q}");
    let metrics = geolb.metrics().await;
    let up = |pool: &str| format!("geolb_backend_up{{pool=\"{pool}\",backend=\"{}\"}}", b.addr);
    assert_eq!(
        metric_line(&metrics, &up("p")),
        Some(&*format!("{} 0", up("p")))
    );
    assert_eq!(
        metric_line(&metrics, &up("q")),
        Some(&*format!("{} 1", up("q")))
    );
    assert!(metrics.contains(&format!(
        "geolb_override_active{{kind=\"backend\",target=\"{}\",pool=\"p\",state=\"down\"}} 1",
        b.addr
    )));
    // Pool p sends nothing to b; pool q still does.
    let before = b.hits();
    for _ in 0..6 {
        get(geolb.listener("web"), "/", &[]).await.unwrap();
    }
    assert_eq!(b.hits(), before);
    for _ in 0..4 {
        get(geolb.listener("other"), "/", &[]).await.unwrap();
    }
    assert!(b.hits() > before);

    // Every pool: q's b is drained; p's own override still wins there.
    let (code, body) = post(&geolb, &format!("/backends/{}/drain", b.addr)).await;
    assert_eq!(code, 200, "{body}");
    let status = geolb.status().await;
    let in_q = backend_status(&status, "q", b.addr);
    assert_eq!(
        (&in_q["drain"], &in_q["override"], &in_q["override_scope"]),
        (&true.into(), &"drain".into(), &"all_pools".into())
    );
    assert_eq!(backend_status(&status, "p", b.addr)["override"], "down");
    // Back to auto in p: the every-pool drain shows through.
    assert_eq!(post(&geolb, &path("p", "auto")).await.0, 200);
    let in_p = backend_status(&geolb.status().await, "p", b.addr);
    assert_eq!(
        (&in_p["state"], &in_p["override"], &in_p["override_scope"]),
        (&"up".into(), &"drain".into(), &"all_pools".into())
    );

    // Wrong targets change nothing.
    assert_eq!(post(&geolb, &path("nope", "down")).await.0, 404);
    assert_eq!(
        post(&geolb, "/pools/p/backends/10.9.9.9:1/down").await.0,
        404
    );
    assert_eq!(
        post(&geolb, "/pools/p/backends/not-an-addr/down").await.0,
        404
    );
    assert_eq!(post(&geolb, &path("p", "sideways")).await.0, 400);
    assert_eq!(post(&geolb, "/pools/p/down").await.0, 404);
}

#[tokio::test]
async fn overrides_are_kept_in_the_state_dir_and_survive_a_restart() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let config = two_datacenters(&backend_list(&[&a, &b]));
    let state = tempfile::tempdir().unwrap();
    let mut first = Geolb::start_with_state(&config, Some(state.path())).await;
    assert_eq!(post(&first, "/datacenters/one/drain").await.0, 200);
    let (code, body) = post(&first, &format!("/pools/p/backends/{}/down", b.addr)).await;
    assert_eq!(code, 200);
    assert!(!body.contains("warning"), "saved: {body}");
    let saved = std::fs::read_to_string(state.path().join("overrides.json")).unwrap();
    assert!(
        saved.contains("\"one\"") && saved.contains(&b.addr.to_string()),
        "{saved}"
    );
    first.signal("TERM");
    assert!(first.wait_exit(WAIT).await.success());

    let second = Geolb::start_with_state(&config, Some(state.path())).await;
    let status = second.status().await;
    assert_eq!(status["datacenters"][0]["override"], "drain");
    assert_eq!(status["datacenters"][0]["up"], false);
    assert_eq!(backend_status(&status, "p", b.addr)["state"], "down");
    assert_eq!(
        answers(dns_addr(&second).await, "api.mysite.com").await,
        ["192.0.2.2"]
    );
    assert!(
        second.log().contains("runtime overrides restored"),
        "{}",
        second.log()
    );
    // Cleared, and cleared for the next start too.
    assert_eq!(post(&second, "/datacenters/one/auto").await.0, 200);
    let saved = std::fs::read_to_string(state.path().join("overrides.json")).unwrap();
    assert!(!saved.contains("\"one\""), "{saved}");
}

#[tokio::test]
async fn an_unwritable_state_dir_keeps_the_override_and_says_it_is_not_saved() {
    let a = Backend::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, b"").unwrap();
    let geolb =
        Geolb::start_with_state(&two_datacenters(&backend_list(&[&a])), Some(&blocker)).await;
    let (code, body) = post(&geolb, "/datacenters/one/drain").await;
    assert_eq!(code, 200);
    assert!(body.contains("warning: not saved"), "{body}");
    eventually("the drain acts", WAIT, || async {
        geolb.status().await["datacenters"][0]["up"] == false
    })
    .await;
}

/// What the clients of an upgrade test saw.
#[derive(Debug, Default)]
struct Seen {
    ok: u64,
    /// Connections refused or reset before a request could be sent.
    refused: u64,
    /// Requests that got no 200, even after the one retry a client makes
    /// when a kept-alive connection was closed before the request.
    failed: u64,
    /// Requests sent again because the server closed the kept-alive
    /// connection as the client reused it (RFC 9112 §9.3.1).
    resent: u64,
    dns_ok: u64,
    dns_lost: u64,
}

/// Until `stop`: requests on a new connection each (the accept path),
/// requests over one kept-alive connection, and DNS queries over UDP.
async fn load(web: SocketAddr, dns: SocketAddr, stop: tokio_util::sync::CancellationToken) -> Seen {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::TokioIo;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let stop = stop.clone();
        tasks.spawn(async move {
            let mut seen = Seen::default();
            while !stop.is_cancelled() {
                match request(web, "GET", "/", &[], Bytes::new()).await {
                    Ok((200, _, _)) => seen.ok += 1,
                    Err(e) if e.contains("refused") || e.contains("reset") => seen.refused += 1,
                    _ => seen.failed += 1,
                }
            }
            seen
        });
    }
    for _ in 0..3 {
        let stop = stop.clone();
        tasks.spawn(async move {
            let mut seen = Seen::default();
            let connect = || async {
                let stream = tokio::net::TcpStream::connect(web).await.ok()?;
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .ok()?;
                tokio::spawn(conn);
                Some(sender)
            };
            let mut sender = None;
            while !stop.is_cancelled() {
                let mut answered = false;
                // A server closing an idle kept-alive connection races the
                // next request on it: clients resend once on a fresh one.
                for _attempt in 0..2 {
                    if sender.as_ref().is_none_or(
                        |s: &hyper::client::conn::http1::SendRequest<Empty<Bytes>>| s.is_closed(),
                    ) {
                        sender = connect().await;
                    }
                    let Some(s) = sender.as_mut() else {
                        seen.refused += 1;
                        break;
                    };
                    let req = http::Request::get("/")
                        .header("host", "upgrade.test")
                        .body(Empty::<Bytes>::new())
                        .unwrap();
                    match s.send_request(req).await {
                        Ok(resp) => {
                            let code = resp.status();
                            let body = resp.into_body().collect().await;
                            answered = code == 200 && body.is_ok();
                            break;
                        }
                        Err(_) => {
                            seen.resent += 1;
                            sender = None
                        }
                    }
                }
                if answered {
                    seen.ok += 1;
                } else {
                    seen.failed += 1;
                }
            }
            seen
        });
    }
    {
        let stop = stop.clone();
        tasks.spawn(async move {
            let mut seen = Seen::default();
            // Paced under the response rate limit's 1,000 a second for one
            // client network: back to back (a release build asks faster
            // than that), answers past it were dropped by design.
            let mut pace = tokio::time::interval(Duration::from_millis(2));
            while !stop.is_cancelled() {
                pace.tick().await;
                let asked =
                    tokio::time::timeout(Duration::from_secs(2), answers(dns, "api.mysite.com"));
                match asked.await {
                    Ok(a) if !a.is_empty() => seen.dns_ok += 1,
                    _ => seen.dns_lost += 1,
                }
            }
            seen
        });
    }
    let mut all = Seen::default();
    while let Some(seen) = tasks.join_next().await {
        let seen = seen.unwrap();
        all.ok += seen.ok;
        all.refused += seen.refused;
        all.failed += seen.failed;
        all.resent += seen.resent;
        all.dns_ok += seen.dns_ok;
        all.dns_lost += seen.dns_lost;
    }
    all
}

/// `geolb run --takeover` under load, `GEOLB_UPGRADES` times (default 2):
/// every request and DNS query answered, the old process gone each time.
/// By hand, for the README's numbers:
/// `GEOLB_UPGRADES=20 cargo test --release --test operations upgrade -- --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_under_load_refuses_and_fails_nothing() {
    let upgrades: usize = std::env::var("GEOLB_UPGRADES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2);
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let config = two_datacenters(&backend_list(&[&a, &b]));
    let state = tempfile::tempdir().unwrap();
    let mut running = Geolb::start_with_state(&config, Some(state.path())).await;
    let (web, dns, admin) = (
        running.listener("web"),
        dns_addr(&running).await,
        running.admin,
    );
    assert_eq!(post(&running, "/datacenters/one/drain").await.0, 200);

    let stop = tokio_util::sync::CancellationToken::new();
    let clients = tokio::spawn(load(web, dns, stop.clone()));
    let mut took = Vec::new();
    for round in 0..upgrades {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = std::time::Instant::now();
        let next = Geolb::start_with(&config, Some(state.path()), &["--takeover"]).await;
        took.push(started.elapsed());
        // The same sockets: the same addresses.
        assert_eq!(
            (next.listener("web"), next.admin),
            (web, admin),
            "round {round}"
        );
        assert_eq!(dns_addr(&next).await, dns);
        assert!(
            running.wait_exit(WAIT).await.success(),
            "round {round}: the old process exits 0"
        );
        assert!(
            running
                .log()
                .contains("a new process took the sockets over"),
            "{}",
            running.log()
        );
        // Health and overrides carried over.
        let status = next.status().await;
        assert_eq!(status["datacenters"][0]["override"], "drain");
        running = next;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    let seen = clients.await.unwrap();
    took.sort();
    println!(
        "{upgrades} upgrades under load: {seen:?}; from start to serving: median {:?}, max {:?}",
        took[took.len() / 2],
        took[took.len() - 1]
    );
    assert_eq!(
        (seen.refused, seen.failed, seen.dns_lost),
        (0, 0, 0),
        "{seen:?}"
    );
    assert!(
        seen.ok > 100 && seen.dns_ok > 10,
        "the clients kept sending: {seen:?}"
    );
    assert_eq!(
        answers(dns, "api.mysite.com").await,
        ["192.0.2.2"],
        "the drain still acts after the upgrades"
    );
}

#[tokio::test]
async fn takeover_without_a_running_geolb_starts_normally() {
    let a = Backend::start("a").await;
    let geolb = Geolb::start_with(
        &two_datacenters(&backend_list(&[&a])),
        None,
        &["--takeover"],
    )
    .await;
    assert!(geolb.log().contains("starting normally"), "{}", geolb.log());
    let (code, _, _) = get(geolb.listener("web"), "/", &[]).await.unwrap();
    assert_eq!(code, 200);
}

/// A data center with addresses alone (GeoDNS only) stays valid and up, as
/// the contract has it; `geolb check` and the daemon say it is never checked.
#[tokio::test]
async fn a_data_center_nothing_checks_is_served_with_a_warning() {
    let a = Backend::start("a").await;
    let config = two_datacenters(&backend_list(&[&a]));
    let (ok, stdout, stderr) = support::geolb_check(&config);
    assert!(ok, "{stderr}");
    assert!(stdout.contains(": ok:"), "{stdout}");
    let line = config
        .lines()
        .position(|l| l == "name = \"two\"")
        .expect("the second data center");
    assert!(
        stderr.contains(&format!(
            "warning: line {line}: datacenter[1]: a data center with no pools and no check"
        )),
        "{stderr}"
    );
    let geolb = Geolb::start(&config).await;
    assert!(
        geolb.log().contains("config: line") && geolb.log().contains("datacenter[1]"),
        "{}",
        geolb.log()
    );
    assert_eq!(geolb.status().await["datacenters"][1]["up"], true);
    assert!(
        support::geolb_check(
            &config.replace("name = \"two\"\n", "name = \"two\"\nalways_up = true\n")
        )
        .2
        .is_empty()
    );
}

/// SIGUSR2 (nginx's binary upgrade): the daemon starts `geolb run
/// --takeover` itself, which takes the sockets over and tells systemd it
/// is the main process now; the old one exits.
#[tokio::test]
async fn sigusr2_starts_a_successor_that_takes_over() {
    let a = Backend::start("a").await;
    let config = two_datacenters(&backend_list(&[&a]));
    let notify_dir = tempfile::tempdir().unwrap();
    let notify_path = notify_dir.path().join("notify.sock");
    let notifications = tokio::net::UnixDatagram::bind(&notify_path).unwrap();
    let mut old = Geolb::spawn(&config, &[("NOTIFY_SOCKET", notify_path.to_str().unwrap())]);
    old.wait_started().await;
    let (web, admin) = (old.listener("web"), old.admin);
    let old_pid = old.pid();
    assert_eq!(old.status().await["pid"], old_pid);
    let next_message = || async {
        let mut buf = vec![0u8; 4096];
        let n = bounded(WAIT, "a notification", notifications.recv(&mut buf))
            .await
            .unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(next_message().await.starts_with("READY=1"));
    old.signal("USR2");
    assert!(old.wait_exit(WAIT).await.success(), "{}", old.log());

    let (code, _, body) = get(admin, "/status", &[])
        .await
        .expect("the successor's admin");
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let successor = status["pid"].as_u64().expect("a pid") as u32;
    assert_ne!(successor, old_pid);
    let (code, _, _) = get(web, "/", &[]).await.unwrap();
    assert_eq!(code, 200, "the successor serves the same listener");
    let mut seen = Vec::new();
    while !seen.iter().any(|m: &String| m.starts_with("READY=1")) {
        seen.push(next_message().await);
    }
    assert!(
        seen.iter().any(|m| m == &format!("MAINPID={successor}")),
        "{seen:?}"
    );

    // This test did not spawn the successor: stop it by its pid.
    let stopped = std::process::Command::new("kill")
        .args(["-TERM", &successor.to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    // Gone, or a zombie waiting for whichever process reaps orphans here.
    eventually("the successor exits", WAIT, || async {
        std::fs::read_to_string(format!("/proc/{successor}/stat")).map_or(true, |stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|s| s.trim_start().starts_with('Z'))
        })
    })
    .await;
}

/// Whether a mapping of `pid` named `name` (`[heap]`; "" for anonymous
/// memory, as glibc's thread arenas are) is marked for huge pages (`hg`).
fn marked_for_huge_pages(pid: u32, name: &str) -> bool {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut named = false;
    for line in smaps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // A mapping's lines begin with its address range and end with
        // `VmFlags`; its sixth field, when there is one, names it.
        if fields
            .first()
            .is_some_and(|f| f.contains('-') && !f.ends_with(':'))
        {
            named = fields.get(5).copied().unwrap_or("") == name;
        } else if named && fields.first() == Some(&"VmFlags:") && fields.contains(&"hg") {
            return true;
        }
    }
    false
}

/// `geolb run` marks its heap for huge pages where the kernel gives them,
/// and says so: with one worker the main heap, with more the workers'
/// arenas too; `huge_pages = false` leaves them alone.
#[tokio::test]
async fn geolb_serves_from_heaps_on_huge_pages_unless_told_not_to() {
    let a = Backend::start("a").await;
    let config = |huge_pages: bool, workers: u32| {
        two_datacenters(&backend_list(&[&a])).replacen(
            "[runtime]\n",
            &format!("[runtime]\nworker_threads = {workers}\nhuge_pages = {huge_pages}\n"),
            1,
        )
    };
    let mode =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    let offered = mode.contains("[always]") || mode.contains("[madvise]");

    for workers in [1, 2] {
        let marked = Geolb::start(&config(true, workers)).await;
        let (code, _, _) = get(marked.listener("web"), "/", &[]).await.unwrap();
        assert_eq!(code, 200);
        let log = marked.log();
        if offered {
            assert!(marked_for_huge_pages(marked.pid(), "[heap]"), "{log}");
            assert!(log.contains("heap on transparent huge pages"), "{log}");
            // With more workers than one, their arenas; with one, none.
            assert_eq!(marked_for_huge_pages(marked.pid(), ""), workers > 1);
        } else {
            assert!(log.contains("heap on 4 KiB pages"), "{log}");
        }
    }

    let left = Geolb::start(&config(false, 2)).await;
    let (code, _, _) = get(left.listener("web"), "/", &[]).await.unwrap();
    assert_eq!(code, 200);
    assert!(!marked_for_huge_pages(left.pid(), "[heap]"));
    assert!(!marked_for_huge_pages(left.pid(), ""));
    assert!(!left.log().contains("heap on"), "{}", left.log());
}
