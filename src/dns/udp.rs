//! DNS over UDP without hickory-server: one thread per socket receives a
//! batch of queries (`recvmmsg`), answers them from the current
//! [`DnsData`] into reused buffers and sends the batch (`sendmmsg`).
//! hickory-server spawns a task per packet and hands each reply through a
//! channel; at DNS rates that bookkeeping costs more than the answer.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_server::net::xfer::Protocol;
use nix::errno::Errno;
use nix::sys::socket::{
    ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg,
};
use smallvec::SmallVec;
use tokio_util::sync::CancellationToken;

use super::answer;
use super::cache::PacketCache;
use super::count::{self, count_answer};
use super::fast;
use super::querylog;
use super::rrl::{self, Class};
use super::{DnsData, SharedDnsData, wire};

/// How often a thread blocked on an idle socket looks at the shutdown token.
const SHUTDOWN_POLL: Duration = Duration::from_millis(100);
/// Longer datagrams are cut here, as hickory-server does.
const MAX_RECEIVE: usize = 4096;
/// SO_RCVBUF asked for (what gdnsd asks for too, within rmem_max).
const RECEIVE_BUFFER: usize = 1 << 20;

/// Serves `socket` on a thread of its own until `shutdown`; the returned
/// handle ends soon after (within [`SHUTDOWN_POLL`]).
pub fn spawn(
    socket: UdpSocket,
    data: SharedDnsData,
    rrl: Arc<rrl::Table>,
    shutdown: CancellationToken,
) -> io::Result<std::thread::JoinHandle<()>> {
    socket.set_nonblocking(false)?;
    socket.set_read_timeout(Some(SHUTDOWN_POLL))?;
    // Room for bursts while the thread is busy or descheduled; the kernel
    // caps it at net.core.rmem_max.
    let _ = socket2::SockRef::from(&socket).set_recv_buffer_size(RECEIVE_BUFFER);
    let local = socket.local_addr()?;
    wire::quiet_answer_panics();
    std::thread::Builder::new()
        .name(format!("dns-udp {local}"))
        .spawn(move || serve(&socket, &data, &rrl, &shutdown))
}

/// Datagrams taken from (and answers given to) the kernel per system call.
const BATCH: usize = 32;

/// Receives up to [`BATCH`] queries per `recvmmsg`, answers them from one
/// load of the data, and sends the answers (those RRL lets through) with
/// one `sendmmsg`.
fn serve(socket: &UdpSocket, data: &SharedDnsData, rrl: &rrl::Table, shutdown: &CancellationToken) {
    let fd = socket.as_raw_fd();
    let mut packets: Vec<Box<[u8]>> = (0..BATCH)
        .map(|_| vec![0u8; MAX_RECEIVE].into_boxed_slice())
        .collect();
    let mut replies: Vec<Vec<u8>> = (0..BATCH)
        .map(|_| Vec::with_capacity(answer::MAX_UDP_PAYLOAD.into()))
        .collect();
    let mut received: Vec<(usize, usize, SocketAddr)> = Vec::with_capacity(BATCH);
    let mut destinations: Vec<Option<SockaddrStorage>> = Vec::with_capacity(BATCH);
    let mut receive_headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut send_headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut panics = wire::PanicLog::new();
    let mut cache = PacketCache::default();
    while !shutdown.is_cancelled() {
        received.clear();
        {
            // An array, not a Vec: recvmmsg ties the borrow of the slices
            // to their contents, which a type with a destructor cannot
            // satisfy.
            let mut buffers = packets.iter_mut();
            let mut slices: [[IoSliceMut<'_>; 1]; BATCH] = std::array::from_fn(|_| {
                [IoSliceMut::new(
                    buffers.next().map_or(&mut [][..], |p| &mut p[..]),
                )]
            });
            // WAITFORONE: block (up to the read timeout) for the first
            // datagram only, then take what is already queued.
            match recvmmsg(
                fd,
                &mut receive_headers,
                slices.iter_mut(),
                MsgFlags::MSG_WAITFORONE,
                None,
            ) {
                Ok(results) => {
                    for (i, msg) in results.enumerate() {
                        if let Some(src) = msg.address.as_ref().and_then(std_addr) {
                            received.push((i, msg.bytes, src));
                        }
                    }
                }
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                Err(e) => {
                    tracing::debug!(error = %e, "DNS UDP receive failed");
                    continue;
                }
            }
        }
        let started = Instant::now();
        let mut truncated = 0;
        destinations.clear();
        {
            let data = data.load();
            let limits = &data.compiled.rrl;
            // Read only when limiting: a clock read per batch.
            let now = if limits.is_on() { rrl.now() } else { 0 };
            for &(i, len, src) in &received {
                let reply = &mut replies[destinations.len()];
                let packet = &packets[i][..len];
                // A bug met by one packet must not end UDP service, as it
                // would end only that packet's task under hickory-server.
                match answer_catching_panics(&data, packet, src, reply, &mut cache) {
                    Ok(Some(class)) => {
                        // Too big for the client, before RRL may slip it.
                        let too_big = count::truncated(reply);
                        let verdict = rrl.check(limits, src.ip(), class, now);
                        if rrl::apply(verdict, reply) {
                            truncated += usize::from(too_big);
                            destinations.push(Some(SockaddrStorage::from(src)));
                        }
                    }
                    Ok(None) => {}
                    Err(at) => panics.record(src, at),
                }
            }
        }
        send_all(
            fd,
            &mut send_headers,
            &replies[..destinations.len()],
            &destinations,
        );
        count::count_udp_batch(destinations.len(), truncated, started.elapsed());
        let (hits, misses) = cache.take_counts();
        count::count_packet_cache(hits, misses);
    }
}

