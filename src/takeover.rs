//! Handing the listening sockets to a new process (`geolb run --takeover`),
//! as HAProxy's `-x` does: no port is ever closed, so no connection is
//! refused during a restart or an upgrade.
//!
//! The running daemon listens on `takeover.sock` in its state directory.
//! A new process connects and asks; the running one answers with a
//! description of its sockets and their file descriptors (SCM_RIGHTS).
//! Both then accept on the same sockets. Once the new process serves (its
//! first health round done), it says `READY`; the old one stops accepting,
//! finishes its connections within its grace period and exits. If the new
//! process dies before `READY`, the old one simply goes on.

use std::collections::HashMap;
use std::io::{self, IoSlice, IoSliceMut, Read as _, Write as _};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

const REQUEST: &[u8] = b"GEOLB TAKEOVER 1\n";
const READY: &[u8] = b"READY\n";
/// The kernel passes at most this many descriptors in one message.
const MAX_FDS: usize = 253;
/// How long the new process waits for the running one to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// The socket file in `state_dir`.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("takeover.sock")
}

/// What one handed-over socket is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Handed {
    /// An http, https or tcp listener, by its identity across reloads.
    Listener { id: String },
    /// The admin listener, by its configured address.
    Admin { listen: SocketAddr },
    /// One `dns.listen` address: `udp` UDP sockets, then its TCP listener.
    Dns { listen: SocketAddr, udp: usize },
}

