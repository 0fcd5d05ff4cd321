//! Server-sent-event framing and the streaming response body.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use serde::Serialize;
use tokio::time::Sleep;

use crate::Inner;

/// Writes all events of a stream into one buffer (one allocation per response),
/// remembering where each event ends so they can be sent as separate frames.
pub(crate) struct EventWriter {
    buf: Vec<u8>,
    ends: Vec<usize>,
}

impl EventWriter {
    pub(crate) fn new() -> Self {
        Self {
            buf: Vec::with_capacity(2048),
            ends: Vec::with_capacity(16),
        }
    }

    /// `event: NAME` (when given) and `data: JSON`, then a blank line.
    pub(crate) fn event<T: Serialize>(
        &mut self,
        name: Option<&str>,
        data: &T,
    ) -> serde_json::Result<()> {
        if let Some(name) = name {
            self.buf.extend_from_slice(b"event: ");
            self.buf.extend_from_slice(name.as_bytes());
            self.buf.push(b'\n');
        }
        self.buf.extend_from_slice(b"data: ");
        serde_json::to_writer(&mut self.buf, data)?;
        self.buf.extend_from_slice(b"\n\n");
        self.ends.push(self.buf.len());
        Ok(())
    }

    /// A pre-formatted event.
    pub(crate) fn raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        self.ends.push(self.buf.len());
    }

    /// Number of events written so far.
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    /// The events as cheap slices of the shared buffer.
    pub(crate) fn finish(self) -> Vec<Bytes> {
        let all = Bytes::from(self.buf);
        let mut start = 0;
        self.ends
            .iter()
            .map(|&end| {
                let b = all.slice(start..end);
                start = end;
                b
            })
            .collect()
    }
}

/// Response body yielding pre-rendered frames one at a time, optionally sleeping
/// between them and aborting the connection at `cut_at`. Dropping it before the
/// end counts a cancelled stream (the client went away).
pub(crate) struct FrameStream {
    frames: Vec<Bytes>,
    pos: usize,
    delay: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    /// Abort (error the body, which makes hyper drop the connection) once `pos`
    /// reaches this index.
    cut_at: Option<usize>,
    /// Reached the end, or was cut on purpose: not a client cancellation.
    done: bool,
    /// Already returned `Pending` once at the cut so hyper flushed what was sent.
    cut_flushed: bool,
    /// Whether an early drop should be counted (false for non-SSE bodies).
    count_cancel: bool,
    inner: Arc<Inner>,
}

impl FrameStream {
    pub(crate) fn new(
        frames: Vec<Bytes>,
        delay: Duration,
        cut_at: Option<usize>,
        count_cancel: bool,
        inner: Arc<Inner>,
    ) -> Self {
        Self {
            frames,
            pos: 0,
            delay,
            sleep: None,
            cut_at,
            done: false,
            cut_flushed: false,
            count_cancel,
            inner,
        }
    }
}

fn aborted(msg: &'static str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::ConnectionAborted, msg)
}

impl Stream for FrameStream {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(sleep) = this.sleep.as_mut() {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.sleep = None;
        }
        if this.inner.shutdown.load(Ordering::Relaxed) {
            // Server is going away: end the connection rather than keep it alive.
            this.done = true;
            return Poll::Ready(Some(Err(aborted("mock upstream shut down"))));
        }
        if this.cut_at == Some(this.pos) {
            if !this.cut_flushed {
                // hyper discards unflushed output when the body errors; returning
                // Pending once makes it flush the frames sent so far first.
                this.cut_flushed = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            this.done = true;
            return Poll::Ready(Some(Err(aborted("mock upstream cut the stream"))));
        }
        match this.frames.get(this.pos) {
            None => {
                this.done = true;
                Poll::Ready(None)
            }
            Some(frame) => {
                let frame = frame.clone();
                this.pos += 1;
                if !this.delay.is_zero() && this.pos < this.frames.len() {
                    this.sleep = Some(Box::pin(tokio::time::sleep(this.delay)));
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }
}

impl Drop for FrameStream {
    fn drop(&mut self) {
        if !self.done && self.count_cancel {
            self.inner.cancelled.fetch_add(1, Ordering::Relaxed);
        }
    }
}
