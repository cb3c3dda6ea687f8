//! gapless: every event of an MQTT source, once and in order, with the gaps
//! filled from the source's REST history.
//!
//! The modules follow the data flow (see docs/ARCHITECTURE.md): [`source`] turns wire
//! messages into [`event::Event`]s, [`store`] keeps each once and commits in
//! batches through one writer, [`stream`] numbers released events, and
//! [`sink`] delivers them from the store, each sink from its own cursor.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod clock;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod event;
pub mod gap;
pub mod metrics;
pub mod net;
pub mod ops;
pub mod sink;
pub mod source;
pub mod store;
pub mod stream;
pub mod telemetry;
pub mod watch;

/// An error with every cause behind it (`a: b: c`), for logs: a transport
/// error's own message often hides the part that helps (connection refused,
/// no such host). A cause already quoted by its parent is not repeated.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn error_chain_names_every_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        #[derive(Debug, thiserror::Error)]
        #[error("error sending request")]
        struct Outer(#[source] std::io::Error);
        #[derive(Debug, thiserror::Error)]
        #[error("login failed: {0}")]
        struct Quoting(#[source] std::io::Error);
        assert_eq!(
            super::error_chain(&Outer(io)),
            "error sending request: connection refused"
        );
        let io = std::io::Error::other("no such host");
        assert_eq!(
            super::error_chain(&Quoting(io)),
            "login failed: no such host"
        );
    }
}
