//! What a listener's clients are held to across requests: a pool's
//! `sticky` cookie and an https listener's `client_auth` certificates.

use super::model::*;
use super::values::is_tchar;
use super::walk::{Ctx, Field};

impl Ctx {
    pub(super) fn sticky(&mut self, f: &Field<'_, '_>) -> Option<StickyConfig> {
        let expected = "expected a table like { cookie = \"GEOLB_SRV\", max_age = \"1h\" }";
        self.table(f, expected, |c, t| {
            let cookie = c.req(t, "cookie", "\"GEOLB_SRV\"", |c, f| {
                c.parsed(f, cookie_name)
            });
            let max_age = c.maybe(t, "max_age", |c, f| c.duration(f, false));
            let secure = c.maybe(t, "secure", Ctx::bool);
            let http_only = c.opt(t, "http_only", true, Ctx::bool);
            let same_site = c.maybe(t, "same_site", |c, f| c.choice(f, SameSite::SPELLINGS));
            let secret = c.maybe(t, "secret", |c, f| {
                let s = c.string(f)?;
                if s.len() < 16 {
                    // Not echoing the value: it is a secret.
                    c.err(
                        f.path.clone(),
                        f.offset(),
                        "too short: use at least 16 characters (e.g. `openssl rand -hex 16`)"
                            .to_owned(),
                    );
                    return None;
                }
                Some(s.to_owned())
            });
            let (secure, same_site) = (secure?, same_site?);
            // Browsers drop a SameSite=None cookie without Secure.
            if let (Some(SameSite::None), Some(false), Some(f)) =
                (same_site, secure, t.field("same_site"))
            {
                c.bad(
                    &f,
                    "browsers reject SameSite=None without Secure: remove secure = false",
                );
                return None;
            }
            Some(StickyConfig {
                cookie: cookie?,
                max_age: max_age?,
                secure,
                http_only: http_only?,
                same_site,
                secret: secret?,
            })
        })
    }

    /// An https listener's `client_auth`; `protocol` is the listener's,
    /// None when that key is itself wrong.
    pub(super) fn client_auth(
        &mut self,
        f: &Field<'_, '_>,
        protocol: Option<Protocol>,
    ) -> Option<ClientAuthConfig> {
        let expected = "expected a table like { ca = \"clients-ca.pem\", required = true }";
        let auth = self.table(f, expected, |c, t| {
            let ca = c.req(t, "ca", "\"clients-ca.pem\"", Ctx::path);
            let required = c.opt(t, "required", true, Ctx::bool);
            Some(ClientAuthConfig {
                ca: ca?,
                required: required?,
            })
        });
        if protocol.is_some_and(|p| p != Protocol::Https) {
            self.bad(
                f,
                "client certificates come with TLS: only https listeners take client_auth",
            );
            return None;
        }
        auth
    }
}

