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
use support::{
    Backend, Geolb, backend_list, dns_a_from, eventually, geolb_command, metric_value, request,
};
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

/// See `support::port_for_a_program`: a member stopped by a test starts
/// again on the same ports.
fn free_port() -> u16 {
    support::port_for_a_program()
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
    /// etcd takes its ports on its command line, so they cannot stay held
    /// from the moment they are found free (as `support::refused_addr`
    /// holds its own): another test may bind one first. A member that
    /// finds its port taken exits at once, and the cluster is started
    /// again on new ports.
    async fn start(n: usize) -> Option<Etcd> {
        let binary = etcd_binary()?;
        for _ in 0..3 {
            let mut etcd = Etcd::spawn(&binary, n);
            if etcd.ready_or_exited().await {
                return Some(etcd);
            }
            eprintln!("an etcd member exited at start (a port taken?): new ports");
        }
        panic!("etcd exited at start three times, each on new ports");
    }

    fn spawn(binary: &std::path::Path, n: usize) -> Etcd {
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
                binary: binary.to_owned(),
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
        Etcd { members, _dir: dir }
    }

    /// Until a write through every member's client URL goes through
    /// (true), or until a member has exited (false).
    async fn ready_or_exited(&mut self) -> bool {
        let deadline = std::time::Instant::now() + LIMIT;
        let mut ready = 0;
        while ready < self.members.len() {
            let exited = self.members.iter_mut().any(|m| {
                m.child
                    .as_mut()
                    .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
            });
            if exited {
                return false;
            }
            let url = self.members[ready].url();
            assert!(
                std::time::Instant::now() < deadline,
                "timed out after {LIMIT:?} waiting for: etcd at {url} takes writes"
            );
            if takes_writes(url).await {
                ready += 1;
            } else {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        true
    }

    fn urls(&self) -> Vec<String> {
        self.members.iter().map(Member::url).collect()
    }

    /// Until a write through every member's client URL goes through.
    async fn wait_ready(&self) {
        for url in self.urls() {
            eventually(&format!("etcd at {url} takes writes"), LIMIT, || {
                takes_writes(url.clone())
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

/// Whether a write through `url` goes through within 2 s.
async fn takes_writes(url: String) -> bool {
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
    // The log is written by its own thread: the line may come just after
    // the answer.
    eventually("the reload says [cluster] changed", LIMIT, || async {
        b.log().contains("[cluster] changed")
    })
    .await;
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
        support::refused_addr(),
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
    // Recorded once the reload is done, a moment after the new listener
    // serves (its copy is saved first): waited for, not assumed.
    eventually(
        "node b's status gives the pushed revision",
        LIMIT,
        || async { config_revision(&b).await == second },
    )
    .await;
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

// ---- Backend discovery: pools taking backends registered in etcd ----

/// A node with pool `web`: the static backends `statics` and whatever
/// registers under /geolb/pools/web/, checked over HTTP every 100 ms; an
/// http listener `web` sends to it. `extra`: appended (a reload's change).
fn discovery_config(etcd: &[String], statics: &[&Backend], extra: &str) -> String {
    let endpoints: Vec<String> = etcd.iter().map(|u| format!("{u:?}")).collect();
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\
         [cluster]\netcd = [{}]\nnode = \"lb-1\"\ndial_timeout = \"1s\"\n\
         [[pool]]\nname = \"web\"\nmin_healthy = 0\n\
         discovery = {{ prefix = \"pools/web/\" }}\n\
         check = {{ kind = \"http\", path = \"/health\", interval = \"100ms\", timeout = \"1s\", rise = 1, fall = 1 }}\n\
         backends = [{}]\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\n{extra}",
        endpoints.join(", "),
        backend_list(statics),
    )
}

/// A `geolb register` process, killed (by PID) if still running when
/// dropped.
struct Register {
    child: Option<Child>,
    _log: tempfile::NamedTempFile,
}

impl Register {
    fn start(etcd: &[String], address: SocketAddr, node: &str) -> Register {
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_geolb"))
            .args(["register", "--etcd", &etcd.join(","), "--pool", "web"])
            .args([
                "--address",
                &address.to_string(),
                "--ttl",
                "2s",
                "--node",
                node,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .expect("start geolb register");
        Register {
            child: Some(child),
            _log: log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._log.path()).unwrap_or_default()
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal} {pid}");
    }

    async fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        support::bounded(LIMIT, "geolb register exits", async move {
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }
}

impl Drop for Register {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Pool `web`'s backends in /status: addr -> the backend's object.
async fn web_backends(node: &Geolb) -> std::collections::BTreeMap<String, serde_json::Value> {
    let status = node.status().await;
    status["pools"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["addr"].as_str().unwrap().to_owned(), b.clone()))
        .collect()
}

async fn listed(node: &Geolb, addr: SocketAddr, want: bool, what: &str) {
    eventually(what, LIMIT, || async {
        web_backends(node).await.contains_key(&addr.to_string()) == want
    })
    .await;
}

/// `n` requests through the listener, each answered 200.
async fn send(node: &Geolb, n: usize) {
    for _ in 0..n {
        let (code, _, _) = support::get(node.listener("web"), "/", &[]).await.unwrap();
        assert_eq!(code, 200);
    }
}

#[tokio::test]
async fn a_registered_backend_gets_traffic_and_leaving_stops_it() {
    let Some(etcd) = Etcd::start(1).await else {
        return;
    };
    let fixed = Backend::start("static").await;
    let joining = Backend::start("joining").await;
    let node = Geolb::start(&discovery_config(&etcd.urls(), &[&fixed], "")).await;
    // A registration made before the watch began arrives by the first
    // read, not as a watch event; the count below wants all four events.
    eventually("the node watches", LIMIT, || async {
        node.log().contains("discovery: watching etcd")
    })
    .await;

    // Registered while requests flow: the time to its first request.
    let started = std::time::Instant::now();
    let mut register = Register::start(&etcd.urls(), joining.addr, "web-2");
    eventually("the registered backend gets a request", LIMIT, || async {
        send(&node, 1).await;
        joining.hits() > 0
    })
    .await;
    eprintln!(
        "measured: geolb register started to the backend's first request: {:?} (debug build)",
        started.elapsed()
    );
    let backends = web_backends(&node).await;
    let joined = &backends[&joining.addr.to_string()];
    assert_eq!(joined["discovered"], true, "{joined}");
    assert_eq!(joined["registered_by"], "web-2");
    assert_eq!(joined["state"], "up", "checked like a static backend");
    assert!(joined["last_check"].is_object(), "{joined}");
    let fixed_one = &backends[&fixed.addr.to_string()];
    assert_eq!(fixed_one.get("discovered"), None, "{fixed_one}");
    let status = node.status().await;
    assert_eq!(status["pools"][0]["discovery"], "/geolb/pools/web/");
    // Both share the traffic: static backends work alongside.
    let before = (fixed.hits(), joining.hits());
    send(&node, 20).await;
    assert!(fixed.hits() > before.0 && joining.hits() > before.1);
    let metrics = node.metrics().await;
    assert!(
        metrics.contains(&format!("backend=\"{}\"", joining.addr)),
        "per-backend series as for static ones"
    );
    // The key layout the README gives, as another tool reads it.
    let mut client = etcd.client().await;
    let key = format!("/geolb/pools/web/{}", joining.addr);
    let got = client.get(key.as_str(), None).await.unwrap();
    let value: serde_json::Value = serde_json::from_slice(got.kvs()[0].value()).unwrap();
    assert_eq!(value["address"], joining.addr.to_string());
    assert_eq!(value["weight"], 1);
    assert_eq!(value["node"], "web-2");
    assert!(got.kvs()[0].lease() != 0, "under a lease");

    // SIGTERM: the lease is revoked, the backend leaves at once.
    let asked = std::time::Instant::now();
    register.signal("TERM");
    assert!(register.wait_exit().await.success(), "{}", register.log());
    listed(&node, joining.addr, false, "gone after SIGTERM").await;
    eprintln!(
        "measured: SIGTERM to geolb register to the backend gone from /status: {:?}",
        asked.elapsed()
    );
    assert!(
        register.log().contains("deregistered"),
        "{}",
        register.log()
    );
    let hits = joining.hits();
    send(&node, 20).await;
    assert_eq!(joining.hits(), hits, "no request after leaving");

    // SIGKILL: nothing is revoked; the lease (2 s) expiring removes it.
    let mut killed = Register::start(&etcd.urls(), joining.addr, "web-2");
    listed(&node, joining.addr, true, "registered again").await;
    let kill = std::time::Instant::now();
    killed.signal("KILL");
    killed.wait_exit().await;
    listed(&node, joining.addr, false, "gone when the lease expired").await;
    let took = kill.elapsed();
    eprintln!("measured: geolb register SIGKILLed to the backend gone: {took:?} (ttl 2s)");
    assert!(
        took >= Duration::from_secs(1),
        "it stayed until its lease ran out, not less: {took:?}"
    );
    assert!(
        gauge(&node, "geolb_discovery_watch_events_total").await >= 4.0,
        "two registrations and two removals came through the watch"
    );
}

#[tokio::test]
async fn bad_values_are_ignored_and_a_reload_keeps_discovered_backends_and_their_health() {
    let Some(etcd) = Etcd::start(1).await else {
        return;
    };
    let fixed = Backend::start("static").await;
    let sick = Backend::start("sick").await;
    let node = Geolb::start(&discovery_config(&etcd.urls(), &[&fixed], "")).await;
    let mut client = etcd.client().await;
    let lease = client.lease_grant(30, None).await.unwrap().id();
    let under = Some(etcd_client::PutOptions::new().with_lease(lease));
    for (key, value) in [
        ("/geolb/pools/web/not-an-address", "{}".to_owned()),
        ("/geolb/pools/web/127.0.0.1:9", "{\"address\": ".to_owned()),
        (
            "/geolb/pools/web/127.0.0.1:10",
            "{\"address\": \"127.0.0.1:11\"}".to_owned(),
        ),
        (
            "/geolb/pools/web/127.0.0.1:12",
            "{\"address\": \"127.0.0.1:12\", \"weight\": 0}".to_owned(),
        ),
    ] {
        client.put(key, value, under.clone()).await.unwrap();
    }
    let good = format!("{{\"address\": \"{}\", \"weight\": 2}}", sick.addr);
    let key = format!("/geolb/pools/web/{}", sick.addr);
    client.put(key.as_str(), good, under.clone()).await.unwrap();
    listed(&node, sick.addr, true, "the good registration").await;
    let backends = web_backends(&node).await;
    assert_eq!(
        backends.keys().cloned().collect::<Vec<_>>(),
        [fixed.addr.to_string(), sick.addr.to_string()]
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>(),
        "only the good value is served"
    );
    assert_eq!(backends[&sick.addr.to_string()]["weight"], 2);
    let log = node.log();
    assert_eq!(
        log.matches("cannot be read; ignored").count(),
        3,
        "each bad value said once:\n{log}"
    );
    assert!(log.contains("names no backend address"), "{log}");

    // Its check fails: down, as a static backend would be.
    sick.set_health(500);
    eventually("the discovered backend is down", LIMIT, || async {
        node.backend_state("web", sick.addr).await == "down"
    })
    .await;
    let changed = web_backends(&node).await[&sick.addr.to_string()]["last_change"].clone();
    // A reload (a change elsewhere in the file) keeps it and its state.
    node.write_config(&discovery_config(
        &etcd.urls(),
        &[&fixed],
        "[[pool]]\nname = \"spare\"\nbackends = [{ addr = \"127.0.0.1:13\" }]\n",
    ))
    .unwrap();
    let (code, _, body) = request(node.admin, "POST", "/reload", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let after = web_backends(&node).await;
    let kept = &after[&sick.addr.to_string()];
    assert_eq!(kept["discovered"], true, "{kept}");
    assert_eq!(kept["state"], "down", "health kept across the reload");
    assert_eq!(kept["last_change"], changed, "not checked afresh");
    for _ in 0..10 {
        let (code, _, body) = support::get(node.listener("web"), "/", &[]).await.unwrap();
        assert_eq!(code, 200);
        assert_eq!(&body[..], b"static", "a down backend takes nothing");
    }
    // A registration put again (a restarted register, a new weight) keeps
    // the health too.
    let again = format!("{{\"address\": \"{}\", \"weight\": 3}}", sick.addr);
    client.put(key.as_str(), again, under).await.unwrap();
    eventually("the new weight", LIMIT, || async {
        web_backends(&node).await[&sick.addr.to_string()]["weight"] == 3
    })
    .await;
    let kept = &web_backends(&node).await[&sick.addr.to_string()];
    assert_eq!(
        (&kept["state"], &kept["last_change"]),
        (&"down".into(), &changed)
    );
}

#[tokio::test]
async fn discovered_backends_are_kept_through_an_etcd_outage_and_a_restart() {
    let Some(mut etcd) = Etcd::start(1).await else {
        return;
    };
    let joined = Backend::start("joined").await;
    let states = tempfile::tempdir().unwrap();
    let state = states.path().join("lb");
    // No static backend at all: the pool is made of registrations.
    let config = discovery_config(&etcd.urls(), &[], "");
    let mut node = Geolb::start_with_state(&config, Some(&state)).await;
    let _register = Register::start(&etcd.urls(), joined.addr, "web-1");
    listed(&node, joined.addr, true, "registered").await;

    etcd.members[0].stop();
    connected(&node, false, "etcd gone").await;
    send(&node, 3).await;
    assert!(joined.hits() >= 3, "served with the last set seen");

    node.signal("TERM");
    assert!(node.wait_exit(LIMIT).await.success());
    let node = Geolb::start_with_state(&config, Some(&state)).await;
    assert!(
        web_backends(&node).await[&joined.addr.to_string()]["discovered"] == true,
        "restored from the state directory"
    );
    let hits = joined.hits();
    send(&node, 3).await;
    assert_eq!(joined.hits(), hits + 3, "and serving from the start");
    assert!(node.log().contains("discovered backends restored"));
}

/// A TCP relay in front of etcd that counts the bytes etcd sends through
/// it (`down`) and those sent to etcd (`up`): what one client costs on
/// the wire, HTTP/2 and gRPC framing included.
struct Meter {
    addr: SocketAddr,
    down: Arc<std::sync::atomic::AtomicU64>,
    up: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Meter {
    async fn start(to: u16) -> Meter {
        use std::sync::atomic::AtomicU64;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        async fn pump(
            mut from: tokio::net::tcp::OwnedReadHalf,
            mut to: tokio::net::tcp::OwnedWriteHalf,
            count: Arc<AtomicU64>,
        ) {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = from.read(&mut buf).await {
                if n == 0 || to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
                count.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (down, up) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (d, u) = (down.clone(), up.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", to)).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(sr, cw, d.clone()));
                tokio::spawn(pump(cr, sw, u.clone()));
            }
        });
        Meter {
            addr,
            down,
            up,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn bytes(&self) -> (u64, u64) {
        (
            self.down.load(Ordering::Relaxed),
            self.up.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The README's discovery numbers, by hand (about 40 s):
/// `cargo test --test cluster -- --ignored discovery_cost --nocapture`.
/// 1,000 backends register (each its own 10 s lease, kept alive as
/// `geolb register` does), stay 10 s, then leave (leases revoked), seen by
/// 20 watchers doing what a geolb node's discovery does (a full read, then
/// a watch of the prefix) and by one real geolb node; each behind a
/// [`Meter`].
#[tokio::test]
#[ignore]
async fn discovery_cost_of_1000_backends_and_20_watchers() {
    use std::sync::atomic::AtomicU64;
    const BACKENDS: usize = 1000;
    const WATCHERS: usize = 20;
    const REGISTRARS: usize = 10;
    const PREFIX: &str = "/geolb/pools/web/";
    let Some(etcd) = Etcd::start(1).await else {
        return;
    };
    let port = etcd.members[0].client;
    let mut watchers = Vec::new();
    for _ in 0..WATCHERS {
        let meter = Meter::start(port).await;
        let events = Arc::new(AtomicU64::new(0));
        let mut client = etcd_client::Client::connect([meter.url()], None)
            .await
            .unwrap();
        let read = client
            .get(PREFIX, Some(etcd_client::GetOptions::new().with_prefix()))
            .await
            .unwrap();
        let from = read.header().unwrap().revision() + 1;
        let options = etcd_client::WatchOptions::new()
            .with_prefix()
            .with_start_revision(from);
        let mut stream = client.watch(PREFIX, Some(options)).await.unwrap();
        let seen = events.clone();
        let task = tokio::spawn(async move {
            let _client = client;
            while let Ok(Some(response)) = stream.message().await {
                seen.fetch_add(response.events().len() as u64, Ordering::Relaxed);
            }
        });
        watchers.push((meter, events, task));
    }
    let node_meter = Meter::start(port).await;
    let node = Geolb::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\
         [cluster]\netcd = [\"{}\"]\nnode = \"lb-1\"\n\
         [[pool]]\nname = \"web\"\nmin_healthy = 0\ndiscovery = {{ prefix = \"pools/web/\" }}\n",
        node_meter.url()
    ))
    .await;
    eventually("the node watches", LIMIT, || async {
        node.log().contains("discovery: watching etcd")
    })
    .await;
    let snap = |w: &[(Meter, Arc<AtomicU64>, tokio::task::JoinHandle<()>)]| {
        let events: u64 = w.iter().map(|(_, e, _)| e.load(Ordering::Relaxed)).sum();
        let down: u64 = w.iter().map(|(m, _, _)| m.bytes().0).sum();
        (events, down)
    };
    let registrar_meter = Meter::start(port).await;
    let (base_events, base_down) = snap(&watchers);
    let node_base = node_meter.bytes().0;

    // Register: each registrar connection holds 100 leases, as 100
    // `geolb register` processes would hold one each.
    let began = std::time::Instant::now();
    let mut registrars = tokio::task::JoinSet::new();
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let registered = Arc::new(AtomicU64::new(0));
    for r in 0..REGISTRARS {
        let url = registrar_meter.url();
        let mut stop = stop_tx.subscribe();
        let registered = registered.clone();
        registrars.spawn(async move {
            let mut client = etcd_client::Client::connect([url], None).await.unwrap();
            let mut held = Vec::new();
            for i in 0..BACKENDS / REGISTRARS {
                let n = r * (BACKENDS / REGISTRARS) + i;
                let address = format!("10.{}.{}.{}:8080", n / 65536, (n / 256) % 256, n % 256);
                let lease = client.lease_grant(10, None).await.unwrap().id();
                let (keeper, kept) = client.lease_keep_alive(lease).await.unwrap();
                let value = format!(
                    "{{\"address\":\"{address}\",\"weight\":1,\"node\":\"web-{n}\",\"at\":\"2026-12-01T05:00:00Z\"}}"
                );
                let options = etcd_client::PutOptions::new().with_lease(lease);
                client
                    .put(format!("{PREFIX}{address}"), value, Some(options))
                    .await
                    .unwrap();
                registered.fetch_add(1, Ordering::Relaxed);
                held.push((lease, keeper, kept));
            }
            let mut renew = tokio::time::interval(Duration::from_millis(3333));
            loop {
                tokio::select! {
                    _ = renew.tick() => {
                        for (_, keeper, kept) in &mut held {
                            keeper.keep_alive().await.unwrap();
                            kept.message().await.unwrap();
                        }
                    }
                    _ = stop.recv() => break,
                }
            }
            for (lease, _, _) in held {
                client.lease_revoke(lease).await.unwrap();
            }
        });
    }
    let want = (BACKENDS * WATCHERS) as u64;
    eventually("every watcher saw every registration", LIMIT, || async {
        snap(&watchers).0 - base_events >= want
    })
    .await;
    let all_seen = began.elapsed();
    eventually("the node lists every backend", LIMIT, || async {
        node.status().await["pools"][0]["backends"]
            .as_array()
            .unwrap()
            .len()
            == BACKENDS
    })
    .await;
    let node_listed = began.elapsed();
    let (events_in, down_in) = snap(&watchers);
    let node_in = node_meter.bytes().0;
    let (reg_down_in, reg_up_in) = registrar_meter.bytes();

    // Steady: 10 s of keep-alives and nothing else.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (events_steady, down_steady) = snap(&watchers);
    let node_steady = node_meter.bytes().0;
    let (reg_down_steady, reg_up_steady) = registrar_meter.bytes();

    // Leave: every lease revoked.
    let _ = stop_tx.send(());
    while registrars.join_next().await.is_some() {}
    eventually("every watcher saw every removal", LIMIT, || async {
        snap(&watchers).0 - base_events >= 2 * want
    })
    .await;
    eventually("the node lists no backend", LIMIT, || async {
        node.status().await["pools"][0]["backends"]
            .as_array()
            .unwrap()
            .is_empty()
    })
    .await;
    let (events_out, down_out) = snap(&watchers);
    let node_out = node_meter.bytes().0;
    let per = |bytes: u64| bytes / WATCHERS as u64;
    eprintln!("measured: {BACKENDS} backends, {WATCHERS} watchers (debug build, loopback, no TLS)");
    eprintln!(
        "measured: register: {} events per watcher, {} bytes per watcher ({} per event); all watchers had all {all_seen:?} after the first put, the geolb node listed all {node_listed:?} after, receiving {} bytes",
        (events_in - base_events) / WATCHERS as u64,
        per(down_in - base_down),
        per(down_in - base_down) / BACKENDS as u64,
        node_in - node_base,
    );
    eprintln!(
        "measured: steady 10 s: {} events, {} bytes per watcher; geolb node {} bytes (progress requests); registrars' keep-alives {} bytes sent, {} received",
        events_steady - events_in,
        per(down_steady - down_in),
        node_steady - node_in,
        reg_up_steady - reg_up_in,
        reg_down_steady - reg_down_in,
    );
    eprintln!(
        "measured: leave: {} events per watcher, {} bytes per watcher; geolb node {} bytes",
        (events_out - events_steady) / WATCHERS as u64,
        per(down_out - down_steady),
        node_out - node_steady,
    );
    assert_eq!(events_steady, events_in, "keep-alives make no watch events");
    for (_, _, task) in watchers {
        task.abort();
    }
}

#[test]
fn the_register_unit_runs_geolb_register_per_pool_and_is_sandboxed() {
    let unit =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/geolb-register@.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.contains(&"Type=notify"));
    assert!(
        lines.contains(&"ExecStart=/usr/local/bin/geolb register --pool %i $GEOLB_REGISTER_ARGS")
    );
    // An instance verifies and rates low exposure where systemd-analyze is
    // installed, its command pointing at a binary that exists.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("geolb-register@web.service");
    std::fs::write(
        &copy,
        text.replace("/usr/local/bin/geolb", env!("CARGO_BIN_EXE_geolb")),
    )
    .unwrap();
    let analyze =
        |args: &[&std::ffi::OsStr]| Command::new("systemd-analyze").args(args).output().ok();
    let Some(out) = analyze(&["verify".as_ref(), copy.as_os_str()]) else {
        return;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
    let out = analyze(&[
        "security".as_ref(),
        "--offline=true".as_ref(),
        copy.as_os_str(),
    ])
    .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    let score: f64 = report
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for geolb-register@web.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}"));
    assert!(score <= 2.0, "exposure {score}:\n{report}");
}
