//! ScaleIT app-to-app messages (`[source] kind = "scaleit"`).
//!
//! Topics are `app/<app>/<stack>/<message>/<more>…`; bodies are minimal JSON
//! objects with no id and no time, naming their JSON Schema in `$schema`.
//! So the identity is derived: a hash of topic and body, deduplicated within
//! a time window (the store's job), plus the receive time to tell a reading
//! sent again later from a QoS 1 redelivery. The hash is over the body's
//! canonical JSON (sorted keys, no spacing), so a history endpoint that
//! re-serialises a body still names the same message. This module only parses and
//! resolves; fetching schemas and validating is [`schema`]'s.

pub mod history;
pub mod schema;

use std::sync::Arc;

use serde_json::Value;

use super::{Decoded, ParseError, Parsed, Profile, RejectReason, content_id};
use crate::config::ScaleitSource;
use crate::event::{ContentKey, Event, EventExt, Origin, Validation};

/// The parser, with what it needs from the config.
#[derive(Clone, Debug)]
pub struct ScaleitParser {
    /// The app API URL template (`{app}` = app name), if schemas come over HTTP.
    pub schema_base_url: Option<String>,
    pub require_schema: bool,
    pub dedup_window_us: i64,
    /// Whether a schema registry validates events (a schema source is configured).
    pub validating: bool,
    /// `source.schema_allow`: URL prefixes an absolute `$schema` may name.
    pub schema_allow: Vec<String>,
}

/// The four fixed levels of a ScaleIT topic and what follows them.
#[derive(Debug, PartialEq, Eq)]
pub struct Topic<'a> {
    pub app: &'a str,
    pub stack: &'a str,
    pub message: &'a str,
    /// Levels after the message spec, joined by `/` (CloudEvent `subject`).
    pub rest: Option<&'a str>,
}

/// Splits `app/<app>/<stack>/<message>/...`; fewer than four levels, another
/// root, or an empty level is an error naming what is wrong.
pub fn parse_topic(topic: &str) -> Result<Topic<'_>, String> {
    let mut parts = topic.splitn(5, '/');
    let (root, app, stack, message) = (parts.next(), parts.next(), parts.next(), parts.next());
    let rest = parts.next();
    match (root, app, stack, message) {
        (Some("app"), Some(app), Some(stack), Some(message))
            if !app.is_empty() && !stack.is_empty() && !message.is_empty() =>
        {
            Ok(Topic {
                app,
                stack,
                message,
                rest: rest.filter(|r| !r.is_empty()),
            })
        }
        (Some("app"), ..) => Err(format!(
            "`{topic}` has fewer than four levels (app/<app>/<stack>/<message>)"
        )),
        _ => Err(format!("`{topic}` does not start with app/")),
    }
}

/// The schema URL for `reference` of `app`: an absolute reference as is,
/// else the app API URL + `/api/messages/` + the reference.
pub fn schema_url(base: &str, app: &str, reference: &str) -> String {
    if reference.starts_with("http://") || reference.starts_with("https://") {
        return reference.to_string();
    }
    format!(
        "{}/api/messages/{}",
        base.replace("{app}", app).trim_end_matches('/'),
        reference.trim_start_matches('/')
    )
}

