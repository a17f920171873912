//! `GET /metrics`: the published snapshot in Prometheus' text exposition format (0.0.4).
//!
//! GPU series carry dcgm-exporter's names and labels (`DCGM_FI_DEV_GPU_TEMP{gpu, UUID, device,
//! modelName, Hostname}`), so dashboards built for dcgm-exporter work unchanged; a GPU a managed
//! container holds also carries `claim_id` and `container` (per-claim attribution on plain
//! Docker). Host series carry node_exporter's names (`node_cpu_seconds_total`,
//! `node_memory_MemAvailable_bytes`, `node_load1`). The agent's own series are `utopia_agent_*`:
//! API requests by route and status, docker command durations, component and GPU health,
//! registration and heartbeats, NVML errors, and what each claim's container uses.
//!
//! Everything is read from the [`Snapshot`] and its counters: a scrape never calls NVML, sysinfo
//! or docker. Values use base units (bytes, seconds) except where dcgm-exporter's names fix
//! another (MiB, MHz, W, °C, %).

use crate::state::counters::DOCKER_BUCKETS;
use crate::state::document::GpuView;
use crate::state::Snapshot;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

/// The exposition's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the exposition needs besides the snapshot.
pub struct Identity<'a> {
    /// The `Hostname` label of GPU series.
    pub hostname: &'a str,
    /// When the agent started.
    pub started: SystemTime,
}

/// The length of the last exposition: the next one is rendered into one buffer of about that
/// size, instead of a buffer doubled five or six times on the way to ~40 KB (each step a
/// differently sized block for the allocator to keep, per scrape and per handler thread).
static LAST_LEN: AtomicUsize = AtomicUsize::new(0);

/// The text exposition of `snapshot`, now.
pub fn render(snapshot: &Snapshot, identity: &Identity<'_>) -> String {
    let mut out = Exposition {
        text: String::with_capacity(capacity_for(LAST_LEN.load(Ordering::Relaxed))),
    };
    gpu_series(&mut out, snapshot, identity.hostname);
    host_series(&mut out, snapshot);
    agent_series(&mut out, snapshot, identity);
    LAST_LEN.store(out.text.len(), Ordering::Relaxed);
    out.text
}

/// The buffer for an exposition when the last one was `last` bytes: room for it to grow by a
/// few series (counters gain digits, a route or status appears) without reallocating.
fn capacity_for(last: usize) -> usize {
    (last + last / 16 + 512).next_multiple_of(4096)
}

struct Exposition {
    text: String,
}

impl Exposition {
    /// `# HELP` and `# TYPE` of a family.
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                self.text.push_str(key);
                self.text.push_str("=\"");
                escape_into(&mut self.text, value);
                self.text.push('"');
            }
            self.text.push('}');
        }
        self.text.push(' ');
        push_value(&mut self.text, value);
        self.text.push('\n');
    }

    /// A family with one sample per item that has a value (the family is left out when none
    /// has: a metric a GPU does not report is absent, as with dcgm-exporter).
    fn each<T>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        items: &[(Vec<(&str, &str)>, T)],
        value: impl Fn(&T) -> Option<f64>,
    ) {
        let values: Vec<(&Vec<(&str, &str)>, f64)> = items
            .iter()
            .filter_map(|(labels, item)| value(item).map(|v| (labels, v)))
            .collect();
        if values.is_empty() {
            return;
        }
        self.family(name, kind, help);
        for (labels, v) in values {
            self.sample(name, labels, v);
        }
    }
}

/// A label value as the format wants it: `\`, `"` and line feeds escaped.
fn escape_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn push_value(out: &mut String, value: f64) {
    if value.is_nan() {
        out.push_str("NaN");
    } else if value.is_infinite() {
        out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{value}");
    }
}

fn mib(mb: u64) -> f64 {
    mb as f64
}

