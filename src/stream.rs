//! The sequencer: which stored events are released, and at which `seq`.
//!
//! Sans-IO. The writer owns the only write connection and asks this module,
//! inside its transaction, which events to release and in what order, so a
//! `seq` exists only once it is committed together with its event
//! (docs/ARCHITECTURE.md). Two orders:
//! - `event-time` (default): events whose time is at or below the watermark
//!   `max(verified, live)` are released sorted by (time, id); an event found
//!   later below what was already released gets the next `seq` with
//!   `late = true`; `max_hold` bounds how long an event can wait.
//! - `arrival`: every new event is released at once, in commit order.

pub use crate::config::{Order, ReleaseMode};

/// Facts about the MQTT subscription, published by the MQTT source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Live {
    /// Subscribed without a break since this time (µs); `None` while down.
    pub since_us: Option<i64>,
    /// When the subscription was last lost (µs), if ever.
    pub lost_at_us: Option<i64>,
    /// The broker granted less than `mqtt.qos` at the last SUBACK.
    pub downgraded: Option<QosDowngrade>,
}

/// A subscription granted below the asked QoS: the delivery guarantee the
/// operator configured does not hold, which nothing else would show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QosDowngrade {
    pub asked: u8,
    /// The lowest QoS granted among the filters.
    pub granted: u8,
}

/// The release rule's parameters (µs).
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    pub release: ReleaseMode,
    pub settle_us: i64,
    pub max_hold_us: i64,
    /// Whether a poller verifies the history (else `live` alone can move).
    pub has_poller: bool,
}

impl Rule {
    /// The `live` watermark: `now − settle` while the subscription has been
    /// unbroken — and, with a poller, only once the poller has verified past
    /// the moment it became unbroken, because what was lost during the break
    /// can only come from the poller. Otherwise frozen at the last loss.
    pub fn live(&self, now_us: i64, verified_us: Option<i64>, live: Live) -> Option<i64> {
        let frozen = live.lost_at_us.map(|t| t - self.settle_us);
        match live.since_us {
            Some(since) if !self.has_poller || verified_us.is_some_and(|v| v >= since) => {
                Some(now_us - self.settle_us)
            }
            _ => frozen,
        }
    }

    /// The release watermark: events at or below it may be released.
    /// `verified` is exclusive (the poller read the history `lt` it), so
    /// an event at that very instant may still come: it counts from the
    /// instant before.
    pub fn watermark(&self, now_us: i64, verified_us: Option<i64>, live: Live) -> Option<i64> {
        let live = match self.release {
            ReleaseMode::Live => self.live(now_us, verified_us, live),
            ReleaseMode::Verified => None,
        };
        verified_us.map(|v| v - 1).max(live)
    }
}

/// A stored event not yet released.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The store's handle on the row, so that the release writes it
    /// without another lookup by id.
    pub row: i64,
    pub id: String,
    pub occurred_us: i64,
    pub received_us: i64,
}

/// An event released at `seq`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    pub row: i64,
    pub id: String,
    pub seq: i64,
    pub late: bool,
}

/// Hands out gapless, strictly increasing stream positions, and remembers
/// how far the stream has been released (`high`) to flag late events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequencer {
    head: i64,
    high: Option<i64>,
}

/// What one release step did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Step {
    pub released: Vec<Release>,
    /// Released by `max_hold` although above the watermark.
    pub forced: usize,
    /// The event time those forced events span (first, last), if any.
    pub forced_span: Option<(i64, i64)>,
}

