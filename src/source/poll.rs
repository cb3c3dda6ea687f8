//! The gap poller: reads the source's REST history for every window gapless
//! has not yet verified and writes what it finds through the same writer as
//! MQTT (docs/ARCHITECTURE.md).
//!
//! The window arithmetic is sans-IO ([`plan`]); the [`Poller`] task pages
//! through each window, retries transient failures, and moves the verified
//! watermark only after a whole window is committed. What a history is
//! (VCD's audit trail, a ScaleIT app's endpoint) hides behind [`History`],
//! so another source costs one implementation, not another poller.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::Parsed;
use super::history::{ApiError, Window};
use crate::config::{PollConfig, parse_schedule};
use crate::event::{now_us, rfc3339_us};
use crate::gap::{Gap, Reason};
use crate::metrics::Counters;
use crate::store::{Ingest, Store, StoreError};
use crate::stream::Live;
use crate::telemetry::{InternalEvent, PollWindowVerified};

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("poll.schedule: {0}")]
    Schedule(String),
    #[error("the store writer has stopped")]
    WriterGone,
    #[error("run cancelled by shutdown")]
    Cancelled,
    #[error(
        "window {from} .. {to} is incomplete: its pages held {seen} events, the server counted {total}, \
         also after {rereads} re-reads; it stays unverified"
    )]
    Incomplete {
        from: String,
        to: String,
        seen: u64,
        total: u64,
        rereads: u32,
    },
}

impl PollError {
    /// `Some(retry_after)` when the request may succeed if tried again.
    fn retryable(&self) -> Option<Option<Duration>> {
        match self {
            PollError::Api(e) => e.retryable(),
            _ => None,
        }
    }
}

/// How long until the schedule's next tick after `now`. Computed in the
/// poller's own loop (no scheduler task that could die unnoticed).
fn until_next_tick(cron: &croner::Cron, now: chrono::DateTime<chrono::Utc>) -> Duration {
    cron.find_next_occurrence(&now, false)
        .ok()
        .and_then(|at| (at - now).to_std().ok())
        .unwrap_or(Duration::from_secs(60))
}

/// The window rules of [`PollConfig`], in µs.
#[derive(Clone, Copy, Debug)]
pub struct Rules {
    pub overlap_us: i64,
    pub visibility_lag_us: i64,
    pub max_window_us: i64,
    pub initial_lookback_us: i64,
}

impl From<&PollConfig> for Rules {
    fn from(c: &PollConfig) -> Self {
        let us = |d: Duration| d.as_micros() as i64;
        Rules {
            overlap_us: us(c.overlap.0),
            visibility_lag_us: us(c.visibility_lag.0),
            max_window_us: us(c.max_window.0).max(1000),
            initial_lookback_us: us(c.initial_lookback.0),
        }
    }
}

/// Saturates at `i64::MIN`, where the whole millisecond below is out of range.
fn floor_ms(us: i64) -> i64 {
    us.saturating_sub(us.rem_euclid(1000))
}

/// The closed windows to read now: from `verified − overlap` (or, never
/// verified, `now − initial_lookback`) up to `now − visibility_lag`, cut into
/// pieces of at most `max_window`, on whole milliseconds (the audit trail's
/// precision). Each window's end becomes the watermark once it is done.
pub fn plan(verified_until_us: Option<i64>, now_us: i64, rules: Rules) -> Vec<Window> {
    let end = floor_ms(now_us.saturating_sub(rules.visibility_lag_us));
    let start = floor_ms(match verified_until_us {
        Some(v) => v.saturating_sub(rules.overlap_us),
        None => now_us
            .saturating_sub(rules.initial_lookback_us)
            .saturating_sub(rules.visibility_lag_us),
    });
    let mut windows = Vec::new();
    let mut from = start;
    while from < end {
        let to = from.saturating_add(floor_ms(rules.max_window_us)).min(end);
        windows.push(Window {
            from_us: from,
            to_us: to,
        });
        from = to;
    }
    windows
}

/// Where a poller that has never verified anything starts when it is told
/// not to read history (`initial_lookback = 0`): the watermark is set to
/// `now − visibility_lag` without a request, and later runs read on from
/// there. `None` when there is a watermark or a lookback to read.
pub fn establish(verified_until_us: Option<i64>, now_us: i64, rules: Rules) -> Option<i64> {
    (verified_until_us.is_none() && rules.initial_lookback_us == 0)
        .then(|| floor_ms(now_us - rules.visibility_lag_us))
}

