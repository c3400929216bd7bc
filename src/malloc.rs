//! The process's heap policy: keep freed memory for reuse instead of handing it back to the
//! kernel after every large tensor.
//!
//! Why: libtorch allocates each CPU tensor with `malloc`, and glibc serves a block above its
//! mmap threshold (at most 32 MB) with a fresh `mmap` that `free` unmaps again. At the 392-px
//! default one training batch's tokens are `32 × 785 × 384` f32, 38.6 MB, so every such tensor of
//! every step came as new pages, each faulted in and zeroed by the kernel: 86 million page faults
//! and 159 s of system time in a training stage on MTD whose 50 epochs took 189 s (2-core EPYC),
//! and epochs that took anywhere from 105 to 190 s for the same work. With mmap off and the heap's
//! top kept, the same epochs took 103–112 s with 0.36 million faults, the same answer, and 0.2 GB
//! more peak memory; the detector's maps took 0.8× the time (docs/performance.md, "Page
//! faults").
//!
//! How: [`tune`] (called once by the command line, before any work) sets glibc's `M_MMAP_MAX` to 0
//! and `M_TRIM_THRESHOLD` to [`KEEP_TOP`]. Freed blocks then stay in the heap and serve the next
//! step's tensors of the same size; the peak is still that of the live tensors plus the heap's
//! fragmentation, and the memory goes back to the system when the process ends. (A block over
//! 64 MB asked for off the main thread is still mapped apart: glibc's thread heaps are no larger,
//! and it maps such a block whatever `M_MMAP_MAX` says. The training step allocates on the main
//! thread.)
//!
//! A user who sets glibc's malloc tunables (`GLIBC_TUNABLES` with a `glibc.malloc.` entry, or a
//! glibc `MALLOC_…` variable) keeps them: [`tune`] then changes nothing. Off glibc (musl, macOS)
//! it does nothing either. Hand-written: the two `mallopt` calls are all of it, and no crate
//! wraps them.

/// Bytes of free memory the heap's top may hold before glibc trims it (2 GB): above what the
/// training steps free at once, so that the heap does not shrink and grow again at every step.
/// 256 MB was not: a whole `discover` on MTD then faulted 39 million pages again (1.2 million
/// with 2 GB), although a training stage run alone did not; in `detect` it held 0.1 GB less.
pub const KEEP_TOP: i32 = 2_000_000_000;

/// What [`tune`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeapPolicy {
    /// Large blocks come from the heap, which keeps freed memory for reuse.
    Kept,
    /// The user's own malloc settings are left in force.
    UserSettings,
    /// Not glibc, or glibc refused a setting: its defaults stay.
    Default,
}

/// Whether the environment (`var`: a lookup such as `std::env::var`) holds the user's own glibc
/// malloc settings.
pub fn user_settings(var: impl Fn(&str) -> Option<String>) -> bool {
    const MALLOC_VARS: &[&str] = &[
        "MALLOC_ARENA_MAX",
        "MALLOC_ARENA_TEST",
        "MALLOC_MMAP_MAX_",
        "MALLOC_MMAP_THRESHOLD_",
        "MALLOC_TOP_PAD_",
        "MALLOC_TRIM_THRESHOLD_",
    ];
    var("GLIBC_TUNABLES").is_some_and(|t| t.contains("glibc.malloc."))
        || MALLOC_VARS.iter().any(|v| var(v).is_some())
}

/// Sets the heap policy of this process (see the module doc); call it once, early, from the
/// binary's `main`. A library user keeps whatever policy its own program chose.
pub fn tune() -> HeapPolicy {
    if user_settings(|k| std::env::var(k).ok()) {
        return HeapPolicy::UserSettings;
    }
    set_glibc()
}

/// Hands the heap's free pages back to the system (glibc's `malloc_trim`), between stages of
/// one process: without it the pages a finished stage freed (the detector's features, its
/// memory bank) stay resident, and the next stage's peak adds to them (`discover` on MTD fitted
/// peaked at 3.0 GB; its maps stage alone and its train stage alone peak at 2.1 GB each). With
/// [`tune`]'s policy the heap keeps even more of what it freed, so this matters more. Nothing
/// off glibc.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory of the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_glibc() -> HeapPolicy {
    // SAFETY: `mallopt` only changes allocator parameters, under glibc's arena lock; blocks
    // allocated before keep working under the new ones.
    let ok = unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, KEEP_TOP) == 1
            && libc::mallopt(libc::M_MMAP_MAX, 0) == 1
    };
    match ok {
        true => HeapPolicy::Kept,
        false => HeapPolicy::Default,
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_glibc() -> HeapPolicy {
    HeapPolicy::Default
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn the_users_own_malloc_settings_are_recognised() {
        assert!(!user_settings(env(&[])));
        assert!(!user_settings(env(&[(
            "GLIBC_TUNABLES",
            "glibc.rtld.nns=2"
        )])));
        assert!(!user_settings(env(&[("MALLOC_CHECK", "3")])));
        assert!(user_settings(env(&[(
            "GLIBC_TUNABLES",
            "glibc.rtld.nns=2:glibc.malloc.arena_max=2"
        )])));
        assert!(user_settings(env(&[("MALLOC_ARENA_MAX", "2")])));
        assert!(user_settings(env(&[("MALLOC_MMAP_MAX_", "0")])));
        assert!(user_settings(env(&[("MALLOC_TRIM_THRESHOLD_", "1")])));
    }

    /// After [`tune`], a block above glibc's largest mmap threshold (32 MB) comes from a heap,
    /// where freeing it keeps it for reuse; glibc's default maps it apart (`hblkhd`: the bytes
    /// in blocks mapped apart).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_large_block_comes_from_the_heap_after_tune() {
        if user_settings(|k| std::env::var(k).ok()) {
            return; // the test runner's own malloc settings are in force
        }
        assert_eq!(tune(), HeapPolicy::Kept);
        let size = 48 << 20;
        // SAFETY: a malloc / free pair of a block this test owns; mallinfo2 only reads counters.
        let grown = || unsafe {
            let before = libc::mallinfo2().hblkhd;
            let a = std::hint::black_box(libc::malloc(size));
            assert!(!a.is_null());
            let during = libc::mallinfo2().hblkhd;
            libc::free(a);
            (before, during)
        };
        // The counter is the whole process's: a block another test thread maps between the two
        // reads could show up here, so a few tries; without the policy every try grows by 48 MB.
        let tries: Vec<(usize, usize)> = (0..5).map(|_| grown()).collect();
        assert!(
            tries.iter().any(|&(before, during)| during < before + size),
            "the 48 MB block was mapped apart every time (bytes in mapped blocks before -> during: {tries:?})"
        );
    }
}
