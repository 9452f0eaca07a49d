//! Passivation must return memory to the OS. This test has a binary of its own:
//! resident memory is per process, and other tests allocating beside it would
//! blur the figures.

#![cfg(all(target_os = "linux", target_env = "gnu"))]

use canopy_actors::memory::{release_now, resident_bytes};

const MIB: u64 = 1024 * 1024;

#[test]
fn freed_small_allocations_leave_the_process_once_released() {
    // 64 MiB in 256-byte blocks, the size of the allocations a tenant tree is made
    // of. One block in 64 (one per 16 KiB) stays allocated, as in a node where some
    // trees outlive their neighbours: no freed run reaches the top of a heap, so
    // the allocator cannot shrink the heap on its own.
    let blocks: Vec<Box<[u8; 256]>> = (0..262_144u32).map(|i| Box::new([i as u8; 256])).collect();
    let allocated = resident_bytes();
    let survivors: Vec<Box<[u8; 256]>> =
        blocks.into_iter().enumerate().filter_map(|(i, b)| (i % 64 == 0).then_some(b)).collect();
    let freed = resident_bytes();
    assert!(
        freed + 32 * MIB > allocated,
        "the allocator kept the freed blocks resident ({} MiB before, {} MiB after freeing)",
        allocated / MIB,
        freed / MIB
    );

    release_now();
    let released = resident_bytes();
    assert!(
        released + 48 * MIB < freed,
        "at least 48 of the 63 freed MiB leave the process ({} MiB before, {} MiB after)",
        freed / MIB,
        released / MIB
    );
    // The survivors are intact: the release touched free pages only.
    assert!(survivors.iter().enumerate().all(|(k, b)| b[0] == ((k * 64) as u32) as u8));
}
