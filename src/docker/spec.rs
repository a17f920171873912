//! The create request: its JSON schema (unknown fields are errors) and the validation that turns
//! it into a typed [`CreateSpec`]. Nothing in a request ever becomes a docker flag: the schema has
//! no field for privileged mode, host namespaces, capabilities, devices or mounts, and every value
//! that reaches docker's argv is checked here (the image cannot start with `-`, the claim id is a
//! plain name, env and command strings carry no NUL).

use crate::names::is_name;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::fmt;

/// Most env entries, command words, port mappings a request may carry.
pub const MAX_ENV_VARS: usize = 512;
pub const MAX_COMMAND_WORDS: usize = 512;
pub const MAX_PORT_MAPPINGS: usize = 64;
/// Longest env entry or command word, in bytes (docker reads env-file lines of up to 64 KiB).
pub const MAX_STRING_BYTES: usize = 32 * 1024;

/// The variable through which the NVIDIA container runtime picks a container's GPUs.
pub const VISIBLE_DEVICES: &str = "NVIDIA_VISIBLE_DEVICES";

/// Variables through which the NVIDIA container toolkit hands a container host devices beyond
/// its GPUs (MIG management, IMEX channels, GPUDirect Storage, InfiniBand, NVSwitch, GDRCopy).
/// A request may not set them: which devices a renter gets is the agent's decision.
pub const DEVICE_GRANTING_VARIABLES: &[&str] = &[
    "NVIDIA_MIG_CONFIG_DEVICES",
    "NVIDIA_MIG_MONITOR_DEVICES",
    "NVIDIA_IMEX_CHANNELS",
    "NVIDIA_GDS",
    "NVIDIA_MOFED",
    "NVIDIA_NVSWITCH",
    "NVIDIA_GDRCOPY",
];

/// `POST /api/v1/containers` as it arrives.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    pub claim_id: String,
    pub image: String,
    #[serde(default)]
    pub gpu_ids: Option<Vec<i64>>,
    #[serde(default)]
    pub gpu_count: Option<i64>,
    #[serde(default)]
    pub port_mappings: Vec<PortMappingRequest>,
    #[serde(default)]
    pub env_vars: Vec<String>,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub memory_mb: Option<i64>,
    #[serde(default)]
    pub cpus: Option<f64>,
    #[serde(default)]
    pub shm_size_mb: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortMappingRequest {
    pub host_port: i64,
    pub container_port: i64,
    #[serde(default)]
    pub protocol: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }

    pub fn parse(text: &str) -> Option<Protocol> {
        match text {
            "tcp" => Some(Protocol::Tcp),
            "udp" => Some(Protocol::Udp),
            _ => None,
        }
    }
}

/// One published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
}

/// Which GPUs a create asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuRequest {
    None,
    /// These NVML indices, in this order.
    Ids(Vec<u32>),
    /// Any this many free GPUs; the ledger picks.
    Count(u32),
}

/// A validated create request.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateSpec {
    pub claim_id: String,
    pub image: String,
    pub gpus: GpuRequest,
    pub ports: Vec<PortMapping>,
    /// `(KEY, VALUE)`; never `NVIDIA_VISIBLE_DEVICES`, which the agent alone sets.
    pub env: Vec<(String, String)>,
    pub command: Vec<String>,
    pub memory_mb: Option<u64>,
    pub cpus: Option<f64>,
    pub shm_size_mb: Option<u64>,
    /// The `NVIDIA_VISIBLE_DEVICES` value the request carried, checked against the GPUs the
    /// ledger assigns (see [`check_visible_devices`]).
    pub requested_visible_devices: Option<String>,
}

impl CreateSpec {
    /// The container name: `utopia-<claim_id>`.
    pub fn container_name(&self) -> String {
        container_name(&self.claim_id)
    }
}

pub fn container_name(claim_id: &str) -> String {
    format!("utopia-{claim_id}")
}

/// Why a request is refused; `field` names the JSON field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for SpecError {}

fn err(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError {
        field: field.into(),
        message: message.into(),
    }
}