fn gpu_series(out: &mut Exposition, snapshot: &Snapshot, hostname: &str) {
    let document = snapshot.metrics();
    let index_texts: Vec<String> = document
        .gpus
        .iter()
        .map(|g| g.sample.index.to_string())
        .collect();
    let devices: Vec<String> = document
        .gpus
        .iter()
        .map(|g| format!("nvidia{}", g.sample.index))
        .collect();
    let items: Vec<(Vec<(&str, &str)>, &GpuView)> = document
        .gpus
        .iter()
        .enumerate()
        .map(|(i, gpu)| {
            let mut labels = vec![
                ("gpu", index_texts[i].as_str()),
                ("UUID", gpu.sample.uuid.as_deref().unwrap_or("")),
                ("device", devices[i].as_str()),
                ("modelName", gpu.sample.name.as_deref().unwrap_or("")),
                ("Hostname", hostname),
            ];
            if let (Some(claim), Some(container)) = (&gpu.claim_id, &gpu.container_id) {
                labels.push(("claim_id", claim.as_str()));
                labels.push(("container", container.as_str()));
            }
            (labels, gpu)
        })
        .collect();
    let f = |v: Option<u32>| v.map(f64::from);
    out.each(
        "DCGM_FI_DEV_SM_CLOCK",
        "gauge",
        "SM clock frequency (in MHz).",
        &items,
        |g| f(g.sample.clock_sm_mhz),
    );
    out.each(
        "DCGM_FI_DEV_MEM_CLOCK",
        "gauge",
        "Memory clock frequency (in MHz).",
        &items,
        |g| f(g.sample.clock_memory_mhz),
    );
    out.each(
        "DCGM_FI_DEV_GPU_TEMP",
        "gauge",
        "GPU temperature (in C).",
        &items,
        |g| f(g.sample.temperature_c),
    );
    out.each(
        "DCGM_FI_DEV_POWER_USAGE",
        "gauge",
        "Power draw (in W).",
        &items,
        |g| g.sample.power_watts,
    );
    out.each(
        "DCGM_FI_DEV_POWER_MGMT_LIMIT",
        "gauge",
        "Power management limit (in W).",
        &items,
        |g| g.sample.power_limit_watts,
    );
    out.each(
        "DCGM_FI_DEV_GPU_UTIL",
        "gauge",
        "GPU utilization (in %).",
        &items,
        |g| g.sample.usage_percent,
    );
    out.each(
        "DCGM_FI_DEV_MEM_COPY_UTIL",
        "gauge",
        "Memory utilization (in %).",
        &items,
        |g| g.sample.memory_utilization_percent,
    );
    out.each(
        "DCGM_FI_DEV_FB_FREE",
        "gauge",
        "Frame buffer memory free (in MiB).",
        &items,
        |g| g.sample.memory_free_mb.map(mib),
    );
    out.each(
        "DCGM_FI_DEV_FB_USED",
        "gauge",
        "Frame buffer memory used (in MiB).",
        &items,
        |g| g.sample.memory_used_mb.map(mib),
    );
    out.each(
        "DCGM_FI_DEV_FB_TOTAL",
        "gauge",
        "Frame buffer memory total (in MiB).",
        &items,
        |g| g.sample.memory_total_mb.map(mib),
    );
    out.each(
        "DCGM_FI_DEV_FAN_SPEED",
        "gauge",
        "Fan speed (in %).",
        &items,
        |g| f(g.sample.fan_speed_percent),
    );
    out.each(
        "DCGM_FI_DEV_PCIE_LINK_GEN",
        "gauge",
        "PCIe link generation now in use.",
        &items,
        |g| f(g.sample.pcie.generation),
    );
    out.each(
        "DCGM_FI_DEV_PCIE_LINK_WIDTH",
        "gauge",
        "PCIe link width now in use (lanes).",
        &items,
        |g| f(g.sample.pcie.width),
    );
    out.each(
        "DCGM_FI_DEV_XID_ERRORS",
        "gauge",
        "Value of the last XID error encountered.",
        &items,
        |g| g.sample.xid_errors.last().map(|x| x.xid as f64),
    );
    let count = |v: Option<u64>| v.map(|n| n as f64);
    out.each(
        "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL",
        "counter",
        "Total number of single-bit volatile ECC errors.",
        &items,
        |g| count(g.sample.ecc_errors.volatile_corrected),
    );
    out.each(
        "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
        "counter",
        "Total number of double-bit volatile ECC errors.",
        &items,
        |g| count(g.sample.ecc_errors.volatile_uncorrected),
    );
    out.each(
        "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL",
        "counter",
        "Total number of single-bit persistent ECC errors.",
        &items,
        |g| count(g.sample.ecc_errors.aggregate_corrected),
    );
    out.each(
        "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL",
        "counter",
        "Total number of double-bit persistent ECC errors.",
        &items,
        |g| count(g.sample.ecc_errors.aggregate_uncorrected),
    );
    out.each(
        "DCGM_FI_DEV_RETIRED_PENDING",
        "gauge",
        "Whether pages are pending retirement (1) or not (0).",
        &items,
        |g| {
            g.sample
                .retired_pages_pending
                .map(|p| f64::from(u8::from(p)))
        },
    );
    out.each(
        "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
        "counter",
        "Number of remapped rows for correctable errors.",
        &items,
        |g| g.sample.remapped_rows.map(|r| f64::from(r.corrected)),
    );
    out.each(
        "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
        "counter",
        "Number of remapped rows for uncorrectable errors.",
        &items,
        |g| g.sample.remapped_rows.map(|r| f64::from(r.uncorrected)),
    );
    out.each(
        "DCGM_FI_DEV_ROW_REMAP_FAILURE",
        "gauge",
        "Whether remapping of rows has failed (1) or not (0).",
        &items,
        |g| {
            g.sample
                .remapped_rows
                .map(|r| f64::from(u8::from(r.failed)))
        },
    );

    // The agent's own view of each GPU (its labels are plain snake_case).
    let own: Vec<(Vec<(&str, &str)>, &GpuView)> = document
        .gpus
        .iter()
        .enumerate()
        .map(|(i, gpu)| {
            (
                vec![
                    ("gpu", index_texts[i].as_str()),
                    ("uuid", gpu.sample.uuid.as_deref().unwrap_or("")),
                ],
                gpu,
            )
        })
        .collect();
    if !own.is_empty() {
        let name = "utopia_agent_gpu_health";
        out.family(
            name,
            "gauge",
            "GPU health: 1 for the state the GPU is in (healthy, degraded, failed), 0 for the others.",
        );
        for (labels, gpu) in &own {
            for state in ["healthy", "degraded", "failed"] {
                let mut labels = labels.clone();
                labels.push(("state", state));
                let on = gpu.sample.health.as_str() == state;
                out.sample(name, &labels, f64::from(u8::from(on)));
            }
        }
    }
    out.each(
        "utopia_agent_gpu_lost",
        "gauge",
        "1 when the GPU fell off the bus or is otherwise inaccessible.",
        &own,
        |g| Some(f64::from(u8::from(g.sample.lost))),
    );
    out.each(
        "utopia_agent_gpu_busy",
        "gauge",
        "1 when compute processes run on the GPU or a managed container holds it.",
        &own,
        |g| Some(f64::from(u8::from(g.busy))),
    );
    out.each(
        "utopia_agent_gpu_isolation_violations",
        "gauge",
        "Processes on the GPU that do not belong to the claim holding it (or to no claim).",
        &own,
        |g| Some(g.sample.isolation_violations.len() as f64),
    );
    if let Some(version) = &document.driver_version {
        out.family(
            "utopia_agent_gpu_driver_info",
            "gauge",
            "The NVIDIA driver version NVML reports, as a label.",
        );
        out.sample(
            "utopia_agent_gpu_driver_info",
            &[("driver_version", version)],
            1.0,
        );
    }
}

