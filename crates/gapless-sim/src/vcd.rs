//! A VMware Cloud Director simulator: the REST endpoints gapless uses
//! (sessions, API-token login, the audit trail) and the MQTT side (each new
//! event published in the VCD envelope), with fault knobs.
//!
//! Honest to docs/wire-formats.md where it matters to gapless: JWTs that
//! expire, `401` on an expired token, FIQL `timestamp` filters with
//! `ge/gt/le/lt/==`, `sortAsc`/`sortDesc`, 1-based pages of at most 128 with
//! `pageCount` and a `Link: rel="nextPage"` header, a visibility lag (an
//! event is listed only some time after it happened), millisecond
//! timestamps shared by many events, and URN ids on REST.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::events;
use super::publisher::{PublishError, Publisher};
use crate::now_us;

/// Who may log in and how long tokens live.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub org: String,
    pub user: String,
    pub password: String,
    /// Accepted as an OAuth refresh token (API-token login).
    pub api_token: String,
    pub token_ttl: Duration,
    /// How long after it happened an event shows up in the audit trail.
    pub visibility_lag: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            org: "System".into(),
            user: "administrator".into(),
            password: "sim-password".into(),
            api_token: "sim-api-token".into(),
            token_ttl: Duration::from_secs(3600),
            visibility_lag: Duration::from_millis(500),
        }
    }
}

/// Fault knobs, changeable while the simulator runs.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Share of events not published on MQTT (they exist only on REST).
    pub mqtt_drop_rate: f64,
    /// Share of published events sent twice.
    pub mqtt_dup_rate: f64,
    /// Share of events swapped with their successor before publishing.
    pub mqtt_reorder_rate: f64,
    /// Share of audit-trail requests answered 503 / 429 at random.
    pub http_5xx_rate: f64,
    pub http_429_rate: f64,
    /// The `Retry-After` seconds sent with a 429.
    pub retry_after_secs: u64,
    /// The next this-many audit-trail requests fail with 503.
    pub fail_next_503: u32,
    /// The next this-many audit-trail requests fail with 429.
    pub fail_next_429: u32,
    /// When serving this page number, first create this many new events
    /// (events written while a client pages).
    pub create_on_page: Option<(u32, u64)>,
    /// `resultTotal` claims this many more events than the pages hold (a
    /// server that lost events between counting and paging).
    pub overcount: u64,
    /// The audit trail keeps only events younger than this (VCD prunes its
    /// audit trail; older ones are simply gone, without an error).
    pub audit_retention: Option<Duration>,
}

/// What the simulator has seen, for assertions.
#[derive(Debug, Default)]
pub struct SimStats {
    pub logins: AtomicU64,
    pub audit_requests: AtomicU64,
    pub unauthorized: AtomicU64,
    pub throttled: AtomicU64,
    pub failed: AtomicU64,
    pub mqtt_published: AtomicU64,
    pub mqtt_dropped: AtomicU64,
    /// When each dropped message would have been published (ms since the
    /// epoch): the demo's picture shows the drops it injected.
    pub dropped_at_ms: std::sync::Mutex<Vec<i64>>,
}

struct SimEvent {
    ts_ms: i64,
    id: String,
    rest: Value,
}

struct Inner {
    config: SimConfig,
    faults: std::sync::Mutex<Faults>,
    events: std::sync::Mutex<Vec<SimEvent>>,
    tokens: std::sync::Mutex<HashMap<String, i64>>,
    /// When each audit-trail request arrived and what it was answered (µs, status).
    requests: std::sync::Mutex<Vec<(i64, u16)>>,
    stats: SimStats,
    salt: u64,
    next: AtomicU64,
    publisher: Mutex<Option<Publisher>>,
    /// The broker's TCP address, for the WebSocket bridge.
    broker: std::sync::Mutex<Option<SocketAddr>>,
}

/// A running simulator on 127.0.0.1.
#[derive(Clone)]
pub struct VcdSim {
    addr: SocketAddr,
    inner: Arc<Inner>,
}

