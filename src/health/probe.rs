//! One probe of a target: connect (tcp) or GET and read the status (http).
//! The caller bounds it with the check's timeout.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::HealthKey;
use crate::config::{HttpProbe, Probe, ProxyProtocolVersion};

pub async fn probe(key: &HealthKey) -> io::Result<()> {
    let mut stream = TcpStream::connect(key.target.as_str()).await?;
    match &key.check.probe {
        Probe::Tcp => {
            if let Some(version) = key.proxy_protocol {
                stream.write_all(local_proxy_header(version)).await?;
            }
            Ok(())
        }
        Probe::Http(http) if http.tls => Err(io::Error::other(
            "https checks are not available in this version",
        )),
        Probe::Http(http) => http_status(&mut stream, &key.target, http).await,
    }
}

/// A PROXY header that says "this connection is the proxy's own"
/// (v2 LOCAL, v1 UNKNOWN), for backends that refuse connections without one.
fn local_proxy_header(version: ProxyProtocolVersion) -> &'static [u8] {
    match version {
        ProxyProtocolVersion::V1 => b"PROXY UNKNOWN\r\n",
        ProxyProtocolVersion::V2 => b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00",
    }
}

async fn http_status(stream: &mut TcpStream, target: &str, http: &HttpProbe) -> io::Result<()> {
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

    #[test]
    fn v2_local_header_is_well_formed() {
        let h = local_proxy_header(ProxyProtocolVersion::V2);
        assert_eq!(&h[..12], b"\r\n\r\n\x00\r\nQUIT\n");
        assert_eq!(h[12], 0x20, "version 2, command LOCAL");
        assert_eq!(h.len(), 16, "no address block");
    }
}
