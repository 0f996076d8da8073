//! `[admin] socket`: the admin API on a Unix stream socket whose file
//! permissions (`socket_mode`) add a layer to the token.
//!
//! The socket is bound under a temporary name in the same directory, given
//! its mode, then renamed onto the configured path: it never exists with
//! looser permissions, and a stale file (a crash) or the socket of the
//! process a `geolb run --takeover` replaces is swapped out in one step.
//! At a clean exit the file is removed only if it is still this process's
//! (after a takeover it is the new process's).

use std::io;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

use crate::config::UNIX_SOCKET_PATH_MAX;

/// Why the admin socket could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("admin.socket = {:?}: {what}: {source}", path.display().to_string())]
    Io {
        path: PathBuf,
        what: &'static str,
        source: io::Error,
    },
    #[error(
        "admin.socket = {:?}: exists and is not a socket: remove it or choose another path",
        path.display().to_string()
    )]
    NotASocket { path: PathBuf },
}

/// The socket file as this process made it (device and inode), so that
/// [`SocketFile::remove_if_ours`] leaves a successor's alone.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    identity: (u64, u64),
}

/// Whether `path` may be bound: nothing there, or a socket file (which
/// [`bind`] replaces); never another kind of file.
pub fn check(path: &Path) -> Result<(), SocketError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => Err(SocketError::NotASocket {
            path: path.to_path_buf(),
        }),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(SocketError::Io {
            path: path.to_path_buf(),
            what: "cannot look at it",
            source,
        }),
    }
}

/// Binds `path` with permission bits `mode`, replacing a socket file that
/// is there (never another kind of file).
pub fn bind(path: &Path, mode: u32) -> Result<(UnixListener, SocketFile), SocketError> {
    let fail = |what: &'static str| {
        move |source| SocketError::Io {
            path: path.to_path_buf(),
            what,
            source,
        }
    };
    check(path)?;
    let temporary = path.with_file_name(format!(".geolb-{}.sock", std::process::id()));
    let listener = if temporary.as_os_str().len() <= UNIX_SOCKET_PATH_MAX {
        let _ = std::fs::remove_file(&temporary);
        let listener = std::os::unix::net::UnixListener::bind(&temporary)
            .map_err(fail("cannot bind a socket in its directory"))?;
        let placed = std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(mode))
            .map_err(fail("cannot set its mode"))
            .and_then(|()| {
                std::fs::rename(&temporary, path).map_err(fail("cannot move the socket there"))
            });
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&temporary);
            return Err(e);
        }
        listener
    } else {
        // No room for a longer temporary name: bind in place, then set the mode.
        let _ = std::fs::remove_file(path);
        let listener = std::os::unix::net::UnixListener::bind(path).map_err(fail("cannot bind"))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(fail("cannot set its mode"))?;
        listener
    };
    listener
        .set_nonblocking(true)
        .map_err(fail("cannot use it"))?;
    let listener = UnixListener::from_std(listener).map_err(fail("cannot use it"))?;
    let meta = std::fs::symlink_metadata(path).map_err(fail("cannot look at it"))?;
    Ok((
        listener,
        SocketFile {
            path: path.to_path_buf(),
            identity: (meta.dev(), meta.ino()),
        },
    ))
}

impl SocketFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the socket file if it is still the one this process bound.
    pub fn remove_if_ours(&self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|meta| (meta.dev(), meta.ino()) == self.identity);
        if ours && let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the admin socket");
        }
    }
}
