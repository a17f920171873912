//! `utopia-node-agent doctor [--json]`: checks the host the agent runs on and prints one line
//! per check, pass, warn or fail, with what to do. Exit status 0 when nothing fails.
//!
//! Every check has a deadline (a docker CLI or frpc that hangs is killed after
//! [`COMMAND_DEADLINE`], network checks time out), so doctor itself never hangs. It reads the
//! config the agent would (with the same `PHOENIX_*` overrides); a config that does not load
//! fails its check and the checks that need it are skipped.

use crate::child::{self, Keep, RunLimits};
use crate::config::{Config, GpuMode, Settings};
use crate::shutdown;
use serde::Serialize;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a docker or frpc command may take.
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(10);
/// How long a TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Below this much free space under docker's root: warn; below a tenth of it: fail.
const DISK_WARN_BYTES: u64 = 20 * 1024 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Warn,
    Fail,
}

/// One check's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub check: &'static str,
    pub status: Outcome,
    pub message: String,
    /// What to do about a warn or fail; empty on pass.
    pub action: String,
}

fn pass(check: &'static str, message: impl Into<String>) -> Check {
    Check {
        check,
        status: Outcome::Pass,
        message: message.into(),
        action: String::new(),
    }
}

fn warn(check: &'static str, message: impl Into<String>, action: impl Into<String>) -> Check {
    Check {
        check,
        status: Outcome::Warn,
        message: message.into(),
        action: action.into(),
    }
}

fn fail(check: &'static str, message: impl Into<String>, action: impl Into<String>) -> Check {
    Check {
        check,
        status: Outcome::Fail,
        message: message.into(),
        action: action.into(),
    }
}

/// Runs every check on the config at `path`.
pub fn run(path: &Path) -> Vec<Check> {
    let settings = match Config::load(path) {
        Ok((settings, warnings)) => {
            let mode = match &settings.platform.api_url {
                Some(url) => format!("registers with the platform at {url}"),
                None => "standalone (central_platform.api_url is empty)".to_string(),
            };
            let tunnel = match &settings.frp.server_addr {
                Some(addr) => format!("frp tunnel to {addr}:{}", settings.frp.server_port),
                None => "no frp tunnel".to_string(),
            };
            let mut checks = vec![if warnings.is_empty() {
                pass(
                    "config",
                    format!("{} is valid: {mode}, {tunnel}", path.display()),
                )
            } else {
                let list: Vec<String> = warnings.iter().map(ToString::to_string).collect();
                warn(
                    "config",
                    format!(
                        "{} is valid ({mode}, {tunnel}) with warnings: {}",
                        path.display(),
                        list.join("; ")
                    ),
                    "address the warnings",
                )
            }];
            checks.extend(with_config(&settings));
            return checks;
        }
        Err(error) => error,
    };
    vec![fail(
        "config",
        format!("{} cannot be used: {settings}", path.display()),
        "fix the file (utopia-node-agent --check-config --config PATH says the same); the other checks need it",
    )]
}

fn with_config(settings: &Settings) -> Vec<Check> {
    let mut checks = vec![identity(settings), nvml(settings)];
    let docker = docker_info(&settings.docker.binary);
    checks.push(match &docker {
        Ok(info) => pass(
            "docker",
            format!(
                "engine {} reachable through {}",
                info.version,
                settings.docker.binary.display()
            ),
        ),
        Err(why) => fail(
            "docker",
            format!("docker is not reachable: {why}"),
            "start the engine (systemctl start docker) and check that the agent's user may use its socket",
        ),
    });
    checks.push(gpu_mode(settings, docker.as_ref().ok()));
    checks.push(disk(docker.as_ref().ok()));
    if settings.docker.run.block_metadata {
        checks.push(metadata_block(settings));
    }
    if let (Some(mib), Ok(_)) = (settings.docker.run.storage_size_mib, &docker) {
        checks.push(storage_size(settings, mib));
    }
    checks.push(frpc(settings));
    checks.push(frps(settings));
    checks.push(platform(settings));
    checks.push(clock(SystemTime::now()));
    checks
}

