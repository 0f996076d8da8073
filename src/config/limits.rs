//! What protects backends from the traffic sent to them: a pool's
//! `max_connections` and queue, its `outlier` ejection and `retry_budget`,
//! and a listener's `retry_on`.

use super::model::*;
use super::walk::{Ctx, Field, Tbl};

impl Ctx {
    /// `max_connections`, `queue` and `queue_timeout` of pool `t`.
    pub(super) fn backend_limits(&mut self, t: &Tbl<'_, '_>) -> Option<BackendLimits> {
        let max_connections = self.maybe(t, "max_connections", |c, f| c.uint(f, 1, 1_000_000));
        let queue = self.opt(t, "queue", DEFAULT_QUEUE, |c, f| c.uint(f, 0, 1_000_000));
        let queue_timeout = self.maybe(t, "queue_timeout", |c, f| c.duration(f, false));
        let max_idle = self.opt(t, "max_idle", DEFAULT_MAX_IDLE, |c, f| {
            c.uint(f, 0, 1_000_000)
        });
        if t.field("max_connections").is_none() {
            let why = "a queue is for requests waiting for a backend below its max_connections: \
                       set max_connections too, or remove this";
            self.misplaced(t, &["queue", "queue_timeout"], why);
        }
        Some(BackendLimits {
            max_connections: max_connections?,
            queue: queue?,
            queue_timeout: queue_timeout?,
            max_idle: max_idle?,
        })
    }

    pub(super) fn outlier(&mut self, f: &Field<'_, '_>) -> Option<OutlierConfig> {
        let expected = "expected a table like { consecutive_failures = 5, ejection = \"10s\" }";
        self.table(f, expected, |c, t| {
            let d = OutlierConfig::default();
            let failures = c.opt(t, "consecutive_failures", d.consecutive_failures, |c, f| {
                c.uint(f, 0, 1000)
            });
            let five = c.opt(t, "consecutive_5xx", d.consecutive_5xx, |c, f| {
                c.uint(f, 0, 1000)
            });
            let ejection = c.opt(t, "ejection", d.ejection, |c, f| c.duration(f, false));
            let max_ejection = c.opt(t, "max_ejection", None, |c, f| {
                c.duration(f, false).map(Some)
            });
            let percent = c.opt(t, "max_ejected_percent", d.max_ejected_percent, |c, f| {
                c.uint(f, 0, 100).map(|n| n as u8)
            });
            let (ejection, max_ejection) = (ejection?, max_ejection?);
            if let (Some(max), Some(f)) = (max_ejection, t.field("max_ejection"))
                && max < ejection
            {
                let why = format!("shorter than ejection ({ejection:?}): make it at least that");
                c.bad(&f, why);
                return None;
            }
            Some(OutlierConfig {
                consecutive_failures: failures?,
                consecutive_5xx: five?,
                ejection,
                max_ejection: max_ejection.unwrap_or(d.max_ejection.max(ejection)),
                max_ejected_percent: percent?,
            })
        })
    }

    pub(super) fn retry_budget(&mut self, f: &Field<'_, '_>) -> Option<RetryBudgetConfig> {
        let expected = "expected a table like { percent = 20, min_concurrent = 3 }";
        self.table(f, expected, |c, t| {
            let d = RetryBudgetConfig::default();
            let percent = c.opt(t, "percent", d.percent, |c, f| {
                c.uint(f, 0, 100).map(|n| n as u8)
            });
            let min = c.opt(t, "min_concurrent", d.min_concurrent, |c, f| {
                c.uint(f, 0, 1_000_000)
            });
            Some(RetryBudgetConfig {
                percent: percent?,
                min_concurrent: min?,
            })
        })
    }

