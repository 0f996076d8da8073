//! The lock of what one client connection's tasks share: its socket's two
//! halves and its reader. The connection's own task takes it a few times
//! a request; another task seldom (a request body that hyper's HTTP/2
//! client polls, on a runtime of several threads), and no holder awaits.
//! Taken with one atomic swap and given back with a plain store, where
//! `std::sync::Mutex` makes two atomic read-modify-writes (its release
//! swaps, to learn of sleepers) and reads the panic count: 20 of an
//! HTTP/1.1 request's 136 locked instructions (`callgrind_locked.py`),
//! each a wait for the core's store buffer to drain.

/// Spins before the holder is given the CPU: a holder that runs holds it
/// for a few hundred instructions at most.
const SPINS: u32 = 64;

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

pub(crate) struct ConnLock<T>(try_lock::TryLock<T>);

/// Not `Send`, as `std::sync::MutexGuard`: a future that would hold it
/// across an await does not compile (another task of its thread would
/// spin on it forever).
pub(crate) struct Guard<'a, T> {
    locked: try_lock::Locked<'a, T>,
    _not_send: PhantomData<*const ()>,
}

impl<T> Deref for Guard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.locked
    }
}

impl<T> DerefMut for Guard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.locked
    }
}

impl<T> ConnLock<T> {
    pub(crate) const fn new(value: T) -> Self {
        ConnLock(try_lock::TryLock::new(value))
    }

    pub(crate) fn lock(&self) -> Guard<'_, T> {
        loop {
            for _ in 0..SPINS {
                if let Some(locked) = self.0.try_lock() {
                    return Guard {
                        locked,
                        _not_send: PhantomData,
                    };
                }
                std::hint::spin_loop();
            }
            // Its holder's thread was taken off its CPU: let it run.
            std::thread::yield_now();
        }
    }

    pub(crate) fn into_inner(self) -> T {
        self.0.into_inner()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn threads_take_turns_and_lose_no_update() {
        let count = Arc::new(ConnLock::new(0u64));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let count = count.clone();
                std::thread::spawn(move || {
                    for _ in 0..100_000 {
                        *count.lock() += 1;
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let count = Arc::into_inner(count).unwrap();
        assert_eq!(count.into_inner(), 400_000);
    }

    #[test]
    fn a_guard_given_back_lets_the_next_take_it() {
        let lock = ConnLock::new(vec![1]);
        lock.lock().push(2);
        assert_eq!(*lock.lock(), [1, 2]);
    }
}
