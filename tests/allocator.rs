//! The agent runs with glibc's per-thread malloc cache off however it is started: started
//! without `GLIBC_TUNABLES` it executes itself again with the tunable added (same pid, argv and
//! process name); a value the operator set is extended, and a tcache size they chose is kept.

mod common;

use common::{Agent, AgentOptions};

/// The process's environment as its exec received it. glibc (2.36 at least) parses
/// `GLIBC_TUNABLES` in place, ending each tunable with a NUL, so `a=1:b=2` reads back as the
/// entries `GLIBC_TUNABLES=a=1` and `b=2`: a tunable's name (`glibc.`...) is no variable's, and
/// such entries are joined to the one before again.
fn environ(pid: u32) -> Vec<String> {
    let bytes = std::fs::read(format!("/proc/{pid}/environ")).expect("read environ");
    let mut entries: Vec<String> = Vec::new();
    for entry in bytes.split(|&b| b == 0).filter(|e| !e.is_empty()) {
        let entry = String::from_utf8_lossy(entry).into_owned();
        match entries.last_mut() {
            Some(last) if entry.starts_with("glibc.") && last.starts_with("GLIBC_TUNABLES=") => {
                last.push(':');
                last.push_str(&entry);
            }
            _ => entries.push(entry),
        }
    }
    entries
}

fn tunables(pid: u32) -> Vec<String> {
    environ(pid)
        .into_iter()
        .filter(|e| e.starts_with("GLIBC_TUNABLES="))
        .collect()
}

fn started_with(tunables: Option<&str>) -> Agent {
    let env = tunables
        .map(|v| vec![("GLIBC_TUNABLES".to_string(), v.to_string())])
        .unwrap_or_default();
    Agent::start_with(
        |_| {},
        AgentOptions {
            env,
            wait_for_gpu: false,
        },
    )
}

#[test]
fn started_by_hand_the_agent_turns_the_tcache_off_and_keeps_pid_argv_and_name() {
    let agent = started_with(None);
    let pid = agent.pid();
    // The process that answers is the one started (exec keeps the pid) and has the tunable.
    assert_eq!(
        tunables(pid),
        ["GLIBC_TUNABLES=glibc.malloc.tcache_count=0"],
        "log:\n{}",
        agent.log()
    );
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    let args: Vec<&[u8]> = cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .collect();
    assert_eq!(
        args,
        [
            common::agent_binary().as_bytes(),
            b"--config",
            agent.config_path.as_os_str().as_encoded_bytes()
        ]
    );
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).expect("comm");
    assert_eq!(comm.trim_end(), "utopia-node-age");
    let exe = std::fs::canonicalize(format!("/proc/{pid}/exe")).expect("exe");
    assert_eq!(
        exe,
        std::fs::canonicalize(common::agent_binary()).expect("binary")
    );
    // The other variables are passed on as they were.
    assert!(environ(pid).iter().any(|e| e.starts_with("PATH=")));
    assert!(
        !agent.log().contains("malloc cache stays on"),
        "{}",
        agent.log()
    );
    assert_eq!(agent.get("/health").status, 200);
}

#[test]
fn other_tunables_are_kept_and_the_tcache_one_added() {
    let agent = started_with(Some("glibc.malloc.arena_max=2"));
    assert_eq!(
        tunables(agent.pid()),
        ["GLIBC_TUNABLES=glibc.malloc.arena_max=2:glibc.malloc.tcache_count=0"]
    );
}

#[test]
fn a_tcache_size_the_operator_chose_is_left_alone() {
    let agent = started_with(Some("glibc.malloc.tcache_count=5"));
    assert_eq!(
        tunables(agent.pid()),
        ["GLIBC_TUNABLES=glibc.malloc.tcache_count=5"]
    );
}

/// The dynamic loader this test process runs under (`ld-linux-x86-64.so.2` on x86-64).
fn dynamic_loader() -> std::path::PathBuf {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("read maps");
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| {
            std::path::Path::new(path)
                .file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("ld-linux"))
        })
        .map(std::path::PathBuf::from)
        .expect("no dynamic loader in /proc/self/maps")
}

#[test]
fn started_through_the_dynamic_loader_the_agent_runs_with_a_warning() {
    // `ld-linux-x86-64.so.2 /path/agent --config ...` (how a binary on a noexec mount is run;
    // valgrind's tools are alike): /proc/self/exe is the loader, not the agent, and executing
    // it again with the agent's argv ran the loader on `--config` (it exited 1, nothing
    // started).
    let dir = tempfile::tempdir().expect("temp dir");
    let config = common::test_config(dir.path());
    let config_path = common::write_config(dir.path(), &config);
    let addr: std::net::SocketAddr = config.agent_api.listen_address.parse().unwrap();
    let log_path = dir.path().join("agent.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = std::process::Command::new(dynamic_loader())
        .arg(common::agent_binary())
        .arg("--config")
        .arg(&config_path)
        .env_remove("GLIBC_TUNABLES")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log)
        .spawn()
        .expect("start the loader");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let answered = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Err(format!("the agent exited ({status})"));
        }
        if common::try_request(addr, "GET", "/health", &[], b"").is_ok_and(|r| r.status == 200) {
            break Ok(());
        }
        if std::time::Instant::now() > deadline {
            break Err("no answer in 15 s".to_string());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    if let Err(why) = answered {
        panic!("{why}; log:\n{log}");
    }
    assert!(
        log.contains("malloc cache stays on (/proc/self/exe is"),
        "{log}"
    );
}
