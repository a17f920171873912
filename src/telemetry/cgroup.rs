//! Which docker container a process belongs to, from `/proc/<pid>/cgroup`: cgroup v1 and v2,
//! docker's `cgroupfs` driver (`/docker/<id>`) and its `systemd` driver
//! (`/system.slice/docker-<id>.scope`). Plain text in, id out: no docker call.

use std::path::Path;

/// The 64-hex-digit docker container id in a `/proc/<pid>/cgroup` file's text, if the process
/// is in a docker container.
pub fn container_id(cgroup: &str) -> Option<String> {
    cgroup.lines().find_map(|line| {
        // `hierarchy-id:controllers:path`; the path may itself hold ':' (never docker's).
        let path = line.splitn(3, ':').nth(2)?;
        path.split('/').find_map(segment_id)
    })
}

/// `<id>`, `docker-<id>.scope` (systemd driver) → the id.
fn segment_id(segment: &str) -> Option<String> {
    let id = segment
        .strip_prefix("docker-")
        .and_then(|s| s.strip_suffix(".scope"))
        .unwrap_or(segment);
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
}

/// The docker container process `pid` runs in, read from `<proc>/<pid>/cgroup`; `None` for a
/// host process or one that has exited.
pub fn container_of_pid(proc_root: &Path, pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup")).ok()?;
    container_id(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0bcbff5e82f8c083000e345c46cec4f44176f3c54bf9925e214355b06461cf8b";

    #[test]
    fn cgroup_v1_cgroupfs() {
        let text = format!(
            "12:pids:/docker/{ID}\n4:memory:/docker/{ID}\n1:name=systemd:/docker/{ID}\n0::/\n"
        );
        assert_eq!(container_id(&text).as_deref(), Some(ID));
    }

    #[test]
    fn cgroup_v1_systemd_driver() {
        let text = format!(
            "11:cpu,cpuacct:/system.slice/docker-{ID}.scope\n1:name=systemd:/system.slice/docker-{ID}.scope\n"
        );
        assert_eq!(container_id(&text).as_deref(), Some(ID));
    }

    #[test]
    fn cgroup_v2_both_drivers() {
        assert_eq!(
            container_id(&format!("0::/system.slice/docker-{ID}.scope\n")).as_deref(),
            Some(ID)
        );
        assert_eq!(
            container_id(&format!("0::/docker/{ID}\n")).as_deref(),
            Some(ID)
        );
        // Docker in a nested hierarchy (a node that is itself a container).
        assert_eq!(
            container_id(&format!("0::/kubepods/besteffort/pod1/docker/{ID}\n")).as_deref(),
            Some(ID)
        );
    }

    #[test]
    fn host_processes_have_none() {
        for text in [
            "0::/\n",
            "0::/user.slice/user-0.slice/session-3.scope\n",
            "0::/system.slice/utopia-node-agent.service\n",
            "4:memory:/process_api/5b3b8febbf739b7970d589a29ac98d3b\n0::/\n",
            "0::/system.slice/docker-short.scope\n",
            "garbage",
            "",
        ] {
            assert_eq!(container_id(text), None, "{text}");
        }
    }

    #[test]
    fn reads_proc() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("77")).unwrap();
        std::fs::write(dir.path().join("77/cgroup"), format!("0::/docker/{ID}\n")).unwrap();
        assert_eq!(container_of_pid(dir.path(), 77).as_deref(), Some(ID));
        assert_eq!(container_of_pid(dir.path(), 78), None);
        // This test process runs on the host (or in a container: either way it answers).
        let _ = container_of_pid(Path::new("/proc"), std::process::id());
    }
}
