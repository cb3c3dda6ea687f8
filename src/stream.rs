//! The sequencer: which stored events are released, and at which `seq`.
//!
//! Sans-IO: the writer owns the only write connection and asks the
//! sequencer for positions inside its transaction, so a `seq` exists only
//! once it is committed together with its event (DESIGN.md, "Sequencer").
//! This is the `arrival` order: an event is released the moment it is
//! first stored, in commit order.

/// Hands out gapless, strictly increasing stream positions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequencer {
    head: i64,
}

impl Sequencer {
    /// Continues after the highest `seq` already in the store.
    pub fn resume_after(head: i64) -> Self {
        Sequencer { head }
    }

    /// The next position.
    pub fn next_seq(&mut self) -> i64 {
        self.head += 1;
        self.head
    }

    /// The highest position handed out.
    pub fn head(&self) -> i64 {
        self.head
    }

    /// Takes back positions handed out for a transaction that did not commit.
    pub fn rewind_to(&mut self, head: i64) {
        debug_assert!(head <= self.head);
        self.head = head;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_gapless_across_restarts_and_rollbacks() {
        let mut s = Sequencer::resume_after(0);
        assert_eq!((s.next_seq(), s.next_seq()), (1, 2));
        let before = s.head();
        s.next_seq();
        s.rewind_to(before);
        assert_eq!(s.next_seq(), 3);
        let mut resumed = Sequencer::resume_after(s.head());
        assert_eq!(resumed.next_seq(), 4);
    }
}
