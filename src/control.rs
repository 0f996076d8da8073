//! `geolb reload`, `geolb status`, `geolb override`: a client of a running
//! daemon's admin API, over HTTP, HTTPS (`[admin] tls`) or its Unix socket
//! (`[admin] socket`). Where the daemon listens and which token to send
//! come from the command line, else from the config file the daemon runs
//! (read leniently: a reload is most needed when that file was just
//! edited, and the daemon, not this client, says what is wrong with it).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;

use crate::config::{self, TokenError};
use crate::tls_client;

/// Where `geolb reload` and the others look without `--admin` or `--config`.
pub const DEFAULT_ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9100);

/// A reload of a very large config takes a while (61 ms for 10,000
/// backends); anything slower than this is a daemon in trouble.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a command got no answer from the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },
    #[error("token file {}: {error}", path.display())]
    Token { path: PathBuf, error: TokenError },
    #[error("--ca: {0}")]
    Ca(std::io::Error),
    #[error("{0}")]
    Usage(String),
    #[error("cannot reach the admin listener at {endpoint}: {error}")]
    Unreachable {
        endpoint: Endpoint,
        error: std::io::Error,
    },
    #[error(
        "TLS with the admin listener at {endpoint} failed: {error} (give --ca FILE naming the CA \
         that signed its certificate, or --insecure to skip verification)"
    )]
    Tls {
        endpoint: Endpoint,
        error: std::io::Error,
    },
    #[error("the admin listener at {endpoint} broke off: {error}")]
    Http {
        endpoint: Endpoint,
        error: hyper::Error,
    },
    #[error("no answer from the admin listener at {endpoint} within {ANSWER_TIMEOUT:?}")]
    Timeout { endpoint: Endpoint },
    #[error("{0:?} cannot be sent in a request path")]
    Path(String),
}

/// Where a running daemon's admin API is, as `--admin` spells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `ADDR` (or `http://ADDR`): `[admin] listen`, plain HTTP.
    Http(SocketAddr),
    /// `https://HOST:PORT`: `[admin] listen` with `[admin] tls`. HOST is
    /// what the certificate must name (an IP address or a DNS name).
    Https { host: String, port: u16 },
    /// `unix:PATH`: `[admin] socket`.
    Unix(PathBuf),
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Endpoint, String> {
        const FORMS: &str = "expected ADDR (\"127.0.0.1:9100\", plain HTTP), \
                             https://HOST:PORT or unix:/path/to/admin.sock";
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(format!("{s:?}: no socket path after unix: ({FORMS})"));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        if let Some(rest) = s.strip_prefix("https://") {
            let rest = rest.strip_suffix('/').unwrap_or(rest);
            let port = rest
                .rsplit_once(':')
                .filter(|(host, _)| !host.is_empty() && !host.contains('/'))
                .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)));
            let Some((host, port)) = port else {
                return Err(format!("{s:?}: expected https://HOST:PORT, the port given"));
            };
            tls_client::server_name(host).map_err(|e| format!("{s:?}: bad host: {e}"))?;
            return Ok(Endpoint::Https {
                host: host.to_owned(),
                port,
            });
        }
        let rest = s.strip_prefix("http://").unwrap_or(s);
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        rest.parse()
            .map(Endpoint::Http)
            .map_err(|_| format!("{s:?}: {FORMS}"))
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Http(addr) => write!(f, "{addr}"),
            Endpoint::Https { host, port } => write!(f, "https://{host}:{port}"),
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// How an https admin listener's certificate is checked: `--ca FILE`
/// (PEM), else the bundled webpki roots; `--insecure`: not at all.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    pub ca: Option<PathBuf>,
    pub insecure: bool,
}

