//! The build contract: the `rust-version` Cargo.toml declares (and the README repeats) is one
//! that builds the locked dependencies, and the LICENSE file Cargo.toml names is there. CI runs
//! these with the rest of the suite, so a `cargo update` that raises the minimum fails until the
//! declared version follows.

use serde_json::Value;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// `1.88.0`, `1.95` -> (1, 88, 0), (1, 95, 0).
fn parse_version(text: &str) -> (u32, u32, u32) {
    let mut parts = text.split('.').map(|p| {
        p.parse::<u32>()
            .unwrap_or_else(|_| panic!("bad version {text:?}"))
    });
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    let patch = parts.next().unwrap_or(0);
    (major, minor, patch)
}

/// The host target triple, so that crates only other platforms build do not count.
fn host_triple() -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(rustc)
        .arg("-vV")
        .output()
        .expect("run rustc -vV");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host")
        .to_string()
}

/// `cargo metadata` of the locked dependency graph on this platform.
fn locked_metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--locked", "--format-version", "1"])
        .args(["--filter-platform", &host_triple()])
        .arg("--manifest-path")
        .arg(format!("{ROOT}/Cargo.toml"))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata --locked failed (is Cargo.lock current?): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

/// Each resolved package's `rust-version`, as (version, "name version"), highest first.
fn locked_rust_versions(metadata: &Value) -> Vec<((u32, u32, u32), String)> {
    let resolved: Vec<&str> = metadata["resolve"]["nodes"]
        .as_array()
        .expect("resolve.nodes")
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    let mut versions: Vec<_> = metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter(|p| p["id"].as_str().is_some_and(|id| resolved.contains(&id)))
        .filter_map(|p| {
            let rust = p["rust_version"].as_str()?;
            let name = format!("{} {}", p["name"].as_str()?, p["version"].as_str()?);
            Some((parse_version(rust), name))
        })
        .collect();
    versions.sort_by(|a, b| b.cmp(a));
    versions
}

fn declared_rust_version(metadata: &Value) -> String {
    metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .find(|p| p["name"] == "utopia-node-agent")
        .and_then(|p| p["rust_version"].as_str())
        .expect("Cargo.toml declares a rust-version")
        .to_string()
}

#[test]
fn declared_rust_version_builds_every_locked_crate() {
    let metadata = locked_metadata();
    let declared = declared_rust_version(&metadata);
    let too_new: Vec<String> = locked_rust_versions(&metadata)
        .into_iter()
        .filter(|(needed, _)| *needed > parse_version(&declared))
        .map(|((a, b, c), name)| format!("{name} needs Rust {a}.{b}.{c}"))
        .collect();
    assert!(
        too_new.is_empty(),
        "Cargo.toml says rust-version = {declared:?}, but the lock file holds crates that need \
         more; raise rust-version (and the README) to the highest of: {too_new:?}"
    );
}

#[test]
fn declared_rust_version_is_the_real_minimum() {
    // Not lower than the locked crates need (the test above), and not higher either: the
    // declared version is exactly the highest `rust-version` in the lock file.
    let metadata = locked_metadata();
    let declared = parse_version(&declared_rust_version(&metadata));
    let (highest, name) = locked_rust_versions(&metadata)
        .into_iter()
        .next()
        .expect("some locked crate declares a rust-version");
    assert_eq!(
        declared, highest,
        "the highest locked requirement is {name}'s"
    );
}

#[test]
fn readme_states_the_declared_rust_version() {
    let metadata = locked_metadata();
    let declared = declared_rust_version(&metadata);
    let readme = std::fs::read_to_string(format!("{ROOT}/README.md")).expect("README.md");
    let claim = format!("Rust {declared} or newer");
    assert!(readme.contains(&claim), "README must say {claim:?}");
    // No other toolchain claim elsewhere in it.
    for (at, _) in readme.match_indices("Rust 1.") {
        let rest = &readme[at + "Rust ".len()..];
        let end = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let version = rest[..end].trim_end_matches('.');
        assert_eq!(version, declared, "README names Rust {version}");
    }
}

#[test]
fn version_parsing_orders_like_cargo() {
    assert!(parse_version("1.95") > parse_version("1.88.0"));
    assert!(parse_version("1.88.1") > parse_version("1.88"));
    assert_eq!(parse_version("1.85"), (1, 85, 0));
}

#[test]
fn license_file_is_the_license_cargo_toml_names() {
    let manifest = std::fs::read_to_string(format!("{ROOT}/Cargo.toml")).expect("Cargo.toml");
    assert!(manifest.contains("license = \"Apache-2.0\""));
    let license = std::fs::read_to_string(format!("{ROOT}/LICENSE")).expect("a LICENSE file");
    assert!(license.contains("Apache License"));
    assert!(license.contains("Version 2.0, January 2004"));
    assert!(license.contains("END OF TERMS AND CONDITIONS"));
}