fn now_ms() -> i64 {
    now_us() / 1000
}

/// A JWT-shaped token (`alg: none`) whose `exp` claim gapless can read.
pub fn make_jwt(user: &str, exp_s: i64, n: u64) -> String {
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.sim",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&json!({"sub": user, "exp": exp_s, "jti": n}))
    )
}

impl VcdSim {
    /// Starts the REST side on an ephemeral loopback port.
    pub async fn start(config: SimConfig) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            config,
            faults: Default::default(),
            events: Default::default(),
            tokens: Default::default(),
            requests: Default::default(),
            stats: Default::default(),
            salt: now_us() as u64,
            next: AtomicU64::new(0),
            publisher: Mutex::new(None),
            broker: Default::default(),
        });
        let app = Router::new()
            .route("/cloudapi/1.0.0/sessions", post(login))
            .route("/cloudapi/1.0.0/sessions/provider", post(login))
            .route("/oauth/provider/token", post(oauth))
            .route("/oauth/tenant/{org}/token", post(oauth))
            .route("/cloudapi/1.0.0/auditTrail", get(audit_trail))
            .route("/messaging/mqtt", get(mqtt_over_websocket))
            .with_state(inner.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(VcdSim { addr, inner })
    }

    /// The base URL (`http://127.0.0.1:<port>`), for `[source] url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn config(&self) -> &SimConfig {
        &self.inner.config
    }

    pub fn stats(&self) -> &SimStats {
        &self.inner.stats
    }

    /// Arrival time and status of every audit-trail request so far.
    pub fn requests(&self) -> Vec<(i64, u16)> {
        self.inner.requests.lock().unwrap().clone()
    }

    /// Changes the fault knobs.
    pub fn set_faults(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut self.inner.faults.lock().unwrap());
    }

    /// Invalidates every issued token (as a cell restart or an expiry would).
    pub fn expire_tokens(&self) {
        self.inner.tokens.lock().unwrap().clear();
    }

    /// Every session token issued so far (for leak checks).
    pub fn issued_tokens(&self) -> Vec<String> {
        self.inner.tokens.lock().unwrap().keys().cloned().collect()
    }

    /// True if `token` is a current, unexpired session token.
    pub fn token_valid(&self, token: &str) -> bool {
        self.inner.token_valid(token)
    }

    /// Connects the MQTT side to a broker; new events are published there.
    pub async fn connect_mqtt(&self, host: &str, port: u16) -> Result<(), PublishError> {
        let p = Publisher::connect_as(host, port, "vcd-sim", Some(("vcd-sim", "vcd-sim"))).await?;
        *self.inner.publisher.lock().await = Some(p);
        *self.inner.broker.lock().unwrap() = format!("{host}:{port}").parse().ok();
        Ok(())
    }

    /// Creates `n` events happening now (many share a millisecond) and
    /// publishes them on MQTT per the fault knobs. Returns their normalised ids.
    pub async fn create_events(&self, n: u64) -> Result<Vec<String>, PublishError> {
        self.create_events_at(n, now_ms()).await
    }

    /// Creates `n` events that all happened at millisecond `ts_ms`.
    pub async fn create_events_at(&self, n: u64, ts_ms: i64) -> Result<Vec<String>, PublishError> {
        let created = self.inner.insert(n, ts_ms);
        let envelopes = self.inner.mqtt_traffic(&created);
        if let Some(p) = self.inner.publisher.lock().await.as_mut() {
            p.publish_all(envelopes, None).await?;
        }
        Ok(created.into_iter().map(|(id, _, _)| id).collect())
    }

    /// The normalised ids of every event created so far.
    pub fn ground_truth(&self) -> Vec<String> {
        self.inner
            .events
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.id.clone())
            .collect()
    }
}

impl Inner {
    fn token_valid(&self, token: &str) -> bool {
        self.tokens
            .lock()
            .unwrap()
            .get(token)
            .is_some_and(|exp_ms| *exp_ms > now_ms())
    }

