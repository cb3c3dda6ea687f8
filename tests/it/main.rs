//! Integration tests: one binary, one module per concern, real parts only
//! (mosquitto, the gapless binary, SQLite files on disk, Postgres servers).

mod admin;
mod architecture;
mod cli;
mod dist;
mod faults;
mod gap;
mod hostile;
mod ingest;
mod kafka;
mod lifecycle;
mod mqtt;
mod nats;
mod ops;
mod output;
mod poll;
mod postgres;
mod scaleit;
mod soak;
mod support;
mod tls;
mod webhook;
