//! The heap on transparent huge pages (`[runtime] huge_pages`).
//!
//! With 1,000 client connections open, each connection's state (its task,
//! buffers, the request in flight) lies in its own part of the heap, and a
//! request touches more 4 KiB pages than the processor's TLB maps; under a
//! hypervisor every TLB miss is a walk of two page tables. 2 MiB pages
//! map the same memory with 512 times fewer entries.
//!
//! The kernel gives them to memory marked `MADV_HUGEPAGE` when its mode is
//! `madvise` (most distributions' default). glibc's malloc can mark its
//! heap itself (the tunable `glibc.malloc.hugetlb=1`), but glibc 2.36
//! decides whether to from a read of the mode file compared with a string
//! its buffer does not end, so it does in some starts and not in others.
//! geolb marks glibc's main heap (from which the one thread serves
//! everything with `worker_threads = 1`) once, at start-up, before
//! serving touches it:
//! - every growth of that heap at least [`RESERVE`], and one growth now,
//!   so that the memory serving will use is reserved before it is
//!   touched (a 2 MiB range already touched in 4 KiB pages stays so
//!   until the kernel's `khugepaged` gathers it);
//! - blocks under [`MMAP_THRESHOLD`] from that heap (setting the reserve
//!   turns off glibc's own raising of its 128 KiB threshold as large
//!   blocks are freed, which would otherwise put every block over 128 KiB,
//!   such as a compressor's state, in a mapping of its own each time);
//! - the heap's ranges marked.
//!
//! With more workers each allocates from an arena of its own, whose heap
//! glibc opens whole (the pad) as the worker first allocates; the worker
//! marks it as it starts ([`mark_thread_arena`]).
//!
//! Untouched reserve costs address space, not memory; touched memory is
//! resident in 2 MiB steps, and what is freed at a heap's top is kept for
//! the next blocks up to the reserve (glibc gives back only what exceeds
//! its pad; the setting is the process's, so every thread's arena keeps
//! as much).

/// Each growth of a heap (the main one, an arena's) reserves at least this
/// much.
pub const RESERVE: usize = 64 << 20;

/// Blocks at least this large are mapped apart, not taken from the heap.
pub const MMAP_THRESHOLD: usize = 4 << 20;

/// The size of the blocks allocated to make the heap grow: under glibc's
/// default threshold (128 KiB), so taken from the heap.
const GROWTH_BLOCK: usize = 64 << 10;

/// Marks the main thread's heap for huge pages as the module says; the
/// bytes marked, or why nothing was. Call it from the main thread before
/// serving starts.
pub fn mark_main_heap() -> Result<usize, String> {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return Err("not on Linux with glibc".into());
    }
    let mode = std::fs::read_to_string(MODE_FILE)
        .map_err(|e| format!("the kernel has no transparent huge pages ({MODE_FILE}: {e})"))?;
    if !kernel_gives_them(&mode) {
        return Err(format!(
            "the kernel has them off ({MODE_FILE}: {})",
            mode.trim()
        ));
    }
    glibc::reserve_ahead(RESERVE, MMAP_THRESHOLD)?;
    grow_heap();
    let maps = std::fs::read_to_string("/proc/self/maps")
        .map_err(|e| format!("cannot read /proc/self/maps: {e}"))?;
    let mut marked = 0;
    for (start, end) in heap_ranges(&maps) {
        glibc::advise_huge(start, end - start)?;
        marked += end - start;
    }
    Ok(marked)
}

/// glibc's heaps other than the main one (each arena of threads has its
/// own) are reservations of this size, aligned to it (its `HEAP_MAX_SIZE`
/// on 64-bit systems): a block's heap starts at its address rounded down.
const ARENA_HEAP: usize = 64 << 20;