fn host_series(out: &mut Exposition, snapshot: &Snapshot) {
    let system = snapshot.system();
    let Some(system) = system.as_ref() else {
        return;
    };
    if !system.cpu_times.is_empty() {
        let name = "node_cpu_seconds_total";
        out.family(name, "counter", "Seconds the CPUs spent in each mode.");
        for cpu in &system.cpu_times {
            let index = cpu.cpu.to_string();
            for (mode, seconds) in &cpu.modes {
                out.sample(name, &[("cpu", &index), ("mode", mode)], *seconds);
            }
        }
    }
    let memory = system.memory_bytes;
    for (name, help, value) in [
        (
            "node_memory_MemTotal_bytes",
            "Memory information field MemTotal_bytes.",
            memory.total,
        ),
        (
            "node_memory_MemAvailable_bytes",
            "Memory information field MemAvailable_bytes.",
            memory.available,
        ),
        (
            "node_memory_MemFree_bytes",
            "Memory information field MemFree_bytes.",
            memory.free,
        ),
    ] {
        out.family(name, "gauge", help);
        out.sample(name, &[], value as f64);
    }
    if let Some(load) = system.load_average {
        for (name, help, value) in [
            ("node_load1", "1m load average.", load.one),
            ("node_load5", "5m load average.", load.five),
            ("node_load15", "15m load average.", load.fifteen),
        ] {
            out.family(name, "gauge", help);
            out.sample(name, &[], value);
        }
    }
}

