//! Data-center health by quorum: the views every node of a `[cluster]`
//! publishes (its own data center from its pools, the others from their
//! remote checks), and the state each data center is given from them, so
//! that every name server answers alike and one node's partial partition
//! moves no traffic.
//!
//! The rule, per data center:
//! - a live node of that data center published a `pools` view: up iff at
//!   least half of those nodes say up (its own nodes are authoritative);
//! - else, among the `check` views of live nodes: down iff a strict
//!   majority says down (Route 53's checkers, with a majority for "down");
//! - with no view published: this node's local view, as without a cluster.
//!
//! This node's own view always counts as it is now, also while etcd is out
//! of reach; the other nodes' views stay as last read (never fail closed).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::locked;

/// What a view is based on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The node's own data center, from its local pools.
    Pools,
    /// Another data center, from this node's remote check of it.
    Check,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    pub up: bool,
    pub source: Source,
}

/// What a node publishes under `PREFIX health/NODE`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Published {
    pub datacenter: Option<String>,
    pub views: BTreeMap<String, View>,
    /// RFC 3339, when written.
    #[serde(default)]
    pub at: String,
}

/// How a data center's state was decided, for `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub up: usize,
    pub down: usize,
    pub from: Basis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Basis {
    Pools,
    Checks,
    /// No view published: this node's own, as without a cluster.
    Local,
}

/// A data center's decided state, in its cell.
const LOCAL: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// The decision over every node's views (this node's among them).
pub fn decide<'a>(dc: &str, views: impl Iterator<Item = &'a Published>) -> (Option<bool>, Tally) {
    let (mut own, mut checks) = ((0, 0), (0, 0));
    for p in views {
        let Some(v) = p.views.get(dc) else { continue };
        let count = match v.source {
            // A pools view counts only from a node of that data center.
            Source::Pools if p.datacenter.as_deref() == Some(dc) => &mut own,
            Source::Pools => continue,
            Source::Check => &mut checks,
        };
        if v.up {
            count.0 += 1;
        } else {
            count.1 += 1;
        }
    }
    if own.0 + own.1 > 0 {
        let tally = Tally {
            up: own.0,
            down: own.1,
            from: Basis::Pools,
        };
        return (Some(own.0 >= own.1), tally);
    }
    if checks.0 + checks.1 > 0 {
        let tally = Tally {
            up: checks.0,
            down: checks.1,
            from: Basis::Checks,
        };
        return (Some(checks.1 <= checks.0), tally);
    }
    let tally = Tally {
        up: 0,
        down: 0,
        from: Basis::Local,
    };
    (None, tally)
}

/// The views of every node, and each data center's decided state in a
/// cell that `state::Datacenter` reads on each answer (an atomic load).
#[derive(Default)]
pub struct Quorum {
    /// By node, the other nodes' views as last read from etcd.
    others: Mutex<HashMap<String, Published>>,
    own: Mutex<Option<(String, Published)>>,
    /// By data-center name; kept across reloads, like override cells.
    cells: Mutex<HashMap<String, Arc<AtomicU8>>>,
    tallies: Mutex<HashMap<String, Tally>>,
    /// Told when this node's own views changed and are to be published.
    pub changed: tokio::sync::Notify,
}

impl Quorum {
    /// The cell of data center `name`: LOCAL until views are published.
    pub fn cell(&self, name: &str) -> Arc<AtomicU8> {
        let cell = locked(&self.cells)
            .entry(name.to_owned())
            .or_default()
            .clone();
        self.decide_all();
        cell
    }

    /// How `name`'s state was decided; None without a cluster.
    pub fn tally(&self, name: &str) -> Option<Tally> {
        locked(&self.tallies).get(name).copied()
    }

    /// This node's views now; true when they changed (to be published).
    pub fn set_own(&self, node: &str, views: Published) -> bool {
        let mut own = locked(&self.own);
        if own.as_ref().is_some_and(|(_, p)| p.views == views.views) {
            return false;
        }
        *own = Some((node.to_owned(), views));
        drop(own);
        self.decide_all();
        self.changed.notify_one();
        true
    }

    pub fn own(&self) -> Option<Published> {
        locked(&self.own).as_ref().map(|(_, p)| p.clone())
    }

