//! Sockets and the hickory-server glue: receive, answer from the current
//! [`DnsData`], count, send.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hickory_proto::op::{Header, HeaderCounts, ResponseCode};
use hickory_proto::rr::{Record, RecordType};
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use metrics::Counter;
use smallvec::SmallVec;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::answer::{self, Reply};
use super::udp;
use super::{DNS_GEO_ANSWERS, DNS_QUERIES, DnsData, SharedDnsData};

/// A TCP connection that sends no query for this long is closed.
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Responses queued per TCP connection.
const TCP_RESPONSE_BUFFER: usize = 16;
/// Attempts at finding a port free for both UDP and TCP when binding port 0.
const PORT_ZERO_ATTEMPTS: usize = 16;

/// One `dns.listen` address, bound: its UDP sockets (one per UDP thread,
/// sharing the port by SO_REUSEPORT when there are several) and its TCP
/// listener on the same port.
pub struct DnsSockets {
    pub udp: Vec<std::net::UdpSocket>,
    pub tcp: TcpListener,
}

impl DnsSockets {
    /// The bound address (port 0 resolved).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// Binds `udp_threads` UDP sockets and a TCP listener on each address;
/// with port 0, UDP first and the rest on the port it got. Errors name the
/// address.
pub async fn bind(listen: &[SocketAddr], udp_threads: usize) -> io::Result<Vec<DnsSockets>> {
    let mut sockets = Vec::with_capacity(listen.len());
    for &addr in listen {
        sockets.push(bind_one(addr, udp_threads.max(1)).await?);
    }
    Ok(sockets)
}

async fn bind_one(addr: SocketAddr, udp_threads: usize) -> io::Result<DnsSockets> {
    let context = |e: io::Error, proto: &str, at: SocketAddr| {
        io::Error::new(e.kind(), format!("DNS: cannot bind {proto} {at}: {e}"))
    };
    let attempts = if addr.port() == 0 {
        PORT_ZERO_ATTEMPTS
    } else {
        1
    };
    let shared = udp_threads > 1;
    let mut attempt = 1;
    loop {
        let first = udp_socket(addr, shared).map_err(|e| context(e, "UDP", addr))?;
        let local = first.local_addr()?;
        match TcpListener::bind(local).await {
            Ok(tcp) => {
                let mut udp = vec![first];
                for _ in 1..udp_threads {
                    udp.push(udp_socket(local, true).map_err(|e| context(e, "UDP", local))?);
                }
                return Ok(DnsSockets { udp, tcp });
            }
            // The port UDP got may be taken for TCP: try another.
            Err(e) if attempt < attempts && e.kind() == io::ErrorKind::AddrInUse => attempt += 1,
            Err(e) => return Err(context(e, "TCP", local)),
        }
    }
}

fn udp_socket(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Serves DNS on `sockets` from whatever `data` holds at each query, until
/// `shutdown` is cancelled: then stops receiving and returns once hickory's
/// tasks have ended (open TCP connections are closed).
pub async fn serve(
    sockets: Vec<DnsSockets>,
    data: SharedDnsData,
    shutdown: CancellationToken,
) -> io::Result<()> {
    if sockets.is_empty() {
        shutdown.cancelled().await;
        return Ok(());
    }
    let mut server = Server::new(Handler { data: data.clone() });
    let udp_stop = CancellationToken::new();
    let mut udp_threads = Vec::with_capacity(sockets.len());
    for DnsSockets { udp, tcp } in sockets {
        for socket in udp {
            udp_threads.push(udp::spawn(socket, data.clone(), udp_stop.clone())?);
        }
        server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
    }
    let stop = server.shutdown_token().clone();
    let forward = async move {
        shutdown.cancelled().await;
        stop.cancel();
        std::future::pending::<()>().await
    };
    let result = tokio::select! {
        result = server.block_until_done() => {
            result.map_err(|e| io::Error::other(format!("DNS server stopped: {e}")))
        }
        () = forward => unreachable!("pending never completes"),
    };
    udp_stop.cancel();
    let joined = tokio::task::spawn_blocking(move || {
        for thread in udp_threads {
            let _ = thread.join();
        }
    });
    let _ = joined.await;
    result
}

/// Re-reads the GeoIP database when its file changes on disk, checking
/// every `every`, and swaps in data using it. A bad new file is logged
/// (once per distinct error) and the old one keeps serving.
pub async fn watch_geoip(data: SharedDnsData, every: Duration, shutdown: CancellationToken) {
    let mut last_error: Option<String> = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shutdown.cancelled() => return,
        }
        let current = data.load_full();
        let locator = current.locator().clone();
        // Opening reads the whole file: keep it off the async workers.
        let refreshed = tokio::task::spawn_blocking(move || locator.refreshed()).await;
        match refreshed {
            Ok(Ok(Some(fresh))) => {
                last_error = None;
                let path = fresh.database().map(|db| db.path().display().to_string());
                let next = Arc::new(current.with_locator(Arc::new(fresh)));
                // A reload in between built its own locator from the file.
                let previous = data.compare_and_swap(&current, next);
                if Arc::ptr_eq(&previous, &current) {
                    tracing::info!(path = path.unwrap_or_default(), "GeoIP database re-read");
                }
            }
            Ok(Ok(None)) => {}
            Ok(Err(error)) => {
                let message = error.to_string();
                if last_error.as_deref() != Some(&message) {
                    tracing::error!(
                        "GeoIP database refused, the previous one keeps serving: {message}"
                    );
                    last_error = Some(message);
                }
            }
            Err(join) => tracing::error!(%join, "GeoIP reload task failed"),
        }
    }
}

