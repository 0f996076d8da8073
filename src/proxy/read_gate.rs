//! A client socket's reads, skipped while nothing can have come.
//!
//! An HTTP/1.1 connection reads its client twice a request only to find
//! nothing: while the backend is asked (to learn of a client that hangs
//! up) and again once the answer is written (to wait for the next
//! request). The second read finds what the first did unless the socket
//! became readable between them, and the runtime says so only to the
//! waker the first read left: the task's, which every source of the task
//! wakes alike. Polled through [`GatedRead`], the read leaves a waker of
//! its own, which marks that it fired before it wakes the task; a read
//! that would follow a pending one while that mark is clear is not made.
//! The read skipped was 249 instructions of an HTTP/1.1 request's 16,440
//! (the thread's read buffer borrowed, the connection's lock, its
//! activity, the runtime's readiness check and its waiter list's lock);
//! the gate costs 75 of them back: 16,266 (`benches/instructions.sh`).
//!
//! The mark is set and cleared with plain stores, and a wake through this
//! waker takes as many atomic read-modify-writes as one through the
//! task's did; the skipped read took three (the connection's lock, the
//! waiter list's lock and its release): 103.3 locked instructions a
//! request against 106.3
//! (`CALLGRIND_ARGS=--dump-instr=yes benches/instructions.sh`, then
//! `benches/callgrind_locked.py`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

/// A reader whose pending reads are not made again until they could find
/// something (see the module).
pub(super) struct GatedRead<R> {
    io: R,
    mark: Arc<Mark>,
    /// `mark` as a waker, made once.
    waker: Waker,
    /// The last read was made with `waker` and was pending: it is still
    /// registered, and until it fires a read would find the same.
    armed: bool,
}

/// Set when the reader's waker fires, cleared before each read made.
struct Mark {
    set: AtomicBool,
    /// The task whose reads are gated, woken in turn.
    task: Waker,
}

impl Wake for Mark {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Before the task is woken: its next poll must see the mark.
        self.set.store(true, Ordering::Release);
        self.task.wake_by_ref();
    }
}

impl<R> GatedRead<R> {
    /// `task`: the waker of the task that reads `io` (a read polled from
    /// another is made as it comes).
    pub(super) fn new(io: R, task: Waker) -> Self {
        let mark = Arc::new(Mark {
            set: AtomicBool::new(false),
            task,
        });
        GatedRead {
            io,
            waker: Waker::from(mark.clone()),
            mark,
            armed: false,
        }
    }

    /// `read` polled on the reader, unless its last poll was pending and
    /// nothing it waits for fired since: then `Pending` at once, the
    /// earlier registration standing.
    #[inline(always)]
    pub(super) fn poll_gated<T>(
        &mut self,
        cx: &mut Context<'_>,
        read: impl FnOnce(&mut R, &mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        if !self.mark.task.will_wake(cx.waker()) {
            self.armed = false;
            return read(&mut self.io, cx);
        }
        if self.armed && !self.mark.set.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        // Cleared before the read: a wake from here on is the read's own,
        // or one it supersedes (it registers all it waits for again).
        self.mark.set.store(false, Ordering::Relaxed);
        let polled = read(&mut self.io, &mut Context::from_waker(&self.waker));
        self.armed = polled.is_pending();
        polled
    }

    /// The reader, for a read of another kind: the next gated read is made
    /// whatever happened, as the runtime may now hold another waker.
    pub(super) fn get_mut(&mut self) -> &mut R {
        self.armed = false;
        &mut self.io
    }

    pub(super) fn into_inner(self) -> R {
        self.io
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A read that is pending until `ready`, leaving the waker it was
    /// polled with where the test can wake it, and counting its polls.
    #[derive(Default)]
    struct Probe {
        polls: Cell<u32>,
        ready: Cell<bool>,
        waker: std::cell::RefCell<Option<Waker>>,
    }

    impl Probe {
        fn read(&self, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.set(self.polls.get() + 1);
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            if self.ready.get() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }

        fn fire(&self) {
            self.waker.borrow().as_ref().unwrap().wake_by_ref();
        }
    }

    /// Counts the task's wakes.
    struct Task(std::sync::atomic::AtomicU32);

    impl Wake for Task {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn task() -> (Arc<Task>, Waker) {
        let t = Arc::new(Task(0.into()));
        (t.clone(), Waker::from(t))
    }

    #[test]
    fn a_pending_read_is_not_made_again_until_it_fires() {
        let (woken, waker) = task();
        let probe = Probe::default();
        let mut gated = GatedRead::new(&probe, waker.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(gated.poll_gated(&mut cx, |p, cx| p.read(cx)).is_pending());
        assert!(gated.poll_gated(&mut cx, |p, cx| p.read(cx)).is_pending());
        assert_eq!(probe.polls.get(), 1, "the second read was skipped");
        probe.ready.set(true);
        probe.fire();
        assert_eq!(woken.0.load(Ordering::Relaxed), 1, "the task was woken");
        assert!(gated.poll_gated(&mut cx, |p, cx| p.read(cx)).is_ready());
        assert_eq!(probe.polls.get(), 2);
        // Ready: the next read is made.
        assert!(gated.poll_gated(&mut cx, |p, cx| p.read(cx)).is_ready());
        assert_eq!(probe.polls.get(), 3);
    }

    #[test]
    fn a_read_after_a_wake_registers_again_and_is_gated_again() {
        let (_, waker) = task();
        let probe = Probe::default();
        let mut gated = GatedRead::new(&probe, waker.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(gated.poll_gated(&mut cx, |p, cx| p.read(cx)).is_pending());
        // A wake that found nothing (a spurious readiness): read, pending
        // again, and gated from then on.
        probe.fire();
        assert!(gated.poll_gated(&mut cx, |p, cx| p.read(cx)).is_pending());
        assert!(gated.poll_gated(&mut cx, |p, cx| p.read(cx)).is_pending());
        assert_eq!(probe.polls.get(), 2);
    }

    #[test]
    fn another_task_or_another_kind_of_read_is_never_skipped() {
        let (_, waker) = task();
        let (_, other) = task();
        let probe = Probe::default();
        let mut gated = GatedRead::new(&probe, waker.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(gated.poll_gated(&mut cx, |p, cx| p.read(cx)).is_pending());
        // Polled from another task: made, with that task's waker.
        let mut other_cx = Context::from_waker(&other);
        assert!(
            gated
                .poll_gated(&mut other_cx, |p, cx| p.read(cx))
                .is_pending()
        );
        assert_eq!(probe.polls.get(), 2);
        assert!(probe.waker.borrow().as_ref().unwrap().will_wake(&other));
        // The runtime holds the other task's waker now: this task's next
        // read is made, not skipped.
        assert!(gated.poll_gated(&mut cx, |p, cx| p.read(cx)).is_pending());
        assert_eq!(probe.polls.get(), 3);
        // And after a read of another kind through `get_mut`.
        assert!(gated.poll_gated(&mut cx, |p, cx| p.read(cx)).is_pending());
        assert_eq!(probe.polls.get(), 3);
        let _ = gated.get_mut();
        assert!(gated.poll_gated(&mut cx, |p, cx| p.read(cx)).is_pending());
        assert_eq!(probe.polls.get(), 4);
    }
}
