//! `docker.storage_size`: whether this engine applies `--storage-opt size=` (a container's
//! writable layer limited, so a renter cannot fill docker's disk). Only some storage drivers
//! do (overlay2 on xfs mounted with `pquota`, btrfs, zfs, devicemapper); the others refuse every
//! `docker run` that asks. The start checks it once with a probe container: an empty image is
//! imported from a 1 KiB tar (no registry, no pull), a container created from it with the
//! option (never started), then both removed.

use crate::docker::cli::{DockerCli, DockerError};
use std::path::PathBuf;
use std::time::Duration;

/// What the probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageSupport {
    /// The engine created a container with the option.
    Supported,
    /// The engine refused the option: docker's message.
    Refused(String),
    /// The probe could not tell (docker unreachable, a step failed): why.
    Unknown(String),
}

/// [`probe`] with the docker CLI of `settings` (binary, `DOCKER_CONFIG`, command deadline).
pub fn probe_settings(settings: &crate::config::Settings, size_mib: u64) -> StorageSupport {
    use crate::docker::cli::DockerTimeouts;
    let docker = &settings.docker;
    // Never fired: the probe's commands end by themselves, each within its deadline.
    let (_trigger, shutdown) = crate::shutdown::channel();
    let timeouts = DockerTimeouts::new(
        docker.command_timeout,
        docker.pull_timeout,
        docker.stop_timeout,
    );
    let cli = DockerCli::new(docker.binary.clone(), timeouts, shutdown)
        .with_config_dir(docker.config_dir.clone());
    probe(&cli, size_mib, docker.command_timeout)
}

/// An empty tar archive: two zero blocks.
const EMPTY_TAR: [u8; 1024] = [0; 1024];

/// Creates (and removes) a probe container with `--storage-opt size=<size_mib>m`, each docker
/// command bounded by `deadline`.
pub fn probe(cli: &DockerCli, size_mib: u64, deadline: Duration) -> StorageSupport {
    let unique = format!("{}-{:08x}", std::process::id(), fastrand::u32(..));
    let image = format!("utopia-storage-probe:{unique}");
    let container = format!("utopia-storage-probe-{unique}");
    let dir = std::env::temp_dir().join(format!("utopia-storage-probe-{unique}"));
    let tar = dir.join("empty.tar");
    let made = {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .and_then(|()| std::fs::write(&tar, EMPTY_TAR))
    };
    let result = match made {
        Err(e) => StorageSupport::Unknown(format!("cannot write {}: {e}", tar.display())),
        Ok(()) => probe_with(cli, &tar, &image, &container, size_mib, deadline),
    };
    let _ = std::fs::remove_file(&tar);
    let _ = std::fs::remove_dir(&dir);
    result
}

fn probe_with(
    cli: &DockerCli,
    tar: &std::path::Path,
    image: &str,
    container: &str,
    size_mib: u64,
    deadline: Duration,
) -> StorageSupport {
    let run = |args: &[&str]| {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        cli.run(&args, deadline, 4096)
    };
    let tar: PathBuf = tar.to_path_buf();
    if let Err(e) = run(&["import", &tar.to_string_lossy(), image]) {
        return StorageSupport::Unknown(format!("cannot import the probe image: {e}"));
    }
    let size = format!("size={size_mib}m");
    let created = run(&[
        "create",
        "--pull=never",
        "--network",
        "none",
        "--storage-opt",
        &size,
        "--name",
        container,
        "--",
        image,
        "/probe",
    ]);
    let result = match created {
        Ok(_) => StorageSupport::Supported,
        Err(e @ DockerError::Failed { .. }) if is_storage_refusal(e.stderr()) => {
            StorageSupport::Refused(one_line(e.stderr()))
        }
        Err(e) => StorageSupport::Unknown(format!("cannot create the probe container: {e}")),
    };
    match run(&["rm", "--force", container]) {
        Err(e) if !e.is_no_such_container() => {
            log::warn!("cannot remove the storage probe container {container}: {e}")
        }
        _ => {}
    }
    if let Err(e) = run(&["image", "rm", "--force", image]) {
        log::warn!("cannot remove the storage probe image {image}: {e}");
    }
    result
}

/// Whether docker's message is about the storage option (each driver words it its own way:
/// `--storage-opt is not supported`, `... supported only for overlay over xfs with 'pquota'
/// mount option`, `Storage option not supported`, `Unknown option size`).
pub fn is_storage_refusal(stderr: &str) -> bool {
    let lower = stderr.to_ascii_lowercase();
    lower.contains("storage") || lower.contains("quota") || lower.contains("option")
}

/// docker's message on one line, at most 300 characters.
fn one_line(text: &str) -> String {
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    joined.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drivers_refusals_are_told_from_other_failures() {
        for refusal in [
            "Error response from daemon: --storage-opt is not supported",
            "Error response from daemon: --storage-opt is supported only for overlay over xfs \
             with 'pquota' mount option",
            "Error response from daemon: Storage option not supported",
            "Error response from daemon: Unknown option size",
        ] {
            assert!(is_storage_refusal(refusal), "{refusal}");
        }
        assert!(!is_storage_refusal(
            "Cannot connect to the Docker daemon at unix:///var/run/docker.sock"
        ));
        assert_eq!(one_line("a\n  b\tc\n"), "a b c");
    }
}
