//! The output format: every line a sink writes is a valid CloudEvents 1.0
//! JSON event (checked against the schema in tests/fixtures).

use crate::support::{gapless_cmd, run_ok};

#[test]
fn every_output_line_is_a_valid_cloudevent() {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("tests/fixtures/cloudevents-1.0.schema.json").unwrap(),
    )
    .unwrap();
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap();

    let bad =
        serde_json::json!({"specversion": "1.0", "id": "", "source": "s", "type": "t", "Seq": 1});
    assert!(
        !validator.is_valid(&bad),
        "the schema must reject an empty id and an upper-case attribute"
    );

    let dir = tempfile::tempdir().unwrap();
    run_ok(
        gapless_cmd()
            .args(["demo", "--events", "60", "--rate", "0", "--quiet", "--keep"])
            .arg(dir.path()),
    );
    let text = std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
    let mut lines = 0;
    for line in text.lines() {
        let event: serde_json::Value = serde_json::from_str(line).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&event)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{line}\n{errors:?}");
        assert!(
            event["type"]
                .as_str()
                .unwrap()
                .starts_with("com.vmware.cloud.event.")
        );
        lines += 1;
    }
    assert_eq!(lines, 60);
}
