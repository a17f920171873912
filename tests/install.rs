//! `scripts/install.sh` into a staging root: files, modes, a fresh token, idempotence, and that
//! the installed config and service files are valid.

mod common;

use common::mode;
use std::path::Path;
use std::process::Command;

fn install(root: &Path, init: &str) -> std::process::Output {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install.sh");
    let mut command = Command::new("bash");
    command
        .arg(script)
        .arg(common::agent_binary())
        .env("DESTDIR", root);
    // An empty `init` runs the script as an operator who did not set INIT.
    if init.is_empty() {
        command.env_remove("INIT");
    } else {
        command.env("INIT", init);
    }
    command.output().expect("run install.sh")
}

#[test]
fn install_stages_binary_config_and_systemd_unit() {
    let root = tempfile::tempdir().unwrap();
    let out = install(root.path(), "systemd");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let binary = root.path().join("usr/local/bin/utopia-node-agent");
    assert_eq!(mode(&binary), 0o755);
    let config = root.path().join("etc/utopia/agent-config.yaml");
    assert_eq!(mode(&config), 0o600, "the config holds secrets");
    assert_eq!(mode(&root.path().join("etc/utopia")), 0o700);
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(
        !text.contains("change-me-dev-token"),
        "example token replaced"
    );
    let token_line = text.lines().find(|l| l.contains("auth_token:")).unwrap();
    let token = token_line.split('"').nth(1).unwrap();
    assert_eq!(token.len(), 64);
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    // The comment above it no longer calls it the example the agent warns about.
    assert!(!text.contains("CHANGE IT"), "{text}");
    assert!(!text.contains("warns while it is this example"), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    let at = lines.iter().position(|l| l.contains("auth_token:")).unwrap();
    assert!(
        lines[at - 2].contains("# Generated at random by scripts/install.sh on "),
        "{}",
        lines[at - 2]
    );
    assert!(lines[at - 1].contains("openssl rand -hex 32"));
    for doc in ["README.md", "LICENSE"] {
        let path = root.path().join("usr/local/share/doc/utopia-node-agent").join(doc);
        assert_eq!(mode(&path), 0o644);
    }

    // The installed config is valid and starts no warnings about the token or its mode.
    let check = Command::new(&binary)
        .args(["--check-config", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(check.status.success());
    let warnings = String::from_utf8_lossy(&check.stderr);
    assert!(!warnings.contains("warning"), "{warnings}");

    let unit = root
        .path()
        .join("etc/systemd/system/utopia-node-agent.service");
    let unit_text = std::fs::read_to_string(&unit).unwrap();
    assert!(unit_text.contains(
        "ExecStart=/usr/local/bin/utopia-node-agent --config /etc/utopia/agent-config.yaml"
    ));

    // Re-running keeps the operator's config (and its token).
    let out = install(root.path(), "systemd");
    assert!(out.status.success());
    assert_eq!(std::fs::read_to_string(&config).unwrap(), text);
}

#[test]
fn install_stages_the_openrc_service() {
    let root = tempfile::tempdir().unwrap();
    let out = install(root.path(), "openrc");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let script = root.path().join("etc/init.d/utopia-node-agent");
    assert_eq!(mode(&script), 0o755);
    // openrc-run scripts are POSIX sh: at least the syntax must hold.
    let syntax = Command::new("sh").arg("-n").arg(&script).status().unwrap();
    assert!(syntax.success());
}

#[test]
fn install_refuses_without_a_binary() {
    let root = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg("/nonexistent/utopia-node-agent")
        .env("DESTDIR", root.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cargo build --release"));
}

#[test]
fn install_into_destdir_without_init_says_which_service_file_it_skipped() {
    let root = tempfile::tempdir().unwrap();
    let out = install(root.path(), "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("skipped the service file"), "{said}");
    assert!(said.contains("init/utopia-node-agent.service"), "{said}");
    assert!(said.contains("init/utopia-node-agent.openrc"), "{said}");
    assert!(said.contains("set INIT=systemd or INIT=openrc"), "{said}");
    assert!(!root.path().join("etc/systemd").exists());
    assert!(!root.path().join("etc/init.d").exists());
    // The rest is staged.
    assert!(root.path().join("usr/local/bin/utopia-node-agent").exists());
    assert!(root.path().join("etc/utopia/agent-config.yaml").exists());

    // A staging root that runs systemd is detected without INIT.
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("run/systemd/system")).unwrap();
    let out = install(root.path(), "");
    assert!(out.status.success());
    assert!(root
        .path()
        .join("etc/systemd/system/utopia-node-agent.service")
        .exists());
}

#[test]
fn install_rejects_an_unknown_init_before_touching_anything() {
    let root = tempfile::tempdir().unwrap();
    let out = install(root.path(), "upstart");
    assert_eq!(out.status.code(), Some(2));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("INIT=upstart"), "{said}");
    assert!(std::fs::read_dir(root.path()).unwrap().next().is_none());
}

#[test]
fn install_documents_init_in_its_header_and_the_readme() {
    let script =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install.sh"))
            .unwrap();
    let header: String = script
        .lines()
        .take_while(|l| l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(header.contains("INIT=systemd|openrc"), "{header}");
    assert!(header.contains("DESTDIR="), "{header}");
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    assert!(readme.contains("INIT=systemd"));
    assert!(readme.contains("INIT=openrc"));
}
