//! The command line as a user meets it: config checking and the demo.

use std::process::Command;

fn gapless() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gapless"))
}

#[test]
fn check_config_accepts_the_example_and_names_bad_keys() {
    let ok = gapless()
        .args(["check-config", "--config", "config/gapless.example.toml"])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    // Each bad file exits 2 and its stderr names the key at fault.
    let refused = |text: &str| {
        std::fs::write(&bad, text).unwrap();
        let out = gapless()
            .args(["check-config", "--config"])
            .arg(&bad)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err = refused(
        "[source]\nkind = \"vcd\"\nname = \"x\"\n[mqtt]\nurl = \"http://nope\"\n\
         [[sink]]\nname = \"f\"\nkind = \"file\"\npath = \"e.jsonl\"\n",
    );
    assert!(err.contains("mqtt.url") && err.contains("hint"), "{err}");
    let err = refused("[source]\nkind = \"vcd\"\nname = \"x\"\ncolour = 1\n");
    assert!(err.contains("colour"), "{err}");

    let out = gapless()
        .args(["check-config", "--config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn demo_passes_its_ground_truth_check() {
    let out = gapless()
        .args(["demo", "--events", "300", "--rate", "1000", "--quiet"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("result: PASS"), "{stdout}");
    let row = |key: &str| {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(key))
            .unwrap_or_else(|| panic!("no `{key}` row in {stdout}"))
            .rsplit("  ")
            .next()
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(row("check: missing"), "0");
    assert_eq!(row("check: duplicated"), "0");
    assert_eq!(row("events created"), "300");
    let dropped: u64 = row("dropped on MQTT").parse().unwrap();
    assert!(
        dropped > 20,
        "the demo must lose MQTT messages to show the poller: {stdout}"
    );
    assert_eq!(row("recovered by the poller"), dropped.to_string());
}
