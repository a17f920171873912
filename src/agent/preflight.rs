//! The checks of the files and programs the config names, before anything starts: the one code
//! path that both the start ([`Agent::start`](super::Agent::start)) and `--check-config` run, so
//! that a config `--check-config` passes is one the agent starts with (the service files run it
//! before each start).
//!
//! A problem the start refuses (a damaged identity file, a CA file without a certificate) is an
//! error; one the agent lives with and retries (frpc not installed yet, an identity directory
//! not writable yet, no NVML library, no docker) is a warning, printed by `--check-config` and
//! logged at the start.

use crate::config::Settings;
use crate::platform::{self, client};
use std::ffi::CString;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// What the checks prepared for the start, and what the operator should be told.
pub struct Preflight {
    /// The platform component, its identity read and its client built (`None`: standalone).
    pub platform: Option<platform::Prepared>,
    pub warnings: Vec<String>,
}

/// Every problem that stops the start, each naming the config key and the file.
#[derive(Debug)]
pub struct PreflightError {
    pub problems: Vec<String>,
}

impl fmt::Display for PreflightError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.problems.as_slice() {
            [one] => f.write_str(one),
            many => {
                write!(f, "{} problems:", many.len())?;
                for problem in many {
                    write!(f, "\n  - {problem}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for PreflightError {}

/// Runs every check; all problems are reported at once, not only the first.
pub fn preflight(settings: &Settings) -> Result<Preflight, PreflightError> {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();

    // The platform: the identity file (a damaged one stops the agent: it must never register a
    // second node) and the HTTP client with `ca_file`.
    let platform = match platform::prepare(settings) {
        Ok(prepared) => prepared,
        Err(e) => {
            problems.push(e.to_string());
            None
        }
    };
    if let Some(prepared) = &platform {
        if prepared.node_id().is_none() {
            if let Err(why) = dir_usable(parent_of(&settings.identity_file_path)) {
                warnings.push(format!(
                    "identity_file_path {}: {why}; the node will not register until the node \
                     id it gets can be kept there (retried with backoff)",
                    settings.identity_file_path.display()
                ));
            }
        }
    } else if settings.platform.api_url.is_none() && settings.platform.ca_file.is_some() {
        warnings.push(
            "central_platform.ca_file is not used: central_platform.api_url is empty (the \
             agent runs standalone)"
                .to_string(),
        );
    }

    // The tunnel: frpc refuses a CA file it cannot read, forever; the rest the frp thread
    // reports and retries.
    if settings.frp.server_addr.is_some() {
        if let Some(ca) = &settings.frp.tls_ca_file {
            if let Err(e) = client::load_pem_certificates("frp.tls_ca_file", ca) {
                problems.push(e.to_string());
            }
        }
        if let Err(why) = executable(&settings.frp.frpc_path) {
            warnings.push(format!(
                "frp.frpc_path {}: {why}; the tunnel stays down until frpc is there (retried)",
                settings.frp.frpc_path.display()
            ));
        }
        if let Err(why) = dir_usable(&settings.frp.work_dir) {
            warnings.push(format!(
                "frp.work_dir {}: {why}; the tunnel stays down until frpc's config can be \
                 written there (retried)",
                settings.frp.work_dir.display()
            ));
        }
    }

    if let Some(library) = &settings.gpu.nvml_library_path {
        if let Err(why) = regular_file(library) {
            warnings.push(format!(
                "gpu.nvml_library_path {}: {why}; GPUs are unavailable until it loads (retried \
                 every gpu.init_retry_secs)",
                library.display()
            ));
        }
    }

    // The API's address: one this host does not have, or a port this user may not take, fails
    // every start; one in use may be this very agent (a check while it runs).
    let listen = settings.api.listen;
    match std::net::TcpListener::bind(listen) {
        Ok(probe) => drop(probe),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => warnings.push(format!(
            "agent_api.listen_address {listen} is in use (by this agent, if it runs; another \
             program would make the start fail)"
        )),
        Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => problems.push(format!(
            "agent_api.listen_address {listen}: {} is not an address of this host",
            listen.ip()
        )),
        Err(e) => problems.push(format!(
            "agent_api.listen_address {listen}: cannot listen: {e}"
        )),
    }

    match find_program(&settings.docker.binary) {
        Ok(_) => {
            if let Some(mib) = settings.docker.run.storage_size_mib {
                check_storage_size(settings, mib, &mut problems, &mut warnings);
            }
        }
        Err(why) => warnings.push(format!(
            "docker.binary {}: {why}; container requests answer 503 until docker can be run",
            settings.docker.binary.display()
        )),
    }

    if problems.is_empty() {
        Ok(Preflight { platform, warnings })
    } else {
        Err(PreflightError { problems })
    }
}

/// `docker.storage_size`: a probe container shows whether the engine applies
/// `--storage-opt size=`; one that refuses it would refuse every create, so the start is
/// refused instead. An engine that cannot be asked now is a warning.
fn check_storage_size(
    settings: &Settings,
    mib: u64,
    problems: &mut Vec<String>,
    warnings: &mut Vec<String>,
) {
    use crate::docker::storage_probe::StorageSupport;
    match crate::docker::storage_probe::probe_settings(settings, mib) {
        StorageSupport::Supported => {}
        StorageSupport::Refused(said) => problems.push(format!(
            "docker.storage_size {mib}m: this docker engine refuses --storage-opt size= (its \
             storage driver cannot limit a container's writable layer: overlay2 needs xfs \
             mounted with pquota; btrfs, zfs and devicemapper can), so every create would \
             fail; docker said: {said}. Set docker.storage_size to \"\" or move docker's root \
             to such a filesystem"
        )),
        StorageSupport::Unknown(why) => warnings.push(format!(
            "docker.storage_size {mib}m: cannot check that the engine applies --storage-opt \
             size= ({why}); if it does not, every create fails"
        )),
    }
}

/// The directory a file is created in (`.` for a bare name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Whether files can be created in `dir`, or `dir` can be created (in its nearest existing
/// ancestor); nothing is created.
fn dir_usable(dir: &Path) -> Result<(), String> {
    let mut probe = dir;
    loop {
        match std::fs::metadata(probe) {
            Ok(meta) if meta.is_dir() => {
                return if writable(probe) {
                    Ok(())
                } else if probe == dir {
                    Err(format!("{} is not writable by this user", probe.display()))
                } else {
                    Err(format!(
                        "{} is missing and cannot be created: {} is not writable by this user",
                        dir.display(),
                        probe.display()
                    ))
                };
            }
            Ok(_) => {
                return Err(if probe == dir {
                    format!("{} is not a directory", probe.display())
                } else {
                    format!(
                        "{} cannot be created: {} is not a directory",
                        dir.display(),
                        probe.display()
                    )
                })
            }
            // Missing, or below a file: what is above decides.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                match probe.parent() {
                    Some(parent) if !parent.as_os_str().is_empty() => probe = parent,
                    _ => return Ok(()),
                }
            }
            Err(e) => return Err(format!("cannot look at {}: {e}", probe.display())),
        }
    }
}

/// access(2) with W_OK|X_OK: the kernel's answer for this process (root, read-only mounts).
fn writable(dir: &Path) -> bool {
    let Ok(c_path) = CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: access(2) only reads the NUL-terminated path we own.
    unsafe { libc::access(c_path.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

fn regular_file(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(meta) if meta.is_dir() => Err("it is a directory, not a file".to_string()),
        Ok(_) => Err("it is not a regular file".to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err("no such file".to_string()),
        Err(e) => Err(e.to_string()),
    }
}

fn executable(path: &Path) -> Result<(), String> {
    regular_file(path)?;
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode())
        .unwrap_or(0);
    if mode & 0o111 == 0 {
        return Err("it is not executable".to_string());
    }
    Ok(())
}

/// Where `program` is: itself when it has a `/`, else the first executable on `PATH`.
fn find_program(program: &Path) -> Result<PathBuf, String> {
    if program.as_os_str().as_bytes().contains(&b'/') {
        return executable(program).map(|()| program.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| executable(candidate).is_ok())
        .ok_or_else(|| "not found on PATH".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_is_usable_when_it_or_its_nearest_ancestor_is_writable() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(dir_usable(dir.path()), Ok(()));
        assert_eq!(dir_usable(&dir.path().join("a/b/c")), Ok(()));
        assert!(!dir.path().join("a").exists(), "nothing is created");
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let e = dir_usable(&file).unwrap_err();
        assert!(e.contains("not a directory"), "{e}");
        let e = dir_usable(&file.join("sub")).unwrap_err();
        assert!(e.contains("cannot be created") && e.contains("file"), "{e}");
    }

    #[test]
    fn programs_are_found_on_path_or_by_their_path() {
        assert!(find_program(Path::new("sh")).is_ok());
        assert!(find_program(Path::new("/bin/sh")).is_ok());
        assert!(find_program(Path::new("no-such-program-xyz")).is_err());
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("frpc");
        std::fs::write(&plain, "#!/bin/sh\n").unwrap();
        assert_eq!(executable(&plain), Err("it is not executable".to_string()));
        assert_eq!(
            executable(dir.path()),
            Err("it is a directory, not a file".to_string())
        );
    }

    #[test]
    fn every_problem_is_listed() {
        let one = PreflightError {
            problems: vec!["a".into()],
        };
        assert_eq!(one.to_string(), "a");
        let two = PreflightError {
            problems: vec!["a".into(), "b".into()],
        };
        assert_eq!(two.to_string(), "2 problems:\n  - a\n  - b");
    }
}