    /// A listener's `retry_on`; a tcp listener (`tcp`) has only connects
    /// to retry.
    pub(super) fn retry_on(&mut self, f: &Field<'_, '_>, tcp: bool) -> Option<RetryOn> {
        let expected = "expected a list like [\"connect\", \"reset\", \"503\"]";
        let items = self.array(f, expected)?;
        let mut on = RetryOn::NONE;
        let ok = self.each(&items, |c, item| {
            let s = c.string(item)?;
            if tcp && s != "connect" {
                c.bad(item, "a tcp listener retries only on \"connect\"");
                return None;
            }
            if !on.add(s) {
                let names: Vec<String> = RetryOn::SPELLINGS
                    .iter()
                    .map(|s| format!("\"{s}\""))
                    .collect();
                c.bad(item, format!("expected one of {}", names.join(" | ")));
                return None;
            }
            Some(())
        });
        ok.map(|_| on)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::{errors, parse};
    use super::*;

    const POOL: &str = "[[pool]]\nname = \"p\"\nbackends = [{ addr = \"127.0.0.1:8080\" }]\n";
    const LISTENER: &str = "[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:80\"\npool = \"p\"\n";

    fn pool(extra: &str) -> PoolConfig {
        let config = parse(&format!("{POOL}{extra}")).unwrap_or_else(|e| panic!("{e}"));
        config.pools[0].clone()
    }

    /// The one error `text` holds: its key path and message.
    fn one_error(text: &str) -> (String, String) {
        let found = errors(text);
        assert_eq!(found.len(), 1, "{found:?}");
        (found[0].path.clone(), found[0].message.clone())
    }

    #[test]
    fn defaults_change_nothing_but_eject_on_failures() {
        let p = pool("");
        assert_eq!(
            p.limits,
            BackendLimits {
                max_connections: None,
                queue: DEFAULT_QUEUE,
                queue_timeout: None,
                max_idle: DEFAULT_MAX_IDLE,
            }
        );
        assert_eq!(p.outlier, OutlierConfig::default());
        assert_eq!(p.outlier.consecutive_failures, 5);
        assert_eq!(p.outlier.consecutive_5xx, 0);
        assert_eq!(p.retry_budget, RetryBudgetConfig::default());
        let config = parse(&format!("{POOL}{LISTENER}")).unwrap();
        assert_eq!(config.listeners[0].retry_on, RetryOn::default());
    }

    #[test]
    fn values_are_read() {
        let p = pool(
            "max_connections = 4\nqueue = 10\nqueue_timeout = \"2s\"\nmax_idle = 0\n\
             outlier = { consecutive_failures = 0, consecutive_5xx = 3, ejection = \"1s\", max_ejection = \"4s\", max_ejected_percent = 100 }\n\
             retry_budget = { percent = 50, min_concurrent = 1 }",
        );
        assert_eq!(p.limits.max_connections, Some(4));
        assert_eq!(p.limits.queue, 10);
        assert_eq!(p.limits.queue_timeout, Some(Duration::from_secs(2)));
        assert_eq!(p.limits.max_idle, 0);
        assert_eq!(p.outlier.consecutive_5xx, 3);
        assert_eq!(p.outlier.max_ejection, Duration::from_secs(4));
        assert_eq!(p.outlier.max_ejected_percent, 100);
        assert_eq!(p.retry_budget.percent, 50);
        // A long base ejection raises the default cap to it.
        let p = pool("outlier = { ejection = \"600s\" }");
        assert_eq!(p.outlier.max_ejection, Duration::from_secs(600));
        let config = parse(&format!("{POOL}{LISTENER}retry_on = [\"503\", \"reset\"]")).unwrap();
        let on = config.listeners[0].retry_on;
        assert!(on.reset && !on.connect && on.status(503) && !on.status(502) && !on.status(500));
    }

    #[test]
    fn each_mistake_names_its_key() {
        let cases: &[(String, &str, &str)] = &[
            (format!("{POOL}max_idle = -1"), "pool[0].max_idle", "from 0"),
            (format!("{POOL}max_idle = \"many\""), "pool[0].max_idle", ""),
            (
                format!("{POOL}max_connections = 0"),
                "pool[0].max_connections",
                "from 1",
            ),
            (
                format!("{POOL}queue = 5"),
                "pool[0].queue",
                "set max_connections",
            ),
            (
                format!("{POOL}max_connections = 2\nqueue = -1"),
                "pool[0].queue",
                "from 0",
            ),
            (
                format!("{POOL}max_connections = 2\nqueue_timeout = \"soon\""),
                "pool[0].queue_timeout",
                "",
            ),
            (
                format!("{POOL}max_connections = 2\nqueue_timeout = 5"),
                "pool[0].queue_timeout",
                "\"5s\"",
            ),
            (
                format!("{POOL}outlier = {{ max_ejected_percent = 101 }}"),
                "pool[0].outlier.max_ejected_percent",
                "0 to 100",
            ),
            (
                format!("{POOL}outlier = {{ ejection = \"0s\" }}"),
                "pool[0].outlier.ejection",
                "longer than 0",
            ),
            (
                format!("{POOL}outlier = {{ ejection = \"10s\", max_ejection = \"5s\" }}"),
                "pool[0].outlier.max_ejection",
                "shorter than ejection",
            ),
            (
                format!("{POOL}outlier = {{ consecutive_errors = 5 }}"),
                "pool[0].outlier.consecutive_errors",
                "unknown key",
            ),
            (
                format!("{POOL}outlier = true"),
                "pool[0].outlier",
                "a table",
            ),
            (
                format!("{POOL}retry_budget = {{ percent = 120 }}"),
                "pool[0].retry_budget.percent",
                "0 to 100",
            ),
            (
                format!("{POOL}{LISTENER}retry_on = [\"connect\", \"500\"]"),
                "listener[0].retry_on[1]",
                "\"connect\" | \"reset\"",
            ),
            (
                format!("{POOL}{LISTENER}retry_on = \"503\""),
                "listener[0].retry_on",
                "a list",
            ),
            (
                format!("{POOL}{LISTENER}protocol = \"tcp\"\nretry_on = [\"503\"]"),
                "listener[0].retry_on[0]",
                "only on \"connect\"",
            ),
        ];
        for (text, path, words) in cases {
            let (at, message) = one_error(text);
            assert_eq!(at, *path, "{text}");
            assert!(message.contains(words), "{path}: {message}");
        }
    }
}
