//! DNS over UDP without hickory-server: one thread per socket receives a
//! batch of queries (`recvmmsg`), answers them from the current
//! [`DnsData`] into reused buffers and sends the batch (`sendmmsg`).
//! hickory-server spawns a task per packet and hands each reply through a
//! channel; at DNS rates that bookkeeping costs more than the answer.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use hickory_proto::op::{Header, HeaderCounts, MessageType, Metadata, ResponseCode};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};
use hickory_server::net::xfer::Protocol;
use hickory_server::server::Request;
use nix::errno::Errno;
use nix::sys::socket::{
    ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg,
};
use smallvec::SmallVec;
use tokio_util::sync::CancellationToken;

use super::answer;
use super::count::{count, count_answer};
use super::fast;
use super::{DnsData, SharedDnsData};

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
    shutdown: CancellationToken,
) -> io::Result<std::thread::JoinHandle<()>> {
    socket.set_nonblocking(false)?;
    socket.set_read_timeout(Some(SHUTDOWN_POLL))?;
    // Room for bursts while the thread is busy or descheduled; the kernel
    // caps it at net.core.rmem_max.
    let _ = socket2::SockRef::from(&socket).set_recv_buffer_size(RECEIVE_BUFFER);
    let local = socket.local_addr()?;
    std::thread::Builder::new()
        .name(format!("dns-udp {local}"))
        .spawn(move || serve(&socket, &data, &shutdown))
}

/// Datagrams taken from (and answers given to) the kernel per system call.
const BATCH: usize = 32;

/// Receives up to [`BATCH`] queries per `recvmmsg`, answers them from one
/// load of the data, and sends the answers with one `sendmmsg`.
fn serve(socket: &UdpSocket, data: &SharedDnsData, shutdown: &CancellationToken) {
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
        destinations.clear();
        {
            let data = data.load();
            for &(i, len, src) in &received {
                let reply = &mut replies[destinations.len()];
                let packet = &packets[i][..len];
                // A bug met by one packet must not end UDP service, as it
                // would end only that packet's task under hickory-server.
                let answered = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    answer_packet(&data, packet, src, reply)
                }));
                match answered {
                    Ok(true) => destinations.push(Some(SockaddrStorage::from(src))),
                    Ok(false) => {}
                    Err(_) => tracing::error!(%src, "answering a DNS query panicked; dropped"),
                }
            }
        }
        send_all(
            fd,
            &mut send_headers,
            &replies[..destinations.len()],
            &destinations,
        );
    }
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

/// Writes the answer to `packet` from `src` into `reply`; false when
/// nothing is to be sent (not a query, or not worth one).
pub(crate) fn answer_packet(
    data: &DnsData,
    packet: &[u8],
    src: SocketAddr,
    reply: &mut Vec<u8>,
) -> bool {
    if !answerable_source(src) {
        return false;
    }
    if let Some(answered) = fast::answer(data, packet, src, reply) {
        count_answer(
            data,
            Some(answered.qtype),
            ResponseCode::NoError,
            answered.geo.as_ref(),
        );
        return true;
    }
    answer_general(data, packet, src, reply)
}

/// [`answer_packet`] for what the fast path leaves: through hickory-proto's
/// parser and the general answer.
pub(crate) fn answer_general(
    data: &DnsData,
    packet: &[u8],
    src: SocketAddr,
    reply: &mut Vec<u8>,
) -> bool {
    let request = match Request::from_bytes(packet.to_vec(), src, Protocol::Udp) {
        Ok(request) => request,
        Err(error) => {
            // Without a whole header there is no id to answer to.
            let Ok(header) = Header::read(&mut BinDecoder::new(packet)) else {
                return false;
            };
            tracing::debug!(%src, %error, "FORMERR: unparsable query");
            form_error(&header.metadata, reply);
            return true;
        }
    };
    if request.metadata.message_type != MessageType::Query {
        return false;
    }
    let built = answer::build(data, &request);
    count(data, &request, &built);
    answer::encode_udp(built, &request, reply);
    true
}

/// A reply to a message that could not be parsed: its id, opcode, RD and
/// CD, FORMERR, nothing else (what hickory-server sends).
fn form_error(request: &Metadata, reply: &mut Vec<u8>) {
    let mut metadata = Metadata::response_from_request(request);
    metadata.response_code = ResponseCode::FormErr;
    let header = Header {
        metadata,
        counts: HeaderCounts::default(),
    };
    reply.clear();
    let mut encoder = BinEncoder::new(reply);
    if header.emit(&mut encoder).is_err() {
        reply.clear();
    }
}

/// Sources no reply can usefully go to (spoofing reflectors aside):
/// port 0, an unspecified address, the IPv4 broadcast address.
fn answerable_source(src: SocketAddr) -> bool {
    src.port() != 0 && !src.ip().is_unspecified() && src.ip() != IpAddr::V4(Ipv4Addr::BROADCAST)
}
