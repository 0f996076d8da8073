//! The `process_*` series, named as node_exporter and the Prometheus
//! client libraries name them, read from `/proc/self` at scrape time (a
//! few small reads; nothing runs between scrapes). Linux only: elsewhere
//! the files are missing and the series are left out.

use std::fmt::Write as _;

use crate::metrics::{
    PROCESS_CPU, PROCESS_MAX_FDS, PROCESS_OPEN_FDS, PROCESS_RESIDENT, PROCESS_START_TIME,
    PROCESS_VIRTUAL, family,
};

/// What `/proc/self/stat` says, in base units.
#[derive(Debug, PartialEq)]
struct Stat {
    cpu_seconds: f64,
    virtual_bytes: u64,
    resident_bytes: u64,
    /// Seconds after boot.
    start_after_boot: f64,
}

/// Parses `/proc/self/stat` (proc(5)): the fields after the command name,
/// which is in parentheses and may itself hold spaces and parentheses.
fn parse_stat(text: &str, ticks_per_second: u64, page_size: u64) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    // Field 3 (state) is the first after the name; proc(5) numbers from 1.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    let ticks = ticks_per_second as f64;
    Some(Stat {
        cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
        start_after_boot: field(22)? as f64 / ticks,
        virtual_bytes: field(23)?,
        resident_bytes: field(24)? * page_size,
    })
}

/// The soft limit on open files from `/proc/self/limits`; None if
/// unlimited or unreadable.
fn parse_max_fds(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Boot time (Unix seconds) from `/proc/stat`.
fn parse_boot_time(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

pub fn render(out: &mut String) {
    let stat = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            parse_stat(
                &s,
                rustix::param::clock_ticks_per_second(),
                rustix::param::page_size() as u64,
            )
        });
    if let Some(stat) = &stat {
        let series: [(&str, &str, &str, f64); 3] = [
            (
                PROCESS_CPU,
                "counter",
                "Total user and system CPU time spent in seconds.",
                stat.cpu_seconds,
            ),
            (
                PROCESS_RESIDENT,
                "gauge",
                "Resident memory size in bytes.",
                stat.resident_bytes as f64,
            ),
            (
                PROCESS_VIRTUAL,
                "gauge",
                "Virtual memory size in bytes.",
                stat.virtual_bytes as f64,
            ),
        ];
        for (name, kind, help, value) in series {
            family(out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        // The directory handle reading it is one of the entries.
        let open = fds.count().saturating_sub(1);
        family(
            out,
            PROCESS_OPEN_FDS,
            "gauge",
            "Number of open file descriptors.",
        );
        let _ = writeln!(out, "{PROCESS_OPEN_FDS} {open}");
    }
    let limits = std::fs::read_to_string("/proc/self/limits").ok();
    if let Some(max) = limits.as_deref().and_then(parse_max_fds) {
        family(
            out,
            PROCESS_MAX_FDS,
            "gauge",
            "Maximum number of open file descriptors.",
        );
        let _ = writeln!(out, "{PROCESS_MAX_FDS} {max}");
    }
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| parse_boot_time(&s));
    if let (Some(stat), Some(boot)) = (&stat, boot) {
        family(
            out,
            PROCESS_START_TIME,
            "gauge",
            "Start time of the process since unix epoch in seconds.",
        );
        let _ = writeln!(
            out,
            "{PROCESS_START_TIME} {}",
            boot as f64 + stat.start_after_boot
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_a_name_holding_spaces_and_parentheses() {
        // proc(5) fields 1..24 of a process named "a) (b".
        let text = "4242 (a) (b) S 1 4242 4242 0 -1 4194560 500 0 0 0 150 50 0 0 20 0 9 0 \
                    12345 104857600 2560 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0";
        assert_eq!(
            parse_stat(text, 100, 4096),
            Some(Stat {
                cpu_seconds: 2.0,
                virtual_bytes: 104_857_600,
                resident_bytes: 2560 * 4096,
                start_after_boot: 123.45,
            })
        );
        assert_eq!(parse_stat("4242 (x) S 1", 100, 4096), None);
        assert_eq!(parse_stat("garbage", 100, 4096), None);
    }

    #[test]
    fn limits_and_boot_time() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_max_fds(limits), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_max_fds(unlimited), None);
        assert_eq!(
            parse_boot_time("cpu 1 2 3\nbtime 1764500000\n"),
            Some(1_764_500_000)
        );
        assert_eq!(parse_boot_time("cpu 1 2 3\n"), None);
    }

    #[test]
    fn this_process_renders_every_series() {
        let mut out = String::new();
        render(&mut out);
        for name in [
            PROCESS_CPU,
            PROCESS_RESIDENT,
            PROCESS_VIRTUAL,
            PROCESS_OPEN_FDS,
            PROCESS_MAX_FDS,
            PROCESS_START_TIME,
        ] {
            assert!(
                out.contains(&format!("\n{name} ")),
                "{name} missing:\n{out}"
            );
        }
    }
}
