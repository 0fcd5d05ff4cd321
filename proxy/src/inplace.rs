//! Polling in place. Hyper signals between the halves of a client connection
//! (the connection state machine and its request-body channel) by waking
//! whoever waits on the other half, and in the gateway that is usually the
//! task doing the polling. Tokio treats a wake that arrives while the task
//! is running as a yield: the task goes to the back of the run queue and
//! another worker is woken to take it, a futex call and often a move to the
//! other CPU on every request. Polling in place notes such wakes and polls
//! again at once; wakes from elsewhere (a socket became readable) go to the
//! task as usual.

use futures::task::AtomicWaker;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

/// Most times one poll is repeated in place before the task is rescheduled
/// instead (a bound, in case something keeps waking without progress).
const MAX_IN_PLACE_POLLS: usize = 32;

/// The waker to poll with, and where its wakes go. Cheap to clone.
#[derive(Clone)]
pub struct InPlace {
    wakes: Arc<Wakes>,
    waker: Waker,
}

struct Wakes {
    task: AtomicWaker,
    polling: AtomicBool,
    woken: AtomicBool,
}

impl Wake for Wakes {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.polling.load(Ordering::SeqCst) {
            self.woken.store(true, Ordering::SeqCst);
            // Still polling: the poller sees `woken` when it stops.
            if self.polling.load(Ordering::SeqCst) {
                return;
            }
        }
        self.task.wake();
    }
}

impl Default for InPlace {
    fn default() -> Self {
        let wakes = Arc::new(Wakes {
            task: AtomicWaker::new(),
            polling: AtomicBool::new(false),
            woken: AtomicBool::new(false),
        });
        InPlace {
            waker: Waker::from(wakes.clone()),
            wakes,
        }
    }
}

impl InPlace {
    /// Run `step` with the in-place waker, again while what it polled woke
    /// it during the run, until it is ready or nothing woke it.
    pub fn poll<T>(
        &self,
        cx: &mut Context<'_>,
        mut step: impl FnMut(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        let wakes = &self.wakes;
        wakes.task.register(cx.waker());
        let mut in_place = Context::from_waker(&self.waker);
        for _ in 0..MAX_IN_PLACE_POLLS {
            wakes.woken.store(false, Ordering::SeqCst);
            wakes.polling.store(true, Ordering::SeqCst);
            let polled = step(&mut in_place);
            wakes.polling.store(false, Ordering::SeqCst);
            if polled.is_ready() {
                return polled;
            }
            if !wakes.woken.swap(false, Ordering::SeqCst) {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct CountingWaker(AtomicUsize);
    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_wake_during_the_poll_repeats_it_instead_of_waking_the_task() {
        let task = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let task_waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&task_waker);
        let in_place = InPlace::default();
        let mut runs = 0;
        let mut saved = None;
        // First run wakes itself (as hyper's channels do) and is pending;
        // the second run is ready: both within one poll.
        let polled = in_place.poll(&mut cx, |cx| {
            runs += 1;
            if runs == 1 {
                cx.waker().wake_by_ref();
                saved = Some(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(runs)
            }
        });
        assert_eq!(polled, Poll::Ready(2));
        assert_eq!(task.0.load(Ordering::SeqCst), 0);
        // A wake after the poll (a socket became readable) reaches the task.
        saved.unwrap_or_else(|| Waker::from(task.clone())).wake();
        assert_eq!(task.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn pending_without_a_wake_runs_once() {
        let task = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let task_waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&task_waker);
        let mut runs = 0;
        let polled: Poll<()> = InPlace::default().poll(&mut cx, |_| {
            runs += 1;
            Poll::Pending
        });
        assert!(polled.is_pending());
        assert_eq!(runs, 1);
        assert_eq!(task.0.load(Ordering::SeqCst), 0);
    }
}
