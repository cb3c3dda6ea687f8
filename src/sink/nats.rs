//! The NATS JetStream target: one message per event, acknowledged by the
//! stream before the cursor passes it.
//!
//! Each message carries `Nats-Msg-Id` = the event id, so a resend after a
//! crash (published, acked, but the cursor commit lost) is dropped by the
//! stream's duplicate window, and `gapless-seq` = the event's `seq`, so a
//! consumer can check the order. The body is the CloudEvent JSON, as in the
//! file sink. Publishes are pipelined up to `max_in_flight`; the cursor
//! moves only over the contiguous prefix whose acks came back.

use std::time::Duration;

use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};

use super::window::{Ack, AckWindow};
use super::{Published, SinkTargetError};

use crate::config::NatsAuth;
use crate::event::StoredEvent;

/// One piece of a subject template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    Source,
    Type,
    Origin,
}

/// A subject with `{source}`, `{type}` and `{origin}` placeholders, parsed
/// once at start so a bad template fails the config check, not a publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubjectTemplate(Vec<Part>);

impl SubjectTemplate {
    pub fn parse(template: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("`{template}` has a `{{` without its `}}`"))?;
            parts.push(match &rest[open + 1..open + close] {
                "source" => Part::Source,
                "type" => Part::Type,
                "origin" => Part::Origin,
                other => return Err(format!("`{{{other}}}` is not a placeholder")),
            });
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        let t = SubjectTemplate(parts);
        let sample = t.render_with("s", "t", "o");
        let bad_token = sample.split('.').find(|tok| {
            tok.is_empty() || *tok == "*" || *tok == ">" || tok.chars().any(unsafe_char)
        });
        if let Some(tok) = bad_token {
            return Err(format!(
                "`{template}` makes a subject with the token `{tok}`: tokens must be non-empty, \
                 without spaces or wildcards"
            ));
        }
        Ok(t)
    }

    /// The subject of one event (`{type}` is its CloudEvent `type`).
    pub fn render(&self, source: &str, event: &StoredEvent) -> String {
        self.render_with(source, &event.ce_type(), &event.origin)
    }

    fn render_with(&self, source: &str, event_type: &str, origin: &str) -> String {
        let mut out = String::new();
        for part in &self.0 {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Source => push_token(&mut out, source),
                Part::Type => push_token(&mut out, event_type),
                Part::Origin => push_token(&mut out, origin),
            }
        }
        out
    }
}

fn unsafe_char(c: char) -> bool {
    c.is_whitespace() || c.is_control() || c == '*' || c == '>'
}

/// Appends a value as one subject token: dots, spaces and wildcards
/// become `_`, and an empty value is `_`.
fn push_token(out: &mut String, value: &str) {
    if value.is_empty() {
        out.push('_');
    }
    out.extend(
        value
            .chars()
            .map(|c| if c == '.' || unsafe_char(c) { '_' } else { c }),
    );
}

/// How a NATS sink reaches its server.
pub struct NatsSpec<'a> {
    pub url: &'a str,
    pub auth: NatsAuth,
    pub ca_file: Option<&'a std::path::Path>,
    /// The wait for a connection and for each publish ack.
    pub timeout: Duration,
    pub subject: SubjectTemplate,
    pub max_in_flight: usize,
    pub include_markers: bool,
}

/// A connected JetStream publisher.
pub struct NatsTarget {
    js: jetstream::Context,
    subject: SubjectTemplate,
    max_in_flight: usize,
    include_markers: bool,
}

impl NatsTarget {
    pub async fn connect(spec: NatsSpec<'_>) -> Result<Self, SinkTargetError> {
        let connect_error = |reason: String| SinkTargetError::Connect {
            url: crate::net::redact(spec.url),
            reason,
        };
        let options = match &spec.auth {
            NatsAuth::Anonymous => async_nats::ConnectOptions::new(),
            NatsAuth::UserPassword { user, password } => {
                async_nats::ConnectOptions::with_user_and_password(
                    user.clone(),
                    password.expose().to_string(),
                )
            }
            NatsAuth::Token(token) => {
                async_nats::ConnectOptions::with_token(token.expose().to_string())
            }
            NatsAuth::CredsFile(path) => async_nats::ConnectOptions::with_credentials_file(path)
                .await
                .map_err(|e| connect_error(format!("{}: {e}", path.display())))?,
        };
        let tls = (*crate::tls::client_config(spec.ca_file)?).clone();
        let servers = spec
            .url
            .split(',')
            .map(|u| u.trim().parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| connect_error(e.to_string()))?;
        let client = options
            .name("gapless")
            .connection_timeout(spec.timeout)
            .tls_client_config(tls)
            .connect(servers)
            .await
            .map_err(|e| connect_error(e.to_string()))?;
        let js = jetstream::ContextBuilder::new()
            .timeout(spec.timeout)
            .max_ack_inflight(spec.max_in_flight + 1)
            .build(client);
        Ok(NatsTarget {
            js,
            subject: spec.subject,
            max_in_flight: spec.max_in_flight,
            include_markers: spec.include_markers,
        })
    }

