//! JSON Schema validation of ScaleIT bodies against their `$schema`.
//!
//! Each body names its schema; schemas live with the apps (over HTTP) or in
//! a local directory. The MQTT event loop must never wait for a schema
//! service, so the check it runs is memory-only ([`SchemaRegistry::apply`]):
//! a known schema validates at once; an unknown one leaves the event
//! `pending` (stored and acked, held back from the stream) and wakes the
//! background task ([`SchemaRegistry::run`]), which fetches the schema and
//! settles every pending event through the writer. A schema service that is
//! down never stops ingestion: events wait (`on_schema_unavailable =
//! "queue"`) or go out marked unvalidated (`"ingest"`), and both are counted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::scaleit::schema_url;
use super::{Parsed, RejectReason, Rejected};
use crate::config::{SchemaUnavailable, SourceConfig};
use crate::event::{Event, Validation};
use crate::metrics::Counters;
use crate::store::{SchemaOp, Store, StoreError, WriterHandle};

/// How long a failed fetch is trusted before the schema is tried again.
const RETRY: Duration = Duration::from_secs(2);
/// How long one schema request may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Pending events settled per writer transaction.
const SWEEP_PAGE: u32 = 500;

/// What the registry knows about one `(app, $schema)` pair.
#[derive(Clone)]
enum Entry {
    Ready {
        validator: Arc<jsonschema::Validator>,
        /// Where it came from: the CloudEvent `dataschema`.
        location: String,
    },
    /// The schema does not exist (HTTP 404, no file) or does not compile:
    /// bodies naming it are rejected.
    Missing(String),
    /// The service could not be reached; tried again after `retry_at`.
    Unavailable { error: String, retry_at: Instant },
}

/// The verdict on one body.
#[derive(Debug, PartialEq)]
pub enum Check {
    Valid {
        location: String,
    },
    Invalid(String),
    Unknown(String),
    Unavailable,
    /// Not looked up yet.
    NotYet,
}

/// Schemas by `(app, reference)`, shared by the MQTT source (memory-only
/// checks) and the background task that fetches and settles.
pub struct SchemaRegistry {
    dir: Option<PathBuf>,
    base_url: Option<String>,
    mode: SchemaUnavailable,
    cache: RwLock<HashMap<(String, String), Entry>>,
    wake: Notify,
    http: reqwest::Client,
    counters: Arc<Counters>,
}

/// The registry with what it needs to fetch by itself, for a caller that
/// may wait for a schema (the history poller, unlike the MQTT event loop):
/// its events are settled before they are stored, so they are held back
/// only while the schema service is down.
#[derive(Clone)]
pub struct Settler {
    pub registry: Arc<SchemaRegistry>,
    pub store: Store,
    pub writer: WriterHandle,
}

impl Settler {
    /// Resolves the event's schema if needed, then checks it as
    /// [`SchemaRegistry::apply`] does.
    pub async fn settle(
        &self,
        event: Event,
        topic: &str,
        received_at_us: i64,
    ) -> Result<Parsed, StoreError> {
        if let Some(x) = event.ext.as_deref()
            && x.validation == Validation::Pending
            && let Some(reference) = &x.schema_ref
        {
            self.registry
                .resolve(&x.app, reference, &self.store, &self.writer)
                .await?;
        }
        Ok(self.registry.apply(event, topic, received_at_us))
    }
}

/// Up to three validation errors, each with the instance path it is at.
pub fn describe_errors(validator: &jsonschema::Validator, body: &Value) -> Option<String> {
    let errors: Vec<String> = validator
        .iter_errors(body)
        .take(3)
        .map(|e| {
            let path = e.instance_path().to_string();
            format!("at {}: {e}", if path.is_empty() { "/" } else { &path })
        })
        .collect();
    (!errors.is_empty()).then(|| errors.join("; "))
}

