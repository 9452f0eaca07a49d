//! Giving freed memory back to the OS after tenant trees passivate.
//!
//! A tenant tree's actors, mailboxes and caches are many small allocations made
//! on whichever tokio worker ran them. When thousands of trees stop, glibc's
//! allocator keeps the freed chunks in its per-thread arenas: they are free for
//! the process, but still resident, so a node that passivated its tenants showed
//! the same RSS as one holding them (BENCHMARKS.md, G). `malloc_trim` hands the
//! free pages of every arena back. The NodeSupervisor calls it [`DELAY`] after a
//! tree stops, once however many trees stop meanwhile, on a blocking thread: it
//! walks the heaps under their locks.

use std::time::Duration;

/// How long after a tree stops the memory is released: trees passivate in waves
/// (idle timeouts started together end together), and one trim covers a wave.
pub const DELAY: Duration = Duration::from_secs(1);

/// Returns the allocator's free pages to the OS. True if any memory was released.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release_now() -> bool {
    // SAFETY: malloc_trim(3) only takes the allocator's own locks and touches no
    // memory of ours; any thread may call it at any time.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Other allocators (musl's, macOS's) return free pages on their own.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_now() -> bool {
    false
}

/// Resident memory of this process in bytes (Linux; 0 elsewhere).
pub fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()))
        .map_or(0, |pages| pages * page_size())
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn page_size() -> u64 {
    // SAFETY: sysconf reads a constant of the system.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

#[cfg(not(target_os = "linux"))]
fn page_size() -> u64 {
    4096
}
