//! `[[datacenter]]`: where each data center is, what it gives out in DNS
//! answers, and how it is checked.

use std::collections::HashMap;
use std::net::IpAddr;

use super::error::ConfigError;
use super::model::*;
use super::values::{LOCATION_EXAMPLE, public_ip};
use super::walk::{Ctx, Field, Tbl, first_seen};

const NOTHING_CHECKS: &str = "a data center with no pools and no check is up whatever happens \
     to it; add pools = [\"web\"] (its local pools), a check (a remote one), or always_up = true \
     if that is meant";

/// What is valid but likely a mistake: data centers nothing checks (and
/// that do not say `always_up = true`). `geolb check` prints these and the
/// daemon logs them; they never refuse a config, since a GeoDNS-only
/// setup (data centers with addresses alone) is valid and was always up.
pub fn warnings(config: &Config) -> Vec<ConfigError> {
    let unchecked = config
        .datacenters
        .iter()
        .enumerate()
        .filter(|(_, dc)| !dc.always_up && dc.pools.is_empty() && dc.check.is_none())
        .map(|(i, _)| ConfigError::at(format!("datacenter[{i}]"), NOTHING_CHECKS))
        .collect();
    super::with_lines(config, unchecked)
}

impl Ctx {
    pub(super) fn datacenters(
        &mut self,
        f: &Field<'_, '_>,
        names: &mut Vec<String>,
        pool_names: &[String],
    ) -> Vec<DatacenterConfig> {
        self.named_tables(f, "datacenter", names, |c, t, name| {
            c.datacenter(t, name, pool_names)
        })
    }

    fn datacenter(
        &mut self,
        t: &Tbl<'_, '_>,
        name: Option<String>,
        pool_names: &[String],
    ) -> Option<DatacenterConfig> {
        let location = self.req(t, "location", LOCATION_EXAMPLE, Ctx::location);
        let addresses = self.req(t, "addresses", "[\"198.51.100.10\"]", Ctx::dc_addresses);
        let pools = self.opt(t, "pools", Vec::new(), |c, f| {
            c.references(f, "pool", pool_names)
        });
        let check = self.maybe(t, "check", Ctx::remote_check);
        let drain = self.opt(t, "drain", false, Ctx::bool);
        let always_up = self.always_up(t, pools.as_deref(), check.as_ref());
        Some(DatacenterConfig {
            name: name?,
            location: location?,
            addresses: addresses?,
            pools: pools?,
            check: check?,
            drain: drain?,
            always_up: always_up?,
        })
    }

    /// `always_up` (optional, false): says that a data center nothing
    /// checks is meant to be up whatever happens. `pools` and `check` are
    /// `None` when bad (already reported).
    fn always_up(
        &mut self,
        t: &Tbl<'_, '_>,
        pools: Option<&[String]>,
        check: Option<&Option<RemoteCheck>>,
    ) -> Option<bool> {
        let field = t.field("always_up");
        let always_up = match &field {
            Some(f) => self.bool(f)?,
            None => false,
        };
        let checked = match (pools, check) {
            (Some(pools), Some(check)) => !pools.is_empty() || check.is_some(),
            _ => return Some(always_up),
        };
        let problem = match (always_up, checked) {
            (false, false) if field.is_some() => NOTHING_CHECKS,
            (true, true) => {
                "the pools or check set here would be ignored; remove them, or this key"
            }
            _ => return Some(always_up),
        };
        match &field {
            Some(f) => self.bad(f, problem),
            None => self.err(t.path.clone(), t.offset, problem.to_owned()),
        }
        None
    }

    fn dc_addresses(&mut self, f: &Field<'_, '_>) -> Option<Vec<IpAddr>> {
        let items = self.array(
            f,
            "expected a list of IP addresses like [\"198.51.100.10\", \"2001:db8::10\"]",
        )?;
        if items.is_empty() {
            self.bad(
                f,
                "a data center needs at least one address to give out in DNS answers",
            );
            return None;
        }
        let mut seen = HashMap::new();
        self.each(&items, |c, item| {
            let ip = c.parsed(item, public_ip)?;
            if let Some(first) = first_seen(&mut seen, ip, &item.path) {
                c.bad(item, format!("listed twice (also {first})"));
            }
            Some(ip)
        })
    }
}
