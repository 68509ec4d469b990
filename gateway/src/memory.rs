//! Giving back to the operating system the memory a large load left free.
//!
//! Parsing a big tenant registry allocates a transient TOML tree several times the size of
//! what is kept (100,000 tenants: ~400 MB at peak for ~45 MB kept). mimalloc, the binary's
//! allocator, keeps the freed pages of a thread until that thread allocates again, so an idle
//! gateway would stay resident near the peak of its last load. After a load, collect.

/// Returns free pages of the calling thread's heap (and abandoned ones) to the OS. Cheap when
/// there is little to return; call it on the thread that did the loading.
pub fn release_freed_memory() {
    // SAFETY: `mi_collect` takes no pointers and has no preconditions; it only frees pages
    // mimalloc holds but no allocation uses. Without mimalloc as the global allocator it has
    // (almost) nothing to do.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// Called when many client connections have just closed (a burst of idle or slow clients):
/// their buffers are free, but mimalloc returns freed pages to the OS only on later allocator
/// activity (after its purge delay), which a quiet gateway may not have for a long time. This
/// collects the calling thread's heap and purges what every thread has given back.
pub fn release_after_burst() {
    // SAFETY: as in `release_freed_memory`.
    unsafe { libmimalloc_sys::mi_collect(true) }
}
