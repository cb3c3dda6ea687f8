//! JSON Schema validation of ScaleIT bodies against their `$schema`.
//!
//! Each body names its schema; schemas live with the apps (over HTTP) or in
//! a local directory. The MQTT event loop must never wait for a schema
//! service, so the check it runs is memory-only ([`SchemaRegistry::apply`]):
//! a known schema validates at once; an unknown one leaves the event
//! `pending` (stored and acked, held back from the stream) and wakes the
//! background task ([`SchemaRegistry::run`]), which fetches the schema and
//! settles every pending event through the writer. A schema that cannot be
//! had (service down, 404, a body that is not a schema) never stops
//! ingestion and never rejects: events wait (`on_schema_unavailable =
//! "queue"`) or go out marked unvalidated (`"ingest"`), both counted, and
//! the schema is tried again after a wait that doubles per failure (2 s to
//! 5 min): an app that publishes its schema late is not punished forever.
//! Fetches go only to URLs the parser allowed, never follow redirects, read
//! at most `schema_max_body`, and the cache holds at most `schema_cache`
//! schemas (least recently used dropped first).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::allowed_schema_url;
use crate::config::{ScaleitSource, SchemaUnavailable};
use crate::event::{Event, Validation};
use crate::metrics::Counters;
use crate::source::{Parsed, RejectReason, Rejected};
use crate::store::{CachedSchema, PendingEvent, SchemaOp, Store, StoreError, WriterHandle};

/// The first wait before a schema that could not be had is tried again;
/// it doubles per failure up to `RETRY_MAX`.
const RETRY: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(300);
/// How long one schema request may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Pending events settled per writer transaction.
const SWEEP_PAGE: u32 = 500;

/// What the registry knows about one `(app, $schema)` pair.
#[derive(Clone)]
enum Entry {
    Ready {
        validator: Arc<jsonschema::Validator>,
        /// Where it came from (redacted): the CloudEvent `dataschema`.
        location: String,
    },
    /// Could not be had: the service is down, answered 404/410 or a body
    /// that is not a JSON Schema. Tried again after `retry_at`.
    Unusable { failures: u32, retry_at: Instant },
}

/// A cache entry with when it was last used (for the LRU bound).
struct Cached {
    entry: Entry,
    used: AtomicU64,
}

/// The wait before the `failures`-th retry of a schema.
fn retry_wait(failures: u32) -> Duration {
    RETRY
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(RETRY_MAX)
}

/// The verdict on one body.
#[derive(Debug, PartialEq)]
pub enum Check {
    Valid {
        location: String,
    },
    Invalid(String),
    /// The schema cannot be had now: `on_schema_unavailable` applies.
    Unavailable,
    /// Not looked up yet.
    NotYet,
}

/// Schemas by `(app, reference)`, shared by the MQTT source (memory-only
/// checks) and the background task that fetches and settles.
pub struct SchemaRegistry {
    dir: Option<PathBuf>,
    base_url: Option<String>,
    allow: Vec<String>,
    mode: SchemaUnavailable,
    cache: RwLock<HashMap<(String, String), Cached>>,
    /// Most entries the cache holds.
    capacity: usize,
    /// The LRU clock: bumped on every use.
    clock: AtomicU64,
    wake: Notify,
    http: reqwest::Client,
    /// `source.headers_env` and the bearer token (sensitive).
    headers: reqwest::header::HeaderMap,
    max_body: usize,
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

/// A ready entry, or why the text is not a usable schema.
fn compile(text: &str, location: &str) -> Result<Entry, String> {
    let schema: Value =
        serde_json::from_str(text).map_err(|e| format!("{location} is not JSON: {e}"))?;
    if !schema.is_object() && !schema.is_boolean() {
        return Err(format!(
            "{location} is not a JSON Schema (neither an object nor a boolean)"
        ));
    }
    jsonschema::validator_for(&schema)
        .map(|v| Entry::Ready {
            validator: Arc::new(v),
            location: location.to_string(),
        })
        .map_err(|e| format!("{location} is not a valid JSON Schema: {e}"))
}

impl SchemaRegistry {
    /// The registry for a ScaleIT source, when it validates at all.
    pub fn from_config(
        c: &ScaleitSource,
        counters: Arc<Counters>,
    ) -> Result<Option<Arc<Self>>, crate::net::NetError> {
        if c.schema_dir.is_none() && c.schema_base_url.is_none() {
            return Ok(None);
        }
        Ok(Some(Arc::new(SchemaRegistry {
            dir: c.schema_dir.clone(),
            base_url: c.schema_base_url.clone(),
            allow: c.schema_allow.clone(),
            mode: c.on_schema_unavailable,
            cache: RwLock::new(HashMap::new()),
            capacity: c.schema_cache.max(1),
            clock: AtomicU64::new(0),
            wake: Notify::new(),
            http: crate::net::client(&crate::net::ClientSpec {
                key: "source.schema_base_url",
                timeout: FETCH_TIMEOUT,
                ca_file: c.tls.ca_file.as_deref(),
                insecure_skip_verify: c.tls.insecure_skip_verify,
            })?,
            headers: crate::net::headers(&Default::default(), &c.secret_headers)?,
            max_body: c.schema_max_body.0,
            counters,
        })))
    }

