//! The load balancer's data path.
//!
//! `http` owns the L7 path (one hyper connection per client, one request
//! at a time through route, pick, forward); `tls` terminates HTTPS in
//! front of it; `tcp` owns the L4 path (pick, connect, copy both ways);
//! `proxy_protocol` reads and writes PROXY headers for both; `pool` opens and keeps
//! backend connections (HTTP/1.1 or HTTP/2, cleartext or TLS); `body` streams responses and settles each request
//! when its response ends; `headers` rewrites at the boundary; `activity`
//! enforces the client-side header and idle timeouts.

mod activity;
pub mod body;
mod headers;
pub mod http;
pub mod pool;
pub mod proxy_protocol;
pub mod tcp;
pub mod tls;
