//! Where token estimates run: off the async runtime's workers.
//!
//! Counting tokens is CPU work (up to a few seconds for the largest text an
//! estimate counts, see `tokenize`), so it never runs on a runtime worker:
//! a few dedicated threads (one per core, at most `MAX_THREADS`) at lowered
//! priority take the jobs, and a request that needs an estimate waits for a
//! free thread asynchronously. Estimate-heavy requests then never hold a
//! worker, and `/healthz` and other requests keep answering.
//!
//! The threads are not waited for at exit: a job left running when the
//! process ends is at most one bounded estimate. Estimates whose usage
//! event is emitted by the job itself (streams, disconnects) are counted
//! in flight, so shutdown can wait for their events ([`settle`]).

use parking_lot::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{oneshot, Semaphore};

/// At most this many estimates run at once (fewer on fewer cores).
const MAX_THREADS: usize = 4;

/// Estimate threads lower their priority by this much (Linux nice units),
/// as the event log's background threads do: on a busy machine requests
/// are scheduled first.
const ESTIMATE_NICE: i32 = 5;

type Job = Box<dyn FnOnce() + Send>;

struct Pool {
    /// One per thread: a job is handed over only with a permit, so no job
    /// ever queues behind a busy thread and waiting stays asynchronous.
    permits: Arc<Semaphore>,
    jobs: Mutex<mpsc::Sender<Job>>,
    /// Threads started (tests size their load by it).
    #[cfg(test)]
    threads: usize,
}

/// Estimates whose job emits the usage event, not finished yet.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Jobs running on an estimate thread right now.
static RUNNING: AtomicUsize = AtomicUsize::new(0);

fn pool() -> Option<&'static Pool> {
    static POOL: OnceLock<Option<Pool>> = OnceLock::new();
    POOL.get_or_init(start_pool).as_ref()
}

fn start_pool() -> Option<Pool> {
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, MAX_THREADS);
    let (tx, rx) = mpsc::channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    let mut started = 0;
    for n in 0..threads {
        let rx = rx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("tollgate-estimate-{n}"))
            .spawn(move || {
                // Per thread on Linux; a failure only loses the preference.
                let _ = rustix::process::nice(ESTIMATE_NICE);
                loop {
                    let job = rx.lock().recv();
                    match job {
                        // A panic must not take the thread (and its permit's
                        // slot) with it; the job's own guards clean up.
                        Ok(job) => {
                            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                        }
                        Err(mpsc::RecvError) => return,
                    }
                }
            });
        match spawned {
            Ok(_) => started += 1,
            Err(err) => tracing::error!(error = %err, "cannot start a token-estimate thread"),
        }
    }
    (started > 0).then(|| Pool {
        permits: Arc::new(Semaphore::new(started)),
        jobs: Mutex::new(tx),
        #[cfg(test)]
        threads: started,
    })
}

/// Run `job` on an estimate thread once one is free, waiting for it
/// asynchronously. `None` if the job could not run (no thread could be
/// started, or it panicked). Dropping the future does not stop a job that
/// has started: it finishes (bounded) and keeps its thread until then.
pub(crate) async fn run<T: Send + 'static>(job: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let Some(pool) = pool() else {
        // No dedicated thread: tokio's blocking pool still keeps it off the workers.
        return tokio::task::spawn_blocking(job).await.ok();
    };
    let permit = pool.permits.clone().acquire_owned().await.ok()?;
    let (tx, rx) = oneshot::channel();
    let job: Job = Box::new(move || {
        let _permit = permit;
        let _running = Count::enter(&RUNNING);
        let _ = tx.send(job());
    });
    pool.jobs.lock().send(job).ok()?;
    rx.await.ok()
}

/// A job that emits its request's usage event: run on an estimate thread
/// in the background. Dropped before it ran (the runtime shutting down),
/// it must still do its work: `Drop` runs it where it is.
pub(crate) trait Finish: Send + 'static {
    fn finish(self);
}

/// Run `work` in the background on an estimate thread (inline if there is
/// no runtime to wait on), counted in flight until it is done.
pub(crate) fn spawn_finish(work: impl Finish) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        work.finish();
        return;
    };
    let guard = Count::enter(&IN_FLIGHT);
    runtime.spawn(async move {
        let _guard = guard;
        let _ = run(move || work.finish()).await;
    });
}

/// Counts something (a job running, an estimate in flight) for its life.
struct Count(&'static AtomicUsize);

impl Count {
    fn enter(counter: &'static AtomicUsize) -> Count {
        counter.fetch_add(1, Ordering::AcqRel);
        Count(counter)
    }
}

impl Drop for Count {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Estimates running on an estimate thread right now.
pub fn running() -> usize {
    RUNNING.load(Ordering::Acquire)
}

/// Background estimates not finished yet (their usage events not emitted).
pub fn in_flight() -> usize {
    IN_FLIGHT.load(Ordering::Acquire)
}

/// Wait until every background estimate has emitted its usage event, or
/// `timeout` has passed: shutdown calls this before closing the event log.
/// True if none is left.
pub async fn settle(timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while in_flight() > 0 {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The pool is the process's: tests that fill it take turns.
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    #[tokio::test(flavor = "current_thread")]
    async fn a_job_runs_off_the_runtime_thread() {
        // Holding a thread, it would change what the other tests count.
        let _serial = SERIAL.lock().await;
        let runtime_thread = std::thread::current().id();
        let ran_on = run(|| std::thread::current().id()).await.unwrap();
        assert_ne!(ran_on, runtime_thread);
    }

    /// While every estimate thread is busy, the runtime (a single thread
    /// here) keeps running other tasks; extra jobs wait for a free thread,
    /// so no more run at once than there are threads.
    #[tokio::test(flavor = "current_thread")]
    async fn busy_estimate_threads_do_not_block_the_runtime() {
        let _serial = SERIAL.lock().await;
        // Other tests' jobs may hold threads for a moment: count them all.
        let threads = pool().map(|p| p.threads).unwrap();
        let gate = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut jobs = Vec::new();
        for _ in 0..threads + 2 {
            let (gate, running, most) = (gate.clone(), running.clone(), most.clone());
            jobs.push(tokio::spawn(run(move || {
                let now = running.fetch_add(1, Ordering::AcqRel) + 1;
                most.fetch_max(now, Ordering::AcqRel);
                let (open, wake) = &*gate;
                let mut open = open.lock().unwrap();
                while !*open {
                    open = wake.wait(open).unwrap();
                }
                running.fetch_sub(1, Ordering::AcqRel);
            })));
        }
        // Every thread is held, and the runtime's one thread still runs timers.
        let started = std::time::Instant::now();
        while running.load(Ordering::Acquire) < threads {
            assert!(started.elapsed() < Duration::from_secs(10));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(running.load(Ordering::Acquire), threads);
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        for job in jobs {
            assert_eq!(job.await.unwrap(), Some(()));
        }
        assert_eq!(most.load(Ordering::Acquire), threads);
    }

    struct Mark(Arc<AtomicUsize>);

    impl Finish for Mark {
        fn finish(self) {
            self.0.fetch_add(1, Ordering::AcqRel);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn settle_waits_for_background_finishes() {
        let _serial = SERIAL.lock().await;
        let done = Arc::new(AtomicUsize::new(0));
        for _ in 0..5 {
            spawn_finish(Mark(done.clone()));
        }
        assert!(settle(Duration::from_secs(10)).await);
        assert_eq!(done.load(Ordering::Acquire), 5);
    }
}
