//! The writer's rules, driven through its channels against a real SQLite
//! file, with no broker: dedup by id, the dedup window for content keys,
//! `seq` without holes, and receipts only after the commit.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tokio::sync::mpsc;

use super::testing::{event, keep_all, running};
use super::*;
use crate::event::{ContentKey, Event, Origin, Parsed};
use crate::metrics::Counters;

/// A store in a fresh directory, a writer on it, and the channel its
/// receipts come back on.
struct Rig {
    _dir: tempfile::TempDir,
    store: Store,
    ingest: mpsc::Sender<Ingest>,
    receipts: mpsc::UnboundedReceiver<Vec<Receipt>>,
    counters: Arc<Counters>,
    writer: tokio::task::JoinHandle<Result<(), StoreError>>,
    handle: WriterHandle,
}

/// The rig in arrival order: events are released as they commit.
async fn rig() -> Rig {
    rig_in(StreamSettings::arrival()).await
}

/// The rig in event-time order, released up to what the poller verified
/// (sent as [`Ingest::Verified`]), so no clock decides the test.
async fn rig_by_verified_time() -> Rig {
    rig_by_verified_time_holding(i64::MAX / 4).await
}

/// [`rig_by_verified_time`] with a `max_hold` of `max_hold_us`.
async fn rig_by_verified_time_holding(max_hold_us: i64) -> Rig {
    rig_in(StreamSettings {
        order: crate::stream::Order::EventTime,
        rule: crate::stream::Rule {
            release: crate::stream::ReleaseMode::Verified,
            settle_us: 0,
            max_hold_us,
            has_poller: true,
        },
        live: tokio::sync::watch::channel(crate::stream::Live::default()).1,
    })
    .await
}

async fn rig_in(stream: StreamSettings) -> Rig {
    rig_keeping(stream, keep_all()).await
}

async fn rig_keeping(stream: StreamSettings, retention: Retention) -> Rig {
    let (acks, receipts) = mpsc::unbounded_channel();
    let r = running(stream, retention, Some(acks)).await;
    Rig {
        _dir: r.dir,
        store: r.store,
        ingest: r.channels.ingest,
        receipts,
        counters: r.counters,
        writer: r.writer,
        handle: r.channels.handle,
    }
}

fn keyed(key: &str, at_us: i64, window_us: i64) -> Event {
    Event {
        content_key: Some(ContentKey {
            key: key.into(),
            window_us,
        }),
        ..event(&format!("{key}-{at_us}"), at_us)
    }
}

impl Rig {
    async fn send(&self, e: Event, receipt: u64) {
        self.ingest
            .send(Ingest::Message {
                item: Parsed::Event(e),
                ack: Some(Receipt(receipt)),
                permit: None,
            })
            .await
            .unwrap();
    }

    /// Receipts until `n` have come back.
    async fn receipts(&mut self, n: usize) -> Vec<u64> {
        let mut got = Vec::new();
        while got.len() < n {
            got.extend(self.receipts.recv().await.unwrap().into_iter().map(|r| r.0));
        }
        got
    }

    /// The poller's word that the history is verified up to `until_us`,
    /// once committed.
    async fn verified(&self, until_us: i64) {
        let (done, committed) = tokio::sync::oneshot::channel();
        self.ingest
            .send(Ingest::Verified { until_us, done })
            .await
            .unwrap();
        committed.await.unwrap();
    }

    /// `(id, late)` of every released event, in stream order.
    async fn released(&self) -> Vec<(String, bool)> {
        let events = self.store.released_after(0, 1000).await.unwrap();
        events.into_iter().map(|e| (e.id, e.late)).collect()
    }

    /// `(seq, id)` of every released event, in stream order.
    async fn stream(&self) -> Vec<(i64, String)> {
        self.store
            .released_after(0, 1000)
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.seq, e.id))
            .collect()
    }
}

#[tokio::test]
async fn an_id_is_stored_once_within_a_batch_and_across_batches() {
    let mut r = rig().await;
    for (i, id) in ["a", "b", "a"].into_iter().enumerate() {
        r.send(event(id, 1), i as u64).await;
    }
    r.receipts(3).await;
    r.send(event("b", 2), 3).await;
    r.send(event("c", 3), 4).await;
    assert_eq!(r.receipts(2).await, vec![3, 4], "duplicates are acked too");
    let ids: Vec<String> = r.stream().await.into_iter().map(|(_, id)| id).collect();
    assert_eq!(ids, ["a", "b", "c"]);
    assert_eq!(r.counters.stored.load(Relaxed), 3);
    assert_eq!(r.counters.duplicates.load(Relaxed), 2);
}