/// A running daemon's admin API and the token its POSTs need.
#[derive(Debug, Clone)]
pub struct Admin {
    pub endpoint: Endpoint,
    pub token: Option<Arc<str>>,
    /// For [`Endpoint::Https`].
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// The admin API and token: `admin` and `token_file` as given, else from
/// `[admin]` of `config` (its `socket` when set and connectable, else
/// `listen` over HTTPS when it has `tls`, else over HTTP), else
/// [`DEFAULT_ADMIN`] and no token.
pub fn admin(
    admin: Option<Endpoint>,
    token_file: Option<&Path>,
    config: Option<&Path>,
    tls: &TlsOptions,
) -> Result<Admin, ControlError> {
    let from_config = match config {
        Some(path) if admin.is_none() || token_file.is_none() => Some(read_admin_section(path)?),
        _ => None,
    };
    if let Some(given) = &admin
        && !matches!(given, Endpoint::Https { .. })
        && (tls.ca.is_some() || tls.insecure)
    {
        return Err(ControlError::Usage(format!(
            "--ca and --insecure are for an https:// admin listener, not {given}"
        )));
    }
    let endpoint = match (admin, &from_config) {
        (Some(endpoint), _) => endpoint,
        (None, Some(section)) => section.endpoint().ok_or_else(|| ControlError::Config {
            path: config.unwrap_or(Path::new("")).to_path_buf(),
            message: "no [admin] listen: the daemon has no admin listener to ask \
                      (give --admin, or send SIGHUP)"
                .to_owned(),
        })?,
        (None, None) => Endpoint::Http(DEFAULT_ADMIN),
    };
    let token_file = match token_file {
        Some(file) => Some(file.to_path_buf()),
        None => from_config.and_then(|section| section.token_file),
    };
    let token = token_file
        .map(|path| config::read_token(&path).map_err(|error| ControlError::Token { path, error }))
        .transpose()?;
    let tls = match endpoint {
        Endpoint::Https { .. } => Some(
            tls_client::client_config(tls.ca.as_deref(), !tls.insecure, &[b"http/1.1"])
                .map_err(ControlError::Ca)?,
        ),
        _ => None,
    };
    let endpoint = match endpoint {
        Endpoint::Http(addr) => Endpoint::Http(reachable(addr)),
        other => other,
    };
    Ok(Admin {
        endpoint,
        token,
        tls,
    })
}

/// What a command needs of `[admin]`.
#[derive(Debug, Default)]
struct AdminSection {
    listen: Option<SocketAddr>,
    token_file: Option<PathBuf>,
    /// `tls` is set: `listen` speaks HTTPS.
    tls: bool,
    socket: Option<PathBuf>,
}

impl AdminSection {
    /// The socket if this user can connect to it, else `listen`.
    fn endpoint(&self) -> Option<Endpoint> {
        if let Some(socket) = &self.socket
            && std::os::unix::net::UnixStream::connect(socket).is_ok()
        {
            return Some(Endpoint::Unix(socket.clone()));
        }
        let listen = reachable(self.listen?);
        Some(if self.tls {
            let host = match listen.ip() {
                IpAddr::V4(ip) => ip.to_string(),
                IpAddr::V6(ip) => format!("[{ip}]"),
            };
            Endpoint::Https {
                host,
                port: listen.port(),
            }
        } else {
            Endpoint::Http(listen)
        })
    }
}

/// `[admin] listen`, `token_file`, `tls` and `socket` alone, so that an
/// error elsewhere in the file does not keep `geolb reload` from asking
/// the daemon (which then reports it).
fn read_admin_section(path: &Path) -> Result<AdminSection, ControlError> {
    let fail = |message: String| ControlError::Config {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    let root: toml::Table = text.parse().map_err(|e| {
        fail(format!(
            "not TOML, so [admin] listen is unknown (give --admin): {e}"
        ))
    })?;
    let Some(admin) = root.get("admin").and_then(|a| a.as_table()) else {
        return Ok(AdminSection::default());
    };
    let listen = match admin.get("listen") {
        None => None,
        Some(value) => Some(value.as_str().and_then(|s| s.parse().ok()).ok_or_else(|| {
            fail(format!(
                "admin.listen = {value}: not an address like \"127.0.0.1:9100\""
            ))
        })?),
    };
    // Relative to the config file's directory, as the daemon reads them.
    let base = path.parent().unwrap_or(Path::new(""));
    let file = |key: &str| match admin.get(key) {
        None => Ok(None),
        Some(value) => value
            .as_str()
            .map(|file| Some(base.join(file)))
            .ok_or_else(|| fail(format!("admin.{key} = {value}: not a path"))),
    };
    let tls = admin
        .get("tls")
        .is_some_and(|t| t.as_array().is_none_or(|a| !a.is_empty()));
    Ok(AdminSection {
        listen,
        token_file: file("token_file")?,
        tls,
        socket: file("socket")?,
    })
}

/// A daemon listening on every address is reached on loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

/// The daemon's answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).trim_end().to_owned()
    }
}

