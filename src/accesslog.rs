//! The access lines: one per HTTP request (target `geolb::access`), per
//! TCP connection (`geolb::access::tcp`), per sampled DNS query
//! (`geolb::access::dns`). Each record is filled in by its path and
//! written once at its end; [`crate::logging`] renders it as text
//! (`key=value`) or JSON.
//!
//! Client-supplied text (host, path, user agent, referer, request id,
//! query name) is clipped and its control characters escaped
//! ([`lograte::clip`]), so no client can start a line of its own or send
//! escape sequences to a terminal. In the text format the strings that
//! may hold spaces (user agent, referer, request id, errors) are quoted,
//! as is `backend` (as in the first version of the line).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method, Version};

use crate::lograte;

/// How much of a path the access log keeps: HAProxy's default line
/// length, which the rest of a line seldom needs much of. The whole head
/// may be 64 KiB; a line per request of that is for an attacker to fill.
pub const PATH_CLIP: usize = 1024;

/// How much of a user agent, referer or request id a line keeps.
pub const HEADER_CLIP: usize = 256;

/// The TLS a client connection negotiated (https listeners).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1_3`, `TLSv1_2`.
    pub version: &'static str,
    /// The IANA name: `TLS13_AES_128_GCM_SHA256`.
    pub cipher: &'static str,
}

/// One HTTP request's line, filled in as the request goes.
pub struct Http {
    pub client: SocketAddr,
    pub listener: Arc<str>,
    pub pool: Arc<str>,
    pub backend: Option<Arc<str>>,
    pub method: Method,
    pub host: String,
    /// Path and query as received.
    pub path: String,
    pub version: Version,
    pub user_agent: Option<HeaderValue>,
    pub referer: Option<HeaderValue>,
    pub request_id: Option<HeaderValue>,
    pub tls: Option<TlsInfo>,
    pub retries: u32,
    /// To the backend that answered: 0 when a kept connection was reused.
    pub connect: Option<Duration>,
    /// From sending the request to the backend's response head.
    pub first_byte: Option<Duration>,
}

/// How a request ended, known only at its end.
pub struct HttpEnd {
    pub status: u16,
    /// Response body bytes sent to the client.
    pub bytes_sent: u64,
    /// Request body bytes received from the client.
    pub bytes_received: u64,
    pub duration: Duration,
}

/// Milliseconds to the microsecond (`8.452`, not `8.452967000000001`).
fn ms(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

/// A header's value for a line: clipped, escaped, `-` when absent.
fn header_text(value: Option<&HeaderValue>) -> std::borrow::Cow<'_, str> {
    match value {
        None => "-".into(),
        Some(v) => match v.to_str() {
            Ok(s) => lograte::clip_to(s, HEADER_CLIP),
            // Bytes past ASCII: shown lossily, then escaped the same way.
            Err(_) => lograte::clip_to(&String::from_utf8_lossy(v.as_bytes()), HEADER_CLIP)
                .into_owned()
                .into(),
        },
    }
}

fn version_text(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "-",
    }
}

impl Http {
    /// Writes the line. The keys of the first version (client to retries,
    /// `bytes` being the response body) keep their meaning.
    pub fn emit(&self, end: &HttpEnd) {
        let user_agent = header_text(self.user_agent.as_ref());
        let referer = header_text(self.referer.as_ref());
        let request_id = header_text(self.request_id.as_ref());
        let (tls_version, tls_cipher) = self.tls.map_or(("-", "-"), |t| (t.version, t.cipher));
        tracing::info!(
            target: "geolb::access",
            client = %self.client.ip(),
            client_port = self.client.port(),
            listener = %self.listener,
            pool = %self.pool,
            backend = self.backend.as_deref().unwrap_or("-"),
            method = %lograte::clip(self.method.as_str()),
            host = %lograte::clip(&self.host),
            path = %lograte::clip_to(&self.path, PATH_CLIP),
            protocol = %version_text(self.version),
            status = end.status,
            bytes = end.bytes_sent,
            bytes_received = end.bytes_received,
            duration_ms = ms(end.duration),
            retries = self.retries,
            connect_ms = self.connect.map_or(-1.0, ms),
            first_byte_ms = self.first_byte.map_or(-1.0, ms),
            user_agent = &*user_agent,
            referer = &*referer,
            request_id = &*request_id,
            tls_version = %tls_version,
            tls_cipher = %tls_cipher,
        );
    }
}

