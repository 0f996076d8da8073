//! `[cluster]` against a real etcd (Debian `etcd-server`, `/usr/bin/etcd`)
//! that each test starts on free loopback ports with a data directory of
//! its own: overrides given to one node change another node's answers;
//! with etcd out of reach every node keeps serving with the last state,
//! also across a restart; changes made while a node was cut off arrive
//! once it is back, each exactly once. Without the `etcd` binary these
//! tests say SKIPPED, unless GEOLB_REQUIRE_ETCD is set (CI).

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use support::{Geolb, dns_a_from, eventually, geolb_command, metric_value, request};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

const LIMIT: Duration = Duration::from_secs(30);
const NAME: &str = "api.mysite.com";
const ONE: &str = "192.0.2.1";
const TWO: &str = "192.0.2.2";

/// The etcd binary, or None (the test then skips) unless it is required.
fn etcd_binary() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("etcd"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("GEOLB_REQUIRE_ETCD").is_none(),
            "GEOLB_REQUIRE_ETCD is set but etcd is not installed (apt-get install etcd-server)"
        );
        eprintln!("SKIPPED: etcd is not installed (Debian: apt-get install etcd-server)");
    }
    found
}

/// A loopback port free a moment ago (bound, read, released): etcd takes
/// its ports on its command line.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One etcd member, its own process; stopped by PID when dropped.
struct Member {
    binary: PathBuf,
    name: String,
    dir: PathBuf,
    client: u16,
    peer: u16,
    cluster: String,
    child: Option<Child>,
}

impl Member {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client)
    }

    fn start(&mut self) {
        assert!(self.child.is_none(), "{} runs already", self.name);
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let log = std::fs::File::create(self.dir.with_extension("log")).unwrap();
        let child = Command::new(&self.binary)
            .arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["--listen-client-urls", &self.url()])
            .args(["--advertise-client-urls", &self.url()])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.cluster])
            .args(["--initial-cluster-token", "geolb-test"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
    }

    /// SIGKILL: as a crash or a power cut, the worst case for clients.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An etcd cluster of `n` members in a temporary directory.
struct Etcd {
    members: Vec<Member>,
    _dir: tempfile::TempDir,
}

impl Etcd {
    async fn start(n: usize) -> Option<Etcd> {
        let binary = etcd_binary()?;
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members: Vec<Member> = ports
            .iter()
            .enumerate()
            .map(|(i, &(client, peer))| Member {
                binary: binary.clone(),
                name: format!("m{i}"),
                dir: dir.path().join(format!("m{i}")),
                client,
                peer,
                cluster: cluster.clone(),
                child: None,
            })
            .collect();
        for m in &mut members {
            m.start();
        }
        let etcd = Etcd { members, _dir: dir };
        etcd.wait_ready().await;
        Some(etcd)
    }

    fn urls(&self) -> Vec<String> {
        self.members.iter().map(Member::url).collect()
    }

    /// Until a write through every member's client URL goes through.
    async fn wait_ready(&self) {
        for url in self.urls() {
            eventually(&format!("etcd at {url} takes writes"), LIMIT, || {
                let url = url.clone();
                async move {
                    let put = async {
                        let mut c = etcd_client::Client::connect([url], None).await.ok()?;
                        c.put("/ready", "1", None).await.ok()
                    };
                    tokio::time::timeout(Duration::from_secs(2), put)
                        .await
                        .ok()
                        .flatten()
                        .is_some()
                }
            })
            .await;
        }
    }

    async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect(self.urls(), None)
            .await
            .expect("etcd client")
    }
}

