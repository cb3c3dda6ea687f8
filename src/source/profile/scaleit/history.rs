//! A ScaleIT app's history endpoint as the poller's [`History`]
//! (`[source] history_url`), so ScaleIT gaps are recovered by the same
//! windowed poller as VCD's.
//!
//! `GET <history_url>?since=<RFC 3339>&until=<RFC 3339>` answers a JSON
//! array of the messages the app received in `[since, until)`, each
//! `{"topic": "app/<app>/<stack>/<message>/…", "received": <RFC 3339 or
//! epoch ms>, "body": {…} | "<the body's text>"}`. Each is parsed like an
//! MQTT message received at `received`, so its content key meets the MQTT
//! copy's within `dedup_window`, and is validated by the same registry.
//! With `{app}` in the URL each app of `source.apps` is one page of a window.

use serde_json::Value;

use super::ScaleitParser;
use super::schema::Settler;
use crate::config::ScaleitSource;
use crate::event::{Origin, now_us, rfc3339_us};
use crate::net::Limits;
use crate::source::history::{ApiError, Window, rest_client, success};
use crate::source::poll::{History, HistoryPage, PollError};
use crate::source::profile::{Decoded, parse_time_us};
use crate::source::{Parsed, RejectReason, Rejected};

/// The history endpoints of the configured apps.
pub struct ScaleitHistory {
    http: reqwest::Client,
    /// `source.headers_env` and the bearer token (sensitive).
    headers: reqwest::header::HeaderMap,
    limits: Limits,
    /// One URL per app (`{app}` filled in), or the one URL for all apps.
    urls: Vec<String>,
    parser: ScaleitParser,
    schemas: Option<Settler>,
}

/// One history entry, parsed: its topic (for rejections) and what it became.
#[derive(Debug)]
pub struct Entry {
    pub topic: String,
    pub received_at_us: i64,
    pub item: Parsed,
}

/// Parses a history response body; `Err` when it is not an array at all
/// (the window is read again later). A bad entry becomes a rejection with
/// a reason, like a bad MQTT message.
pub fn parse_history(
    parser: &ScaleitParser,
    text: &str,
    now_us: i64,
) -> Result<Vec<Entry>, String> {
    let entries: Vec<Value> = serde_json::from_str(text)
        .map_err(|e| format!("expected a JSON array of {{topic, received, body}}: {e}"))?;
    Ok(entries
        .iter()
        .map(|entry| parse_entry(parser, entry, now_us))
        .collect())
}

fn parse_entry(parser: &ScaleitParser, entry: &Value, now_us: i64) -> Entry {
    let topic = entry.get("topic").and_then(Value::as_str).unwrap_or("");
    let received = entry
        .get("received")
        .ok_or((
            RejectReason::MissingTimestamp,
            "the entry has no `received`".to_string(),
        ))
        .and_then(parse_time_us);
    let body = match entry.get("body") {
        Some(Value::String(text)) => Ok(text.clone()),
        Some(v @ Value::Object(_)) => Ok(v.to_string()),
        _ => Err((
            RejectReason::BadEnvelope,
            "the entry's `body` is neither a JSON object nor its text".to_string(),
        )),
    };
    let rejected = |at_us, (reason, detail): (RejectReason, String)| Entry {
        topic: topic.to_string(),
        received_at_us: at_us,
        item: Parsed::Rejected(Rejected::new(
            topic,
            entry.to_string().as_bytes(),
            reason,
            format!("history entry: {detail}"),
            at_us,
        )),
    };
    let (received, body) = match (received, body) {
        (Ok(r), Ok(b)) => (r, b),
        (Err(e), _) => return rejected(now_us, e),
        (Ok(r), Err(e)) => return rejected(r, e),
    };
    let item = match parser.parse(topic, &body, received) {
        Ok(Decoded::Event(mut event)) => {
            event.origin = Origin::Poll;
            event.received_at_us = now_us;
            Parsed::Event(event)
        }
        Ok(Decoded::Skip(kind)) => Parsed::Skipped(kind),
        Err((reason, detail)) => Parsed::Rejected(Rejected::new(
            topic,
            body.as_bytes(),
            reason,
            detail,
            received,
        )),
    };
    Entry {
        topic: topic.to_string(),
        received_at_us: received,
        item,
    }
}

impl ScaleitHistory {
    /// The history of a ScaleIT source, when `history_url` is set.
    pub fn from_config(
        c: &ScaleitSource,
        schemas: Option<Settler>,
        limits: Limits,
    ) -> Result<Option<Self>, ApiError> {
        let Some(template) = &c.history_url else {
            return Ok(None);
        };
        let urls = if template.contains("{app}") {
            c.apps
                .iter()
                .map(|a| template.replace("{app}", a))
                .collect()
        } else {
            vec![template.clone()]
        };
        Ok(Some(ScaleitHistory {
            http: rest_client(&c.tls)?,
            headers: crate::net::headers(&Default::default(), &c.secret_headers)?,
            limits,
            urls,
            parser: ScaleitParser::from_config(c),
            schemas,
        }))
    }
}

