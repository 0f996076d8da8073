//! `[[datacenter]]`: where each data center is, what it gives out in DNS
//! answers, and how it is checked.

use std::collections::HashMap;
use std::net::IpAddr;

use super::model::*;
use super::values::{LOCATION_EXAMPLE, public_ip};
use super::walk::{Ctx, Field, Tbl, first_seen};

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
        Some(DatacenterConfig {
            name: name?,
            location: location?,
            addresses: addresses?,
            pools: pools?,
            check: check?,
            drain: drain?,
        })
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