#[tokio::test]
async fn a_content_key_is_a_duplicate_only_within_its_window() {
    let mut r = rig().await;
    let window = 1_000_000;
    r.send(keyed("k", 10_000_000, window), 0).await;
    r.send(keyed("k", 10_500_000, window), 1).await; // same message again
    r.send(keyed("k", 9_200_000, window), 2).await; // either side of the time
    r.send(keyed("k", 11_000_000, window), 3).await; // a window away: new
    r.send(keyed("other", 10_000_000, window), 4).await;
    r.receipts(5).await;
    let ids: Vec<String> = r.stream().await.into_iter().map(|(_, id)| id).collect();
    assert_eq!(ids, ["k-10000000", "k-11000000", "other-10000000"]);
}

#[tokio::test]
async fn seq_has_no_holes_whatever_is_dropped() {
    let mut r = rig().await;
    let mut n = 0;
    for round in 0..5 {
        for id in 0..20 {
            // Every round repeats half of the previous round's ids.
            r.send(event(&format!("e{}", round * 10 + id), round), n)
                .await;
            n += 1;
        }
    }
    r.receipts(n as usize).await;
    let seqs: Vec<i64> = r.stream().await.into_iter().map(|(seq, _)| seq).collect();
    assert_eq!(seqs, (1..=60).collect::<Vec<_>>());
    assert_eq!(r.store.head().await.unwrap(), 60);
}

#[tokio::test]
async fn receipts_come_back_only_after_their_commit() {
    let mut r = rig().await;
    r.send(event("before", 1), 7).await;
    assert_eq!(r.receipts(1).await, vec![7]);
    // Whoever sees a receipt can read its event from another connection.
    assert_eq!(r.stream().await, vec![(1, "before".to_string())]);

    // A commit that fails hands back nothing, and the writer stops (the
    // broker then redelivers what was not acked).
    let super::backend::Db::Sqlite(pool) = &r.store.pool else {
        unreachable!("the rig is SQLite")
    };
    sqlx::query(
        "CREATE TRIGGER refuse BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'injected'); END",
    )
    .execute(pool)
    .await
    .unwrap();
    r.send(event("refused", 2), 8).await;
    let ended = (&mut r.writer).await.unwrap();
    assert!(
        ended.is_err_and(|e| e.to_string().contains("injected")),
        "the failed commit ends the writer"
    );
    assert!(
        r.receipts.recv().await.is_none(),
        "no receipt for an event that is not durable"
    );
    assert_eq!(r.stream().await, vec![(1, "before".to_string())]);
}

#[tokio::test]
async fn receipts_end_with_ingest_while_sinks_still_hold_the_writer() {
    let r = rig().await;
    r.send(event("last", 1), 9).await;
    let Rig {
        ingest,
        mut receipts,
        writer,
        handle: sink_handle,
        ..
    } = r;
    drop(ingest);
    assert_eq!(receipts.recv().await.map(|v| v[0].0), Some(9));
    assert!(
        receipts.recv().await.is_none(),
        "the source can disconnect: no receipt will follow"
    );
    assert!(!writer.is_finished(), "a sink's handle keeps the writer");
    drop(sink_handle);
    writer.await.unwrap().unwrap();
}

/// A batch is released as it is inserted while nothing stored waits; an
/// event left waiting sends the next batches through the general release
/// step, which must still find it.
#[tokio::test]
async fn events_waiting_for_release_are_found_whichever_way_a_batch_went() {
    let mut r = rig_by_verified_time().await;
    let released = |ids: &[(&str, bool)]| -> Vec<(String, bool)> {
        ids.iter()
            .map(|(id, late)| (id.to_string(), *late))
            .collect()
    };
    r.send(event("b", 40), 0).await;
    r.send(event("a", 50), 1).await;
    r.receipts(2).await;
    assert!(r.released().await.is_empty(), "nothing is verified yet");
    r.verified(100).await;
    assert_eq!(r.released().await, released(&[("b", false), ("a", false)]));

    r.send(event("c", 150), 2).await; // above what is verified: waits
    r.receipts(1).await;
    assert_eq!(r.released().await.len(), 2);
    r.send(event("d", 160), 4).await; // the general step: both still wait
    r.receipts(1).await;
    assert_eq!(r.released().await.len(), 2);

    r.verified(200).await; // a batch with no event of its own
    assert_eq!(
        r.released().await,
        released(&[("b", false), ("a", false), ("c", false), ("d", false)])
    );

    r.send(event("e", 30), 3).await; // behind the stream: late
    r.receipts(1).await;
    assert_eq!(
        r.released().await,
        released(&[
            ("b", false),
            ("a", false),
            ("c", false),
            ("d", false),
            ("e", true)
        ])
    );
    assert_eq!(r.counters.released.load(Relaxed), 5);
    assert_eq!(r.counters.late.load(Relaxed), 1);
}