impl History for ScaleitHistory {
    async fn page(
        &self,
        window: Window,
        page: u32,
        _page_size: u32,
    ) -> Result<HistoryPage, PollError> {
        let url = &self.urls[(page as usize).saturating_sub(1).min(self.urls.len() - 1)];
        let resp = self
            .http
            .get(url)
            .headers(self.headers.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .query(&[
                ("since", rfc3339_us(window.from_us)),
                ("until", rfc3339_us(window.to_us)),
            ])
            .send()
            .await
            .map_err(ApiError::from)?;
        const WHAT: &str = "the ScaleIT history endpoint";
        let text =
            crate::net::read_limited(success(resp, WHAT, self.limits)?, self.limits.max_body)
                .await
                .map_err(|source| ApiError::Body { what: WHAT, source })?;
        let text = String::from_utf8_lossy(&text);
        let now = now_us();
        let entries =
            parse_history(&self.parser, &text, now).map_err(|message| ApiError::BadResponse {
                what: "the ScaleIT history endpoint",
                message: format!("{}: {message}", crate::net::redact(url)),
            })?;
        let mut items = Vec::with_capacity(entries.len());
        for entry in entries {
            let item = match (entry.item, &self.schemas) {
                (Parsed::Event(e), Some(schemas)) => {
                    schemas
                        .settle(e, &entry.topic, entry.received_at_us)
                        .await?
                }
                (item, _) => item,
            };
            if let Parsed::Rejected(r) = &item {
                tracing::warn!(topic = %r.topic, reason = r.reason.as_str(), detail = %r.detail,
                    "rejected history entry");
            }
            items.push(item);
        }
        Ok(HistoryPage {
            items,
            more: (page as usize) < self.urls.len(),
            total: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Validation;

    fn parser() -> ScaleitParser {
        ScaleitParser {
            schema_base_url: Some("http://{app}.apps.local".into()),
            require_schema: true,
            dedup_window_us: 600_000_000,
            validating: true,
            schema_allow: Vec::new(),
        }
    }

    #[test]
    fn entries_parse_like_mqtt_messages_received_at_their_time() {
        let text = r#"[
          {"topic": "app/pacman/pacman_1/gameover", "received": "2026-11-23T10:00:00.250Z",
           "body": {"score": 7, "$schema": "gameover.json", "isHighscore": false}},
          {"topic": "app/pacman/pacman_1/gameover", "received": 1795428000500,
           "body": "{\"$schema\": \"gameover.json\", \"score\": 8, \"isHighscore\": true}"}
        ]"#;
        let entries = parse_history(&parser(), text, 99).unwrap();
        assert_eq!(entries.len(), 2);
        let Parsed::Event(e) = &entries[0].item else {
            panic!("{entries:?}")
        };
        assert_eq!(e.origin, Origin::Poll);
        assert_eq!(
            (e.occurred_at_us, e.received_at_us),
            (1_795_428_000_250_000, 99)
        );
        assert!(e.id.ends_with("-1795428000250000"));
        let x = e.ext.as_ref().unwrap();
        assert_eq!(x.source, "app/pacman/pacman_1");
        assert_eq!(x.validation, Validation::Pending);

        // The same message over MQTT has the same content key.
        let mqtt = parser()
            .parse(
                "app/pacman/pacman_1/gameover",
                r#"{"$schema": "gameover.json", "score": 7, "isHighscore": false}"#,
                1,
            )
            .unwrap();
        let Decoded::Event(m) = mqtt else { panic!() };
        assert_eq!(m.content_key, e.content_key);
        assert_eq!(entries[1].received_at_us, 1_795_428_000_500_000);
    }

    #[test]
    fn bad_entries_are_rejected_and_a_bad_body_fails_the_page() {
        let text = r#"[
          {"topic": "app/pacman/pacman_1/gameover", "body": {"$schema": "g.json"}},
          {"topic": "app/pacman/pacman_1/gameover", "received": "2026-11-23T10:00:00Z", "body": 7},
          {"topic": "app/pacman", "received": "2026-11-23T10:00:00Z", "body": {"$schema": "g.json"}},
          {"topic": "app/pacman/p/m", "received": "2026-11-23T10:00:00Z", "body": {"v": 1}}
        ]"#;
        let reasons: Vec<RejectReason> = parse_history(&parser(), text, 5)
            .unwrap()
            .into_iter()
            .map(|e| match e.item {
                Parsed::Rejected(r) => r.reason,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            reasons,
            [
                RejectReason::MissingTimestamp,
                RejectReason::BadEnvelope,
                RejectReason::BadTopic,
                RejectReason::MissingSchema
            ]
        );
        assert!(parse_history(&parser(), r#"{"values": []}"#, 5).is_err());
        assert!(parse_history(&parser(), "[]", 5).unwrap().is_empty());
    }
}
