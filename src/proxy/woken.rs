//! A side future polled only when it was woken.
//!
//! `tokio::select!` polls every branch each time the task wakes. A
//! connection's task wakes a few times a request for its sockets, and each
//! time its watchdog (a timer) and its shutdown signal (a `Notify` behind a
//! mutex) were polled too, only to register the same waker again: 396
//! instructions of an HTTP/1.1 request's 24,003 by
//! `benches/instructions.sh`. [`Woken`] gives the
//! side future a waker of its own, and polls it again only after that
//! waker fired.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use atomic_waker::AtomicWaker;

/// `fut`, polled on its first poll and then only after it woke; once it
/// is ready, every poll reaches it again (as a loop around `select!` may
/// poll a branch that finished, expecting what the future itself answers).
pub struct Woken<'a, F> {
    fut: Pin<&'a mut F>,
    flag: Arc<Flag>,
    /// `flag` as a waker, made once.
    waker: Waker,
    polled: bool,
    /// The task's waker that `flag.task` holds, until a wake takes it.
    registered: Option<Waker>,
}

struct Flag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<'a, F: Future> Woken<'a, F> {
    pub fn new(fut: Pin<&'a mut F>) -> Self {
        let flag = Arc::new(Flag {
            woken: AtomicBool::new(false),
            task: AtomicWaker::new(),
        });
        Woken {
            fut,
            waker: Waker::from(flag.clone()),
            flag,
            polled: false,
            registered: None,
        }
    }
}

impl<F: Future> Future for Woken<'_, F> {
    type Output = F::Output;

    // Inlined, and its rest not: the select around it polls it a few
    // times a request, nearly always to find it unwoken.
    #[inline(always)]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        // Unwoken, with this task's waker still held: nothing to do, and
        // no atomic read-modify-write (three a poll were 12 of an HTTP/1.1
        // request's 136 locked instructions, each a wait for the store
        // buffer to drain). A wake stores the flag before it takes the
        // waker, so a flag read clear means the waker is still held.
        if this.polled && !this.flag.woken.load(Ordering::Acquire) && this.holds_waker_of(cx) {
            return Poll::Pending;
        }
        this.poll_registered(cx)
    }
}