/// The URL a `$schema` reference may be fetched from, or why it may not:
/// publishers choose references, so only URLs under the app's
/// `<schema_base_url>/api/messages/` or under a `schema_allow` prefix are
/// ever requested (compared after `..` and `.` are resolved). `Ok(None)`:
/// a relative reference with no base URL (local files only).
pub fn allowed_schema_url(
    base: Option<&str>,
    allow: &[String],
    app: &str,
    reference: &str,
) -> Result<Option<String>, String> {
    let absolute = reference.starts_with("http://") || reference.starts_with("https://");
    // The app name comes from the topic, which the publisher chooses, and
    // stands in the base URL (often its host): only name characters pass.
    let app_in_url = !absolute && base.is_some_and(|b| b.contains("{app}"));
    if app_in_url
        && !app
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(format!(
            "the app name `{app}` has characters that do not belong in a URL; gapless fetches no schema for it"
        ));
    }
    // The common case needs no URL parsing (this runs per message): a
    // relative reference of plain path segments stays under the app's
    // prefix by construction.
    if !absolute && is_plain_path(reference) {
        return Ok(base.map(|b| schema_url(b, app, reference)));
    }
    let Some(candidate) = (match (absolute, base) {
        (true, _) => Some(reference.to_string()),
        (false, Some(base)) => Some(schema_url(base, app, reference)),
        (false, None) => None,
    }) else {
        return Ok(None);
    };
    let normal = |u: &str| url::Url::parse(u).map(|u| u.to_string()).ok();
    let url = normal(&candidate).ok_or_else(|| {
        format!(
            "`$schema` `{}` does not make a URL",
            crate::net::redact(reference)
        )
    })?;
    let app_prefix = base.and_then(|b| normal(&schema_url(b, app, "")));
    let allowed = app_prefix
        .iter()
        .chain(allow)
        .any(|prefix| url.starts_with(prefix.as_str()));
    if allowed {
        Ok(Some(url))
    } else {
        Err(format!(
            "`$schema` `{}` is not under the app's schema_base_url or a source.schema_allow prefix; gapless fetches nothing else",
            crate::net::redact(reference)
        ))
    }
}

/// Path segments of letters, digits, `-`, `_`, `.`, none of them `.` or
/// `..`, no leading `/`: nothing a URL parser would resolve or reinterpret.
fn is_plain_path(reference: &str) -> bool {
    !reference.is_empty()
        && reference.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
}

/// The ScaleIT profile: the parser, then the schema check of what it
/// decoded (none configured: kept as `unvalidated`).
pub struct ScaleitProfile {
    pub parser: ScaleitParser,
    pub schemas: Option<Arc<schema::SchemaRegistry>>,
}

impl std::fmt::Debug for ScaleitProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScaleitProfile")
            .field("parser", &self.parser)
            .field("validating", &self.schemas.is_some())
            .finish()
    }
}

impl Profile for ScaleitProfile {
    fn decode(&self, topic: &str, text: &str, received_at_us: i64) -> Result<Decoded, ParseError> {
        self.parser.parse(topic, text, received_at_us)
    }

    fn admit(&self, event: Event, topic: &str, received_at_us: i64) -> Parsed {
        match &self.schemas {
            Some(schemas) => schemas.apply(event, topic, received_at_us),
            None => Parsed::Event(event),
        }
    }
}

impl ScaleitParser {
    pub fn from_config(c: &ScaleitSource) -> Self {
        ScaleitParser {
            schema_base_url: c.schema_base_url.clone(),
            require_schema: c.require_schema,
            dedup_window_us: c.dedup_window.0.as_micros() as i64,
            validating: c.schema_base_url.is_some() || c.schema_dir.is_some(),
            schema_allow: c.schema_allow.clone(),
        }
    }