/// Data flows source → store → stream → sink: the store never reaches back
/// into a source (what it needs from one, such as the MQTT ack, reaches it
/// as plain data: [`Receipt`], [`crate::event::Parsed`]).
#[test]
fn the_store_imports_nothing_from_the_sources() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store");
    let mut read = 0;
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    while let Some(path) = paths.pop() {
        if path.is_dir() {
            paths.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if path.ends_with("tests.rs") {
            continue; // this test names what it looks for
        }
        let text = std::fs::read_to_string(&path).unwrap();
        read += 1;
        for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
            assert!(
                !line.contains("crate::source") && !line.contains("crate::sink"),
                "{}: {line}",
                path.display()
            );
        }
    }
    assert!(read >= 8, "read only {read} files of src/store");
}

const SECOND: i64 = 1_000_000;

/// A rig that prunes everything older than a second (so its events, an
/// hour old, all qualify by age) once `sinks` passed it; returns the rig
/// and the hour-old instant event `i` is `i` seconds after.
async fn rig_pruning(sinks: &[&str], poll_guard_us: Option<i64>) -> (Rig, i64) {
    rig_pruning_after(SECOND, sinks, poll_guard_us).await
}

/// [`rig_pruning`] with a retention of `keep_us`.
async fn rig_pruning_after(keep_us: i64, sinks: &[&str], poll_guard_us: Option<i64>) -> (Rig, i64) {
    let retention = Retention {
        keep_us,
        sinks: sinks.iter().map(|s| s.to_string()).collect(),
        poll_guard_us,
    };
    let mut r = rig_keeping(StreamSettings::arrival(), retention).await;
    let base = crate::event::now_us() - 3600 * SECOND;
    for i in 1..=10 {
        r.send(event(&format!("e{i}"), base + i * SECOND), i as u64)
            .await;
    }
    r.receipts(10).await;
    (r, base)
}

impl Rig {
    /// Waits for the writer's prune (it runs every second) to have
    /// deleted at least `n` events; the seqs left in the stream.
    async fn pruned(&self, n: u64) -> Vec<i64> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.counters.pruned.load(Relaxed) < n {
            assert!(tokio::time::Instant::now() < deadline, "nothing pruned");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        self.stream()
            .await
            .into_iter()
            .map(|(seq, _)| seq)
            .collect()
    }
}

fn dead_letter(seq: i64) -> SinkOp {
    SinkOp::DeadLetter {
        seq,
        event_id: format!("e{seq}"),
        attempts: 1,
        status: Some(400),
        error: "refused".into(),
    }
}

/// Two sinks at different cursors and a dead letter: what the slower sink
/// has not passed stays, and so does the dead letter (`dlq retry` needs
/// it), whatever its age.
#[tokio::test]
async fn retention_keeps_what_the_slowest_sink_has_not_passed_and_every_dead_letter() {
    let (r, _) = rig_pruning(&["fast", "slow"], None).await;
    // The cursors go last: until both sinks have one, nothing is passed.
    r.handle
        .sink_ops("slow", vec![dead_letter(2)])
        .await
        .unwrap();
    r.handle.commit_cursor("fast", 8).await.unwrap();
    r.handle.commit_cursor("slow", 5).await.unwrap();
    assert_eq!(r.pruned(4).await, vec![2, 6, 7, 8, 9, 10]);
    assert_eq!(r.counters.pruned.load(Relaxed), 4);
}

