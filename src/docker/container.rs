//! A managed container as the API shows it, read from `docker container inspect`.
//!
//! What the agent asked for (claim, GPUs, ports) is read back from the labels it set, so the
//! view survives an agent restart; what docker decides (state, exit code, times) from `State`.

use crate::config::ManagedLabel;
use crate::docker::labels::{self, ContainerLabels};
use crate::docker::spec::{PortMapping, Protocol};
use crate::state::{ClaimUsage, ProxyStatus};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The container JSON of the API.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContainerView {
    /// Docker's container id; empty (`null` in the JSON) while docker has made no container for
    /// the claim (a create in progress or failed).
    #[serde(serialize_with = "id_or_null")]
    pub id: String,
    pub name: String,
    pub claim_id: String,
    pub image: String,
    /// created | running | paused | restarting | exited | dead (docker's `State.Status`); for a
    /// create that answered 202: creating, then failed or unknown if it did not succeed.
    pub state: String,
    /// A human line: `Up since ...`, `Exited (0) at ...`.
    pub status: String,
    /// `null` until the container has exited.
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
    pub gpu_ids: Vec<u32>,
    pub gpu_uuids: Vec<String>,
    pub port_mappings: Vec<PortMapping>,
    /// Per port mapping, its public address on frps once frpc reports it (filled by the API
    /// from the tunnel's view; `remote_addr` null until then, or when frp is off).
    pub endpoints: Vec<Endpoint>,
    pub created_at: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// Problems the agent found (a GPU no longer present, a conflicting holder).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// What it uses (CPU, memory, GPU memory and utilisation, network), read from its cgroup by
    /// the usage sampler; `null` until the first reading or while it is not running.
    pub usage: Option<ClaimUsage>,
    /// Why its create failed (state `failed` or `unknown`, shown after a create answered 202).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The image pull of a create in progress (state `creating`): layers and bytes so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pull: Option<crate::docker::pull_progress::PullProgress>,
    /// Its init process on the host (`State.Pid`); `None` when not running.
    #[serde(skip)]
    pub pid: Option<u32>,
}

/// An empty id is `null`: an entry without a container has no id to follow (`""` would turn
/// `GET /api/v1/containers/{id}` into the collection's path).
pub(crate) fn id_or_null<S: serde::Serializer>(id: &str, serializer: S) -> Result<S::Ok, S::Error> {
    if id.is_empty() {
        serializer.serialize_none()
    } else {
        serializer.serialize_str(id)
    }
}

/// A port mapping as renters reach it through the frp tunnel.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Endpoint {
    pub container_port: u16,
    pub protocol: Protocol,
    pub host_port: u16,
    /// `host:port` on frps; `null` until frpc reports it, or when frp is off.
    pub remote_addr: Option<String>,
}

impl ContainerView {
    /// Fills [`endpoints`](Self::endpoints): each port mapping with the address frpc reports
    /// for its proxy (`<claim_id>-<container_port>-<protocol>`, which frps may prefix with the
    /// frp user, publishing the host port).
    pub fn fill_endpoints(&mut self, proxies: &[ProxyStatus]) {
        self.endpoints = self
            .port_mappings
            .iter()
            .map(|m| {
                let name = format!(
                    "{}-{}-{}",
                    self.claim_id,
                    m.container_port,
                    m.protocol.as_str()
                );
                let dotted = format!(".{name}");
                let local = format!(":{}", m.host_port);
                let remote_addr = proxies
                    .iter()
                    .find(|p| {
                        (p.name == name || p.name.ends_with(&dotted))
                            && p.kind == m.protocol.as_str()
                            && p.local_addr.ends_with(&local)
                    })
                    .and_then(|p| p.remote_addr.clone());
                Endpoint {
                    container_port: m.container_port,
                    protocol: m.protocol,
                    host_port: m.host_port,
                    remote_addr,
                }
            })
            .collect();
    }
}

