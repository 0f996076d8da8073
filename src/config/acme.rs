//! `tls = { acme = { ... } }` of an https listener: certificates ordered
//! from an ACME CA (RFC 8555) instead of read from files.

use std::collections::HashMap;

use super::model::*;
use super::values::{host_name, parse_url};
use super::walk::{Ctx, Field, first_seen};

const EXAMPLE: &str =
    "{ directory = \"https://acme-v02.api.letsencrypt.org/directory\", names = [\"example.com\"] }";

impl Ctx {
    /// A listener's `tls`: the list of certificate files, or the table
    /// whose `acme` orders them.
    pub(super) fn listener_tls(
        &mut self,
        f: &Field<'_, '_>,
    ) -> Option<(Vec<TlsCertConfig>, Option<AcmeConfig>)> {
        if f.get().as_array().is_some() {
            return Some((self.tls(f)?, None));
        }
        let expected = format!(
            "expected a list like [{{ cert = \"cert.pem\", key = \"key.pem\" }}] or {{ acme = {EXAMPLE} }}"
        );
        let acme = self.table(f, &expected, |c, t| c.req(t, "acme", EXAMPLE, Ctx::acme))?;
        Some((Vec::new(), Some(acme)))
    }

    fn acme(&mut self, f: &Field<'_, '_>) -> Option<AcmeConfig> {
        self.table(f, &format!("expected a table like {EXAMPLE}"), |c, t| {
            let directory = c.req(
                t,
                "directory",
                "\"https://acme-v02.api.letsencrypt.org/directory\"",
                |c, f| {
                    c.parsed(f, |s| {
                        let url = parse_url(s)?;
                        if !url.tls {
                            return Err("an ACME directory is served over HTTPS (RFC 8555 §6.1): \
                                    use an https:// URL"
                                .to_owned());
                        }
                        Ok((s.to_owned(), url.target))
                    })
                },
            );
            let contact = c.opt(t, "contact", Vec::new(), Ctx::acme_contact);
            let names = c.req(t, "names", "[\"example.com\"]", Ctx::acme_names);
            let challenge = c.opt(t, "challenge", AcmeChallenge::TlsAlpn01, |c, f| {
                c.choice(f, AcmeChallenge::SPELLINGS)
            });
            let ca = c.maybe(t, "ca", Ctx::path);
            let renew_before = c.opt(t, "renew_before", DEFAULT_RENEW_BEFORE, |c, f| {
                c.duration(f, false)
            });
            let (directory, directory_host) = directory?;
            Some(AcmeConfig {
                directory,
                directory_host,
                contact: contact?,
                names: names?,
                challenge: challenge?,
                ca: ca?,
                renew_before: renew_before?,
            })
        })
    }

    fn acme_contact(&mut self, f: &Field<'_, '_>) -> Option<Vec<String>> {
        let items = self.array(f, "expected a list like [\"mailto:ops@example.com\"]")?;
        self.each(&items, |c, item| {
            c.parsed(item, |s| match s.strip_prefix("mailto:") {
                Some(address)
                    if address.contains('@') && !address.contains(char::is_whitespace) =>
                {
                    Ok(s.to_owned())
                }
                _ => Err("expected a mailto: URL like \"mailto:ops@example.com\"".to_owned()),
            })
        })
    }

