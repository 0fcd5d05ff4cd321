//! Returning freed heap memory to the operating system.
//!
//! The ledger and analytics read the log in batches of thousands of
//! records; glibc keeps the pages those batches freed inside its arenas, so
//! without help an idle gateway sits at its busiest moment's footprint.
//! A background thread asks glibc to release free pages once a second.

use std::time::Duration;

/// How often free heap pages are handed back.
const TRIM_INTERVAL: Duration = Duration::from_secs(1);

/// Start the trimming thread (once per process; later calls do nothing).
pub fn start_trimming() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static STARTED: std::sync::Once = std::sync::Once::new();
        STARTED.call_once(|| {
            let spawned = std::thread::Builder::new()
                .name("tollgate-trim".into())
                .spawn(|| loop {
                    std::thread::sleep(TRIM_INTERVAL);
                    trim_now();
                });
            if let Err(err) = spawned {
                tracing::warn!(error = %err, "could not start the memory-trim thread");
            }
        });
    }
}

/// Blocks at least this large get a mapping of their own, handed back to the
/// OS the moment they are freed. glibc starts at the same size but raises
/// it, up to 32 MiB, each time such a block is freed: after one burst of big
/// blocks (loading a token encoding, a large batch) blocks of that size then
/// come from the heap and stay resident. Setting it fixes it.
const MMAP_THRESHOLD_BYTES: i32 = 128 * 1024;

/// Fix glibc's mmap threshold (see [`MMAP_THRESHOLD_BYTES`]); call early.
#[allow(unsafe_code)]
pub fn fix_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets one of glibc's allocator parameters;
        // it takes no pointers from us and is thread-safe.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
        }
    }
}

/// Release free heap pages now. Returns whether any were released.
#[allow(unsafe_code)]
pub fn trim_now() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks glibc's own free lists; it is
        // thread-safe and takes no pointers from us.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn rss_anon_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with("RssAnon:"))
            .expect("RssAnon in /proc/self/status");
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Both tests read the process's RSS: one at a time.
    static RSS_MEASURED: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn big_blocks_go_back_to_the_os_when_freed_even_after_a_bigger_one() {
        let _alone = RSS_MEASURED.lock();
        std::thread::spawn(|| {
            fix_mmap_threshold();
            // A big block freed: glibc's own rule would now keep blocks of
            // up to this size in the heap.
            drop(std::hint::black_box(vec![1u8; 16 << 20]));
            let before = rss_anon_kib();
            let mut blocks: Vec<Vec<u8>> = (0..64)
                .map(|_| std::hint::black_box(vec![1u8; 512 << 10]))
                .collect();
            // Free all but the last: in the heap, the freed ones would sit
            // below it, resident until a trim.
            let last = blocks.pop();
            drop(blocks);
            let after = rss_anon_kib();
            assert!(
                after.saturating_sub(before) < 4 * 1024,
                "RssAnon {before} KiB before, {after} KiB with one 512 KiB block left"
            );
            drop(last);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn freed_fragmented_memory_goes_back_to_the_os() {
        let _alone = RSS_MEASURED.lock();
        // In a thread of its own, so the blocks come from one arena that
        // nothing else in the test binary touches.
        std::thread::spawn(|| {
            const BLOCKS: usize = 64 * 1024;
            let mut blocks: Vec<Box<[u8; 1024]>> =
                (0..BLOCKS).map(|_| Box::new([1u8; 1024])).collect();
            // Keep one block in 64 alive: the free space is all interior,
            // where glibc's automatic top-of-heap trimming never reaches.
            let mut kept = Vec::new();
            for (i, block) in blocks.drain(..).enumerate() {
                if i % 64 == 0 {
                    kept.push(block);
                }
            }
            let before = rss_anon_kib();
            assert!(trim_now(), "malloc_trim released nothing");
            let after = rss_anon_kib();
            // ~63 MiB were freed; most of it must leave the process.
            assert!(
                before.saturating_sub(after) > 32 * 1024,
                "RssAnon {before} KiB before the trim, {after} KiB after"
            );
            drop(kept);
        })
        .join()
        .unwrap();
    }
}
