//! One task per HTTP/2 backend connection, not four kinds.
//!
//! hyper's HTTP/2 client runs a connection as tasks it spawns through its
//! executor: the h2 connection, its dispatch (handed to us to spawn), and
//! one task per request that waits for the response and passes it back.
//! So a request woke four tasks in turn (the client's, the dispatch, the
//! connection's, the request's own waiter), each a trip through tokio's
//! scheduler, and spawned one. [`OneTask`] is the executor hyper gets
//! instead: what hyper spawns is kept in [`Driver`], the one task that
//! also polls the dispatch, so that all of a backend connection's work is
//! done in one task's turns and a request costs no spawn.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use futures_util::stream::{FuturesUnordered, Stream};

type Spawned = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The executor given to hyper's HTTP/2 client: futures it "spawns" wait
/// here for the connection's [`Driver`].
#[derive(Clone, Default)]
pub struct OneTask {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// Spawned since the driver last looked.
    new: Mutex<Vec<Spawned>>,
    /// The driver's task, woken when something is spawned.
    driver: AtomicWaker,
    /// The driver is being polled and looks at `new` before it returns:
    /// what its own futures spawn needs no wake-up (which would poll it
    /// once more for nothing).
    polling: AtomicBool,
}

impl<F> hyper::rt::Executor<F> for OneTask
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        // hyper spawns one type for all it spawns, sized for its largest,
        // the connection (1,464 bytes, 2,536 over TLS), also for each
        // request's small waiter. Boxed so, it went past glibc's thread
        // cache (`malloc` 467 instructions a request) and was copied
        // twice (344). In a block of the thread's shelf it is copied once
        // and the box holds a pointer: 46,873 to 46,500 instructions a
        // request (`BACKEND_PROTO=h2c benches/instructions.sh`).
        let fut = crate::spares::Recycled::pin(fut);
        crate::locked(&self.shared.new).push(Box::pin(fut));
        if !self.shared.polling.load(Ordering::SeqCst) {
            self.shared.driver.wake();
        }
    }
}

impl OneTask {
    /// The task that runs `dispatch` (hyper's connection future) and all
    /// that hyper spawns for it; it ends when they all have.
    pub fn driver<D: Future>(&self, dispatch: D) -> Driver<D> {
        Driver {
            shared: self.shared.clone(),
            dispatch: Some(Box::pin(dispatch)),
            ended: None,
            running: FuturesUnordered::new(),
        }
    }
}

/// See [`OneTask::driver`].
pub struct Driver<D: Future> {
    shared: Arc<Shared>,
    /// None once it has ended (dropped then: that closes the connection's
    /// request channel, so its senders see it closed).
    dispatch: Option<Pin<Box<D>>>,
    /// What the dispatch ended with, until the driver ends with it.
    ended: Option<D::Output>,
    running: FuturesUnordered<Spawned>,
}

/// No field is pinned in place: the dispatch is pinned in its box, and
/// what it ended with is only moved out.
impl<D: Future> Unpin for Driver<D> {}

impl<D: Future> Future for Driver<D> {
    /// What the dispatch ended with.
    type Output = D::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        this.shared.driver.register(cx.waker());
        this.shared.polling.store(true, Ordering::SeqCst);
        if let Some(dispatch) = &mut this.dispatch
            && let Poll::Ready(ended) = dispatch.as_mut().poll(cx)
        {
            this.dispatch = None;
            this.ended = Some(ended);
        }
        loop {
            let new = std::mem::take(&mut *crate::locked(&this.shared.new));
            this.running.extend(new);
            // Each future woken (and each new one) polled once.
            while let Poll::Ready(Some(())) = Pin::new(&mut this.running).poll_next(cx) {}
            this.shared.polling.store(false, Ordering::SeqCst);
            // Spawned while polling (by these futures, or another thread
            // that saw `polling` set): not woken for, so polled now.
            if crate::locked(&this.shared.new).is_empty() {
                break;
            }
            this.shared.polling.store(true, Ordering::SeqCst);
        }
        if this.running.is_empty()
            && let Some(ended) = this.ended.take()
        {
            return Poll::Ready(ended);
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    /// Futures spawned before the driver runs, by its own futures while it
    /// polls, and from another thread all run; the driver ends only when
    /// the dispatch and every one of them have.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn everything_spawned_runs_and_the_driver_ends_after_it() {
        let exec = OneTask::default();
        let ran = Arc::new(AtomicUsize::new(0));
        let (end_dispatch, dispatch_ended) = tokio::sync::oneshot::channel::<()>();
        let (release, released) = tokio::sync::oneshot::channel::<()>();

        // Before the driver exists (hyper spawns the connection so).
        let (counter, nested) = (ran.clone(), exec.clone());
        exec.execute(async move {
            counter.fetch_add(1, Ordering::SeqCst);
            // Spawned while the driver polls: no wake-up needed.
            let counter = counter.clone();
            nested.execute(async move {
                counter.fetch_add(1, Ordering::SeqCst);
            });
        });
        // One that waits past the dispatch's end.
        let counter = ran.clone();
        exec.execute(async move {
            let _ = released.await;
            counter.fetch_add(1, Ordering::SeqCst);
        });

        let dispatch = Box::pin(async move {
            let _ = dispatch_ended.await;
            Err::<(), _>("gone")
        });
        let driver = tokio::spawn(exec.driver(dispatch));
        let ran_to = |n: usize, what: &'static str| {
            let ran = ran.clone();
            async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                while ran.load(Ordering::SeqCst) < n {
                    assert!(tokio::time::Instant::now() < deadline, "{what} did not run");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        ran_to(2, "a future spawned while the driver polled").await;

        // From another thread, while the driver waits for nothing else.
        let (counter, other) = (ran.clone(), exec.clone());
        std::thread::spawn(move || {
            other.execute(async move {
                counter.fetch_add(1, Ordering::SeqCst);
            });
        })
        .join()
        .unwrap();
        ran_to(3, "a future spawned from another thread").await;
        end_dispatch.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!driver.is_finished(), "ended with a future still running");
        release.send(()).unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(10), driver)
            .await
            .expect("the driver ends")
            .unwrap();
        assert_eq!(ended, Err("gone"));
        assert_eq!(ran.load(Ordering::SeqCst), 4);
    }
}