/// With a poller, nothing within `poll_guard_us` before its verified
/// watermark is pruned, so an id the overlap reads again is still known
/// and not stored (nor released) twice.
#[tokio::test]
async fn retention_spares_the_poll_overlap_so_its_ids_stay_deduplicated() {
    let guard = 600 * SECOND;
    let (mut r, base) = rig_pruning(&["only"], Some(guard)).await;
    // The overlap reaches back to event 4 and a half.
    r.verified(base + 4 * SECOND + SECOND / 2 + guard).await;
    r.handle.commit_cursor("only", 10).await.unwrap();
    assert_eq!(r.pruned(4).await, vec![5, 6, 7, 8, 9, 10]);

    let again = Event {
        origin: Origin::Poll,
        ..event("e5", base + 5 * SECOND)
    };
    r.send(again, 11).await;
    assert_eq!(r.receipts(1).await, vec![11]);
    assert_eq!(r.pruned(4).await, vec![5, 6, 7, 8, 9, 10]);
    assert_eq!(r.counters.poll_known.load(Relaxed), 1);
}

/// Every sink passed everything: all but the head row go, and `seq`
/// continues after it.
#[tokio::test]
async fn retention_keeps_the_head_row_so_seq_continues() {
    let (mut r, base) = rig_pruning(&["only"], None).await;
    r.handle.commit_cursor("only", 10).await.unwrap();
    assert_eq!(r.pruned(9).await, vec![10]);
    r.send(event("e11", base + 11 * SECOND), 11).await;
    r.receipts(1).await;
    assert_eq!(r.stream().await.last(), Some(&(11, "e11".to_string())));
}

/// A ScaleIT event waiting for its schema is stored but not released;
/// one already validated goes out at once.
#[tokio::test]
async fn an_event_pending_validation_is_stored_but_not_released() {
    let mut r = rig().await;
    let scaleit = |id: &str, validation| Event {
        ext: Some(Box::new(crate::event::EventExt {
            source: "app/a/s".into(),
            app: "a".into(),
            schema_ref: None,
            dataschema: None,
            validation,
        })),
        ..event(id, 1)
    };
    r.send(scaleit("waits", crate::event::Validation::Pending), 1)
        .await;
    r.send(scaleit("valid", crate::event::Validation::Valid), 2)
        .await;
    r.receipts(2).await;
    assert_eq!(r.stream().await, vec![(1, "valid".to_string())]);
    assert_eq!(r.counters.stored.load(Relaxed), 2);
}

/// Only what is older than the retention goes, even once every sink
/// passed it.
#[tokio::test]
async fn retention_keeps_what_is_younger_than_the_retention() {
    let (mut r, _) = rig_pruning_after(10 * SECOND, &["only"], None).await;
    let now = crate::event::now_us();
    r.send(event("young", now), 11).await;
    r.send(event("newest", now), 12).await;
    r.receipts(2).await;
    r.handle.commit_cursor("only", 12).await.unwrap();
    assert_eq!(r.pruned(10).await, vec![11, 12]);
}

/// Event-time order in `live` mode on an unbroken subscription and no
/// poller, with no settle time: the watermark is now.
fn live_now(max_hold_us: i64) -> StreamSettings {
    StreamSettings {
        order: crate::stream::Order::EventTime,
        rule: crate::stream::Rule {
            release: crate::stream::ReleaseMode::Live,
            settle_us: 0,
            max_hold_us,
            has_poller: false,
        },
        live: tokio::sync::watch::channel(crate::stream::Live {
            since_us: Some(0),
            ..Default::default()
        })
        .1,
    }
}

/// While nothing waits, the writer's idle tick still moves how far event
/// time has been released: an event that turns up below it is late.
#[tokio::test]
async fn time_released_while_idle_makes_an_older_arrival_late() {
    let mut r = rig_in(live_now(i64::MAX / 4)).await;
    let before = crate::event::now_us() - 60 * SECOND;
    // The idle tick comes every 5 ms (settle 0) once the writer runs; this
    // single-threaded test lets it run for 40 of them first.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    r.send(event("old", before), 1).await;
    r.receipts(1).await;
    assert_eq!(r.released().await, vec![("old".to_string(), true)]);
}