fn compile(text: &str, location: &str) -> Entry {
    let schema: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return Entry::Missing(format!("{location} is not JSON: {e}")),
    };
    match jsonschema::validator_for(&schema) {
        Ok(v) => Entry::Ready {
            validator: Arc::new(v),
            location: location.to_string(),
        },
        Err(e) => Entry::Missing(format!("{location} is not a valid JSON Schema: {e}")),
    }
}

impl SchemaRegistry {
    /// The registry for a ScaleIT source, when it validates at all.
    pub fn from_config(
        c: &SourceConfig,
        counters: Arc<Counters>,
    ) -> Result<Option<Arc<Self>>, reqwest::Error> {
        if c.schema_dir.is_none() && c.schema_base_url.is_none() {
            return Ok(None);
        }
        crate::tls::install_crypto_provider();
        Ok(Some(Arc::new(SchemaRegistry {
            dir: c.schema_dir.clone(),
            base_url: c.schema_base_url.clone(),
            mode: c.on_schema_unavailable,
            cache: RwLock::new(HashMap::new()),
            wake: Notify::new(),
            http: reqwest::Client::builder().timeout(FETCH_TIMEOUT).build()?,
            counters,
        })))
    }

    /// Checks `body` against the cached schema `reference` of `app`.
    pub fn check(&self, app: &str, reference: &str, body: &Value) -> Check {
        let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
        match cache.get(&(app.to_string(), reference.to_string())) {
            None => Check::NotYet,
            Some(Entry::Missing(detail)) => Check::Unknown(detail.clone()),
            Some(Entry::Unavailable { .. }) => Check::Unavailable,
            Some(Entry::Ready {
                validator,
                location,
            }) => match describe_errors(validator, body) {
                None => Check::Valid {
                    location: location.clone(),
                },
                Some(detail) => Check::Invalid(detail),
            },
        }
    }

    /// The memory-only check on the MQTT path: a valid event is marked so,
    /// an invalid one becomes a rejection, and an event whose schema is
    /// not known yet stays `pending` (and the fetch is requested).
    pub fn apply(&self, mut event: Event, topic: &str, received_at_us: i64) -> Parsed {
        let Some(x) = event.ext.as_deref_mut() else {
            return Parsed::Event(event);
        };
        let (Validation::Pending, Some(reference)) = (x.validation, x.schema_ref.as_deref()) else {
            return Parsed::Event(event);
        };
        let body: Value = serde_json::from_str(&event.payload).unwrap_or(Value::Null);
        let reject = |reason, detail: String| {
            Parsed::Rejected(Rejected::new(
                topic,
                event.payload.as_bytes(),
                reason,
                detail,
                received_at_us,
            ))
        };
        match self.check(&x.app, reference, &body) {
            Check::Valid { location } => {
                x.validation = Validation::Valid;
                x.dataschema = Some(location);
            }
            Check::Invalid(detail) => return reject(RejectReason::SchemaInvalid, detail),
            Check::Unknown(detail) => return reject(RejectReason::UnknownSchema, detail),
            Check::Unavailable => self.unavailable(&mut x.validation),
            Check::NotYet => {
                Counters::add(&self.counters.validation_queued, 1);
                self.wake.notify_one();
            }
        }
        Parsed::Event(event)
    }

    /// The schema service is down: the event waits, or goes out unchecked.
    fn unavailable(&self, validation: &mut Validation) {
        match self.mode {
            SchemaUnavailable::Queue => Counters::add(&self.counters.validation_queued, 1),
            SchemaUnavailable::Ingest => {
                *validation = Validation::Unvalidated;
                Counters::add(&self.counters.unvalidated, 1);
            }
        }
    }