/// A TCP relay in front of etcd for one node, which a test can cut (every
/// connection closed, new ones closed at once) and restore: that node
/// alone loses etcd while the others keep it.
struct Relay {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<JoinSet<()>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(to: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(JoinSet::new()));
        let (is_cut, conns) = (cut.clone(), open.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if is_cut.load(Ordering::SeqCst) {
                    continue;
                }
                conns.lock().unwrap().spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(("127.0.0.1", to)).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Relay {
            addr,
            cut,
            open,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.open.lock().unwrap().abort_all();
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A node with DNS for one geo name over two always-up data centers, `one`
/// first (the test clients have no known location: config order).
fn node_config(node: &str, etcd: &[String]) -> String {
    let endpoints: Vec<String> = etcd.iter().map(|u| format!("{u:?}")).collect();
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\
         [cluster]\netcd = [{}]\nnode = \"{node}\"\ndatacenter = \"one\"\ndial_timeout = \"1s\"\n\
         [dns]\nlisten = [\"127.0.0.1:0\"]\n\
         [[dns.zone]]\norigin = \"mysite.com\"\n\
         soa = {{ mname = \"ns1.mysite.com.\", rname = \"hostmaster.mysite.com.\", serial = 1, refresh = \"1h\", retry = \"10m\", expire = \"14d\", minimum = \"60s\" }}\n\
         ns = [\"ns1.mysite.com.\"]\n\
         [[dns.geo]]\nname = \"{NAME}\"\n\
         [[datacenter]]\nname = \"one\"\nlocation = {{ lat = 0, lon = 0 }}\naddresses = [\"{ONE}\"]\nalways_up = true\n\
         [[datacenter]]\nname = \"two\"\nlocation = {{ lat = 0, lon = 1 }}\naddresses = [\"{TWO}\"]\nalways_up = true\n",
        endpoints.join(", ")
    )
}

async fn answer(node: &Geolb) -> Vec<String> {
    let dns: SocketAddr = node.dns_addr().await;
    dns_a_from(dns, "127.0.0.1", NAME, Some("127.0.0.9")).await
}

async fn answers(node: &Geolb, want: &str, what: &str) {
    eventually(&format!("{what}: answer {want}"), LIMIT, || async {
        answer(node).await == [want]
    })
    .await;
}

async fn post(node: &Geolb, path: &str) -> (u16, String) {
    let (code, _, body) = request(node.admin, "POST", path, &[], Bytes::new())
        .await
        .unwrap();
    (code, String::from_utf8_lossy(&body).into_owned())
}

async fn gauge(node: &Geolb, series: &str) -> f64 {
    metric_value(&node.metrics().await, series).unwrap_or(-1.0)
}

async fn connected(node: &Geolb, want: bool, what: &str) {
    let want = if want { 1.0 } else { 0.0 };
    eventually(
        &format!("{what}: geolb_cluster_connected {want}"),
        LIMIT,
        || async { gauge(node, "geolb_cluster_connected").await == want },
    )
    .await;
}

#[tokio::test]
async fn a_drain_given_to_one_node_moves_every_nodes_answers() {
    let Some(etcd) = Etcd::start(1).await else {
        return;
    };
    let a = Geolb::start(&node_config("node-a", &etcd.urls())).await;
    let b = Geolb::start(&node_config("node-b", &etcd.urls())).await;
    connected(&a, true, "a").await;
    connected(&b, true, "b").await;
    assert_eq!(answer(&b).await, [ONE]);

    let asked = std::time::Instant::now();
    let (code, body) = post(&a, "/datacenters/one/drain").await;
    assert_eq!((code, body.as_str()), (200, "data center one: drain\n"));
    assert_eq!(answer(&a).await, [TWO], "acts on the node given it at once");
    answers(&b, TWO, "b follows a's drain").await;
    eprintln!(
        "measured: POST drain on a to b answering otherwise: {:?}",
        asked.elapsed()
    );
    let status = b.status().await;
    let one = &status["datacenters"][0];
    assert_eq!(one["override"], "drain");
    assert_eq!(one["override_by"], "node-a");
    assert!(one["override_at"].as_str().unwrap().ends_with('Z'), "{one}");
    let cluster = &status["cluster"];
    assert_eq!(cluster["node"], "node-b");
    assert_eq!(cluster["connected"], true);
    assert!(cluster["revision"].as_i64().unwrap() > 0, "{cluster}");
    assert_eq!(cluster["endpoints"][0], etcd.urls()[0].as_str());

    // The key layout the README gives, as another tool would read it.
    let mut client = etcd.client().await;
    let got = client
        .get("/geolb/overrides/datacenter/one", None)
        .await
        .unwrap();
    let value: serde_json::Value = serde_json::from_slice(got.kvs()[0].value()).unwrap();
    assert_eq!(value["state"], "drain");
    assert_eq!(value["by"], "node-a");

    // The CLI is unchanged: `geolb override` on b undoes it everywhere.
    let admin = b.admin.to_string();
    let (ok, out, err) =
        geolb_command(&["override", "datacenter", "one", "auto", "--admin", &admin]).await;
    assert!(ok, "{out}{err}");
    answers(&a, ONE, "a follows b's auto").await;
    assert_eq!(answer(&b).await, [ONE]);
    assert!(
        client
            .get("/geolb/overrides/datacenter/one", None)
            .await
            .unwrap()
            .kvs()
            .is_empty(),
        "auto deletes the key"
    );
    assert_eq!(a.status().await["datacenters"][0].get("override_by"), None);
    assert!(
        gauge(&b, "geolb_cluster_watch_events_total").await >= 2.0,
        "the drain and the auto came through b's watch"
    );
    let (code, _) = post(&a, "/datacenters/nowhere/drain").await;
    assert_eq!(code, 404, "only what the running config has reaches etcd");

    // [cluster] is read at start-up only: a reload that changes it says so
    // and keeps the running one.
    b.write_config(&node_config("node-c", &etcd.urls()))
        .unwrap();
    let (code, _, _) = request(b.admin, "POST", "/reload", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert!(b.log().contains("[cluster] changed"), "{}", b.log());
    assert_eq!(b.status().await["cluster"]["node"], "node-b");
}

#[tokio::test]
async fn a_node_cut_off_from_etcd_catches_up_each_change_exactly_once() {
    let Some(etcd) = Etcd::start(1).await else {
        return;
    };
    let relay = Relay::start(etcd.members[0].client).await;
    let a = Geolb::start(&node_config("node-a", &etcd.urls())).await;
    let b = Geolb::start(&node_config("node-b", &[relay.url()])).await;
    connected(&a, true, "a").await;
    connected(&b, true, "b").await;
    assert_eq!(post(&a, "/datacenters/one/drain").await.0, 200);
    answers(&b, TWO, "b follows a").await;

    let cut = std::time::Instant::now();
    relay.cut();
    connected(&b, false, "b cut off").await;
    eprintln!(
        "measured: connection cut to geolb_cluster_connected 0: {:?}",
        cut.elapsed()
    );
    assert_eq!(answer(&b).await, [TWO], "b serves with the last state");
    let events = gauge(&b, "geolb_cluster_watch_events_total").await;
    let seen = b.status().await["cluster"]["revision"].as_i64().unwrap();
    // Two changes b misses while cut off: its answer must end where they
    // lead, each applied once.
    assert_eq!(post(&a, "/datacenters/two/down").await.0, 200);
    assert_eq!(post(&a, "/datacenters/one/auto").await.0, 200);
    assert_eq!(answer(&a).await, [ONE]);
    assert_eq!(answer(&b).await, [TWO], "b has not seen them");
    // A write on the cut-off node is refused, not made alone.
    let (code, body) = post(&b, "/datacenters/two/auto").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("not set") && body.contains("etcd"), "{body}");
    assert_eq!(b.status().await["datacenters"][1]["override"], "auto");

    let restored = std::time::Instant::now();
    relay.restore();
    connected(&b, true, "b back").await;
    answers(&b, ONE, "b caught up").await;
    eprintln!(
        "measured: connection restored to b caught up: {:?}",
        restored.elapsed()
    );
    let status = b.status().await;
    assert_eq!(status["datacenters"][1]["override"], "down");
    assert_eq!(status["datacenters"][1]["override_by"], "node-a");
    assert_eq!(
        gauge(&b, "geolb_cluster_watch_events_total").await,
        events + 2.0,
        "the two missed changes, each once"
    );
    assert_eq!(
        gauge(
            &b,
            "geolb_overrides_total{kind=\"datacenter\",state=\"down\"}"
        )
        .await,
        1.0
    );
    // At least where a is: the nodes' published views (health/) move etcd's
    // revision too, and b's full read on reconnecting may see later ones.
    let (b_rev, a_rev) = (
        status["cluster"]["revision"].as_i64().unwrap(),
        a.status().await["cluster"]["revision"].as_i64().unwrap(),
    );
    assert!(b_rev >= a_rev, "b at {b_rev}, a at {a_rev}");
    let log = b.log();
    assert!(log.contains("lost etcd"), "{log}");
    assert!(
        log.contains(&format!("from={}", seen + 1)),
        "the watch resumed after the last revision seen ({seen}):\n{log}"
    );
}

#[tokio::test]
async fn with_etcd_down_nodes_serve_the_last_state_also_after_a_restart() {
    let Some(mut etcd) = Etcd::start(1).await else {
        return;
    };
    let states = tempfile::tempdir().unwrap();
    let a = Geolb::start(&node_config("node-a", &etcd.urls())).await;
    let mut b = Geolb::start_with_state(
        &node_config("node-b", &etcd.urls()),
        Some(&states.path().join("b")),
    )
    .await;
    connected(&b, true, "b").await;
    assert_eq!(post(&a, "/datacenters/one/down").await.0, 200);
    answers(&b, TWO, "b follows a").await;

    let stopped = std::time::Instant::now();
    etcd.members[0].stop();
    connected(&a, false, "a without etcd").await;
    eprintln!(
        "measured: etcd killed to geolb_cluster_connected 0: {:?}",
        stopped.elapsed()
    );
    connected(&b, false, "b without etcd").await;
    assert_eq!(answer(&a).await, [TWO]);
    assert_eq!(answer(&b).await, [TWO]);
    let (code, body) = post(&a, "/datacenters/one/auto").await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(answer(&a).await, [TWO], "a refused change is not made");

    // b restarts during the outage: it starts with the state it kept.
    b.signal("TERM");
    assert!(b.wait_exit(LIMIT).await.success());
    let b = Geolb::start_with_state(
        &node_config("node-b", &etcd.urls()),
        Some(&states.path().join("b")),
    )
    .await;
    assert_eq!(
        answer(&b).await,
        [TWO],
        "the kept state serves from the start"
    );
    let status = b.status().await;
    assert_eq!(status["datacenters"][0]["override"], "down");
    assert_eq!(status["datacenters"][0]["override_by"], "node-a");
    assert_eq!(status["cluster"]["connected"], false);
    assert!(status["cluster"]["revision"].as_i64().unwrap() > 0);
    assert!(b.log().contains("cannot reach etcd"), "{}", b.log());

    // etcd back: both reconnect and take the next change.
    etcd.members[0].start();
    etcd.wait_ready().await;
    connected(&a, true, "a reconnects").await;
    connected(&b, true, "b reconnects").await;
    assert_eq!(post(&b, "/datacenters/one/auto").await.0, 200);
    answers(&a, ONE, "a follows b after the outage").await;
}

#[tokio::test]
async fn three_members_one_may_go_without_quorum_nodes_keep_the_last_state() {
    let Some(mut etcd) = Etcd::start(3).await else {
        return;
    };
    let a = Geolb::start(&node_config("node-a", &etcd.urls())).await;
    let b = Geolb::start(&node_config("node-b", &etcd.urls())).await;
    connected(&a, true, "a").await;
    connected(&b, true, "b").await;

    // One member of three gone: the quorum holds, changes go on.
    etcd.members[0].stop();
    // Within an election when the leader was the one stopped: a write may
    // be refused until then, never made on one node alone.
    eventually("a write with two members of three", LIMIT, || async {
        let (code, body) = post(&a, "/datacenters/one/drain").await;
        assert!(code == 200 || code == 503, "{code} {body}");
        if code == 503 {
            eprintln!("refused meanwhile: {body}");
            assert_eq!(answer(&a).await, [ONE], "a refused write is not made");
        }
        code == 200
    })
    .await;
    answers(&b, TWO, "b follows a with two members of three").await;
    connected(&b, true, "b with two members").await;

    // Two gone: the last member has no leader, so it is no source of
    // truth; nodes say so and serve what they had.
    etcd.members[1].stop();
    connected(&a, false, "a without quorum").await;
    connected(&b, false, "b without quorum").await;
    assert_eq!(answer(&a).await, [TWO]);
    assert_eq!(answer(&b).await, [TWO]);
    let (code, body) = post(&b, "/datacenters/one/auto").await;
    assert_eq!(code, 503, "no quorum, no write: {body}");

    // A member back: quorum again, and the nodes with it.
    etcd.members[1].start();
    connected(&a, true, "a with quorum back").await;
    connected(&b, true, "b with quorum back").await;
    // The members may still be electing a leader (a restarted member
    // catching up, or an election it started): a write may be refused
    // until then, as after the first stop.
    eventually("a write with the quorum back", LIMIT, || async {
        let (code, body) = post(&b, "/datacenters/one/auto").await;
        assert!(code == 200 || code == 503, "{code} {body}");
        if code == 503 {
            eprintln!("refused meanwhile: {body}");
        }
        code == 200
    })
    .await;
    answers(&a, ONE, "a follows b once the quorum is back").await;
}

#[tokio::test]
async fn a_node_back_after_a_compaction_reads_everything_and_applies_the_difference() {
    let Some(etcd) = Etcd::start(1).await else {
        return;
    };
    let relay = Relay::start(etcd.members[0].client).await;
    let a = Geolb::start(&node_config("node-a", &etcd.urls())).await;
    let b = Geolb::start(&node_config("node-b", &[relay.url()])).await;
    connected(&b, true, "b").await;
    assert_eq!(post(&a, "/datacenters/one/down").await.0, 200);
    answers(&b, TWO, "b follows a").await;

    relay.cut();
    connected(&b, false, "b cut off").await;
    assert_eq!(post(&a, "/datacenters/one/auto").await.0, 200);
    assert_eq!(post(&a, "/datacenters/two/drain").await.0, 200);
    // etcd forgets the history b would resume from.
    let mut client = etcd.client().await;
    let now = client
        .get("/", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    client.compact(now, None).await.unwrap();

    relay.restore();
    connected(&b, true, "b back").await;
    answers(&b, ONE, "b read everything again").await;
    let status = b.status().await;
    assert_eq!(status["datacenters"][0]["override"], "auto");
    assert_eq!(status["datacenters"][1]["override"], "drain");
    assert_eq!(status["datacenters"][1]["override_by"], "node-a");
    let log = b.log();
    assert!(
        log.contains("compacted past the last revision seen"),
        "{log}"
    );
    let metrics = b.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "geolb_overrides_total{kind=\"datacenter\",state=\"drain\"}"
        ),
        Some(1.0),
        "the difference applied once"
    );
}

/// A node of data center `two` whose remote check of `one` probes `probe`,
/// with a 2 s lease: a killed node stops counting within seconds.
fn quorum_config(node: &str, etcd: &[String], probe: SocketAddr) -> String {
    let check = format!(
        "check = {{ kind = \"tcp\", addr = \"{probe}\", interval = \"100ms\", timeout = \"1s\", rise = 1, fall = 1 }}"
    );
    node_config(node, etcd)
        .replace(
            "datacenter = \"one\"\ndial_timeout",
            "datacenter = \"two\"\nlease = \"2s\"\ndial_timeout",
        )
        .replacen("always_up = true", &check, 1)
}

/// `one`'s quorum tally in a node's /status: (up, down, from).
async fn tally(node: &Geolb) -> (i64, i64, String) {
    let status = node.status().await;
    let q = &status["datacenters"][0]["quorum"];
    let from = q["from"].as_str().unwrap_or("").to_owned();
    (
        q["up"].as_i64().unwrap_or(-1),
        q["down"].as_i64().unwrap_or(-1),
        from,
    )
}

async fn tallies(node: &Geolb, want: (i64, i64, &str), what: &str) {
    eventually(&format!("{what}: quorum {want:?}"), LIMIT, || async {
        let (up, down, from) = tally(node).await;
        (up, down, from.as_str()) == want
    })
    .await;
}

/// Publishes `view` as node `node` would, under `lease`.
async fn put_view(client: &mut etcd_client::Client, node: &str, view: &str, lease: i64) {
    let options = etcd_client::PutOptions::new().with_lease(lease);
    let key = format!("/geolb/health/{node}");
    client.put(key, view, Some(options)).await.unwrap();
}

#[tokio::test]
async fn one_nodes_failing_check_moves_nothing_a_majority_does_a_dead_node_stops_counting() {
    let Some(mut etcd) = Etcd::start(1).await else {
        return;
    };
    // `one` answers b's checks; a's checks go to a closed port.
    let live = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let live_addr = live.local_addr().unwrap();
    let acceptor = tokio::spawn(async move {
        while let Ok((conn, _)) = live.accept().await {
            drop(conn);
        }
    });
    let a = Geolb::start(&quorum_config(
        "node-a",
        &etcd.urls(),
        support::refused_addr().await,
    ))
    .await;
    let b = Geolb::start(&quorum_config("node-b", &etcd.urls(), live_addr)).await;
    eventually("a's own check of one fails", LIMIT, || async {
        a.status().await["datacenters"][0]["remote_check"] == "down"
    })
    .await;
    tallies(&a, (1, 1, "checks"), "a sees b's view beside its own").await;
    tallies(&b, (1, 1, "checks"), "b sees a's view beside its own").await;
    assert_eq!(
        answer(&a).await,
        [ONE],
        "a tie is up: a alone moves nothing"
    );
    assert_eq!(answer(&b).await, [ONE]);
    assert_eq!(
        gauge(&a, "geolb_datacenter_up{datacenter=\"one\"}").await,
        1.0
    );

    // A third checker, written as another tool would, says down: a majority.
    let mut client = etcd.client().await;
    let lease = client.lease_grant(60, None).await.unwrap().id();
    let view = r#"{"datacenter":null,"views":{"one":{"up":false,"source":"check"}},"at":""}"#;
    put_view(&mut client, "node-c", view, lease).await;
    answers(&a, TWO, "a: two of three checkers say one is down").await;
    answers(&b, TWO, "b: the same decision, its own check passing").await;
    assert_eq!(tally(&b).await, (1, 2, "checks".to_owned()));
    assert_eq!(
        gauge(&b, "geolb_datacenter_up{datacenter=\"one\"}").await,
        0.0
    );

    // etcd goes: b keeps the decision it had (never fails closed), though
    // its own check alone would answer ONE.
    etcd.members[0].stop();
    eventually("b notices etcd is gone", LIMIT, || async {
        b.log().contains("keeping the views last read")
    })
    .await;
    assert_eq!(answer(&b).await, [TWO], "b keeps the views last read");
    assert_eq!(tally(&b).await, (1, 2, "checks".to_owned()));
    etcd.members[0].start();
    etcd.wait_ready().await;
    let mut client = etcd.client().await;

    // a dies: its lease (2 s) expires, its view stops counting, tie again.
    let killed = std::time::Instant::now();
    drop(a);
    answers(&b, ONE, "b once a's lease expired").await;
    eprintln!(
        "measured: node killed to its view no longer counting: {:?}",
        killed.elapsed()
    );
    tallies(&b, (1, 1, "checks"), "b counts itself and node-c").await;
    let value = client.get("/geolb/health/node-b", None).await.unwrap();
    let published: serde_json::Value = serde_json::from_slice(value.kvs()[0].value()).unwrap();
    assert_eq!(published["datacenter"], "two");
    assert_eq!(published["views"]["one"]["up"], true);
    assert_eq!(published["views"]["one"]["source"], "check");
    assert!(value.kvs()[0].lease() != 0, "b's view lives under a lease");

    // A node of `one` itself says its pools are down: its word wins over
    // the checkers' tie.
    let view = r#"{"datacenter":"one","views":{"one":{"up":false,"source":"pools"}},"at":""}"#;
    put_view(&mut client, "one-1", view, lease).await;
    answers(&b, TWO, "b: one's own node says down").await;
    assert_eq!(tally(&b).await, (0, 1, "pools".to_owned()));
    client.lease_revoke(lease).await.unwrap();
    answers(&b, ONE, "b: the views under a revoked lease are gone").await;

    // A clean stop revokes b's lease: its views are gone once it exited.
    let mut b = b;
    let stopping = std::time::Instant::now();
    b.signal("TERM");
    assert!(b.wait_exit(LIMIT).await.success());
    let gone = client.get("/geolb/health/node-b", None).await.unwrap();
    assert!(
        stopping.elapsed() < Duration::from_millis(1500),
        "stopped before the 2 s lease could expire: {:?}",
        stopping.elapsed()
    );
    assert!(gone.kvs().is_empty(), "b's views left with it");
    acceptor.abort();
}

/// Queries and requests sent through a node while etcd loses a member,
/// then its quorum, then gets it back: how many failed, and the slowest.
struct Drill {
    sent: usize,
    failed: Vec<String>,
    slowest: Duration,
}

async fn drill(node: &Geolb, stop: Arc<AtomicBool>) -> Drill {
    let dns = node.dns_addr().await;
    let web = node.listener("web");
    let mut drill = Drill {
        sent: 0,
        failed: Vec::new(),
        slowest: Duration::ZERO,
    };
    while !stop.load(Ordering::SeqCst) {
        let started = std::time::Instant::now();
        // dns_a_from panics on a lost answer: in its own task, that is a
        // failure counted here.
        match tokio::spawn(dns_a_from(dns, "127.0.0.1", NAME, Some("127.0.0.9"))).await {
            Ok(a) if a == [ONE] => {}
            Ok(a) => drill.failed.push(format!("DNS answer {a:?}")),
            Err(e) => drill.failed.push(format!("DNS: {e}")),
        }
        match support::get(web, "/", &[]).await {
            Ok((200, _, _)) => {}
            Ok((code, _, body)) => drill.failed.push(format!("HTTP {code} {body:?}")),
            Err(e) => drill.failed.push(format!("HTTP: {e}")),
        }
        drill.sent += 1;
        drill.slowest = drill.slowest.max(started.elapsed());
        // Paced, so the drill measures the etcd events rather than load.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drill
}

#[tokio::test]
async fn serving_never_waits_for_etcd_while_members_and_the_quorum_go_and_come() {
    let Some(mut etcd) = Etcd::start(3).await else {
        return;
    };
    let backend = support::Backend::start("web").await;
    let config = node_config("node-a", &etcd.urls())
        + &format!(
            "[[pool]]\nname = \"p\"\nbackends = [{{ addr = \"{}\" }}]\n\
             [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n",
            backend.addr
        );
    let a = Geolb::start(&config).await;
    connected(&a, true, "a").await;

    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (a, stop) = (&a, stop.clone());
        async move { drill(a, stop).await }
    };
    let events = async {
        etcd.members[0].stop();
        tokio::time::sleep(Duration::from_millis(500)).await;
        etcd.members[1].stop();
        connected(&a, false, "a without quorum").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        etcd.members[1].start();
        etcd.members[0].start();
        connected(&a, true, "a with quorum back").await;
        stop.store(true, Ordering::SeqCst);
    };
    let (drill, ()) = tokio::join!(load, events);
    eprintln!(
        "through a member lost, the quorum lost and back: {} rounds of a DNS query and a \
         request, {} failed, slowest round {:?}",
        drill.sent,
        drill.failed.len(),
        drill.slowest
    );
    assert!(drill.failed.is_empty(), "{:?}", drill.failed);
    assert!(drill.sent >= 20, "the drill ran: {}", drill.sent);
    assert!(backend.hits.load(Ordering::SeqCst) >= drill.sent);
}

// --- the config kept in etcd ([cluster] config = "etcd") ----------------

/// A node's local file with its config in etcd: its own sections only.
fn etcd_node(node: &str, etcd: &[String]) -> String {
    let endpoints: Vec<String> = etcd.iter().map(|u| format!("{u:?}")).collect();
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\
         [cluster]\netcd = [{}]\nnode = \"{node}\"\ndial_timeout = \"1s\"\nconfig = \"etcd\"\n",
        endpoints.join(", ")
    )
}

