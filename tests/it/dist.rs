//! What ships beside the binary in `dist/`: the Prometheus alert rules pass
//! `promtool check rules` and their unit tests (`promtool test rules`). The
//! dashboard's and rules' metric names are checked against a running gapless
//! in `gap.rs`.

use std::path::PathBuf;
use std::process::Command;

/// Debian's `prometheus` package ships promtool; without it the test fails
/// naming the package, unless `GAPLESS_SKIP_PROMTOOL=1`.
fn promtool() -> Option<PathBuf> {
    let found = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        assert_eq!(
            std::env::var("GAPLESS_SKIP_PROMTOOL").as_deref(),
            Ok("1"),
            "promtool is not installed (apt-get install prometheus), \
             or set GAPLESS_SKIP_PROMTOOL=1 to skip the alert-rule tests"
        );
        eprintln!("SKIP: promtool is not installed (GAPLESS_SKIP_PROMTOOL=1)");
    }
    found
}

#[test]
fn promtool_checks_the_alert_rules_and_runs_their_unit_tests() {
    let Some(promtool) = promtool() else {
        return;
    };
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/dist/prometheus");
    for args in [
        ["check", "rules", "gapless-rules.yml"],
        ["test", "rules", "gapless-rules.test.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "promtool {args:?}:\n{text}");
        assert!(text.contains("SUCCESS"), "promtool {args:?}:\n{text}");
    }
}