impl Sequencer {
    /// Continues after the highest `seq` in the store and the released high mark.
    pub fn resume(head: i64, high: Option<i64>) -> Self {
        Sequencer { head, high }
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

    /// How far event time has been released (µs).
    pub fn high(&self) -> Option<i64> {
        self.high
    }

    /// Releases, in (time, id) order, the candidates at or below
    /// `watermark` and those held longer than `max_hold`. A candidate at or
    /// below what an earlier step released is late.
    pub fn release(
        &mut self,
        candidates: Vec<Candidate>,
        watermark: Option<i64>,
        now_us: i64,
        max_hold_us: i64,
    ) -> Step {
        let held_since = now_us - max_hold_us;
        let mut eligible: Vec<(Candidate, bool)> = candidates
            .into_iter()
            .filter_map(|c| {
                let due = watermark.is_some_and(|w| c.occurred_us <= w);
                (due || c.received_us <= held_since).then_some((c, !due))
            })
            .collect();
        eligible.sort_by(|(a, _), (b, _)| (a.occurred_us, &a.id).cmp(&(b.occurred_us, &b.id)));
        let previous = self.high;
        let mut step = Step::default();
        for (c, forced) in eligible {
            if forced {
                step.forced += 1;
                let (from, to) = step.forced_span.unwrap_or((c.occurred_us, c.occurred_us));
                step.forced_span = Some((from.min(c.occurred_us), to.max(c.occurred_us)));
            }
            self.high = self.high.max(Some(c.occurred_us));
            let late = previous.is_some_and(|h| c.occurred_us <= h);
            let seq = self.next_seq();
            step.released.push(Release {
                row: c.row,
                id: c.id,
                seq,
                late,
            });
        }
        self.high = self.high.max(watermark);
        step
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn c(id: &str, t: i64) -> Candidate {
        Candidate {
            row: 0,
            id: id.into(),
            occurred_us: t,
            received_us: t,
        }
    }

    const RULE: Rule = Rule {
        release: ReleaseMode::Live,
        settle_us: 2_000,
        max_hold_us: 1_000_000,
        has_poller: true,
    };

    #[test]
    fn live_runs_only_once_the_poller_covered_the_break() {
        let up = Live {
            since_us: Some(100),
            lost_at_us: Some(50),
            ..Live::default()
        };
        assert_eq!(
            RULE.live(10_000, None, up),
            Some(50 - 2_000),
            "frozen at the loss"
        );
        assert_eq!(RULE.live(10_000, Some(99), up), Some(50 - 2_000));
        assert_eq!(RULE.live(10_000, Some(100), up), Some(8_000));
        let no_poller = Rule {
            has_poller: false,
            ..RULE
        };
        assert_eq!(no_poller.live(10_000, None, up), Some(8_000));
        let down = Live {
            since_us: None,
            lost_at_us: Some(5_000),
            ..Live::default()
        };
        assert_eq!(no_poller.live(10_000, None, down), Some(3_000));
        assert_eq!(
            no_poller.live(10_000, None, Live::default()),
            None,
            "never connected"
        );
    }

    #[test]
    fn verified_mode_ignores_live() {
        let strict = Rule {
            release: ReleaseMode::Verified,
            has_poller: false,
            ..RULE
        };
        let up = Live {
            since_us: Some(0),
            lost_at_us: None,
            ..Live::default()
        };
        assert_eq!(
            strict.watermark(10_000, Some(4_000), up),
            Some(3_999),
            "verified is exclusive"
        );
        assert_eq!(strict.watermark(10_000, None, up), None);
        assert_eq!(RULE.watermark(10_000, Some(4_000), up), Some(8_000));
        assert_eq!(RULE.watermark(1_000, Some(4_000), up), Some(3_999));
    }

    /// The watermark is inclusive: an event at it goes, one after it
    /// waits; and once released up to it, an event found later at it is
    /// late while one after it is not.
    #[test]
    fn the_watermark_releases_at_and_below_it_and_late_means_at_or_below() {
        let mut s = Sequencer::resume(0, None);
        let step = s.release(vec![c("at", 10), c("after", 11)], Some(10), 0, i64::MAX / 2);
        let ids: Vec<_> = step.released.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["at"]);
        assert_eq!(s.high(), Some(10));
        let step = s.release(
            vec![c("after", 11), c("again-at", 10)],
            Some(11),
            0,
            i64::MAX / 2,
        );
        let got: Vec<_> = step
            .released
            .iter()
            .map(|r| (r.id.as_str(), r.seq, r.late))
            .collect();
        assert_eq!(got, [("again-at", 2, true), ("after", 3, false)]);
    }

    /// `max_hold` counts from arrival: an event received exactly
    /// `max_hold` ago goes, one received a microsecond later waits.
    #[test]
    fn max_hold_is_inclusive_of_its_bound() {
        let mut s = Sequencer::resume(0, None);
        let held = |id: &str, received_us| Candidate {
            row: 0,
            id: id.into(),
            occurred_us: 50,
            received_us,
        };
        let step = s.release(vec![held("due", 200), held("not", 201)], None, 1_200, 1_000);
        let ids: Vec<_> = step.released.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["due"]);
        assert_eq!(step.forced, 1);
    }