impl Admin {
    /// One request, with the token when there is one; the whole answer.
    pub async fn send(&self, method: Method, path: &str) -> Result<Answer, ControlError> {
        let uri: Uri = path
            .parse()
            .map_err(|_| ControlError::Path(path.to_owned()))?;
        let endpoint = &self.endpoint;
        let unreachable = |error| ControlError::Unreachable {
            endpoint: endpoint.clone(),
            error,
        };
        let exchange = async {
            match endpoint {
                Endpoint::Http(addr) => {
                    let stream = TcpStream::connect(addr).await.map_err(unreachable)?;
                    self.exchange(stream, method, uri).await
                }
                Endpoint::Https { host, port } => {
                    let bare = host.trim_start_matches('[').trim_end_matches(']');
                    let stream = TcpStream::connect((bare, *port))
                        .await
                        .map_err(unreachable)?;
                    let tls_failed = |error| ControlError::Tls {
                        endpoint: endpoint.clone(),
                        error,
                    };
                    let name = tls_client::server_name(host).map_err(tls_failed)?;
                    let config = self.tls.clone().ok_or_else(|| {
                        ControlError::Usage("no TLS settings for an https admin listener".into())
                    })?;
                    let stream = TlsConnector::from(config)
                        .connect(name, stream)
                        .await
                        .map_err(tls_failed)?;
                    self.exchange(stream, method, uri).await
                }
                Endpoint::Unix(path) => {
                    let stream = UnixStream::connect(path).await.map_err(unreachable)?;
                    self.exchange(stream, method, uri).await
                }
            }
        };
        tokio::time::timeout(ANSWER_TIMEOUT, exchange)
            .await
            .map_err(|_| ControlError::Timeout {
                endpoint: endpoint.clone(),
            })?
    }

    /// One HTTP/1.1 request on `io`, a connection to the admin API.
    async fn exchange<I>(&self, io: I, method: Method, uri: Uri) -> Result<Answer, ControlError>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let http = |error| ControlError::Http {
            endpoint: self.endpoint.clone(),
            error,
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(http)?;
        tokio::spawn(connection);
        let mut request = Request::new(Empty::<Bytes>::new());
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        let host = match &self.endpoint {
            Endpoint::Http(addr) => addr.to_string(),
            Endpoint::Https { host, port } => format!("{host}:{port}"),
            Endpoint::Unix(_) => "localhost".to_owned(),
        };
        if let Ok(host) = HeaderValue::try_from(host) {
            headers.insert(header::HOST, host);
        }
        if let Some(token) = &self.token
            && let Ok(value) = HeaderValue::try_from(format!("Bearer {token}"))
        {
            headers.insert(header::AUTHORIZATION, value);
        }
        let response = sender.send_request(request).await.map_err(http)?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(http)?
            .to_bytes();
        Ok(Answer { status, body })
    }
}

/// What a command prints, and whether it succeeded (exit 0). A failed
/// command's text goes to stderr.
#[derive(Debug)]
pub struct Report {
    pub ok: bool,
    pub text: String,
}

impl Report {
    fn done(text: String) -> Report {
        Report { ok: true, text }
    }

    /// An answer other than 200, said with what the daemon said.
    fn refused(admin: &Admin, answer: &Answer) -> Report {
        let hint = if answer.status == StatusCode::UNAUTHORIZED {
            if admin.token.is_some() {
                " (the token sent is not the daemon's: check --token-file or [admin] token_file)"
            } else {
                " (the daemon asks for a token: give --token-file, or --config naming [admin] token_file)"
            }
        } else {
            ""
        };
        Report {
            ok: false,
            text: format!(
                "HTTP {} from {}{hint}: {}",
                answer.status,
                admin.endpoint,
                answer.text()
            ),
        }
    }
}

