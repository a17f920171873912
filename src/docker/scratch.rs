//! Per-process scratch directories in the temp dir that hold secrets for one docker command
//! (a create's env file, a pull's registry credentials), named `<prefix><pid>-...`: what an
//! agent killed mid-command (SIGKILL, power loss) left behind is removed at the next start.

use std::path::Path;

/// Removes the directories in `root` named `<prefix><pid>-...` whose agent (`pid`) is gone,
/// with the one file `file` each holds. Only real directories of this user are touched (not a
/// link, not another user's: in a sticky /tmp nobody else can swap one for a link to somewhere
/// that has such a file); those of live processes (this agent, another agent on the host) are
/// left alone. `what` names the contents in the log.
pub(super) fn remove_stale_dirs(root: &Path, prefix: &str, file: &str, what: &str) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists();
        use std::os::unix::fs::MetadataExt;
        // SAFETY: geteuid has no preconditions.
        let ours = std::fs::symlink_metadata(entry.path())
            .is_ok_and(|m| m.is_dir() && m.uid() == unsafe { libc::geteuid() });
        if alive || !ours {
            continue;
        }
        let dir = entry.path();
        let _ = std::fs::remove_file(dir.join(file));
        match std::fs::remove_dir(&dir) {
            Ok(()) => log::info!("removed a crashed agent's {what} {}", dir.display()),
            Err(e) => log::warn!(
                "cannot remove a crashed agent's {what} {}: {e}",
                dir.display()
            ),
        }
    }
}
