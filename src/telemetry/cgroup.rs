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

/// A container's resource counters, read from its cgroup (v1 or v2) and network namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    /// CPU time used since the cgroup was created, in nanoseconds.
    pub cpu_ns: Option<u64>,
    /// Memory the cgroup is charged for, in bytes.
    pub memory_bytes: Option<u64>,
    /// Its memory limit; `None` when unlimited (or unknown).
    pub memory_limit_bytes: Option<u64>,
    /// Bytes received and sent on every interface but `lo` of its network namespace; `None`
    /// when it shares the host's.
    pub network: Option<(u64, u64)>,
}

/// Limits at or above this (v1's "no limit" is a page-rounded `i64::MAX`) mean unlimited.
const UNLIMITED: u64 = 1 << 60;

/// Where the cgroup files are: `/proc` and `/sys/fs/cgroup`, or test directories.
pub struct CgroupRoots<'a> {
    pub proc_root: &'a Path,
    pub sys_root: &'a Path,
}

impl CgroupRoots<'_> {
    /// Reads the counters of the cgroup process `pid` is in (a container's init process);
    /// `None` when the process is gone.
    pub fn counters(&self, pid: u32) -> Option<Counters> {
        let proc_dir = self.proc_root.join(pid.to_string());
        let text = std::fs::read_to_string(proc_dir.join("cgroup")).ok()?;
        let read = |path: std::path::PathBuf| std::fs::read_to_string(path).ok();
        let number = |text: Option<String>| text.and_then(|t| t.trim().parse::<u64>().ok());
        let mut counters = Counters::default();
        let v1 = |controller: &str| v1_path(&text, controller);
        if let Some(path) = v1("cpuacct") {
            counters.cpu_ns = ["cpuacct", "cpu,cpuacct", "cpuacct,cpu"]
                .iter()
                .find_map(|dir| number(read(self.join(dir, &path, "cpuacct.usage"))));
        }
        if let Some(path) = v1("memory") {
            counters.memory_bytes =
                number(read(self.join("memory", &path, "memory.usage_in_bytes")));
            counters.memory_limit_bytes =
                number(read(self.join("memory", &path, "memory.limit_in_bytes")))
                    .filter(|l| *l < UNLIMITED);
        }
        if let Some(path) = v2_path(&text) {
            let dir = |file: &str| self.join("", &path, file);
            if counters.cpu_ns.is_none() {
                counters.cpu_ns = read(dir("cpu.stat")).and_then(|stat| {
                    stat.lines()
                        .find_map(|l| l.strip_prefix("usage_usec "))
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(|usec| usec.saturating_mul(1000))
                });
            }
            if counters.memory_bytes.is_none() {
                counters.memory_bytes = number(read(dir("memory.current")));
                counters.memory_limit_bytes =
                    number(read(dir("memory.max"))).filter(|l| *l < UNLIMITED);
            }
        }
        // A container sharing the host's network namespace would be charged the host's
        // traffic: no figure rather than a wrong one.
        let netns = |dir: &Path| std::fs::read_link(dir.join("ns/net")).ok();
        let host_network =
            netns(&proc_dir).is_some_and(|ns| Some(ns) == netns(&self.proc_root.join("self")));
        if !host_network {
            counters.network = read(proc_dir.join("net/dev")).and_then(|dev| network_bytes(&dev));
        }
        Some(counters)
    }

    fn join(&self, controller: &str, cgroup: &str, file: &str) -> std::path::PathBuf {
        let mut path = self.sys_root.to_path_buf();
        if !controller.is_empty() {
            path.push(controller);
        }
        path.push(cgroup.trim_start_matches('/'));
        path.push(file);
        path
    }
}

/// The v1 path of `controller` (`4:memory:/docker/<id>`, `3:cpu,cpuacct:/...`).
fn v1_path(cgroup: &str, controller: &str) -> Option<String> {
    cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let _id = parts.next()?;
        let controllers = parts.next()?;
        let path = parts.next()?;
        controllers
            .split(',')
            .any(|c| c == controller)
            .then(|| path.to_string())
    })
}

/// The v2 (unified) path: the `0::<path>` line.
fn v2_path(cgroup: &str) -> Option<String> {
    cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::to_string)
}

