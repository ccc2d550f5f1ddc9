//! The sensor's memory allocator: mimalloc, without transparent huge pages.
//!
//! Records are built on the capture task's thread and freed on the exporter's. glibc's
//! allocator then serves most allocations from its locked arena path rather than the thread
//! cache (about a fifth of the sensor's time under small GETs); mimalloc frees across threads
//! cheaply. It is the global allocator of everything linking this crate, tests included.

/// The global allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (its position in `mi_option_t` of mimalloc 3's
/// `mimalloc.h`; `libmimalloc-sys` names no constant for it).
const PURGE_DELAY_OPTION: libmimalloc_sys::mi_option_t = 15;

/// How long freed memory stays committed before it is handed back. mimalloc keeps one
/// deadline per arena and, when it passes, hands back everything free at that moment, however
/// recently it was freed; under a steady stream of 16 KB bodies a 5 s delay still meant a
/// purge of the export buffers every 5 s and about 2 page faults per exchange as they were
/// taken again (7 % of the sensor's CPU). With a minute, about one in twelve of those is left.
/// [`trim`] hands back what is free at once when traffic stops (see `overload`).
const PURGE_DELAY_MS: std::ffi::c_long = 60_000;

/// Sets the allocator's options. Call first thing in `main`, before any other thread exists
/// (mimalloc's option setters are not thread-safe).
pub fn configure() {
    // SAFETY: a plain option store, made before other threads run.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY_OPTION, PURGE_DELAY_MS) };
}

/// Hands memory the allocator keeps but no longer uses back to the system, so that what was
/// freed shows in the resident size. mimalloc purges only as it allocates and frees, which an
/// idle sensor hardly does.
pub fn trim() {
    // SAFETY: mi_collect has no preconditions.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_option_is_the_one_configured() {
        // SAFETY: reads an option.
        let before = unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY_OPTION) };
        assert!(
            before == 1000 || before == PURGE_DELAY_MS,
            "option {PURGE_DELAY_OPTION} is mimalloc 3's purge delay (default 1000 ms), read {before}"
        );
        configure();
        // SAFETY: reads an option.
        let after = unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY_OPTION) };
        assert_eq!(after, PURGE_DELAY_MS);
        trim();
    }
}
