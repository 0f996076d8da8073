//! Configuration: TOML text -> validated [`Config`].
//!
//! Two layers, as the contract asks: the TOML document is parsed with its
//! spans, then walked by hand so that *every* error is collected (serde's
//! `deny_unknown_fields` would stop at the first), each naming its key path,
//! the bad value, what is accepted, and the line.

mod error;
mod model;
mod parse;

pub use error::{ConfigError, ConfigErrors};
pub use model::*;
pub use parse::{check_files, load, parse_str};
