//! A future whose output stays where the future ran.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

pin_project_lite::pin_project! {
    /// A future, then in the same place its output. A request's answer
    /// (the response, 456 bytes) is built in the box its future runs in,
    /// whose memory that future has just used; moved out, it went into
    /// the connection's task, which with many connections open is cold
    /// by the time the connection's next request comes (188 to 179 misses
    /// of the L2 cache a request with 1,000 connections, one run each of
    /// `CACHE=1 CACHE_LL=1048576,8,64 CONNS=1000 benches/instructions.sh`).
    #[project = Place]
    pub enum Settled<F: Future> {
        Running { #[pin] future: F },
        Done { output: F::Output },
    }
}

impl<F: Future> Settled<F> {
    pub fn new(future: F) -> Self {
        Settled::Running { future }
    }

    /// The output, once [`Future::poll`] has said it is there.
    pub fn output(self: Pin<&mut Self>) -> Option<&mut F::Output> {
        match self.project() {
            Place::Done { output } => Some(output),
            Place::Running { .. } => None,
        }
    }
}

impl<F: Future> Future for Settled<F> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let output = match self.as_mut().project() {
            Place::Running { future } => ready!(future.poll(cx)),
            Place::Done { .. } => return Poll::Ready(()),
        };
        // Drops the finished future in place, then writes its output there.
        self.set(Settled::Done { output });
        Poll::Ready(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_output_is_kept_where_the_future_ran() {
        let (tx, rx) = tokio::sync::oneshot::channel::<String>();
        let mut settled = Box::pin(Settled::new(async move { rx.await.unwrap_or_default() }));
        assert!(settled.as_mut().output().is_none());
        tx.send("answer".into()).unwrap();
        settled.as_mut().await;
        assert_eq!(
            settled.as_mut().output().map(|s| s.as_str()),
            Some("answer")
        );
        // Polled again, it stays done.
        settled.as_mut().await;
        assert_eq!(settled.as_mut().output().map(|s| s.len()), Some(6));
    }
}
