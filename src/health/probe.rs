//! One probe of a target: connect (tcp), or GET and read the status (http,
//! and https over rustls). The caller bounds it with the check's timeout.

use std::io;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::HealthKey;
use crate::config::{HttpProbe, Probe};
use crate::proxy_protocol;
use crate::tls_client;

/// How to probe one target, prepared once per checker (an https check's
/// TLS client config reads its CA file once, not on every probe).
pub struct Prober {
    tls: Option<TlsConnector>,
}

impl Prober {
    pub fn new(key: &HealthKey) -> io::Result<Prober> {
        let tls = match &key.check.probe {
            Probe::Http(http) if http.tls => Some(tls_connector(http)?),
            _ => None,
        };
        Ok(Prober { tls })
    }

    /// Errors say which step failed (connect, TLS, the answer), as the
    /// status page shows them.
    pub async fn probe(&self, key: &HealthKey) -> io::Result<()> {
        let mut stream = TcpStream::connect(key.target.as_str())
            .await
            .map_err(|e| step("connect", e))?;
        match (&key.check.probe, &self.tls) {
            (Probe::Tcp, _) => {
                if let Some(version) = key.proxy_protocol {
                    // A LOCAL (v2) / UNKNOWN (v1) header: "this connection is the
                    // proxy's own", for backends that refuse one without it.
                    stream.write_all(proxy_protocol::local(version)).await?;
                }
                Ok(())
            }
            (Probe::Http(http), Some(tls)) => {
                let name = server_name(http.host.as_deref(), &key.target)?;
                let mut stream = tls
                    .connect(name, stream)
                    .await
                    .map_err(|e| step("TLS handshake", e))?;
                http_status(&mut stream, &key.target, http).await
            }
            (Probe::Http(http), None) => http_status(&mut stream, &key.target, http).await,
        }
    }
}

fn step(what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// SNI and the name the certificate must carry: the check's `host`, else
/// the target's host part (an IP address is checked as one).
fn server_name(host: Option<&str>, target: &str) -> io::Result<ServerName<'static>> {
    tls_client::server_name(
        host.unwrap_or_else(|| target.rsplit_once(':').map_or(target, |(h, _)| h)),
    )
}

fn tls_connector(http: &HttpProbe) -> io::Result<TlsConnector> {
    let config = tls_client::client_config(http.ca.as_deref(), http.verify, &[b"http/1.1"])?;
    Ok(TlsConnector::from(config))
}

async fn http_status<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    target: &str,
    http: &HttpProbe,
) -> io::Result<()> {
    let host = http.host.as_deref().unwrap_or(target);
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: geolb-health-check\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        http.path, host
    );
    stream.write_all(request.as_bytes()).await?;
    // The status line is all we need; 512 bytes holds any sane one.
    let mut buf = [0u8; 512];
    let mut len = 0;
    let line_end = loop {
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before a status line",
            ));
        }
        len += n;
        if let Some(pos) = buf[..len].windows(2).position(|w| w == b"\r\n") {
            break pos;
        }
        if len == buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "status line too long",
            ));
        }
    };
    let status = parse_status_line(&buf[..line_end]).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "not an HTTP status line: {:?}",
                String::from_utf8_lossy(&buf[..line_end])
            ),
        )
    })?;
    if http.expect.contains(&status) {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "status {status}, expected {:?}",
            http.expect
        )))
    }
}

fn parse_status_line(line: &[u8]) -> Option<u16> {
    let rest = line.strip_prefix(b"HTTP/1.")?;
    let code = rest.get(2..5)?;
    if rest.get(1) != Some(&b' ') || !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK"), Some(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 503"), Some(503));
        assert_eq!(parse_status_line(b"HTTP/2 200"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 2x0 OK"), None);
        assert_eq!(parse_status_line(b""), None);
    }
}