    pub fn parse(
        &self,
        topic: &str,
        text: &str,
        received_at_us: i64,
    ) -> Result<Decoded, ParseError> {
        let t = parse_topic(topic).map_err(|e| (RejectReason::BadTopic, e))?;
        let body: Value =
            serde_json::from_str(text).map_err(|e| (RejectReason::MalformedJson, e.to_string()))?;
        if !body.is_object() {
            return Err((
                RejectReason::MalformedJson,
                "the body is not a JSON object".into(),
            ));
        }
        let schema_ref = match body.get("$schema") {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(other) => {
                return Err((
                    RejectReason::MissingSchema,
                    format!("`$schema` is {other}, not a reference"),
                ));
            }
            None if self.require_schema => {
                return Err((
                    RejectReason::MissingSchema,
                    "the body has no `$schema` (require_schema = true)".into(),
                ));
            }
            None => None,
        };
        let dataschema = match &schema_ref {
            Some(r) => allowed_schema_url(
                self.schema_base_url.as_deref(),
                &self.schema_allow,
                t.app,
                r,
            )
            .map_err(|e| (RejectReason::UnknownSchema, e))?
            .map(|url| crate::net::redact(&url)),
            None => None,
        };
        let validation = if self.validating && schema_ref.is_some() {
            Validation::Pending
        } else {
            Validation::Unvalidated
        };
        let key = content_id(topic, &body.to_string());
        Ok(Decoded::Event(Event {
            id: format!("{}-{received_at_us}", &key[..32]),
            occurred_at_us: received_at_us,
            received_at_us,
            event_type: t.message.to_string(),
            subject: t.rest.map(str::to_string),
            org: None,
            origin: Origin::Mqtt,
            payload: text.to_string(),
            ext: Some(Box::new(EventExt {
                source: format!("app/{}/{}", t.app, t.stack),
                app: t.app.to_string(),
                schema_ref,
                dataschema,
                validation,
            })),
            content_key: Some(ContentKey {
                key,
                window_us: self.dedup_window_us,
            }),
            retained: false,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parser() -> ScaleitParser {
        ScaleitParser {
            schema_base_url: Some("http://{app}.apps.local:8080/".into()),
            require_schema: true,
            dedup_window_us: 600_000_000,
            validating: true,
            schema_allow: Vec::new(),
        }
    }

    fn event(d: Decoded) -> Event {
        match d {
            Decoded::Event(e) => e,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn topics_split_into_app_stack_message_and_subject() {
        assert_eq!(
            parse_topic("app/de-ondics-pacman/de-ondics-pacman_1/gameover").unwrap(),
            Topic {
                app: "de-ondics-pacman",
                stack: "de-ondics-pacman_1",
                message: "gameover",
                rest: None
            }
        );
        let t = parse_topic("app/sensor/s_2/temperature/hall/3").unwrap();
        assert_eq!((t.message, t.rest), ("temperature", Some("hall/3")));
        assert!(
            parse_topic("app/sensor/s_2")
                .unwrap_err()
                .contains("fewer than four")
        );
        assert!(parse_topic("app/sensor//temperature").is_err());
        assert!(parse_topic("publish/x/y/z").unwrap_err().contains("app/"));
    }

    #[test]
    fn the_pacman_gameover_maps_to_a_cloudevent_shape() {
        let body = r#"{"$schema": "gameover.json", "score": 10230, "isHighscore": true}"#;
        let e = event(
            parser()
                .parse("app/de-ondics-pacman/de-ondics-pacman_1/gameover", body, 42)
                .unwrap(),
        );
        let x = e.ext.as_ref().unwrap();
        assert_eq!(x.source, "app/de-ondics-pacman/de-ondics-pacman_1");
        assert_eq!(e.event_type, "gameover");
        assert_eq!(e.subject, None);
        assert_eq!(e.occurred_at_us, 42);
        assert_eq!(
            x.dataschema.as_deref(),
            Some("http://de-ondics-pacman.apps.local:8080/api/messages/gameover.json")
        );
        assert_eq!(x.validation, Validation::Pending);
        assert!(e.id.ends_with("-42"));
        assert_eq!(
            e.content_key.as_ref().unwrap().key,
            content_id(
                "app/de-ondics-pacman/de-ondics-pacman_1/gameover",
                r#"{"$schema":"gameover.json","isHighscore":true,"score":10230}"#
            )
        );
    }

    #[test]
    fn the_key_ignores_spacing_and_key_order() {
        let p = parser();
        let key = |body: &str| {
            event(p.parse("app/a/s/t", body, 1).unwrap())
                .content_key
                .unwrap()
                .key
        };
        assert_eq!(
            key(r#"{"$schema": "t.json", "v": 1, "w": [1, 2]}"#),
            key(r#"{"w":[1,2],"v":1,"$schema":"t.json"}"#)
        );
        assert_ne!(
            key(r#"{"$schema":"t.json","v":1}"#),
            key(r#"{"$schema":"t.json","v":2}"#)
        );
    }

    #[test]
    fn same_body_later_is_another_id_with_the_same_key() {
        let p = parser();
        let body = r#"{"$schema":"t.json","v":1}"#;
        let a = event(p.parse("app/a/s/t", body, 1).unwrap());
        let b = event(p.parse("app/a/s/t", body, 2).unwrap());
        assert_ne!(a.id, b.id);
        assert_eq!(a.content_key, b.content_key);
    }

    #[test]
    fn only_schemas_under_the_base_or_an_allowed_prefix_are_fetched() {
        let base = Some("http://{app}.apps.local:8080");
        let allow = vec!["https://schemas.example.com/shared/".to_string()];
        let ok = |r: &str| allowed_schema_url(base, &allow, "pacman", r);
        assert_eq!(
            ok("gameover.json").unwrap().as_deref(),
            Some("http://pacman.apps.local:8080/api/messages/gameover.json")
        );
        assert_eq!(
            ok("https://schemas.example.com/shared/a.json")
                .unwrap()
                .as_deref(),
            Some("https://schemas.example.com/shared/a.json")
        );
        for hostile in [
            "http://169.254.169.254/latest/meta-data/",
            "https://schemas.example.com/shared/../private/k.json",
            "https://schemas.example.com.evil.net/shared/a.json",
            "../../admin/reset",
            "http://pacman.apps.local:8080/api/other",
        ] {
            let e = ok(hostile).unwrap_err();
            assert!(e.contains("schema_allow"), "{hostile}: {e}");
        }
        assert_eq!(allowed_schema_url(None, &[], "a", "t.json").unwrap(), None);
        assert!(is_plain_path("v2/game-over_1.json") && !is_plain_path("a/../b"));
        assert!(!is_plain_path("/abs") && !is_plain_path("a//b") && !is_plain_path("x?y"));
        for app in [
            "evil.net?",
            "evil.net#",
            "x@evil.net",
            "169.254.169.254:80",
            "a%2fb",
        ] {
            let e = allowed_schema_url(base, &allow, app, "gameover.json").unwrap_err();
            assert!(e.contains("app name"), "{app}: {e}");
        }
        let p = parser();
        let err = p
            .parse("app/a/s/t", r#"{"$schema":"http://127.0.0.1:9/steal"}"#, 1)
            .unwrap_err();
        assert_eq!(err.0, RejectReason::UnknownSchema);
    }

    #[test]
    fn bad_messages_are_rejected_with_a_reason() {
        let p = parser();
        let reason = |topic: &str, body: &str| p.parse(topic, body, 1).unwrap_err().0;
        assert_eq!(
            reason("app/a/s", r#"{"$schema":"x"}"#),
            RejectReason::BadTopic
        );
        assert_eq!(reason("app/a/s/m", "[1]"), RejectReason::MalformedJson);
        assert_eq!(reason("app/a/s/m", "{"), RejectReason::MalformedJson);
        assert_eq!(
            reason("app/a/s/m", r#"{"v":1}"#),
            RejectReason::MissingSchema
        );
        assert_eq!(
            reason("app/a/s/m", r#"{"$schema":7}"#),
            RejectReason::MissingSchema
        );
        let lenient = ScaleitParser {
            require_schema: false,
            ..parser()
        };
        let e = event(lenient.parse("app/a/s/m", r#"{"v":1}"#, 1).unwrap());
        assert_eq!(e.ext.unwrap().validation, Validation::Unvalidated);
    }

    #[test]
    fn absolute_schema_references_are_kept() {
        assert_eq!(
            schema_url("http://x", "a", "https://schemas.example.com/t.json"),
            "https://schemas.example.com/t.json"
        );
        assert_eq!(
            schema_url("http://x/", "a", "/t.json"),
            "http://x/api/messages/t.json"
        );
    }
}
