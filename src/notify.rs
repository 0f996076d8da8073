//! systemd's readiness protocol (`sd_notify(3)`), by hand: when
//! `NOTIFY_SOCKET` names a Unix datagram socket (a path, or `@name` for an
//! abstract one), each state change is one datagram of `KEY=value` lines.
//! Without it (not under systemd, or `Type=` other than notify) nothing is
//! sent. A failed send is logged at debug and never stops the daemon.
//!
//! - `READY=1`: start-up done (listeners bound, first health round over),
//!   and at the end of each reload, good or refused.
//! - `RELOADING=1` with `MONOTONIC_USEC`: a reload starts.
//! - `STOPPING=1`: shutdown starts.
//! - `WATCHDOG=1`: every half `WATCHDOG_USEC` (see [`watchdog`]).
//! - `STATUS=...`: a line for `systemctl status`.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Sends `state` (newline-separated `KEY=value` lines) to systemd, if it
/// listens.
pub fn notify(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&socket, state) {
        tracing::debug!(error = %e, socket = ?socket, "sd_notify failed");
    }
}

fn send(socket: &std::ffi::OsStr, state: &str) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let name = socket.as_bytes();
    let sender = UnixDatagram::unbound()?;
    // A full receive queue must not stall a runtime thread.
    sender.set_nonblocking(true)?;
    let sent = match name.strip_prefix(b"@") {
        Some(abstract_name) => {
            use std::os::linux::net::SocketAddrExt as _;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)?;
            sender.send_to_addr(state.as_bytes(), &addr)?
        }
        None if name.starts_with(b"/") => sender.send_to(state.as_bytes(), socket)?,
        None => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "NOTIFY_SOCKET is neither an absolute path nor @abstract",
            ));
        }
    };
    if sent != state.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "datagram cut short",
        ));
    }
    Ok(())
}

/// `READY=1` with a status line.
pub fn ready(status: &str) {
    notify(&format!("READY=1\nSTATUS={status}"));
}

/// `RELOADING=1`, stamped with `CLOCK_MONOTONIC` as systemd asks.
pub fn reloading() {
    let usec = match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(now) => now.tv_sec() as u64 * 1_000_000 + now.tv_nsec() as u64 / 1_000,
        Err(e) => {
            tracing::debug!(error = %e, "clock_gettime(CLOCK_MONOTONIC) failed");
            0
        }
    };
    notify(&format!(
        "RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading the config"
    ));
}

/// `STOPPING=1`.
pub fn stopping() {
    notify("STOPPING=1\nSTATUS=shutting down: finishing in-flight requests");
}

/// How often systemd wants `WATCHDOG=1` from this process: half its
/// `WATCHDOG_USEC`, if it is meant for us (`WATCHDOG_PID` unset or ours).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.trim().parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Sends `WATCHDOG=1` every `interval` until `shutdown`. Run on the
/// serving runtime, so a wedged runtime stops the pings and systemd
/// restarts the daemon.
pub async fn watchdog(interval: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => notify("WATCHDOG=1"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn datagrams_reach_a_path_or_an_abstract_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        send(path.as_os_str(), "READY=1").unwrap();
        assert_eq!(received(&listener), "READY=1");

        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("geolb-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        send(format!("@{name}").as_ref(), "STOPPING=1").unwrap();
        assert_eq!(received(&listener), "STOPPING=1");

        assert!(send("relative/path".as_ref(), "READY=1").is_err());
        assert!(send(dir.path().join("nobody").as_os_str(), "READY=1").is_err());
    }
}
