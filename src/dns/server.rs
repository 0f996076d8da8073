//! The DNS server's sockets and their lifetime: one `dns.listen` address
//! is bound for both transports, then served by the UDP threads (`udp`)
//! and the TCP connection tasks (`tcp`) until shutdown.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{SharedDnsData, rrl, tcp, udp};

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
    /// Sockets handed over by the process this one takes over from.
    pub fn inherited(udp: Vec<OwnedFd>, tcp: OwnedFd) -> io::Result<DnsSockets> {
        let tcp = std::net::TcpListener::from(tcp);
        tcp.set_nonblocking(true)?;
        Ok(DnsSockets {
            udp: udp.into_iter().map(std::net::UdpSocket::from).collect(),
            tcp: TcpListener::from_std(tcp)?,
        })
    }

    /// Duplicates of the descriptors, UDP then TCP, to hand over.
    pub fn duplicates(&self) -> io::Result<Vec<OwnedFd>> {
        let mut fds = Vec::with_capacity(self.udp.len() + 1);
        for socket in &self.udp {
            fds.push(socket.as_fd().try_clone_to_owned()?);
        }
        fds.push(self.tcp.as_fd().try_clone_to_owned()?);
        Ok(fds)
    }

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
/// `shutdown` is cancelled: then stops receiving and returns once the TCP
/// side has ended (open TCP connections are closed) and the UDP threads
/// have stopped.
pub async fn serve(
    sockets: Vec<DnsSockets>,
    data: SharedDnsData,
    shutdown: CancellationToken,
) -> io::Result<()> {
    if sockets.is_empty() {
        shutdown.cancelled().await;
        return Ok(());
    }
    let udp_stop = CancellationToken::new();
    // One table for every UDP thread: a client's queries spread over them.
    let rrl = Arc::new(rrl::Table::default());
    let mut udp_threads = Vec::with_capacity(sockets.len());
    let mut tcp_listeners = Vec::with_capacity(sockets.len());
    for DnsSockets { udp, tcp } in sockets {
        for socket in udp {
            udp_threads.push(udp::spawn(
                socket,
                data.clone(),
                rrl.clone(),
                udp_stop.clone(),
            )?);
        }
        tcp_listeners.push(tcp);
    }
    let result = tcp::serve(tcp_listeners, data, shutdown).await;
    udp_stop.cancel();
    let joined = tokio::task::spawn_blocking(move || {
        for thread in udp_threads {
            let _ = thread.join();
        }
    });
    let _ = joined.await;
    result
}