/// A document: per (pool, backend), the pool and a listener of the same
/// name on port 0 (so that every node on this one machine binds its own),
/// with `extra` added to the last listener.
fn document(pools: &[(&str, &support::Backend)], extra: &str) -> String {
    pools
        .iter()
        .map(|(name, backend)| {
            format!(
                "[[pool]]\nname = \"{name}\"\nbackends = [{{ addr = \"{}\" }}]\n\
                 [[listener]]\nname = \"{name}\"\nbind = \"127.0.0.1:0\"\npool = \"{name}\"\n",
                backend.addr
            )
        })
        .collect::<String>()
        + extra
}

/// One etcd, a directory for documents, two backends named as their
/// pools will be.
struct Pushing {
    etcd: Etcd,
    url: String,
    docs: tempfile::TempDir,
    one: support::Backend,
    two: support::Backend,
}

impl Pushing {
    async fn start() -> Option<Pushing> {
        let etcd = Etcd::start(1).await?;
        Some(Pushing {
            url: etcd.urls()[0].clone(),
            etcd,
            docs: tempfile::tempdir().unwrap(),
            one: support::Backend::start("one").await,
            two: support::Backend::start("two").await,
        })
    }

    /// Writes `text` to `name` and runs `geolb config push` on it with
    /// `to` (plain `--etcd URL` when empty): (exit 0, what it said).
    async fn push(&self, name: &str, text: &str, to: &[&str]) -> (bool, String) {
        let file = self.docs.path().join(name);
        std::fs::write(&file, text).unwrap();
        let mut args = vec!["config", "push", file.to_str().unwrap()];
        match to.is_empty() {
            true => args.extend_from_slice(&["--etcd", &self.url]),
            false => args.extend_from_slice(to),
        }
        let (ok, out, err) = geolb_command(&args).await;
        (ok, out + &err)
    }

