//! What outlives the process: the ACME account and each certificate with
//! its key, under `state_dir/acme/<directory host:port>/`. Keys are
//! written 0600 (directories 0700), each file whole or not at all
//! (written beside, then renamed).

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::config::AcmeConfig;

/// Where one `acme` table's files are.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Store {
    /// `state_dir/acme/<directory host:port>`: shared by every certificate
    /// of that CA, as the account is.
    pub dir: PathBuf,
    /// `<dir>/<first name>/cert.pem`: the chain, leaf first.
    pub cert: PathBuf,
    /// `<dir>/<first name>/key.pem`: its PKCS#8 private key.
    pub key: PathBuf,
}

impl Store {
    pub fn new(state_dir: &Path, acme: &AcmeConfig) -> Store {
        let dir = state_dir.join("acme").join(safe(&acme.directory_host));
        let certs = dir.join(safe(&acme.names[0]));
        Store {
            cert: certs.join("cert.pem"),
            key: certs.join("key.pem"),
            dir,
        }
    }

    pub fn account(&self) -> PathBuf {
        self.dir.join("account.json")
    }

    /// The stored chain and key, if both are there.
    pub fn read_cert(&self) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
        match (fs::read(&self.cert), fs::read(&self.key)) {
            (Ok(cert), Ok(key)) => Ok(Some((cert, key))),
            (Err(e), _) | (_, Err(e)) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            (Err(e), _) | (_, Err(e)) => Err(e),
        }
    }

    /// The key first: a chain beside an old key would not load, a key
    /// beside an old chain is replaced by the next order.
    pub fn write_cert(&self, cert: &[u8], key: &[u8]) -> io::Result<()> {
        write_private(&self.key, key)?;
        write_private(&self.cert, cert)
    }
}

/// A file name from a host name or `host:port` (both already validated,
/// so this only keeps path separators out).
fn safe(name: &str) -> String {
    name.replace(['/', '\\'], "_")
}

/// Writes `bytes` to `path` with mode 0600, creating its directory (0700).
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let tmp = path.with_extension("tmp");
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::config::{AcmeChallenge, DEFAULT_RENEW_BEFORE};

    #[test]
    fn files_are_private_and_named_by_ca_and_first_name() {
        let dir = tempfile::tempdir().unwrap();
        let acme = AcmeConfig {
            directory: "https://127.0.0.1:14000/dir".into(),
            directory_host: "127.0.0.1:14000".into(),
            contact: Vec::new(),
            names: vec!["a.example".into(), "b.example".into()],
            challenge: AcmeChallenge::Http01,
            ca: None,
            renew_before: DEFAULT_RENEW_BEFORE,
        };
        let store = Store::new(dir.path(), &acme);
        assert_eq!(
            store.cert,
            dir.path().join("acme/127.0.0.1:14000/a.example/cert.pem")
        );
        assert_eq!(store.read_cert().unwrap(), None);
        store.write_cert(b"chain", b"key").unwrap();
        assert_eq!(
            store.read_cert().unwrap(),
            Some((b"chain".to_vec(), b"key".to_vec()))
        );
        for file in [&store.cert, &store.key] {
            let mode = fs::metadata(file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", file.display());
        }
        let mode = fs::metadata(&store.dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