    fn issue_token(&self) -> (String, i64) {
        let ttl = self.config.token_ttl;
        // The token dies exactly at its `exp` claim (whole seconds, rounded
        // down): a claim later than the real expiry would eat the client's
        // renewal margin and let it offer a dead token.
        let exp_s = (now_ms() + ttl.as_millis() as i64) / 1000;
        let exp_ms = exp_s * 1000;
        let n = self.next.fetch_add(1, Relaxed);
        let jwt = make_jwt(&self.config.user, exp_s, n);
        self.tokens.lock().unwrap().insert(jwt.clone(), exp_ms);
        self.stats.logins.fetch_add(1, Relaxed);
        (jwt, ttl.as_secs() as i64)
    }

    /// Adds `n` events at `ts_ms`; returns (normalised id, topic, event) of each.
    fn insert(&self, n: u64, ts_ms: i64) -> Vec<(String, String, Value)> {
        let mut created = Vec::with_capacity(n as usize);
        let mut all = self.events.lock().unwrap();
        for _ in 0..n {
            let i = self.next.fetch_add(1, Relaxed);
            let event = events::audit_event(self.salt, i, ts_ms * 1000);
            let id = events::event_id(self.salt, i);
            let mut rest = event.clone();
            rest["eventId"] = json!(format!("urn:vcloud:audit:{id}"));
            created.push((id.clone(), events::topic(self.salt, i), event));
            all.push(SimEvent { ts_ms, id, rest });
        }
        // Keep the list sorted by time; events of one millisecond stay in creation order.
        all.sort_by_key(|e| e.ts_ms);
        created
    }

    /// The MQTT messages for new events, after drops, duplicates and reordering.
    fn mqtt_traffic(&self, created: &[(String, String, Value)]) -> Vec<(String, Vec<u8>)> {
        let f = self.faults.lock().unwrap().clone();
        let mut out = Vec::new();
        for (_, topic, event) in created {
            if rand::random::<f64>() < f.mqtt_drop_rate {
                self.stats.mqtt_dropped.fetch_add(1, Relaxed);
                self.stats.dropped_at_ms.lock().unwrap().push(now_ms());
                continue;
            }
            let body = events::envelope(event);
            if rand::random::<f64>() < f.mqtt_dup_rate {
                out.push((topic.clone(), body.clone()));
            }
            out.push((topic.clone(), body));
        }
        for i in 0..out.len().saturating_sub(1) {
            if rand::random::<f64>() < f.mqtt_reorder_rate {
                out.swap(i, i + 1);
            }
        }
        self.stats
            .mqtt_published
            .fetch_add(out.len() as u64, Relaxed);
        out
    }
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(v.strip_prefix("Basic ")?)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (who, password) = text.split_once(':')?;
    Some((who.to_string(), password.to_string()))
}

async fn login(State(sim): State<Arc<Inner>>, headers: HeaderMap) -> Response {
    let expected = format!("{}@{}", sim.config.user, sim.config.org);
    match basic_credentials(&headers) {
        Some((who, password)) if who == expected && password == sim.config.password => {
            let (jwt, _) = sim.issue_token();
            let mut resp =
                Json(json!({"id": "urn:vcloud:session:1", "user": {"name": sim.config.user}}))
                    .into_response();
            resp.headers_mut().insert(
                "x-vmware-vcloud-access-token",
                HeaderValue::from_str(&jwt).expect("ascii"),
            );
            resp
        }
        _ => StatusCode::UNAUTHORIZED.into_response(),
    }
}

async fn oauth(State(sim): State<Arc<Inner>>, body: String) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let ok = form.get("grant_type").map(String::as_str) == Some("refresh_token")
        && form.get("refresh_token") == Some(&sim.config.api_token);
    if !ok {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_grant"})),
        )
            .into_response();
    }
    let (jwt, ttl_s) = sim.issue_token();
    Json(json!({"access_token": jwt, "token_type": "Bearer", "expires_in": ttl_s})).into_response()
}

