//! Giving freed memory back to the OS after tenant trees passivate.
//!
//! A tenant tree's actors, mailboxes and caches are many small allocations made
//! on whichever tokio worker ran them. When thousands of trees stop, the
//! allocator keeps the freed pages: they are free for the process, but still
//! resident, so a node that passivated its tenants showed the same RSS as one
//! holding them (BENCHMARKS.md, G). Every binary built on `canopy_node`
//! (`canopy`, `canopy-bench`, the node's tests) allocates with jemalloc, which
//! gives dirty pages back only after its decay time (10 s) and only when it runs
//! again; a purge of every arena hands them back now. Binaries on glibc's
//! allocator (`actors`' own tests) keep freed chunks in per-thread arenas;
//! `malloc_trim` hands those back. The release does both, so it works whichever
//! allocator the binary chose. The NodeSupervisor calls it [`DELAY`] after a
//! tree stops, once however many trees stop meanwhile, on a blocking thread:
//! both walk the heaps under their locks.

use std::time::Duration;

/// How long after a tree stops the memory is released: trees passivate in waves
/// (idle timeouts started together end together), and one release covers a wave.
pub const DELAY: Duration = Duration::from_secs(1);

/// Returns the allocators' free pages to the OS.
pub fn release_now() {
    trim_glibc();
    purge_jemalloc();
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim_glibc() {
    // SAFETY: malloc_trim(3) only takes the allocator's own locks and touches no
    // memory of ours; any thread may call it at any time.
    unsafe { libc::malloc_trim(0) };
}

/// Other C allocators (musl's, macOS's) return free pages on their own.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_glibc() {}

#[cfg(not(target_env = "msvc"))]
#[allow(unsafe_code)]
fn purge_jemalloc() {
    // 4096 is MALLCTL_ARENAS_ALL: the purge covers every arena, not one thread's.
    // SAFETY: "arena.<i>.purge" is a void control: it reads no old value and takes
    // no new one, so the null pointers and zero length are what mallctl(3) expects;
    // the name is a NUL-terminated literal. In a binary on another allocator it
    // purges jemalloc's own, empty, arenas.
    let _ = unsafe {
        tikv_jemalloc_sys::mallctl(
            c"arena.4096.purge".as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
}

#[cfg(target_env = "msvc")]
fn purge_jemalloc() {}

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