/// Parses and validates a request body.
pub fn parse_create(body: &[u8]) -> Result<CreateSpec, SpecError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(err("body", "a JSON object is required"));
    }
    let request: CreateRequest =
        serde_json::from_slice(body).map_err(|e| err("body", format!("invalid JSON: {e}")))?;
    validate(request)
}

/// Validates a parsed request.
pub fn validate(request: CreateRequest) -> Result<CreateSpec, SpecError> {
    if !valid_claim_id(&request.claim_id) {
        return Err(err(
            "claim_id",
            format!(
                "{:?} must match ^[A-Za-z0-9][A-Za-z0-9_.-]{{0,63}}$ and not contain \"..\"",
                request.claim_id
            ),
        ));
    }
    validate_image(&request.image).map_err(|m| err("image", m))?;

    let gpus = match (request.gpu_ids, request.gpu_count) {
        (Some(_), Some(_)) => {
            return Err(err(
                "gpu_count",
                "give either gpu_ids or gpu_count, not both",
            ))
        }
        (Some(ids), None) => {
            let mut seen = BTreeSet::new();
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                let id = u32::try_from(id)
                    .ok()
                    .filter(|i| *i < 1024)
                    .ok_or_else(|| err("gpu_ids", format!("{id} is not a GPU index")))?;
                if !seen.insert(id) {
                    return Err(err("gpu_ids", format!("GPU {id} is listed twice")));
                }
                out.push(id);
            }
            if out.is_empty() {
                GpuRequest::None
            } else {
                GpuRequest::Ids(out)
            }
        }
        (None, Some(count)) => match u32::try_from(count) {
            Ok(0) => GpuRequest::None,
            Ok(n) if n <= 1024 => GpuRequest::Count(n),
            _ => return Err(err("gpu_count", format!("{count} is not a GPU count"))),
        },
        (None, None) => GpuRequest::None,
    };

    if request.port_mappings.len() > MAX_PORT_MAPPINGS {
        return Err(err(
            "port_mappings",
            format!("at most {MAX_PORT_MAPPINGS} mappings"),
        ));
    }
    let mut ports = Vec::new();
    let mut host_ports = BTreeSet::new();
    for (i, mapping) in request.port_mappings.iter().enumerate() {
        let port = |value: i64, name: &str| {
            u16::try_from(value).ok().filter(|p| *p > 0).ok_or_else(|| {
                err(
                    format!("port_mappings[{i}].{name}"),
                    format!("{value} is not a port (1-65535)"),
                )
            })
        };
        let protocol = match mapping.protocol.as_deref() {
            None => Protocol::Tcp,
            Some(text) => Protocol::parse(text).ok_or_else(|| {
                err(
                    format!("port_mappings[{i}].protocol"),
                    format!("{text:?} is not tcp or udp"),
                )
            })?,
        };
        let mapping = PortMapping {
            host_port: port(mapping.host_port, "host_port")?,
            container_port: port(mapping.container_port, "container_port")?,
            protocol,
        };
        if !host_ports.insert((mapping.host_port, protocol)) {
            return Err(err(
                format!("port_mappings[{i}].host_port"),
                format!(
                    "host port {}/{} is mapped twice",
                    mapping.host_port,
                    protocol.as_str()
                ),
            ));
        }
        ports.push(mapping);
    }

    if request.env_vars.len() > MAX_ENV_VARS {
        return Err(err("env_vars", format!("at most {MAX_ENV_VARS} entries")));
    }
    let mut env = Vec::new();
    let mut requested_visible_devices = None;
    for (i, entry) in request.env_vars.iter().enumerate() {
        let field = format!("env_vars[{i}]");
        let (key, value) = entry.split_once('=').ok_or_else(|| {
            err(
                &field,
                "must be KEY=VALUE (a bare KEY would copy the agent's own environment)",
            )
        })?;
        if !valid_env_key(key) {
            return Err(err(
                &field,
                format!("{key:?} is not a variable name ^[A-Za-z_][A-Za-z0-9_]*$"),
            ));
        }
        if entry.len() > MAX_STRING_BYTES {
            return Err(err(&field, format!("longer than {MAX_STRING_BYTES} bytes")));
        }
        // The env file docker reads is line-based: a line break would start a new variable.
        if value.contains(['\0', '\n', '\r']) {
            return Err(err(&field, "the value contains NUL or a line break"));
        }
        if DEVICE_GRANTING_VARIABLES.contains(&key) {
            return Err(err(
                &field,
                format!(
                    "{key} would hand the container host devices beyond its GPUs; the agent \
                     alone decides which devices a container gets"
                ),
            ));
        }
        if key == VISIBLE_DEVICES {
            if requested_visible_devices.is_some() {
                return Err(err(&field, format!("{VISIBLE_DEVICES} is set twice")));
            }
            requested_visible_devices = Some(value.to_string());
            continue;
        }
        env.push((key.to_string(), value.to_string()));
    }

    if request.command.len() > MAX_COMMAND_WORDS {
        return Err(err("command", format!("at most {MAX_COMMAND_WORDS} words")));
    }
    for (i, word) in request.command.iter().enumerate() {
        if word.contains('\0') {
            return Err(err(format!("command[{i}]"), "contains NUL"));
        }
        if word.len() > MAX_STRING_BYTES {
            return Err(err(
                format!("command[{i}]"),
                format!("longer than {MAX_STRING_BYTES} bytes"),
            ));
        }
    }

    let memory_mb = match request.memory_mb {
        None => None,
        // Docker refuses less than 6 MiB.
        Some(mb) if (6..=16 * 1024 * 1024).contains(&mb) => Some(mb as u64),
        Some(mb) => {
            return Err(err(
                "memory_mb",
                format!("{mb} is not between 6 and 16777216"),
            ))
        }
    };
    let cpus = match request.cpus {
        None => None,
        Some(c) if c.is_finite() && (0.01..=4096.0).contains(&c) => Some(c),
        Some(c) => return Err(err("cpus", format!("{c} is not between 0.01 and 4096"))),
    };
    let shm_size_mb = match request.shm_size_mb {
        None => None,
        Some(mb) if (1..=16 * 1024 * 1024).contains(&mb) => Some(mb as u64),
        Some(mb) => {
            return Err(err(
                "shm_size_mb",
                format!("{mb} is not between 1 and 16777216"),
            ))
        }
    };

    let spec = CreateSpec {
        claim_id: request.claim_id,
        image: request.image,
        gpus,
        ports,
        env,
        command: request.command,
        memory_mb,
        cpus,
        shm_size_mb,
        requested_visible_devices,
    };
    // With explicit GPU ids the check can be made now; with gpu_count it waits for the ledger.
    match &spec.gpus {
        GpuRequest::Ids(ids) => check_visible_devices(&spec, ids)?,
        GpuRequest::None => check_visible_devices(&spec, &[])?,
        GpuRequest::Count(_) => {
            if let Some(value) = &spec.requested_visible_devices {
                return Err(err(
                    "env_vars",
                    format!(
                        "{VISIBLE_DEVICES}={value:?} cannot be combined with gpu_count: the agent \
                         picks the GPUs and sets {VISIBLE_DEVICES} itself"
                    ),
                ));
            }
        }
    }
    Ok(spec)
}

