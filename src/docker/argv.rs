//! The argv of `docker run`, built from a validated [`CreateSpec`] and the GPUs the ledger
//! assigned.
//!
//! Nothing from a request is ever placed where docker could read it as a flag: every request
//! value in the argv is either the argument of a flag we chose (`--name utopia-<claim>`), a
//! checked number, or comes after the `--` that ends docker's options (the image and command).
//! The user's environment goes through an `--env-file` (mode 0600, removed right after) rather
//! than the argv, where any local user could read it in `/proc`.

use crate::config::{GpuMode, RunSettings};
use crate::docker::labels::{self, ContainerLabels};
use crate::docker::spec::{join_ids, CreateSpec};
use std::net::IpAddr;
use std::path::Path;

/// The value every managed container gets for each NVIDIA container toolkit variable that can
/// hand it host devices beyond its GPUs (each of [`DEVICE_GRANTING_VARIABLES`]), whatever its
/// image's own `ENV` says: `-e` wins over the image. The feature switches get `disabled`; the
/// device lists (MIG management, IMEX channels) get an empty value, which every toolkit version
/// reads as "none" (a non-empty MIG list would even make it refuse an unprivileged container).
///
/// [`DEVICE_GRANTING_VARIABLES`]: crate::docker::spec::DEVICE_GRANTING_VARIABLES
pub const FORCED_TOOLKIT_VARIABLES: &[(&str, &str)] = &[
    ("NVIDIA_MIG_CONFIG_DEVICES", ""),
    ("NVIDIA_MIG_MONITOR_DEVICES", ""),
    ("NVIDIA_IMEX_CHANNELS", ""),
    ("NVIDIA_GDS", "disabled"),
    ("NVIDIA_MOFED", "disabled"),
    ("NVIDIA_NVSWITCH", "disabled"),
    ("NVIDIA_GDRCOPY", "disabled"),
];

/// What the labels of the container `docker run` makes for `spec` record (claim, GPUs, ports).
pub fn run_labels(spec: &CreateSpec, gpus: &[u32], gpu_uuids: &[String]) -> ContainerLabels {
    ContainerLabels {
        claim_id: spec.claim_id.clone(),
        gpu_ids: gpus.to_vec(),
        gpu_uuids: gpu_uuids.to_vec(),
        ports: spec.ports.clone(),
    }
}

