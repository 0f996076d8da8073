//! The load balancer's data path.
//!
//! `http` owns the L7 path (one hyper connection per client, one request
//! at a time through route, pick, forward); `pool` keeps backend
//! connections; `body` streams responses and settles each request when
//! its response ends; `headers` rewrites at the boundary; `activity`
//! enforces the client-side header and idle timeouts.

mod activity;
pub mod body;
mod headers;
pub mod http;
pub mod pool;
