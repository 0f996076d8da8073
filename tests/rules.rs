//! The L7 rules through the real binary: redirects, path rewrites, body,
//! method and network limits, error pages, and a reload changing a rule
//! under an open keep-alive connection.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use support::library::Origin;
use support::{
    Backend, Geolb, bounded, connect_from, eventually, geolb_check, get, get_on, http1_client,
    http2_client, raw, request, status_of,
};

const LIMIT: Duration = Duration::from_secs(5);

/// One pool `p` of `backend` and listener `web` with `extra` keys.
fn config(backend: SocketAddr, extra: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[runtime]\nshutdown_grace = \"1s\"\n\n\
         [[pool]]\nname = \"p\"\nbackends = [{{ addr = \"{backend}\" }}]\n\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\naccess_log = true\n{extra}\n"
    )
}

async fn start(backend: SocketAddr, extra: &str) -> (Geolb, SocketAddr) {
    let geolb = Geolb::start(&config(backend, extra)).await;
    let web = geolb.listener("web");
    (geolb, web)
}

fn text(body: &Bytes) -> String {
    String::from_utf8_lossy(body).into_owned()
}

/// GET `path` on an open connection: status, headers, body as text.
async fn get_text(
    sender: &mut SendRequest<Empty<Bytes>>,
    path: &str,
) -> Result<(u16, HeaderMap, String), String> {
    let (status, headers, body) = get_on(sender, path).await?;
    Ok((status, headers, text(&body)))
}

fn location(headers: &HeaderMap) -> &str {
    headers.get("location").map_or("", |v| v.to_str().unwrap())
}

#[tokio::test]
async fn redirect_to_https_keeps_host_path_query_and_code() {
    let backend = Backend::start("b").await;
    let (geolb, web) = start(
        backend.addr,
        "redirect = { to = \"https\", port = 8443 }\n\
         routes = [{ host = \"shop.example\", pool = \"p\", redirect = { to = \"https\", code = 301 } }]",
    )
    .await;
    let (code, headers, body) = get(web, "/a/b?x=1&y=%20", &[("host", "t.example:8080")])
        .await
        .unwrap();
    assert_eq!(code, 308, "the default for to = \"https\"");
    assert_eq!(location(&headers), "https://t.example:8443/a/b?x=1&y=%20");
    assert!(
        text(&body).contains("https://t.example:8443/a/b"),
        "{body:?}"
    );
    // The route's own redirect wins; 443 is left out of the URL.
    let (code, headers, _) = get(web, "/cart", &[("host", "shop.example")])
        .await
        .unwrap();
    assert_eq!(code, 301);
    assert_eq!(location(&headers), "https://shop.example/cart");
    assert_eq!(backend.hits(), 0, "a redirect is never forwarded");
    // Answered by geolb, counted and logged like its other answers.
    eventually("the access line of the redirect", LIMIT, || async {
        geolb
            .log()
            .lines()
            .any(|l| l.contains("status=308") && l.contains("path=/a/b?x=1"))
    })
    .await;
    let metrics = geolb.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("listener=\"web\"") && l.contains("code=\"308\"")),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_route_redirects_elsewhere_with_its_path_and_others_are_forwarded() {
    let backend = Backend::start("b").await;
    let (_geolb, web) = start(
        backend.addr,
        "routes = [\n\
         { path_prefix = \"/old/\", pool = \"p\", redirect = { to = \"https://new.example{path}\", code = 301 } },\n\
         { path_prefix = \"/gone\", pool = \"p\", redirect = { to = \"https://new.example/\" } },\n\
         { path_prefix = \"/keep\", pool = \"p\", redirect = { to = \"/kept{path}{query}\", code = 307 } },\n]",
    )
    .await;
    let (code, headers, _) = get(web, "/old/page?q=1", &[]).await.unwrap();
    assert_eq!(code, 301);
    assert_eq!(location(&headers), "https://new.example/old/page");
    let (code, headers, _) = get(web, "/gone/x?q", &[]).await.unwrap();
    assert_eq!(code, 302, "the default for a URL");
    assert_eq!(
        location(&headers),
        "https://new.example/",
        "used as written"
    );
    let (code, headers, _) = get(web, "/keep/x?q=2", &[]).await.unwrap();
    assert_eq!(code, 307);
    assert_eq!(location(&headers), "/kept/keep/x?q=2");
    let (code, _, body) = get(web, "/other", &[]).await.unwrap();
    assert_eq!((code, text(&body)), (200, "b".to_owned()));
    // A Host that could end the header or name a second host is refused
    // before any rule runs.
    let reply = raw(
        web,
        b"GET /old/x HTTP/1.1\r\nHost: a.example\r\n\tevil.example\r\n\r\n",
        LIMIT,
    )
    .await;
    assert_eq!(status_of(&reply), 400, "{reply}");
    assert!(!reply.contains("evil"), "{reply}");
}

