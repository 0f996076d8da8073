//! A request's times, read from the monotonic clock as nanoseconds.
//!
//! `std::time::Instant` reads the same clock (`CLOCK_MONOTONIC`), but keeps
//! it as seconds and nanoseconds: each difference of two borrows between
//! them and checks its order, about 45 instructions, and a request took
//! three (its duration, its backend's answer time, its kept connection's
//! age) and one sum (its deadline). As one `u64` each is one instruction.
//! Read through the C library, as `Instant` is (rustix's own vDSO lookup
//! reads the process's auxiliary vector, which under valgrind names a
//! vDSO that is not mapped: it crashed there).

use std::time::Duration;

/// A reading of `CLOCK_MONOTONIC`, in nanoseconds since the machine
/// booted (about 584 years before it wraps).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp(u64);

impl Stamp {
    #[inline]
    pub fn now() -> Stamp {
        // CLOCK_MONOTONIC cannot fail on Linux (std's `Instant` unwraps it).
        let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .expect("CLOCK_MONOTONIC reads");
        // Never negative: the clock counts up from boot.
        Stamp(
            (t.tv_sec() as u64)
                .wrapping_mul(1_000_000_000)
                .wrapping_add(t.tv_nsec() as u64),
        )
    }

    /// The time since `self`, or zero for a stamp not yet reached.
    #[inline]
    pub fn elapsed(self) -> Duration {
        Stamp::now().since(self)
    }

    /// The time from `earlier` to `self`, or zero if `earlier` is later
    /// (as `Instant::duration_since`).
    #[inline]
    pub fn since(self, earlier: Stamp) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// Whole milliseconds from `earlier` to `self`, or zero if `earlier`
    /// is later: `since(..).as_millis()` without the `Duration` made and
    /// taken apart.
    #[inline]
    pub fn millis_since(self, earlier: Stamp) -> u64 {
        self.0.saturating_sub(earlier.0) / 1_000_000
    }

    /// `after` past `self`; past the end of the clock, its end (a
    /// `Duration::MAX` timeout never comes).
    #[inline]
    pub fn after(self, after: Duration) -> Stamp {
        let nanos = u64::try_from(after.as_nanos()).unwrap_or(u64::MAX);
        Stamp(self.0.saturating_add(nanos))
    }

    /// The latest stamp: a deadline that never comes.
    pub const NEVER: Stamp = Stamp(u64::MAX);

    /// As tokio's timers take it: `Instant`'s reading of the same clock,
    /// moved by the difference. Past what `Instant` holds, about 30 years
    /// on (as `tokio::time::timeout` does).
    pub fn instant(self) -> tokio::time::Instant {
        let (now, instant) = (Stamp::now(), std::time::Instant::now());
        let moved = if self >= now {
            instant.checked_add(self.since(now))
        } else {
            instant.checked_sub(now.since(self))
        };
        moved.map_or_else(
            || tokio::time::Instant::from_std(instant) + Duration::from_secs(86_400 * 365 * 30),
            tokio::time::Instant::from_std,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_reads_the_clock_instant_reads() {
        let (before, stamp) = (std::time::Instant::now(), Stamp::now());
        std::thread::sleep(Duration::from_millis(20));
        let (instant_took, stamp_took) = (before.elapsed(), stamp.elapsed());
        assert!(stamp_took >= Duration::from_millis(20), "{stamp_took:?}");
        let apart = instant_took.abs_diff(stamp_took);
        assert!(
            apart < Duration::from_millis(5),
            "{instant_took:?} against {stamp_took:?}"
        );
    }

    #[test]
    fn differences_never_go_below_zero() {
        let earlier = Stamp(1_000);
        let later = Stamp(3_500_000_000);
        assert_eq!(later.since(earlier), Duration::new(3, 499_999_000));
        assert_eq!(earlier.since(later), Duration::ZERO);
        // Whole milliseconds, as `Duration::as_millis` counts them.
        assert_eq!(later.millis_since(earlier), 3_499);
        assert_eq!(Stamp(2_999_999).millis_since(Stamp(0)), 2);
        assert_eq!(earlier.millis_since(later), 0);
        assert_eq!(
            Stamp::now().after(Duration::from_secs(60)).elapsed(),
            Duration::ZERO
        );
    }

    #[test]
    fn a_deadline_past_the_clock_is_the_clock_s_end() {
        assert_eq!(Stamp(5).after(Duration::MAX), Stamp::NEVER);
        assert_eq!(Stamp(5).after(Duration::from_nanos(7)), Stamp(12));
        // Converted for a timer, far off rather than overflowing.
        let far = Stamp::NEVER.instant();
        assert!(far > tokio::time::Instant::now() + Duration::from_secs(86_400 * 365));
    }

    #[test]
    fn a_timer_s_instant_is_as_far_off_as_the_stamp() {
        let due = Stamp::now().after(Duration::from_secs(10));
        let left = due.instant() - tokio::time::Instant::now();
        assert!(left <= Duration::from_secs(10), "{left:?}");
        assert!(left > Duration::from_secs(9), "{left:?}");
        let gone = Stamp(0).instant();
        assert!(gone <= tokio::time::Instant::now());
    }
}
