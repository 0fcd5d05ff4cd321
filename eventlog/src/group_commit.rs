//! The group-commit writer behind both durable queues: the embedded log's
//! table and the Kafka backend's spool. One thread owns the writes: it takes
//! what is queued (after an optional gathering pause), commits it in one
//! transaction, retries a failed commit with backoff (the bounded queue then
//! pushes back on producers), and answers whoever waits on the round.

use crate::backoff::Backoff;
use std::time::Duration;
use tokio::sync::mpsc;

/// A failed commit is tried again after 10 ms, doubling up to 1 s.
const RETRY_FIRST: Duration = Duration::from_millis(10);
const RETRY_MAX: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug)]
pub struct GroupCommitOptions {
    /// Most records committed in one transaction.
    pub max_batch: usize,
    /// After a round's first record, how long to let more arrive before
    /// committing. One sleep rather than polling: while the writer sleeps,
    /// producers enqueue without having to wake it. Zero: no pause.
    pub gather: Duration,
}

/// How a round ended.
#[derive(Debug)]
pub enum Round<T> {
    /// It held no record (only control messages); nothing was committed.
    Empty,
    Committed(T),
    /// The commit failed and the writer gave the records up.
    Dropped,
}

/// What a writer does with its messages and its storage.
pub trait GroupCommit {
    /// What the queue carries: records and control messages.
    type Msg;
    type Record;
    /// What a successful commit reports (offsets, the last sequence number).
    type Committed;
    type Error;

    /// Take a message into the round: a record onto `batch`, anything else
    /// kept by the writer. True ends the gathering and stops the writer
    /// after this round.
    fn gather(&mut self, msg: Self::Msg, batch: &mut Vec<Self::Record>) -> bool;

    /// Work done before each round's commit.
    fn before_commit(&mut self) {}

    /// One attempt at committing `batch` (never empty) in one transaction.
    fn commit(&mut self, batch: &[Self::Record]) -> Result<Self::Committed, Self::Error>;

    /// A failed attempt: true waits and tries the same batch again, false
    /// gives it up.
    fn failed(&mut self, error: Self::Error, batch: &[Self::Record]) -> bool;

    /// The round is over. `batch` still holds its records (drain what you
    /// keep); it is cleared afterwards.
    fn finish(&mut self, batch: &mut Vec<Self::Record>, round: Round<Self::Committed>);
}

/// Run `writer` on the calling thread until the queue closes or a message
/// asks it to stop.
pub fn run<W: GroupCommit>(
    mut writer: W,
    mut rx: mpsc::Receiver<W::Msg>,
    options: GroupCommitOptions,
) {
    let max_batch = options.max_batch.max(1);
    let mut batch = Vec::with_capacity(max_batch);
    while let Some(first) = rx.blocking_recv() {
        let mut stop = writer.gather(first, &mut batch);
        // A round that starts with a control message alone (a flush) does
        // not wait: someone is waiting on it.
        if !stop && !batch.is_empty() && !options.gather.is_zero() {
            std::thread::sleep(options.gather);
        }
        while !stop && batch.len() < max_batch {
            let Ok(msg) = rx.try_recv() else {
                break;
            };
            stop = writer.gather(msg, &mut batch);
        }
        writer.before_commit();
        let round = if batch.is_empty() {
            Round::Empty
        } else {
            commit(&mut writer, &batch)
        };
        writer.finish(&mut batch, round);
        batch.clear();
        if stop {
            break;
        }
    }
}

fn commit<W: GroupCommit>(writer: &mut W, batch: &[W::Record]) -> Round<W::Committed> {
    let mut retry = Backoff::new(RETRY_FIRST, RETRY_MAX);
    loop {
        match writer.commit(batch) {
            Ok(committed) => return Round::Committed(committed),
            Err(error) => {
                if !writer.failed(error, batch) {
                    return Round::Dropped;
                }
                retry.sleep();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::{Arc, Mutex};

    enum Msg {
        Record(u32),
        Stop,
    }

    /// Commits by counting; fails the first `failures` attempts.
    #[derive(Default)]
    struct Recorder {
        failures: u32,
        give_up: bool,
        rounds: Arc<Mutex<Vec<String>>>,
    }

    impl GroupCommit for Recorder {
        type Msg = Msg;
        type Record = u32;
        type Committed = usize;
        type Error = ();

        fn gather(&mut self, msg: Msg, batch: &mut Vec<u32>) -> bool {
            match msg {
                Msg::Record(n) => {
                    batch.push(n);
                    false
                }
                Msg::Stop => true,
            }
        }

        fn commit(&mut self, batch: &[u32]) -> Result<usize, ()> {
            if self.failures > 0 {
                self.failures -= 1;
                return Err(());
            }
            Ok(batch.len())
        }

        fn failed(&mut self, _: (), _: &[u32]) -> bool {
            !self.give_up
        }

        fn finish(&mut self, batch: &mut Vec<u32>, round: Round<usize>) {
            self.rounds
                .lock()
                .unwrap()
                .push(format!("{batch:?} {round:?}"));
        }
    }

    /// Queue `msgs`, close the queue, run the writer to the end.
    fn rounds(mut writer: Recorder, msgs: Vec<Msg>, max_batch: usize) -> Vec<String> {
        let (tx, rx) = mpsc::channel(64);
        for msg in msgs {
            assert!(tx.try_send(msg).is_ok());
        }
        drop(tx);
        let rounds = Arc::new(Mutex::new(Vec::new()));
        writer.rounds = rounds.clone();
        let options = GroupCommitOptions {
            max_batch,
            gather: Duration::from_millis(1),
        };
        std::thread::spawn(move || run(writer, rx, options))
            .join()
            .unwrap();
        let out = rounds.lock().unwrap().clone();
        out
    }

    #[test]
    fn commits_what_is_queued_in_batches_of_at_most_max_batch() {
        let msgs = (1..=5).map(Msg::Record).collect();
        assert_eq!(
            rounds(Recorder::default(), msgs, 2),
            vec![
                "[1, 2] Committed(2)",
                "[3, 4] Committed(2)",
                "[5] Committed(1)"
            ]
        );
    }

    #[test]
    fn a_failed_commit_is_retried_with_the_same_batch() {
        let writer = Recorder {
            failures: 2,
            ..Recorder::default()
        };
        let msgs = vec![Msg::Record(1), Msg::Record(2)];
        assert_eq!(rounds(writer, msgs, 10), vec!["[1, 2] Committed(2)"]);
    }

    #[test]
    fn a_batch_given_up_is_dropped_and_the_writer_goes_on() {
        let writer = Recorder {
            failures: 1,
            give_up: true,
            ..Recorder::default()
        };
        let msgs = vec![Msg::Record(1)];
        assert_eq!(rounds(writer, msgs, 10), vec!["[1] Dropped"]);
    }

    #[test]
    fn a_stop_ends_the_round_and_the_writer() {
        let msgs = vec![Msg::Record(1), Msg::Stop, Msg::Record(2)];
        assert_eq!(
            rounds(Recorder::default(), msgs, 10),
            vec!["[1] Committed(1)"]
        );
        assert_eq!(
            rounds(Recorder::default(), vec![Msg::Stop], 10),
            vec!["[] Empty"]
        );
    }
}
