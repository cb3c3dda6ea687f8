//! `gapless status --watch`: a compact live view, one frame a second.
//!
//! Read from the store like `status` (so it works beside the daemon, with
//! no admin token): the ingest rate by origin comes from the rows added
//! since the last frame (a rowid range, never a scan), the rest from the
//! same indexed reads as `status`. The `--json` twin prints each frame as
//! one JSON line, for scripts and for the test.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::event::{now_us, rfc3339_us};
use crate::ops::OpsError;
use crate::store::{GapRow, Store};

/// One frame of the view.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Frame {
    pub at: String,
    pub head_seq: i64,
    /// Events stored per second since the previous frame, by origin
    /// (`mqtt`, `poll`; `gapless` = gap markers).
    pub ingest_per_s: Vec<(String, f64)>,
    pub verified_until: Option<String>,
    /// Now minus the verified watermark (seconds).
    pub verified_lag_s: Option<f64>,
    pub sinks: Vec<WatchSink>,
    pub last_gaps: Vec<GapRow>,
    /// What the daemon's `/readyz` says (see `gapless status`).
    pub daemon: String,
}

/// A sink's position in a frame.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WatchSink {
    pub name: String,
    pub cursor: i64,
    pub lag: i64,
    /// `ok`, or `disabled: <why>`.
    pub state: String,
    pub dead_letters: i64,
}

/// Rows per second by origin from the counts of rows added in `elapsed`.
pub fn rates(added: &[(String, i64)], elapsed: Duration) -> Vec<(String, f64)> {
    let secs = elapsed.as_secs_f64().max(1e-3);
    ["mqtt", "poll", "gapless"]
        .iter()
        .map(|origin| {
            let n = added
                .iter()
                .find(|(o, _)| o == origin)
                .map_or(0, |(_, n)| *n);
            (origin.to_string(), n as f64 / secs)
        })
        .collect()
}

impl Frame {
    /// The text rendering: a handful of lines.
    pub fn render(&self) -> String {
        let mut s = format!(
            "gapless  {}  head seq {}\ningest/s ",
            self.at, self.head_seq
        );
        for (origin, r) in &self.ingest_per_s {
            s += &format!(" {origin} {r:.1}");
        }
        s += &match (&self.verified_until, self.verified_lag_s) {
            (Some(v), Some(lag)) => format!("\nverified up to {v} (lag {lag:.0} s)"),
            _ => "\nverified never (no poller, or no window verified yet)".into(),
        };
        for k in &self.sinks {
            s += &format!(
                "\nsink     {:<16} cursor {:>8}  lag {:>6}  dead letters {:>4}  {}",
                k.name, k.cursor, k.lag, k.dead_letters, k.state
            );
        }
        for g in &self.last_gaps {
            s += &format!(
                "\ngap      {:<16} {} .. {}",
                g.reason,
                rfc3339_us(g.from_us),
                rfc3339_us(g.to_us)
            );
        }
        s + "\ndaemon   " + &self.daemon + "\n"
    }
}

/// Prints a frame every second until `stop` (Ctrl-C) or `frames` frames.
pub async fn watch(
    config: &Config,
    json: bool,
    frames: Option<u64>,
    stop: CancellationToken,
) -> Result<(), OpsError> {
    let store = Store::open(&config.store).await?;
    let mut last_row = store.max_rowid().await?;
    let mut last_at = Instant::now();
    let tty = std::io::stdout().is_terminal() && !json;
    let mut shown = 0u64;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.cancelled() => break,
        }
        let (row, added) = store.added_by_origin(last_row).await?;
        let ingest_per_s = rates(&added, last_at.elapsed());
        (last_row, last_at) = (row, Instant::now());
        let frame = frame(config, &store, ingest_per_s).await?;
        let mut out = std::io::stdout().lock();
        if json {
            writeln!(
                out,
                "{}",
                serde_json::to_string(&frame).expect("frame serialises")
            )?;
        } else if tty {
            // Home and clear, then the frame: no full-screen library.
            write!(out, "\x1b[H\x1b[2J{}", frame.render())?;
        } else {
            writeln!(out, "{}", frame.render())?;
        }
        out.flush()?;
        shown += 1;
        if frames.is_some_and(|n| shown >= n) {
            break;
        }
    }
    store.close().await;
    Ok(())
}

async fn frame(
    config: &Config,
    store: &Store,
    ingest_per_s: Vec<(String, f64)>,
) -> Result<Frame, OpsError> {
    let now = now_us();
    let head = store.head().await?;
    let verified = store.verified_until(config.source.uri()).await?;
    let sinks = crate::ops::sink_statuses(config, store, head)
        .await?
        .into_iter()
        .map(|k| WatchSink {
            state: match k.disabled {
                Some(why) => format!("disabled: {why}"),
                None => "ok".into(),
            },
            name: k.name,
            cursor: k.cursor,
            lag: k.lag,
            dead_letters: k.dead_letters,
        })
        .collect();
    let admin = crate::ops::admin_addr(config, store).await;
    Ok(Frame {
        at: rfc3339_us(now),
        head_seq: head,
        ingest_per_s,
        verified_until: verified.map(rfc3339_us),
        verified_lag_s: verified.map(|v| (now - v) as f64 / 1e6),
        sinks,
        last_gaps: store.last_gaps(3).await?,
        daemon: crate::ops::daemon_state(config, &admin).await,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_name_every_origin_and_divide_by_the_elapsed_time() {
        let r = rates(
            &[("mqtt".into(), 50), ("poll".into(), 5)],
            Duration::from_millis(500),
        );
        assert_eq!(
            r,
            vec![
                ("mqtt".into(), 100.0),
                ("poll".into(), 10.0),
                ("gapless".into(), 0.0)
            ]
        );
    }
}
