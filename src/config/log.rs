//! `[log]`: the format of every line and where lines go; and the sampling
//! fraction `[dns] query_log` reads.

use toml::de::DeValue;

use super::model::*;
use super::walk::{Ctx, Field};

impl Ctx {
    pub(super) fn log(&mut self, f: &Field<'_, '_>) -> Option<LogConfig> {
        self.table(f, "expected a [log] table", |c, t| {
            let format = c.opt(t, "format", LogFormat::Text, |c, f| {
                c.choice(f, &[("text", LogFormat::Text), ("json", LogFormat::Json)])
            });
            let file = c.maybe(t, "file", Ctx::path);
            let access_file = c.maybe(t, "access_file", Ctx::path);
            if let (Some(Some(file)), Some(Some(access))) = (&file, &access_file)
                && file == access
                && let Some(f) = t.field("access_file")
            {
                c.bad(
                    &f,
                    "is the same file as log.file: leave access_file out to write access \
                     lines there",
                );
            }
            Some(LogConfig {
                format: format?,
                file: file?,
                access_file: access_file?,
            })
        })
    }

    /// A number from 0 to 1 (a fraction of queries, say).
    pub(super) fn fraction(&mut self, f: &Field<'_, '_>) -> Option<f64> {
        let value = match f.get() {
            DeValue::Float(x) => x.as_str().parse::<f64>().ok(),
            DeValue::Integer(n) => i64::from_str_radix(n.as_str(), n.radix())
                .ok()
                .map(|n| n as f64),
            _ => None,
        };
        match value {
            Some(v) if (0.0..=1.0).contains(&v) => Some(v),
            _ => {
                self.bad(
                    f,
                    "expected a number from 0 to 1 (0: none, 0.01: one in a hundred, 1: all)",
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::super::tests::{errors, parse};
    use super::*;

    #[test]
    fn the_log_section_and_its_defaults() {
        let none = parse("").unwrap();
        assert_eq!(none.log, LogConfig::default());
        assert_eq!(none.log.format, LogFormat::Text);
        let reference = include_str!("../../config/reference.toml");
        let config = super::super::parse_str(reference, Path::new("/etc/geolb/geolb.toml"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            config.log,
            LogConfig {
                format: LogFormat::Json,
                file: Some(PathBuf::from("/var/log/geolb/geolb.log")),
                access_file: Some(PathBuf::from("/var/log/geolb/access.log")),
            }
        );
        assert_eq!(config.dns.unwrap().query_log, 0.01);
        let relative = parse("[log]\nfile = \"logs/geolb.log\"").unwrap();
        assert_eq!(
            relative.log.file,
            Some(PathBuf::from("/etc/geolb/logs/geolb.log"))
        );
        let dns = |v: &str| format!("[dns]\nlisten = [\"127.0.0.1:5353\"]\nquery_log = {v}");
        assert_eq!(parse(&dns("1")).unwrap().dns.unwrap().query_log, 1.0);
        assert_eq!(parse(&dns("0.0")).unwrap().dns.unwrap().query_log, 0.0);
    }

    #[test]
    fn bad_log_keys_are_named_with_their_line() {
        for (text, path, line, says) in [
            (
                "[log]\nformat = \"xml\"",
                "log.format",
                2,
                "\"text\" | \"json\"",
            ),
            (
                "[log]\nformat = \"jsn\"",
                "log.format",
                2,
                "did you mean \"json\"",
            ),
            ("[log]\nfile = \"\"", "log.file", 2, "expected a file path"),
            ("[log]\nfile = 3", "log.file", 2, "expected a string"),
            (
                "[log]\nfile = \"a.log\"\naccess_file = \"a.log\"",
                "log.access_file",
                3,
                "same file",
            ),
            ("[log]\nlevel = \"debug\"", "log.level", 2, "unknown key"),
            ("log = 1", "log", 1, "expected a [log] table"),
            (
                "[dns]\nlisten = [\"127.0.0.1:5353\"]\nquery_log = 1.5",
                "dns.query_log",
                3,
                "from 0 to 1",
            ),
            (
                "[dns]\nlisten = [\"127.0.0.1:5353\"]\nquery_log = -0.1",
                "dns.query_log",
                3,
                "from 0 to 1",
            ),
            (
                "[dns]\nlisten = [\"127.0.0.1:5353\"]\nquery_log = \"all\"",
                "dns.query_log",
                3,
                "from 0 to 1",
            ),
        ] {
            let errors = errors(text);
            assert_eq!(errors.len(), 1, "{text}: {errors:?}");
            let e = &errors[0];
            assert_eq!((e.path.as_str(), e.line), (path, Some(line)), "{text}");
            assert!(e.to_string().contains(says), "{text}: {e}");
        }
    }
}
