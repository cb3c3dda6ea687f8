//! Sources turn wire messages into [`Event`]s.
//!
//! What a message means is the business of one [`profile`] (VCD, ScaleIT,
//! generic JSON), each sans-IO behind the [`profile::Profile`] trait; the
//! rest is profile-free: the MQTT transport ([`mqtt`]), the gap poller
//! ([`poll`]) over any [`poll::History`], the credentials that follow a
//! login session ([`session`]), and what history clients share
//! ([`history`]).

pub mod history;
pub mod mqtt;
pub mod poll;
pub mod profile;
pub mod session;

#[cfg(test)]
mod props;

use crate::config::RetainedMode;

// What a message turned into is the pipeline's data (the store keeps
// rejections too), so it lives in `event`; sources name it from here.
pub use crate::event::{Parsed, REJECTED_KEEP_BYTES, RejectReason, Rejected};
pub use profile::Parser;

/// What a message delivered with the MQTT retain flag becomes: the broker
/// sends its retained copy again on every subscribe, so under `once` the
/// copy's content key (sources without ids) matches stored copies at any
/// distance in time, and sources with ids match by id as always; `skip`
/// drops it; `every` treats it as live. Kept events are marked `retained`.
pub fn on_retained(item: Parsed, mode: RetainedMode) -> Parsed {
    match (item, mode) {
        (Parsed::Event(_), RetainedMode::Skip) => Parsed::Skipped("retained".into()),
        (Parsed::Event(mut e), mode) => {
            e.retained = true;
            if let (Some(k), RetainedMode::Once) = (&mut e.content_key, mode) {
                k.window_us = i64::MAX;
            }
            Parsed::Event(e)
        }
        (other, _) => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scaleit() -> Parsed {
        let c: crate::config::Config = crate::config::Config::parse(
            "[source]\nkind = \"scaleit\"\nname = \"s\"\nrequire_schema = false\n[mqtt]\nurl = \"mqtt://127.0.0.1\"\n\
             [[sink]]\nname = \"o\"\nkind = \"stdout\"\n",
        )
        .unwrap();
        Parser::from_config(&c.source, None).parse(
            "app/a/s/state",
            br#"{"$schema":"state.json","on":true}"#,
            1_000,
        )
    }
    #[test]
    fn a_retained_copy_is_marked_and_matched_at_any_distance_once() {
        let Parsed::Event(live) = scaleit() else {
            panic!("a ScaleIT body parses")
        };
        assert!(!live.retained);
        let Parsed::Event(once) = on_retained(scaleit(), RetainedMode::Once) else {
            panic!("kept")
        };
        assert!(once.retained);
        assert_eq!(once.content_key.as_ref().unwrap().window_us, i64::MAX);
        assert_eq!(
            once.content_key.unwrap().key,
            live.content_key.clone().unwrap().key
        );
        let Parsed::Event(every) = on_retained(scaleit(), RetainedMode::Every) else {
            panic!("kept")
        };
        assert!(every.retained);
        assert_eq!(every.content_key, live.content_key);
        assert!(matches!(
            on_retained(scaleit(), RetainedMode::Skip),
            Parsed::Skipped(k) if k == "retained"
        ));
    }
}