/// `POST /reload`: the summary of what changed, or each error the daemon
/// found, one per line.
pub async fn reload(admin: &Admin) -> Result<Report, ControlError> {
    let answer = admin.send(Method::POST, "/reload").await?;
    Ok(match answer.status {
        StatusCode::OK => Report::done(answer.text()),
        StatusCode::BAD_REQUEST => {
            let errors: Vec<String> = serde_json::from_slice::<serde_json::Value>(&answer.body)
                .ok()
                .and_then(|json| {
                    let list = json.get("errors")?.as_array()?;
                    Some(
                        list.iter()
                            .map(|e| e.as_str().map_or_else(|| e.to_string(), str::to_owned))
                            .collect(),
                    )
                })
                .unwrap_or_else(|| vec![answer.text()]);
            Report {
                ok: false,
                text: format!(
                    "reload refused by the daemon at {} ({} error(s)); the running config keeps serving:\n{}",
                    admin.endpoint,
                    errors.len(),
                    errors.join("\n")
                ),
            }
        }
        _ => Report::refused(admin, &answer),
    })
}

/// `GET /status`, pretty-printed.
pub async fn status(admin: &Admin) -> Result<Report, ControlError> {
    let answer = admin.send(Method::GET, "/status").await?;
    if answer.status != StatusCode::OK {
        return Ok(Report::refused(admin, &answer));
    }
    let text = answer.text();
    // The daemon pretty-prints, in its own key order; keep both.
    if text.contains('\n') {
        return Ok(Report::done(text));
    }
    let pretty = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|json| serde_json::to_string_pretty(&json).ok());
    Ok(Report::done(pretty.unwrap_or(text)))
}

/// A runtime override's target.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Datacenter(String),
    /// A backend in every pool that has it, or in one pool.
    Backend {
        addr: SocketAddr,
        pool: Option<String>,
    },
}

/// `drain`, `down` or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverrideState {
    Drain,
    Down,
    Auto,
}

impl OverrideState {
    pub fn as_str(self) -> &'static str {
        match self {
            OverrideState::Drain => "drain",
            OverrideState::Down => "down",
            OverrideState::Auto => "auto",
        }
    }
}

/// The admin path setting `state` on `target`.
pub fn override_path(target: &Target, state: OverrideState) -> String {
    let state = state.as_str();
    match target {
        Target::Datacenter(name) => format!("/datacenters/{}/{state}", escape(name)),
        Target::Backend { addr, pool: None } => format!("/backends/{addr}/{state}"),
        Target::Backend {
            addr,
            pool: Some(pool),
        } => format!("/pools/{}/backends/{addr}/{state}", escape(pool)),
    }
}

