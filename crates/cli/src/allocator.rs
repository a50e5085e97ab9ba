//! The C allocator's settings for the broker (glibc on Linux).
//!
//! glibc grows the heap of each thread's arena (every tokio worker has one) by exactly what
//! an allocation needs, a page at a time: each connection's memory (its task, session,
//! outbox) cost an `mprotect` system call and a page fault about every second connection
//! (1,725 `mprotect`s for 4,000 connects; 3 % of the broker's CPU while opening 10,000).
//! With `M_TOP_PAD` an arena grows 1 MiB at a time: the pages are still only resident once
//! written, so memory per idle connection does not change.
//!
//! Setting any of these turns off glibc's sliding thresholds (a freed `mmap`ed block raises
//! the `mmap` threshold to its size, and the trim threshold to twice that), after which
//! every buffer over 128 KiB (a busy fan-out's outbox or write buffer) would be `mmap`ed and
//! unmapped each time: the fan-out lost 5 % of its deliveries per CPU second that way. So the
//! two thresholds are set where the sliding ones end up in those runs.
//!
//! Nothing is changed when `GLIBC_TUNABLES` names a `glibc.malloc` setting: the operator's
//! choice wins.

/// How much an arena's heap grows beyond what an allocation needs (and keeps when trimmed).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TOP_PAD: i32 = 1024 * 1024;
/// Blocks from this size on are `mmap`ed (glibc's default starts at 128 KiB and slides up).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: i32 = 4 * 1024 * 1024;
/// Free memory at the top of a heap beyond this is given back to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: i32 = 8 * 1024 * 1024;

/// Applies the settings above; call it before the runtime starts its threads.
pub(crate) fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let operator = std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc"));
        if operator {
            return;
        }
        for (param, value) in [
            (libc::M_TOP_PAD, TOP_PAD),
            (libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        ] {
            // SAFETY: mallopt only sets allocator parameters; it takes the arena locks itself.
            // It returns 0 when it refuses a value, which leaves glibc's default: harmless.
            let _ = unsafe { libc::mallopt(param, value) };
        }
    }
}
