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

/// Keys, replies and their bookkeeping held, per thread.
const MAX_BYTES: usize = 2 << 20;
/// What an entry costs beside its key and reply: its slot in the table
/// and two allocations' headers. Counted, so that a flood of small
/// REFUSED replies does not hold several times [`MAX_BYTES`].
const ENTRY_OVERHEAD: usize = 128;
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
    /// By the query's bytes after its id, which a client chooses: seeded
    /// at random, so that no one can pick names that collide.
    replies: HashMap<Box<[u8]>, Kept, foldhash::fast::RandomState>,
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
        let size = key.len() + reply.len() + ENTRY_OVERHEAD;
        if self.bytes + size > MAX_BYTES {
            self.empty();
        }
        let kept = Kept {
            reply: reply.into(),
            class,
            tally,
        };
        if let Some(old) = self.replies.insert(key.into(), kept) {
            self.bytes -= key.len() + old.reply.len() + ENTRY_OVERHEAD;
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
        self.empty();
        self.compiled = Arc::downgrade(&data.compiled);
    }

    /// A new table, not a cleared one: a cleared one keeps its largest
    /// size.
    fn empty(&mut self) {
        self.replies = HashMap::default();
        self.bytes = 0;
    }
}

/// A query with one question whose name is whole labels, and no record but
/// an OPT: no compression pointer, which could point into the id and make
/// the message another with another id (in the question, or in the data
/// of another record, which the general path parses).
fn self_contained(packet: &[u8]) -> bool {
    let Some(name_end) = fast::plain_question(packet) else {
        return false;
    };
    // Type and class; then an OPT: the root as owner, TYPE 41.
    let records = u16::from_be_bytes([packet[10], packet[11]]);
    records == 0 || packet.get(name_end + 4..name_end + 7) == Some(&[0, 0, 41])
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use super::*;
    use crate::dns::AllUp;
    use crate::dns::udp::{answer_general, answer_packet};

    /// A record after the question whose data points into the id: the
    /// message under one id is another under another, so none is kept.
    #[test]
    fn a_message_whose_parse_reads_the_id_is_not_kept() {
        let data = crate::dns::answer::tests::data(Arc::new(AllUp));
        let src: SocketAddr = "192.0.2.200:5353".parse().unwrap();
        let mut packet = vec![0x00, 0x12, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
        for label in ["nx", "mysite", "com"] {
            packet.push(label.len() as u8);
            packet.extend(label.as_bytes());
        }
        packet.extend([0, 0, 1, 0, 1]);
        // A CNAME owned by the root, its target a pointer to offset 0.
        packet.extend([0, 0, 5, 0, 1, 0, 0, 0, 0, 0, 2, 0xc0, 0x00]);
        let mut cache = PacketCache::default();
        let (mut reply, mut general) = (Vec::new(), Vec::new());
        // 0x00 reads as the root (NXDOMAIN), 0x41 as a bad label (FORMERR).
        for (id, rcode) in [(0x00, 3), (0x41, 1), (0x00, 3)] {
            packet[0] = id;
            answer_packet(&data, &packet, src, &mut reply, &mut cache).unwrap();
            answer_general(&data, &packet, src, &mut general).unwrap();
            assert_eq!(reply, general, "id {id:#x}");
            assert_eq!(reply[3] & 0x0f, rcode, "id {id:#x}");
        }
    }

    /// Names asked once each (a random-subdomain flood, here outside every
    /// zone: REFUSED, kept) never take the cache past its bound.
    #[test]
    fn a_flood_of_new_names_stays_within_the_bound() {
        let data = crate::dns::answer::tests::data(Arc::new(AllUp));
        let src: SocketAddr = "192.0.2.200:5353".parse().unwrap();
        let mut cache = PacketCache::default();
        let mut reply = Vec::new();
        let names = 20_000;
        for i in 0..names {
            let mut packet = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
            for label in [format!("n{i}").as_str(), "example", "org"] {
                packet.push(label.len() as u8);
                packet.extend(label.as_bytes());
            }
            packet.extend([0, 0, 1, 0, 1]);
            answer_packet(&data, &packet, src, &mut reply, &mut cache).unwrap();
            assert!(cache.bytes <= MAX_BYTES, "{} bytes", cache.bytes);
        }
        let kept = cache.replies.len();
        assert!(
            kept > 0 && kept < names / 2,
            "{kept} kept: it started again"
        );
        assert_eq!(cache.take_counts(), (0, names as u64));
    }
}