/// Percent-encodes what a path segment cannot hold as it is.
fn escape(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `POST` an override; the daemon's answer.
pub async fn set_override(
    admin: &Admin,
    target: &Target,
    state: OverrideState,
) -> Result<Report, ControlError> {
    let answer = admin
        .send(Method::POST, &override_path(target, state))
        .await?;
    Ok(if answer.status == StatusCode::OK {
        Report::done(answer.text())
    } else {
        Report::refused(admin, &answer)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_address_and_token_come_from_flags_then_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("geolb.toml");
        std::fs::write(dir.path().join("admin.token"), "from-config\n").unwrap();
        std::fs::write(dir.path().join("other.token"), "from-flag\n").unwrap();
        // An error elsewhere in the file does not matter here.
        std::fs::write(
            &config,
            "[admin]\nlisten = \"0.0.0.0:9200\"\ntoken_file = \"admin.token\"\n\n[[pool]]\nname = 1\n",
        )
        .unwrap();
        let none = TlsOptions::default();
        let http = |addr: &str| Endpoint::Http(addr.parse().unwrap());
        let got = admin(None, None, Some(&config), &none).unwrap();
        assert_eq!(got.endpoint, http("127.0.0.1:9200"));
        assert_eq!(got.token.as_deref(), Some("from-config"));

        let flag = http("127.0.0.2:9300");
        let other = dir.path().join("other.token");
        let got = admin(Some(flag.clone()), Some(&other), Some(&config), &none).unwrap();
        assert_eq!(got.endpoint, flag);
        assert_eq!(got.token.as_deref(), Some("from-flag"));

        let got = admin(None, None, None, &none).unwrap();
        assert_eq!(got.endpoint, Endpoint::Http(DEFAULT_ADMIN));
        assert_eq!(got.token, None);

        std::fs::write(&config, "[runtime]\n").unwrap();
        let e = admin(None, None, Some(&config), &none).unwrap_err();
        assert!(e.to_string().contains("no [admin] listen"), "{e}");
        std::fs::write(&config, "[admin\n").unwrap();
        let e = admin(None, None, Some(&config), &none).unwrap_err();
        assert!(e.to_string().contains("give --admin"), "{e}");
        std::fs::write(
            &config,
            "[admin]\nlisten = \"[::]:9100\"\ntoken_file = \"gone\"\n",
        )
        .unwrap();
        let e = admin(None, None, Some(&config), &none).unwrap_err();
        assert!(matches!(e, ControlError::Token { .. }), "{e}");
        let got = admin(None, Some(&other), Some(&config), &none).unwrap();
        assert_eq!(got.endpoint, http("[::1]:9100"));

        // With tls: https on listen; with a socket nobody listens on: not
        // the socket.
        std::fs::write(
            &config,
            "[admin]\nlisten = \"0.0.0.0:9100\"\ntls = [{ cert = \"c\", key = \"k\" }]\n\
             socket = \"admin.sock\"\n",
        )
        .unwrap();
        let got = admin(None, None, Some(&config), &none).unwrap();
        assert_eq!(
            got.endpoint,
            Endpoint::Https {
                host: "127.0.0.1".into(),
                port: 9100
            }
        );
        let _listening =
            std::os::unix::net::UnixListener::bind(dir.path().join("admin.sock")).unwrap();
        let got = admin(None, None, Some(&config), &none).unwrap();
        assert_eq!(got.endpoint, Endpoint::Unix(dir.path().join("admin.sock")));

        // --ca is for https only; a CA file that is not one is an error.
        let ca = TlsOptions {
            ca: Some(other.clone()),
            insecure: false,
        };
        let e = admin(Some(flag), None, None, &ca).unwrap_err();
        assert!(e.to_string().contains("https://"), "{e}");
        let https = "https://localhost:9100".parse().unwrap();
        let e = admin(Some(https), None, None, &ca).unwrap_err();
        assert!(matches!(e, ControlError::Ca(_)), "{e}");
    }

    #[test]
    fn endpoints_as_spelled() {
        let parse = |s: &str| s.parse::<Endpoint>();
        assert_eq!(
            parse("127.0.0.1:9100"),
            Ok(Endpoint::Http("127.0.0.1:9100".parse().unwrap()))
        );
        assert_eq!(
            parse("http://[::1]:9100/"),
            Ok(Endpoint::Http("[::1]:9100".parse().unwrap()))
        );
        assert_eq!(
            parse("https://admin.example.com:9443"),
            Ok(Endpoint::Https {
                host: "admin.example.com".into(),
                port: 9443
            })
        );
        assert_eq!(
            parse("https://[::1]:9443"),
            Ok(Endpoint::Https {
                host: "[::1]".into(),
                port: 9443
            })
        );
        assert_eq!(
            parse("unix:/run/geolb/admin.sock"),
            Ok(Endpoint::Unix("/run/geolb/admin.sock".into()))
        );
        for bad in [
            "unix:",
            "https://host",
            "https://:9100",
            "localhost:9100",
            "ftp://x:1",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
        for s in ["127.0.0.1:9100", "https://h:1", "unix:/a/b"] {
            assert_eq!(parse(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn override_paths() {
        let addr: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let path = |t: Target, s| override_path(&t, s);
        assert_eq!(
            path(Target::Datacenter("eu-west".into()), OverrideState::Drain),
            "/datacenters/eu-west/drain"
        );
        assert_eq!(
            path(Target::Backend { addr, pool: None }, OverrideState::Down),
            "/backends/10.0.0.1:80/down"
        );
        assert_eq!(
            path(
                Target::Backend {
                    addr,
                    pool: Some("web eu".into())
                },
                OverrideState::Auto
            ),
            "/pools/web%20eu/backends/10.0.0.1:80/auto"
        );
        let v6 = path(
            Target::Backend {
                addr: "[::1]:80".parse().unwrap(),
                pool: None,
            },
            OverrideState::Drain,
        );
        assert_eq!(v6, "/backends/[::1]:80/drain");
        assert!(v6.parse::<Uri>().is_ok(), "sent as it is");
    }
}