/// RFC 6265 §4.1.1: a cookie name is an RFC 2616 token.
fn cookie_name(s: &str) -> Result<String, String> {
    if s.is_empty() || !s.bytes().all(is_tchar) {
        return Err(
            "expected a cookie name of letters, digits and !#$%&'*+-.^_`|~, like \"GEOLB_SRV\""
                .to_owned(),
        );
    }
    Ok(s.to_owned())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::super::tests::{errors, parse};
    use super::*;

    const POOL: &str = "[[pool]]\nname = \"p\"\nbackends = [{ addr = \"127.0.0.1:8080\" }]\n";
    const LISTENER: &str = "[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:80\"\npool = \"p\"\n";
    const HTTPS: &str = "protocol = \"https\"\ntls = [{ cert = \"c.pem\", key = \"k.pem\" }]\n";

    fn sticky(table: &str) -> Option<StickyConfig> {
        let config = parse(&format!("{POOL}sticky = {table}")).unwrap_or_else(|e| panic!("{e}"));
        config.pools[0].sticky.clone()
    }

    #[test]
    fn sticky_values_and_defaults() {
        let c = sticky("{ cookie = \"SRV\" }").unwrap();
        assert_eq!(
            c,
            StickyConfig {
                cookie: "SRV".into(),
                max_age: None,
                secure: None,
                http_only: true,
                same_site: None,
                secret: None,
            }
        );
        let c = sticky(
            "{ cookie = \"S\", max_age = \"1h\", secure = false, http_only = false, \
             same_site = \"Lax\", secret = \"0123456789abcdef\" }",
        )
        .unwrap();
        assert_eq!(c.max_age, Some(Duration::from_secs(3600)));
        assert_eq!(c.secure, Some(false));
        assert!(!c.http_only);
        assert_eq!(c.same_site, Some(SameSite::Lax));
        assert_eq!(c.secret.as_deref(), Some("0123456789abcdef"));
        let config = parse(POOL).unwrap();
        assert_eq!(config.pools[0].sticky, None);
    }

    #[test]
    fn client_auth_values_and_defaults() {
        let text = format!("{POOL}{LISTENER}{HTTPS}client_auth = {{ ca = \"clients.pem\" }}");
        let config = parse(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            config.listeners[0].client_auth,
            Some(ClientAuthConfig {
                ca: PathBuf::from("/etc/geolb/clients.pem"),
                required: true,
            })
        );
        let text =
            format!("{POOL}{LISTENER}{HTTPS}client_auth = {{ ca = \"c.pem\", required = false }}");
        let config = parse(&text).unwrap();
        assert_eq!(
            config.listeners[0].client_auth.as_ref().map(|a| a.required),
            Some(false)
        );
    }

    #[test]
    fn the_reference_means_what_it_says() {
        let text = include_str!("../../config/reference.toml");
        let config = parse(text).unwrap_or_else(|e| panic!("{e}"));
        let sticky = config.pools[0].sticky.as_ref().unwrap();
        assert_eq!(sticky.cookie, "GEOLB_SRV");
        assert_eq!(sticky.max_age, Some(Duration::from_secs(3600)));
        assert_eq!(sticky.same_site, Some(SameSite::Lax));
        assert!(config.pools[1..].iter().all(|p| p.sticky.is_none()));
        let auth = config.listeners[1].client_auth.as_ref().unwrap();
        assert_eq!(auth.ca, PathBuf::from("/etc/geolb/certs/clients-ca.pem"));
        assert!(auth.required);
        assert_eq!(config.listeners[0].client_auth, None);
    }

    #[test]
    fn each_mistake_names_its_key() {
        let cases: &[(String, &str, &str)] = &[
            (format!("{POOL}sticky = true"), "pool[0].sticky", "a table"),
            (
                format!("{POOL}sticky = {{ max_age = \"1h\" }}"),
                "pool[0].sticky.cookie",
                "required",
            ),
            (
                format!("{POOL}sticky = {{ cookie = \"a b\" }}"),
                "pool[0].sticky.cookie",
                "cookie name",
            ),
            (
                format!("{POOL}sticky = {{ cookie = \"\" }}"),
                "pool[0].sticky.cookie",
                "cookie name",
            ),
            (
                format!("{POOL}sticky = {{ cookie = \"S\", max_age = \"0s\" }}"),
                "pool[0].sticky.max_age",
                "longer than 0",
            ),
            (
                format!("{POOL}sticky = {{ cookie = \"S\", same_site = \"lax\" }}"),
                "pool[0].sticky.same_site",
                "did you mean \"Lax\"",
            ),
            (
                format!(
                    "{POOL}sticky = {{ cookie = \"S\", same_site = \"None\", secure = false }}"
                ),
                "pool[0].sticky.same_site",
                "without Secure",
            ),
            (
                format!("{POOL}sticky = {{ cookie = \"S\", secret = \"short\" }}"),
                "pool[0].sticky.secret",
                "at least 16",
            ),
            (
                format!("{POOL}sticky = {{ cookie = \"S\", domain = \"x\" }}"),
                "pool[0].sticky.domain",
                "unknown key",
            ),
            (
                format!("{POOL}{LISTENER}client_auth = {{ ca = \"c.pem\" }}"),
                "listener[0].client_auth",
                "only https listeners",
            ),
            (
                format!("{POOL}{LISTENER}{HTTPS}client_auth = {{ required = true }}"),
                "listener[0].client_auth.ca",
                "required",
            ),
            (
                format!("{POOL}{LISTENER}{HTTPS}client_auth = {{ ca = \"c.pem\", required = 1 }}"),
                "listener[0].client_auth.required",
                "true or false",
            ),
            (
                format!("{POOL}{LISTENER}{HTTPS}client_auth = \"c.pem\""),
                "listener[0].client_auth",
                "a table",
            ),
        ];
        for (text, path, words) in cases {
            let found = errors(text);
            assert_eq!(found.len(), 1, "{text}: {found:?}");
            assert_eq!(found[0].path, *path, "{text}");
            assert!(
                found[0].message.contains(words),
                "{path}: {}",
                found[0].message
            );
        }
    }
}
