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
