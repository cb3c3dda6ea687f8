//! gapless: every event of an MQTT source, once and in order, with the gaps
//! filled from the source's REST history.
//!
//! The modules follow the data flow (see DESIGN.md): [`source`] turns wire
//! messages into [`event::Event`]s, [`store`] keeps each once and commits in
//! batches through one writer, [`stream`] numbers released events, and
//! [`sink`] delivers them from the store, each sink from its own cursor.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod config;
pub mod demo;
pub mod event;
pub mod metrics;
pub mod ops;
pub mod sim;
pub mod sink;
pub mod source;
pub mod store;
pub mod stream;
pub mod tls;
