//! `scripts/install.sh` and `scripts/uninstall.sh` into a staging root: files, modes, a fresh
//! token, idempotence, that the installed config and service files are valid, and that an
//! uninstall removes what the install put there (and, with `--purge`, the config and identity).

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
    let at = lines
        .iter()
        .position(|l| l.contains("auth_token:"))
        .unwrap();
    assert!(
        lines[at - 2].contains("# Generated at random by scripts/install.sh on "),
        "{}",
        lines[at - 2]
    );
    assert!(lines[at - 1].contains("openssl rand -hex 32"));
    for doc in ["README.md", "LICENSE"] {
        let path = root
            .path()
            .join("usr/local/share/doc/utopia-node-agent")
            .join(doc);
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
    // Its log file gets rotated.
    let logrotate = root.path().join("etc/logrotate.d/utopia-node-agent");
    assert_eq!(mode(&logrotate), 0o644);
    let text = std::fs::read_to_string(&logrotate).unwrap();
    assert!(text.contains("/var/log/utopia-node-agent.log {"), "{text}");
    let openrc = std::fs::read_to_string(&script).unwrap();
    assert!(openrc.contains("output_log=\"/var/log/utopia-node-agent.log\""));
}

#[test]
fn logrotate_rotates_the_openrc_log_in_place() {
    let Some(logrotate) = find_program("logrotate") else {
        assert!(!common::in_ci(), "CI must install logrotate");
        eprintln!("skipped: logrotate not installed");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("utopia-node-agent.log");
    std::fs::write(&log, "2026-12-03T08:00:00.000Z [INFO] started\n").unwrap();
    // The shipped snippet, pointed at this log, forced to rotate now.
    let snippet = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/init/utopia-node-agent.logrotate"
    ))
    .unwrap()
    .replace("/var/log/utopia-node-agent.log", &log.to_string_lossy());
    let conf = dir.path().join("logrotate.conf");
    std::fs::write(&conf, snippet).unwrap();
    let out = Command::new(logrotate)
        .arg("--force")
        .arg("--state")
        .arg(dir.path().join("state"))
        .arg(&conf)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(!said.contains("error"), "{said}");
    // copytruncate: the file the service holds open stays, emptied; the lines moved to .1.
    assert_eq!(std::fs::metadata(&log).unwrap().len(), 0);
    let rotated = std::fs::read_to_string(dir.path().join("utopia-node-agent.log.1")).unwrap();
    assert!(rotated.contains("started"));
}

fn uninstall(root: &Path, args: &[&str]) -> std::process::Output {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/uninstall.sh");
    Command::new("bash")
        .arg(script)
        .args(args)
        .env("DESTDIR", root)
        .output()
        .expect("run uninstall.sh")
}

/// Every file (not directory) under `root`, relative to it, sorted.
fn files_under(root: &Path) -> Vec<String> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, root, out);
            } else {
                out.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

#[test]
fn uninstall_removes_the_service_and_keeps_config_and_identity() {
    for init in ["systemd", "openrc"] {
        let root = tempfile::tempdir().unwrap();
        assert!(install(root.path(), init).status.success());
        // What the running agent adds: its identity and registration record.
        let node_id = root.path().join("etc/utopia/node_id");
        std::fs::write(&node_id, "node-1234\n").unwrap();
        let config = root.path().join("etc/utopia/agent-config.yaml");
        let config_text = std::fs::read_to_string(&config).unwrap();

        let out = uninstall(root.path(), &[]);
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{init}: {said}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            files_under(root.path()),
            ["etc/utopia/agent-config.yaml", "etc/utopia/node_id"],
            "{init}: {said}"
        );
        assert_eq!(std::fs::read_to_string(&config).unwrap(), config_text);
        assert!(root.path().join("var/lib/utopia").is_dir());
        assert!(said.contains("removed"), "{said}");
        assert!(said.contains("--purge removes it"), "{said}");

        // Again: nothing left to remove is not an error.
        assert!(uninstall(root.path(), &[]).status.success());
        // A reinstall keeps the kept config (same token, same node).
        assert!(install(root.path(), init).status.success());
        assert_eq!(std::fs::read_to_string(&config).unwrap(), config_text);
    }
}

#[test]
fn uninstall_purge_leaves_no_file_behind() {
    for init in ["systemd", "openrc"] {
        let root = tempfile::tempdir().unwrap();
        assert!(install(root.path(), init).status.success());
        std::fs::write(root.path().join("etc/utopia/node_id"), "node-1234\n").unwrap();
        std::fs::write(root.path().join("var/lib/utopia/state"), "x").unwrap();
        std::fs::create_dir_all(root.path().join("var/log")).unwrap();
        for log in ["utopia-node-agent.log", "utopia-node-agent.log.2.gz"] {
            std::fs::write(root.path().join("var/log").join(log), "line\n").unwrap();
        }
        // Another program's log in the same directory stays.
        std::fs::write(root.path().join("var/log/other.log"), "line\n").unwrap();

        let out = uninstall(root.path(), &["--purge"]);
        assert!(
            out.status.success(),
            "{init}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(files_under(root.path()), ["var/log/other.log"], "{init}");
        assert!(!root.path().join("etc/utopia").exists());
        assert!(!root.path().join("var/lib/utopia").exists());
    }
}

#[test]
fn uninstall_rejects_an_unknown_argument_and_removes_nothing() {
    let root = tempfile::tempdir().unwrap();
    assert!(install(root.path(), "systemd").status.success());
    let before = files_under(root.path());
    let out = uninstall(root.path(), &["--purge-all"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--purge-all"));
    assert_eq!(files_under(root.path()), before);
}

/// `name` looked up in PATH, as the shell would.
fn find_program(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    })
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
