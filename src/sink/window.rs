//! The ordered ack window of the sinks that publish into a log (NATS,
//! Kafka): sends go out pipelined, acks are awaited oldest first, and
//! `through` is the `seq` of the last event of the contiguous acked prefix:
//! the only place a cursor may move to. Sans-IO: it awaits whatever
//! futures it is given, so unit tests drive it with ready ones.

use std::collections::VecDeque;
use std::future::Future;

/// What the target said about one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ack {
    Stored,
    /// Already held (a resend its deduplication dropped).
    Duplicate,
}

/// The sends awaiting their ack, oldest first.
pub struct AckWindow<F> {
    in_flight: VecDeque<(i64, Option<F>)>,
    max: usize,
    /// The `seq` the cursor may move to.
    pub through: Option<i64>,
    /// Messages acked, and of those, duplicates.
    pub acked: u64,
    pub duplicates: u64,
}

impl<F, E> AckWindow<F>
where
    F: Future<Output = Result<Ack, E>>,
{
    pub fn new(max: usize) -> Self {
        AckWindow {
            in_flight: VecDeque::new(),
            max: max.max(1),
            through: None,
            acked: 0,
            duplicates: 0,
        }
    }

    /// Adds the send of event `seq` (`None`: passed without a send, e.g. a
    /// marker left out); awaits the oldest while more than `max` are out.
    pub async fn push(&mut self, seq: i64, ack: Option<F>) -> Result<(), E> {
        self.in_flight.push_back((seq, ack));
        while self.in_flight.len() > self.max {
            self.settle_oldest().await?;
        }
        Ok(())
    }

    /// Awaits every send still out; stops at the first failure.
    pub async fn finish(&mut self) -> Result<(), E> {
        while !self.in_flight.is_empty() {
            self.settle_oldest().await?;
        }
        Ok(())
    }

    async fn settle_oldest(&mut self) -> Result<(), E> {
        let Some((seq, ack)) = self.in_flight.pop_front() else {
            return Ok(());
        };
        if let Some(ack) = ack {
            let ack = ack.await?;
            self.acked += 1;
            self.duplicates += u64::from(ack == Ack::Duplicate);
        }
        self.through = Some(seq);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::{Ready, ready};

    type Window = AckWindow<Ready<Result<Ack, &'static str>>>;

    #[tokio::test]
    async fn the_cursor_stops_before_the_first_failed_ack() {
        let mut w = Window::new(2);
        w.push(1, Some(ready(Ok(Ack::Stored)))).await.unwrap();
        w.push(2, None).await.unwrap();
        w.push(3, Some(ready(Ok(Ack::Duplicate)))).await.unwrap();
        assert_eq!(
            w.through,
            Some(1),
            "two may be out: only the oldest settled"
        );
        w.push(4, Some(ready(Err("no stream")))).await.unwrap();
        assert_eq!(w.through, Some(2), "a passed event settles in its turn");
        w.push(5, Some(ready(Ok(Ack::Stored)))).await.unwrap();
        assert_eq!(w.finish().await, Err("no stream"));
        assert_eq!(w.through, Some(3), "5 was acked, but 4 before it was not");
        assert_eq!((w.acked, w.duplicates), (2, 1));
    }

    #[tokio::test]
    async fn a_window_of_one_awaits_each_send_before_the_next() {
        let mut w = Window::new(1);
        for seq in 1..=3 {
            w.push(seq, Some(ready(Ok(Ack::Stored)))).await.unwrap();
            assert_eq!(w.through, (seq > 1).then_some(seq - 1));
        }
        w.finish().await.unwrap();
        assert_eq!((w.through, w.acked, w.duplicates), (Some(3), 3, 0));
    }
}
