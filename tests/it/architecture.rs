//! `docs/ARCHITECTURE.md` stays true: its folder map names what `src/`
//! holds, its import layers hold for every `crate::` path in the code, and
//! no comment cites a document outside the repository.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The lines of the fenced block tagged `tag` in ARCHITECTURE.md.
fn block(tag: &str) -> Vec<String> {
    let doc = std::fs::read_to_string(format!("{ROOT}/docs/ARCHITECTURE.md")).unwrap();
    doc.split(&format!("```{tag}\n"))
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .unwrap_or_else(|| panic!("ARCHITECTURE.md has no ```{tag} block"))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect()
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// The product code of a file: test-only files and a trailing
/// `#[cfg(test)] mod …` are left out (tests may reach anywhere).
fn product_code(path: &Path) -> String {
    let name = path.file_name().unwrap().to_str().unwrap();
    if ["tests.rs", "testing.rs", "props.rs"].contains(&name) {
        return String::new();
    }
    let text = std::fs::read_to_string(path).unwrap();
    match text.find("#[cfg(test)]\nmod ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// The top-level modules a line names through `crate::` paths, grouped
/// `use crate::{a::X, b}` included.
fn crate_paths(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in line.match_indices("crate::") {
        let rest = &line[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let inner = group.split('}').next().unwrap_or("");
            out.extend(
                inner
                    .split(',')
                    .filter_map(|p| p.trim().split("::").next())
                    .filter(|m| !m.is_empty())
                    .map(String::from),
            );
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.push(name);
        }
    }
    out
}

#[test]
fn no_module_imports_a_module_listed_after_it() {
    let layers: Vec<String> = block("layers");
    let rank = |m: &str| layers.iter().position(|l| l == m);
    let src = Path::new(ROOT).join("src");
    let mut violations = Vec::new();
    let mut seen = BTreeSet::new();
    for file in rust_files(&src) {
        let relative = file.strip_prefix(&src).unwrap();
        let own = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_str()
            .unwrap()
            .trim_end_matches(".rs")
            .to_string();
        if own == "lib" || own == "main" {
            continue;
        }
        let own_rank = rank(&own).unwrap_or_else(|| panic!("{own} is not in the layers"));
        seen.insert(own.clone());
        for (n, line) in product_code(&file).lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for used in crate_paths(line) {
                // The crate root's own items (error_chain) sit below all.
                if used == own || used == "error_chain" {
                    continue;
                }
                match rank(&used) {
                    Some(r) if r < own_rank => {}
                    _ => violations.push(format!(
                        "{}:{}: {own} uses {used}: {}",
                        relative.display(),
                        n + 1,
                        line.trim()
                    )),
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "back-edges:\n{}",
        violations.join("\n")
    );
    let listed: BTreeSet<String> = layers.into_iter().collect();
    assert_eq!(seen, listed, "the layers name exactly the crate's modules");
}

#[test]
fn the_folder_map_names_what_src_holds() {
    let mapped: BTreeSet<String> = block("folders")
        .iter()
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    let src = Path::new(ROOT).join("src");
    let mut present = BTreeSet::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        present.insert(if path.is_dir() {
            format!("src/{name}/")
        } else {
            format!("src/{name}")
        });
    }
    assert_eq!(mapped, present, "docs/ARCHITECTURE.md's folder map");
}

#[test]
fn no_comment_cites_a_document_outside_the_repository() {
    // Spelled in pieces, so this file does not cite them itself.
    let outside = [
        concat!("DESIGN", ".md"),
        concat!("LAYOUT", ".md"),
        concat!("reference/", "vcd.md"),
        concat!("reference/", "scaleit.md"),
    ];
    let mut files = rust_files(&Path::new(ROOT).join("src"));
    files.extend(rust_files(&Path::new(ROOT).join("tests")));
    for entry in std::fs::read_dir(Path::new(ROOT).join("scripts")).unwrap() {
        files.push(entry.unwrap().path());
    }
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for (n, line) in text.lines().enumerate() {
            if outside.iter().any(|doc| line.contains(doc)) {
                found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn profiles_stand_alone_and_the_transport_names_none() {
    let source = Path::new(ROOT).join("src/source");
    let profiles: Vec<String> = std::fs::read_dir(source.join("profile"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
        .collect();
    assert!(profiles.len() >= 3, "{profiles:?}");
    let mentions = |code: &str, profile: &str| {
        code.lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .any(|l| {
                l.contains(&format!("profile::{profile}"))
                    || l.contains(&format!("super::{profile}::"))
                    || l.contains(&format!("super::super::{profile}"))
            })
    };
    let mut found = Vec::new();
    for file in rust_files(&source) {
        let relative = file.strip_prefix(&source).unwrap().to_path_buf();
        let home = relative
            .strip_prefix("profile")
            .ok()
            .and_then(|r| r.components().next())
            .map(|c| c.as_os_str().to_str().unwrap().to_string());
        // The profile folder's parent module picks the profile; app wires it.
        if relative == Path::new("profile/mod.rs") {
            continue;
        }
        let code = product_code(&file);
        for profile in &profiles {
            if home.as_deref() != Some(profile.as_str()) && mentions(&code, profile) {
                found.push(format!(
                    "{} names the {profile} profile",
                    relative.display()
                ));
            }
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

/// The store is the only module that talks to a database: outside
/// `src/store/` the code may derive how a row maps to a type
/// (`sqlx::FromRow`), never query, pool or name a backend. So a second
/// backend (Postgres) is the store's business alone.
#[test]
fn only_the_store_talks_to_a_database() {
    let src = Path::new(ROOT).join("src");
    let mut found = Vec::new();
    for file in rust_files(&src) {
        let relative = file.strip_prefix(&src).unwrap();
        if relative.starts_with("store") {
            continue;
        }
        for (n, line) in product_code(&file).lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            let rest = line
                .replace("sqlx::FromRow", "")
                .replace("#[sqlx(", "")
                .to_ascii_lowercase();
            if rest.contains("sqlx") || rest.contains("sqlite") || rest.contains("pgpool") {
                found.push(format!("{}:{}: {}", relative.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}
