//! `geolb demo`: three data centers of three tiny backends each, the load
//! balancer in front of them and the admin listener, all on loopback, with
//! commands that work when pasted.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const DATACENTERS: [(&str, &str); 3] =
    [("eu-west", "eu"), ("us-east", "us"), ("ap-southeast", "ap")];

/// Starts a backend on an ephemeral loopback port that answers every path
/// with its name (and `/health` with `ok`).
pub async fn spawn_backend(name: String) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let name = name.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let body = if req.uri().path() == "/health" {
                        "ok\n".to_string()
                    } else {
                        format!(
                            "hello from {name} ({} {})\n",
                            req.method(),
                            req.uri().path()
                        )
                    };
                    async move {
                        let mut resp = Response::new(Full::new(Bytes::from(body)));
                        *resp.status_mut() = StatusCode::OK;
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// `preferred` if it is free now, else an ephemeral port.
fn free_or_ephemeral(preferred: &str) -> String {
    match std::net::TcpListener::bind(preferred) {
        Ok(_) => preferred.to_string(),
        Err(_) => "127.0.0.1:0".to_string(),
    }
}

pub async fn run() -> anyhow::Result<()> {
    let mut pools = String::new();
    for (dc, short) in DATACENTERS {
        let mut backends = Vec::new();
        for i in 1..=3 {
            let addr = spawn_backend(format!("{dc}-{i}")).await?;
            backends.push(format!("{{ addr = \"{addr}\" }}"));
        }
        pools.push_str(&format!(
            "[[pool]]\nname = \"web-{short}\"\n\
             check = {{ kind = \"http\", path = \"/health\", interval = \"1s\", timeout = \"500ms\" }}\n\
             backends = [{}]\n\n",
            backends.join(", ")
        ));
    }
    let web = free_or_ephemeral("127.0.0.1:8080");
    let admin = free_or_ephemeral("127.0.0.1:9100");
    let config_text = format!(
        "# written by `geolb demo`\n[admin]\nlisten = \"{admin}\"\n\n{pools}\
         [[listener]]\nname = \"web\"\nbind = \"{web}\"\npool = \"web-eu\"\naccess_log = true\n\
         routes = [\n  {{ host = \"us.localhost\", pool = \"web-us\" }},\n  \
         {{ path_prefix = \"/us/\", pool = \"web-us\" }},\n  {{ path_prefix = \"/ap/\", pool = \"web-ap\" }},\n]\n"
    );
    let dir: PathBuf = std::env::temp_dir().join(format!("geolb-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("geolb.toml");
    std::fs::write(&path, &config_text)
        .with_context(|| format!("cannot write {}", path.display()))?;
    let config =
        crate::app::load_checked(&path, None).map_err(|e| anyhow::anyhow!("demo config: {e}"))?;

    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(crate::app::serve(path.clone(), config, Some(ready_tx)));
    let Ok(daemon) = ready_rx.await else {
        return server.await?;
    };
    let web_addr = daemon
        .listeners
        .first()
        .map(|l| l.local_addr)
        .context("the demo listener did not start")?;
    let admin_addr = daemon
        .admin_addr
        .context("the admin listener did not start")?;
    println!(
        "\ngeolb demo is running (config: {config}). Try, in another terminal:\n\n\
         \x20 curl http://{web_addr}/                        # web-eu, round robin over eu-west-1..3\n\
         \x20 curl http://{web_addr}/us/hello                # path route to web-us\n\
         \x20 curl -H 'Host: us.localhost' http://{web_addr}/ # host route to web-us\n\
         \x20 curl http://{admin_addr}/status                 # pools, backends, health (JSON)\n\
         \x20 curl http://{admin_addr}/metrics                # Prometheus metrics\n\
         \x20 open http://{admin_addr}/ in a browser          # status page\n\
         \x20 curl -X POST http://{admin_addr}/reload         # re-read {config}\n\n\
         Ctrl-C stops it.\n",
        config = path.display()
    );
    let result = server.await?;
    let _ = std::fs::remove_dir_all(&dir);
    result
}