/// The agent alone decides which GPUs a container sees: a request's `NVIDIA_VISIBLE_DEVICES`
/// must name exactly the assigned GPUs (`void` or `none` when there are none).
pub fn check_visible_devices(spec: &CreateSpec, assigned: &[u32]) -> Result<(), SpecError> {
    let Some(value) = &spec.requested_visible_devices else {
        return Ok(());
    };
    let wanted: BTreeSet<u32> = assigned.iter().copied().collect();
    let matches = if wanted.is_empty() {
        matches!(value.as_str(), "void" | "none" | "")
    } else {
        let mut given = BTreeSet::new();
        let parsed = value.split(',').all(|part| {
            let part = part.trim();
            !part.is_empty()
                && part.bytes().all(|b| b.is_ascii_digit())
                && part.parse::<u32>().is_ok_and(|n| given.insert(n))
        });
        parsed && given == wanted
    };
    if matches {
        Ok(())
    } else {
        let assigned_text = if assigned.is_empty() {
            "none (void)".to_string()
        } else {
            join_ids(assigned)
        };
        Err(err(
            "env_vars",
            format!(
                "{VISIBLE_DEVICES}={value:?} differs from the GPUs assigned to the container \
                 ({assigned_text}); the agent alone decides which GPUs a container sees"
            ),
        ))
    }
}

