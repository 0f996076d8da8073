//! Boxes done with, kept on their thread for the next request's use: an
//! allocation and a free fewer a request. Several, not one: each of the
//! connections one wake-up finds with a message takes a box before the
//! first of them is done with its own (and answers are written after the
//! turn's reads: `proxy::after_woken_tasks`).
//!
//! [`Recycled`] does the same for a value whose type has no thread-local
//! of its own (a generic future): its memory goes back to a thread's
//! shelf of blocks, taken again by the next value of the same layout.

use std::alloc::{Layout, alloc, dealloc, handle_alloc_error};
use std::cell::RefCell;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::ptr::NonNull;
use std::thread::LocalKey;

/// How many of a kind a thread keeps, for a `MAX` below or the shelf
/// of [`Recycled`]: about as many as it has requests open with 1,000
/// connections. A spare is taken when a request starts and kept when
/// it ends, and the count of those open swings by hundreds from one turn
/// of the event loop to the next: with 128 or 256 kept, the spares ran
/// out and over by turns, and with 1,000 connections 0.41 of a request's
/// blocks and 0.28 of its read fields were allocated anew
/// (`CACHE=1 CONNS=1000 benches/instructions.sh`, then
/// `benches/callgrind_calls.py sites ... '^malloc$'`).
pub const KEPT_MAX: usize = 1024;

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

/// A value in memory of its own, as in a `Box`, that goes back to its
/// thread's shelf when the value is dropped, for the next value of the
/// same layout. Made for a request's routing and forwarding future (2.5
/// KB): glibc's thread cache keeps blocks of at most 1 KiB, and a larger
/// one's `malloc` and `free` cost 357 instructions a request with 8
/// connections, 441 with 1,000 (`benches/callgrind_calls.py sites` on a
/// `benches/instructions.sh` run). The last block of a layout given back
/// is the first taken: the memory a request has just let go, still in
/// the cache.
pub struct Recycled<T> {
    value: NonNull<T>,
    owns: PhantomData<T>,
}

// SAFETY: a `Recycled<T>` owns its `T` as a `Box<T>` does; its block is
// plain memory, whichever thread's shelf it goes back to.
#[allow(unsafe_code)]
unsafe impl<T: Send> Send for Recycled<T> {}
// SAFETY: as for `Send`: shared access is to the `T` alone.
#[allow(unsafe_code)]
unsafe impl<T: Sync> Sync for Recycled<T> {}

impl<T> Recycled<T> {
    /// The value `make` returns, written into its block and pinned there.
    /// Unlike `proxy::boxed_in_place`, the optimizer does not build it in
    /// the block: it cannot tell a block taken from the shelf from memory
    /// `make` reads (`malloc`'s result it can), so the value's filled part
    /// is copied in once (64 instructions a request; written through a
    /// `&mut MaybeUninit` it was the same, by `benches/callgrind_calls.py
    /// sites ... '^__memcpy_avx_unaligned_erms$'`).
    #[inline(always)]
    #[allow(unsafe_code)]
    pub fn pin_in_place(make: impl FnOnce() -> T) -> Pin<Recycled<T>> {
        let value = take_block(Layout::new::<T>()).cast::<T>();
        // SAFETY: the block has `T`'s layout and nothing in it yet.
        unsafe { value.as_ptr().write(make()) };
        let recycled = Recycled {
            value,
            owns: PhantomData,
        };
        // SAFETY: the value is never moved out of its block: `Recycled`
        // lends it only by reference and drops it where it stands.
        unsafe { Pin::new_unchecked(recycled) }
    }

    /// `value`, moved into a block and pinned there. For a value made
    /// already: taken in by a closure first, it was copied twice. Not
    /// what `pin_in_place` calls: `pin(make())` makes the value before
    /// its block is taken, and then copies it whole (285 instructions a
    /// request more on HTTP/1.1, 400 on HTTP/2, by
    /// `benches/instructions.sh`).
    #[inline(always)]
    #[allow(unsafe_code)]
    pub fn pin(value: T) -> Pin<Recycled<T>> {
        let block = take_block(Layout::new::<T>()).cast::<T>();
        // SAFETY: the block has `T`'s layout and nothing in it yet.
        unsafe { block.as_ptr().write(value) };
        let recycled = Recycled {
            value: block,
            owns: PhantomData,
        };
        // SAFETY: as in `pin_in_place`.
        unsafe { Pin::new_unchecked(recycled) }
    }
}

impl<T> Deref for Recycled<T> {
    type Target = T;

    #[allow(unsafe_code)]
    fn deref(&self) -> &T {
        // SAFETY: the value is alive until `drop`, and shared through `&self`.
        unsafe { self.value.as_ref() }
    }
}

impl<T> DerefMut for Recycled<T> {
    #[allow(unsafe_code)]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, borrowed through `&mut self`.
        unsafe { self.value.as_mut() }
    }
}

impl<T> Drop for Recycled<T> {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: the value was written in `pin_in_place` and is dropped
        // once, here; its block is not touched again but to be shelved.
        unsafe { self.value.as_ptr().drop_in_place() };
        give_block(self.value.cast(), Layout::new::<T>());
    }
}

/// Blocks given back, a stack for each layout. One stack for all took a
/// block only when the last one given back had the layout asked for:
/// blocks of two layouts given back by turns (an HTTP/1 request's future
/// and an HTTP/2 stream's, on one thread) then met the wrong layout on
/// top and were allocated anew, a `malloc` and a `free` a request.
struct Shelf(Vec<(Layout, Vec<NonNull<u8>>)>);