    /// As [`Pushing::push`], which must succeed: the revision written.
    async fn pushed(&self, name: &str, text: &str, to: &[&str]) -> i64 {
        let (ok, said) = self.push(name, text, to).await;
        assert!(ok, "{said}");
        written_at(&said)
    }
}

/// The revision a push's report says it wrote.
fn written_at(report: &str) -> i64 {
    let at = report.split("at revision ").nth(1).expect(report);
    at.split(' ').next().unwrap().parse().expect(report)
}

/// The config revision /status says is in force.
async fn config_revision(node: &Geolb) -> i64 {
    node.status().await["config"]["revision"].as_i64().unwrap()
}

/// What listener `name` of `node` answers, once /status lists it.
async fn served_by(node: &Geolb, name: &str) -> Option<String> {
    let status = node.status().await;
    let listener = status["listeners"]
        .as_array()?
        .iter()
        .find(|l| l["name"] == name)?;
    let addr: SocketAddr = listener["local_addr"].as_str()?.parse().ok()?;
    let (code, _, body) = support::get(addr, "/", &[]).await.ok()?;
    (code == 200).then(|| String::from_utf8_lossy(&body).into_owned())
}

async fn serves(node: &Geolb, listener: &str, backend: &str, what: &str) {
    eventually(
        &format!("{what}: listener {listener} answers from {backend}"),
        LIMIT,
        || async { served_by(node, listener).await.as_deref() == Some(backend) },
    )
    .await;
}

