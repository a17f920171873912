//! The labels the agent sets on every container it creates (besides the managed marker), from
//! which the container table is rebuilt after a restart: written by [`encode`] into `docker
//! run`'s argv, read back by [`decode`] from `docker container inspect`. One place, so that
//! what is written is always what is read.

use crate::docker::spec::{join_ids, PortMapping, Protocol};
use std::collections::BTreeMap;

pub const LABEL_CLAIM_ID: &str = "io.utopia.claim_id";
pub const LABEL_GPU_IDS: &str = "io.utopia.gpu_ids";
pub const LABEL_GPU_UUIDS: &str = "io.utopia.gpu_uuids";
pub const LABEL_PORTS: &str = "io.utopia.ports";

/// What the agent asked for when it created a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerLabels {
    pub claim_id: String,
    pub gpu_ids: Vec<u32>,
    pub gpu_uuids: Vec<String>,
    pub ports: Vec<PortMapping>,
}

/// The `key=value` labels (`--label` values) that record `labels`.
pub fn encode(labels: &ContainerLabels) -> Vec<String> {
    let ports: Vec<String> = labels.ports.iter().map(encode_port).collect();
    vec![
        format!("{LABEL_CLAIM_ID}={}", labels.claim_id),
        format!("{LABEL_GPU_IDS}={}", join_ids(&labels.gpu_ids)),
        format!("{LABEL_GPU_UUIDS}={}", labels.gpu_uuids.join(",")),
        format!("{LABEL_PORTS}={}", ports.join(",")),
    ]
}

/// Reads the labels back; `None` without a claim id. Entries that cannot be read are left out,
/// each with a warning for the container's view.
pub fn decode(labels: &BTreeMap<String, String>) -> Option<(ContainerLabels, Vec<String>)> {
    let claim_id = labels.get(LABEL_CLAIM_ID)?.clone();
    let list = |key: &str| -> Vec<String> {
        labels
            .get(key)
            .map(|v| {
                v.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut warnings = Vec::new();
    let gpu_ids = list(LABEL_GPU_IDS)
        .iter()
        .filter_map(|s| {
            let parsed = s.parse().ok();
            if parsed.is_none() {
                warnings.push(format!("unreadable GPU id {s:?} in label {LABEL_GPU_IDS}"));
            }
            parsed
        })
        .collect();
    let ports = list(LABEL_PORTS)
        .iter()
        .filter_map(|s| {
            let parsed = decode_port(s);
            if parsed.is_none() {
                warnings.push(format!("unreadable port {s:?} in label {LABEL_PORTS}"));
            }
            parsed
        })
        .collect();
    let decoded = ContainerLabels {
        claim_id,
        gpu_ids,
        gpu_uuids: list(LABEL_GPU_UUIDS),
        ports,
    };
    Some((decoded, warnings))
}

/// What a container created with `labels` shows once its labels are read back (by [`decode`],
/// as `docker container inspect` would hand them over), with its warnings: a view built from
/// this right after `docker run` is the one a later inspect gives.
pub fn read_back(labels: &ContainerLabels) -> (ContainerLabels, Vec<String>) {
    let written: BTreeMap<String, String> = encode(labels)
        .iter()
        .filter_map(|label| label.split_once('='))
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect();
    // `encode` always writes the claim id, which is all `decode` needs.
    decode(&written).unwrap_or_else(|| (labels.clone(), Vec::new()))
}

/// `8080:80/tcp`, or `8080:80/tcp@7005` with a remote port on frps.
pub fn encode_port(port: &PortMapping) -> String {
    let mut text = format!(
        "{}:{}/{}",
        port.host_port,
        port.container_port,
        port.protocol.as_str()
    );
    if port.remote_port != 0 {
        text.push_str(&format!("@{}", port.remote_port));
    }
    text
}

/// Parses [`encode_port`]'s form back (labels without `@` are from before remote ports).
pub fn decode_port(text: &str) -> Option<PortMapping> {
    let (text, remote) = match text.split_once('@') {
        Some((text, remote)) => (text, remote.parse().ok().filter(|p| *p > 0)?),
        None => (text, 0),
    };
    let (ports, protocol) = text.split_once('/')?;
    let (host, container) = ports.split_once(':')?;
    Some(PortMapping {
        host_port: host.parse().ok().filter(|p| *p > 0)?,
        container_port: container.parse().ok().filter(|p| *p > 0)?,
        protocol: Protocol::parse(protocol)?,
        remote_port: remote,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_labels_round_trip() {
        let m = PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: Protocol::Udp,
            remote_port: 0,
        };
        assert_eq!(encode_port(&m), "8080:80/udp");
        assert_eq!(decode_port(&encode_port(&m)), Some(m));
        assert_eq!(decode_port("0:80/tcp"), None);
        let remote = PortMapping {
            remote_port: 7005,
            ..m
        };
        assert_eq!(encode_port(&remote), "8080:80/udp@7005");
        assert_eq!(decode_port("8080:80/udp@7005"), Some(remote));
        for bad in [
            "8080:80/udp@0",
            "8080:80/udp@",
            "8080:80/udp@70000",
            "8080:80/udp@x",
        ] {
            assert_eq!(decode_port(bad), None, "{bad}");
        }
        assert_eq!(decode_port("1:80/sctp"), None);
    }

    #[test]
    fn what_is_encoded_is_decoded() {
        let labels = ContainerLabels {
            claim_id: "claim-1".into(),
            gpu_ids: vec![0, 3],
            gpu_uuids: vec!["GPU-a".into(), "GPU-b".into()],
            ports: vec![PortMapping {
                host_port: 8888,
                container_port: 80,
                protocol: Protocol::Tcp,
                remote_port: 0,
            }],
        };
        let map: BTreeMap<String, String> = encode(&labels)
            .iter()
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect();
        assert_eq!(decode(&map), Some((labels, vec![])));
        assert_eq!(decode(&BTreeMap::new()), None, "no claim id: not ours");
    }
}
