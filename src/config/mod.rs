//! Configuration: TOML text -> validated [`Config`].
//!
//! Two layers, as the contract asks: the TOML document is parsed with its
//! spans, then walked by hand so that *every* error is collected (serde's
//! `deny_unknown_fields` would stop at the first), each naming its key path,
//! the bad value, what is accepted, and the line.
//!
//! `walk` reads tables and collects errors, `values` reads single
//! values; each section has its own module, and `parse` walks the root.

mod acme;
mod check;
mod cluster;
mod compress;
mod datacenter;
mod distributed;
mod dns;
mod error;
mod geoip;
mod headers;
mod limits;
mod listener;
mod log;
mod model;
mod ocsp;
mod parse;
mod pool;
mod record;
mod rules;
mod sticky;
mod token;
mod values;
mod walk;

#[cfg(test)]
mod tests;

pub use cluster::DEFAULT_DIAL_TIMEOUT;
pub use datacenter::warnings;
pub use distributed::{LocalNode, Merged, NODE_SECTIONS, local_cluster};
pub use dns::read_tsig_secret;
pub use error::{ConfigError, ConfigErrors};
pub use model::*;
pub use parse::{check_files, load, parse_str, with_lines};
pub use rules::MAX_ERROR_PAGE;
pub use token::{TokenError, read_token};
pub use values::parse_duration;
