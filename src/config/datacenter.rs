//! `[[datacenter]]`: where each data center is, what it gives out in DNS
//! answers, and how it is checked.

use std::collections::HashMap;
use std::net::IpAddr;

use super::error::ConfigError;
use super::model::*;
use super::values::{LOCATION_EXAMPLE, public_ip};
use super::walk::{Ctx, Field, Tbl, first_seen};
use toml::de::DeValue;

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
        let capacity = self.opt(t, "capacity", 1, |c, f| c.uint(f, 1, MAX_WEIGHT.into()));
        let pools = self.opt(t, "pools", Vec::new(), |c, f| {
            c.references(f, "pool", pool_names)
        });
        let check = self.maybe(t, "check", Ctx::remote_check);
        let drain = self.opt(t, "drain", false, Ctx::bool);
        let always_up = self.always_up(t, pools.as_deref(), check.as_ref());
        let (addresses, weights) = addresses?;
        Some(DatacenterConfig {
            name: name?,
            location: location?,
            addresses,
            weights,
            capacity: capacity?,
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

    /// The addresses and their weights (empty when no address has one).
    fn dc_addresses(&mut self, f: &Field<'_, '_>) -> Option<(Vec<IpAddr>, Vec<u32>)> {
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
        let listed = self.each(&items, |c, item| {
            let (ip, weight) = c.weighted(item, "addr", "\"198.51.100.10\"", |c, f| {
                c.parsed(f, public_ip)
            })?;
            if let Some(first) = first_seen(&mut seen, ip, &item.path) {
                c.bad(item, format!("listed twice (also {first})"));
            }
            Some((ip, weight))
        })?;
        Some(split_weights(listed))
    }

    /// A list item that is either a plain value or a table of it (under
    /// `key`) and a `weight`: `"x"` or `{ key = "x", weight = 3 }`.
    pub(super) fn weighted<T>(
        &mut self,
        f: &Field<'_, '_>,
        key: &'static str,
        example: &str,
        mut parse: impl FnMut(&mut Self, &Field<'_, '_>) -> Option<T>,
    ) -> Option<(T, Option<u32>)> {
        if !matches!(f.get(), DeValue::Table(_)) {
            return parse(self, f).map(|v| (v, None));
        }
        self.table(f, "", |c, t| {
            let value = c.req(t, key, example, &mut parse);
            let weight = c.req(t, "weight", "3", |c, f| c.uint(f, 0, MAX_WEIGHT.into()));
            Some((value?, Some(weight?)))
        })
    }
}

/// The largest `weight` or `capacity`: sums of them stay far from overflow.
const MAX_WEIGHT: u32 = 1_000_000;

/// Values and their weights (1 where one is left out), or no weights when
/// none was given.
pub(super) fn split_weights<T>(listed: Vec<(T, Option<u32>)>) -> (Vec<T>, Vec<u32>) {
    let any = listed.iter().any(|(_, w)| w.is_some());
    let weights = if any {
        listed.iter().map(|(_, w)| w.unwrap_or(1)).collect()
    } else {
        Vec::new()
    };
    (listed.into_iter().map(|(v, _)| v).collect(), weights)
}