/// One FIQL comparison on `timestamp`.
struct Clause {
    op: &'static str,
    ms: i64,
}

fn parse_filter(filter: &str) -> Result<Vec<Clause>, String> {
    if filter.contains(',') {
        return Err("OR (`,`) is not supported by the simulator".into());
    }
    filter
        .split(';')
        .filter(|c| !c.is_empty())
        .map(|c| {
            let rest = c
                .strip_prefix("timestamp")
                .ok_or_else(|| format!("unsupported filter field in `{c}`"))?;
            let (op, value) = [
                ("=ge=", "ge"),
                ("=gt=", "gt"),
                ("=le=", "le"),
                ("=lt=", "lt"),
                ("==", "eq"),
            ]
            .iter()
            .find_map(|(tok, op)| rest.strip_prefix(tok).map(|v| (*op, v)))
            .ok_or_else(|| format!("unsupported operator in `{c}`"))?;
            let ms = chrono::DateTime::parse_from_rfc3339(value)
                .map_err(|e| format!("bad timestamp `{value}`: {e}"))?
                .timestamp_millis();
            Ok(Clause { op, ms })
        })
        .collect()
}

fn matches(clauses: &[Clause], ts: i64) -> bool {
    clauses.iter().all(|c| match c.op {
        "ge" => ts >= c.ms,
        "gt" => ts > c.ms,
        "le" => ts <= c.ms,
        "lt" => ts < c.ms,
        _ => ts == c.ms,
    })
}

async fn audit_trail(
    State(sim): State<Arc<Inner>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let arrived = now_us();
    let status = serve_audit(&sim, &headers, &q);
    sim.requests
        .lock()
        .unwrap()
        .push((arrived, status.status().as_u16()));
    status
}