#[tokio::test]
async fn a_pushed_config_reaches_every_node_and_an_invalid_one_is_never_written() {
    let Some(p) = Pushing::start().await else {
        return;
    };
    let (ok, said) = p
        .push("v1.toml", &document(&[("one", &p.one)], ""), &[])
        .await;
    assert!(ok, "{said}");
    let first = written_at(&said);
    assert!(said.contains("ok: 1 listener(s), 1 pool(s)"), "{said}");

    let a = Geolb::start(&etcd_node("node-a", &p.etcd.urls())).await;
    let b = Geolb::start(&etcd_node("node-b", &p.etcd.urls())).await;
    for node in [&a, &b] {
        assert_eq!(served_by(node, "one").await.as_deref(), Some("one"));
        let config = &node.status().await["config"];
        assert_eq!(config["source"], "etcd");
        assert_eq!(config["key"], "/geolb/config/current");
        assert_eq!(config["revision"], first);
    }

    // A new pool and listener, pushed through a node's own file (checked
    // as that node reads it): both nodes serve it, no reload asked.
    let node_file = a.config_path();
    let through_a = ["--config", node_file.to_str().unwrap()];
    let v2 = document(&[("one", &p.one), ("two", &p.two)], "");
    let pushed = std::time::Instant::now();
    let second = p.pushed("v2.toml", &v2, &through_a).await;
    serves(&a, "two", "two", "a").await;
    serves(&b, "two", "two", "b").await;
    eprintln!(
        "measured: push to both nodes serving the new listener: {:?}",
        pushed.elapsed()
    );
    assert_eq!(config_revision(&b).await, second);
    assert_eq!(gauge(&b, "geolb_config_etcd_revision").await, second as f64);

    // Invalid: refused by the push, with its line; etcd never sees it.
    let bad =
        format!("{v2}[[listener]]\nname = \"three\"\nbind = \"127.0.0.1:0\"\npool = \"nowhere\"\n");
    let (ok, said) = p.push("bad.toml", &bad, &[]).await;
    assert!(!ok, "{said}");
    assert!(said.contains("nothing written"), "{said}");
    let line = v2.lines().count() + 4;
    assert!(
        said.contains(&format!("line {line}: listener[2].pool")),
        "{said}"
    );
    // A section that is each node's own is refused in a document.
    let with_admin = format!("[admin]\nlisten = \"127.0.0.1:0\"\n{v2}");
    let (ok, said) = p.push("admin.toml", &with_admin, &[]).await;
    assert!(
        !ok && said.contains("line 1: admin: is each node's own"),
        "{said}"
    );
    let current = p
        .etcd
        .client()
        .await
        .get("/geolb/config/current", None)
        .await
        .unwrap();
    assert_eq!(current.kvs()[0].mod_revision(), second, "nothing written");
    assert_eq!(current.kvs()[0].value(), v2.as_bytes());
    // A node reading its file whole does not switch to etcd on a reload:
    // its file would no longer hold what it serves.
    let c = Geolb::start(&node_config("node-c", &p.etcd.urls())).await;
    c.write_config(&etcd_node("node-c", &p.etcd.urls()))
        .unwrap();
    let (code, body) = post(&c, "/reload").await;
    assert!(
        code == 400 && body.contains("needs a restart"),
        "{code} {body}"
    );
    assert!(c.dns_addr().await.port() > 0, "c serves on");

    // `geolb lookup` reads a node's file with its document too.
    let (ok, out, err) = geolb_command(&[
        "lookup",
        "--config",
        node_file.to_str().unwrap(),
        "192.0.2.9",
    ])
    .await;
    assert!(ok && err.is_empty() && !out.is_empty(), "{out}{err}");
    // The same text again: nothing written, no node reloads.
    let (ok, said) = p.push("v2-again.toml", &v2, &[]).await;
    assert!(ok && said.contains("unchanged"), "{said}");
    assert_eq!(config_revision(&a).await, second);
}