/// Marks the heap of the arena the calling thread allocates from, when it
/// is one of glibc's thread arenas (the main heap is `mark_main_heap`'s);
/// for each worker thread as it starts, after `mark_main_heap` set the
/// pad, which makes glibc open each such heap whole. Once an arena: its
/// threads share it.
pub fn mark_thread_arena() {
    static MARKED: std::sync::Mutex<Vec<usize>> = std::sync::Mutex::new(Vec::new());
    let probe = Box::new(0u64);
    let at = &raw const *probe as usize;
    let base = at & !(ARENA_HEAP - 1);
    let mut marked = MARKED.lock().unwrap_or_else(|e| e.into_inner());
    if marked.contains(&base) {
        return;
    }
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    if !anonymous_throughout(&maps, base, base + ARENA_HEAP) {
        // The main heap, or not laid out as glibc lays out its arenas.
        return;
    }
    match glibc::advise_huge(base, ARENA_HEAP) {
        Ok(()) => {
            marked.push(base);
            tracing::debug!(base = %format_args!("{base:#x}"), "thread arena on transparent huge pages");
        }
        Err(why) => tracing::debug!("thread arena on 4 KiB pages: {why}"),
    }
}

/// Whether mappings without a name (anonymous memory, neither `[heap]`
/// nor `[stack]` nor a file) cover `start..end` without a gap.
fn anonymous_throughout(maps: &str, start: usize, end: usize) -> bool {
    let mut covered = start;
    for (from, to, name) in mappings(maps) {
        if to <= covered || from >= end {
            continue;
        }
        if from > covered || name.is_some() {
            return false;
        }
        covered = to;
        if covered >= end {
            return true;
        }
    }
    false
}

/// The mappings in a `/proc/self/maps` text: start, end, and the name
/// (`[heap]`, `[stack]`, a file) of those that have one; a line that does
/// not read as a mapping is passed over.
fn mappings(maps: &str) -> impl Iterator<Item = (usize, usize, Option<&str>)> {
    maps.lines().filter_map(|line| {
        let mut fields = line.split_whitespace();
        let (from, to) = fields.next()?.split_once('-')?;
        let from = usize::from_str_radix(from, 16).ok()?;
        let to = usize::from_str_radix(to, 16).ok()?;
        // Permissions, offset, device, inode; a sixth field names it.
        let name = fields.nth(4);
        (from < to).then_some((from, to, name))
    })
}

const MODE_FILE: &str = "/sys/kernel/mm/transparent_hugepage/enabled";

/// The mode file lists the choices with the one in force in brackets.
fn kernel_gives_them(mode: &str) -> bool {
    mode.contains("[always]") || mode.contains("[madvise]")
}

/// Allocates until the heap has grown once (by the reserve), then frees
/// it all: the freed blocks join the heap's top, which glibc keeps (it
/// trims only what exceeds the reserve).
fn grow_heap() {
    let before = glibc::heap_end();
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    // Bounded: the reserve is there after RESERVE / GROWTH_BLOCK blocks at
    // the latest, growth or not.
    for _ in 0..=RESERVE / GROWTH_BLOCK {
        blocks.push(Vec::with_capacity(GROWTH_BLOCK));
        if glibc::heap_end() != before {
            break;
        }
    }
}

