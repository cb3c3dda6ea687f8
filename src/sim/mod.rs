//! Stand-ins for the outside world, used by `gapless demo` and the tests:
//! an in-process MQTT broker and a generator of VCD-shaped events. They are
//! real parts (a real broker on a real socket, real VCD envelopes), only
//! embedded so a demo needs no external service.

pub mod broker;
pub mod events;
pub mod publisher;
pub mod vcd;
