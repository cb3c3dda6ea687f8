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
fn demo_passes_its_ground_truth_check_and_draws_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let picture = dir.path().join("run.svg");
    let out = gapless()
        .args(["demo", "--events", "300", "--rate", "1000", "--quiet"])
        .arg("--picture")
        .arg(&picture)
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
    assert_eq!(row("gap markers"), "0");
    assert_eq!(row("picture"), picture.display().to_string());
    let svg = std::fs::read_to_string(&picture).unwrap();
    assert!(svg.starts_with("<svg"));
    for series in [
        "stored via MQTT",
        "recovered by the poller",
        "dropped on MQTT (injected)",
        "verified watermark",
    ] {
        assert!(svg.contains(series), "the picture has no `{series}`");
    }
}

/// Every key of the example config, commented out or not, as the README
/// names it (`section.key`, `sink[].key`, inline tables expanded).
fn example_keys(text: &str) -> std::collections::BTreeSet<String> {
    let mut keys = std::collections::BTreeSet::new();
    let mut section = String::new();
    for line in text.lines() {
        let line = line.trim_start_matches('#').trim();
        if let Some(name) = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
            section = format!("{name}[].");
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = format!("{name}.");
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            continue;
        }
        let inline: Vec<&str> = value
            .trim()
            .strip_prefix('{')
            .map(|v| {
                v.split(',')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, _)| k.trim())
                    .collect()
            })
            .unwrap_or_default();
        if !inline.is_empty()
            && inline
                .iter()
                .all(|k| k.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        {
            keys.extend(inline.iter().map(|k| format!("{section}{key}.{k}")));
        } else {
            keys.insert(format!("{section}{key}"));
        }
    }
    keys
}

/// Every key named in the README's configuration reference table.
fn readme_keys(text: &str) -> std::collections::BTreeSet<String> {
    let start = text
        .find("### Configuration reference")
        .expect("reference section");
    let section = &text[start..];
    let end = section[4..].find("\n## ").map_or(section.len(), |i| i + 4);
    section[..end]
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split(" |").next())
        .flat_map(|cell| cell.split(" / "))
        .map(|k| k.trim_matches('`').to_string())
        .collect()
}

/// The README's reference and the example file name the same keys, so
/// neither can drift from the other (and the example parses: see above).
#[test]
fn readme_reference_and_example_config_name_the_same_keys() {
    let root = env!("CARGO_MANIFEST_DIR");
    let example = example_keys(
        &std::fs::read_to_string(format!("{root}/config/gapless.example.toml")).unwrap(),
    );
    let readme = readme_keys(&std::fs::read_to_string(format!("{root}/README.md")).unwrap());
    assert!(example.len() > 40, "{example:?}");
    let only_example: Vec<_> = example.difference(&readme).collect();
    let only_readme: Vec<_> = readme.difference(&example).collect();
    assert!(
        only_example.is_empty() && only_readme.is_empty(),
        "in the example only: {only_example:?}\nin the README only: {only_readme:?}"
    );
}

/// `check-config` looks at the paths the daemon will write: a missing store
/// directory is fine (it is created) and said so; a path under a regular
/// file is refused, naming the key.
#[test]
fn check_config_names_directories_it_creates_and_paths_it_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gapless.toml");
    let write = |store: &std::path::Path, sink: &std::path::Path| {
        std::fs::write(
            &config,
            format!(
                "[source]\nkind = \"vcd\"\nname = \"x\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\n\
                 [store]\npath = \"{}\"\n[[sink]]\nname = \"f\"\nkind = \"file\"\npath = \"{}\"\n",
                store.display(),
                sink.display()
            ),
        )
        .unwrap();
    };
    let store = dir.path().join("var/lib/gapless/gapless.db");
    write(&store, &dir.path().join("events.jsonl"));
    let out = crate::support::run_ok(gapless().args(["check-config", "--config"]).arg(&config));
    assert!(
        out.contains("var/lib/gapless does not exist yet: gapless run creates it"),
        "{out}"
    );

    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    write(&store, &file.join("events.jsonl"));
    let out = gapless()
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("sink[0].path") && err.contains("is a file"),
        "{err}"
    );
}

/// The first hour with a typo: a VCD URL nobody listens on. The login is
/// retried with its whole cause in the log (connection refused), the admin
/// endpoint answers meanwhile (`/readyz` says why it is not ready, and so
/// does `gapless status`), the log has no colour codes in a file, and a
/// second daemon on the same store is refused at once, naming the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_url_is_retried_with_its_cause_while_admin_answers_and_the_store_is_locked() {
    use crate::support::*;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gapless.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\nkind = \"vcd\"\nname = \"typo\"\nurl = \"http://127.0.0.1:0\"\n\
             org = \"System\"\nuser = \"svc\"\npassword_env = \"TYPO_PASSWORD\"\n\
             [store]\npath = \"{}\"\n[admin]\nlisten = \"{ADMIN_ANY_PORT}\"\n\
             [[sink]]\nname = \"f\"\nkind = \"file\"\npath = \"{}\"\n",
            dir.path().join("gapless.db").display(),
            dir.path().join("events.jsonl").display()
        ),
    )
    .unwrap();
    let env = [("TYPO_PASSWORD", "secret")];
    let mut first = Gapless::start_env(dir.path(), &config, &env);
    // The log line is what this test checks: it names the cause.
    let log_path = first.log.clone();
    wait_for("a login failure naming its cause", &mut first, || {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .contains("Connection refused")
    });
    let log = first.log_text();
    let admin = first.admin();
    assert!(!log.contains('\u{1b}'), "colour codes in a log file");

    let (status, body) = http_get(&format!("http://{admin}/healthz")).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = http_get(&format!("http://{admin}/readyz")).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("mqtt: not connected"), "{body}");
    let status = run_ok(gapless().args(["status", "--config"]).arg(&config));
    assert!(
        status.contains("NOT READY: mqtt: not connected"),
        "{status}"
    );

    let second = gapless()
        .args(["run", "--config"])
        .arg(&config)
        .envs(env)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "another gapless (pid {}) holds the store",
            first.pid()
        )),
        "{err}"
    );
    assert!(
        !err.contains("logged in") && !err.contains("connecting"),
        "{err}"
    );
    first.stop();
}
