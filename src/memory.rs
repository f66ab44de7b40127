//! Handing memory the process has freed back to the system.
//!
//! glibc's allocator keeps in its heaps what a burst of traffic freed: 1 MiB relay buffers, rewritten
//! Produce requests and decoded responses, freed between small allocations that stay live. After the Kafka
//! benchmark's bursts of 50 MB Fetch responses a sidecar held 25 to 50 MB resident of which 3 to 5 MB was
//! live (docs/benchmarks.md). Two settings keep resident memory close to what is live:
//!
//! - [`configure`], at start: blocks of [`OWN_PAGES_FROM`] and more get pages of their own, unmapped when
//!   freed. glibc otherwise raises that threshold to the largest block freed (up to 32 MiB), after which
//!   a freed 20 MB copy of a Fetch response stays in the heap;
//! - [`release`] (`malloc_trim`) every [`RELEASE_EVERY`], on the blocking pool, never on a thread that
//!   relays traffic: the free pages inside the heaps go back.

use std::time::Duration;

use tokio::sync::watch;

/// Often enough that resident memory follows the load down within seconds; rarely enough that pages a
/// steady load keeps reusing are faulted back in at most once per period (a few MB: well under a
/// millisecond of CPU).
pub const RELEASE_EVERY: Duration = Duration::from_secs(5);

/// Blocks this large and larger are mapped on their own and unmapped when freed: copies of large Fetch
/// responses for the observer. Smaller ones, which a steady load reuses (1 MiB relay buffers, Produce
/// requests of librdkafka's default 1 MB batches), stay in the heap and cost no page faults each time.
pub const OWN_PAGES_FROM: usize = 4 * 1024 * 1024;

/// Free memory at the top of a heap that glibc keeps rather than give back at once. Setting the threshold
/// above stops glibc from adjusting this one too, and its default (128 KiB) would hand back and fault
/// in again the 1 MiB buffers of every Produce rewrite (perf: 40% of the rewrite thread's time in page
/// faults); [`release`] gives it back every few seconds instead.
pub const KEEP_FREE_AT_TOP: usize = 64 * 1024 * 1024;

/// One thread for a runtime's blocking work, kept rather than replaced after 10 s idle: each new thread
/// may take another malloc arena, which keeps its freed buffers resident. The sidecar's runtimes (the
/// data path's and the admin thread's) are built with it.
pub fn one_kept_blocking_thread(b: &mut tokio::runtime::Builder) -> &mut tokio::runtime::Builder {
    b.max_blocking_threads(1).thread_keep_alive(Duration::from_secs(24 * 3600))
}

/// Sets the allocator up (glibc; elsewhere nothing to do). Call before starting threads.
pub fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` takes two integers and changes only glibc's own tuning; it is sound to call at any
    // time, and is called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, OWN_PAGES_FROM as libc::c_int);
        libc::mallopt(libc::M_TRIM_THRESHOLD, KEEP_FREE_AT_TOP as libc::c_int);
    }
}

/// Returns the allocator's free pages to the system (glibc; elsewhere nothing to do).
pub fn release() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` takes no pointer and works only on glibc's own free lists, under the
    // allocator's own locks: it is sound to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Calls [`release`] every [`RELEASE_EVERY`] until shutdown.
pub fn spawn_release(mut shutdown: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RELEASE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let _ = tokio::task::spawn_blocking(release).await;
                }
                _ = shutdown.changed() => return,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    /// What a burst freed in the heap is resident before and not after.
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn release_gives_freed_heap_pages_back() {
        fn rss_kb() -> u64 {
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
            line.split_whitespace().nth(1).unwrap().parse().unwrap()
        }
        // 64 MB in 64 KiB blocks (below glibc's mmap threshold, so in the heap), touched, and freed all but
        // the last, which pins the top of the heap as a live allocation would.
        let mut blocks: Vec<Vec<u8>> = (0..1024).map(|i| vec![i as u8; 64 * 1024]).collect();
        let pin = blocks.pop();
        drop(blocks);
        let before = rss_kb();
        super::release();
        let after = rss_kb();
        assert!(before >= after + 32 * 1024, "RSS {before} kB before release, {after} kB after");
        drop(pin);
    }
}