#[tokio::test]
async fn strip_and_replace_prefix_reach_the_backend_with_the_query() {
    let origin = Origin::start(None).await;
    let (geolb, web) = start(
        origin.addr,
        "routes = [\n\
         { path_prefix = \"/api/v1\", pool = \"p\", strip_prefix = true },\n\
         { path_prefix = \"/legacy/\", pool = \"p\", replace_prefix = \"/v2\" },\n]",
    )
    .await;
    let seen = |path: &'static str| async move {
        let (code, _, body) = get(web, path, &[]).await.unwrap();
        assert_eq!(code, 200, "{path}");
        // The origin answers "version method uri host=... proto=...".
        text(&body).split(' ').nth(2).unwrap().to_owned()
    };
    assert_eq!(seen("/api/v1/users?id=7").await, "/users?id=7");
    assert_eq!(seen("/api/v1").await, "/");
    assert_eq!(seen("/api/v1?x=1").await, "/?x=1");
    assert_eq!(seen("/legacy/users?id=7").await, "/v2/users?id=7");
    assert_eq!(
        seen("/legacy/").await,
        "/v2",
        "as nginx's proxy_pass with a URI"
    );
    assert_eq!(seen("/other/x").await, "/other/x");
    // A prefix ending inside a segment could leave one of dots for the
    // backend to resolve past the replacement: refused.
    for path in ["/api/v1..", "/api/v1..;x/y", "/api/v1%2e%2E/etc"] {
        let (code, _, _) = get(web, path, &[]).await.unwrap();
        assert_eq!(code, 400, "{path}");
    }
    // Absolute-form: the authority stays and becomes Host.
    let reply = raw(
        web,
        b"GET http://t.example/api/v1/abs HTTP/1.1\r\nHost: t.example\r\nConnection: close\r\n\r\n",
        LIMIT,
    )
    .await;
    assert!(reply.contains("GET /abs host=t.example"), "{reply}");
    // The access log keeps what the client asked for.
    eventually("the client's path in the access log", LIMIT, || async {
        geolb
            .log()
            .lines()
            .any(|l| l.contains("path=/api/v1/users?id=7"))
    })
    .await;
}

/// Sends a chunked POST of `chunks` chunks of `size` bytes; the raw reply.
async fn chunked_post(web: SocketAddr, chunks: usize, size: usize) -> String {
    let mut req =
        b"POST /upload HTTP/1.1\r\nHost: t.example\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..chunks {
        req.extend_from_slice(format!("{size:x}\r\n").as_bytes());
        req.extend(std::iter::repeat_n(b'x', size));
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    raw(web, &req, LIMIT).await
}

