//! The sampled query log (`[dns] query_log`): one line per chosen query
//! (target `geolb::access::dns`), from the query's and the reply's bytes,
//! after the reply is built by either path (the fast path or the general
//! one, over UDP or TCP).
//!
//! Off (the default), a query costs one comparison of a plain field with
//! 0. On, one thread-local random number per query; only the chosen ones
//! are parsed again for their line, off the answer's own path.

use std::fmt::Write as _;
use std::net::SocketAddr;

use hickory_proto::op::Message;
use smallvec::SmallVec;

use super::{DnsData, ecs};
use crate::accesslog;

/// The sampling threshold for `rate` (0 to 1): a query is logged when a
/// random `u32` is below it; 0 never, 2^32 always.
pub(super) fn threshold(rate: f64) -> u64 {
    (rate.clamp(0.0, 1.0) * 4_294_967_296.0) as u64
}

impl DnsData {
    /// Whether to log this query.
    #[inline]
    pub(super) fn query_log_due(&self) -> bool {
        let threshold = self.compiled.query_log;
        threshold != 0 && u64::from(fastrand::u32(..)) < threshold
    }
}

/// Writes the line of the query `message` from `src` answered with
/// `reply`; `geo`, the geo name and data centers chosen, if any.
pub(super) fn log(
    data: &DnsData,
    message: &[u8],
    src: SocketAddr,
    protocol: &'static str,
    reply: &[u8],
    geo: Option<&(usize, SmallVec<[usize; 4]>)>,
) {
    let query = Message::from_vec(message).ok();
    let question = query.as_ref().and_then(|q| q.queries.first());
    let qname = question.map_or_else(|| "-".to_owned(), |q| q.name().to_string());
    let qtype = match (&query, question) {
        (_, Some(q)) => q.query_type().to_string(),
        (Some(_), None) => "-".to_owned(),
        (None, None) => "malformed".to_owned(),
    };
    let ecs = match ecs::client_subnet(message) {
        Ok(Some(subnet)) => format!("{}/{}", subnet.addr, subnet.source_prefix),
        Ok(None) => "-".to_owned(),
        Err(_) => "malformed".to_owned(),
    };
    let answer = Message::from_vec(reply).ok();
    let rcode = answer.as_ref().map_or_else(
        || "-".to_owned(),
        |a| format!("{:?}", a.metadata.response_code).to_ascii_uppercase(),
    );
    let mut datacenters = String::new();
    if let Some((_, chosen)) = geo {
        for (i, dc) in chosen.iter().enumerate() {
            if i > 0 {
                datacenters.push(',');
            }
            let _ = write!(datacenters, "{}", data.compiled.datacenters[*dc].name);
        }
    }
    if datacenters.is_empty() {
        datacenters.push('-');
    }
    accesslog::Dns {
        client: src,
        protocol,
        qname: &qname,
        qtype: &qtype,
        rcode: &rcode,
        ecs: &ecs,
        datacenters: &datacenters,
        size: reply.len(),
        truncated: answer.is_some_and(|a| a.metadata.truncation),
    }
    .emit();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_cover_none_some_and_all() {
        assert_eq!(threshold(0.0), 0);
        assert_eq!(threshold(1.0), 1 << 32);
        assert!(u64::from(u32::MAX) < threshold(1.0));
        assert_eq!(threshold(0.5), 1 << 31);
        // Any rate above 0 logs something.
        assert!(threshold(1e-9) > 0);
    }
}