fn agent_series(out: &mut Exposition, snapshot: &Snapshot, identity: &Identity<'_>) {
    out.family(
        "utopia_agent_info",
        "gauge",
        "The agent's version, as a label; always 1.",
    );
    out.sample("utopia_agent_info", &[("version", crate::VERSION)], 1.0);
    let started = identity
        .started
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64().floor());
    out.family(
        "utopia_agent_start_time_seconds",
        "gauge",
        "When the agent started, in seconds since the Unix epoch.",
    );
    out.sample("utopia_agent_start_time_seconds", &[], started);

    let states = snapshot.health_states();
    if !states.is_empty() {
        let name = "utopia_agent_component_status";
        out.family(
            name,
            "gauge",
            "Each component's health: 1 for its state (starting, ok, degraded, unavailable, disabled), 0 for the others.",
        );
        for (component, state) in &states {
            for candidate in ["starting", "ok", "degraded", "unavailable", "disabled"] {
                out.sample(
                    name,
                    &[("component", component), ("status", candidate)],
                    f64::from(u8::from(*state == candidate)),
                );
            }
        }
    }

    let counters = snapshot.counters();
    let requests = counters.api_requests();
    if !requests.is_empty() {
        let name = "utopia_agent_api_requests_total";
        out.family(
            name,
            "counter",
            "API requests answered, by route template and status code.",
        );
        for ((route, code), n) in &requests {
            out.sample(
                name,
                &[("route", route), ("code", &code.to_string())],
                *n as f64,
            );
        }
    }

    let docker = counters.docker_commands();
    if !docker.is_empty() {
        let name = "utopia_agent_docker_command_duration_seconds";
        out.family(
            name,
            "histogram",
            "How long docker CLI commands took, by subcommand.",
        );
        let bucket = format!("{name}_bucket");
        for (command, histogram) in &docker {
            let mut cumulative = 0;
            for (bound, n) in DOCKER_BUCKETS.iter().zip(histogram.buckets) {
                cumulative += n;
                out.sample(
                    &bucket,
                    &[("command", command), ("le", &bound.to_string())],
                    cumulative as f64,
                );
            }
            out.sample(
                &bucket,
                &[("command", command), ("le", "+Inf")],
                histogram.count as f64,
            );
            out.sample(
                &format!("{name}_sum"),
                &[("command", command)],
                histogram.sum_seconds,
            );
            out.sample(
                &format!("{name}_count"),
                &[("command", command)],
                histogram.count as f64,
            );
        }
    }

    out.family(
        "utopia_agent_platform_registered",
        "gauge",
        "1 when the node has its id from the platform.",
    );
    out.sample(
        "utopia_agent_platform_registered",
        &[],
        f64::from(u8::from(snapshot.node_id().is_some())),
    );
    let tunnel = snapshot.tunnel();
    out.family(
        "utopia_agent_frpc_restarts_total",
        "counter",
        "Times the supervisor started frpc again after its first start.",
    );
    out.sample(
        "utopia_agent_frpc_restarts_total",
        &[],
        tunnel.restarts as f64,
    );
    out.family(
        "utopia_agent_tunnel_state",
        "gauge",
        "1 for the frp tunnel's current state (disabled, starting, connected, reconnecting, failed).",
    );
    for state in [
        "disabled",
        "starting",
        "connected",
        "reconnecting",
        "failed",
    ] {
        let now = serde_json::to_value(tunnel.state)
            .ok()
            .is_some_and(|v| v.as_str() == Some(state));
        out.sample(
            "utopia_agent_tunnel_state",
            &[("state", state)],
            f64::from(u8::from(now)),
        );
    }
    let beats = counters.heartbeats();
    out.family(
        "utopia_agent_heartbeats_total",
        "counter",
        "Heartbeats sent to the platform, by result (accepted, failed).",
    );
    out.sample(
        "utopia_agent_heartbeats_total",
        &[("result", "accepted")],
        beats.accepted as f64,
    );
    out.sample(
        "utopia_agent_heartbeats_total",
        &[("result", "failed")],
        beats.failed as f64,
    );
    if beats.last_accepted_unix > 0 {
        out.family(
            "utopia_agent_last_heartbeat_timestamp_seconds",
            "gauge",
            "When the platform last accepted a heartbeat, in seconds since the Unix epoch.",
        );
        out.sample(
            "utopia_agent_last_heartbeat_timestamp_seconds",
            &[],
            beats.last_accepted_unix as f64,
        );
    }
    out.family(
        "utopia_agent_nvml_errors_total",
        "counter",
        "NVML calls that failed (init, device count, or a query a GPU supports).",
    );
    out.sample(
        "utopia_agent_nvml_errors_total",
        &[],
        counters.nvml_error_count() as f64,
    );

    let containers = snapshot.containers_with_usage();
    let mut by_state = std::collections::BTreeMap::<&str, u64>::new();
    for container in &containers {
        *by_state.entry(container.state.as_str()).or_insert(0) += 1;
    }
    out.family(
        "utopia_agent_containers",
        "gauge",
        "Managed containers, by docker state.",
    );
    if by_state.is_empty() {
        out.sample("utopia_agent_containers", &[("state", "running")], 0.0);
    }
    for (state, n) in &by_state {
        out.sample("utopia_agent_containers", &[("state", state)], *n as f64);
    }

    let claims: Vec<(Vec<(&str, &str)>, &crate::state::ClaimUsage)> = containers
        .iter()
        .filter_map(|c| {
            let usage = c.usage.as_ref()?;
            Some((
                vec![
                    ("claim_id", c.claim_id.as_str()),
                    ("container", c.id.as_str()),
                ],
                usage,
            ))
        })
        .collect();
    out.each(
        "utopia_agent_claim_cpu_cores",
        "gauge",
        "CPU cores a claim's container used on average since the previous reading.",
        &claims,
        |u| u.cpu_cores,
    );
    out.each(
        "utopia_agent_claim_memory_bytes",
        "gauge",
        "Memory a claim's container is charged for (its cgroup's count).",
        &claims,
        |u| u.memory_bytes.map(|b| b as f64),
    );
    out.each(
        "utopia_agent_claim_memory_limit_bytes",
        "gauge",
        "Memory limit of a claim's container (absent when unlimited).",
        &claims,
        |u| u.memory_limit_bytes.map(|b| b as f64),
    );
    out.each(
        "utopia_agent_claim_gpu_memory_bytes",
        "gauge",
        "GPU memory a claim's processes use, over all its GPUs.",
        &claims,
        |u| u.gpu_memory_mb.map(|mb| mb as f64 * 1024.0 * 1024.0),
    );
    out.each(
        "utopia_agent_claim_network_receive_bytes_total",
        "counter",
        "Bytes a claim's container received (every interface but lo) since it started.",
        &claims,
        |u| u.network_rx_bytes.map(|b| b as f64),
    );
    out.each(
        "utopia_agent_claim_network_transmit_bytes_total",
        "counter",
        "Bytes a claim's container sent (every interface but lo) since it started.",
        &claims,
        |u| u.network_tx_bytes.map(|b| b as f64),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{self, GpuAllocation, GpuReport, GpuSample, Health, NvmlState};
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn identity() -> Identity<'static> {
        Identity {
            hostname: "node-a",
            started: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        }
    }

    #[test]
    fn an_exposition_is_rendered_into_one_buffer_of_the_last_ones_size() {
        for last in [0usize, 100, 4096, 42_395, 1 << 20] {
            let capacity = capacity_for(last);
            assert!(capacity >= last + last / 16 + 512, "{last}: {capacity}");
            assert!(
                capacity <= last + last / 16 + 512 + 4095,
                "{last}: {capacity}"
            );
            assert_eq!(capacity % 4096, 0);
        }
        let (snapshot, _writers) = state::new();
        let text = render(&snapshot, &identity());
        assert!(!text.is_empty());
        assert!(text.capacity() >= text.len());
    }

    #[test]
    fn gpu_series_carry_dcgm_names_and_the_claim_holding_the_gpu() {
        let (snapshot, writers) = state::new();
        let mut held = GpuSample::empty(1);
        held.name = Some("H100 \"SXM\"".into());
        held.uuid = Some("GPU-1".into());
        held.temperature_c = Some(41);
        held.memory_used_mb = Some(2048);
        let mut free = GpuSample::empty(0);
        free.temperature_c = Some(40);
        writers.gpu.publish(
            GpuReport {
                state: NvmlState::Ok,
                driver_version: Some("550.1".into()),
                gpus: vec![free, held],
            },
            Health::Ok,
            Duration::ZERO,
        );
        writers.docker.publish(
            Vec::new(),
            BTreeMap::from([(
                1,
                GpuAllocation {
                    claim_id: "claim-7".into(),
                    container_id: "abc".into(),
                },
            )]),
        );
        let text = render(&snapshot, &identity());
        assert!(
            text.contains("# TYPE DCGM_FI_DEV_GPU_TEMP gauge\n"),
            "{text}"
        );
        assert!(text.contains(
            "DCGM_FI_DEV_GPU_TEMP{gpu=\"0\",UUID=\"\",device=\"nvidia0\",modelName=\"\",Hostname=\"node-a\"} 40\n"
        ), "{text}");
        assert!(text.contains(
            "DCGM_FI_DEV_GPU_TEMP{gpu=\"1\",UUID=\"GPU-1\",device=\"nvidia1\",modelName=\"H100 \\\"SXM\\\"\",Hostname=\"node-a\",claim_id=\"claim-7\",container=\"abc\"} 41\n"
        ), "{text}");
        // Only the GPU that reports it has a series; a family nobody reports is left out.
        assert_eq!(text.matches("DCGM_FI_DEV_FB_USED{").count(), 1, "{text}");
        assert!(!text.contains("DCGM_FI_DEV_SM_CLOCK"), "{text}");
        assert!(text
            .contains("utopia_agent_gpu_health{gpu=\"1\",uuid=\"GPU-1\",state=\"healthy\"} 1\n"));
        assert!(text.contains("utopia_agent_gpu_driver_info{driver_version=\"550.1\"} 1\n"));
    }

    #[test]
    fn counters_become_counters_and_histograms() {
        let (snapshot, writers) = state::new();
        writers.api.set(Health::Ok);
        let counters = snapshot.counters();
        counters.api_request("/health", 200);
        counters.docker_command("ps", Duration::from_millis(70));
        counters.nvml_errors(2);
        let text = render(&snapshot, &identity());
        assert!(
            text.contains("utopia_agent_api_requests_total{route=\"/health\",code=\"200\"} 1\n")
        );
        assert!(text.contains(
            "utopia_agent_docker_command_duration_seconds_bucket{command=\"ps\",le=\"0.05\"} 0\n"
        ));
        assert!(text.contains(
            "utopia_agent_docker_command_duration_seconds_bucket{command=\"ps\",le=\"0.1\"} 1\n"
        ));
        assert!(text.contains(
            "utopia_agent_docker_command_duration_seconds_bucket{command=\"ps\",le=\"+Inf\"} 1\n"
        ));
        assert!(
            text.contains("utopia_agent_docker_command_duration_seconds_count{command=\"ps\"} 1\n")
        );
        assert!(text.contains("utopia_agent_nvml_errors_total 2\n"));
        assert!(text.contains("utopia_agent_component_status{component=\"api\",status=\"ok\"} 1\n"));
        assert!(text.contains("utopia_agent_platform_registered 0\n"));
        assert!(text.contains("utopia_agent_frpc_restarts_total 0\n"));
        assert!(text.contains("utopia_agent_tunnel_state{state=\"disabled\"} 1\n"));
        assert!(text.contains("utopia_agent_tunnel_state{state=\"connected\"} 0\n"));
        assert!(text.contains("utopia_agent_start_time_seconds 1700000000\n"));
        // Every family is declared once, before its samples.
        let mut seen = std::collections::BTreeSet::new();
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = line.split(' ').nth(2).unwrap();
            assert!(seen.insert(name.to_string()), "{name} declared twice");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        escape_into(&mut out, "a\\b\"c\nd");
        assert_eq!(out, "a\\\\b\\\"c\\nd");
        let mut value = String::new();
        push_value(&mut value, f64::INFINITY);
        push_value(&mut value, 0.25);
        assert_eq!(value, "+Inf0.25");
    }
}
