//! geolb: a GeoDNS server and an L7/L4 load balancer in one daemon.
//!
//! # Layout
//!
//! One module per step of the data flow:
//!
//! - [`config`]: TOML text -> validated [`config::Config`], every error
//!   with its key path and line.
//! - [`state`]: a config compiled into the [`state::Snapshot`] the data
//!   path reads, swapped whole through one `ArcSwap`.
//! - [`health`]: active checks and the health table, kept outside the
//!   snapshot so that a reload keeps backend states.
//! - [`balance`]: pure backend selection.
//! - [`proxy`]: the data paths: HTTP (accept, route, pick, forward,
//!   stream), TLS termination in front of it, TCP (pick, connect, copy),
//!   PROXY protocol for both.
//! - [`geoip`]: the MaxMind database and `[[geoip.network]]` overrides:
//!   an address -> a location and the network that decided it.
//! - [`dns`]: the authoritative GeoDNS server (zones, geo names, ECS).
//! - [`lookup`]: `geolb lookup`, a GeoDNS decision explained.
//! - [`tls_client`]: TLS client settings for https checks and TLS
//!   backends.
//! - [`admin`]: /healthz, /metrics, /status, /reload, the status page.
//! - [`metrics`]: metric names, descriptions and buckets.
//! - [`app`]: wiring, reload (listeners and DNS addresses included),
//!   signals and shutdown order.
//! - [`demo`]: `geolb demo`, a self-contained setup on loopback.
//! - `alloc_stats` (feature `alloc-stats`): heap bytes, for the memory
//!   benchmark.

pub mod accept;
pub mod admin;
#[cfg(feature = "alloc-stats")]
pub mod alloc_stats;
pub mod app;
pub mod balance;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod dns;
pub mod geoip;
pub mod health;
pub mod lookup;
pub mod metrics;
pub mod proxy;
pub mod proxy_protocol;
pub mod reload;
pub mod state;
pub mod tls_client;
pub mod upstream;
