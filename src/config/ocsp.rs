//! A certificate entry's OCSP stapling settings (`tls = [{ cert, key,
//! ocsp, ocsp_responder }]`), read by `listener` for https listeners and
//! `[admin] tls`.

use super::model::OcspConfig;
use super::values::parse_url;
use super::walk::{Ctx, Tbl};

impl Ctx {
    pub(super) fn ocsp(&mut self, t: &Tbl<'_, '_>) -> Option<OcspConfig> {
        let enabled = self.maybe(t, "ocsp", Ctx::bool);
        let responder = self.maybe(t, "ocsp_responder", |c, f| {
            c.parsed(f, |s| {
                let url = parse_url(s)?;
                if url.tls {
                    // A responder behind TLS would need a certificate
                    // check that itself wants OCSP; RFC 6960 A.1 is HTTP.
                    return Err("expected an http:// URL: OCSP answers are signed, and \
                                responders are reached over plain HTTP"
                        .to_owned());
                }
                Ok(s.to_owned())
            })
        });
        let enabled = enabled?;
        if enabled == Some(false) {
            self.misplaced(
                t,
                &["ocsp_responder"],
                "stapling is off for this certificate (ocsp = false): remove one of the two",
            );
        }
        Some(OcspConfig {
            enabled,
            responder: responder?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{errors, parse};
    use super::*;

    fn listener(entry: &str) -> String {
        format!(
            "[[pool]]\nname = \"p\"\nbackends = [{{ addr = \"127.0.0.1:8080\" }}]\n\
             [[listener]]\nname = \"l\"\nbind = \"127.0.0.1:443\"\nprotocol = \"https\"\n\
             pool = \"p\"\ntls = [\n  {{ cert = \"a.pem\", key = \"a.key\" }},\n  \
             {{ cert = \"c.pem\", key = \"c.key\"{entry} }},\n]\n"
        )
    }

    fn ocsp(entry: &str) -> OcspConfig {
        let config = parse(&listener(entry)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.listeners[0].tls[0].ocsp, OcspConfig::default());
        config.listeners[0].tls[1].ocsp.clone()
    }

    #[test]
    fn values() {
        assert_eq!(ocsp(""), OcspConfig::default());
        assert_eq!(ocsp(", ocsp = false").enabled, Some(false));
        let set = ocsp(", ocsp = true, ocsp_responder = \"http://ocsp.example.net/\"");
        assert_eq!(
            set,
            OcspConfig {
                enabled: Some(true),
                responder: Some("http://ocsp.example.net/".into())
            }
        );
    }

    #[test]
    fn bad_values_name_the_entry_and_line() {
        for (entry, problem) in [
            (", ocsp = \"yes\"", "expected true or false"),
            (
                ", ocsp_responder = \"https://ocsp.example.net/\"",
                "expected an http:// URL",
            ),
            (
                ", ocsp_responder = \"ocsp.example.net\"",
                "expected a URL like",
            ),
            (", ocsp_responder = 80", "expected a string"),
            (
                ", ocsp = false, ocsp_responder = \"http://o.example/\"",
                "stapling is off",
            ),
        ] {
            let found = errors(&listener(entry));
            assert_eq!(found.len(), 1, "{entry}: {found:?}");
            let e = &found[0];
            assert!(e.path.starts_with("listener[0].tls[1].ocsp"), "{e:?}");
            assert!(e.to_string().contains(problem), "{entry}: {e}");
            assert_eq!(e.line, Some(11), "{e:?}");
        }
    }
}