fn identity(settings: &Settings) -> Check {
    let path = &settings.identity_file_path;
    match crate::platform::identity::load_node_id(path) {
        Ok(Some(id)) => pass(
            "identity",
            format!("{}: node id {}", path.display(), id.as_str()),
        ),
        Ok(None) if settings.platform.api_url.is_some() => warn(
            "identity",
            format!(
                "{} does not exist: the node is not registered yet",
                path.display()
            ),
            "nothing, if this is the first start: the agent registers and writes it",
        ),
        Ok(None) => pass(
            "identity",
            format!("{} does not exist (standalone: not needed)", path.display()),
        ),
        Err(e) => fail(
            "identity",
            e.to_string(),
            "repair or remove the file (removing it registers the node anew)",
        ),
    }
}

fn nvml(settings: &Settings) -> Check {
    let mut builder = nvml_wrapper::Nvml::builder();
    if let Some(path) = &settings.gpu.nvml_library_path {
        builder.lib_path(path.as_os_str());
    }
    let nvml = match builder.init() {
        Ok(nvml) => nvml,
        Err(e) => {
            return fail(
                "nvml",
                format!("NVML cannot be loaded: {e}"),
                "install the NVIDIA driver (libnvidia-ml.so.1), or set gpu.nvml_library_path",
            )
        }
    };
    let driver = nvml
        .sys_driver_version()
        .unwrap_or_else(|e| format!("unknown ({e})"));
    match nvml.device_count() {
        Ok(0) => warn(
            "nvml",
            format!("driver {driver}, no GPU"),
            "check that the GPUs are seated and visible (nvidia-smi)",
        ),
        Ok(n) => pass("nvml", format!("driver {driver}, {n} GPU(s)")),
        Err(e) => fail(
            "nvml",
            format!("driver {driver}, GPUs cannot be counted: {e}"),
            "run nvidia-smi; a GPU may have fallen off the bus",
        ),
    }
}

/// What `docker info` says that the checks use.
struct DockerInfo {
    version: String,
    root_dir: PathBuf,
    runtimes: Vec<String>,
}

/// Runs `program args` within [`COMMAND_DEADLINE`]; its stdout, or why not.
fn command_output(program: &Path, args: &[&str]) -> Result<String, String> {
    let mut command = Command::new(program);
    command.args(args);
    let (_trigger, never) = shutdown::channel();
    let limits = RunLimits {
        deadline: COMMAND_DEADLINE,
        stdout_cap: 64 * 1024,
        keep: Keep::Head,
        merge_stderr: false,
    };
    let finished = child::run(command, limits, &never).map_err(|e| e.to_string())?;
    if finished.status.success() {
        Ok(finished.stdout.text())
    } else {
        let err = finished.stderr.text();
        Err(if err.is_empty() {
            format!("exited with {}", finished.status)
        } else {
            err
        })
    }
}

/// `docker.block_metadata`: `iptables` runs, docker's `DOCKER-USER` chain exists, and the
/// agent's rules for its network are in place (else the agent's next reconcile puts them).
fn metadata_block(settings: &Settings) -> Check {
    use crate::docker::metadata_block::{comment, CHAINS};
    let comment = comment(&settings.docker.run.network);
    let mut missing = Vec::new();
    for chain in CHAINS {
        let listed = command_output(
            Path::new("iptables"),
            &["-w", "5", "-t", "filter", "-S", chain],
        );
        match listed {
            Err(why) => {
                return fail(
                    "metadata",
                    format!("docker.block_metadata is on but iptables -S {chain} failed: {why}"),
                    "install iptables and let docker manage iptables (its DOCKER-USER chain), or set docker.block_metadata to false",
                )
            }
            Ok(text) => {
                // The nf_tables iptables prints comments in quotes.
                let ours = text
                    .lines()
                    .any(|l| l.replace('"', "").split_whitespace().any(|w| w == comment));
                if !ours {
                    missing.push(chain);
                }
            }
        }
    }
    if missing.is_empty() {
        pass(
            "metadata",
            format!(
                "link-local addresses are blocked for network {} (iptables DOCKER-USER and INPUT)",
                settings.docker.run.network
            ),
        )
    } else {
        warn(
            "metadata",
            format!(
                "no rule with the comment {comment} in {} yet",
                missing.join(", ")
            ),
            "start the agent: its first reconcile inserts them",
        )
    }
}