    #[test]
    fn releases_sort_by_time_then_id_and_flag_late_arrivals() {
        let mut s = Sequencer::resume(0, None);
        let mut step = |cands, w| -> Vec<(String, i64, bool)> {
            let step = s.release(cands, Some(w), 0, i64::MAX / 2);
            step.released
                .into_iter()
                .map(|r| (r.id, r.seq, r.late))
                .collect()
        };
        let first = step(vec![c("b", 5), c("a", 5), c("z", 1), c("x", 9)], 6);
        assert_eq!(
            first,
            vec![
                ("z".into(), 1, false),
                ("a".into(), 2, false),
                ("b".into(), 3, false)
            ]
        );
        let second = step(vec![c("x", 9), c("y", 6), c("w", 2)], 10);
        assert_eq!(
            second,
            vec![
                ("w".into(), 4, true),
                ("y".into(), 5, true),
                ("x".into(), 6, false)
            ]
        );
    }

    #[test]
    fn max_hold_forces_out_what_waited_too_long() {
        let mut s = Sequencer::resume(0, None);
        let old = Candidate {
            row: 0,
            id: "o".into(),
            occurred_us: 500,
            received_us: 100,
        };
        let step = s.release(vec![old, c("n", 900)], None, 1_200, 1_000);
        assert_eq!(step.forced, 1);
        assert_eq!(step.forced_span, Some((500, 500)));
        assert_eq!(step.released.len(), 1);
        assert_eq!(s.high(), Some(500));
    }

    proptest! {
        /// Any interleaving of arrivals and watermark moves: seq has no hole,
        /// every event is released once, and the non-late events come out
        /// sorted by (time, id).
        #[test]
        fn release_order_holds_for_any_interleaving(
            ops in proptest::collection::vec(prop_oneof![
                (0i64..1000).prop_map(Some),
                Just(None),
            ], 1..120)
        ) {
            let mut s = Sequencer::resume(0, None);
            let mut pending: Vec<Candidate> = Vec::new();
            let mut out: Vec<(Release, i64)> = Vec::new();
            let mut watermark = 0i64;
            let mut n = 0;
            for op in ops {
                match op {
                    Some(t) => { pending.push(c(&format!("e{n:04}"), t)); n += 1; }
                    None => watermark += 37,
                }
                let step = s.release(pending.clone(), Some(watermark), 0, i64::MAX / 2);
                for r in step.released {
                    let t = pending.iter().find(|p| p.id == r.id).unwrap().occurred_us;
                    pending.retain(|p| p.id != r.id);
                    out.push((r, t));
                }
            }
            let step = s.release(pending.clone(), Some(i64::MAX / 4), 0, i64::MAX / 2);
            for r in step.released {
                let t = pending.iter().find(|p| p.id == r.id).unwrap().occurred_us;
                out.push((r, t));
            }
            prop_assert_eq!(out.len(), n);
            for (i, (r, _)) in out.iter().enumerate() {
                prop_assert_eq!(r.seq, i as i64 + 1);
            }
            let in_order: Vec<(i64, &str)> = out.iter().filter(|(r, _)| !r.late).map(|(r, t)| (*t, r.id.as_str())).collect();
            let mut sorted = in_order.clone();
            sorted.sort();
            prop_assert_eq!(in_order, sorted);
        }
    }
}
