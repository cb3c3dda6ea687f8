//! Test support for the store's and the poller's unit tests: a store in a
//! fresh directory with its writer running, and a sample event.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::*;
use crate::config::StoreConfig;
use crate::event::{Event, Origin};
use crate::metrics::Counters;

/// A store, its running writer and what talks to it.
pub(crate) struct Running {
    pub dir: tempfile::TempDir,
    pub store: Store,
    pub channels: WriterChannels,
    pub counters: Arc<Counters>,
    pub writer: tokio::task::JoinHandle<Result<(), StoreError>>,
}

/// Opens a store in a new directory for source `test` and starts its
/// writer; receipts go to `acks`.
pub(crate) async fn running(
    stream: StreamSettings,
    retention: Retention,
    acks: Option<mpsc::UnboundedSender<Vec<Receipt>>>,
) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        path: dir.path().join("gapless.db"),
        ..Default::default()
    };
    let store = Store::open(&config).await.unwrap();
    let counters = Arc::new(Counters::default());
    let plan = WriterPlan {
        source: "test".into(),
        queue: 64,
        counters: counters.clone(),
        acks,
        stream,
        retention,
        fence: None,
        head: Default::default(),
    };
    let (writer, channels) = Writer::new(&store, &config, plan).await.unwrap();
    Running {
        dir,
        store,
        channels,
        counters,
        writer: tokio::spawn(writer.run()),
    }
}

/// Nothing is ever pruned.
pub(crate) fn keep_all() -> Retention {
    Retention {
        keep_us: i64::MAX,
        sinks: Vec::new(),
        poll_guard_us: None,
    }
}

/// An MQTT event `id` that occurred and arrived at `at_us`.
pub(crate) fn event(id: &str, at_us: i64) -> Event {
    Event {
        id: id.into(),
        occurred_at_us: at_us,
        received_at_us: at_us,
        event_type: "t".into(),
        subject: None,
        org: None,
        origin: Origin::Mqtt,
        payload: format!("{{\"id\":\"{id}\"}}"),
        ext: None,
        content_key: None,
        retained: false,
    }
}
