//! The load balancer's data path.
//!
//! `http` owns the L7 path (one hyper connection per client, one request
//! at a time through route, pick, forward); `h1` is geolb's own HTTP/1.x
//! server in front of it (`http1_server`), handing HTTP/2 and upgrades to
//! hyper; `tls` terminates HTTPS in
//! front of it, `ocsp` keeps its certificates' OCSP staples fresh; `tcp` owns the L4 path (pick, connect, copy both ways,
//! the copy in `pump`, splicing through `pipes`);
//! `body` streams responses and settles each request when its response
//! ends; `compress` compresses them on the way; `headers` rewrites at
//! the boundary and `header_rules` applies the configured header rules;
//! `activity` enforces the client-side header and idle timeouts, `woken`
//! polls such side futures only when they woke; `stall`
//! cuts HTTP/2 responses
//! the client's flow control holds up; `validate` finds what must not
//! be forwarded; `client_cert` verifies client certificates and tells
//! backends about them. Backend connections are opened and kept by
//! [`crate::upstream`], PROXY headers coded by
//! [`crate::proxy_protocol`], connections accepted by [`crate::accept`].

mod activity;
pub mod body;
pub mod client_cert;
mod compress;
/// For the fuzz targets and their corpus replay only.
#[doc(hidden)]
pub mod fuzz;
mod h1;
mod halves;
mod header_rules;
mod headers;
pub mod http;
pub mod ocsp;
pub mod pipes;
mod pump;
mod stall;
pub mod tcp;
pub mod tls;
mod validate;
mod woken;
