//! DNS over UDP without hickory-server: one thread per socket receives,
//! answers from the current [`DnsData`] and sends, reusing its buffers.
//! hickory-server spawns a task per packet and hands each reply through a
//! channel; at DNS rates that bookkeeping costs more than the answer.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use hickory_proto::op::{Header, HeaderCounts, MessageType, Metadata, ResponseCode};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};
use hickory_server::net::xfer::Protocol;
use hickory_server::server::Request;
use tokio_util::sync::CancellationToken;

use super::answer;
use super::server::count;
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
    socket: tokio::net::UdpSocket,
    data: SharedDnsData,
    shutdown: CancellationToken,
) -> io::Result<std::thread::JoinHandle<()>> {
    let socket = socket.into_std()?;
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

fn serve(socket: &UdpSocket, data: &SharedDnsData, shutdown: &CancellationToken) {
    let mut packet = vec![0u8; MAX_RECEIVE];
    let mut reply = Vec::with_capacity(answer::MAX_UDP_PAYLOAD.into());
    while !shutdown.is_cancelled() {
        let (len, src) = match socket.recv_from(&mut packet) {
            Ok(got) => got,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) => {
                // ICMP errors from earlier sends (ECONNREFUSED) land here
                // on some systems; nothing to do but go on.
                tracing::debug!(error = %e, "DNS UDP receive failed");
                continue;
            }
        };
        if !answer_packet(&data.load(), &packet[..len], src, &mut reply) {
            continue;
        }
        if let Err(e) = socket.send_to(&reply, src) {
            tracing::debug!(%src, error = %e, "cannot send a DNS response");
        }
    }
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
