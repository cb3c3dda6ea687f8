//! Stand-ins for the outside world, used by `gapless demo` and the tests:
//! an in-process MQTT broker and a generator of VCD-shaped events. They are
//! real parts (a real broker on a real socket, real VCD envelopes), only
//! embedded so a demo needs no external service.

pub mod broker;
pub mod events;
pub mod publisher;
pub mod vcd;

/// Now, in µs since the Unix epoch (wall time: the simulator does not
/// follow gapless's test clock).
pub fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}
