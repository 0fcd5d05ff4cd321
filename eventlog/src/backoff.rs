//! The one retry delay every background loop uses: exponential, doubling
//! from `initial` up to `max`, back to `initial` after a success.

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// `max` below `initial` is taken as `initial`.
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
            current: initial,
        }
    }

    /// The delay to wait before the next attempt (what `next_delay` returns next).
    pub fn current(&self) -> Duration {
        self.current
    }

    /// The delay to wait now; the one after doubles, up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.current;
        self.current = (self.current * 2).min(self.max);
        delay
    }

    /// After a success: the next failure waits `initial` again.
    pub fn reset(&mut self) {
        self.current = self.initial;
    }

    /// Sleep the thread for the next delay (for loops on their own thread).
    pub fn sleep(&mut self) {
        std::thread::sleep(self.next_delay());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(10), ms(35));
        let delays: Vec<_> = (0..4).map(|_| backoff.next_delay()).collect();
        assert_eq!(delays, vec![ms(10), ms(20), ms(35), ms(35)]);
        backoff.reset();
        assert_eq!(backoff.current(), ms(10));
        assert_eq!(Backoff::new(ms(10), ms(1)).next_delay(), ms(10));
        let mut capped = Backoff::new(ms(10), ms(1));
        capped.next_delay();
        assert_eq!(
            capped.current(),
            ms(10),
            "a max below initial holds at initial"
        );
    }
}