/// `0,1` for `[0, 1]`.
pub fn join_ids(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

/// `^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`, and no `..` (claim ids end up in names and labels;
/// nothing that looks like a path walks anywhere).
pub fn valid_claim_id(claim: &str) -> bool {
    is_name(claim, 64) && claim.as_bytes()[0].is_ascii_alphanumeric() && !claim.contains("..")
}

fn valid_env_key(key: &str) -> bool {
    let bytes = key.as_bytes();
    !bytes.is_empty()
        && (bytes[0].is_ascii_alphabetic() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_')
}

/// Checks an image reference against docker's reference grammar
/// (`[domain[:port]/]path[:tag][@digest]`, see distribution/reference's regexp.go).
pub fn validate_image(image: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("{image:?} is not a docker image reference: {why}"));
    if image.is_empty() {
        return bad("empty");
    }
    if image.len() > 512 || !image.is_ascii() {
        return bad("too long or not ASCII");
    }
    let (rest, digest) = match image.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (image, None),
    };
    if let Some(digest) = digest {
        if !valid_digest(digest) {
            return bad("malformed digest");
        }
    }
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(tag) = tag {
        let tag_ok = is_name(tag, 128)
            && (tag.as_bytes()[0].is_ascii_alphanumeric() || tag.as_bytes()[0] == b'_');
        if !tag_ok {
            return bad("malformed tag");
        }
    }
    if name.is_empty() || name.len() > 255 {
        return bad("the name must be 1 to 255 characters");
    }
    let mut components: Vec<&str> = name.split('/').collect();
    if components.len() > 1 {
        let first = components[0];
        if first.contains(['.', ':']) || first == "localhost" {
            if !valid_domain(first) {
                return bad("malformed registry host");
            }
            components.remove(0);
        }
    }
    if components.iter().all(|c| valid_path_component(c)) {
        Ok(())
    } else {
        bad("path components are lowercase letters and digits separated by ., _, __ or -")
    }
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
fn valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    if bytes.is_empty() {
        return false;
    }
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut i = 0;
    loop {
        let start = i;
        while i < bytes.len() && alnum(bytes[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == bytes.len() {
            return true;
        }
        let sep_start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &component[sep_start..i];
        let sep_ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|b| b == b'-');
        if !sep_ok || i == bytes.len() {
            return false;
        }
    }
}

/// `host[:port]`; host is dot-separated labels of letters, digits and inner hyphens.
fn valid_domain(domain: &str) -> bool {
    let (host, port) = match domain.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    };
    if let Some(port) = port {
        let port_ok =
            port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok_and(|p| p > 0);
        if !port_ok {
            return false;
        }
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        })
}