#[tokio::test]
async fn max_body_answers_413_by_length_and_while_streaming() {
    let backend = Backend::start("b").await;
    let (_geolb, web) = start(
        backend.addr,
        "max_body = 1000\n\
         routes = [{ path_prefix = \"/big/\", pool = \"p\", max_body = \"1MB\" }]",
    )
    .await;
    let post = |path: &'static str, n: usize| async move {
        request(web, "POST", path, &[], Bytes::from(vec![b'x'; n]))
            .await
            .unwrap()
    };
    let (code, headers, body) = post("/upload", 1001).await;
    assert_eq!(code, 413, "{body:?}");
    assert_eq!(headers.get("connection").unwrap(), "close");
    assert_eq!(backend.hits(), 0, "refused before forwarding");
    let (code, _, body) = post("/upload", 1000).await;
    assert_eq!((code, text(&body)), (200, "1000".to_owned()));
    // The route's own limit wins.
    let (code, _, _) = post("/big/upload", 5000).await;
    assert_eq!(code, 200);

    // Chunked: no length to judge by; cut when the bytes pass the limit.
    let reply = chunked_post(web, 4, 400).await;
    assert_eq!(status_of(&reply), 413, "{reply}");
    assert!(reply.contains("connection: close"), "{reply}");
    let reply = chunked_post(web, 2, 400).await;
    assert_eq!(status_of(&reply), 200, "{reply}");
    assert!(reply.ends_with("800"), "{reply}");
}

/// A body of `frames` frames of `size` bytes and no length known ahead:
/// HTTP/2 DATA frames without `content-length`.
struct Frames {
    left: usize,
    size: usize,
}

impl hyper::body::Body for Frames {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        self.left -= 1;
        let data = Bytes::from(vec![b'x'; self.size]);
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(data))))
    }
}

#[tokio::test]
async fn max_body_cuts_an_http2_body_without_a_length() {
    let backend = Backend::start("b").await;
    let (_geolb, web) = start(backend.addr, "max_body = 1000").await;
    let mut sender = http2_client(web).await;
    for (frames, want) in [(4, 413), (2, 200)] {
        let req = http::Request::post("http://t.example/upload")
            .body(Frames {
                left: frames,
                size: 400,
            })
            .unwrap();
        let resp = bounded(LIMIT, "h2 upload", sender.send_request(req))
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), want, "{frames} frames of 400 bytes");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        if want == 200 {
            assert_eq!(text(&body), "800");
        }
    }
}

