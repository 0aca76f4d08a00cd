//! The acknowledgements a publisher waits for, kept in its own task: a cell's publishers and
//! the client ceilings' publishers keep them the same way, so both pay for the same
//! bookkeeping per message.
//!
//! Answers are taken oldest first. After each send the publisher takes those that have
//! already arrived, without waiting; it waits for the oldest only when its share of the
//! in-flight window is used up, when it has nothing to send until its next scheduled send
//! time, and at the end. No second task and no channel per message: an answer is counted
//! within one send of its arrival, or as soon as it arrives while the publisher waits.

use std::collections::VecDeque;
use std::future::Future;

use futures::FutureExt as _;

/// One publisher's acknowledgements still to come, each with its message's intended send time
/// and sequence number, oldest first.
pub(crate) struct ReceiptWindow<F> {
    in_flight: VecDeque<(F, u64, u64)>,
    window: usize,
}

/// An answer taken from the window: the acknowledgement's outcome, the message's intended send
/// time and its sequence number.
pub(crate) type Answer<T> = (T, u64, u64);

impl<F: Future + Unpin> ReceiptWindow<F> {
    /// A window holding at most `window` acknowledgements (at least one).
    pub fn new(window: usize) -> Self {
        let window = window.max(1);
        ReceiptWindow {
            in_flight: VecDeque::with_capacity(window),
            window,
        }
    }

    /// Whether the publisher must wait for an answer before sending again.
    pub fn is_full(&self) -> bool {
        self.in_flight.len() >= self.window
    }

    /// Whether no acknowledgement is outstanding.
    pub fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// Acknowledgements outstanding.
    pub fn len(&self) -> usize {
        self.in_flight.len()
    }

    /// Adds the acknowledgement to come of message `seq`, intended at `intended`.
    pub fn push(&mut self, answer: F, intended: u64, seq: u64) {
        self.in_flight.push_back((answer, intended, seq));
    }

    /// The oldest acknowledgement's outcome when it has already arrived; never waits.
    pub fn ready(&mut self) -> Option<Answer<F::Output>> {
        let (oldest, _, _) = self.in_flight.front_mut()?;
        let outcome = oldest.now_or_never()?;
        let (_, intended, seq) = self.in_flight.pop_front().expect("looked at just now");
        Some((outcome, intended, seq))
    }

    /// Waits for the oldest acknowledgement's outcome; `None` when none is outstanding.
    /// Dropped before it resolves (in a `select!`), it leaves the window as it was.
    pub async fn oldest(&mut self) -> Option<Answer<F::Output>> {
        let (oldest, _, _) = self.in_flight.front_mut()?;
        let outcome = oldest.await;
        let (_, intended, seq) = self.in_flight.pop_front().expect("awaited just now");
        Some((outcome, intended, seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::channel::oneshot;

    #[tokio::test]
    async fn answers_come_oldest_first_and_only_once_arrived() {
        let mut window = ReceiptWindow::new(2);
        let (first_tx, first) = oneshot::channel::<u32>();
        let (second_tx, second) = oneshot::channel::<u32>();
        window.push(first, 100, 1);
        assert!(!window.is_full());
        window.push(second, 200, 2);
        assert!(window.is_full());
        // The second arrives first: nothing is taken while the oldest is still to come.
        second_tx.send(20).unwrap();
        assert!(window.ready().is_none());
        assert_eq!(window.len(), 2);
        first_tx.send(10).unwrap();
        assert_eq!(window.ready(), Some((Ok(10), 100, 1)));
        assert_eq!(window.oldest().await, Some((Ok(20), 200, 2)));
        assert!(window.is_empty());
        assert_eq!(window.oldest().await, None);
        assert!(window.ready().is_none());
    }

    #[tokio::test]
    async fn a_wait_given_up_keeps_the_acknowledgement() {
        let mut window = ReceiptWindow::new(1);
        let (sender, answer) = oneshot::channel::<u32>();
        window.push(answer, 7, 3);
        tokio::select! {
            biased;
            _ = window.oldest() => panic!("nothing was sent"),
            _ = std::future::ready(()) => {}
        }
        assert_eq!(window.len(), 1);
        sender.send(5).unwrap();
        assert_eq!(window.oldest().await, Some((Ok(5), 7, 3)));
    }
}
