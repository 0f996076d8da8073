//! `[geoip]`: the database and the networks placed by hand.

use std::collections::HashMap;

use super::model::*;
use super::values::{LOCATION_EXAMPLE, parse_cidr};
use super::walk::{Ctx, Field, first_seen};

impl Ctx {
    pub(super) fn geoip(&mut self, f: &Field<'_, '_>) -> Option<GeoIpConfig> {
        self.table(f, "expected a [geoip] table", |c, t| {
            let database = c.maybe(t, "database", Ctx::path);
            let networks = c.opt(t, "network", Vec::new(), Ctx::networks);
            Some(GeoIpConfig {
                database: database?,
                networks: networks?,
            })
        })
    }

    fn networks(&mut self, f: &Field<'_, '_>) -> Option<Vec<GeoNetwork>> {
        let items = self.array(
            f,
            "expected [[geoip.network]] tables (note the double brackets)",
        )?;
        let mut seen = HashMap::new();
        self.each(&items, |c, item| {
            c.table(item, "expected a [[geoip.network]] table", |c, t| {
                let cidr = c.req(t, "cidr", "\"10.0.0.0/8\"", |c, f| {
                    let cidr = c.parsed(f, parse_cidr)?;
                    if let Some(first) = first_seen(&mut seen, cidr, &f.path) {
                        c.bad(f, format!("duplicate network: {first} is the same"));
                    }
                    Some(cidr)
                });
                let location = c.req(t, "location", LOCATION_EXAMPLE, Ctx::location);
                let country = c.maybe(t, "country", |c, f| c.parsed(f, country));
                let continent = c.maybe(t, "continent", |c, f| c.parsed(f, continent));
                Some(GeoNetwork {
                    cidr: cidr?,
                    location: location?,
                    country: country?,
                    continent: continent?,
                })
            })
        })
    }
}

pub(super) fn country(s: &str) -> Result<String, String> {
    if s.len() == 2 && s.bytes().all(|b| b.is_ascii_alphabetic()) {
        Ok(s.to_ascii_uppercase())
    } else {
        Err("expected a two-letter country code (ISO 3166-1), like \"DE\"".to_owned())
    }
}

pub(super) fn continent(s: &str) -> Result<String, String> {
    const CODES: [&str; 7] = ["AF", "AN", "AS", "EU", "NA", "OC", "SA"];
    let upper = s.to_ascii_uppercase();
    if CODES.contains(&upper.as_str()) {
        Ok(upper)
    } else {
        Err(format!(
            "expected a continent code: one of {}",
            CODES.join(", ")
        ))
    }
}

/// An ISO 3166-2 code as the City database gives it: the country, a dash,
/// and 1 to 3 letters or digits ("US-WA", "GB-ENG").
pub(super) fn subdivision(s: &str) -> Result<(String, String), String> {
    const FORM: &str = "expected an ISO 3166-2 subdivision code: the country, a dash and 1 to 3 \
         letters or digits, like \"US-WA\" or \"GB-ENG\"";
    let (cc, sub) = s.split_once('-').ok_or(FORM)?;
    let cc = country(cc).map_err(|_| FORM.to_owned())?;
    if sub.is_empty() || sub.len() > 3 || !sub.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(FORM.to_owned());
    }
    Ok((cc, sub.to_ascii_uppercase()))
}