/// An event held past `max_hold` above the watermark is released anyway,
/// followed by an `unverified` gap marker.
#[tokio::test]
async fn max_hold_releases_a_held_event_and_marks_the_span_unverified() {
    let mut r = rig_by_verified_time_holding(SECOND).await;
    let hour_ago = crate::event::now_us() - 3600 * SECOND;
    r.send(event("held", hour_ago), 1).await;
    r.receipts(1).await;
    let released = r.store.released_after(0, 10).await.unwrap();
    let kinds: Vec<(String, bool)> = released
        .iter()
        .map(|e| (e.id.clone(), e.is_marker()))
        .collect();
    assert_eq!(kinds.len(), 2, "{kinds:?}");
    assert_eq!(kinds[0], ("held".to_string(), false));
    assert!(kinds[1].1, "an unverified marker follows: {kinds:?}");
    assert_eq!(r.counters.forced.load(Relaxed), 1);

    // Another forced out while the gap is open extends it: one gap.
    r.send(event("held too", hour_ago + 10), 2).await;
    r.receipts(1).await;
    let gaps = r.store.last_gaps(10).await.unwrap();
    assert_eq!(gaps.len(), 1);
    assert_eq!(
        (gaps[0].from_us, gaps[0].to_us, gaps[0].events),
        (hour_ago, hour_ago + 10, Some(2))
    );
    assert_eq!(r.store.released_after(0, 10).await.unwrap().len(), 3);

    // Verified up to the gap's last instant (exclusive): still open. Past
    // it: closed, with an `io.gapless.verified` marker.
    r.verified(hour_ago + 10).await;
    assert_eq!(r.store.released_after(0, 10).await.unwrap().len(), 3);
    r.verified(hour_ago + 11).await;
    let released = r.store.released_after(0, 10).await.unwrap();
    assert_eq!(released.len(), 4);
    assert!(released[3].is_marker());
    assert!(
        r.store.last_gaps(10).await.unwrap()[0]
            .verified_at_us
            .is_some()
    );
}

/// The writer's counters for one batch of everything: new and repeated
/// MQTT events, a poll event MQTT missed and one it had, a skipped
/// message and a rejected one.
#[tokio::test]
async fn each_message_is_counted_once_under_its_kind() {
    let mut r = rig().await;
    let poll = |id: &str| Event {
        origin: Origin::Poll,
        ..event(id, 1)
    };
    let items = [
        Parsed::Event(event("a", 1)),
        Parsed::Event(event("a", 1)),
        Parsed::Event(poll("b")),
        Parsed::Event(poll("a")),
        Parsed::Skipped("task".into()),
        Parsed::Rejected(crate::event::Rejected::new(
            "t",
            b"{",
            crate::event::RejectReason::MalformedJson,
            "broken",
            1,
        )),
    ];
    for (n, item) in items.into_iter().enumerate() {
        r.ingest
            .send(Ingest::Message {
                item,
                ack: Some(Receipt(n as u64)),
                permit: None,
            })
            .await
            .unwrap();
    }
    r.receipts(6).await;
    // In arrival order, what the poller recovered is late by definition.
    assert_eq!(
        r.released().await,
        vec![("a".to_string(), false), ("b".to_string(), true)]
    );
    let c = &r.counters;
    let got = [
        &c.stored,
        &c.duplicates,
        &c.recovered,
        &c.poll_known,
        &c.skipped,
        &c.rejected,
    ]
    .map(|n| n.load(Relaxed));
    assert_eq!(got, [2, 1, 1, 1, 1, 1]);
}

/// A gap a source reports (here: a lost session without history) is
/// recorded once, with its marker in the stream; reported again, it is
/// the same marker and is not repeated.
#[tokio::test]
async fn a_reported_gap_is_recorded_once_with_its_marker() {
    let mut r = rig().await;
    let gap = crate::gap::Gap {
        reason: crate::gap::Reason::NoHistory,
        from_us: 10,
        to_us: 20,
        events: None,
    };
    for _ in 0..2 {
        r.ingest.send(Ingest::Gap(gap)).await.unwrap();
    }
    r.send(event("after", 30), 1).await;
    r.receipts(1).await;
    let released = r.store.released_after(0, 10).await.unwrap();
    // One marker and the event (in arrival order a batch's markers follow
    // its events).
    let mut kinds: Vec<bool> = released.iter().map(|e| e.is_marker()).collect();
    kinds.sort();
    assert_eq!(kinds, [false, true]);
    let gaps = r.store.last_gaps(10).await.unwrap();
    assert_eq!(gaps.len(), 1);
    assert_eq!((gaps[0].from_us, gaps[0].to_us), (10, 20));
    assert_eq!(r.counters.duplicates.load(Relaxed), 0);
    assert_eq!(r.counters.stored.load(Relaxed), 2);
}

#[test]
fn placeholders_are_anonymous_rows() {
    use super::ingest::placeholders;
    assert_eq!(placeholders(2, 3), "(?,?,?),(?,?,?)");
}
