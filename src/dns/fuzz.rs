//! The DNS paths a packet takes, opened to the fuzz targets (`tests/fuzz/`)
//! and the corpus replay test: the same calls a UDP thread and a TCP
//! connection make, without the panic catching around them, so that a
//! panic reaches the fuzzer.

use std::net::SocketAddr;

use hickory_server::net::xfer::Protocol;

use super::cache::PacketCache;
use super::{DnsData, fast, udp, wire};

/// The UDP fast path alone: true when it answered (the reply in `reply`).
pub fn fast(data: &DnsData, packet: &[u8], src: SocketAddr, reply: &mut Vec<u8>) -> bool {
    fast::answer(data, packet, src, reply).is_some()
}

/// The general path over UDP, as a UDP thread calls it for what the fast
/// path leaves.
pub fn general_udp(data: &DnsData, packet: &[u8], src: SocketAddr, reply: &mut Vec<u8>) -> bool {
    udp::answer_general(data, packet, src, reply).is_some()
}

/// What a UDP thread does with one packet: the fast path, else the
/// general one; false when nothing is sent. A reply kept for the packet
/// must be the reply just given (a panic otherwise: a finding).
pub fn udp(data: &DnsData, packet: &[u8], src: SocketAddr, reply: &mut Vec<u8>) -> bool {
    let mut cache = PacketCache::default();
    let sent = udp::answer_packet(data, packet, src, reply, &mut cache).is_some();
    let mut kept = Vec::new();
    if cache.answer(data, packet, &mut kept).is_some() {
        assert_eq!(kept, *reply, "the kept reply differs from the one given");
    }
    sent
}

/// One message of a TCP connection (the general path, TCP's size limit).
pub fn tcp(data: &DnsData, message: &[u8], src: SocketAddr, reply: &mut Vec<u8>) -> bool {
    wire::answer(data, message, src, Protocol::Tcp, reply).is_some()
}

/// The most a UDP reply may hold, whatever the query advertised.
pub const MAX_UDP_PAYLOAD: usize = super::answer::MAX_UDP_PAYLOAD as usize;