impl ContainerView {
    /// A container `docker run --detach` has just started (it prints the id only once the
    /// start succeeded), as the agent knows it without asking docker again: docker's id, and
    /// the name, image and labels (claim, GPUs, ports) the agent gave it, read back as an
    /// inspect reads them. What only docker knows (its created and started times, its pid) is
    /// `None` until the refresh that follows the create, or an event's, fills it in.
    pub fn started(id: String, name: String, image: String, labels: &ContainerLabels) -> Self {
        let (decoded, warnings) = labels::read_back(labels);
        ContainerView {
            id,
            name,
            claim_id: decoded.claim_id,
            image,
            state: "running".into(),
            status: "Up (just started)".into(),
            exit_code: None,
            oom_killed: false,
            gpu_ids: decoded.gpu_ids,
            gpu_uuids: decoded.gpu_uuids,
            port_mappings: decoded.ports,
            endpoints: Vec::new(),
            created_at: None,
            started_at: None,
            finished_at: None,
            warnings,
            usage: None,
            error: None,
            pull: None,
            pid: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Inspect {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    created: String,
    #[serde(default)]
    config: InspectConfig,
    #[serde(default)]
    state: InspectState,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct InspectConfig {
    #[serde(default)]
    image: String,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct InspectState {
    #[serde(default)]
    status: String,
    #[serde(default, rename = "OOMKilled")]
    oom_killed: bool,
    #[serde(default)]
    exit_code: i64,
    #[serde(default)]
    error: String,
    #[serde(default)]
    started_at: String,
    #[serde(default)]
    finished_at: String,
    #[serde(default)]
    pid: u32,
}

/// Parses `docker container inspect` output (a JSON array); keeps only containers carrying the
/// managed label `key=value`, so another owner's container can never enter the agent's view.
pub fn parse_inspect(
    json: &[u8],
    managed_label: &ManagedLabel,
) -> Result<Vec<ContainerView>, String> {
    let items: Vec<Inspect> = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    Ok(items
        .into_iter()
        .filter_map(|item| {
            let labels = item.config.labels.clone().unwrap_or_default();
            managed_label
                .is_on(&labels)
                .then(|| view(item, &labels))
                .flatten()
        })
        .collect())
}

fn view(item: Inspect, labels: &BTreeMap<String, String>) -> Option<ContainerView> {
    let (decoded, warnings) = labels::decode(labels)?;
    let state = item.state.status.clone();
    let exited = matches!(state.as_str(), "exited" | "dead" | "restarting");
    let started_at = timestamp(&item.state.started_at);
    let finished_at = timestamp(&item.state.finished_at);
    let status = match state.as_str() {
        "running" => format!("Up since {}", started_at.as_deref().unwrap_or("?")),
        "paused" => format!("Up since {} (paused)", started_at.as_deref().unwrap_or("?")),
        "restarting" => format!("Restarting ({})", item.state.exit_code),
        "exited" => format!(
            "Exited ({}) at {}",
            item.state.exit_code,
            finished_at.as_deref().unwrap_or("?")
        ),
        "created" => "Created".to_string(),
        "dead" => "Dead".to_string(),
        other => other.to_string(),
    };
    let status = if item.state.error.is_empty() {
        status
    } else {
        format!("{status}: {}", item.state.error)
    };
    Some(ContainerView {
        name: item.name.trim_start_matches('/').to_string(),
        id: item.id,
        claim_id: decoded.claim_id,
        image: item.config.image,
        state,
        status,
        exit_code: exited.then_some(item.state.exit_code),
        oom_killed: item.state.oom_killed,
        gpu_ids: decoded.gpu_ids,
        gpu_uuids: decoded.gpu_uuids,
        port_mappings: decoded.ports,
        endpoints: Vec::new(),
        created_at: timestamp(&item.created),
        started_at,
        finished_at,
        warnings,
        usage: None,
        error: None,
        pull: None,
        pid: (item.state.pid > 0).then_some(item.state.pid),
    })
}

/// Docker's RFC 3339 with nanoseconds, cut to seconds; docker's zero time (never) is `None`.
fn timestamp(text: &str) -> Option<String> {
    if text.is_empty() || text.starts_with("0001-01-01") {
        return None;
    }
    match (text.get(..19), text.ends_with('Z')) {
        (Some(seconds), true) => Some(format!("{seconds}Z")),
        _ => Some(text.to_string()),
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn endpoints_come_from_the_proxy_that_publishes_the_host_port() {
        let proxy = |name: &str, kind: &str, local: &str, remote: Option<&str>| ProxyStatus {
            name: name.into(),
            kind: kind.into(),
            status: "running".into(),
            error: None,
            local_addr: local.into(),
            remote_addr: remote.map(str::to_string),
        };
        let mut view =
            crate::docker::fixtures::view(crate::docker::fixtures::A, "b", &[], "running");
        view.port_mappings = vec![
            PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: Protocol::Tcp,
                remote_port: 7005,
            },
            PortMapping {
                host_port: 5353,
                container_port: 53,
                protocol: Protocol::Udp,
                remote_port: 0,
            },
        ];
        view.fill_endpoints(&[
            proxy("node.b-80-tcp", "tcp", "127.0.0.1:8080", Some("frps:7005")),
            // Another claim whose name ends like this one's, on another host port.
            proxy(
                "node.a.b-53-udp",
                "udp",
                "127.0.0.1:5454",
                Some("frps:9999"),
            ),
        ]);
        assert_eq!(view.endpoints.len(), 2);
        assert_eq!(view.endpoints[0].remote_addr.as_deref(), Some("frps:7005"));
        assert_eq!(view.endpoints[1].remote_addr, None);
        assert_eq!(view.endpoints[1].host_port, 5353);
        view.fill_endpoints(&[]);
        assert!(view.endpoints.iter().all(|e| e.remote_addr.is_none()));
    }
    use super::*;

    fn label(text: &str) -> ManagedLabel {
        ManagedLabel::parse(text).unwrap()
    }

    const SAMPLE: &str = r#"[{
      "Id": "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
      "Created": "2026-11-29T09:30:05.123456789Z",
      "Name": "/utopia-c1",
      "State": {"Status": "exited", "Running": false, "OOMKilled": true, "ExitCode": 137,
                "Error": "", "StartedAt": "2026-11-29T09:30:06.5Z",
                "FinishedAt": "2026-11-29T09:31:00.000000001Z"},
      "Config": {"Image": "busybox:latest", "Labels": {
          "m": "yes", "io.utopia.claim_id": "c1", "io.utopia.gpu_ids": "0,1",
          "io.utopia.gpu_uuids": "GPU-a,GPU-b", "io.utopia.ports": "8888:80/tcp,53:53/udp"}}
    }, {
      "Id": "ffff", "Name": "/other", "State": {"Status": "running"},
      "Config": {"Image": "x", "Labels": {"io.utopia.claim_id": "c2"}}
    }, {
      "Id": "eeee", "Name": "/nolabels", "State": {"Status": "running"},
      "Config": {"Image": "x", "Labels": null}
    }]"#;

    #[test]
    fn parses_managed_containers_only() {
        let views = parse_inspect(SAMPLE.as_bytes(), &label("m=yes")).unwrap();
        assert_eq!(views.len(), 1, "unlabelled containers are invisible");
        let v = &views[0];
        assert_eq!(v.name, "utopia-c1");
        assert_eq!(v.claim_id, "c1");
        assert_eq!(v.state, "exited");
        assert_eq!(v.exit_code, Some(137));
        assert!(v.oom_killed);
        assert_eq!(v.gpu_ids, vec![0, 1]);
        assert_eq!(v.gpu_uuids, vec!["GPU-a", "GPU-b"]);
        assert_eq!(v.port_mappings[1].protocol, Protocol::Udp);
        assert_eq!(v.created_at.as_deref(), Some("2026-11-29T09:30:05Z"));
        assert_eq!(v.started_at.as_deref(), Some("2026-11-29T09:30:06Z"));
        assert_eq!(v.status, "Exited (137) at 2026-11-29T09:31:00Z");
        assert!(v.warnings.is_empty());
        // Same key, other value: not ours.
        assert!(parse_inspect(SAMPLE.as_bytes(), &label("m=no"))
            .unwrap()
            .is_empty());
        assert!(parse_inspect(b"not json", &label("m=yes")).is_err());
    }

    #[test]
    fn a_just_started_view_is_what_an_inspect_of_it_shows() {
        let written = ContainerLabels {
            claim_id: "c9".into(),
            gpu_ids: vec![3, 1],
            // An empty UUID (a GPU NVML gave none) is not in the label's list: not here either.
            gpu_uuids: vec!["GPU-c".into(), String::new()],
            ports: vec![
                PortMapping {
                    host_port: 8080,
                    container_port: 80,
                    protocol: Protocol::Tcp,
                    remote_port: 7005,
                },
                PortMapping {
                    host_port: 5353,
                    container_port: 53,
                    protocol: Protocol::Udp,
                    remote_port: 0,
                },
            ],
        };
        let mut label_map = serde_json::Map::new();
        label_map.insert("m".into(), "1".into());
        for label in labels::encode(&written) {
            let (key, value) = label.split_once('=').unwrap();
            label_map.insert(key.into(), value.into());
        }
        let id = "ab".repeat(32);
        let json = serde_json::json!([{
            "Id": id, "Name": "/utopia-c9", "Created": "2026-12-04T06:00:00.1Z",
            "State": {"Status": "running", "StartedAt": "2026-12-04T06:00:00.3Z", "Pid": 42},
            "Config": {"Image": "busybox:1", "Labels": label_map}
        }]);
        let inspected = parse_inspect(json.to_string().as_bytes(), &label("m=1"))
            .unwrap()
            .remove(0);
        let started =
            ContainerView::started(id.clone(), "utopia-c9".into(), "busybox:1".into(), &written);
        assert_eq!(started.gpu_uuids, vec!["GPU-c"]);
        // Docker's own details are the only difference, and come with the next refresh.
        let docker_only = ContainerView {
            status: started.status.clone(),
            created_at: None,
            started_at: None,
            pid: None,
            ..inspected.clone()
        };
        assert_eq!(started, docker_only);
        assert_eq!(inspected.pid, Some(42));
        assert!(inspected.started_at.is_some() && inspected.created_at.is_some());
    }

    #[test]
    fn running_container_has_no_exit_code() {
        let json = r#"[{"Id":"a","Name":"/utopia-x","Created":"0001-01-01T00:00:00Z",
            "State":{"Status":"running","StartedAt":"2026-11-29T09:30:06Z","ExitCode":0},
            "Config":{"Image":"i","Labels":{"m":"1","io.utopia.claim_id":"x",
            "io.utopia.gpu_ids":"","io.utopia.ports":"bad"}}}]"#;
        let v = &parse_inspect(json.as_bytes(), &label("m=1")).unwrap()[0];
        assert_eq!(v.exit_code, None);
        assert_eq!(v.created_at, None);
        assert!(v.gpu_ids.is_empty());
        assert_eq!(v.status, "Up since 2026-11-29T09:30:06Z");
        assert_eq!(v.warnings.len(), 1, "{:?}", v.warnings);
    }
}
