//! The create request: its JSON schema (unknown fields are errors) and the validation that turns
//! it into a typed [`CreateSpec`]. Nothing in a request ever becomes a docker flag: the schema has
//! no field for privileged mode, host namespaces, capabilities, devices or mounts, and every value
//! that reaches docker's argv is checked here (the image cannot start with `-`, the claim id is a
//! plain name, env and command strings carry no NUL).
//!
//! Its parts: [`schema`] checks the JSON's shape (field names and kinds, in the user's words)
//! before serde reads it; [`image`] checks image references and the registries they name;
//! [`registry_auth`] checks a create's pull credentials; [`policy`] is what this host allows
//! (registries, host ports, CPUs, memory).

mod image;
mod policy;
mod registry_auth;
mod schema;
#[cfg(test)]
mod tests;

pub use image::{
    check_registry_host, is_local_address, normalize_registry, registry_of, valid_registry,
    DEFAULT_REGISTRY,
};
pub use policy::CreatePolicy;

use crate::docker::pull_auth::RegistryAuth;
use crate::names::is_name;
use image::validate_image;
use registry_auth::validate_registry_auth;
use schema::{check_json_shape, humanize_json_error};
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
    #[serde(default)]
    pub registry_auth: Option<RegistryAuthRequest>,
}

/// `registry_auth` as it arrives: credentials for this create's image pull only.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryAuthRequest {
    #[serde(default)]
    pub server: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub identity_token: Option<String>,
}

/// Never prints the secrets.
impl fmt::Debug for RegistryAuthRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RegistryAuthRequest { <redacted> }")
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortMappingRequest {
    pub host_port: i64,
    pub container_port: i64,
    #[serde(default)]
    pub protocol: Option<String>,
    /// The port asked for on frps; absent or 0: frps chooses.
    #[serde(default)]
    pub remote_port: Option<i64>,
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
    /// The port asked for on frps when the tunnel publishes it; 0: frps chooses.
    pub remote_port: u16,
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
    /// Credentials for this image's pull only (never stored, labelled or logged).
    pub registry_auth: Option<RegistryAuth>,
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

pub(super) fn err(field: impl Into<String>, message: impl Into<String>) -> SpecError {
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
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| err("body", format!("invalid JSON: {e}")))?;
    check_json_shape(&value)?;
    // `null` is an absent optional field (the shape check refused it for required ones).
    let mut value = value;
    if let Some(object) = value.as_object_mut() {
        object.retain(|_, v| !v.is_null());
        if let Some(auth) = object
            .get_mut("registry_auth")
            .and_then(serde_json::Value::as_object_mut)
        {
            auth.retain(|_, v| !v.is_null());
        }
    }
    let request: CreateRequest = serde_json::from_value(value)
        .map_err(|e| err("body", humanize_json_error(&e.to_string())))?;
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
    let mut remote_ports = BTreeSet::new();
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
        let remote_port = match mapping.remote_port {
            None | Some(0) => 0,
            Some(value) => port(value, "remote_port")?,
        };
        let mapping = PortMapping {
            host_port: port(mapping.host_port, "host_port")?,
            container_port: port(mapping.container_port, "container_port")?,
            protocol,
            remote_port,
        };
        if remote_port != 0 && !remote_ports.insert((remote_port, protocol)) {
            return Err(err(
                format!("port_mappings[{i}].remote_port"),
                format!(
                    "remote port {remote_port}/{} is asked for twice",
                    protocol.as_str()
                ),
            ));
        }
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

    let registry_auth = match request.registry_auth {
        None => None,
        Some(auth) => Some(validate_registry_auth(auth, &request.image)?),
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
        registry_auth,
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