#[tokio::test]
async fn a_config_one_node_cannot_use_is_refused_there_and_rolled_back_everywhere() {
    let Some(p) = Pushing::start().await else {
        return;
    };
    let url = p.url.as_str();
    let v1 = document(&[("one", &p.one)], "");
    let first = p.pushed("v1.toml", &v1, &[]).await;
    let a = Geolb::start(&etcd_node("node-a", &p.etcd.urls())).await;
    let b_local = etcd_node("node-b", &p.etcd.urls());
    let b_state = tempfile::tempdir().unwrap();
    let b = Geolb::start_with_state(&b_local, Some(b_state.path())).await;

    // Valid where it is checked (a's file is beside a's config), missing
    // on b: a takes it, b refuses it and serves revision `first` on.
    std::fs::write(a.dir.path().join("busy.html"), "busy").unwrap();
    let v2 = document(
        &[("one", &p.one), ("two", &p.two)],
        "error_pages = { 503 = \"busy.html\" }\n",
    );
    let node_file = a.config_path();
    let second = p
        .pushed("v2.toml", &v2, &["--config", node_file.to_str().unwrap()])
        .await;
    serves(&a, "two", "two", "a takes it").await;
    eventually("b refuses it", LIMIT, || async {
        b.status().await["config"]["refused"]["revision"] == second
    })
    .await;
    let status = b.status().await;
    let config = &status["config"];
    assert_eq!(config["revision"], first, "{config}");
    assert_eq!(config["latest_revision"], second, "{config}");
    let why = config["refused"]["errors"][0].as_str().unwrap();
    assert!(
        why.contains("listener[1].error_pages") && why.contains("busy.html"),
        "{why}"
    );
    assert_eq!(
        gauge(&b, "geolb_config_reloads_total{result=\"failure\"}").await,
        1.0
    );
    assert_eq!(served_by(&b, "one").await.as_deref(), Some("one"));
    assert_eq!(served_by(&b, "two").await, None, "b keeps the old config");
    assert!(b.log().contains("refused on this node"), "{}", b.log());
    // `geolb check` on b's file says why, and that b would start (as it
    // runs) with the copy last in service.
    let b_file = b.config_path();
    let (ok, out, err) = geolb_command(&["check", "--config", b_file.to_str().unwrap()]).await;
    assert!(ok && err.contains("busy.html"), "{out}{err}");
    assert!(
        err.contains("starting with the copy last in service")
            && out.contains(&format!("at revision {first})")),
        "{out}{err}"
    );

    // Restarted, b refuses it again and starts with the copy it kept.
    drop(b);
    let b = Geolb::start_with_state(&b_local, Some(b_state.path())).await;
    let config = &b.status().await["config"];
    assert_eq!(config["revision"], first, "{config}");
    assert_eq!(config["refused"]["revision"], second, "{config}");
    assert_eq!(
        gauge(&b, "geolb_config_reloads_total{result=\"failure\"}").await,
        1.0,
        "counted once the metrics are there"
    );
    assert_eq!(served_by(&b, "one").await.as_deref(), Some("one"));
    assert!(
        b.log().contains("starting with the copy last in service"),
        "{}",
        b.log()
    );

    // The file given to b, a reload takes the newest document seen.
    std::fs::write(b.dir.path().join("busy.html"), "busy").unwrap();
    let (code, body) = post(&b, "/reload").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(config_revision(&b).await, second);
    assert_eq!(served_by(&b, "two").await.as_deref(), Some("two"));
    assert!(b.status().await["config"]["refused"].is_null());
    let b_file = b.config_path();
    let (ok, out, err) = geolb_command(&["check", "--config", b_file.to_str().unwrap()]).await;
    assert!(
        ok && out.contains(&format!("with /geolb/config/current at revision {second}")),
        "{out}{err}"
    );

    // History, then a rollback to the first push: a new revision that
    // every node takes.
    let (ok, out, err) = geolb_command(&["config", "history", "--etcd", url]).await;
    assert!(ok, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[1].trim_start().starts_with(&format!("{first} ")),
        "{out}"
    );
    assert!(
        lines[2].trim_start().starts_with(&format!("{second} ")),
        "{out}"
    );
    assert!(lines[2].ends_with("current"), "{out}");
    let sha = config["refused"]["sha256"].as_str().unwrap();
    assert!(lines[2].contains(sha), "the same sha256 as /status: {out}");
    let size = v1.len().to_string();
    assert!(lines[1].split_whitespace().any(|w| w == size), "{out}");

    let (ok, out, err) = geolb_command(&["config", "rollback", "12345", "--etcd", url]).await;
    assert!(
        !ok && err.contains("no push at revision 12345"),
        "{out}{err}"
    );
    let back = first.to_string();
    let rollback = ["config", "rollback", &back, "--etcd", url, "--by", "tester"];
    let (ok, out, err) = geolb_command(&rollback).await;
    assert!(ok, "{out}{err}");
    let third = written_at(&out);
    assert!(third > second, "{out}");
    for node in [&a, &b] {
        eventually("the rollback in force", LIMIT, || async {
            config_revision(node).await == third
        })
        .await;
        assert_eq!(served_by(node, "two").await, None);
        assert_eq!(served_by(node, "one").await.as_deref(), Some("one"));
    }
    let (_, out, _) = geolb_command(&["config", "history", "--etcd", url]).await;
    let last = out.lines().last().unwrap();
    assert!(
        last.contains("tester (rollback to") && last.ends_with("current"),
        "{out}"
    );
}

