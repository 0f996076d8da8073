//! Configuration errors: each names the key path, the value, what is
//! accepted and, where known, the line of the file.

use std::fmt;

/// One problem found in a configuration.
///
/// `message` either starts with `= <value>: ` (a bad value, rendered TOML-ish)
/// or is a sentence about the key as a whole (missing, unknown, unreadable
/// file). `path` is `""` for problems with the file as a whole.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
    /// 1-based.
    pub line: Option<usize>,
}

impl ConfigError {
    /// A problem with the key at `path` as a whole; the line is looked up
    /// by whoever knows the file (or stays unknown).
    pub fn at(path: impl Into<String>, message: impl fmt::Display) -> Self {
        ConfigError {
            path: path.into(),
            message: message.to_string(),
            line: None,
        }
    }

    /// A bad value at `path`: `<path> = <shown value>: <problem>`.
    pub fn value(
        path: impl Into<String>,
        shown: impl fmt::Display,
        problem: impl fmt::Display,
    ) -> Self {
        Self::at(path, format!("= {shown}: {problem}"))
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        match (self.path.is_empty(), self.message.starts_with("= ")) {
            (true, _) => f.write_str(&self.message),
            (false, true) => write!(f, "{} {}", self.path, self.message),
            (false, false) => write!(f, "{}: {}", self.path, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in a configuration, in file order.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> Self {
        ConfigErrors(vec![error])
    }
}
