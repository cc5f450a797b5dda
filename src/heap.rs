//! Giving the heap memory a large transient job freed back to the kernel.
//!
//! glibc's malloc keeps freed memory in its arenas (one per thread that allocated, up to 8 per
//! core) for reuse, and returns it to the kernel only from the top of an arena. A pull or an
//! import streams hundreds of megabytes through buffers on several blocking threads, so the
//! daemon's RSS stayed where those buffers had taken it: measured with `scripts/bench.sh`, 22
//! MiB before five pulls and five imports of a 161 MB image, 50 MiB after, and 21 MiB again
//! after a `malloc_trim(0)` (gdb, on the running daemon). The memory was free, not leaked.
//!
//! The trim does not reach what glibc's per-thread arenas keep in partly used pages: with the
//! default arena count (8 per core) the daemon held 18.7 MiB of anonymous memory after the
//! bench's pulls and imports, five thread arenas of about 2.6 MiB each, and a `malloc_trim(0)`
//! then gave back 0.1 MiB. With at most two arenas ([`limit_arenas`]) the same run left 4.6 MiB
//! (RSS 21.6 against 35.5 MiB). The daemon's threads mostly wait on I/O, so sharing two arenas
//! costs little lock contention.
#![allow(unsafe_code)]

/// Returns the free memory of every malloc arena to the kernel (glibc's `malloc_trim(0)`,
/// which also releases free pages inside an arena with `MADV_DONTNEED`). A no-op on other C
/// libraries. It takes each arena's lock in turn and costs about a millisecond: call it after
/// work that allocated much and briefly (a pull, an import), not on hot paths.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and only walks the allocator's own arenas under
    // their locks; glibc documents it as MT-Safe, callable from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The most malloc arenas the daemon uses (glibc's `M_ARENA_MAX`; its default is 8 per core).
pub const ARENA_MAX: i32 = 2;

/// Limits glibc's malloc to [`ARENA_MAX`] arenas (see the module docs), unless
/// `MALLOC_ARENA_MAX` or `GLIBC_TUNABLES` is set in the environment (the operator's choice wins;
/// a tunables string may set `glibc.malloc.arena_max`, which this call would override). Call it first
/// thing in the daemon, before any thread exists. A no-op on other C libraries.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() && !tunes_arena_max(std::env::var("GLIBC_TUNABLES").ok().as_deref()) {
        // SAFETY: mallopt takes two integers and sets an allocator parameter under glibc's own
        // lock; M_ARENA_MAX only bounds arenas made from now on.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX);
        }
    }
}

/// Whether a `GLIBC_TUNABLES` value (`name=value:name=value`, glibc's tunables(7)) sets the arena
/// count.
fn tunes_arena_max(tunables: Option<&str>) -> bool {
    tunables.is_some_and(|t| t.split(':').any(|kv| kv.split('=').next() == Some("glibc.malloc.arena_max")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_tunables_arena_max_is_the_operators_choice() {
        assert!(super::tunes_arena_max(Some("glibc.malloc.arena_max=4")));
        assert!(super::tunes_arena_max(Some("glibc.malloc.tcache_count=0:glibc.malloc.arena_max=1")));
        assert!(!super::tunes_arena_max(Some("glibc.malloc.tcache_count=0")));
        assert!(!super::tunes_arena_max(None));
    }
}
