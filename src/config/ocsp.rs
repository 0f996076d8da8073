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
