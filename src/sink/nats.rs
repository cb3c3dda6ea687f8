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

use crate::config::{NatsAuth, SubjectTemplate};
use crate::event::StoredEvent;

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
        let tls = (*crate::net::tls::client_config(spec.ca_file)?).clone();
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
                let subject = self.subject.render(source, &event.ce_type(), &event.origin);
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

    /// The subject the sink publishes `e` under.
    fn subject(t: &SubjectTemplate, source: &str, e: &StoredEvent) -> String {
        t.render(source, &e.ce_type(), &e.origin)
    }

    #[test]
    fn the_default_subject_makes_one_token_of_each_value() {
        let t = SubjectTemplate::parse(crate::config::NatsSink::DEFAULT_SUBJECT).unwrap();
        assert_eq!(
            subject(
                &t,
                "vcd-prod",
                &event("com.vmware.vcloud.event.vm.create", "mqtt")
            ),
            "gapless.vcd-prod.com_vmware_vcloud_event_vm_create"
        );
        assert_eq!(
            subject(
                &t,
                "vcd",
                &event("com/vmware/cloud/event/vm/poweroff", "poll")
            ),
            "gapless.vcd.com_vmware_cloud_event_vm_poweroff"
        );
        assert_eq!(
            subject(&t, "a b", &event("x*y>z\tw", "mqtt")),
            "gapless.a_b.x_y_z_w"
        );
        assert_eq!(subject(&t, "", &event("", "mqtt")), "gapless._._");
        let o = SubjectTemplate::parse("events.{origin}").unwrap();
        assert_eq!(subject(&o, "s", &event("t", "poll")), "events.poll");
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