struct Handler {
    data: SharedDnsData,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let reply = {
            let data = self.data.load();
            let reply = answer::respond(&data, request);
            count(&data, request, &reply);
            reply
        };
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(edns) = &reply.edns {
            builder.edns(edns);
        }
        let response = builder.build(
            reply.metadata,
            reply.answers.iter(),
            reply.authorities.iter(),
            std::iter::empty::<&Record>(),
            std::iter::empty::<&Record>(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(error) => {
                tracing::debug!(src = %request.src(), %error, "cannot send a DNS response");
                ResponseInfo::from(Header {
                    metadata: reply.metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}

/// Query types with their own label; the rest count as `other` so a client
/// cannot grow the label set.
const QTYPES: [(RecordType, &str); 15] = [
    (RecordType::A, "A"),
    (RecordType::AAAA, "AAAA"),
    (RecordType::CNAME, "CNAME"),
    (RecordType::MX, "MX"),
    (RecordType::NS, "NS"),
    (RecordType::SOA, "SOA"),
    (RecordType::TXT, "TXT"),
    (RecordType::SRV, "SRV"),
    (RecordType::CAA, "CAA"),
    (RecordType::ANY, "ANY"),
    (RecordType::PTR, "PTR"),
    (RecordType::DS, "DS"),
    (RecordType::DNSKEY, "DNSKEY"),
    (RecordType::HTTPS, "HTTPS"),
    (RecordType::SVCB, "SVCB"),
];

const RCODES: [(ResponseCode, &str); 7] = [
    (ResponseCode::NoError, "NOERROR"),
    (ResponseCode::FormErr, "FORMERR"),
    (ResponseCode::ServFail, "SERVFAIL"),
    (ResponseCode::NXDomain, "NXDOMAIN"),
    (ResponseCode::NotImp, "NOTIMP"),
    (ResponseCode::Refused, "REFUSED"),
    (ResponseCode::BADVERS, "BADVERS"),
];

/// Counter handles by (qtype, rcode), the last of each being `other`,
/// resolved on first use.
static QUERY_COUNTERS: [[OnceLock<Counter>; RCODES.len() + 1]; QTYPES.len() + 1] =
    [const { [const { OnceLock::new() }; RCODES.len() + 1] }; QTYPES.len() + 1];

pub(super) fn count(data: &DnsData, request: &Request, reply: &Reply) {
    let qtype = request.queries.queries().first().map(|q| q.query_type());
    count_answer(
        data,
        qtype,
        reply.metadata.response_code,
        reply.geo.as_ref(),
    );
}

/// Counts one answered query: its type and rcode, and for address queries
/// to a geo name, the data centers chosen (`geo`).
pub(super) fn count_answer(
    data: &DnsData,
    qtype: Option<RecordType>,
    rcode: ResponseCode,
    geo: Option<&(usize, SmallVec<[usize; 4]>)>,
) {
    count_query(qtype, rcode);
    if let (Some((index, chosen)), Some(RecordType::A | RecordType::AAAA | RecordType::ANY)) =
        (geo, qtype)
    {
        count_geo(data, *index, chosen);
    }
}

/// `geolb_dns_queries_total` for one query.
fn count_query(qtype: Option<RecordType>, rcode: ResponseCode) {
    let qtype = qtype
        .and_then(|t| QTYPES.iter().position(|(known, _)| *known == t))
        .unwrap_or(QTYPES.len());
    let rcode = RCODES
        .iter()
        .position(|(known, _)| *known == rcode)
        .unwrap_or(RCODES.len());
    QUERY_COUNTERS[qtype][rcode]
        .get_or_init(|| {
            let qtype = QTYPES.get(qtype).map_or("other", |q| q.1);
            let rcode = RCODES.get(rcode).map_or("other", |r| r.1);
            metrics::counter!(DNS_QUERIES, "qtype" => qtype, "rcode" => rcode)
        })
        .increment(1);
}

/// `geolb_dns_geo_answers_total` for the data centers chosen for geo name
/// `index`.
fn count_geo(data: &DnsData, index: usize, chosen: &[usize]) {
    let geo = &data.compiled.geo[index];
    for dc in chosen {
        let Some(slot) = geo.candidates.iter().position(|c| c == dc) else {
            continue;
        };
        geo.counters[slot]
            .get_or_init(|| {
                metrics::counter!(
                    DNS_GEO_ANSWERS,
                    "name" => geo.name.to_ascii().trim_end_matches('.').to_owned(),
                    "datacenter" => data.compiled.datacenters[*dc].name.clone()
                )
            })
            .increment(1);
    }
}