/// `algorithm:hex` as the engine accepts it: sha256, sha384 or sha512 with exactly as many
/// lowercase hex digits (the reference grammar alone lets through digests every pull refuses).
fn valid_digest(digest: &str) -> bool {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return false;
    };
    let length = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return false,
    };
    hex.len() == length
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: serde_json::Value) -> Result<CreateSpec, SpecError> {
        parse_create(value.to_string().as_bytes())
    }

    fn base() -> serde_json::Value {
        json!({"claim_id": "claim-123", "image": "nvidia/cuda:11.8-runtime-ubuntu20.04"})
    }

    fn with(key: &str, value: serde_json::Value) -> serde_json::Value {
        let mut b = base();
        b[key] = value;
        b
    }

    #[test]
    fn the_original_designs_example_is_accepted() {
        let spec = parse(json!({
            "claim_id": "claim-123",
            "image": "nvidia/cuda:11.8-runtime-ubuntu20.04",
            "gpu_ids": [0, 1],
            "port_mappings": [{"host_port": 8888, "container_port": 8888}],
            "env_vars": ["NVIDIA_VISIBLE_DEVICES=0,1"],
            "command": ["/bin/bash", "-c", "sleep infinity"]
        }))
        .unwrap();
        assert_eq!(spec.gpus, GpuRequest::Ids(vec![0, 1]));
        assert_eq!(
            spec.ports,
            vec![PortMapping {
                host_port: 8888,
                container_port: 8888,
                protocol: Protocol::Tcp
            }]
        );
        assert!(
            spec.env.is_empty(),
            "the agent sets NVIDIA_VISIBLE_DEVICES itself"
        );
        assert_eq!(spec.container_name(), "utopia-claim-123");
    }

    #[test]
    fn optional_fields() {
        let spec = parse(json!({
            "claim_id": "c", "image": "busybox", "gpu_count": 2,
            "port_mappings": [{"host_port": 5353, "container_port": 53, "protocol": "udp"}],
            "env_vars": ["A=1", "B=", "C=x=y"],
            "memory_mb": 1024, "cpus": 1.5, "shm_size_mb": 8192
        }))
        .unwrap();
        assert_eq!(spec.gpus, GpuRequest::Count(2));
        assert_eq!(spec.ports[0].protocol, Protocol::Udp);
        assert_eq!(
            spec.env,
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "".into()),
                ("C".into(), "x=y".into())
            ]
        );
        assert_eq!(
            (spec.memory_mb, spec.cpus, spec.shm_size_mb),
            (Some(1024), Some(1.5), Some(8192))
        );
    }

    #[test]
    fn injection_corpus_is_rejected() {
        let cases = [
            ("image", with("image", json!("--privileged"))),
            ("image", with("image", json!("-v/:/host"))),
            ("image", with("image", json!("busybox --privileged"))),
            ("image", with("image", json!(""))),
            ("image", with("image", json!("Busybox"))),
            ("env_vars[0]", with("env_vars", json!(["A=1\nB=2"]))),
            ("env_vars[0]", with("env_vars", json!(["A=1\r"]))),
            ("env_vars[0]", with("env_vars", json!(["A=\u{0}"]))),
            ("env_vars[0]", with("env_vars", json!(["HOME"]))),
            ("env_vars[0]", with("env_vars", json!(["-e=1"]))),
            ("env_vars[0]", with("env_vars", json!(["1A=1"]))),
            (
                "env_vars",
                with("env_vars", json!(["NVIDIA_VISIBLE_DEVICES=all"])),
            ),
            (
                "env_vars[0]",
                with("env_vars", json!(["NVIDIA_MOFED=enabled"])),
            ),
            (
                "env_vars[1]",
                with("env_vars", json!(["A=1", "NVIDIA_IMEX_CHANNELS=all"])),
            ),
            (
                "env_vars[0]",
                with("env_vars", json!(["NVIDIA_MIG_CONFIG_DEVICES=all"])),
            ),
            ("claim_id", with("claim_id", json!("a/b"))),
            ("claim_id", with("claim_id", json!(".."))),
            ("claim_id", with("claim_id", json!("a..b"))),
            ("claim_id", with("claim_id", json!("-x"))),
            ("claim_id", with("claim_id", json!(""))),
            ("claim_id", with("claim_id", json!("x".repeat(65)))),
            (
                "port_mappings[0].host_port",
                with(
                    "port_mappings",
                    json!([{"host_port": 0, "container_port": 80}]),
                ),
            ),
            (
                "port_mappings[0].host_port",
                with(
                    "port_mappings",
                    json!([{"host_port": 70000, "container_port": 80}]),
                ),
            ),
            (
                "port_mappings[0].container_port",
                with(
                    "port_mappings",
                    json!([{"host_port": 80, "container_port": -1}]),
                ),
            ),
            (
                "port_mappings[1].host_port",
                with(
                    "port_mappings",
                    json!([{"host_port": 80, "container_port": 80}, {"host_port": 80, "container_port": 81}]),
                ),
            ),
            (
                "port_mappings[0].protocol",
                with(
                    "port_mappings",
                    json!([{"host_port": 80, "container_port": 80, "protocol": "sctp"}]),
                ),
            ),
            ("gpu_ids", with("gpu_ids", json!([0, 0]))),
            ("gpu_ids", with("gpu_ids", json!([-1]))),
            ("command[0]", with("command", json!(["a\u{0}b"]))),
            ("body", with("privileged", json!(true))),
            ("body", with("volumes", json!(["/:/host"]))),
            ("body", with("network_mode", json!("host"))),
            ("body", json!({"image": "busybox"})),
            ("body", json!([])),
            ("memory_mb", with("memory_mb", json!(1))),
            ("cpus", with("cpus", json!(0))),
            ("shm_size_mb", with("shm_size_mb", json!(0))),
        ];
        for (field, body) in cases {
            match parse(body.clone()) {
                Err(e) => assert_eq!(e.field, field, "{body}: {e}"),
                Ok(spec) => panic!("accepted {body}: {spec:?}"),
            }
        }
        let unknown = parse(with("privileged", json!(true))).unwrap_err();
        assert!(unknown.message.contains("privileged"), "{unknown}");
        let both = parse(json!({"claim_id":"c","image":"b","gpu_ids":[0],"gpu_count":1}));
        assert_eq!(both.unwrap_err().field, "gpu_count");
        let count_and_env = parse(json!({"claim_id":"c","image":"b","gpu_count":1,
            "env_vars":["NVIDIA_VISIBLE_DEVICES=0"]}));
        assert_eq!(count_and_env.unwrap_err().field, "env_vars");
    }

    #[test]
    fn visible_devices_must_match_the_assigned_gpus() {
        let ok = |env: &str, ids: serde_json::Value| {
            parse(json!({"claim_id":"c","image":"b","gpu_ids":ids,"env_vars":[env]}))
        };
        assert!(ok("NVIDIA_VISIBLE_DEVICES=0,1", json!([0, 1])).is_ok());
        assert!(ok("NVIDIA_VISIBLE_DEVICES=1,0", json!([0, 1])).is_ok());
        assert!(ok("NVIDIA_VISIBLE_DEVICES=0", json!([0, 1])).is_err());
        assert!(ok("NVIDIA_VISIBLE_DEVICES=0,1,2", json!([0, 1])).is_err());
        assert!(ok("NVIDIA_VISIBLE_DEVICES=all", json!([0, 1])).is_err());
        assert!(ok("NVIDIA_VISIBLE_DEVICES=0,0,1", json!([0, 1])).is_err());
        assert!(ok("NVIDIA_VISIBLE_DEVICES=GPU-1", json!([0])).is_err());
        assert!(ok("NVIDIA_VISIBLE_DEVICES=void", json!([])).is_ok());
        assert!(ok("NVIDIA_VISIBLE_DEVICES=0", json!([])).is_err());
        assert!(ok("NVIDIA_VISIBLE_DEVICES=all", json!([])).is_err());
        let twice = parse(json!({"claim_id":"c","image":"b","gpu_ids":[0],
            "env_vars":["NVIDIA_VISIBLE_DEVICES=0","NVIDIA_VISIBLE_DEVICES=0"]}));
        assert!(twice.is_err());
    }

    #[test]
    fn image_references() {
        for good in [
            "busybox",
            "utopia-test-busybox:latest",
            "nvidia/cuda:11.8-runtime-ubuntu20.04",
            "localhost:5000/a/b:tag",
            "registry.example.com/team/img",
            "my-registry:443/x",
            "a__b/c--d/e.f_g",
            "busybox@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "busybox:1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "localhost:65535/x",
        ] {
            assert_eq!(validate_image(good), Ok(()), "{good}");
        }
        for bad in [
            "-v/:/host",
            "--privileged",
            "UPPER",
            "a b",
            "a/",
            "/a",
            "a//b",
            "a:",
            "a:-tag",
            "a___b",
            "a.",
            ".a",
            "a@sha256:12",
            "a@",
            "-host.com/x",
            "host.com:port/x",
            "ünicode",
            "a\nb",
            // What docker's grammar lets through but the engine refuses when pulling: a port
            // that is not one, a digest of the wrong length or an unknown algorithm.
            "localhost:99999/x",
            "localhost:0/x",
            "busybox@sha256:0123456789abcdef0123456789abcdef",
            "busybox@sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef",
            "busybox@md5:0123456789abcdef0123456789abcdef",
        ] {
            assert!(validate_image(bad).is_err(), "{bad}");
        }
    }
}