    /// Fetches what pending events need and settles them, on every wake-up
    /// and every `RETRY`, until `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        store: Store,
        writer: WriterHandle,
        shutdown: CancellationToken,
    ) -> Result<(), StoreError> {
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(RETRY) => {}
                _ = shutdown.cancelled() => return Ok(()),
            }
            match self.sweep(&store, &writer).await {
                Ok(()) => {}
                Err(StoreError::WriterGone) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Settles every pending event it can, page by page.
    async fn sweep(&self, store: &Store, writer: &WriterHandle) -> Result<(), StoreError> {
        let mut after = (i64::MIN, String::new());
        loop {
            let rows = store
                .pending_events((after.0, &after.1), SWEEP_PAGE)
                .await?;
            let Some(last) = rows.last() else {
                return Ok(());
            };
            after = (last.3, last.0.clone());
            let mut ops = Vec::new();
            for (id, source, payload, _) in rows {
                let body: Value = serde_json::from_str(&payload).unwrap_or(Value::Null);
                let app = source.split('/').nth(1).unwrap_or_default();
                let reference = body["$schema"].as_str().unwrap_or_default();
                self.resolve(app, reference, store, writer).await?;
                let op = match self.check(app, reference, &body) {
                    Check::Valid { location } => SchemaOp::Release {
                        id,
                        validation: Validation::Valid,
                        dataschema: Some(location),
                    },
                    Check::Invalid(detail) => {
                        tracing::warn!(%id, source = %source, %detail, "held-back message is invalid; moved to rejected");
                        SchemaOp::Reject {
                            id,
                            reason: RejectReason::SchemaInvalid,
                            detail,
                        }
                    }
                    Check::Unknown(detail) => {
                        tracing::warn!(%id, source = %source, %detail, "held-back message names an unknown schema; moved to rejected");
                        SchemaOp::Reject {
                            id,
                            reason: RejectReason::UnknownSchema,
                            detail,
                        }
                    }
                    Check::Unavailable | Check::NotYet
                        if self.mode == SchemaUnavailable::Ingest =>
                    {
                        Counters::add(&self.counters.unvalidated, 1);
                        SchemaOp::Release {
                            id,
                            validation: Validation::Unvalidated,
                            dataschema: None,
                        }
                    }
                    Check::Unavailable | Check::NotYet => continue,
                };
                ops.push(op);
            }
            if !ops.is_empty() {
                writer.schema_ops(ops).await?;
            }
        }
    }

    /// Makes sure the cache has a current entry for `(app, reference)`.
    async fn resolve(
        &self,
        app: &str,
        reference: &str,
        store: &Store,
        writer: &WriterHandle,
    ) -> Result<(), StoreError> {
        let key = (app.to_string(), reference.to_string());
        let stale = match self
            .cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            None => true,
            Some(Entry::Unavailable { retry_at, .. }) => Instant::now() >= *retry_at,
            Some(_) => false,
        };
        if !stale {
            return Ok(());
        }
        let entry = self.load(app, reference, store, writer).await?;
        match &entry {
            Entry::Ready { location, .. } => {
                tracing::info!(app, schema = reference, %location, "schema loaded")
            }
            Entry::Missing(detail) => {
                tracing::warn!(app, schema = reference, %detail, "schema missing")
            }
            Entry::Unavailable { error, .. } => {
                tracing::warn!(app, schema = reference, %error, retry_in = ?RETRY, "schema service unavailable")
            }
        }
        self.cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, entry);
        Ok(())
    }

    /// Finds a schema: the directory first, then the app's API (with the
    /// stored copy's ETag, and that copy as the fallback when it is down).
    async fn load(
        &self,
        app: &str,
        reference: &str,
        store: &Store,
        writer: &WriterHandle,
    ) -> Result<Entry, StoreError> {
        if let Some(dir) = &self.dir {
            for path in local_candidates(dir, app, reference) {
                if let Ok(text) = tokio::fs::read_to_string(&path).await {
                    return Ok(compile(&text, &format!("file://{}", path.display())));
                }
            }
        }
        let Some(base) = &self.base_url else {
            return Ok(Entry::Missing(format!(
                "no schema file `{reference}` for app `{app}` in schema_dir"
            )));
        };
        let url = schema_url(base, app, reference);
        let stored = store.schema(&url).await?;
        let mut request = self.http.get(&url);
        if let Some((Some(etag), _)) = &stored {
            request = request.header(reqwest::header::IF_NONE_MATCH, etag);
        }
        Counters::add(&self.counters.schema_fetches, 1);
        let failure = match request.send().await {
            Ok(r) if r.status() == reqwest::StatusCode::NOT_MODIFIED && stored.is_some() => {
                return Ok(compile(&stored.expect("checked").1, &url));
            }
            Ok(r) if r.status().is_success() => {
                let etag = r
                    .headers()
                    .get(reqwest::header::ETAG)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                match r.text().await {
                    Ok(body) => {
                        let entry = compile(&body, &url);
                        if matches!(entry, Entry::Ready { .. }) {
                            writer
                                .schema_ops(vec![SchemaOp::Put {
                                    url: url.clone(),
                                    etag,
                                    body,
                                }])
                                .await?;
                        }
                        return Ok(entry);
                    }
                    Err(e) => e.to_string(),
                }
            }
            Ok(r) if matches!(r.status().as_u16(), 404 | 410) => {
                return Ok(Entry::Missing(format!("{url}: HTTP {}", r.status())));
            }
            Ok(r) => format!("{url}: HTTP {}", r.status()),
            Err(e) => format!("{url}: {e}"),
        };
        Ok(match stored {
            Some((_, body)) => {
                tracing::warn!(%url, error = %failure, "schema service unavailable; using the stored copy");
                compile(&body, &url)
            }
            None => Entry::Unavailable {
                error: failure,
                retry_at: Instant::now() + RETRY,
            },
        })
    }
}