impl Handed {
    fn fd_count(&self) -> usize {
        match self {
            Handed::Dns { udp, .. } => udp + 1,
            _ => 1,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TakeoverError {
    #[error("takeover socket {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("takeover socket {}: {why}", path.display())]
    Protocol { path: PathBuf, why: String },
}

/// The sockets received from the running daemon, taken one by one as the
/// new config binds; what nobody takes is closed when this is dropped.
pub struct Inherited {
    sockets: HashMap<Handed, Vec<OwnedFd>>,
    /// Told `READY` by [`Inherited::confirm`].
    peer: Option<StdUnixStream>,
    path: PathBuf,
}

impl Inherited {
    /// Nothing inherited: a normal start.
    pub fn none() -> Inherited {
        Inherited {
            sockets: HashMap::new(),
            peer: None,
            path: PathBuf::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    pub fn listener(&mut self, id: &str) -> Option<OwnedFd> {
        let handed = Handed::Listener { id: id.to_owned() };
        self.sockets.remove(&handed).and_then(|mut fds| fds.pop())
    }

    pub fn admin(&mut self, listen: SocketAddr) -> Option<OwnedFd> {
        let key = Handed::Admin { listen };
        self.sockets.remove(&key).and_then(|mut fds| fds.pop())
    }

    /// A DNS address's UDP sockets and TCP listener.
    pub fn dns(&mut self, listen: SocketAddr) -> Option<(Vec<OwnedFd>, OwnedFd)> {
        let key = self
            .sockets
            .keys()
            .find(|k| matches!(k, Handed::Dns { listen: l, .. } if *l == listen))?
            .clone();
        let mut fds = self.sockets.remove(&key)?;
        let tcp = fds.pop()?;
        Some((fds, tcp))
    }

    /// Tells the old process this one serves: it stops accepting and
    /// exits. Closes what the new config did not take.
    pub fn confirm(&mut self) -> Result<(), TakeoverError> {
        self.sockets.clear();
        let Some(mut peer) = self.peer.take() else {
            return Ok(());
        };
        peer.write_all(READY).map_err(|source| TakeoverError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

/// Asks the daemon behind `path` for its sockets. `Ok(None)`: nobody
/// listens there (start normally). Blocking.
pub fn request(path: &Path) -> Result<Option<Inherited>, TakeoverError> {
    let io_error = |source| TakeoverError::Io {
        path: path.to_owned(),
        source,
    };
    let protocol = |why: String| TakeoverError::Protocol {
        path: path.to_owned(),
        why,
    };
    let mut peer = match StdUnixStream::connect(path) {
        Ok(peer) => peer,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(io_error(e)),
    };
    peer.set_read_timeout(Some(ANSWER_TIMEOUT))
        .map_err(io_error)?;
    peer.write_all(REQUEST).map_err(io_error)?;

    // The header's length and the descriptors come in one message; the rest
    // of the header may follow in more reads.
    let mut length = [0u8; 4];
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        &peer,
        &mut [IoSliceMut::new(&mut length)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(|e| io_error(e.into()))?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if got.bytes == 0 {
        return Err(protocol("closed without an answer".into()));
    }
    peer.read_exact(&mut length[got.bytes..])
        .map_err(io_error)?;
    let mut header = vec![0u8; u32::from_be_bytes(length) as usize];
    peer.read_exact(&mut header).map_err(io_error)?;
    let described: Vec<Handed> =
        serde_json::from_slice(&header).map_err(|e| protocol(format!("unreadable answer: {e}")))?;
    let wanted: usize = described.iter().map(Handed::fd_count).sum();
    if wanted != fds.len() {
        return Err(protocol(format!(
            "{wanted} sockets described, {} received",
            fds.len()
        )));
    }
    peer.set_read_timeout(None).map_err(io_error)?;
    let mut fds = fds.into_iter();
    let sockets = described
        .into_iter()
        .map(|handed| {
            let taken = fds.by_ref().take(handed.fd_count()).collect();
            (handed, taken)
        })
        .collect();
    Ok(Some(Inherited {
        sockets,
        peer: Some(peer),
        path: path.to_owned(),
    }))
}

/// Serves takeover requests on `path` until `shutdown`. `sockets` lists
/// what to hand over (descriptors duplicated for the occasion); `ready`
/// is called once a new process has said it serves.
pub async fn serve(
    path: PathBuf,
    shutdown: CancellationToken,
    sockets: impl Fn() -> Vec<(Handed, Vec<OwnedFd>)>,
    ready: impl FnOnce(),
) -> Result<(), TakeoverError> {
    let io_error = |source| TakeoverError::Io {
        path: path.clone(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_error)?;
    }
    // A socket file left by the process this one took over, or by a crash:
    // the path is this process's now.
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(e)),
    }
    let listener = UnixListener::bind(&path).map_err(io_error)?;
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "takeover accept failed");
                    continue;
                }
            },
        };
        match hand_over(stream, &sockets, &shutdown).await {
            Ok(true) => {
                ready();
                return Ok(());
            }
            Ok(false) => tracing::warn!("takeover abandoned by the new process; serving on"),
            Err(e) => tracing::warn!(error = %e, "takeover failed; serving on"),
        }
    }
}

/// One exchange: the request, the sockets, then the new process's `READY`
/// (true) or its going away (false).
async fn hand_over(
    stream: UnixStream,
    sockets: &impl Fn() -> Vec<(Handed, Vec<OwnedFd>)>,
    shutdown: &CancellationToken,
) -> io::Result<bool> {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    let asked = tokio::time::timeout(ANSWER_TIMEOUT, reader.read_until(b'\n', &mut line)).await;
    if !matches!(asked, Ok(Ok(_))) || line != REQUEST {
        return Err(io::Error::other("not a takeover request"));
    }
    let stream = reader.into_inner();
    let handed = sockets();
    if handed.iter().map(|(_, fds)| fds.len()).sum::<usize>() > MAX_FDS {
        return Err(io::Error::other(format!("more than {MAX_FDS} sockets")));
    }
    let described: Vec<&Handed> = handed.iter().map(|(h, _)| h).collect();
    let header = serde_json::to_vec(&described).map_err(io::Error::other)?;
    let length = u32::try_from(header.len())
        .map_err(io::Error::other)?
        .to_be_bytes();
    let fds: Vec<_> = handed
        .iter()
        .flat_map(|(_, fds)| fds.iter().map(|fd| fd.as_fd()))
        .collect();
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::other("cannot attach the sockets"));
    }
    // Small enough for the socket buffer: written at once or not at all.
    stream.writable().await?;
    let sent = rustix::net::sendmsg(
        &stream,
        &[IoSlice::new(&length)],
        &mut control,
        SendFlags::empty(),
    )?;
    if sent != length.len() {
        return Err(io::Error::other("short write"));
    }
    let mut stream = BufReader::new(stream);
    let mut rest = &header[..];
    while !rest.is_empty() {
        stream.get_mut().writable().await?;
        match stream.get_ref().try_write(rest) {
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    tracing::info!(
        sockets = described.len(),
        "sockets handed to a new process; waiting for it to serve"
    );
    let mut answer = Vec::new();
    tokio::select! {
        () = shutdown.cancelled() => Ok(false),
        read = stream.read_until(b'\n', &mut answer) => {
            read?;
            Ok(answer == READY)
        }
    }
}