/// `docker.storage_size`: the engine applies `--storage-opt size=` (a probe container).
fn storage_size(settings: &Settings, mib: u64) -> Check {
    use crate::docker::storage_probe::{probe_settings, StorageSupport};
    match probe_settings(settings, mib) {
        StorageSupport::Supported => pass(
            "storage",
            format!("the engine limits each container's writable layer to {mib} MiB"),
        ),
        StorageSupport::Refused(said) => fail(
            "storage",
            format!("docker.storage_size is set but the engine refuses --storage-opt size=: {said}"),
            "put docker's root on xfs mounted with pquota (overlay2), btrfs or zfs, or set docker.storage_size to \"\"",
        ),
        StorageSupport::Unknown(why) => warn(
            "storage",
            format!("cannot check docker.storage_size: {why}"),
            "fix docker first",
        ),
    }
}

fn docker_info(binary: &Path) -> Result<DockerInfo, String> {
    let text = command_output(
        binary,
        &[
            "info",
            "--format",
            "{{json .ServerVersion}}\n{{json .DockerRootDir}}\n{{json .Runtimes}}",
        ],
    )?;
    let mut lines = text.lines();
    let mut next = || -> Result<serde_json::Value, String> {
        let line = lines.next().ok_or("docker info printed too little")?;
        serde_json::from_str(line).map_err(|e| format!("cannot read docker info ({e}): {line}"))
    };
    let version = next()?.as_str().unwrap_or_default().to_string();
    if version.is_empty() {
        return Err("docker info names no server version (is the engine running?)".into());
    }
    let root_dir = PathBuf::from(next()?.as_str().unwrap_or("/var/lib/docker"));
    let runtimes = next()?
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    Ok(DockerInfo {
        version,
        root_dir,
        runtimes,
    })
}

fn in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// The CDI spec directories docker reads by default.
const CDI_DIRS: &[&str] = &["/etc/cdi", "/var/run/cdi"];

fn cdi_kinds(dirs: &[&str]) -> Vec<String> {
    let mut kinds = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(text) = std::fs::read_to_string(entry.path()) else {
                continue;
            };
            for line in text.lines() {
                let line = line.trim().trim_start_matches('{');
                if let Some(rest) = line
                    .strip_prefix("kind:")
                    .or_else(|| line.strip_prefix("\"kind\":"))
                {
                    let kind = rest
                        .trim()
                        .trim_matches(|c| c == '"' || c == ',' || c == ' ');
                    kinds.push(kind.to_string());
                }
            }
        }
    }
    kinds
}

fn gpu_mode(settings: &Settings, docker: Option<&DockerInfo>) -> Check {
    let run = &settings.docker.run;
    match run.gpu_mode {
        GpuMode::Gpus => {
            let hook = ["nvidia-container-runtime-hook", "nvidia-container-cli"]
                .iter()
                .find_map(|name| in_path(name));
            match hook {
                Some(path) => pass(
                    "gpu_mode",
                    format!("gpus: the NVIDIA container toolkit is installed ({})", path.display()),
                ),
                None => fail(
                    "gpu_mode",
                    "gpus: --gpus needs the NVIDIA container toolkit, and neither nvidia-container-runtime-hook nor nvidia-container-cli is installed",
                    "install nvidia-container-toolkit, or set docker.gpu_mode: cdi with CDI specs",
                ),
            }
        }
        GpuMode::Cdi => {
            let kinds = cdi_kinds(CDI_DIRS);
            if kinds.iter().any(|k| k == &run.cdi_kind) {
                pass(
                    "gpu_mode",
                    format!("cdi: a CDI spec for {} is in {}", run.cdi_kind, CDI_DIRS.join(" or ")),
                )
            } else {
                fail(
                    "gpu_mode",
                    format!(
                        "cdi: no CDI spec for {} in {} (kinds found: {})",
                        run.cdi_kind,
                        CDI_DIRS.join(" or "),
                        if kinds.is_empty() { "none".to_string() } else { kinds.join(", ") }
                    ),
                    "generate one: nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml",
                )
            }
        }
        GpuMode::Env => match (&run.runtime, docker) {
            (Some(runtime), Some(info)) if !info.runtimes.contains(runtime) => fail(
                "gpu_mode",
                format!(
                    "env: docker has no runtime {runtime} (it has: {})",
                    info.runtimes.join(", ")
                ),
                "install nvidia-container-toolkit and run nvidia-ctk runtime configure --runtime=docker, or change docker.runtime",
            ),
            (Some(runtime), Some(_)) => pass("gpu_mode", format!("env: docker has the runtime {runtime}")),
            (Some(runtime), None) => warn(
                "gpu_mode",
                format!("env with runtime {runtime}: cannot be checked while docker is unreachable"),
                "fix docker first",
            ),
            (None, _) => warn(
                "gpu_mode",
                "env without docker.runtime: containers see GPUs only where nvidia is docker's default runtime",
                "set docker.runtime: nvidia, or use docker.gpu_mode: gpus",
            ),
        },
    }
}

