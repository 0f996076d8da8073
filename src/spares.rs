//! Boxes done with, kept on their thread for the next request's use: an
//! allocation and a free fewer a request. Several, not one: each of the
//! connections one wake-up finds with a message takes a box before the
//! first of them is done with its own (and answers are written after the
//! turn's reads: `proxy::after_woken_tasks`).

use std::cell::RefCell;
use std::thread::LocalKey;

/// At most `MAX` boxes of `T`, for a `thread_local!`.
// The boxes are what is kept: a request holds its box, not the Vec.
#[allow(clippy::vec_box)]
pub struct Spares<T, const MAX: usize>(RefCell<Vec<Box<T>>>);

impl<T, const MAX: usize> Spares<T, MAX> {
    pub const fn new() -> Self {
        Self(RefCell::new(Vec::new()))
    }

    /// A box kept in `spares` on this thread, if any.
    pub fn take_from(spares: &'static LocalKey<Self>) -> Option<Box<T>> {
        spares.try_with(Self::take).ok().flatten()
    }

    /// Keeps `spare` in `spares` on this thread, or frees it when `MAX` are
    /// kept already. Not `with`: a box given back while the thread's locals
    /// are being torn down (a request ended then) is just freed.
    pub fn keep_in(spares: &'static LocalKey<Self>, spare: Box<T>) {
        let _ = spares.try_with(|s| s.keep(spare));
    }

    fn take(&self) -> Option<Box<T>> {
        self.0.borrow_mut().pop()
    }

    fn keep(&self, spare: Box<T>) {
        let mut spares = self.0.borrow_mut();
        if spares.len() < MAX {
            spares.push(spare);
        }
    }
}

impl<T, const MAX: usize> Default for Spares<T, MAX> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_up_to_its_bound_and_hands_back_the_last_kept() {
        let spares: Spares<u32, 2> = Spares::new();
        for n in 1..=3 {
            spares.keep(Box::new(n));
        }
        assert_eq!(spares.take().as_deref(), Some(&2));
        assert_eq!(spares.take().as_deref(), Some(&1));
        assert_eq!(spares.take(), None);
    }
}