impl Shelf {
    /// The stack of `layout`'s blocks; few layouts are ever shelved.
    fn stack(&mut self, layout: Layout) -> &mut Vec<NonNull<u8>> {
        let at = match self.0.iter().position(|(kept, _)| *kept == layout) {
            Some(at) => at,
            None => {
                self.0.push((layout, Vec::new()));
                self.0.len() - 1
            }
        };
        &mut self.0[at].1
    }
}

impl Drop for Shelf {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        for (layout, blocks) in self.0.drain(..) {
            for block in blocks {
                // SAFETY: allocated by `take_block` with this layout and
                // owned by the shelf alone.
                unsafe { dealloc(block.as_ptr(), layout) };
            }
        }
    }
}

thread_local! {
    static SHELF: RefCell<Shelf> = const { RefCell::new(Shelf(Vec::new())) };
}

/// A block for `layout`: the last one of that layout shelved on this
/// thread, else a new one.
#[allow(unsafe_code)]
fn take_block(layout: Layout) -> NonNull<u8> {
    if layout.size() == 0 {
        // As `Box` does: an address of the alignment, never dereferenced.
        let aligned = std::ptr::without_provenance_mut(layout.align());
        return NonNull::new(aligned).expect("an alignment is not zero");
    }
    let shelved = SHELF
        .try_with(|shelf| shelf.try_borrow_mut().ok()?.stack(layout).pop())
        .ok()
        .flatten();
    shelved.unwrap_or_else(|| {
        // SAFETY: `layout` is not zero-sized.
        let block = unsafe { alloc(layout) };
        NonNull::new(block).unwrap_or_else(|| handle_alloc_error(layout))
    })
}

/// Shelves `block` (of `layout`, from `take_block`) on this thread, or
/// frees it when its layout's stack is full or the thread's locals are
/// being torn down.
#[allow(unsafe_code)]
fn give_block(block: NonNull<u8>, layout: Layout) {
    if layout.size() == 0 {
        return;
    }
    let shelved = SHELF
        .try_with(|shelf| {
            let Ok(mut shelf) = shelf.try_borrow_mut() else {
                return false;
            };
            let stack = shelf.stack(layout);
            // 2.5 MB at most for requests' blocks of 2.5 KB.
            if stack.len() >= KEPT_MAX {
                return false;
            }
            stack.push(block);
            true
        })
        .unwrap_or(false);
    if !shelved {
        // SAFETY: allocated by `take_block` with this layout, and given
        // back by its one owner.
        unsafe { dealloc(block.as_ptr(), layout) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shelved() -> usize {
        SHELF.with(|s| s.borrow().0.iter().map(|(_, blocks)| blocks.len()).sum())
    }

    #[test]
    fn a_block_goes_back_to_the_shelf_and_is_taken_again_by_the_same_layout() {
        let first = Recycled::pin_in_place(|| [7u64; 40]);
        let at = &*first as *const [u64; 40] as usize;
        let before = shelved();
        drop(first);
        assert_eq!(shelved(), before + 1);
        // Another layout does not take it.
        let other = Recycled::pin_in_place(|| [1u8; 3]);
        assert_eq!(shelved(), before + 1);
        let second = Recycled::pin_in_place(|| [9u64; 40]);
        assert_eq!(&*second as *const [u64; 40] as usize, at);
        assert_eq!(second[39], 9);
        assert_eq!(other[2], 1);
        assert_eq!(shelved(), before);
        // A value made already goes the same way.
        drop(second);
        let made = [5u64; 40];
        let third = Recycled::pin(made);
        assert_eq!(&*third as *const [u64; 40] as usize, at);
        assert_eq!(third[39], 5);
    }

    #[test]
    fn a_block_is_taken_again_under_blocks_of_other_layouts_given_back_after_it() {
        let first = Recycled::pin_in_place(|| [7u64; 40]);
        let at = &*first as *const [u64; 40] as usize;
        let other = Recycled::pin_in_place(|| [1u8; 3]);
        drop(first);
        drop(other);
        // A block of another layout (an HTTP/2 stream's future beside
        // HTTP/1 requests') given back after it: the next value of the
        // first layout still takes the one on its own stack.
        let second = Recycled::pin_in_place(|| [9u64; 40]);
        assert_eq!(&*second as *const [u64; 40] as usize, at);
    }

    #[test]
    fn the_value_is_dropped_once_and_the_shelf_stays_bounded() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static DROPS: AtomicUsize = AtomicUsize::new(0);
        struct Counted([u8; 100]);
        impl Drop for Counted {
            fn drop(&mut self) {
                DROPS.fetch_add(usize::from(self.0[99]), Ordering::Relaxed);
            }
        }
        // Half made in place, half made first and moved in.
        let many: Vec<_> = (0..KEPT_MAX + 10)
            .map(|n| match n % 2 {
                0 => Recycled::pin_in_place(|| Counted([1; 100])),
                _ => Recycled::pin(Counted([1; 100])),
            })
            .collect();
        drop(many);
        assert_eq!(DROPS.load(Ordering::Relaxed), KEPT_MAX + 10);
        assert!(shelved() <= KEPT_MAX);
    }

    #[test]
    fn a_zero_sized_value_takes_no_block() {
        let before = shelved();
        let unit = Recycled::pin_in_place(|| ());
        drop(unit);
        assert_eq!(shelved(), before);
    }

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