/// The argv (after the binary) of `docker run` for `spec` with the GPUs the ledger assigned.
pub fn run_args(
    spec: &CreateSpec,
    gpus: &[u32],
    gpu_uuids: &[String],
    settings: &RunSettings,
    env_file: Option<&Path>,
) -> Vec<String> {
    // `--pull=never`: a missing image is pulled by the agent itself (its deadline, credentials
    // and progress), never implicitly by `docker run`.
    let mut args: Vec<String> = vec!["run".into(), "--detach".into(), "--pull=never".into()];
    let mut flag = |name: &str, value: String| {
        args.push(name.to_string());
        args.push(value);
    };
    flag("--name", spec.container_name());
    flag("--label", settings.managed_label.to_string());
    // The agent's bridge without inter-container traffic: renters cannot reach each other.
    flag("--network", settings.network.clone());
    for label in labels::encode(&run_labels(spec, gpus, gpu_uuids)) {
        flag("--label", label);
    }

    if gpus.is_empty() {
        // Where nvidia is the default runtime, a container without this sees every GPU.
        flag("--env", "NVIDIA_VISIBLE_DEVICES=void".into());
    } else {
        match settings.gpu_mode {
            // docker parses the value as CSV: without the inner quotes `device=0,1` would be
            // read as two fields and rejected.
            GpuMode::Gpus => flag("--gpus", format!("\"device={}\"", join_ids(gpus))),
            GpuMode::Cdi => {
                for gpu in gpus {
                    flag("--device", format!("{}={gpu}", settings.cdi_kind));
                }
                // CDI adds the devices. Where nvidia is the default runtime, the image's own
                // NVIDIA_VISIBLE_DEVICES (`all` in every CUDA image) would make it add every
                // GPU on top: switch that path off.
                flag("--env", "NVIDIA_VISIBLE_DEVICES=void".into());
            }
            GpuMode::Env => {
                if let Some(runtime) = &settings.runtime {
                    flag("--runtime", runtime.clone());
                }
                flag(
                    "--env",
                    format!("NVIDIA_VISIBLE_DEVICES={}", join_ids(gpus)),
                );
            }
        }
    }
    // An image may set these in its own environment (`NVIDIA_MOFED=enabled`,
    // `NVIDIA_IMEX_CHANNELS=all`) to be given host devices (/dev/infiniband, NVSwitch,
    // nvidia-fs, gdrdrv, IMEX channels, MIG management); `-e` overrides it.
    for (variable, value) in FORCED_TOOLKIT_VARIABLES {
        flag("--env", format!("{variable}={value}"));
    }
    if let Some(path) = env_file {
        flag("--env-file", path.to_string_lossy().into_owned());
    }
    for port in &spec.ports {
        flag(
            "--publish",
            format!(
                "{}:{}:{}/{}",
                publish_host(settings.publish_address),
                port.host_port,
                port.container_port,
                port.protocol.as_str()
            ),
        );
    }
    if let Some(mb) = spec.memory_mb {
        flag("--memory", format!("{mb}m"));
        // Memory and swap together no more than the memory: no swap, which would let a
        // container page the host to a crawl instead of meeting its limit.
        flag("--memory-swap", format!("{mb}m"));
    }
    if let Some(mib) = settings.storage_size_mib {
        // The writable layer's size (checked at start: the engine's storage driver applies it).
        flag("--storage-opt", format!("size={mib}m"));
    }
    if let Some(cpus) = spec.cpus {
        flag("--cpus", format!("{cpus}"));
    }
    if let Some(mb) = spec.shm_size_mb {
        flag("--shm-size", format!("{mb}m"));
    }
    if settings.no_new_privileges {
        flag("--security-opt", "no-new-privileges".into());
    }
    if settings.pids_limit > 0 {
        flag("--pids-limit", settings.pids_limit.to_string());
    }
    // Under host memory pressure the kernel kills a renter's process first, never the agent
    // (its unit's -900) or dockerd (-500).
    flag("--oom-score-adj", settings.oom_score_adj.to_string());
    flag("--log-driver", "json-file".into());
    flag("--log-opt", format!("max-size={}", settings.log_max_size));
    flag("--log-opt", format!("max-file={}", settings.log_max_file));
    // Renters' containers come back after a docker or host restart (unless-stopped by default).
    flag("--restart", settings.restart_policy.clone());
    if settings.init {
        args.push("--init".into());
    }
    args.push("--".into());
    args.push(spec.image.clone());
    args.extend(spec.command.iter().cloned());
    args
}

