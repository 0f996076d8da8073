//! What protects backends, through the real binary: `max_connections` and
//! the pool queue, passive health (ejection), `retry_on` and the retry
//! budget. The backends here are raw HTTP/1.1 servers that count what
//! reaches them.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::library::{Answer, Counting, TcpBackend, metric};
use support::{Backend, Geolb, bounded, eventually, get, request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

const LIMIT: Duration = Duration::from_secs(10);

fn config(body: &str) -> String {
    format!("[admin]\nlisten = \"127.0.0.1:0\"\n\n[runtime]\nshutdown_grace = \"5s\"\n\n{body}")
}

/// Backend `addr` of pool `pool` in a /status document.
fn backend_status(status: &serde_json::Value, pool: &str, addr: SocketAddr) -> serde_json::Value {
    status["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == pool)
        .and_then(|p| {
            p["backends"]
                .as_array()
                .unwrap()
                .iter()
                .find(|b| b["addr"] == addr.to_string())
        })
        .cloned()
        .unwrap_or_else(|| panic!("no backend {addr} in pool {pool}: {status}"))
}

fn pool_status(status: &serde_json::Value, pool: &str) -> serde_json::Value {
    status["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == pool)
        .cloned()
        .unwrap()
}

#[tokio::test]
async fn a_full_backend_queues_requests_and_the_queue_answers_503_when_full() {
    let gate = Arc::new(Semaphore::new(0));
    let backend = Counting::start(Answer::Gated(gate.clone())).await;
    let geolb = Geolb::start(&config(&format!(
        "[[pool]]\nname = \"p\"\nbackends = [{{ addr = \"{}\" }}]\n\
         max_connections = 2\nqueue = 1\nqueue_timeout = \"10s\"\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n",
        backend.addr
    )))
    .await;
    let web = geolb.listener("web");
    let held: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { get(web, "/", &[]).await }))
        .collect();
    eventually("two requests held at the backend", LIMIT, || async {
        Counting::get(&backend.in_flight) == 2
    })
    .await;
    let third = tokio::spawn(async move { get(web, "/", &[]).await });
    eventually("the third request queued", LIMIT, || async {
        pool_status(&geolb.status().await, "p")["queued"] == 1
    })
    .await;
    // The queue holds one: a fourth is refused at once.
    let started = Instant::now();
    let (code, _, body) = get(web, "/", &[]).await.unwrap();
    assert_eq!(code, 503, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("queue is full"));
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(Counting::get(&backend.requests), 2);
    // One ends: the queued one takes its place, never a third at once.
    gate.add_permits(1);
    eventually("the queued request reaches the backend", LIMIT, || async {
        Counting::get(&backend.requests) == 3
    })
    .await;
    gate.add_permits(2);
    for task in held.into_iter().chain([third]) {
        let (code, _, _) = bounded(LIMIT, "a held request", task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(code, 200);
    }
    assert_eq!(Counting::get(&backend.most), 2);
    let text = geolb.metrics().await;
    let full = [("pool", "p"), ("reason", "full")];
    assert_eq!(
        metric(&text, "geolb_pool_queue_refused_total", &full),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "geolb_pool_queue_length", &[("pool", "p")]),
        Some(0.0)
    );
}

#[tokio::test]
async fn a_request_waits_at_most_queue_timeout() {
    let gate = Arc::new(Semaphore::new(0));
    let backend = Counting::start(Answer::Gated(gate.clone())).await;
    let geolb = Geolb::start(&config(&format!(
        "[[pool]]\nname = \"p\"\nbackends = [{{ addr = \"{}\" }}]\n\
         max_connections = 1\nqueue_timeout = \"300ms\"\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n",
        backend.addr
    )))
    .await;
    let web = geolb.listener("web");
    let held = tokio::spawn(async move { get(web, "/", &[]).await });
    eventually("one request held", LIMIT, || async {
        Counting::get(&backend.in_flight) == 1
    })
    .await;
    let started = Instant::now();
    let (code, _, body) = get(web, "/", &[]).await.unwrap();
    let waited = started.elapsed();
    assert_eq!(code, 503, "{}", String::from_utf8_lossy(&body));
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    gate.add_permits(1);
    assert_eq!(held.await.unwrap().unwrap().0, 200);
    let text = geolb.metrics().await;
    let timeout = [("pool", "p"), ("reason", "timeout")];
    assert_eq!(
        metric(&text, "geolb_pool_queue_refused_total", &timeout),
        Some(1.0)
    );
}

/// One HTTP/2 connection with 50 streams at once to a pool whose backend
/// takes 4: the backend never sees more than 4 connections.
#[tokio::test]
async fn http2_fan_out_is_bounded_by_max_connections() {
    let backend = Counting::start(Answer::After(200, Duration::from_millis(20))).await;
    let geolb = Geolb::start(&config(&format!(
        "[[pool]]\nname = \"p\"\nbackends = [{{ addr = \"{}\" }}]\n\
         max_connections = 4\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
         timeouts = {{ connect = \"10s\" }}\n",
        backend.addr
    )))
    .await;
    let stream = TcpStream::connect(geolb.listener("web")).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let streams: Vec<_> = (0..50)
        .map(|_| {
            let mut sender = sender.clone();
            tokio::spawn(async move {
                let req = http::Request::get("http://fan.test/")
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let resp = sender.send_request(req).await.unwrap();
                let status = resp.status().as_u16();
                resp.into_body().collect().await.unwrap();
                status
            })
        })
        .collect();
    for s in streams {
        assert_eq!(bounded(LIMIT, "an h2 stream", s).await.unwrap(), 200);
    }
    assert_eq!(Counting::get(&backend.requests), 50);
    assert!(Counting::get(&backend.most) <= 4);
    let connections = Counting::get(&backend.connections);
    assert!(connections <= 4, "{connections} backend connections");
}

#[tokio::test]
async fn a_refusing_backend_is_ejected_before_any_check_and_back_off_grows() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let dead = support::refused_addr();
    let geolb = Geolb::start(&config(&format!(
        "[[pool]]\nname = \"p\"\nbackends = [{{ addr = \"{dead}\" }}, {{ addr = \"{}\" }}, {{ addr = \"{}\" }}]\n\
         outlier = {{ consecutive_failures = 2, ejection = \"500ms\" }}\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n",
        a.addr, b.addr
    )))
    .await;
    let web = geolb.listener("web");
    // Connect failures are retried on the others: no client sees one.
    for _ in 0..12 {
        assert_eq!(get(web, "/", &[]).await.unwrap().0, 200);
    }
    let first = backend_status(&geolb.status().await, "p", dead);
    assert_eq!(first["ejected"], true, "{first}");
    assert_eq!(
        first["state"], "up",
        "the active state is separate: {first}"
    );
    assert_eq!(first["ejections"], 1);
    let text = geolb.metrics().await;
    let labels = [("pool", "p"), ("backend", &dead.to_string())];
    assert_eq!(
        metric(&text, "geolb_backend_ejections_total", &labels),
        Some(1.0)
    );
    assert_eq!(metric(&text, "geolb_backend_ejected", &labels), Some(1.0));
    eventually("the ejection to end", LIMIT, || async {
        backend_status(&geolb.status().await, "p", dead)["ejected"] == false
    })
    .await;
    // Tried again, failing again: ejected for twice as long.
    let mut second = serde_json::Value::Null;
    for _ in 0..12 {
        assert_eq!(get(web, "/", &[]).await.unwrap().0, 200);
        second = backend_status(&geolb.status().await, "p", dead);
        if second["ejected"] == true {
            break;
        }
    }
    assert_eq!(second["ejections"], 2, "{second}");
    let left = second["ejected_seconds_left"].as_f64().unwrap();
    assert!(left > 0.5, "second ejection: {left} s left");
}

#[tokio::test]
async fn at_most_max_ejected_percent_of_a_pool_is_ejected() {
    let (d1, d2) = (support::refused_addr(), support::refused_addr());
    let geolb = Geolb::start(&config(&format!(
        "[[pool]]\nname = \"p\"\nbackends = [{{ addr = \"{d1}\" }}, {{ addr = \"{d2}\" }}]\n\
         outlier = {{ consecutive_failures = 1, ejection = \"30s\" }}\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n"
    )))
    .await;
    let web = geolb.listener("web");
    for _ in 0..6 {
        assert_eq!(get(web, "/", &[]).await.unwrap().0, 502);
    }
    let status = geolb.status().await;
    let ejected = [d1, d2]
        .iter()
        .filter(|d| backend_status(&status, "p", **d)["ejected"] == true)
        .count();
    assert_eq!(ejected, 1, "50 % of two: {status}");
}

#[tokio::test]
async fn ejection_survives_a_reload_for_backends_that_stay() {
    let a = Backend::start("a").await;
    let dead = support::refused_addr();
    let pool = |retries: u32| {
        config(&format!(
            "[[pool]]\nname = \"p\"\nbackends = [{{ addr = \"{dead}\" }}, {{ addr = \"{}\" }}]\n\
             outlier = {{ consecutive_failures = 1, ejection = \"60s\" }}\n\
             [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\nretries = {retries}\n",
            a.addr
        ))
    };
    let geolb = Geolb::start(&pool(2)).await;
    let web = geolb.listener("web");
    for _ in 0..3 {
        assert_eq!(get(web, "/", &[]).await.unwrap().0, 200);
    }
    assert_eq!(
        backend_status(&geolb.status().await, "p", dead)["ejected"],
        true
    );
    geolb.write_config(&pool(1)).unwrap();
    let (code, _, body) = request(geolb.admin, "POST", "/reload", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let status = geolb.status().await;
    assert_eq!(status["config_generation"], 2);
    let after = backend_status(&status, "p", dead);
    assert_eq!(after["ejected"], true, "{after}");
    assert_eq!(after["ejections"], 1, "{after}");
}

#[tokio::test]
async fn a_503_is_retried_elsewhere_for_get_never_for_post() {
    let busy = Counting::start(Answer::After(503, Duration::ZERO)).await;
    let a = Backend::start("a").await;
    let geolb = Geolb::start(&config(&format!(
        "[[pool]]\nname = \"p\"\nbackends = [{{ addr = \"{}\" }}, {{ addr = \"{}\" }}]\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
         retries = 1\nretry_on = [\"connect\", \"reset\", \"503\"]\n",
        busy.addr, a.addr
    )))
    .await;
    let web = geolb.listener("web");
    for _ in 0..6 {
        let (code, _, body) = get(web, "/", &[]).await.unwrap();
        assert_eq!((code, &body[..]), (200, &b"a"[..]));
    }
    let retried = Counting::get(&busy.requests);
    assert!(
        retried >= 2,
        "round robin never sent a GET to the 503 backend"
    );
    // Each 503 came whole with its head: its connection went back to the
    // idle list at once, not closed with the answer dropped unread.
    assert_eq!(
        Counting::get(&busy.connections),
        1,
        "{retried} retried 503s on one backend connection"
    );
    let before = Counting::get(&busy.requests);
    let mut answered_503 = 0;
    for _ in 0..6 {
        let (code, _, _) = request(web, "POST", "/", &[], Bytes::from_static(b"x"))
            .await
            .unwrap();
        assert!(code == 200 || code == 503, "{code}");
        answered_503 += usize::from(code == 503);
    }
    assert!(answered_503 > 0, "no POST reached the 503 backend");
    // Each 503 went to the client as is: nothing sent twice.
    assert_eq!(Counting::get(&busy.requests) - before, answered_503);
}

/// Two backends that both answer 503, 20 clients at once: without a
/// budget every request would be sent twice; with the default one (20 %
/// of active, at least 3) the extra requests stay a fraction.
#[tokio::test]
async fn the_retry_budget_keeps_a_failing_pool_from_doubling_its_load() {
    let delay = Duration::from_millis(20);
    let (x, y) = (
        Counting::start(Answer::After(503, delay)).await,
        Counting::start(Answer::After(503, delay)).await,
    );
    let geolb = Geolb::start(&config(&format!(
        "[[pool]]\nname = \"p\"\nbackends = [{{ addr = \"{}\" }}, {{ addr = \"{}\" }}]\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
         retries = 1\nretry_on = [\"503\"]\n",
        x.addr, y.addr
    )))
    .await;
    let web = geolb.listener("web");
    let clients: Vec<_> = (0..20)
        .map(|_| {
            tokio::spawn(async move {
                for _ in 0..10 {
                    assert_eq!(get(web, "/", &[]).await.unwrap().0, 503);
                }
            })
        })
        .collect();
    for c in clients {
        bounded(LIMIT, "a client", c).await.unwrap();
    }
    let sent = Counting::get(&x.requests) + Counting::get(&y.requests);
    assert!(sent > 200, "no retry at all: {sent}");
    assert!(
        sent <= 300,
        "{sent} backend requests for 200 client requests"
    );
    let text = geolb.metrics().await;
    let exhausted = metric(
        &text,
        "geolb_retry_budget_exhausted_total",
        &[("pool", "p")],
    );
    assert!(exhausted.unwrap() > 0.0, "{exhausted:?}");
}

/// A tcp pool with `max_connections = 1`: a second connection waits in the
/// queue, is closed after `queue_timeout`, and a third is served once the
/// first has closed.
#[tokio::test]
async fn a_tcp_pool_queues_connections_too() {
    let echo = TcpBackend::echo().await;
    let geolb = Geolb::start(&config(&format!(
        "[[pool]]\nname = \"p\"\nbackends = [{{ addr = \"{}\" }}]\n\
         max_connections = 1\nqueue_timeout = \"300ms\"\n\
         [[listener]]\nname = \"db\"\nbind = \"127.0.0.1:0\"\nprotocol = \"tcp\"\npool = \"p\"\n",
        echo.addr
    )))
    .await;
    let db = geolb.listener("db");
    let round_trip = |mut s: TcpStream| async move {
        s.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        bounded(LIMIT, "the echo", s.read_exact(&mut buf))
            .await
            .unwrap();
        assert_eq!(&buf, b"ping");
        s
    };
    let first = round_trip(TcpStream::connect(db).await.unwrap()).await;
    let mut second = TcpStream::connect(db).await.unwrap();
    second.write_all(b"ping").await.unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let read = bounded(LIMIT, "the second to close", second.read_to_end(&mut buf)).await;
    assert!(
        read.is_err() || buf.is_empty(),
        "the second was served: {buf:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    drop(first);
    eventually("the first connection's slot to free", LIMIT, || async {
        pool_status(&geolb.status().await, "p")["backends"][0]["active"] == 0
    })
    .await;
    round_trip(TcpStream::connect(db).await.unwrap()).await;
    let text = geolb.metrics().await;
    let timeout = [("pool", "p"), ("reason", "timeout")];
    assert_eq!(
        metric(&text, "geolb_pool_queue_refused_total", &timeout),
        Some(1.0)
    );
}

/// The tests above count on their refusing backend staying refused while
/// other tests bind listeners beside them.
#[tokio::test]
async fn a_refused_address_stays_refused_and_cannot_be_bound() {
    let dead = support::refused_addr();
    let err = TcpStream::connect(dead).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(tokio::net::TcpListener::bind(dead).await.is_err());
    assert!(std::net::TcpListener::bind(dead).is_err());
}
