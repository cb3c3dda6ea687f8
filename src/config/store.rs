//! `[store]`: where and how the events are kept.
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::*;

/// How hard SQLite pushes a commit to disk before it returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// fsync on every commit: survives power loss (default).
    Full,
    /// fsync at checkpoints only: survives a crash of gapless, not of the OS.
    Normal,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    #[serde(default = "default_store_path")]
    pub path: PathBuf,
    /// Flush a batch at this many messages.
    #[serde(default = "default_batch_max")]
    pub batch_max: usize,
    /// Wait at most this long for a batch to fill; 0 commits whatever is queued.
    #[serde(default = "default_batch_delay")]
    pub batch_delay: HumanDuration,
    #[serde(default = "default_synchronous")]
    pub synchronous: Synchronous,
    /// How many rejected messages are kept for inspection (oldest dropped).
    #[serde(default = "default_rejected_max")]
    pub rejected_max: u32,
    /// Delivered events older than this are pruned once every sink passed them.
    #[serde(default = "default_retention")]
    pub retention: HumanDuration,
}

pub(super) fn default_retention() -> HumanDuration {
    HumanDuration(Duration::from_secs(7 * 24 * 3600))
}

pub(super) fn default_store_path() -> PathBuf {
    PathBuf::from("gapless.db")
}
pub(super) fn default_batch_max() -> usize {
    1000
}
pub(super) fn default_batch_delay() -> HumanDuration {
    HumanDuration(Duration::ZERO)
}
pub(super) fn default_synchronous() -> Synchronous {
    Synchronous::Full
}
pub(super) fn default_rejected_max() -> u32 {
    10_000
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: default_store_path(),
            batch_max: default_batch_max(),
            batch_delay: default_batch_delay(),
            synchronous: default_synchronous(),
            rejected_max: default_rejected_max(),
            retention: default_retention(),
        }
    }
}
