//! Logging what clients (or floods of them) cause without letting them
//! fill the log: [`log_limited!`] writes one line per second per call
//! site at the level asked, with the count of lines left out since the
//! previous one (`suppressed`), and the rest at debug; [`clip`] cuts and
//! escapes client-supplied text before it goes into a line.
//!
//! Lines left out after the last loud one are counted in the next loud
//! one, whenever that comes; the metrics (handshake errors, PROXY errors,
//! refusals) count every event.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// At most one loud line per this, per call site.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// How much client-supplied text a log line carries (in bytes, escapes
/// included), unless a call site says otherwise.
pub const CLIP: usize = 200;

/// One kind of line: when it was last written, and how many were left out
/// since. `const`, for a `static` per call site.
pub struct LogRate {
    /// Milliseconds since [`epoch`] of the last loud line, plus one (0:
    /// never).
    last: AtomicU64,
    suppressed: AtomicU64,
}

impl Default for LogRate {
    fn default() -> Self {
        Self::new()
    }
}

impl LogRate {
    pub const fn new() -> Self {
        LogRate {
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)`: write the line now, saying `n` were left out since the
    /// previous one. `None`: leave it out (it is counted).
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(epoch().elapsed())
    }

    /// As [`LogRate::allow`], `now` after the process-wide epoch.
    pub fn allow_at(&self, now: Duration) -> Option<u64> {
        let now = now.as_millis() as u64 + 1;
        let last = self.last.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= INTERVAL.as_millis() as u64;
        // Of two threads due at once, one wins the exchange; the other's
        // line is left out and counted.
        if due
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Logs at `$level` (`warn`, `info`...) with a `suppressed` field at most
/// once per [`INTERVAL`] for this call site, else at debug: the same
/// fields and message as `tracing::$level!` takes.
#[macro_export]
macro_rules! log_limited {
    ($level:ident, $($rest:tt)+) => {{
        static RATE: $crate::lograte::LogRate = $crate::lograte::LogRate::new();
        match RATE.allow() {
            Some(suppressed) => ::tracing::$level!(suppressed, $($rest)+),
            None => ::tracing::debug!($($rest)+),
        }
    }};
}

/// `text` for a log line: at most [`CLIP`] bytes, control characters
/// escaped, and when cut, how long it was.
pub fn clip(text: &str) -> Cow<'_, str> {
    clip_to(text, CLIP)
}

/// As [`clip`], at most `max` bytes of `text` (escapes counted).
pub fn clip_to(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max && !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(max.min(text.len()) + 24);
    for c in text.chars() {
        let before = out.len();
        if c.is_control() {
            let _ = write!(out, "{}", c.escape_default());
        } else {
            out.push(c);
        }
        if out.len() > max {
            out.truncate(before);
            let _ = write!(out, "... ({} bytes)", text.len());
            break;
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_and_the_count_of_the_rest() {
        let rate = LogRate::new();
        let ms = Duration::from_millis;
        assert_eq!(rate.allow_at(ms(0)), Some(0));
        assert_eq!(rate.allow_at(ms(10)), None);
        assert_eq!(rate.allow_at(ms(999)), None);
        assert_eq!(rate.allow_at(ms(1000)), Some(2));
        assert_eq!(rate.allow_at(ms(1500)), None);
        assert_eq!(rate.allow_at(ms(5000)), Some(1));
        assert_eq!(rate.allow_at(ms(6000)), Some(0));
    }

    #[test]
    fn clipped_text_is_short_escaped_and_says_how_long_it_was() {
        assert!(matches!(clip("example.com"), Cow::Borrowed("example.com")));
        let long = "a".repeat(60_000);
        let c = clip(&long);
        assert!(c.len() < CLIP + 30, "{c}");
        assert!(c.ends_with("... (60000 bytes)"), "{c}");
        assert_eq!(clip("a\nb\u{1b}"), "a\\nb\\u{1b}");
        // Never cut inside a character.
        let wide = "é".repeat(150);
        let c = clip(&wide);
        assert!(c.starts_with("éé") && c.ends_with("... (300 bytes)"), "{c}");
        assert_eq!(clip_to("abcdef", 3), "abc... (6 bytes)");
    }
}