/// [`answer_packet`] under `catch_unwind`: Err with the panic's location
/// and message if it panicked.
fn answer_catching_panics(
    data: &DnsData,
    packet: &[u8],
    src: SocketAddr,
    reply: &mut Vec<u8>,
    cache: &mut PacketCache,
) -> Result<Option<Class>, String> {
    wire::catching_panics(|| answer_packet(data, packet, src, reply, cache))
}

/// Sends `replies[i]` to `destinations[i]`, skipping one that fails.
fn send_all(
    fd: std::os::fd::RawFd,
    headers: &mut MultiHeaders<SockaddrStorage>,
    replies: &[Vec<u8>],
    destinations: &[Option<SockaddrStorage>],
) {
    let mut sent = 0;
    while sent < replies.len() {
        let slices: SmallVec<[[IoSlice<'_>; 1]; BATCH]> =
            replies[sent..].iter().map(|r| [IoSlice::new(r)]).collect();
        let no_control: [ControlMessage<'_>; 0] = [];
        match sendmmsg(
            fd,
            headers,
            slices.iter(),
            &destinations[sent..],
            no_control,
            MsgFlags::empty(),
        ) {
            Ok(results) => match results.count() {
                0 => return,
                n => sent += n,
            },
            Err(Errno::EINTR) => {}
            Err(e) => {
                tracing::debug!(dst = ?destinations[sent], error = %e, "cannot send a DNS response");
                sent += 1;
            }
        }
    }
}

fn std_addr(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    addr.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6((*v6).into()))
}

/// Writes the answer to `packet` from `src` into `reply` and returns what
/// it is for RRL; None when nothing is to be sent (not a query, or not
/// worth one). The fast path first, then a reply `cache` kept, then the
/// general path (whose reusable replies `cache` keeps).
pub(crate) fn answer_packet(
    data: &DnsData,
    packet: &[u8],
    src: SocketAddr,
    reply: &mut Vec<u8>,
    cache: &mut PacketCache,
) -> Option<Class> {
    if !answerable_source(src) {
        return None;
    }
    if let Some(answered) = fast::answer(data, packet, src, reply) {
        count::count_ecs(answered.ecs);
        count_answer(
            data,
            Some(answered.qtype),
            ResponseCode::NoError,
            answered.geo.as_ref(),
        );
        if data.query_log_due() {
            querylog::log(data, packet, src, "udp", reply, answered.geo.as_ref());
        }
        return Some(answered.class);
    }
    if let Some((class, tally)) = cache.answer(data, packet, reply) {
        // A geo name's reply the same for all (a NODATA): the data centers
        // chosen for this client are counted and logged as before.
        let geo = tally.geo_name.map(|index| {
            let client = answer::Client {
                src: src.ip(),
                ecs: None,
            };
            (index, answer::decide(data, index, &client).0.chosen)
        });
        tally.count(data, geo.as_ref());
        if data.query_log_due() {
            querylog::log(data, packet, src, "udp", reply, geo.as_ref());
        }
        return Some(class);
    }
    let (class, reuse) = wire::answer_telling_reuse(data, packet, src, Protocol::Udp, reply)?;
    if let Some(tally) = reuse {
        cache.keep(data, packet, reply, class, tally);
    }
    Some(class)
}

/// [`answer_packet`] for what the fast path leaves: through hickory-proto's
/// parser and the general answer.
pub(crate) fn answer_general(
    data: &DnsData,
    packet: &[u8],
    src: SocketAddr,
    reply: &mut Vec<u8>,
) -> Option<Class> {
    wire::answer(data, packet, src, Protocol::Udp, reply)
}

/// Sources no reply can usefully go to (spoofing reflectors aside):
/// port 0, an unspecified address, the IPv4 broadcast address.
fn answerable_source(src: SocketAddr) -> bool {
    src.port() != 0 && !src.ip().is_unspecified() && src.ip() != IpAddr::V4(Ipv4Addr::BROADCAST)
}

#[cfg(test)]
mod tests {
    use std::panic::AssertUnwindSafe;
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;
    use crate::dns::AllUp;

    /// Packets the property test sends; at least this many, in debug
    /// builds within a few seconds.
    const PACKETS: usize = 300_000;

    /// A DNS message builder for the test: header, then whatever is pushed.
    struct Msg(Vec<u8>);

    impl Msg {
        fn new(id: u16, flags: u16, counts: [u16; 4]) -> Msg {
            let mut m = id.to_be_bytes().to_vec();
            m.extend(flags.to_be_bytes());
            for c in counts {
                m.extend(c.to_be_bytes());
            }
            Msg(m)
        }

        fn name(mut self, name: &str) -> Msg {
            for label in name.trim_end_matches('.').split('.') {
                self.0.push(label.len() as u8);
                self.0.extend(label.as_bytes());
            }
            self.0.push(0);
            self
        }

        fn question(self, name: &str, qtype: u16) -> Msg {
            let mut m = self.name(name);
            m.0.extend(qtype.to_be_bytes());
            m.0.extend(1u16.to_be_bytes());
            m
        }

        /// An OPT record with `options` (code, data).
        fn opt(mut self, size: u16, options: &[(u16, &[u8])]) -> Msg {
            self.0.extend([0, 0, 41]);
            self.0.extend(size.to_be_bytes());
            self.0.extend([0, 0, 0, 0]);
            let len: usize = options.iter().map(|(_, d)| d.len() + 4).sum();
            self.0.extend((len as u16).to_be_bytes());
            for (code, data) in options {
                self.0.extend(code.to_be_bytes());
                self.0.extend((data.len() as u16).to_be_bytes());
                self.0.extend(*data);
            }
            self
        }
    }

    /// Valid messages of every kind the server meets, to be damaged.
    fn templates() -> Vec<Vec<u8>> {
        let long = format!("{}.mysite.com.", crate::dns::answer::tests::LONG_LABELS);
        let ecs4: &[u8] = &[0, 1, 24, 0, 81, 2, 69];
        let ecs6: &[u8] = &[0, 2, 48, 0, 0x20, 0x01, 0x04, 0x80, 0, 0x10];
        let ecs0: &[u8] = &[0, 1, 0, 0];
        let cookie: &[u8] = &[1, 2, 3, 4, 5, 6, 7, 8];
        let q = |qtype, name: &str| Msg::new(0x1234, 0x0100, [1, 0, 0, 1]).question(name, qtype);
        vec![
            q(1, "api.mysite.com.")
                .opt(1232, &[(8, ecs4), (10, cookie)])
                .0,
            // The fast path's (a COOKIE goes to the general path).
            q(1, "api.mysite.com.").opt(1232, &[(8, ecs4)]).0,
            q(28, "api.mysite.com.").opt(4096, &[]).0,
            Msg::new(7, 0, [1, 0, 0, 0])
                .question("ns1.mysite.com.", 28)
                .0,
            Msg::new(7, 0x0110, [1, 0, 0, 0])
                .question("API.mysite.com.", 1)
                .0,
            q(16, "big.mysite.com.").opt(512, &[(8, ecs4)]).0,
            q(1, "www.mysite.com.").opt(1232, &[(8, ecs6)]).0,
            q(1, "loop1.mysite.com.").opt(4096, &[]).0,
            q(255, "apex.test.")
                .opt(1232, &[(8, ecs0), (12, &[0; 9])])
                .0,
            q(28, "two.mysite.com.").opt(1232, &[(3, &[])]).0,
            q(1, &long).opt(1232, &[(8, ecs4)]).0,
            q(1, "x.wild.mysite.com.").opt(100, &[(8, ecs4)]).0,
            q(252, "mysite.com.").opt(1232, &[]).0,
            q(1, "nothing.mysite.com.").opt(1232, &[(8, ecs4)]).0,
            q(1, "elsewhere.example.").opt(1232, &[]).0,
            // Two questions; NOTIFY; UPDATE.
            Msg::new(9, 0x0100, [2, 0, 0, 0])
                .question("api.mysite.com.", 1)
                .question("ns1.mysite.com.", 1)
                .0,
            Msg::new(9, 0x2000, [1, 0, 0, 0])
                .question("mysite.com.", 6)
                .0,
            Msg::new(9, 0x2800, [1, 0, 0, 0])
                .question("mysite.com.", 6)
                .0,
        ]
    }

    /// One of `options`, or now and then `any`'s value.
    fn one_of<T: Copy>(
        rng: &mut fastrand::Rng,
        options: &[T],
        any: impl FnOnce(&mut fastrand::Rng) -> T,
    ) -> T {
        match options.get(rng.usize(..=options.len())) {
            Some(value) => *value,
            None => any(rng),
        }
    }

    /// Changes what a resolver may change in a valid `packet`: the id,
    /// the RD, CD and AD bits, the case of a letter, the EDNS size; and
    /// now and then a label of the question one octet longer or shorter.
    fn vary(rng: &mut fastrand::Rng, packet: &mut Vec<u8>) {
        if rng.bool() {
            let mut labels = Vec::new();
            let mut at = 12;
            while let Some(&len) = packet.get(at).filter(|&&len| (1..64).contains(&len)) {
                labels.push(at);
                at += 1 + usize::from(len);
            }
            if let Some(&at) = rng.choice(&labels) {
                if rng.bool() {
                    packet[at] += 1;
                    packet.insert(at + 1, b'g');
                } else if packet[at] > 1 {
                    packet[at] -= 1;
                    packet.remove(at + 1);
                }
            }
        }
        packet[..2].copy_from_slice(&rng.u16(..).to_be_bytes());
        packet[2] ^= rng.u8(0..2);
        packet[3] ^= *rng.choice(&[0u8, 0x10, 0x20]).unwrap();
        let at = rng.usize(12..packet.len());
        if packet[at].is_ascii_alphabetic() {
            packet[at] ^= 0x20;
        }
        // The OPT record's size, when the message has one.
        let opt = packet.windows(3).rposition(|w| w == [0, 0, 41]);
        if let Some(opt) = opt.filter(|opt| opt + 5 <= packet.len() && rng.bool()) {
            let size = *rng
                .choice(&[0u16, 100, 512, 600, 1232, 4096, 65535])
                .unwrap();
            packet[opt + 3..opt + 5].copy_from_slice(&size.to_be_bytes());
        }
    }

    /// Damages `packet` one to four ways.
    fn mutate(rng: &mut fastrand::Rng, packet: &mut Vec<u8>) {
        for _ in 0..rng.usize(1..=4) {
            let len = packet.len();
            match rng.u8(0..9) {
                0 if len > 0 => packet[rng.usize(..len)] ^= 1 << rng.u8(0..8),
                1 if len > 0 => {
                    let byte = one_of(rng, &[0u8, 1, 0x3f, 0x40, 0x80, 0xc0, 0xff], |r| r.u8(..));
                    packet[rng.usize(..len)] = byte;
                }
                2 => packet.truncate(rng.usize(..=len)),
                3 => packet.extend((0..rng.usize(1..64)).map(|_| rng.u8(..))),
                4 => {
                    let at = rng.usize(..=len);
                    let insert: Vec<u8> = (0..rng.usize(1..16)).map(|_| rng.u8(..)).collect();
                    packet.splice(at..at, insert);
                }
                5 if len > 0 => {
                    let at = rng.usize(..len);
                    let end = (at + rng.usize(1..16)).min(len);
                    packet.drain(at..end);
                }
                // A header count.
                6 if len >= 12 => {
                    let at = 4 + 2 * rng.usize(0..4);
                    let count = one_of(rng, &[0u16, 1, 2, 3, 0xffff], |r| r.u16(..));
                    packet[at..at + 2].copy_from_slice(&count.to_be_bytes());
                }
                // A compression pointer anywhere, often to itself or
                // just before (loops) or past the end.
                7 if len >= 2 => {
                    let at = rng.usize(..len - 1);
                    let target = match rng.u8(0..4) {
                        0 => at,
                        1 => at.saturating_sub(2),
                        2 => len + rng.usize(0..16),
                        _ => rng.usize(..len),
                    } as u16;
                    packet[at..at + 2].copy_from_slice(&(0xc000 | (target & 0x3fff)).to_be_bytes());
                }
                // The last OPT option's length (or any 16 bits near the end).
                _ if len >= 2 => {
                    let at = len - 2 - rng.usize(..len.min(12) - 1);
                    packet[at..at + 2].copy_from_slice(&rng.u16(..).to_be_bytes());
                }
                _ => packet.push(rng.u8(..)),
            }
        }
    }

    /// A message made of random parts: labels of random lengths (past 63
    /// too) and pointers, random types and classes, records with lying
    /// lengths, OPT records with random options.
    fn structured(rng: &mut fastrand::Rng) -> Vec<u8> {
        let counts = [rng.u16(0..3), rng.u16(0..2), rng.u16(0..2), rng.u16(0..3)];
        let flags = if rng.bool() { 0x0100 } else { rng.u16(..) };
        let mut m = Msg::new(rng.u16(..), flags, counts).0;
        let name = |rng: &mut fastrand::Rng, m: &mut Vec<u8>| {
            if rng.u8(0..8) == 0 {
                // Close to the 255-octet limit, the root's octet counted:
                // labels of random lengths up to 63 until `left` is reached.
                let mut left = rng.usize(250..260) - 1;
                while left > 0 {
                    // A label takes 2 to 64 octets: never leave 1.
                    let mut take = rng.usize(2..=64).min(left);
                    if left - take == 1 {
                        take = if take == 64 { 63 } else { take + 1 };
                    }
                    m.push(take as u8 - 1);
                    m.extend((1..take).map(|_| rng.alphanumeric() as u8));
                    left -= take;
                }
                m.push(0);
                return;
            }
            for _ in 0..rng.usize(0..6) {
                let len = one_of(rng, &[0u8, 1, 3, 63, 64, 70], |r| r.u8(0..64));
                m.push(len);
                m.extend((0..len).map(|_| rng.u8(..)));
            }
            if rng.u8(0..4) == 0 {
                let target = rng.usize(..m.len() + 4) as u16;
                m.extend((0xc000 | target).to_be_bytes());
            } else {
                m.push(0);
            }
        };
        let rtype = |rng: &mut fastrand::Rng| -> u16 {
            one_of(rng, &[1, 28, 5, 6, 16, 41, 255, 252, 251], |r| r.u16(..))
        };
        for _ in 0..rng.usize(0..3) {
            name(rng, &mut m);
            m.extend(rtype(rng).to_be_bytes());
            m.extend(if rng.bool() { 1u16 } else { rng.u16(..) }.to_be_bytes());
        }
        for _ in 0..rng.usize(0..4) {
            if rng.bool() {
                // OPT, root-named, with options of random (maybe lying) lengths.
                m.push(0);
                m.extend(41u16.to_be_bytes());
                m.extend(rng.u16(..).to_be_bytes());
                m.extend([rng.u8(0..2), rng.u8(0..2), rng.u8(..), 0]);
                let mut rdata = Vec::new();
                for _ in 0..rng.usize(0..4) {
                    let code = one_of(rng, &[8u16, 10, 12, 3], |r| r.u16(..));
                    let data: Vec<u8> = if code == 8 && rng.bool() {
                        let family = one_of(rng, &[1u16, 2], |r| r.u16(..));
                        let mut d = family.to_be_bytes().to_vec();
                        d.extend([rng.u8(0..140), rng.u8(..)]);
                        d.extend((0..rng.usize(0..20)).map(|_| rng.u8(..)));
                        d
                    } else {
                        (0..rng.usize(0..40)).map(|_| rng.u8(..)).collect()
                    };
                    let len = if rng.u8(0..4) == 0 {
                        rng.u16(..)
                    } else {
                        data.len() as u16
                    };
                    rdata.extend(code.to_be_bytes());
                    rdata.extend(len.to_be_bytes());
                    rdata.extend(data);
                }
                let len = if rng.u8(0..4) == 0 {
                    rng.u16(..)
                } else {
                    rdata.len() as u16
                };
                m.extend(len.to_be_bytes());
                m.extend(rdata);
            } else {
                name(rng, &mut m);
                m.extend(rtype(rng).to_be_bytes());
                m.extend(rng.u16(..).to_be_bytes());
                m.extend(rng.u32(..).to_be_bytes());
                let data: Vec<u8> = (0..rng.usize(0..32)).map(|_| rng.u8(..)).collect();
                let len = if rng.bool() {
                    data.len() as u16
                } else {
                    rng.u16(..)
                };
                m.extend(len.to_be_bytes());
                m.extend(data);
            }
        }
        m
    }

    /// Hundreds of thousands of random and damaged packets through what a
    /// UDP thread calls per packet, through both paths apart and as TCP
    /// messages: no panic, every UDP reply within 1232 bytes, for the
    /// query's id and never to a response, and whatever the fast path
    /// answers is the general path's answer; so is what the packet cache
    /// gives a query asked again under another id.
    #[test]
    fn random_and_damaged_packets_never_panic() {
        // Both paths make server cookies at the same second.
        crate::dns::cookie::pin_now(Some(1_800_000_000));
        let data = crate::dns::answer::tests::data(Arc::new(AllUp));
        let sources: [SocketAddr; 4] = [
            "192.0.2.200:5353".parse().unwrap(),
            "81.2.69.160:53".parse().unwrap(),
            "[2001:db8::1]:53".parse().unwrap(),
            "[::ffff:81.2.69.160]:53".parse().unwrap(),
        ];
        let templates = templates();
        let seed = 0x6765_6f6c_625f_646e;
        let mut rng = fastrand::Rng::with_seed(seed);
        let started = Instant::now();
        let (mut answered, mut fast_answered) = (0, 0);
        let (mut reply, mut fast, mut general) = (Vec::new(), Vec::new(), Vec::new());
        let (mut cache, mut reply_again, mut reused) = (PacketCache::default(), Vec::new(), 0);
        let packets = crate::proptest_cases(PACKETS);
        for i in 0..packets {
            let packet = match rng.u8(0..8) {
                0 => (0..rng.usize(0..600)).map(|_| rng.u8(..)).collect(),
                1 | 2 => structured(&mut rng),
                3 => {
                    let mut p = rng.choice(&templates).unwrap().clone();
                    vary(&mut rng, &mut p);
                    p
                }
                _ => {
                    let mut p = rng.choice(&templates).unwrap().clone();
                    mutate(&mut rng, &mut p);
                    p
                }
            };
            let src = *rng.choice(&sources).unwrap();
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
                let sent = answer_packet(&data, &packet, src, &mut reply, &mut cache).is_some();
                let by_fast = fast::answer(&data, &packet, src, &mut fast).is_some();
                let by_general = answer_general(&data, &packet, src, &mut general).is_some();
                // And as a TCP message (only the size limit differs).
                let mut tcp = Vec::new();
                wire::answer(&data, &packet, src, Protocol::Tcp, &mut tcp);
                (sent, by_fast, by_general)
            }));
            let Ok((sent, by_fast, by_general)) = outcome else {
                panic!("packet {i} (seed {seed:#x}) panicked: {packet:02x?}");
            };
            if sent && !by_fast {
                // What the cache gave, if it gave it, is what the general
                // path gives now.
                assert_eq!(reply, general, "packet {i}: {packet:02x?}");
                // Asked again under another id: from the cache when kept.
                let mut again = packet.clone();
                again[0] ^= 0xff;
                reused += usize::from(cache.answer(&data, &again, &mut reply_again).is_some());
                let sent_again = answer_packet(&data, &again, src, &mut reply_again, &mut cache);
                assert!(sent_again.is_some(), "packet {i}: {again:02x?}");
                answer_general(&data, &again, src, &mut general);
                assert_eq!(reply_again, general, "packet {i} again: {again:02x?}");
            }
            if sent {
                answered += 1;
                assert!(
                    reply.len() <= usize::from(answer::MAX_UDP_PAYLOAD),
                    "packet {i}: a reply of {} bytes: {packet:02x?}",
                    reply.len()
                );
                assert_eq!(reply[..2], packet[..2], "packet {i}: {packet:02x?}");
                assert_eq!(packet[2] & 0x80, 0, "a response answered: {packet:02x?}");
            }
            if by_fast {
                fast_answered += 1;
                assert!(by_general, "packet {i}: {packet:02x?}");
                assert_eq!(fast, general, "packet {i}: {packet:02x?}");
            }
        }
        let took = started.elapsed();
        eprintln!(
            "{packets} packets in {took:.1?}: {answered} answered, {fast_answered} by the fast path, \
             {reused} again from the packet cache"
        );
        assert!(
            answered > packets / 2 && fast_answered > packets / 200 && reused > packets / 20,
            "{answered} {fast_answered} {reused}"
        );
    }
}