/// Received and sent bytes summed over every interface but `lo` (`/proc/<pid>/net/dev`).
pub fn network_bytes(dev: &str) -> Option<(u64, u64)> {
    let mut total = None;
    for line in dev.lines().skip(2) {
        let Some((name, fields)) = line.split_once(':') else {
            continue;
        };
        if name.trim() == "lo" {
            continue;
        }
        let fields: Vec<u64> = fields
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        if let (Some(rx), Some(tx)) = (fields.first(), fields.get(8)) {
            let (r, t) = total.unwrap_or((0, 0));
            total = Some((r + rx, t + tx));
        }
    }
    total
}

#[cfg(test)]
mod counter_tests {
    use super::*;

    const ID: &str = "0bcbff5e82f8c083000e345c46cec4f44176f3c54bf9925e214355b06461cf8b";
    const NET_DEV: &str = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     500       5    0    0    0     0          0         0      500       5    0    0    0     0       0          0
  eth0:    1234      10    0    0    0     0          0         0     4321      12    0    0    0     0       0          0
";

    fn write(root: &Path, path: &str, text: &str) {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn cgroup_v1_counters() {
        let dir = tempfile::tempdir().unwrap();
        let (proc_root, sys_root) = (dir.path().join("proc"), dir.path().join("sys"));
        write(
            &proc_root,
            "9/cgroup",
            &format!("4:memory:/docker/{ID}\n2:cpu,cpuacct:/docker/{ID}\n0::/\n"),
        );
        write(&proc_root, "9/net/dev", NET_DEV);
        write(
            &sys_root,
            &format!("cpu,cpuacct/docker/{ID}/cpuacct.usage"),
            "5000000000\n",
        );
        write(
            &sys_root,
            &format!("memory/docker/{ID}/memory.usage_in_bytes"),
            "1048576\n",
        );
        write(
            &sys_root,
            &format!("memory/docker/{ID}/memory.limit_in_bytes"),
            "9223372036854771712\n",
        );
        let roots = CgroupRoots {
            proc_root: &proc_root,
            sys_root: &sys_root,
        };
        assert_eq!(
            roots.counters(9),
            Some(Counters {
                cpu_ns: Some(5_000_000_000),
                memory_bytes: Some(1_048_576),
                memory_limit_bytes: None,
                network: Some((1234, 4321)),
            })
        );
        assert_eq!(roots.counters(10), None, "a process that is gone");
        // In the host's network namespace (the same `ns/net` as the agent): no network figure.
        std::fs::create_dir_all(proc_root.join("9/ns")).unwrap();
        std::fs::create_dir_all(proc_root.join("self/ns")).unwrap();
        std::os::unix::fs::symlink("net:[4026531992]", proc_root.join("9/ns/net")).unwrap();
        std::os::unix::fs::symlink("net:[4026531992]", proc_root.join("self/ns/net")).unwrap();
        assert_eq!(roots.counters(9).unwrap().network, None);
    }

    #[test]
    fn cgroup_v2_counters_systemd_driver() {
        let dir = tempfile::tempdir().unwrap();
        let (proc_root, sys_root) = (dir.path().join("proc"), dir.path().join("sys"));
        let scope = format!("system.slice/docker-{ID}.scope");
        write(&proc_root, "9/cgroup", &format!("0::/{scope}\n"));
        write(
            &sys_root,
            &format!("{scope}/cpu.stat"),
            "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n",
        );
        write(&sys_root, &format!("{scope}/memory.current"), "4096\n");
        write(&sys_root, &format!("{scope}/memory.max"), "268435456\n");
        let roots = CgroupRoots {
            proc_root: &proc_root,
            sys_root: &sys_root,
        };
        let counters = roots.counters(9).unwrap();
        assert_eq!(counters.cpu_ns, Some(2_500_000_000));
        assert_eq!(counters.memory_bytes, Some(4096));
        assert_eq!(counters.memory_limit_bytes, Some(268_435_456));
        assert_eq!(counters.network, None, "no net/dev: null, not an error");
        write(&sys_root, &format!("{scope}/memory.max"), "max\n");
        assert_eq!(roots.counters(9).unwrap().memory_limit_bytes, None);
    }
}