    /// Checks `body` against the cached schema `reference` of `app`.
    pub fn check(&self, app: &str, reference: &str, body: &Value) -> Check {
        let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
        let Some(cached) = cache.get(&(app.to_string(), reference.to_string())) else {
            return Check::NotYet;
        };
        cached.used.store(self.clock.fetch_add(1, Relaxed), Relaxed);
        match &cached.entry {
            Entry::Unusable { .. } => Check::Unavailable,
            Entry::Ready {
                validator,
                location,
            } => match describe_errors(validator, body) {
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
            after = (last.received_at_us, last.id.clone());
            let mut ops = Vec::new();
            for PendingEvent {
                id,
                ce_source: source,
                payload,
                ..
            } in rows
            {
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
        let failures = match self
            .cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .map(|c| &c.entry)
        {
            None => 0,
            Some(Entry::Unusable {
                retry_at, failures, ..
            }) if Instant::now() >= *retry_at => *failures,
            Some(_) => return Ok(()),
        };
        let entry = match self.load(app, reference, store, writer).await? {
            Ok(entry) => entry,
            Err(error) => {
                let failures = failures + 1;
                let wait = retry_wait(failures);
                tracing::warn!(app, schema = reference, %error, failures, retry_in = ?wait,
                    "schema not available; messages naming it wait (on_schema_unavailable)");
                Entry::Unusable {
                    failures,
                    retry_at: Instant::now() + wait,
                }
            }
        };
        if let Entry::Ready { location, .. } = &entry {
            tracing::info!(app, schema = reference, %location, "schema loaded");
        }
        self.insert(key, entry);
        Ok(())
    }

    /// Caches an entry, dropping the least recently used one when full.
    fn insert(&self, key: (String, String), entry: Entry) {
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        if !cache.contains_key(&key)
            && cache.len() >= self.capacity
            && let Some(oldest) = cache
                .iter()
                .min_by_key(|(_, c)| c.used.load(Relaxed))
                .map(|(k, _)| k.clone())
        {
            cache.remove(&oldest);
        }
        let used = AtomicU64::new(self.clock.fetch_add(1, Relaxed));
        cache.insert(key, Cached { entry, used });
    }

    /// Finds a schema: the directory first, then the app's API (with the
    /// stored copy's ETag, and that copy as the fallback when it is down).
    /// `Err` says why it cannot be had now.
    async fn load(
        &self,
        app: &str,
        reference: &str,
        store: &Store,
        writer: &WriterHandle,
    ) -> Result<Result<Entry, String>, StoreError> {
        if let Some(dir) = &self.dir {
            for path in local_candidates(dir, app, reference) {
                if let Ok(text) = tokio::fs::read_to_string(&path).await {
                    return Ok(compile(&text, &format!("file://{}", path.display())));
                }
            }
        }
        let url = match allowed_schema_url(self.base_url.as_deref(), &self.allow, app, reference) {
            Ok(Some(url)) => url,
            Ok(None) => {
                return Ok(Err(format!(
                    "no schema file `{reference}` for app `{app}` in schema_dir"
                )));
            }
            Err(e) => return Ok(Err(e)),
        };
        // The key in the store and the CloudEvent `dataschema`: no secrets.
        let location = crate::net::redact(&url);
        let stored = store.schema(&location).await?;
        let mut request = self.http.get(&url).headers(self.headers.clone());
        if let Some(CachedSchema {
            etag: Some(etag), ..
        }) = &stored
        {
            request = request.header(reqwest::header::IF_NONE_MATCH, etag);
        }
        Counters::add(&self.counters.schema_fetches, 1);
        let failure = match request.send().await {
            Ok(r) if r.status() == reqwest::StatusCode::NOT_MODIFIED && stored.is_some() => {
                return Ok(compile(&stored.expect("checked").body, &location));
            }
            Ok(r) if r.status().is_success() => {
                let etag = r
                    .headers()
                    .get(reqwest::header::ETAG)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                match crate::net::read_limited(r, self.max_body).await {
                    Ok(bytes) => {
                        let body = String::from_utf8_lossy(&bytes).into_owned();
                        let entry = compile(&body, &location);
                        if entry.is_ok() {
                            writer
                                .schema_ops(vec![SchemaOp::Put {
                                    url: location.clone(),
                                    etag,
                                    body,
                                }])
                                .await?;
                        }
                        return Ok(entry);
                    }
                    Err(e) => format!("{location}: {e}"),
                }
            }
            Ok(r) if r.status().is_redirection() => format!(
                "{location}: {}",
                crate::net::redirect_error(r.status().as_u16(), r.headers())
            ),
            Ok(r) => format!("{location}: HTTP {}", r.status()),
            Err(e) => format!("{location}: {}", crate::net::error_text(e)),
        };
        Ok(match stored {
            Some(CachedSchema { body, .. }) => {
                tracing::warn!(%location, error = %failure, "schema service unavailable; using the stored copy");
                compile(&body, &location)
            }
            None => Err(failure),
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
    fn a_body_that_is_not_a_schema_is_unusable_not_fatal() {
        assert!(compile("{", "x").is_err());
        assert!(compile(r#"{"type": 12}"#, "x").is_err());
        assert!(compile("<html>error</html>", "x").is_err());
        assert!(compile("42", "x").is_err());
        assert!(matches!(
            compile(r#"{"type": "object"}"#, "x"),
            Ok(Entry::Ready { .. })
        ));
    }

    #[test]
    fn retries_back_off_from_2s_to_5min() {
        assert_eq!(retry_wait(1), Duration::from_secs(2));
        assert_eq!(retry_wait(2), Duration::from_secs(4));
        assert_eq!(retry_wait(8), Duration::from_secs(256));
        assert_eq!(retry_wait(9), RETRY_MAX);
        assert_eq!(retry_wait(u32::MAX), RETRY_MAX);
    }

    #[test]
    fn the_cache_drops_the_least_recently_used_schema() {
        let config = crate::config::Config::parse(
            "[source]\nkind = \"scaleit\"\nname = \"s\"\nschema_dir = \"/nonexistent\"\nschema_cache = 2\n\
             [mqtt]\nurl = \"mqtt://127.0.0.1:1\"\n[[sink]]\nname = \"f\"\nkind = \"stdout\"\n",
        )
        .unwrap();
        let crate::config::SourceKind::Scaleit(s) = &config.source.kind else {
            panic!("a scaleit source")
        };
        let registry = SchemaRegistry::from_config(s, Default::default())
            .unwrap()
            .unwrap();
        let ready = || compile(r#"{"type": "object"}"#, "x").unwrap();
        let key = |r: &str| ("app".to_string(), r.to_string());
        registry.insert(key("a"), ready());
        registry.insert(key("b"), ready());
        // Using `a` makes `b` the least recently used.
        assert!(matches!(
            registry.check("app", "a", &json!({})),
            Check::Valid { .. }
        ));
        registry.insert(key("c"), ready());
        assert_eq!(registry.check("app", "b", &json!({})), Check::NotYet);
        assert!(matches!(
            registry.check("app", "a", &json!({})),
            Check::Valid { .. }
        ));
        assert!(matches!(
            registry.check("app", "c", &json!({})),
            Check::Valid { .. }
        ));
    }
}