/// `<dir>/<app>/<ref>`, then `<dir>/<ref>`; a reference that climbs out of
/// the directory is not looked up.
fn local_candidates(dir: &Path, app: &str, reference: &str) -> Vec<PathBuf> {
    if reference.split('/').any(|p| p == "..") || reference.starts_with('/') || app.contains("..") {
        return Vec::new();
    }
    vec![dir.join(app).join(reference), dir.join(reference)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn gameover() -> jsonschema::Validator {
        jsonschema::validator_for(&json!({
            "$schema": "http://json-schema.org/draft-06/schema#",
            "type": "object",
            "properties": {
                "score": {"type": "integer", "description": "Punkte"},
                "isHighscore": {"type": "boolean", "description": "Rekord?"}
            },
            "required": ["score"]
        }))
        .unwrap()
    }

    #[test]
    fn errors_name_the_instance_path() {
        let v = gameover();
        assert_eq!(
            describe_errors(&v, &json!({"score": 3, "isHighscore": true})),
            None
        );
        let wrong = describe_errors(&v, &json!({"score": "many"})).unwrap();
        assert!(wrong.starts_with("at /score: "), "{wrong}");
        let missing = describe_errors(&v, &json!({"isHighscore": false})).unwrap();
        assert!(
            missing.starts_with("at /: ") && missing.contains("score"),
            "{missing}"
        );
    }

    #[test]
    fn local_lookups_stay_inside_the_directory() {
        let d = Path::new("/s");
        assert_eq!(
            local_candidates(d, "pacman", "gameover.json"),
            vec![
                PathBuf::from("/s/pacman/gameover.json"),
                PathBuf::from("/s/gameover.json")
            ]
        );
        assert!(local_candidates(d, "pacman", "../etc/passwd").is_empty());
        assert!(local_candidates(d, "pacman", "/etc/passwd").is_empty());
    }

    #[test]
    fn a_schema_that_does_not_compile_is_missing_not_fatal() {
        assert!(matches!(compile("{", "x"), Entry::Missing(_)));
        assert!(matches!(compile(r#"{"type": 12}"#, "x"), Entry::Missing(_)));
        assert!(matches!(
            compile(r#"{"type": "object"}"#, "x"),
            Entry::Ready { .. }
        ));
    }
}
