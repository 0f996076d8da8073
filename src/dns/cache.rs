//! Replies kept for UDP queries the fast path leaves (NXDOMAIN, NODATA,
//! MX, TXT, CNAME, referrals...), as PowerDNS's packet cache keeps them:
//! a query whose bytes, but for its id, were answered before gets the same
//! reply bytes with its own id, without hickory's parser and the general
//! answer (19,000 instructions for an NXDOMAIN against some hundreds).
//!
//! Only a reply the general path calls reusable is kept: one no geo
//! decision, cookie, TSIG or signature went into, so that it follows from
//! the query's bytes and the config alone. A config generation of its own
//! empties the cache. Each UDP thread has one; it holds at most
//! [`MAX_BYTES`] and starts again empty when full, so that names never
//! asked twice (a random-subdomain flood) cost no more than one insert
//! each.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use super::count::Tally;
use super::fast;
use super::rrl::Class;
use super::{Compiled, DnsData};

/// Keys and replies held, per thread.
const MAX_BYTES: usize = 2 << 20;
/// Longer queries are not kept (a plain query is under 300 bytes).
const MAX_KEY: usize = 512;
/// The id: the two bytes a repeated query changes.
const ID_LEN: usize = 2;

#[derive(Default)]
pub(super) struct PacketCache {
    /// The config generation the replies were made from. Weak: an old
    /// config's zones are not kept for the cache's sake, and its memory,
    /// not freed while this points to it, cannot be a new one's.
    compiled: Weak<Compiled>,
    /// By the query's bytes after its id.
    replies: HashMap<Box<[u8]>, Kept, foldhash::fast::FixedState>,
    bytes: usize,
    /// Answered and not, since [`PacketCache::take_counts`].
    hits: u64,
    misses: u64,
}

struct Kept {
    reply: Box<[u8]>,
    class: Class,
    tally: Tally,
}

impl PacketCache {
    /// Writes the kept reply to `packet` into `reply` with the packet's id;
    /// what RRL counts it as and what the counters count, or None when
    /// none is kept (`reply` is then untouched).
    pub(super) fn answer(
        &mut self,
        data: &DnsData,
        packet: &[u8],
        reply: &mut Vec<u8>,
    ) -> Option<(Class, Tally)> {
        self.follow(data);
        let kept = packet
            .split_at_checked(ID_LEN)
            .and_then(|(_, key)| self.replies.get(key));
        let Some(kept) = kept else {
            self.misses += 1;
            return None;
        };
        self.hits += 1;
        let id = &packet[..ID_LEN];
        reply.clear();
        reply.extend_from_slice(id);
        reply.extend_from_slice(&kept.reply[ID_LEN..]);
        Some((kept.class, kept.tally))
    }

    /// Keeps `reply`, the general path's reusable reply to `packet`.
    pub(super) fn keep(
        &mut self,
        data: &DnsData,
        packet: &[u8],
        reply: &[u8],
        class: Class,
        tally: Tally,
    ) {
        self.follow(data);
        if !self_contained(packet) {
            return;
        }
        let Some(key) = packet.get(ID_LEN..).filter(|k| k.len() <= MAX_KEY) else {
            return;
        };
        if reply.len() < ID_LEN {
            return;
        }
        let size = key.len() + reply.len();
        if self.bytes + size > MAX_BYTES {
            self.replies.clear();
            self.bytes = 0;
        }
        let kept = Kept {
            reply: reply.into(),
            class,
            tally,
        };
        if let Some(old) = self.replies.insert(key.into(), kept) {
            self.bytes -= key.len() + old.reply.len();
        }
        self.bytes += size;
    }

    /// (hits, misses) since the last call.
    pub(super) fn take_counts(&mut self) -> (u64, u64) {
        (
            std::mem::take(&mut self.hits),
            std::mem::take(&mut self.misses),
        )
    }

    /// Empties the cache when `data` comes from another config than its
    /// replies.
    fn follow(&mut self, data: &DnsData) {
        if std::ptr::eq(self.compiled.as_ptr(), Arc::as_ptr(&data.compiled)) {
            return;
        }
        self.replies.clear();
        self.bytes = 0;
        self.compiled = Arc::downgrade(&data.compiled);
    }
}

/// A query with one question whose name is whole labels, and no record but
/// an OPT: no compression pointer, which could point into the id and make
/// the question another with another id.
fn self_contained(packet: &[u8]) -> bool {
    let Some(name_end) = fast::plain_question(packet) else {
        return false;
    };
    // Type and class; then an OPT is owned by the root.
    let records = u16::from_be_bytes([packet[10], packet[11]]);
    records == 0 || packet.get(name_end + 4) == Some(&0)
}