fn disk(docker: Option<&DockerInfo>) -> Check {
    let Some(info) = docker else {
        return warn(
            "disk",
            "docker's root is unknown while docker is unreachable",
            "fix docker first",
        );
    };
    let root = &info.root_dir;
    let Ok(c_path) = std::ffi::CString::new(root.as_os_str().as_encoded_bytes()) else {
        return warn(
            "disk",
            format!("{} is not a usable path", root.display()),
            "",
        );
    };
    // SAFETY: statvfs writes into the zeroed struct it is given; the path is NUL-terminated.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return warn(
            "disk",
            format!(
                "cannot read the free space of {}: {}",
                root.display(),
                std::io::Error::last_os_error()
            ),
            "run doctor as root (docker's root is usually readable by root only)",
        );
    }
    let free = stat.f_bavail.saturating_mul(stat.f_frsize);
    let gib = free as f64 / (1024.0 * 1024.0 * 1024.0);
    let message = format!("{:.1} GiB free for docker under {}", gib, root.display());
    if free < DISK_WARN_BYTES / 10 {
        fail(
            "disk",
            message,
            "free space: docker image prune, or grow the filesystem",
        )
    } else if free < DISK_WARN_BYTES {
        warn(
            "disk",
            message,
            "image pulls may fail; consider docker image prune",
        )
    } else {
        pass("disk", message)
    }
}

fn frpc(settings: &Settings) -> Check {
    let path = &settings.frp.frpc_path;
    if settings.frp.server_addr.is_none() {
        return pass(
            "frpc",
            "no tunnel configured (frp.server_addr is empty): frpc not needed",
        );
    }
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Err(e) => {
            return fail(
                "frpc",
                format!("{}: {e}", path.display()),
                "install frpc there, or set frp.frpc_path",
            )
        }
        Ok(meta) if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 => {
            return fail(
                "frpc",
                format!("{} is not an executable file", path.display()),
                format!("chmod +x {}", path.display()),
            )
        }
        Ok(_) => {}
    }
    match command_output(path, &["-v"]) {
        Ok(version) if !version.is_empty() => {
            pass("frpc", format!("{} version {version}", path.display()))
        }
        Ok(_) => warn(
            "frpc",
            format!("{} -v printed nothing", path.display()),
            "check that it is frpc",
        ),
        Err(e) => fail(
            "frpc",
            format!("{} -v failed: {e}", path.display()),
            "check that it is a working frpc binary for this machine",
        ),
    }
}