/// The span the history no longer holds: from the verified watermark up to
/// `now − retention`, when the watermark is older than that. The poller
/// marks it as a `history_expired` gap and reads on from its end.
pub fn expired(
    verified_until_us: Option<i64>,
    now_us: i64,
    retention_us: Option<i64>,
) -> Option<Gap> {
    let cutoff = floor_ms(now_us.saturating_sub(retention_us?));
    let from_us = verified_until_us.filter(|&v| v < cutoff)?;
    Some(Gap {
        reason: Reason::HistoryExpired,
        from_us,
        to_us: cutoff,
        events: None,
    })
}

/// When the catch-up run after a (re)subscription at `since_us` is due:
/// once `visibility_lag` has passed, so its window ends after `since_us`
/// and the live watermark may move again.
pub fn catch_up_at(since_us: i64, rules: Rules) -> i64 {
    since_us + rules.visibility_lag_us + 1000
}

/// A REST history the poller can read, window by window and page by page.
pub trait History: Send + Sync + 'static {
    /// Page `page` (1-based) of the messages in `window`, parsed the way
    /// MQTT's are (with `Origin::Poll`), oldest first.
    fn page(
        &self,
        window: Window,
        page: u32,
        page_size: u32,
    ) -> impl Future<Output = Result<HistoryPage, PollError>> + Send;
}

/// One page of a [`History`].
#[derive(Debug)]
pub struct HistoryPage {
    pub items: Vec<Parsed>,
    /// Another page of the same window follows.
    pub more: bool,
    /// How many messages the whole window holds, if the server counts them:
    /// paging that saw fewer reads the window again.
    pub total: Option<u64>,
}

/// The poller task.
pub struct Poller<H> {
    pub history: Arc<H>,
    pub store: Store,
    pub ingest: mpsc::Sender<Ingest>,
    /// The watermark's key (the source's CloudEvent `source`).
    pub source: String,
    pub config: PollConfig,
    pub counters: Arc<Counters>,
    /// The MQTT subscription's state: after every (re)subscription one
    /// catch-up run follows as soon as `visibility_lag` has passed, instead
    /// of waiting for the next tick. `None` runs on the schedule alone.
    pub live: Option<watch::Receiver<Live>>,
    /// `source.max_clock_skew` in µs: later event times are rejected.
    pub max_skew_us: i64,
    /// How far back the history holds events (µs; `None` = unbounded).
    pub retention_us: Option<i64>,
}

/// What one run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RunStats {
    pub windows: u32,
    pub pages: u32,
    pub events: u64,
}