/// How a TCP connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpEnd {
    /// Both sides closed, the client first.
    ClientClosed,
    /// Both sides closed, the backend first.
    BackendClosed,
    /// A read or write failed (a reset).
    Error,
    /// No byte either way for the idle timeout.
    IdleTimeout,
    /// No backend could be connected to.
    ConnectFailed,
    /// The PROXY header to the backend could not be written.
    BackendWriteFailed,
}

impl TcpEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            TcpEnd::ClientClosed => "client_closed",
            TcpEnd::BackendClosed => "backend_closed",
            TcpEnd::Error => "error",
            TcpEnd::IdleTimeout => "idle_timeout",
            TcpEnd::ConnectFailed => "connect_failed",
            TcpEnd::BackendWriteFailed => "backend_write_failed",
        }
    }
}

/// One TCP connection's line, written when it ends.
pub struct Tcp<'a> {
    pub client: SocketAddr,
    pub listener: &'a str,
    pub pool: &'a str,
    pub backend: Option<&'a str>,
    /// From the client (to the backend).
    pub bytes_in: u64,
    /// To the client (from the backend).
    pub bytes_out: u64,
    pub duration: Duration,
    pub end: TcpEnd,
    /// Why, when `end` is an error or a failed connect.
    pub error: Option<&'a str>,
}

impl Tcp<'_> {
    pub fn emit(&self) {
        tracing::info!(
            target: "geolb::access::tcp",
            client = %self.client.ip(),
            client_port = self.client.port(),
            listener = %self.listener,
            pool = %self.pool,
            backend = %self.backend.unwrap_or("-"),
            bytes_in = self.bytes_in,
            bytes_out = self.bytes_out,
            duration_ms = ms(self.duration),
            end = %self.end.as_str(),
            error = self.error.unwrap_or("-"),
        );
    }
}

/// One DNS query's line.
pub struct Dns<'a> {
    pub client: SocketAddr,
    /// `udp` or `tcp`.
    pub protocol: &'static str,
    /// As asked (`-` when the message had no question).
    pub qname: &'a str,
    pub qtype: &'a str,
    pub rcode: &'a str,
    /// The ECS option's subnet, `-` without one.
    pub ecs: &'a str,
    /// The data centers chosen for a geo name, `-` for other names.
    pub datacenters: &'a str,
    pub size: usize,
    pub truncated: bool,
}

impl Dns<'_> {
    pub fn emit(&self) {
        tracing::info!(
            target: "geolb::access::dns",
            client = %self.client.ip(),
            client_port = self.client.port(),
            protocol = %self.protocol,
            qname = %lograte::clip_to(self.qname, HEADER_CLIP),
            qtype = %self.qtype,
            rcode = %self.rcode,
            ecs = %self.ecs,
            datacenters = %self.datacenters,
            size = self.size,
            truncated = self.truncated,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_clipped_escaped_or_a_dash() {
        assert_eq!(header_text(None), "-");
        let v = HeaderValue::from_static("curl/8.5");
        assert_eq!(header_text(Some(&v)), "curl/8.5");
        // Not ASCII: shown lossily, never as raw bytes.
        // U+0085 (NEL) is a line break to some readers: escaped.
        let v = HeaderValue::from_bytes(b"caf\xc3\xa9 \xc2\x85x").unwrap();
        assert_eq!(header_text(Some(&v)), "café \\u{85}x");
        let v = HeaderValue::from_bytes(&[b'a'; 4000]).unwrap();
        let t = header_text(Some(&v));
        assert!(
            t.len() < HEADER_CLIP + 30 && t.ends_with("(4000 bytes)"),
            "{t}"
        );
        assert_eq!(version_text(Version::HTTP_2), "HTTP/2");
    }
}
