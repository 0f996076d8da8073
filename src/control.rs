//! `geolb reload`, `geolb status`, `geolb override`: a client of a running
//! daemon's admin API. Where the daemon listens and which token to send
//! come from the command line, else from the config file the daemon runs
//! (read leniently: a reload is most needed when that file was just
//! edited, and the daemon, not this client, says what is wrong with it).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::{self, TokenError};

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
    #[error("cannot reach the admin listener at {addr}: {error}")]
    Unreachable {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("the admin listener at {addr} broke off: {error}")]
    Http {
        addr: SocketAddr,
        error: hyper::Error,
    },
    #[error("no answer from the admin listener at {addr} within {ANSWER_TIMEOUT:?}")]
    Timeout { addr: SocketAddr },
    #[error("{0:?} cannot be sent in a request path")]
    Path(String),
}

/// A running daemon's admin listener and the token its POSTs need.
#[derive(Debug, Clone, PartialEq)]
pub struct Admin {
    pub addr: SocketAddr,
    pub token: Option<Arc<str>>,
}

/// The admin listener and token: `admin` and `token_file` as given, else
/// `[admin] listen` and `token_file` of `config`, else [`DEFAULT_ADMIN`]
/// and no token.
pub fn admin(
    admin: Option<SocketAddr>,
    token_file: Option<&Path>,
    config: Option<&Path>,
) -> Result<Admin, ControlError> {
    let from_config = match config {
        Some(path) if admin.is_none() || token_file.is_none() => Some(read_admin_section(path)?),
        _ => None,
    };
    let addr = match (admin, &from_config) {
        (Some(addr), _) => addr,
        (None, Some(section)) => section.listen.ok_or_else(|| ControlError::Config {
            path: config.unwrap_or(Path::new("")).to_path_buf(),
            message: "no [admin] listen: the daemon has no admin listener to ask \
                      (give --admin, or send SIGHUP)"
                .to_owned(),
        })?,
        (None, None) => DEFAULT_ADMIN,
    };
    let token_file = match token_file {
        Some(file) => Some(file.to_path_buf()),
        None => from_config.and_then(|section| section.token_file),
    };
    let token = token_file
        .map(|path| config::read_token(&path).map_err(|error| ControlError::Token { path, error }))
        .transpose()?;
    Ok(Admin {
        addr: reachable(addr),
        token,
    })
}

/// What a command needs of `[admin]`.
#[derive(Debug, Default)]
struct AdminSection {
    listen: Option<SocketAddr>,
    token_file: Option<PathBuf>,
}

/// `[admin] listen` and `token_file` alone, so that an error elsewhere in
/// the file does not keep `geolb reload` from asking the daemon (which
/// then reports it).
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
    let token_file = match admin.get("token_file") {
        None => None,
        Some(value) => {
            let file = value
                .as_str()
                .ok_or_else(|| fail(format!("admin.token_file = {value}: not a path")))?;
            // Relative to the config file's directory, as the daemon reads it.
            let base = path.parent().unwrap_or(Path::new(""));
            Some(base.join(file))
        }
    };
    Ok(AdminSection { listen, token_file })
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
        let addr = self.addr;
        let exchange = async {
            let stream = TcpStream::connect(addr)
                .await
                .map_err(|error| ControlError::Unreachable { addr, error })?;
            let http = |error| ControlError::Http { addr, error };
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(http)?;
            tokio::spawn(connection);
            let mut request = Request::new(Empty::<Bytes>::new());
            *request.method_mut() = method;
            *request.uri_mut() = uri;
            let headers = request.headers_mut();
            if let Ok(host) = HeaderValue::try_from(addr.to_string()) {
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
        };
        tokio::time::timeout(ANSWER_TIMEOUT, exchange)
            .await
            .map_err(|_| ControlError::Timeout { addr })?
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
                admin.addr,
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
                    admin.addr,
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
        let got = admin(None, None, Some(&config)).unwrap();
        assert_eq!(got.addr, "127.0.0.1:9200".parse().unwrap());
        assert_eq!(got.token.as_deref(), Some("from-config"));

        let flag_addr: SocketAddr = "127.0.0.2:9300".parse().unwrap();
        let other = dir.path().join("other.token");
        let got = admin(Some(flag_addr), Some(&other), Some(&config)).unwrap();
        assert_eq!(got.addr, flag_addr);
        assert_eq!(got.token.as_deref(), Some("from-flag"));

        let got = admin(None, None, None).unwrap();
        assert_eq!(
            got,
            Admin {
                addr: DEFAULT_ADMIN,
                token: None
            }
        );

        std::fs::write(&config, "[runtime]\n").unwrap();
        let e = admin(None, None, Some(&config)).unwrap_err();
        assert!(e.to_string().contains("no [admin] listen"), "{e}");
        std::fs::write(&config, "[admin\n").unwrap();
        let e = admin(None, None, Some(&config)).unwrap_err();
        assert!(e.to_string().contains("give --admin"), "{e}");
        std::fs::write(
            &config,
            "[admin]\nlisten = \"[::]:9100\"\ntoken_file = \"gone\"\n",
        )
        .unwrap();
        let e = admin(None, None, Some(&config)).unwrap_err();
        assert!(matches!(e, ControlError::Token { .. }), "{e}");
        let got = admin(None, Some(&other), Some(&config)).unwrap();
        assert_eq!(got.addr, "[::1]:9100".parse().unwrap());
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