/// The address ranges of `[heap]` in a `/proc/self/maps` text.
fn heap_ranges(maps: &str) -> Vec<(usize, usize)> {
    mappings(maps)
        .filter(|&(_, _, name)| name == Some("[heap]"))
        .map(|(start, end, _)| (start, end))
        .collect()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
mod glibc {
    use nix::libc;

    pub fn reserve_ahead(reserve: usize, mmap_threshold: usize) -> Result<(), String> {
        let (Ok(reserve), Ok(threshold)) = (
            libc::c_int::try_from(reserve),
            libc::c_int::try_from(mmap_threshold),
        ) else {
            return Err("sizes beyond mallopt's".into());
        };
        // SAFETY: mallopt takes glibc's arena lock itself; these two
        // settings change how the heap grows, not any block handed out.
        let set = unsafe {
            libc::mallopt(libc::M_TOP_PAD, reserve) == 1
                && libc::mallopt(libc::M_MMAP_THRESHOLD, threshold) == 1
        };
        set.then_some(()).ok_or_else(|| "mallopt refused".into())
    }

    pub fn heap_end() -> usize {
        // SAFETY: sbrk(0) moves nothing: it returns the current break.
        unsafe { libc::sbrk(0) as usize }
    }

    pub fn advise_huge(start: usize, len: usize) -> Result<(), String> {
        // SAFETY: MADV_HUGEPAGE changes how pages of the range are backed,
        // never their contents; the range is the process's own heap as
        // /proc/self/maps gave it.
        let r = unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_HUGEPAGE) };
        match r {
            0 => Ok(()),
            _ => Err(format!(
                "madvise(MADV_HUGEPAGE) of the heap: {}",
                std::io::Error::last_os_error()
            )),
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod glibc {
    pub fn reserve_ahead(_: usize, _: usize) -> Result<(), String> {
        Err("not on Linux with glibc".into())
    }

    pub fn heap_end() -> usize {
        0
    }

    pub fn advise_huge(_: usize, _: usize) -> Result<(), String> {
        Err("not on Linux with glibc".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_pages_are_asked_for_unless_the_kernel_has_them_off() {
        assert!(kernel_gives_them("always [madvise] never\n"));
        assert!(kernel_gives_them("[always] madvise never\n"));
        assert!(!kernel_gives_them("always madvise [never]\n"));
        assert!(!kernel_gives_them(""));
    }

    #[test]
    fn an_arena_is_marked_only_where_anonymous_memory_covers_it_whole() {
        let maps = "\
7f0e54000000-7f0e56000000 rw-p 00000000 00:00 0 \n\
7f0e56000000-7f0e58000000 ---p 00000000 00:00 0 \n\
7f0e58000000-7f0e59000000 rw-p 00000000 00:00 0 \n\
7f0e5a000000-7f0e5c000000 rw-p 00000000 00:00 0 \n\
7f0e5c000000-7f0e5c021000 r-xp 00000000 08:01 99 /usr/lib/x86_64-linux-gnu/libc.so.6
";
        // One reservation in two mappings (used, and the rest).
        assert!(anonymous_throughout(maps, 0x7f0e54000000, 0x7f0e58000000));
        // A gap in it.
        assert!(!anonymous_throughout(maps, 0x7f0e58000000, 0x7f0e5c000000));
        // A file in it.
        assert!(!anonymous_throughout(maps, 0x7f0e5a000000, 0x7f0e5d000000));
        // The heap, a stack: named, not an arena.
        let named = "55d0c1e4b000-55d0c5e8d000 rw-p 00000000 00:00 0   [heap]\n";
        assert!(!anonymous_throughout(named, 0x55d0c1e4b000, 0x55d0c1e8d000));
        assert!(!anonymous_throughout("", 0x1000, 0x2000));
    }

    #[test]
    fn the_heap_ranges_are_read_from_the_maps_and_nothing_else() {
        let maps = "\
55d0c0a00000-55d0c0a42000 r--p 00000000 08:01 123   /usr/local/bin/geolb
55d0c1e4b000-55d0c1e8d000 rw-p 00000000 00:00 0                          [heap]
55d0c1e8d000-55d0c5e8d000 rw-p 00000000 00:00 0                          [heap]
7ffd1c6e3000-7ffd1c704000 rw-p 00000000 00:00 0                          [stack]
zz-55d0c1e8d000 rw-p 00000000 00:00 0 [heap]
";
        assert_eq!(
            heap_ranges(maps),
            [
                (0x55d0c1e4b000, 0x55d0c1e8d000),
                (0x55d0c1e8d000, 0x55d0c5e8d000)
            ]
        );
    }
}
