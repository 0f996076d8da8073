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

/// (name, pool suffix, location, public address given out in DNS)
const DATACENTERS: [(&str, &str, (f64, f64), &str); 3] = [
    ("eu-west", "eu", (53.35, -6.26), "198.51.100.10"),
    ("us-east", "us", (39.04, -77.49), "203.0.113.10"),
    ("ap-southeast", "ap", (1.35, 103.82), "192.0.2.10"),
];

/// MaxMind's test database (Apache-2.0 OR MIT, see geoip/README.md),
/// carried in the binary so the demo runs from any directory.
const TEST_GEOIP: &[u8] = include_bytes!("../geoip/GeoIP2-City-Test.mmdb");

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

/// Tests set this to keep the demo off fixed ports.
const EPHEMERAL_ENV: &str = "GEOLB_DEMO_EPHEMERAL";

/// `preferred` if it is free now, else an ephemeral port.
fn free_or_ephemeral(preferred: &str) -> String {
    if std::env::var_os(EPHEMERAL_ENV).is_some() {
        return "127.0.0.1:0".to_string();
    }
    match std::net::TcpListener::bind(preferred) {
        Ok(_) => preferred.to_string(),
        Err(_) => "127.0.0.1:0".to_string(),
    }
}

/// Like [`free_or_ephemeral`] for a DNS address (UDP and TCP).
fn free_or_ephemeral_udp(preferred: &str) -> String {
    if std::env::var_os(EPHEMERAL_ENV).is_some() {
        return "127.0.0.1:0".to_string();
    }
    match (
        std::net::UdpSocket::bind(preferred),
        std::net::TcpListener::bind(preferred),
    ) {
        (Ok(_), Ok(_)) => preferred.to_string(),
        _ => "127.0.0.1:0".to_string(),
    }
}

pub async fn run() -> anyhow::Result<()> {
    let mut pools = String::new();
    let mut datacenters = String::new();
    for (dc, short, (lat, lon), public) in DATACENTERS {
        datacenters.push_str(&format!(
            "[[datacenter]]\nname = \"{dc}\"\nlocation = {{ lat = {lat}, lon = {lon} }}\n\
             addresses = [\"{public}\"]\npools = [\"web-{short}\"]\n\n"
        ));
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
    let dns = free_or_ephemeral_udp("127.0.0.1:5353");
    let config_text = format!(
        "# written by `geolb demo`\n[runtime]\nstate_dir = \"state\"\n\n\
         [admin]\nlisten = \"{admin}\"\n\n\
         [geoip]\ndatabase = \"GeoIP2-City-Test.mmdb\"\n\n\
         [dns]\nlisten = [\"{dns}\"]\n\n\
         [[dns.zone]]\norigin = \"mysite.test\"\nttl = 300\n\
         soa = {{ mname = \"ns1.mysite.test.\", rname = \"hostmaster.mysite.test.\", serial = 1, refresh = \"1h\", retry = \"10m\", expire = \"14d\", minimum = \"60s\" }}\n\
         ns = [\"ns1.mysite.test.\"]\n\
         records = [\n  {{ name = \"ns1\", type = \"A\", value = \"127.0.0.1\" }},\n  \
         {{ name = \"www\", type = \"CNAME\", value = \"api.mysite.test.\" }},\n]\n\n\
         [[dns.geo]]\nname = \"api.mysite.test\"\nttl = 30\n\n{datacenters}{pools}\
         [[listener]]\nname = \"web\"\nbind = \"{web}\"\npool = \"web-eu\"\naccess_log = true\n\
         routes = [\n  {{ host = \"us.localhost\", pool = \"web-us\" }},\n  \
         {{ path_prefix = \"/us/\", pool = \"web-us\" }},\n  {{ path_prefix = \"/ap/\", pool = \"web-ap\" }},\n]\n"
    );
    let dir: PathBuf = std::env::temp_dir().join(format!("geolb-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(dir.join("GeoIP2-City-Test.mmdb"), TEST_GEOIP).with_context(|| {
        format!(
            "cannot write the test GeoIP database into {}",
            dir.display()
        )
    })?;
    let path = dir.join("geolb.toml");
    std::fs::write(&path, &config_text)
        .with_context(|| format!("cannot write {}", path.display()))?;
    let config =
        crate::reload::check(&path, None).map_err(|e| anyhow::anyhow!("demo config: {e}"))?;

    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(crate::app::serve(
        path.clone(),
        crate::app::FirstConfig::file(config),
        Some(ready_tx),
        false,
    ));
    let Ok(daemon) = ready_rx.await else {
        return server.await?;
    };
    let web_addr = daemon
        .listeners()
        .first()
        .map(|l| l.local_addr)
        .context("the demo listener did not start")?;
    let admin_addr = daemon
        .admin_addr
        .context("the admin listener did not start")?;
    let dns_addr = daemon
        .dns_addrs()
        .first()
        .copied()
        .context("the DNS listener did not start")?;
    let dig = format!("dig @{} -p {}", dns_addr.ip(), dns_addr.port());
    // This very binary: `cargo run` works only inside the source tree.
    let geolb = std::env::current_exe().map_or_else(|_| "geolb".to_owned(), |p| shell_word(&p));
    println!(
        "\ngeolb demo is running (config: {config}). Try, in another terminal:\n\n\
         \x20 curl http://{web_addr}/                        # web-eu, round robin over eu-west-1..3\n\
         \x20 curl http://{web_addr}/us/hello                # path route to web-us\n\
         \x20 curl -H 'Host: us.localhost' http://{web_addr}/ # host route to web-us\n\
         \x20 curl http://{admin_addr}/status                 # pools, backends, health (JSON)\n\
         \x20 curl http://{admin_addr}/metrics                # Prometheus metrics\n\
         \x20 open http://{admin_addr}/ in a browser          # status page\n\
         \x20 curl -X POST http://{admin_addr}/reload         # re-read {config}\n\n\
         GeoDNS (the bundled MaxMind test database places these subnets):\n\n\
         \x20 {dig} api.mysite.test +subnet=81.2.69.160/32    # London    -> eu-west 198.51.100.10\n\
         \x20 {dig} api.mysite.test +subnet=216.160.83.56/32  # Milton WA -> us-east 203.0.113.10\n\
         \x20 {dig} api.mysite.test +subnet=175.16.199.1/32   # Changchun -> ap-southeast 192.0.2.10\n\
         \x20 {dig} www.mysite.test                           # CNAME chain to the geo name\n\
         \x20 {geolb} lookup --config {config_word} 81.2.69.160 --admin {admin_addr}\n\n\
         Ctrl-C stops it.\n",
        config = path.display(),
        config_word = shell_word(&path),
    );
    let result = server.await?;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// `path` as one word of a POSIX shell command: as it is when that is
/// safe, else in single quotes.
fn shell_word(path: &std::path::Path) -> String {
    let text = path.display().to_string();
    let plain = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:@,=%".contains(&b));
    if plain {
        text
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::shell_word;
    use std::path::Path;

    #[test]
    fn paths_are_quoted_for_the_shell_only_when_needed() {
        assert_eq!(shell_word(Path::new("/usr/bin/geolb")), "/usr/bin/geolb");
        assert_eq!(
            shell_word(Path::new("/tmp/my dir/geolb")),
            "'/tmp/my dir/geolb'"
        );
        assert_eq!(shell_word(Path::new("/tmp/it's")), "'/tmp/it'\\''s'");
    }
}