fn frps(settings: &Settings) -> Check {
    let Some(host) = &settings.frp.server_addr else {
        return pass("frps", "no tunnel configured");
    };
    let target = format!("{host}:{}", settings.frp.server_port);
    let addrs = match target.to_socket_addrs() {
        Ok(addrs) => addrs.collect::<Vec<_>>(),
        Err(e) => {
            return fail(
                "frps",
                format!("{target}: cannot resolve: {e}"),
                "check frp.server_addr and DNS",
            )
        }
    };
    let mut last = String::from("no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(_) => return pass("frps", format!("{target} accepts TCP connections ({addr})")),
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    fail(
        "frps",
        format!("{target} is not reachable: {last}"),
        "check frp.server_addr/server_port and the firewall between this host and frps",
    )
}

fn platform(settings: &Settings) -> Check {
    let Some(api_url) = &settings.platform.api_url else {
        return pass("platform", "standalone: no platform to reach");
    };
    let client =
        match crate::platform::client::PlatformClient::new(api_url, &settings.platform, |name| {
            std::env::var(name).ok()
        }) {
            Ok(client) => client,
            Err(e) => return fail("platform", e.to_string(), "fix central_platform.ca_file"),
        };
    use crate::platform::client::RequestError;
    // Any HTTP answer proves the way there (DNS, TCP, proxy, TLS); the base URL is no endpoint.
    match client.post_json("/", &serde_json::json!({}), |_| Ok(())) {
        Ok(()) | Err(RequestError::InvalidResponse { .. }) => pass("platform", format!("{api_url} answers")),
        Err(RequestError::Status { status, .. }) => pass(
            "platform",
            format!("{api_url} answers (HTTP {status} for its base URL, as expected)"),
        ),
        Err(RequestError::Transport { message, .. }) => fail(
            "platform",
            format!("{api_url} is not reachable: {message}"),
            "check central_platform.api_url, DNS, the proxy variables, and for TLS errors central_platform.ca_file",
        ),
    }
}

/// A clock before this (2025-01-01) is certainly wrong.
const EARLIEST_SANE: u64 = 1_735_689_600;

fn clock(now: SystemTime) -> Check {
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let text = crate::timefmt::rfc3339(now);
    if secs < EARLIEST_SANE {
        return fail(
            "clock",
            format!("the clock says {text}"),
            "set the time and enable NTP (timedatectl set-ntp true): TLS certificates fail with a wrong clock",
        );
    }
    match std::fs::read_to_string("/run/systemd/timesync/synchronized").map(|_| ()) {
        Ok(()) => pass("clock", format!("{text}, synchronised (systemd-timesyncd)")),
        Err(_) => pass(
            "clock",
            format!("{text} (plausible; synchronisation not checked)"),
        ),
    }
}

/// The report as text: one line per check, then a summary.
pub fn render_text(checks: &[Check]) -> String {
    let mut out = String::new();
    for c in checks {
        let tag = match c.status {
            Outcome::Pass => "PASS",
            Outcome::Warn => "WARN",
            Outcome::Fail => "FAIL",
        };
        out.push_str(&format!("{tag} {:<9} {}", c.check, c.message));
        if !c.action.is_empty() {
            out.push_str(&format!(" -> {}", c.action));
        }
        out.push('\n');
    }
    let count = |o: Outcome| checks.iter().filter(|c| c.status == o).count();
    out.push_str(&format!(
        "{} passed, {} warned, {} failed\n",
        count(Outcome::Pass),
        count(Outcome::Warn),
        count(Outcome::Fail)
    ));
    out
}

/// True when no check failed.
pub fn healthy(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.status != Outcome::Fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrong_clock_fails() {
        assert_eq!(clock(UNIX_EPOCH).status, Outcome::Fail);
        assert_eq!(clock(SystemTime::now()).status, Outcome::Pass);
    }

    #[test]
    fn cdi_kinds_are_read_from_yaml_and_json_specs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.yaml"),
            "cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices: []\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("b.json"),
            "{\"cdiVersion\":\"0.5.0\",\n\"kind\": \"example.com/fpga\",\n\"devices\":[]}",
        )
        .unwrap();
        let dirs = [dir.path().to_str().unwrap()];
        let mut kinds = cdi_kinds(&dirs);
        kinds.sort();
        assert_eq!(kinds, ["example.com/fpga", "nvidia.com/gpu"]);
    }

    #[test]
    fn text_has_one_line_per_check_and_a_summary() {
        let checks = vec![pass("config", "ok"), fail("docker", "down", "start it")];
        assert_eq!(
            render_text(&checks),
            "PASS config    ok\nFAIL docker    down -> start it\n1 passed, 0 warned, 1 failed\n"
        );
        assert!(!healthy(&checks));
    }
}
