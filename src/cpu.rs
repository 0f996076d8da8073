//! A binary built for a newer x86-64 level than the baseline (`RUSTFLAGS="-C
//! target-cpu=x86-64-v3"`, README "Building for the CPU") uses instructions
//! an older CPU lacks. Started on one, it names the first such feature and
//! exits 1, rather than dying of `SIGILL` wherever the first such
//! instruction happens to be.
//!
//! The check has to run before any code compiled for those features: with
//! AVX on, the compiler encodes even 16-byte moves in AVX's form. So it is
//! the first call of `main`, makes no aggregate of its own (each test is a
//! CPUID and a branch), and writes its message from static bytes. Checked
//! by hand under `qemu-x86_64 -cpu Nehalem` (README "Building for the CPU").

/// Exits 1 with a message on stderr when this CPU lacks a feature this
/// binary was compiled to use; returns at once for a baseline build.
#[inline(never)]
pub fn refuse_a_cpu_without_what_this_build_uses() {
    #[cfg(target_arch = "x86_64")]
    {
        // The standard library's `is_x86_feature_detected!` answers true
        // for a feature the build has on, without asking the CPU: CPUID is
        // read here. (leaf, register: 0 EBX, 1 ECX, bit) of each feature
        // that a level from x86-64-v2 to v4 adds (Intel SDM vol. 2A, CPUID).
        macro_rules! require {
            ($(($name:tt, $leaf:expr, $reg:expr, $bit:expr)),* $(,)?) => {$(
                if cfg!(target_feature = $name) && !has($leaf, $reg, $bit) {
                    refuse($name);
                }
            )*};
        }
        require!(
            ("sse3", 1, 1, 0),
            ("ssse3", 1, 1, 9),
            ("fma", 1, 1, 12),
            ("cmpxchg16b", 1, 1, 13),
            ("sse4.1", 1, 1, 19),
            ("sse4.2", 1, 1, 20),
            ("movbe", 1, 1, 22),
            ("popcnt", 1, 1, 23),
            ("xsave", 1, 1, 26),
            ("avx", 1, 1, 28),
            ("f16c", 1, 1, 29),
            ("bmi1", 7, 0, 3),
            ("avx2", 7, 0, 5),
            ("bmi2", 7, 0, 8),
            ("avx512f", 7, 0, 16),
            ("avx512dq", 7, 0, 17),
            ("avx512cd", 7, 0, 28),
            ("avx512bw", 7, 0, 30),
            ("avx512vl", 7, 0, 31),
            ("lzcnt", 0x8000_0001, 1, 5),
        );
    }
}

/// Whether CPUID's `leaf` (sub-leaf 0) sets `bit` of EBX (`reg` 0) or ECX.
#[cfg(target_arch = "x86_64")]
fn has(leaf: u32, reg: u8, bit: u32) -> bool {
    // Marked for the toolchains where `__cpuid` is still an unsafe fn
    // (newer ones made it safe). CPUID is on every x86-64 CPU.
    #[allow(unsafe_code, unused_unsafe)]
    let (max, answer) = unsafe {
        use std::arch::x86_64::{__cpuid, __cpuid_count};
        (__cpuid(leaf & 0x8000_0000).eax, __cpuid_count(leaf, 0))
    };
    let word = if reg == 0 { answer.ebx } else { answer.ecx };
    leaf <= max && word & (1 << bit) != 0
}

#[cfg(target_arch = "x86_64")]
#[cold]
#[inline(never)]
fn refuse(feature: &'static str) -> ! {
    use std::io::Write as _;
    let mut err = std::io::stderr();
    let _ = err.write_all(b"geolb: this binary was built for a CPU with ");
    let _ = err.write_all(feature.as_bytes());
    let _ = err.write_all(
        b", which this CPU lacks: build geolb without RUSTFLAGS=\"-C target-cpu=...\" \
          (or with a level this CPU has)\n",
    );
    std::process::exit(1)
}