    fn acme_names(&mut self, f: &Field<'_, '_>) -> Option<Vec<String>> {
        let items = self.array(f, "expected a list of DNS names like [\"example.com\"]")?;
        if items.is_empty() {
            self.bad(f, "an ACME certificate needs at least one name");
            return None;
        }
        let mut seen = HashMap::new();
        self.each(&items, |c, item| {
            let name = c.parsed(item, |s| {
                if s.starts_with("*.") {
                    return Err(
                        "wildcard names need the dns-01 challenge, which geolb does not \
                                answer: list each name"
                            .to_owned(),
                    );
                }
                let name = host_name(s)?;
                if name.starts_with('[') || name.parse::<std::net::IpAddr>().is_ok() {
                    return Err(
                        "expected a DNS name: certificates for IP addresses are not \
                                ordered"
                            .to_owned(),
                    );
                }
                Ok(name)
            })?;
            if let Some(first) = first_seen(&mut seen, name.clone(), &item.path) {
                c.bad(item, format!("listed twice (also {first})"));
                return None;
            }
            Some(name)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{errors, parse};
    use super::*;

    /// A config whose second listener has `tls = <tls>` and `protocol`.
    fn with_tls(protocol: &str, tls: &str) -> String {
        format!(
            r#"[[pool]]
name = "p"
backends = [{{ addr = "127.0.0.1:1" }}]
[[listener]]
name = "l"
bind = "127.0.0.1:0"
pool = "p"
protocol = "{protocol}"
tls = {tls}
"#
        )
    }

    fn acme(table: &str) -> String {
        with_tls("https", &format!("{{ acme = {{ {table} }} }}"))
    }

    /// (key path, line, message) of each error.
    fn found(text: &str) -> Vec<(String, Option<usize>, String)> {
        errors(text)
            .into_iter()
            .map(|e| (e.path, e.line, e.message))
            .collect()
    }

    const DIRECTORY: &str = "directory = \"https://ca.example:14000/dir\"";

    #[test]
    fn an_acme_table_is_read_with_its_defaults() {
        let config = parse(&acme(&format!(
            "{DIRECTORY}, names = [\"WWW.Example.com.\"]"
        )))
        .unwrap_or_else(|e| panic!("{e}"));
        let l = &config.listeners[0];
        assert!(l.tls.is_empty());
        assert_eq!(
            l.acme,
            Some(AcmeConfig {
                directory: "https://ca.example:14000/dir".into(),
                directory_host: "ca.example:14000".into(),
                contact: Vec::new(),
                names: vec!["www.example.com".into()],
                challenge: AcmeChallenge::TlsAlpn01,
                ca: None,
                renew_before: DEFAULT_RENEW_BEFORE,
            })
        );
    }

    #[test]
    fn bad_acme_values_are_each_reported_with_key_path_and_line() {
        let text = acme(
            "directory = \"http://ca.example/dir\", names = [\"*.example.com\", \"a.example\", \
             \"A.example\", \"192.0.2.1\"], contact = [\"ops@example.com\"], challenge = \"dns-01\", \
             renew_before = \"0s\", color = 1",
        );
        let got = found(&text);
        let paths: Vec<&str> = got.iter().map(|(p, _, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "listener[0].tls.acme.directory",
                "listener[0].tls.acme.names[0]",
                "listener[0].tls.acme.names[2]",
                "listener[0].tls.acme.names[3]",
                "listener[0].tls.acme.contact[0]",
                "listener[0].tls.acme.challenge",
                "listener[0].tls.acme.renew_before",
                "listener[0].tls.acme.color",
            ],
            "{got:#?}"
        );
        assert!(got.iter().all(|(_, line, _)| *line == Some(9)), "{got:#?}");
        let says = |i: usize, what: &str| {
            assert!(got[i].2.contains(what), "{}: {}", got[i].0, got[i].2);
        };
        says(0, "https://");
        says(1, "dns-01");
        says(2, "listed twice (also listener[0].tls.acme.names[1])");
        says(3, "IP addresses");
        says(4, "mailto:");
        says(5, "\"http-01\" | \"tls-alpn-01\"");
        says(7, "unknown key");
    }

    #[test]
    fn an_acme_table_needs_directory_and_names_and_an_https_listener() {
        let got = found(&acme("names = []"));
        assert_eq!(got.len(), 2, "{got:#?}");
        assert_eq!(got[0].0, "listener[0].tls.acme.directory");
        assert!(got[0].2.contains("required"), "{}", got[0].2);
        assert_eq!(got[1].0, "listener[0].tls.acme.names");
        assert!(got[1].2.contains("at least one name"), "{}", got[1].2);

        let got = found(&with_tls("https", "{ cert = \"c.pem\" }"));
        assert_eq!(got[0].0, "listener[0].tls.acme", "{got:#?}");
        assert_eq!(got[1].0, "listener[0].tls.cert", "{got:#?}");

        let got = found(&with_tls("https", "\"cert.pem\""));
        assert!(got[0].2.contains("{ acme = {"), "{got:#?}");

        for protocol in ["tcp", "http"] {
            let got = found(&with_tls(
                protocol,
                &format!("{{ acme = {{ {DIRECTORY}, names = [\"a.example\"] }} }}"),
            ));
            assert_eq!(got.len(), 1, "{got:#?}");
            assert_eq!(got[0].0, "listener[0].tls");
            assert!(got[0].2.contains("only https listeners"), "{}", got[0].2);
        }
    }
}