/// An IPv6 publish address needs brackets in `--publish`.
fn publish_host(address: IpAddr) -> String {
    match address {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ManagedLabel;
    use crate::docker::spec::{GpuRequest, PortMapping, Protocol};

    fn settings(mode: GpuMode) -> RunSettings {
        RunSettings {
            gpu_mode: mode,
            runtime: None,
            cdi_kind: "nvidia.com/gpu".into(),
            publish_address: IpAddr::from([127, 0, 0, 1]),
            network: "utopia-renters".into(),
            managed_label: ManagedLabel::parse("io.utopia.managed=true").unwrap(),
            pids_limit: 4096,
            oom_score_adj: 500,
            default_memory: None,
            storage_size_mib: None,
            log_max_size: "50m".into(),
            log_max_file: 3,
            init: true,
            block_metadata: false,
            no_new_privileges: true,
            allowed_registries: Vec::new(),
            host_port_range: None,
            restart_policy: "unless-stopped".into(),
        }
    }

    fn spec() -> CreateSpec {
        CreateSpec {
            claim_id: "claim-1".into(),
            image: "nvidia/cuda:12".into(),
            gpus: GpuRequest::Ids(vec![0, 1]),
            ports: vec![PortMapping {
                host_port: 8888,
                container_port: 80,
                protocol: Protocol::Tcp,
                remote_port: 0,
            }],
            env: vec![("SECRET".into(), "hunter2".into())],
            command: vec!["--privileged".into(), "sleep".into()],
            memory_mb: Some(2048),
            cpus: Some(1.5),
            shm_size_mb: Some(4096),
            requested_visible_devices: None,
            registry_auth: None,
        }
    }

    fn pairs(args: &[String], flag: &str) -> Vec<String> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].clone())
            .collect()
    }

    /// The `--env` values that set NVIDIA_VISIBLE_DEVICES.
    fn visible(args: &[String]) -> Vec<String> {
        pairs(args, "--env")
            .into_iter()
            .filter(|e| e.starts_with("NVIDIA_VISIBLE_DEVICES="))
            .collect()
    }

    fn uuids() -> Vec<String> {
        vec!["GPU-a".into(), "GPU-b".into()]
    }

    #[test]
    fn gpus_mode_quotes_the_device_list() {
        let args = run_args(
            &spec(),
            &[0, 1],
            &uuids(),
            &settings(GpuMode::Gpus),
            Some(Path::new("/run/env")),
        );
        assert_eq!(pairs(&args, "--gpus"), vec!["\"device=0,1\""]);
        assert!(pairs(&args, "--device").is_empty());
        assert!(pairs(&args, "--runtime").is_empty());
        assert!(!args.iter().any(|a| a.contains("NVIDIA_VISIBLE_DEVICES")));
        assert_eq!(
            pairs(&args, "--env"),
            vec![
                "NVIDIA_MIG_CONFIG_DEVICES=",
                "NVIDIA_MIG_MONITOR_DEVICES=",
                "NVIDIA_IMEX_CHANNELS=",
                "NVIDIA_GDS=disabled",
                "NVIDIA_MOFED=disabled",
                "NVIDIA_NVSWITCH=disabled",
                "NVIDIA_GDRCOPY=disabled",
            ],
            "an image cannot switch on toolkit features that hand out host devices"
        );
        // Every variable a request may not set is also forced over the image's value.
        for variable in crate::docker::spec::DEVICE_GRANTING_VARIABLES {
            assert!(
                FORCED_TOOLKIT_VARIABLES.iter().any(|(v, _)| v == variable),
                "{variable} is refused in requests but an image may still set it"
            );
        }
        assert_eq!(pairs(&args, "--env-file"), vec!["/run/env"]);
        // The image comes right after `--`, followed by the command, even one that looks like
        // a flag.
        let dash = args.iter().position(|a| a == "--").unwrap();
        assert_eq!(
            &args[dash + 1..],
            &["nvidia/cuda:12", "--privileged", "sleep"]
        );
        assert_eq!(args[..3], ["run", "--detach", "--pull=never"]);
        assert!(
            !args.iter().any(|a| a.contains("hunter2")),
            "env stays off the argv"
        );
    }

    #[test]
    fn cdi_mode_names_one_device_per_gpu() {
        let mut s = settings(GpuMode::Cdi);
        s.cdi_kind = "example.com/gpu".into();
        let args = run_args(&spec(), &[0, 1], &uuids(), &s, None);
        assert_eq!(
            pairs(&args, "--device"),
            vec!["example.com/gpu=0", "example.com/gpu=1"]
        );
        assert!(pairs(&args, "--gpus").is_empty());
        assert!(pairs(&args, "--env-file").is_empty());
        // The devices come from CDI: an image's own NVIDIA_VISIBLE_DEVICES=all (every CUDA
        // image has it) must not make a default nvidia runtime add every GPU on top.
        assert_eq!(visible(&args), vec!["NVIDIA_VISIBLE_DEVICES=void"]);
    }

    #[test]
    fn env_mode_sets_visible_devices_and_runtime() {
        let args = run_args(&spec(), &[0, 1], &uuids(), &settings(GpuMode::Env), None);
        assert_eq!(visible(&args), vec!["NVIDIA_VISIBLE_DEVICES=0,1"]);
        assert!(pairs(&args, "--runtime").is_empty());
        let mut s = settings(GpuMode::Env);
        s.runtime = Some("nvidia".into());
        let args = run_args(&spec(), &[1], &uuids()[..1], &s, None);
        assert_eq!(pairs(&args, "--runtime"), vec!["nvidia"]);
        assert_eq!(visible(&args), vec!["NVIDIA_VISIBLE_DEVICES=1"]);
    }

    #[test]
    fn no_gpus_means_void_in_every_mode() {
        for mode in [GpuMode::Gpus, GpuMode::Cdi, GpuMode::Env] {
            let mut s = settings(mode);
            s.runtime = Some("nvidia".into());
            let args = run_args(&spec(), &[], &[], &s, None);
            assert_eq!(visible(&args), vec!["NVIDIA_VISIBLE_DEVICES=void"]);
            assert!(pairs(&args, "--gpus").is_empty());
            assert!(pairs(&args, "--device").is_empty());
            assert!(pairs(&args, "--runtime").is_empty());
        }
    }

    #[test]
    fn labels_limits_and_safe_defaults() {
        let args = run_args(&spec(), &[0, 1], &uuids(), &settings(GpuMode::Gpus), None);
        assert_eq!(pairs(&args, "--name"), vec!["utopia-claim-1"]);
        assert_eq!(
            pairs(&args, "--label"),
            vec![
                "io.utopia.managed=true",
                "io.utopia.claim_id=claim-1",
                "io.utopia.gpu_ids=0,1",
                "io.utopia.gpu_uuids=GPU-a,GPU-b",
                "io.utopia.ports=8888:80/tcp",
            ]
        );
        assert_eq!(pairs(&args, "--publish"), vec!["127.0.0.1:8888:80/tcp"]);
        assert_eq!(pairs(&args, "--network"), vec!["utopia-renters"]);
        assert_eq!(pairs(&args, "--memory"), vec!["2048m"]);
        assert_eq!(pairs(&args, "--memory-swap"), vec!["2048m"], "no swap");
        assert!(pairs(&args, "--storage-opt").is_empty());
        let mut sized = settings(GpuMode::Gpus);
        sized.storage_size_mib = Some(51200);
        let args = run_args(&spec(), &[0, 1], &uuids(), &sized, None);
        assert_eq!(pairs(&args, "--storage-opt"), vec!["size=51200m"]);
        assert_eq!(pairs(&args, "--cpus"), vec!["1.5"]);
        assert_eq!(pairs(&args, "--shm-size"), vec!["4096m"]);
        assert_eq!(pairs(&args, "--security-opt"), vec!["no-new-privileges"]);
        assert_eq!(pairs(&args, "--pids-limit"), vec!["4096"]);
        assert_eq!(pairs(&args, "--oom-score-adj"), vec!["500"]);
        assert_eq!(pairs(&args, "--log-driver"), vec!["json-file"]);
        assert_eq!(
            pairs(&args, "--log-opt"),
            vec!["max-size=50m", "max-file=3"]
        );
        assert_eq!(pairs(&args, "--restart"), vec!["unless-stopped"]);
        assert!(args.contains(&"--init".to_string()));
        for forbidden in [
            "--privileged",
            "--net",
            "--pid",
            "--ipc",
            "--cap-add",
            "--volume",
            "-v",
        ] {
            let dash = args.iter().position(|a| a == "--").unwrap();
            assert!(
                !args[..dash].contains(&forbidden.to_string()),
                "{forbidden}"
            );
        }

        let mut s = settings(GpuMode::Gpus);
        s.init = false;
        s.no_new_privileges = false;
        s.pids_limit = 0;
        s.publish_address = "::1".parse().unwrap();
        let args = run_args(&spec(), &[0], &uuids()[..1], &s, None);
        assert!(!args.contains(&"--init".to_string()));
        assert!(pairs(&args, "--security-opt").is_empty());
        assert!(pairs(&args, "--pids-limit").is_empty());
        assert_eq!(pairs(&args, "--publish"), vec!["[::1]:8888:80/tcp"]);
    }
}