impl<F: Future> Woken<'_, F> {
    /// Whether a poll now could find the future ready: it was never
    /// polled, or was ready when last polled, or woke since. Otherwise it
    /// is still waiting, and what it waits for has not come.
    pub fn may_be_ready(&self) -> bool {
        !self.polled || self.flag.woken.load(Ordering::Acquire)
    }

    /// Whether the waker last registered is the one `cx` would wake.
    fn holds_waker_of(&self, cx: &Context<'_>) -> bool {
        self.registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
    }

    #[inline(never)]
    fn poll_registered(&mut self, cx: &mut Context<'_>) -> Poll<F::Output> {
        // First: a wake from here on reaches the task that polls now.
        self.flag.task.register(cx.waker());
        if !self.holds_waker_of(cx) {
            self.registered = Some(cx.waker().clone());
        }
        // Taken before the poll, so that a wake during it is not lost.
        if !self.flag.woken.swap(false, Ordering::AcqRel) {
            if self.polled {
                return Poll::Pending;
            }
        } else {
            // That wake took the waker just registered, or will take it.
            self.registered = None;
        }
        let out = self
            .fut
            .as_mut()
            .poll(&mut Context::from_waker(&self.waker));
        self.polled = out.is_pending();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::time::Duration;

    /// What a [`Probe`] reports: its polls, whether it is to be ready, and
    /// the waker it was last polled with (for the test to wake).
    #[derive(Default)]
    struct Seen {
        polls: Cell<u32>,
        ready: Cell<bool>,
        waker: std::cell::RefCell<Option<Waker>>,
    }

    impl Seen {
        fn wake(&self) {
            self.waker.borrow().as_ref().unwrap().wake_by_ref();
        }
    }

    /// Pending until `ready`, counting its polls.
    struct Probe<'a>(&'a Seen);

    impl Future for Probe<'_> {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let seen = self.0;
            seen.polls.set(seen.polls.get() + 1);
            *seen.waker.borrow_mut() = Some(cx.waker().clone());
            if seen.ready.get() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    /// A task's waker that counts its wakes.
    fn counting_waker() -> (Arc<Counting>, Waker) {
        let task = Arc::new(Counting::default());
        let waker = Waker::from(task.clone());
        (task, waker)
    }

    #[test]
    fn polled_first_then_only_after_its_own_wake() {
        let seen = Seen::default();
        let probe = std::pin::pin!(Probe(&seen));
        let mut woken = std::pin::pin!(Woken::new(probe));
        let (task, task_waker) = counting_waker();
        let mut cx = Context::from_waker(&task_waker);
        assert!(woken.as_mut().poll(&mut cx).is_pending());
        assert_eq!(seen.polls.get(), 1, "the first poll reaches it");
        for _ in 0..3 {
            assert!(woken.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(seen.polls.get(), 1, "the task's other wakes do not");
        seen.ready.set(true);
        seen.wake();
        assert_eq!(task.0.load(Ordering::SeqCst), 1, "its wake wakes the task");
        assert!(woken.as_mut().poll(&mut cx).is_ready());
        assert_eq!(seen.polls.get(), 2);
        // Ready, it is asked again each time, unwoken.
        assert!(woken.as_mut().poll(&mut cx).is_ready());
        assert_eq!(seen.polls.get(), 3);
    }

    #[test]
    fn may_be_ready_until_polled_and_again_once_woken_or_ready() {
        let seen = Seen::default();
        let probe = std::pin::pin!(Probe(&seen));
        let mut woken = std::pin::pin!(Woken::new(probe));
        let (_task, task_waker) = counting_waker();
        let mut cx = Context::from_waker(&task_waker);
        assert!(woken.may_be_ready(), "never polled");
        assert!(woken.as_mut().poll(&mut cx).is_pending());
        assert!(!woken.may_be_ready(), "waiting, unwoken");
        seen.wake();
        assert!(woken.may_be_ready(), "woken since");
        assert!(woken.as_mut().poll(&mut cx).is_pending());
        assert!(!woken.may_be_ready(), "waiting again");
        seen.ready.set(true);
        seen.wake();
        assert!(woken.as_mut().poll(&mut cx).is_ready());
        assert!(woken.may_be_ready(), "ready when last polled");
    }

    #[test]
    fn each_wake_reaches_the_task_also_after_the_first() {
        let seen = Seen::default();
        let probe = std::pin::pin!(Probe(&seen));
        let mut woken = std::pin::pin!(Woken::new(probe));
        let (task, task_waker) = counting_waker();
        let mut cx = Context::from_waker(&task_waker);
        assert!(woken.as_mut().poll(&mut cx).is_pending());
        // Woken and still pending, then woken again, three times: each
        // wake takes the task's waker, and the poll after it must give it
        // back, or the next wake reaches no one.
        for round in 1..=3 {
            seen.wake();
            assert_eq!(
                task.0.load(Ordering::SeqCst),
                round,
                "wake {round} reached the task"
            );
            assert!(woken.as_mut().poll(&mut cx).is_pending());
            assert_eq!(seen.polls.get(), 1 + round, "its wake's poll reached it");
            // The task's other wakes in between reach it not.
            assert!(woken.as_mut().poll(&mut cx).is_pending());
            assert_eq!(seen.polls.get(), 1 + round);
        }
        // A poll through another waker registers that one.
        let (other, other_waker) = counting_waker();
        assert!(
            woken
                .as_mut()
                .poll(&mut Context::from_waker(&other_waker))
                .is_pending()
        );
        seen.wake();
        assert_eq!(
            other.0.load(Ordering::SeqCst),
            1,
            "the newer waker was woken"
        );
        assert_eq!(task.0.load(Ordering::SeqCst), 3, "the older one not");
    }

    #[derive(Default)]
    struct Counting(std::sync::atomic::AtomicU32);

    impl Wake for Counting {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_still_fires_through_it() {
        let sleep = std::pin::pin!(tokio::time::sleep(Duration::from_secs(5)));
        let mut woken = Woken::new(sleep);
        let started = tokio::time::Instant::now();
        // Polled many times early by another branch's wakes, then done.
        let mut ticks = 0;
        loop {
            tokio::select! {
                () = &mut woken => break,
                () = tokio::time::sleep(Duration::from_millis(100)) => ticks += 1,
            }
        }
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert!(ticks >= 49, "{ticks}");
    }
}