fn serve_audit(sim: &Inner, headers: &HeaderMap, q: &HashMap<String, String>) -> Response {
    sim.stats.audit_requests.fetch_add(1, Relaxed);
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !token.is_some_and(|t| sim.token_valid(t)) {
        sim.stats.unauthorized.fetch_add(1, Relaxed);
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let accept_ok = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json;version="));
    if !accept_ok {
        return (
            StatusCode::NOT_ACCEPTABLE,
            "a versioned Accept header is required",
        )
            .into_response();
    }
    let page: u32 = q
        .get("page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(1)
        .max(1);
    let create = {
        let mut f = sim.faults.lock().unwrap();
        let throttle = |f: &Faults| {
            let mut r = StatusCode::TOO_MANY_REQUESTS.into_response();
            r.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(f.retry_after_secs.max(1)),
            );
            r
        };
        if f.fail_next_429 > 0 {
            f.fail_next_429 -= 1;
            sim.stats.throttled.fetch_add(1, Relaxed);
            return throttle(&f);
        }
        if f.fail_next_503 > 0 {
            f.fail_next_503 -= 1;
            sim.stats.failed.fetch_add(1, Relaxed);
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        let roll = rand::random::<f64>();
        if roll < f.http_429_rate {
            sim.stats.throttled.fetch_add(1, Relaxed);
            return throttle(&f);
        }
        if roll < f.http_429_rate + f.http_5xx_rate {
            sim.stats.failed.fetch_add(1, Relaxed);
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        match f.create_on_page {
            Some((p, n)) if p == page => {
                f.create_on_page = None;
                n
            }
            _ => 0,
        }
    };
    if create > 0 {
        sim.insert(create, now_ms());
    }
    let clauses = match parse_filter(q.get("filter").map(String::as_str).unwrap_or("")) {
        Ok(c) => c,
        Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
    };
    let page_size: usize = q
        .get("pageSize")
        .and_then(|p| p.parse().ok())
        .unwrap_or(25)
        .clamp(1, 128);
    let visible_until = now_ms() - sim.config.visibility_lag.as_millis() as i64;
    let kept_from = sim
        .faults
        .lock()
        .unwrap()
        .audit_retention
        .map_or(i64::MIN, |r| now_ms() - r.as_millis() as i64);
    let all = sim.events.lock().unwrap();
    let mut selected: Vec<&SimEvent> = all
        .iter()
        .filter(|e| e.ts_ms <= visible_until && e.ts_ms >= kept_from && matches(&clauses, e.ts_ms))
        .collect();
    if q.contains_key("sortDesc") {
        selected.reverse();
    }
    let total = selected.len();
    let page_count = total.div_ceil(page_size).max(1) as u32;
    let values: Vec<&Value> = selected
        .iter()
        .skip((page as usize - 1) * page_size)
        .take(page_size)
        .map(|e| &e.rest)
        .collect();
    let total = total + sim.faults.lock().unwrap().overcount as usize;
    let body = json!({
        "resultTotal": total, "pageCount": page_count, "page": page, "pageSize": page_size,
        "associations": [], "values": values,
    });
    drop(all);
    let mut resp = Json(body).into_response();
    let link = |p: u32, rel: &str| {
        let mut params: Vec<(String, String)> =
            q.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        params.retain(|(k, _)| k != "page");
        params.push(("page".into(), p.to_string()));
        let query = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish();
        format!("</cloudapi/1.0.0/auditTrail?{query}>;rel=\"{rel}\";type=\"application/json\"")
    };
    let mut links = vec![link(page_count, "lastPage")];
    if page < page_count {
        links.push(link(page + 1, "nextPage"));
    }
    for l in links {
        if let Ok(v) = HeaderValue::from_str(&l) {
            resp.headers_mut().append(header::LINK, v);
        }
    }
    resp
}

/// VCD serves MQTT over WebSocket on the REST host at `/messaging/mqtt`
/// (subprotocol `mqtt`), which is what gapless derives from `[source] url`.
/// The simulator bridges that path to its broker's TCP port, so a config
/// with only the VCD URL works against it as against a cell.
async fn mqtt_over_websocket(
    State(inner): State<Arc<Inner>>,
    ws: axum::extract::ws::WebSocketUpgrade,
) -> Response {
    let Some(broker) = *inner.broker.lock().unwrap() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "no broker connected").into_response();
    };
    ws.protocols(["mqtt"])
        .on_upgrade(move |socket| bridge(socket, broker))
}

/// Copies WebSocket binary frames to the broker's TCP stream and back.
async fn bridge(mut socket: axum::extract::ws::WebSocket, broker: SocketAddr) {
    use axum::extract::ws::Message;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut tcp) = tokio::net::TcpStream::connect(broker).await else {
        return;
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            frame = socket.recv() => match frame {
                Some(Ok(Message::Binary(data))) => {
                    if tcp.write_all(&data).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
            n = tcp.read(&mut buf) => match n {
                Ok(0) | Err(_) => {
                    let _ = socket.send(Message::Close(None)).await;
                    return;
                }
                Ok(n) => {
                    if socket
                        .send(Message::Binary(buf[..n].to_vec().into()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fiql_subset_parses_and_matches() {
        let c = parse_filter(
            "timestamp=ge=2026-11-23T10:00:00.000Z;timestamp=lt=2026-11-23T10:00:01.000Z",
        )
        .unwrap();
        let t0 = chrono::DateTime::parse_from_rfc3339("2026-11-23T10:00:00Z")
            .unwrap()
            .timestamp_millis();
        assert!(matches(&c, t0));
        assert!(matches(&c, t0 + 999));
        assert!(!matches(&c, t0 + 1000));
        assert!(!matches(&c, t0 - 1));
        assert!(parse_filter("timestamp=ge=2026-11-23T10:00:00Z,timestamp=lt=x").is_err());
        assert!(parse_filter("eventType==x").is_err());
        assert!(parse_filter("timestamp=xx=1").is_err());
    }
}