#[tokio::test]
async fn a_node_starts_with_its_last_config_while_etcd_is_down() {
    let Some(mut p) = Pushing::start().await else {
        return;
    };
    let first = p
        .pushed("v1.toml", &document(&[("one", &p.one)], ""), &[])
        .await;
    let local = etcd_node("node-a", &p.etcd.urls());
    let state = tempfile::tempdir().unwrap();
    let a = Geolb::start_with_state(&local, Some(state.path())).await;
    assert_eq!(config_revision(&a).await, first);
    drop(a);

    p.etcd.members[0].stop();
    let a = Geolb::start_with_state(&local, Some(state.path())).await;
    assert_eq!(served_by(&a, "one").await.as_deref(), Some("one"));
    assert_eq!(config_revision(&a).await, first);
    assert!(
        a.log().contains("starting with the copy last in service"),
        "{}",
        a.log()
    );
    let (ok, out, err) = geolb_command(&["config", "history", "--etcd", &p.url]).await;
    assert!(!ok && err.contains("geolb config:"), "{out}{err}");

    // etcd back: the watch reconnects and a new push comes in.
    p.etcd.members[0].start();
    p.etcd.wait_ready().await;
    let v2 = document(&[("one", &p.one), ("two", &p.two)], "");
    p.pushed("v2.toml", &v2, &[]).await;
    serves(&a, "two", "two", "a after etcd came back").await;

    // The history keeps the last 20 pushes; older ones cannot be rolled
    // back to.
    for n in 0..20 {
        p.pushed(&format!("v2-{n}.toml"), &format!("{v2}# {n}\n"), &[])
            .await;
    }
    let (ok, out, err) = geolb_command(&["config", "history", "--etcd", &p.url]).await;
    assert!(ok, "{out}{err}");
    assert_eq!(out.lines().count(), 21, "a header and 20 pushes: {out}");
    let back = first.to_string();
    let (ok, out, err) = geolb_command(&["config", "rollback", &back, "--etcd", &p.url]).await;
    assert!(!ok && err.contains("(the last 20)"), "{out}{err}");

    // Without etcd and without a copy, a node does not start.
    p.etcd.members[0].stop();
    let mut fresh = Geolb::spawn(&local, &[]);
    let exited = fresh.wait_exit(LIMIT).await;
    assert!(!exited.success());
    assert!(
        fresh
            .log()
            .contains("cannot read /geolb/config/current from etcd"),
        "{}",
        fresh.log()
    );
}
