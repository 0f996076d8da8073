//! The timer of the backends' answers to a connection's requests: one
//! for all of an HTTP/1 connection's requests (an HTTP/2 stream has its
//! own), set for each request's deadline as `http::before` says.

use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::time::Sleep;

use crate::stamp::Stamp;

pin_project_lite::pin_project! {
    /// The timer of the backends' answers to a connection's requests (see
    /// `http::before`; an HTTP/2 stream has its own), with the waker it holds.
    pub(super) struct AnswerTimer {
        #[pin]
        sleep: Sleep,
        // The waker the sleep was last polled with, until it fires (firing
        // takes it): polled again with the same one, a sleep not yet fired
        // changes nothing and is not polled (17,246 -> 17,142 instructions
        // a request, `benches/instructions.sh`).
        holds: Option<Waker>,
        // The sleep's deadline as a stamp: compared with a request's at
        // each request, converted for the sleep only when it moves.
        due: Stamp,
    }
}

impl AnswerTimer {
    /// `sleep` set past every request's deadline (`before` brings it in).
    pub(super) fn new(sleep: Sleep) -> Self {
        AnswerTimer {
            sleep,
            holds: None,
            due: Stamp::NEVER,
        }
    }

    pub(super) fn due(&self) -> Stamp {
        self.due
    }

    /// Set again, it keeps its waker (tokio's entry keeps it, and fires at
    /// once, waking it, a deadline gone by).
    pub(super) fn reset(self: Pin<&mut Self>, due: Stamp) {
        let this = self.project();
        *this.due = due;
        this.sleep.reset(due.instant());
    }

    pub(super) fn poll_fired(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let holds_it = this.holds.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
        if holds_it && !this.sleep.is_elapsed() {
            return Poll::Pending;
        }
        match this.sleep.poll(cx) {
            Poll::Ready(()) => {
                *this.holds = None;
                Poll::Ready(())
            }
            Poll::Pending => {
                if !holds_it {
                    *this.holds = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}
