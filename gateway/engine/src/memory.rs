//! Giving back to the operating system the memory a large load left free.
//!
//! Parsing a big tenant registry allocates a transient TOML tree several times the size of
//! what is kept (100,000 tenants: ~400 MB at peak for ~45 MB kept). mimalloc, the binary's
//! allocator, keeps the freed pages of a thread until that thread allocates again, so an idle
//! gateway would stay resident near the peak of its last load. After a load, collect.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// Keeps the kernel from backing the heap with transparent huge pages (THP), process-wide.
///
/// mimalloc asks for huge pages on its arenas (`madvise(MADV_HUGEPAGE)`), and with THP in
/// `madvise` or `always` mode the kernel's `khugepaged` later collapses sparsely used 2 MiB
/// ranges into huge pages — making resident again memory that was just given back. Measured:
/// after 3,000 idle connections closed, RSS fell back to +8 MiB over the start, then climbed
/// to +30 MiB within 15 s as huge pages (`AnonHugePages`) grew from 8 to 34 MiB. A proxy's heap
/// is small and churns: it gains little from huge pages and must return what a burst left.
/// Call early, before large allocations; pages already collapsed stay so.
#[cfg(target_os = "linux")]
pub fn disable_transparent_huge_pages() {
    // SAFETY: `prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0)` takes no pointers; it sets a flag of the
    // calling process (inherited by children) and fails harmlessly where unsupported.
    let result = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if result != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "transparent huge pages could not be disabled"
        );
    }
}

/// Transparent huge pages are Linux's.
#[cfg(not(target_os = "linux"))]
pub fn disable_transparent_huge_pages() {}

/// Returns free pages of the calling thread's heap (and abandoned ones) to the OS. Cheap when
/// there is little to return; call it on the thread that did the loading.
pub fn release_freed_memory() {
    // SAFETY: `mi_collect` takes no pointers and has no preconditions; it only frees pages
    // mimalloc holds but no allocation uses. Without mimalloc as the global allocator it has
    // (almost) nothing to do.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// How many times a release was asked for (see [`request_release`]).
static RELEASE_EPOCH: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The release this thread last did.
    static RELEASED: Cell<u64> = const { Cell::new(0) };
}

/// Asks every thread that serves connections to give its freed pages back to the OS (see
/// [`release_if_requested`]); this thread does at once. For when many client connections
/// have just closed (a burst of idle or slow clients): their buffers are free, but mimalloc
/// keeps a thread's freed pages for reuse and returns memory only on later allocator activity
/// of that thread, which a quiet gateway may not have for a long time.
pub fn request_release() {
    RELEASE_EPOCH.fetch_add(1, Ordering::Relaxed);
    release_if_requested();
}

/// Gives this thread's freed pages back if a release was asked for since it last did. Cheap
/// otherwise (an atomic load); called where connections close, so that every worker thread
/// that held some of them takes part.
pub fn release_if_requested() {
    let asked = RELEASE_EPOCH.load(Ordering::Relaxed);
    let done = RELEASED.try_with(|r| r.replace(asked)).unwrap_or(asked);
    if done != asked {
        // SAFETY: as in `release_freed_memory`; `force` also purges what every thread gave
        // back to the shared arenas, without waiting for the purge delay.
        unsafe { libmimalloc_sys::mi_collect(true) }
    }
}
