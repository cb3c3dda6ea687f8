//! Property tests of what input can do to the sans-IO core: no byte
//! string, however hostile, panics a parser or escapes the accept/reject
//! contract; no watermark or clock makes the poller's windows overlap or
//! leave a hole; no time value from a peer overflows.

use proptest::prelude::*;

use super::Parsed;
use super::poll::{Rules, plan};
use super::profile::{Parser, generic, scaleit, vcd};

fn parsers() -> Vec<Parser> {
    vec![
        Parser::new(vcd::VcdParser::new(vec![
            "EVENT".into(),
            "EXTERNAL_EVENT".into(),
        ])),
        Parser::new(generic::GenericParser {
            id_pointer: Some("/id".into()),
            time_pointer: Some("/time".into()),
            type_pointer: Some("/type".into()),
            dedup_window_us: 600_000_000,
        }),
        Parser::new(generic::GenericParser {
            id_pointer: None,
            time_pointer: None,
            type_pointer: None,
            dedup_window_us: 600_000_000,
        }),
        Parser::new(scaleit::ScaleitProfile {
            parser: scaleit::ScaleitParser {
                schema_base_url: Some("http://{app}.apps.local".into()),
                require_schema: true,
                dedup_window_us: 600_000_000,
                validating: true,
                schema_allow: vec!["https://schemas.example.com/".into()],
            },
            schemas: None,
        }),
    ]
}

/// Valid messages of every profile, to mutate.
fn seeds() -> Vec<(String, Vec<u8>)> {
    let vcd = gapless_sim::events::envelope(&gapless_sim::events::audit_event(
        3,
        1,
        1_795_428_000_000_000,
    ));
    vec![
        ("publish/org/user".into(), vcd),
        (
            "t/1".into(),
            br#"{"id":"A-1","time":"2026-11-23T10:00:00Z","type":"door.open"}"#.to_vec(),
        ),
        (
            "app/pacman/pacman_1/gameover/level/3".into(),
            br#"{"$schema":"gameover.json","score":1,"isHighscore":false}"#.to_vec(),
        ),
    ]
}

/// The contract: an event has an id, a rejection keeps a bounded prefix of
/// what it refused (the message, or the event inside it) and its detail
/// says why, a skip names what it was.
fn check(parsed: &Parsed, body: &[u8]) {
    match parsed {
        Parsed::Event(e) => assert!(!e.id.is_empty()),
        Parsed::Rejected(r) => {
            assert!(r.size <= body.len());
            assert_eq!(r.bytes.len(), r.size.min(super::REJECTED_KEEP_BYTES));
            assert!(!r.detail.is_empty(), "{:?} without a detail", r.reason);
        }
        Parsed::Skipped(kind) => assert!(!kind.is_empty()),
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_are_accepted_or_rejected_never_a_panic(
        topic in "[a-z/+#]{0,40}",
        body in proptest::collection::vec(any::<u8>(), 0..2048),
        now in any::<i64>(),
    ) {
        for p in parsers() {
            let parsed = p.parse(&topic, &body, now).bound_time(&topic, now, 300_000_000);
            check(&parsed, &body);
        }
    }

    #[test]
    fn mutated_valid_messages_are_accepted_or_rejected_never_a_panic(
        seed in 0usize..3,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..12),
        now in any::<i64>(),
    ) {
        let (topic, mut body) = seeds()[seed].clone();
        for (at, byte, kind) in edits {
            match kind {
                0 if !body.is_empty() => { let i = at.index(body.len()); body[i] = byte; }
                1 => { let i = at.index(body.len() + 1); body.insert(i, byte); }
                _ if !body.is_empty() => { let i = at.index(body.len()); body.remove(i); }
                _ => {}
            }
        }
        for p in parsers() {
            check(&p.parse(&topic, &body, now).bound_time(&topic, now, 300_000_000), &body);
        }
    }

    #[test]
    fn windows_are_contiguous_half_open_and_cover_the_span(
        behind in proptest::option::of(-10_000_000_000_000i64..10_000_000_000_000),
        now in any::<i64>(),
        overlap in 0i64..10_000_000_000,
        lag in 0i64..10_000_000_000,
        max_window in 1_000_000_000i64..100_000_000_000,
        lookback in 0i64..10_000_000_000_000,
    ) {
        // Spans of up to ~4 months in windows of at least 1000 s keep the
        // plan small; the extremes are covered below.
        let verified = behind.map(|b| now.saturating_sub(b));
        let rules = Rules {
            overlap_us: overlap,
            visibility_lag_us: lag,
            max_window_us: max_window,
            initial_lookback_us: lookback,
        };
        let windows = plan(verified, now, rules);
        for w in &windows {
            prop_assert!(w.from_us < w.to_us, "{w:?} is empty or reversed");
            prop_assert!(w.to_us - w.from_us <= max_window.max(1000), "{w:?} is too long");
            prop_assert_eq!(w.from_us.rem_euclid(1000), 0);
        }
        for pair in windows.windows(2) {
            prop_assert_eq!(pair[0].to_us, pair[1].from_us, "a hole or an overlap");
        }
        if let (Some(first), Some(last)) = (windows.first(), windows.last()) {
            prop_assert!(last.to_us <= now.saturating_sub(lag));
            prop_assert!(first.from_us <= last.to_us);
        }
    }

    #[test]
    fn extreme_watermarks_and_clocks_do_not_overflow(
        verified in proptest::option::of(prop_oneof![Just(i64::MIN), Just(i64::MAX), Just(0i64), any::<i64>()]),
        now in prop_oneof![Just(i64::MIN), Just(i64::MAX), Just(0i64), any::<i64>()],
    ) {
        let rules = Rules {
            overlap_us: 120_000_000,
            visibility_lag_us: 5_000_000,
            max_window_us: i64::MAX / 4,
            initial_lookback_us: i64::MAX,
        };
        for w in plan(verified, now, rules) {
            prop_assert!(w.from_us < w.to_us);
        }
    }

    #[test]
    fn time_values_from_peers_never_overflow(
        number in any::<i64>(),
        text in ".{0,40}",
        secs in any::<u64>(),
        now_s in any::<i64>(),
    ) {
        let _ = super::profile::parse_time_us(&serde_json::json!(number));
        let _ = super::profile::parse_time_us(&serde_json::json!(text));
        let cap = std::time::Duration::from_secs(600);
        for value in [secs.to_string(), text.clone()] {
            if let Some(d) = crate::net::parse_retry_after(&value, now_s, cap) {
                prop_assert!(d <= cap);
            }
        }
        let _ = crate::source::profile::vcd::api::jwt_expiry_us(&text);
        prop_assert!(reqwest::header::HeaderValue::from_str(&crate::sink::webhook::webhook_id(&text)).is_ok());
    }
}
