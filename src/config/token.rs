//! `[admin] token_file`: the bearer token, read the same way by the daemon
//! (at start-up and on every reload) and by `geolb reload` and the other
//! commands that talk to it.

use std::path::Path;
use std::sync::Arc;

/// Why a token file gives no token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read: {0}")]
    Read(#[from] std::io::Error),
    #[error("the file is empty: write the token on its first line (e.g. `openssl rand -hex 32`)")]
    Empty,
    #[error("the token must be printable ASCII without spaces (e.g. `openssl rand -hex 32`)")]
    NotPrintable,
}

/// The file's first line with surrounding whitespace removed: what a
/// client sends after `Authorization: Bearer `.
pub fn read_token(path: &Path) -> Result<Arc<str>, TokenError> {
    let text = std::fs::read_to_string(path)?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.is_empty() {
        Err(TokenError::Empty)
    } else if !token.bytes().all(|b| b.is_ascii_graphic()) {
        Err(TokenError::NotPrintable)
    } else {
        Ok(Arc::from(token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_the_first_line_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        let read = |text: &str| {
            std::fs::write(&file, text).unwrap();
            read_token(&file)
        };
        assert_eq!(&*read("  s3cret \nsecond line\n").unwrap(), "s3cret");
        assert_eq!(&*read("s3cret").unwrap(), "s3cret");
        assert!(matches!(read(""), Err(TokenError::Empty)));
        assert!(matches!(read(" \t\n"), Err(TokenError::Empty)));
        assert!(matches!(read("\ns3cret\n"), Err(TokenError::Empty)));
        assert!(matches!(read("two words"), Err(TokenError::NotPrintable)));
        assert!(matches!(
            read_token(&dir.path().join("missing")),
            Err(TokenError::Read(_))
        ));
    }
}