/// Requests on one HTTP/2 connection name hosts in turn: each is routed on
/// its own `:authority` and sends it on as `Host`, whatever the one before
/// named, and a bad `Host` beside an authority seen before is still refused.
#[tokio::test]
async fn http2_requests_on_one_connection_are_routed_each_on_its_own_authority() {
    let (p, q) = (Backend::start("p").await, Backend::start("q").await);
    let geolb = Geolb::start(&format!(
        "{}\n[[pool]]\nname = \"q\"\nbackends = [{{ addr = \"{}\" }}]\n",
        config(p.addr, "routes = [{ host = \"b.example\", pool = \"q\" }]"),
        q.addr
    ))
    .await;
    let mut sender = http2_client(geolb.listener("web")).await;
    let mut hits = (0, 0);
    for authority in [
        "a.example",
        "b.example",
        "a.example",
        "a.example:8080",
        "b.example",
        "b.example",
    ] {
        let req = http::Request::get(format!("http://{authority}/headers"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = bounded(LIMIT, "h2 request", sender.send_request(req))
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{authority}");
        let body = text(&resp.into_body().collect().await.unwrap().to_bytes());
        assert!(
            body.lines().any(|l| l == format!("host: {authority}")),
            "{authority}: {body}"
        );
        if authority == "b.example" {
            hits.1 += 1;
        } else {
            hits.0 += 1;
        }
        assert_eq!((p.hits(), q.hits()), hits, "{authority}");
    }
    let req = http::Request::get("http://b.example/headers")
        .header("host", "x, y")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = bounded(LIMIT, "h2 request", sender.send_request(req))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert_eq!((p.hits(), q.hits()), hits);
}

#[tokio::test]
async fn methods_answer_405_with_allow() {
    let backend = Backend::start("b").await;
    let (_geolb, web) = start(
        backend.addr,
        "methods = [\"GET\", \"HEAD\"]\n\
         routes = [{ path_prefix = \"/api/\", pool = \"p\", methods = [\"GET\", \"POST\"] }]",
    )
    .await;
    let (code, headers, _) = request(web, "POST", "/", &[], Bytes::from_static(b"x"))
        .await
        .unwrap();
    assert_eq!(code, 405);
    assert_eq!(headers.get("allow").unwrap(), "GET, HEAD");
    let (code, _, _) = request(web, "HEAD", "/", &[], Bytes::new()).await.unwrap();
    assert_eq!(code, 200);
    let (code, _, _) = request(web, "POST", "/api/x", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(code, 200, "the route's list wins");
    let (code, headers, _) = request(web, "DELETE", "/api/x", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(code, 405);
    assert_eq!(headers.get("allow").unwrap(), "GET, POST");
    assert_eq!(backend.hits(), 2);
}

#[tokio::test]
async fn deny_wins_and_allow_lets_in_only_its_networks() {
    let backend = Backend::start("b").await;
    let (_geolb, web) = start(
        backend.addr,
        "allow = [\"127.0.1.0/24\", \"127.0.2.0/24\"]\ndeny = [\"127.0.2.0/24\"]\n\
         routes = [{ path_prefix = \"/open/\", pool = \"p\", allow = [] }]",
    )
    .await;
    let status = |src: &'static str, path: &'static str| async move {
        let mut c = http1_client(connect_from(src, web).await).await;
        get_text(&mut c, path).await.unwrap().0
    };
    assert_eq!(status("127.0.1.5", "/").await, 200, "allowed");
    assert_eq!(status("127.0.2.5", "/").await, 403, "allowed but denied");
    assert_eq!(status("127.0.3.5", "/").await, 403, "not allowed");
    assert_eq!(
        status("127.0.3.5", "/open/x").await,
        200,
        "the route allows all"
    );
    assert_eq!(
        status("127.0.2.5", "/open/x").await,
        403,
        "the listener's deny stays"
    );
}

#[tokio::test]
async fn error_pages_replace_geolb_s_own_bodies_but_not_its_status() {
    let backend = Backend::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let page = |name: &str, body: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        path.display().to_string()
    };
    let busy = page("503.html", "<h1>back soon</h1>");
    let other = page("4xx.json", "{\"error\":true}");
    let extra = format!(
        "deny = [\"127.0.2.0/24\"]\nerror_pages = {{ 503 = \"{busy}\", \"4xx\" = \"{other}\" }}\n\
         routes = [{{ path_prefix = \"/down/\", pool = \"down\" }}]\n\n\
         [[pool]]\nname = \"down\"\nbackends = [{{ addr = \"{}\", drain = true }}]",
        backend.addr
    );
    let (_geolb, web) = start(backend.addr, &extra).await;
    let (code, headers, body) = get(web, "/down/x", &[]).await.unwrap();
    assert_eq!(code, 503, "no backend of pool down may take it");
    assert_eq!(text(&body), "<h1>back soon</h1>");
    assert_eq!(
        headers.get("content-type").unwrap(),
        "text/html; charset=utf-8"
    );
    let mut c = http1_client(connect_from("127.0.2.9", web).await).await;
    let (code, headers, body) = get_text(&mut c, "/").await.unwrap();
    assert_eq!((code, body.as_str()), (403, "{\"error\":true}"));
    assert_eq!(headers.get("content-type").unwrap(), "application/json");
    // A backend's own answers pass as they are.
    let (code, _, body) = get(web, "/", &[]).await.unwrap();
    assert_eq!((code, text(&body)), (200, "b".to_owned()));
}

#[tokio::test]
async fn a_reload_changes_a_rule_for_the_next_request_on_an_open_connection() {
    let backend = Backend::start("b").await;
    let (geolb, web) = start(backend.addr, "").await;
    let reload = || async {
        let (code, _, body) = request(geolb.admin, "POST", "/reload", &[], Bytes::new())
            .await
            .unwrap();
        assert_eq!(code, 200, "{}", text(&body));
    };
    let mut c = http1_client(connect_from("127.0.0.1", web).await).await;
    assert_eq!(get_text(&mut c, "/x").await.unwrap().0, 200);
    geolb
        .write_config(&config(
            backend.addr,
            "routes = [{ path_prefix = \"/x\", pool = \"p\", methods = [\"POST\"] }]",
        ))
        .unwrap();
    reload().await;
    let (code, headers, _) = get_text(&mut c, "/x").await.unwrap();
    assert_eq!(code, 405, "the same connection sees the new rule");
    assert_eq!(headers.get("allow").unwrap(), "POST");
    geolb
        .write_config(&config(
            backend.addr,
            "routes = [{ path_prefix = \"/x\", pool = \"p\", redirect = { to = \"https\" } }]",
        ))
        .unwrap();
    reload().await;
    let (code, headers, _) = get_text(&mut c, "/x?a").await.unwrap();
    assert_eq!((code, location(&headers)), (308, "https://t.example/x?a"));
    geolb.write_config(&config(backend.addr, "")).unwrap();
    reload().await;
    assert_eq!(
        get_text(&mut c, "/x").await.unwrap().0,
        200,
        "still the same connection"
    );
}

/// A connection reuses the listener it found when it came only within
/// that config: after a reload it takes the new one, also while a
/// request of the old config, still out, keeps the old listener alive.
#[tokio::test]
async fn a_reload_reaches_an_open_connection_while_a_request_of_the_old_config_is_out() {
    let backend = Backend::start("b").await;
    let (geolb, web) = start(backend.addr, "").await;
    let mut c = http1_client(connect_from("127.0.0.1", web).await).await;
    assert_eq!(get_text(&mut c, "/x").await.unwrap().0, 200);
    let mut slow = http1_client(connect_from("127.0.0.1", web).await).await;
    let out = tokio::spawn(async move { get_text(&mut slow, "/slow?ms=3000").await });
    eventually("the slow request at the backend", LIMIT, || async {
        backend.hits() == 2
    })
    .await;
    geolb
        .write_config(&config(
            backend.addr,
            "routes = [{ path_prefix = \"/x\", pool = \"p\", methods = [\"POST\"] }]",
        ))
        .unwrap();
    let (code, _, body) = request(geolb.admin, "POST", "/reload", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(code, 200, "{}", text(&body));
    let (code, headers, _) = get_text(&mut c, "/x").await.unwrap();
    assert_eq!(code, 405, "the open connection sees the new rule");
    assert_eq!(headers.get("allow").unwrap(), "POST");
    let slow = bounded(LIMIT, "the slow answer", out)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (slow.0, slow.2.as_str()),
        (200, "b"),
        "the old request ends as it began"
    );
}

#[tokio::test]
async fn bad_rules_are_config_errors_with_key_and_line() {
    let backend: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let cases = [
        (
            "redirect = { to = \"https\", code = 304 }",
            "listener[0].redirect.code",
        ),
        ("deny = [\"10.0.0.1/8\"]", "listener[0].deny[0]"),
        (
            "routes = [{ path_prefix = \"/a\", pool = \"p\", strip_prefix = true, replace_prefix = \"/b\" }]",
            "listener[0].routes[0].replace_prefix",
        ),
        (
            "routes = [{ host = \"a.example\", pool = \"p\", strip_prefix = true }]",
            "listener[0].routes[0].strip_prefix",
        ),
        (
            "error_pages = { 503 = \"no-such-page.html\" }",
            "listener[0].error_pages.503",
        ),
    ];
    for (extra, key) in cases {
        let text = config(backend, extra);
        let at = text.lines().position(|l| l == extra).unwrap() + 1;
        let (ok, out, err) = geolb_check(&text);
        assert!(!ok, "{extra}: accepted\n{out}");
        let line = err
            .lines()
            .find(|l| l.contains(key))
            .unwrap_or_else(|| panic!("{extra}: no {key} in\n{err}"));
        assert!(line.contains(&format!("line {at}: ")), "{line}");
    }
}