    /// Publishes `events` in order, up to `max_in_flight` awaiting their
    /// ack, and stops at the first failure.
    pub async fn publish(&self, events: &[StoredEvent], source: &str, uri: &str) -> Published {
        let mut window = AckWindow::new(self.max_in_flight);
        let mut error = None;
        for event in events {
            let ack = if event.is_marker() && !self.include_markers {
                None
            } else {
                let subject = self.subject.render(source, event);
                let message = PublishMessage::build()
                    .payload(event.to_cloudevent(uri).into())
                    .message_id(&event.id)
                    .header("gapless-seq", event.seq.to_string().as_str())
                    .header("Content-Type", "application/cloudevents+json");
                match self.js.send_publish(subject.clone(), message).await {
                    Ok(ack) => Some(stream_ack(subject, ack)),
                    Err(e) => {
                        error = Some(publish_error(&subject, &e));
                        break;
                    }
                }
            };
            if let Err(e) = window.push(event.seq, ack).await {
                return Published::of_window(window, Some(e));
            }
        }
        let finished = window.finish().await.err();
        Published::of_window(window, finished.or(error))
    }
}

/// The stream's answer to one publish.
async fn stream_ack(subject: String, ack: PublishAckFuture) -> Result<Ack, SinkTargetError> {
    match ack.await {
        Ok(a) if a.duplicate => Ok(Ack::Duplicate),
        Ok(_) => Ok(Ack::Stored),
        Err(e) => Err(publish_error(&subject, &e)),
    }
}

fn publish_error(
    subject: &str,
    e: &async_nats::jetstream::context::PublishError,
) -> SinkTargetError {
    use async_nats::jetstream::context::PublishErrorKind;
    let reason = match e.kind() {
        PublishErrorKind::StreamNotFound => format!(
            "{e}: no JetStream stream captures this subject; create one, e.g. \
             `nats stream add GAPLESS --subjects 'gapless.>'`"
        ),
        _ => e.to_string(),
    };
    SinkTargetError::Publish {
        to: subject.to_string(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(event_type: &str, origin: &str) -> StoredEvent {
        StoredEvent::sample("id", event_type, origin)
    }

    #[test]
    fn the_default_subject_makes_one_token_of_each_value() {
        let t = SubjectTemplate::parse(crate::config::SinkConfig::DEFAULT_NATS_SUBJECT).unwrap();
        assert_eq!(
            t.render(
                "vcd-prod",
                &event("com.vmware.vcloud.event.vm.create", "mqtt")
            ),
            "gapless.vcd-prod.com_vmware_vcloud_event_vm_create"
        );
        assert_eq!(
            t.render("vcd", &event("com/vmware/cloud/event/vm/poweroff", "poll")),
            "gapless.vcd.com_vmware_cloud_event_vm_poweroff"
        );
        assert_eq!(
            t.render("a b", &event("x*y>z\tw", "mqtt")),
            "gapless.a_b.x_y_z_w"
        );
        assert_eq!(t.render("", &event("", "mqtt")), "gapless._._");
        let o = SubjectTemplate::parse("events.{origin}").unwrap();
        assert_eq!(o.render("s", &event("t", "poll")), "events.poll");
    }

    #[test]
    fn bad_templates_are_refused_with_the_reason() {
        for (template, reason) in [
            ("gapless.{sorce}", "not a placeholder"),
            ("gapless.{type", "without its"),
            ("gapless..{type}", "token ``"),
            ("gapless.>", "token `>`"),
            ("gap less.{type}", "token `gap less`"),
            (".{type}", "token ``"),
        ] {
            let e = SubjectTemplate::parse(template).unwrap_err();
            assert!(e.contains(reason), "{template}: {e}");
        }
        assert!(SubjectTemplate::parse("fixed.subject").is_ok());
    }
}