    /// A node's views read from etcd (None: its key is gone, lease expired).
    pub fn set_other(&self, node: &str, views: Option<Published>) {
        {
            let mut others = locked(&self.others);
            match views {
                Some(v) => others.insert(node.to_owned(), v),
                None => others.remove(node),
            };
        }
        self.decide_all();
    }

    /// Every other node's views at once, after a full read.
    pub fn replace_others(&self, all: HashMap<String, Published>) {
        *locked(&self.others) = all;
        self.decide_all();
    }

    fn decide_all(&self) {
        let own = locked(&self.own).clone();
        let Some((node, own)) = own else { return };
        let others = locked(&self.others);
        let views = || {
            others
                .iter()
                .filter(|(n, _)| **n != node)
                .map(|(_, p)| p)
                .chain(std::iter::once(&own))
        };
        let cells = locked(&self.cells);
        let mut tallies = locked(&self.tallies);
        for (name, cell) in cells.iter() {
            let (state, tally) = decide(name, views());
            cell.store(
                match state {
                    None => LOCAL,
                    Some(true) => UP,
                    Some(false) => DOWN,
                },
                Ordering::Relaxed,
            );
            tallies.insert(name.clone(), tally);
        }
    }
}

/// A cell's state: None when it follows the local view.
pub fn decided(cell: &AtomicU8) -> Option<bool> {
    match cell.load(Ordering::Relaxed) {
        UP => Some(true),
        DOWN => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(dc: Option<&str>, views: &[(&str, bool, Source)]) -> Published {
        Published {
            datacenter: dc.map(str::to_owned),
            views: views
                .iter()
                .map(|&(d, up, source)| (d.to_owned(), View { up, source }))
                .collect(),
            at: String::new(),
        }
    }

    #[test]
    fn own_nodes_decide_their_data_center_ties_up() {
        use Source::*;
        let a = node(Some("eu"), &[("eu", false, Pools), ("us", true, Check)]);
        let b = node(Some("eu"), &[("eu", true, Pools), ("us", false, Check)]);
        // Remote checkers saying eu is down do not count against its own.
        let c = node(Some("us"), &[("eu", false, Check), ("us", true, Pools)]);
        let all = [a.clone(), b.clone(), c.clone()];
        let (eu, tally) = decide("eu", all.iter());
        assert_eq!(eu, Some(true));
        assert_eq!((tally.up, tally.down, tally.from), (1, 1, Basis::Pools));
        // us has an own node: its pools view wins over a and b's checks.
        assert_eq!(decide("us", all.iter()).0, Some(true));
        // A pools view from a node of another data center is not counted.
        let wrong = node(Some("us"), &[("eu", false, Pools)]);
        assert_eq!(decide("eu", [wrong].iter()).1.from, Basis::Local);
    }

    #[test]
    fn checks_need_a_strict_majority_for_down() {
        use Source::*;
        let up = node(None, &[("x", true, Check)]);
        let down = node(None, &[("x", false, Check)]);
        assert_eq!(decide("x", [up.clone(), down.clone()].iter()).0, Some(true));
        let (x, tally) = decide("x", [up, down.clone(), down].iter());
        assert_eq!(x, Some(false));
        assert_eq!((tally.up, tally.down, tally.from), (1, 2, Basis::Checks));
        assert_eq!(decide("y", std::iter::empty()).0, None);
    }

    #[test]
    fn cells_follow_views_and_a_gone_node_stops_counting() {
        use Source::*;
        let q = Quorum::default();
        let cell = q.cell("x");
        assert_eq!(decided(&cell), None, "nothing published yet");
        assert!(q.set_own("a", node(None, &[("x", false, Check)])));
        assert!(!q.set_own("a", node(None, &[("x", false, Check)])));
        assert_eq!(decided(&cell), Some(false));
        q.set_other("b", Some(node(None, &[("x", true, Check)])));
        q.set_other("c", Some(node(None, &[("x", true, Check)])));
        assert_eq!(decided(&cell), Some(true), "one node alone moves nothing");
        q.set_other("c", None);
        assert_eq!(decided(&cell), Some(true), "a tie is up");
        q.set_other("b", None);
        assert_eq!(decided(&cell), Some(false));
        assert_eq!(q.tally("x").unwrap().down, 1);
    }
}