impl<H: History> Poller<H> {
    /// Runs once now, then on every tick of `poll.schedule`, until shutdown.
    /// Runs never overlap: ticks during a run collapse into one next run.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), PollError> {
        let cron = parse_schedule(&self.config.schedule).map_err(PollError::Schedule)?;
        tracing::info!(schedule = %self.config.schedule, "poller started");
        let rules = Rules::from(&self.config);
        let mut live = self.live.clone();
        'runs: loop {
            let run_started = now_us();
            match self.run_once(&shutdown).await {
                Ok(stats) => {
                    self.counters.poll_result(true, now_us());
                    tracing::debug!(?stats, "poll run done");
                }
                Err(PollError::Cancelled) => break,
                Err(PollError::WriterGone | PollError::Store(StoreError::WriterGone)) => break,
                Err(e @ PollError::Store(_)) => return Err(e),
                Err(e) => {
                    self.counters.poll_result(false, now_us());
                    tracing::warn!(error = %crate::error_chain(&e), "poll run failed; the watermark stays, the next run retries");
                }
            }
            // Wait for the next tick, or for the catch-up run the current
            // subscription asks for: due while no run has started since its
            // catch-up time (a tick that came earlier does not cover it).
            loop {
                let due = live
                    .as_ref()
                    .and_then(|l| l.borrow().since_us)
                    .map(|since| catch_up_at(since, rules))
                    .filter(|&at| at > run_started)
                    .map(|at| Duration::from_micros((at - now_us()).max(0) as u64));
                let tick = until_next_tick(&cron, chrono::Utc::now());
                tokio::select! {
                    _ = tokio::time::sleep(tick) => break,
                    _ = shutdown.cancelled() => break 'runs,
                    _ = async { tokio::time::sleep(due.unwrap_or_default()).await }, if due.is_some() => {
                        tracing::info!("catch-up poll after the MQTT subscription");
                        break;
                    }
                    changed = async { live.as_mut().unwrap().changed().await }, if live.is_some() => {
                        if changed.is_err() {
                            live = None;
                        }
                    }
                }
            }
        }
        tracing::info!("poller stopped");
        Ok(())
    }

    /// One run: every unverified window, in order, each completely.
    pub async fn run_once(&self, shutdown: &CancellationToken) -> Result<RunStats, PollError> {
        self.run_once_at(now_us(), shutdown).await
    }

    /// [`Poller::run_once`] as if the time were `now_us`.
    pub async fn run_once_at(
        &self,
        now_us: i64,
        shutdown: &CancellationToken,
    ) -> Result<RunStats, PollError> {
        let mut verified = self.store.verified_until(&self.source).await?;
        let rules = Rules::from(&self.config);
        let mut stats = RunStats::default();
        if let Some(at) = establish(verified, now_us, rules) {
            self.verify(at).await?;
            tracing::info!(verified_until = %rfc3339_us(at),
                "first start: history is verified from now on (poll.initial_lookback = 0 reads nothing older)");
            return Ok(stats);
        }
        if let Some(gap) = expired(verified, now_us, self.retention_us) {
            tracing::warn!(from = %rfc3339_us(gap.from_us), to = %rfc3339_us(gap.to_us),
                "the history no longer holds this span (poll.history_retention): marking it as a gap and reading on from its end");
            self.send(Ingest::Gap(gap)).await?;
            self.verify(gap.to_us).await?;
            verified = Some(gap.to_us);
        }
        let windows = plan(verified, now_us, rules);
        let mut attempt = 0u32;
        for window in windows {
            let started = Instant::now();
            let (mut events, mut pages, mut page) = (0u64, 0u32, 1u32);
            // Distinct ids seen, to catch a server whose order of events
            // sharing a millisecond shifts between pages (one could then be
            // on no page): the window is read again.
            let mut ids = HashSet::new();
            let mut unusable = 0u64;
            let mut rereads = 0u32;
            loop {
                let result = tokio::select! {
                    r = self.history.page(window, page, self.config.page_size) => r,
                    _ = shutdown.cancelled() => return Err(PollError::Cancelled),
                };
                let body = match result {
                    Ok(body) => body,
                    Err(e) => match e.retryable() {
                        Some(retry_after) if attempt < self.config.max_retries => {
                            attempt += 1;
                            let delay = crate::net::backoff::retry_delay(
                                attempt,
                                retry_after,
                                rand::random(),
                            );
                            tracing::warn!(error = %crate::error_chain(&e), attempt, retry_in = ?delay, "history request failed; retrying");
                            tokio::select! {
                                _ = tokio::time::sleep(delay) => continue,
                                _ = shutdown.cancelled() => return Err(PollError::Cancelled),
                            }
                        }
                        _ => return Err(e),
                    },
                };
                pages += 1;
                events += body.items.len() as u64;
                let now = crate::event::now_us();
                for item in body.items {
                    let item = item.bound_time("rest:history", now, self.max_skew_us);
                    match &item {
                        Parsed::Event(e) => drop(ids.insert(e.id.clone())),
                        // A rejection dated before the watermark is the
                        // overlap read again: the run that first saw it kept it.
                        Parsed::Rejected(r) if verified.is_some_and(|v| r.at_us < v) => {
                            unusable += 1;
                            continue;
                        }
                        _ => unusable += 1,
                    }
                    self.send(Ingest::Message {
                        item,
                        ack: None,
                        permit: None,
                    })
                    .await?;
                }
                if body.more {
                    page += 1;
                    continue;
                }
                let seen = ids.len() as u64 + unusable;
                match body.total {
                    Some(total) if seen < total && rereads < self.config.max_retries => {
                        rereads += 1;
                        tracing::warn!(
                            seen,
                            total,
                            reread = rereads,
                            "window paging saw fewer events than the server counted; reading it again"
                        );
                        page = 1;
                        unusable = 0;
                    }
                    // Verified means verified: a window that never adds up
                    // fails the run and keeps the watermark where it is.
                    Some(total) if seen < total => {
                        return Err(PollError::Incomplete {
                            from: rfc3339_us(window.from_us),
                            to: rfc3339_us(window.to_us),
                            seen,
                            total,
                            rereads,
                        });
                    }
                    _ => break,
                }
            }
            self.verify(window.to_us).await?;
            PollWindowVerified {
                from: &rfc3339_us(window.from_us),
                to: &rfc3339_us(window.to_us),
                events,
                pages,
                took: started.elapsed(),
            }
            .emit(&self.counters);
            stats.windows += 1;
            stats.pages += pages;
            stats.events += events;
        }
        Ok(stats)
    }

    /// Moves the watermark to `until_us` behind what was sent before it,
    /// and waits for that commit.
    async fn verify(&self, until_us: i64) -> Result<(), PollError> {
        let (done, committed) = oneshot::channel();
        self.send(Ingest::Verified { until_us, done }).await?;
        committed.await.map_err(|_| PollError::WriterGone)
    }

    async fn send(&self, item: Ingest) -> Result<(), PollError> {
        self.ingest
            .send(item)
            .await
            .map_err(|_| PollError::WriterGone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    fn rules() -> Rules {
        Rules {
            overlap_us: 120 * S,
            visibility_lag_us: 5 * S,
            max_window_us: 3600 * S,
            initial_lookback_us: 0,
        }
    }

    #[test]
    fn a_watermark_older_than_the_history_is_an_expired_span_up_to_the_cutoff() {
        let now = 1_000 * S + 123;
        assert_eq!(expired(Some(100 * S), now, None), None, "unbounded history");
        assert_eq!(expired(None, now, Some(60 * S)), None, "never verified");
        assert_eq!(
            expired(Some(950 * S), now, Some(60 * S)),
            None,
            "still held"
        );
        assert_eq!(
            expired(Some(940 * S), now, Some(60 * S)),
            None,
            "exactly at the cutoff: nothing is missing"
        );
        let gap = expired(Some(100 * S), now, Some(60 * S)).unwrap();
        assert_eq!(gap.reason, Reason::HistoryExpired);
        assert_eq!((gap.from_us, gap.to_us), (100 * S, 940 * S));
    }

    #[test]
    fn a_run_reads_from_the_watermark_minus_overlap_to_now_minus_lag() {
        let now = 1_000_000 * S + 123_456;
        let w = plan(Some(999_900 * S), now, rules());
        assert_eq!(
            w,
            vec![Window {
                from_us: 999_780 * S,
                to_us: 999_995 * S + 123_000
            }]
        );
    }

    #[test]
    fn long_gaps_are_split_into_contiguous_windows() {
        let now = 100_000 * S;
        let w = plan(
            Some(90_000 * S),
            now,
            Rules {
                overlap_us: 0,
                ..rules()
            },
        );
        assert_eq!(w.len(), 3);
        assert_eq!(w[0].from_us, 90_000 * S);
        assert!(w.windows(2).all(|p| p[0].to_us == p[1].from_us));
        assert!(w.iter().all(|x| x.to_us - x.from_us <= 3600 * S));
        assert_eq!(w[2].to_us, now - 5 * S);
    }

    #[test]
    fn first_start_without_lookback_establishes_the_watermark_at_now_minus_lag() {
        let now = 100_000 * S + 1_234;
        assert_eq!(establish(None, now, rules()), Some(now - 5 * S - 234));
        assert_eq!(
            establish(Some(now - S), now, rules()),
            None,
            "verified before"
        );
        let later = now + 60 * S;
        let w = plan(establish(None, now, rules()), later, rules());
        assert_eq!(w.len(), 1, "the next run reads on from there");
        assert_eq!(w[0].to_us, later - 5 * S - 234);
    }

    #[test]
    fn the_catch_up_run_reads_past_the_subscription() {
        let since = 100_000 * S + 1_234;
        let at = catch_up_at(since, rules());
        assert!(plan(Some(since - 10 * S), at, rules())[0].to_us > since);
    }

    #[test]
    fn first_start_reads_back_the_initial_lookback() {
        let now = 100_000 * S;
        let w = plan(
            None,
            now,
            Rules {
                initial_lookback_us: 600 * S,
                ..rules()
            },
        );
        assert_eq!(
            establish(
                None,
                now,
                Rules {
                    initial_lookback_us: 600 * S,
                    ..rules()
                }
            ),
            None
        );
        assert_eq!(
            w,
            vec![Window {
                from_us: now - 605 * S,
                to_us: now - 5 * S
            }]
        );
    }

    #[test]
    fn nothing_to_do_when_the_watermark_is_recent() {
        let now = 100_000 * S;
        assert!(
            plan(
                Some(now),
                now,
                Rules {
                    overlap_us: 0,
                    ..rules()
                }
            )
            .is_empty()
        );
    }
}

/// The poller's run driven against an in-memory history and the real
/// writer on a real SQLite file: which pages it asks for, when the
/// watermark moves, and what a failure leaves behind.
#[cfg(test)]
mod run_tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

    use reqwest::StatusCode;

    use super::*;
    use crate::config::HumanDuration;
    use crate::event::{Event, Origin, Rejected};
    use crate::store::StreamSettings;
    use crate::store::testing::{keep_all, running};

    const S: i64 = 1_000_000;
    /// The test's "now": the history's events are in the ten minutes before.
    const NOW: i64 = 1_000_000 * S;

    /// A history in memory with the faults a real server shows: requests
    /// that fail (by call number), and pages that leave out an event the
    /// server still counts.
    #[derive(Default)]
    struct Trail {
        events: Vec<Event>,
        failing: Mutex<Vec<u32>>,
        hidden: Option<String>,
        /// Calls answered 400: retrying cannot help.
        refusing: Vec<u32>,
        /// Entries it holds that gapless rejects (by their time).
        unusable: Vec<i64>,
        /// An event every page shows twice (a server whose order shifts).
        doubled: Option<String>,
        calls: AtomicU32,
        asked: Mutex<Vec<(Window, u32)>>,
        /// How long each request takes, and how many were in flight at once.
        latency: Duration,
        in_flight: AtomicU32,
        most_in_flight: AtomicU32,
    }

    impl History for Trail {
        async fn page(
            &self,
            window: Window,
            page: u32,
            page_size: u32,
        ) -> Result<HistoryPage, PollError> {
            let call = self.calls.fetch_add(1, Relaxed);
            self.asked.lock().unwrap().push((window, page));
            let now = self.in_flight.fetch_add(1, Relaxed) + 1;
            self.most_in_flight.fetch_max(now, Relaxed);
            tokio::time::sleep(self.latency).await;
            self.in_flight.fetch_sub(1, Relaxed);
            let status = if self.refusing.contains(&call) {
                Some(StatusCode::BAD_REQUEST)
            } else if self.failing.lock().unwrap().contains(&call) {
                Some(StatusCode::SERVICE_UNAVAILABLE)
            } else {
                None
            };
            if let Some(status) = status {
                return Err(PollError::Api(ApiError::Status {
                    what: "history",
                    status,
                    retry_after: Some(Duration::ZERO),
                }));
            }
            let within = |at: i64| window.from_us <= at && at < window.to_us;
            let inside: Vec<&Event> = self
                .events
                .iter()
                .filter(|e| within(e.occurred_at_us))
                .collect();
            let mut shown: Vec<Parsed> = Vec::new();
            for e in &inside {
                if Some(&e.id) != self.hidden.as_ref() {
                    shown.push(Parsed::Event((*e).clone()));
                }
                if Some(&e.id) == self.doubled.as_ref() {
                    shown.push(Parsed::Event((*e).clone()));
                }
            }
            let unusable: Vec<i64> = self
                .unusable
                .iter()
                .copied()
                .filter(|&at| within(at))
                .collect();
            for &at in &unusable {
                shown.push(Parsed::Rejected(Rejected::new(
                    "history",
                    b"{",
                    crate::event::RejectReason::MalformedJson,
                    "broken",
                    at,
                )));
            }
            let start = ((page - 1) * page_size) as usize;
            let end = (start + page_size as usize).min(shown.len());
            let more = end < shown.len();
            Ok(HistoryPage {
                items: shown.drain(start.min(end)..end).collect(),
                more,
                total: Some((inside.len() + unusable.len()) as u64),
            })
        }
    }

    /// Event `i` of the history, `i` seconds into its ten minutes.
    fn event(i: i64) -> Event {
        Event {
            origin: Origin::Poll,
            ..crate::store::testing::event(&format!("e{i}"), NOW - 600 * S + i * S)
        }
    }

    struct Rig {
        _dir: tempfile::TempDir,
        store: Store,
        poller: Poller<Trail>,
    }

    /// Reads ten minutes back in windows of four, pages of two, retrying
    /// a failed request once.
    async fn rig(trail: Trail) -> Rig {
        let running = running(StreamSettings::arrival(), keep_all(), None).await;
        let config = PollConfig {
            initial_lookback: HumanDuration(Duration::from_secs(600)),
            visibility_lag: HumanDuration(Duration::ZERO),
            max_window: HumanDuration(Duration::from_secs(240)),
            overlap: HumanDuration(Duration::from_secs(60)),
            page_size: 2,
            max_retries: 1,
            ..Default::default()
        };
        let poller = Poller {
            history: Arc::new(trail),
            store: running.store.clone(),
            ingest: running.channels.ingest,
            source: "test".into(),
            config,
            counters: running.counters,
            live: None,
            max_skew_us: i64::MAX / 4,
            retention_us: None,
        };
        Rig {
            _dir: running.dir,
            store: running.store,
            poller,
        }
    }

    impl Rig {
        async fn run(&self, now: i64) -> Result<RunStats, PollError> {
            self.poller
                .run_once_at(now, &CancellationToken::new())
                .await
        }

        async fn verified(&self) -> Option<i64> {
            self.store.verified_until("test").await.unwrap()
        }

        async fn stored(&self) -> Vec<String> {
            let mut ids: Vec<String> = self
                .store
                .released_after(0, 1000)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.id)
                .collect();
            ids.sort();
            ids
        }

        fn asked(&self) -> Vec<(i64, u32)> {
            let asked = self.poller.history.asked.lock().unwrap();
            asked
                .iter()
                .map(|(w, page)| ((w.from_us - (NOW - 600 * S)) / S, *page))
                .collect()
        }
    }

    fn ids(range: std::ops::Range<i64>) -> Vec<String> {
        let mut ids: Vec<String> = range.map(|i| format!("e{i}")).collect();
        ids.sort();
        ids
    }

    /// Windows `[0, 240)`, `[240, 480)`, `[480, 600)` s: every page of
    /// each is read, and the watermark ends at the last window's end.
    #[tokio::test]
    async fn a_run_reads_every_page_of_every_window_and_verifies_up_to_its_end() {
        let trail = Trail {
            events: [1, 2, 3, 250, 500].map(event).to_vec(),
            ..Default::default()
        };
        let r = rig(trail).await;
        let stats = r.run(NOW).await.unwrap();
        assert_eq!(
            stats,
            RunStats {
                windows: 3,
                pages: 4,
                events: 5
            }
        );
        assert_eq!(r.asked(), [(0, 1), (0, 2), (240, 1), (480, 1)]);
        assert_eq!(r.verified().await, Some(NOW));
        assert_eq!(r.stored().await, ["e1", "e2", "e250", "e3", "e500"]);

        // The next run reads from the watermark minus the overlap.
        r.run(NOW + 30 * S).await.unwrap();
        assert_eq!(r.asked()[4..], [(540, 1)]);
        assert_eq!(r.verified().await, Some(NOW + 30 * S));
    }

    /// A request that fails once is retried within the run.
    #[tokio::test]
    async fn a_failed_request_is_retried_within_the_run() {
        let trail = Trail {
            events: (1..6).map(event).collect(),
            failing: Mutex::new(vec![1]),
            ..Default::default()
        };
        let r = rig(trail).await;
        r.run(NOW).await.unwrap();
        assert_eq!(r.asked()[..4], [(0, 1), (0, 2), (0, 2), (0, 3)]);
        assert_eq!(r.stored().await, ids(1..6));
        assert_eq!(r.verified().await, Some(NOW));
    }

    /// A refusal (400) is not retried: the run fails at once, with the
    /// watermark where it was.
    #[tokio::test]
    async fn a_refused_request_fails_the_run_without_a_retry() {
        let trail = Trail {
            events: [1].map(event).to_vec(),
            refusing: vec![0],
            ..Default::default()
        };
        let r = rig(trail).await;
        let err = r.run(NOW).await.unwrap_err();
        assert!(err.retryable().is_none(), "{err}");
        assert_eq!(r.asked(), [(0, 1)]);
        assert_eq!(r.verified().await, None);
    }

    /// An entry gapless rejects counts toward the window's total and is
    /// kept once: the overlap reads it again and skips it, while one at
    /// the watermark's very instant is new to the next run and kept.
    #[tokio::test]
    async fn a_rejected_entry_counts_toward_its_window_and_is_kept_once() {
        let trail = Trail {
            events: [1, 2].map(event).to_vec(),
            unusable: vec![NOW - 590 * S, NOW - 30 * S, NOW - 20 * S, NOW],
            ..Default::default()
        };
        let r = rig(trail).await;
        r.run(NOW).await.unwrap();
        assert_eq!(r.verified().await, Some(NOW));
        assert_eq!(r.store.counts().await.unwrap().rejected, 3);
        // Reads [NOW - 60 s, NOW + 30 s): the entries 30 and 20 s back
        // again, and the one at NOW for the first time.
        r.run(NOW + 30 * S).await.unwrap();
        assert_eq!(r.verified().await, Some(NOW + 30 * S));
        assert_eq!(r.store.counts().await.unwrap().rejected, 4);
    }

    /// A server whose pages show one event twice and leave another out
    /// adds up to its count only by position: distinct ids do not, so the
    /// window is read again and never verified.
    #[tokio::test]
    async fn an_event_shown_twice_does_not_stand_in_for_one_left_out() {
        let trail = Trail {
            events: [1, 2, 3].map(event).to_vec(),
            hidden: Some("e2".into()),
            doubled: Some("e1".into()),
            ..Default::default()
        };
        let r = rig(trail).await;
        let err = r.run(NOW).await.unwrap_err();
        assert!(
            matches!(
                err,
                PollError::Incomplete {
                    seen: 2,
                    total: 3,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(r.verified().await, None);
    }

    /// A window whose second page keeps failing: the run fails, the
    /// watermark stays before that window (the first, complete window is
    /// verified), and the next run reads the failed window again.
    #[tokio::test]
    async fn a_failure_part_way_through_a_windows_pages_keeps_the_watermark_before_it() {
        let trail = Trail {
            events: [1, 250, 251, 252].map(event).to_vec(),
            // Window [240, 480) asks at calls 1 (page 1), 2 and 3 (page 2).
            failing: Mutex::new(vec![2, 3]),
            ..Default::default()
        };
        let r = rig(trail).await;
        let err = r.run(NOW).await.unwrap_err();
        assert!(err.retryable().is_some(), "{err}");
        assert_eq!(r.verified().await, Some(NOW - 360 * S));
        r.poller.history.failing.lock().unwrap().clear();
        r.run(NOW).await.unwrap();
        assert_eq!(r.verified().await, Some(NOW));
        assert_eq!(r.stored().await, ["e1", "e250", "e251", "e252"]);
    }

    /// Pages that never add up to the server's count: read again
    /// `max_retries` times, then the run fails and the window stays
    /// unverified.
    #[tokio::test]
    async fn a_window_short_of_its_count_is_read_again_then_left_unverified() {
        let trail = Trail {
            events: [1, 2, 3].map(event).to_vec(),
            hidden: Some("e2".into()),
            ..Default::default()
        };
        let r = rig(trail).await;
        let err = r.run(NOW).await.unwrap_err();
        assert!(
            matches!(
                err,
                PollError::Incomplete {
                    seen: 2,
                    total: 3,
                    rereads: 1,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(r.asked(), [(0, 1), (0, 1)]);
        assert_eq!(r.verified().await, None);
    }

    /// Requests slower than the schedule's tick (every second): the ticks
    /// during a run collapse into the next run, and no two runs (so no two
    /// requests) are ever in flight at once.
    #[tokio::test]
    async fn runs_never_overlap() {
        let trail = Trail {
            latency: Duration::from_millis(700),
            ..Default::default()
        };
        let mut r = rig(trail).await;
        r.poller.config.schedule = "* * * * * *".into();
        let shutdown = CancellationToken::new();
        let Rig { poller, _dir, .. } = r;
        let history = poller.history.clone();
        let running = tokio::spawn(poller.run(shutdown.clone()));
        tokio::time::sleep(Duration::from_millis(3500)).await;
        shutdown.cancel();
        running.await.unwrap().unwrap();
        // The first run reads three windows (2.1 s), the next ones one.
        assert!(history.calls.load(Relaxed) >= 4, "a second run started");
        assert_eq!(history.most_in_flight.load(Relaxed), 1);
    }
}
