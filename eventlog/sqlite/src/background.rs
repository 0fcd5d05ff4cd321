//! Scheduling priority for background work.

use std::cell::Cell;

/// How much background threads lower their priority (Linux nice units).
const BACKGROUND_NICE: i32 = 5;

/// Lower the calling thread's scheduling priority, once per thread. Event-log
/// commits, ledger batches, analytics inserts and log reads run on such
/// threads: when they share a busy CPU with request handling, the request
/// path is scheduled first, and the background work still gets a fair share
/// (nice 5 weighs about a third of nice 0) so it keeps up. On Linux the nice
/// value is per thread. A failure is ignored: this is only a preference.
pub fn background_priority() {
    thread_local! {
        static LOWERED: Cell<bool> = const { Cell::new(false) };
    }
    LOWERED.with(|lowered| {
        if !lowered.replace(true) {
            let _ = rustix::process::nice(BACKGROUND_NICE);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nice_now() -> i32 {
        // nice(0) reports the current value without changing it.
        rustix::process::nice(0).unwrap_or(i32::MIN)
    }

    #[test]
    fn lowers_only_the_calling_thread_and_only_once() {
        let before_elsewhere = nice_now();
        let (first, second) = std::thread::spawn(|| {
            let start = nice_now();
            background_priority();
            let once = nice_now();
            background_priority();
            (once - start, nice_now() - start)
        })
        .join()
        .unwrap_or((0, 0));
        // Nice values stop at 19 (a test run already niced lowers less).
        let expected = (before_elsewhere + BACKGROUND_NICE).min(19) - before_elsewhere;
        assert_eq!(first, expected);
        assert_eq!(second, expected, "a second call changes nothing");
        assert_eq!(nice_now(), before_elsewhere, "other threads keep theirs");
    }
}
