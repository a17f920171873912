//! The create request: its JSON schema (unknown fields are errors) and the validation that turns
//! it into a typed [`CreateSpec`]. Nothing in a request ever becomes a docker flag: the schema has
//! no field for privileged mode, host namespaces, capabilities, devices or mounts, and every value
//! that reaches docker's argv is checked here (the image cannot start with `-`, the claim id is a
//! plain name, env and command strings carry no NUL).

use crate::docker::pull_auth::{Credential, RegistryAuth};
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

/// What each field of a create must be, in the user's words.
#[derive(Clone, Copy)]
enum Shape {
    String,
    Integer,
    Port,
    Number,
    Strings,
    Integers,
    PortMappings,
    RegistryAuth,
}

impl Shape {
    fn words(self) -> &'static str {
        match self {
            Shape::String => "a string",
            Shape::Integer => "an integer",
            Shape::Port => "a port number (1-65535)",
            Shape::Number => "a number",
            Shape::Strings => "a list of strings",
            Shape::Integers => "a list of integers",
            Shape::PortMappings => {
                "a list of objects {\"host_port\", \"container_port\", \"protocol\"}"
            }
            Shape::RegistryAuth => {
                "an object {\"server\", \"username\", \"password\" or \"identity_token\"}"
            }
        }
    }
}

const CREATE_FIELDS: &[(&str, Shape, bool)] = &[
    ("claim_id", Shape::String, true),
    ("image", Shape::String, true),
    ("gpu_ids", Shape::Integers, false),
    ("gpu_count", Shape::Integer, false),
    ("port_mappings", Shape::PortMappings, false),
    ("env_vars", Shape::Strings, false),
    ("command", Shape::Strings, false),
    ("memory_mb", Shape::Integer, false),
    ("cpus", Shape::Number, false),
    ("shm_size_mb", Shape::Integer, false),
    ("registry_auth", Shape::RegistryAuth, false),
];

const REGISTRY_AUTH_FIELDS: &[(&str, Shape, bool)] = &[
    ("server", Shape::String, false),
    ("username", Shape::String, false),
    ("password", Shape::String, false),
    ("identity_token", Shape::String, false),
];

const PORT_MAPPING_FIELDS: &[(&str, Shape, bool)] = &[
    ("host_port", Shape::Port, true),
    ("container_port", Shape::Port, true),
    ("protocol", Shape::String, false),
    ("remote_port", Shape::Integer, false),
];

/// `a string`, `an array`: what a JSON value is, in the user's words.
fn json_kind(value: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a fractional number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn is_integer(value: &serde_json::Value) -> bool {
    value.is_i64()
}

fn check_shape(field: &str, value: &serde_json::Value, shape: Shape) -> Result<(), SpecError> {
    let wrong = || {
        err(
            field,
            format!("must be {}, not {}", shape.words(), json_kind(value)),
        )
    };
    match shape {
        Shape::String => value.is_string().then_some(()).ok_or_else(wrong),
        Shape::Integer | Shape::Port => is_integer(value).then_some(()).ok_or_else(wrong),
        Shape::Number => value.is_number().then_some(()).ok_or_else(wrong),
        Shape::RegistryAuth => check_object(field, value, REGISTRY_AUTH_FIELDS, "registry_auth"),
        Shape::Strings | Shape::Integers | Shape::PortMappings => {
            let items = value.as_array().ok_or_else(wrong)?;
            for (i, item) in items.iter().enumerate() {
                let field = format!("{field}[{i}]");
                match shape {
                    Shape::Strings => check_shape(&field, item, Shape::String)?,
                    Shape::Integers => check_shape(&field, item, Shape::Integer)?,
                    _ => check_object(&field, item, PORT_MAPPING_FIELDS, "a port mapping")?,
                }
            }
            Ok(())
        }
    }
}

fn check_object(
    field: &str,
    value: &serde_json::Value,
    fields: &[(&str, Shape, bool)],
    what: &str,
) -> Result<(), SpecError> {
    let object = value.as_object().ok_or_else(|| {
        err(
            field,
            format!("{what} must be a JSON object, not {}", json_kind(value)),
        )
    })?;
    let path = |key: &str| {
        if field == "body" {
            key.to_string()
        } else {
            format!("{field}.{key}")
        }
    };
    for (key, item) in object {
        let Some((_, shape, required)) = fields.iter().find(|(name, _, _)| name == key) else {
            let known: Vec<&str> = fields.iter().map(|(name, _, _)| *name).collect();
            return Err(err(
                field,
                format!(
                    "unknown field {key:?} (the fields are {})",
                    known.join(", ")
                ),
            ));
        };
        // `null` is an absent optional field.
        if item.is_null() && !required {
            continue;
        }
        check_shape(&path(key), item, *shape)?;
    }
    for (key, _, required) in fields {
        if *required && !object.contains_key(*key) {
            return Err(err(path(key), "is required"));
        }
    }
    Ok(())
}

fn check_json_shape(value: &serde_json::Value) -> Result<(), SpecError> {
    if !value.is_object() {
        return Err(err(
            "body",
            format!("a JSON object is required, not {}", json_kind(value)),
        ));
    }
    check_object("body", value, CREATE_FIELDS, "the request")
}

/// serde's wording (`invalid type: string "x", expected u16`, `expected struct CreateRequest`)
/// in the user's: no Rust type names reach an answer.
pub fn humanize_json_error(message: &str) -> String {
    const WORDS: &[(&str, &str)] = &[
        ("expected u16", "expected a port number (1-65535)"),
        ("expected u8", "expected an integer (0-255)"),
        ("expected u32", "expected a non-negative integer"),
        ("expected u64", "expected a non-negative integer"),
        ("expected usize", "expected a non-negative integer"),
        ("expected i32", "expected an integer"),
        ("expected i64", "expected an integer"),
        ("expected f32", "expected a number"),
        ("expected f64", "expected a number"),
        ("expected a sequence", "expected a list"),
        ("expected a map", "expected a JSON object"),
        ("expected a boolean", "expected true or false"),
        ("invalid type: sequence", "invalid type: a list"),
        ("invalid type: map", "invalid type: a JSON object"),
    ];
    let mut out = message.to_string();
    // `expected struct Name` / `expected struct Name with N elements` / `expected enum Name`.
    for marker in [
        "expected struct ",
        "expected enum ",
        "expected tuple struct ",
    ] {
        while let Some(start) = out.find(marker) {
            let rest = &out[start + marker.len()..];
            let mut end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            if rest[end..].starts_with(" with ") {
                if let Some(i) = rest[end..].find(" elements") {
                    end += i + " elements".len();
                }
            }
            let what = if marker == "expected enum " {
                "expected one of the allowed values"
            } else {
                "expected a JSON object"
            };
            out = format!("{}{what}{}", &out[..start], &rest[end..]);
        }
    }
    for (rust, user) in WORDS {
        out = out.replace(rust, user);
    }
    out
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

/// Longest username or password, and identity token, in bytes.
pub const MAX_CREDENTIAL_BYTES: usize = 4096;
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Checks `registry_auth` against the image it is for. No message quotes a secret.
fn validate_registry_auth(
    auth: RegistryAuthRequest,
    image: &str,
) -> Result<RegistryAuth, SpecError> {
    let image_registry = registry_of(image);
    let server = match auth.server.as_deref() {
        None => image_registry.clone(),
        Some(server) => {
            if !valid_registry(server) {
                return Err(err(
                    "registry_auth.server",
                    format!("{server:?} is not a registry host[:port] like registry.example.com"),
                ));
            }
            let server = normalize_registry(server);
            if server != image_registry {
                return Err(err(
                    "registry_auth.server",
                    format!(
                        "{server} is not the registry of the image ({image_registry}); the \
                         credentials are used for this image's pull only"
                    ),
                ));
            }
            server
        }
    };
    let plain = |field: &str, value: &str, max: usize| {
        if value.is_empty() || value.len() > max {
            return Err(err(
                format!("registry_auth.{field}"),
                format!("must be 1 to {max} bytes"),
            ));
        }
        if value.chars().any(char::is_control) {
            return Err(err(
                format!("registry_auth.{field}"),
                "contains a control character",
            ));
        }
        Ok(value.to_string())
    };
    let username = match auth.username.as_deref() {
        None => None,
        Some(name) => {
            let name = plain("username", name, MAX_CREDENTIAL_BYTES)?;
            if name.contains(':') {
                return Err(err("registry_auth.username", "must not contain ':'"));
            }
            Some(name)
        }
    };
    let credential = match (auth.password.as_deref(), auth.identity_token.as_deref()) {
        (Some(_), Some(_)) => {
            return Err(err(
                "registry_auth",
                "give password or identity_token, not both",
            ))
        }
        (None, None) => {
            return Err(err(
                "registry_auth",
                "give password (with username) or identity_token",
            ))
        }
        (Some(password), None) => {
            if username.is_none() {
                return Err(err("registry_auth.username", "is required with a password"));
            }
            Credential::Password(plain("password", password, MAX_CREDENTIAL_BYTES)?)
        }
        (None, Some(token)) => {
            Credential::IdentityToken(plain("identity_token", token, MAX_TOKEN_BYTES)?)
        }
    };
    Ok(RegistryAuth {
        server,
        username,
        credential,
    })
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

/// `host[:port]`; host is dot-separated labels of letters, digits and inner hyphens, or an
/// IPv6 address in brackets.
fn valid_domain(domain: &str) -> bool {
    let (host, port) = split_host_port(domain);
    if let Some(port) = port {
        let port_ok =
            port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok_and(|p| p > 0);
        if !port_ok {
            return false;
        }
    }
    if let Some(inner) = host.strip_prefix('[') {
        return inner
            .strip_suffix(']')
            .is_some_and(|v6| v6.parse::<std::net::Ipv6Addr>().is_ok());
    }
    valid_host_name(host)
}

/// `host[:port]` split, an IPv6 host keeping its brackets.
fn split_host_port(domain: &str) -> (&str, Option<&str>) {
    if domain.starts_with('[') {
        return match domain.find(']') {
            Some(end) => match domain[end + 1..].strip_prefix(':') {
                Some(port) => (&domain[..=end], Some(port)),
                None => (domain, None),
            },
            None => (domain, None),
        };
    }
    match domain.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    }
}

fn valid_host_name(host: &str) -> bool {
    !host.is_empty()
        && host.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        })
}

/// `host[:port]` as an image reference's domain may be.
pub fn valid_registry(registry: &str) -> bool {
    registry.is_ascii() && registry.len() <= 255 && valid_domain(registry)
}

/// The default registry of references that name none.
pub const DEFAULT_REGISTRY: &str = "docker.io";

/// The registry an image reference is pulled from, lowercased: its domain (`host[:port]`), or
/// `docker.io` when it names none (docker's own aliases of it read as `docker.io` too).
pub fn registry_of(image: &str) -> String {
    let Some((first, _)) = image.split_once('/') else {
        return DEFAULT_REGISTRY.to_string();
    };
    if !(first.contains(['.', ':']) || first == "localhost") {
        return DEFAULT_REGISTRY.to_string();
    }
    normalize_registry(first)
}

/// `Index.Docker.IO` → `docker.io`; other hosts lowercased.
pub fn normalize_registry(registry: &str) -> String {
    let lower = registry.to_ascii_lowercase();
    match lower.as_str() {
        "index.docker.io" | "registry-1.docker.io" => DEFAULT_REGISTRY.to_string(),
        _ => lower,
    }
}

/// Refuses a registry on this host's loopback or a link-local address (`localhost`,
/// `127.0.0.1`, `[::1]`, `169.254.169.254`, and the spellings a resolver reads as those:
/// `127.1`, `2130706433`, `0x7f000001`, `0177.0.0.1`, `[::ffff:127.0.0.1]`, `0.0.0.0`): the
/// engine would reach, for a renter, services that listen only to the host itself.
pub fn check_registry_host(registry: &str) -> Result<(), String> {
    let (host, _) = split_host_port(registry);
    let host = host.to_ascii_lowercase();
    let refused = |what: &str| {
        Err(format!(
            "registry {registry} is {what}; images are pulled only from registries outside this \
             host"
        ))
    };
    let name = host.trim_end_matches('.');
    if name == "localhost"
        || name.ends_with(".localhost")
        || name == "localhost.localdomain"
        || name == "ip6-localhost"
        || name == "ip6-loopback"
    {
        return refused("this host (localhost)");
    }
    let address = if let Some(inner) = host.strip_prefix('[') {
        inner
            .strip_suffix(']')
            .and_then(|v6| v6.parse::<std::net::Ipv6Addr>().ok())
            .map(std::net::IpAddr::V6)
    } else {
        parse_ipv4_like_a_resolver(name).map(std::net::IpAddr::V4)
    };
    match address {
        Some(address) if is_local_address(address) => {
            refused(&format!("on a loopback or link-local address ({address})"))
        }
        _ => Ok(()),
    }
}

/// True for loopback, link-local and unspecified addresses (an IPv4 one inside IPv6 too).
pub fn is_local_address(address: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match address {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_link_local() || v4.octets()[0] == 0,
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_local_address(IpAddr::V4(v4));
            }
            let segments = v6.segments();
            // IPv4-compatible `::a.b.c.d` (deprecated, still parsed).
            if segments[..6].iter().all(|s| *s == 0) && !v6.is_loopback() && !v6.is_unspecified() {
                let [a, b] = segments[6].to_be_bytes();
                let [c, d] = segments[7].to_be_bytes();
                return is_local_address(IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d)));
            }
            v6.is_loopback() || v6.is_unspecified() || (segments[0] & 0xffc0) == 0xfe80
        }
    }
}

/// An IPv4 address as `inet_aton` reads it: one to four parts, each decimal, octal (`0…`) or
/// hex (`0x…`), the last filling the remaining bytes (`127.1` is 127.0.0.1, `2130706433` too).
fn parse_ipv4_like_a_resolver(host: &str) -> Option<std::net::Ipv4Addr> {
    let parts: Vec<&str> = host.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut numbers = Vec::with_capacity(parts.len());
    for part in &parts {
        let lower = part.to_ascii_lowercase();
        let value = if let Some(hex) = lower.strip_prefix("0x") {
            if hex.is_empty() {
                0
            } else {
                u64::from_str_radix(hex, 16).ok()?
            }
        } else if lower.len() > 1 && lower.starts_with('0') {
            u64::from_str_radix(&lower[1..], 8).ok()?
        } else {
            if lower.is_empty() || !lower.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            lower.parse::<u64>().ok()?
        };
        numbers.push(value);
    }
    let (last, head) = numbers.split_last()?;
    let mut address: u64 = 0;
    for (i, n) in head.iter().enumerate() {
        if *n > 255 {
            return None;
        }
        address |= n << (24 - 8 * i);
    }
    let room = 32 - 8 * head.len();
    if room < 64 && *last >= (1u64 << room) {
        return None;
    }
    address |= last;
    u32::try_from(address).ok().map(std::net::Ipv4Addr::from)
}

/// What a create may use on this host besides what the request itself allows: which
/// registries, which host ports, how many CPUs and how much memory (checked before docker is
/// asked, so a request docker would refuse is a 400 naming the field).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CreatePolicy {
    /// `docker.allowed_registries`, normalized; empty: any registry outside this host.
    pub allowed_registries: Vec<String>,
    /// `docker.host_port_range`; `None`: any port.
    pub host_port_range: Option<(u16, u16)>,
    /// The host's CPUs (`None`: unknown, not checked).
    pub host_cpus: Option<u32>,
    /// The host's memory in MiB (`None`: unknown, not checked).
    pub host_memory_mb: Option<u64>,
}

impl CreatePolicy {
    /// The policy of `docker.*` with this host's CPUs and memory.
    pub fn for_host(allowed_registries: &[String], host_port_range: Option<(u16, u16)>) -> Self {
        CreatePolicy {
            allowed_registries: allowed_registries
                .iter()
                .map(|r| normalize_registry(r))
                .collect(),
            host_port_range,
            host_cpus: host_cpu_count(),
            host_memory_mb: host_memory_mb(),
        }
    }

    /// Refuses what this host does not allow.
    pub fn check(&self, spec: &CreateSpec) -> Result<(), SpecError> {
        let registry = registry_of(&spec.image);
        check_registry_host(&registry).map_err(|m| err("image", m))?;
        if !self.allowed_registries.is_empty() && !self.allowed_registries.contains(&registry) {
            return Err(err(
                "image",
                format!(
                    "registry {registry} is not allowed on this node (docker.allowed_registries: \
                     {})",
                    self.allowed_registries.join(", ")
                ),
            ));
        }
        if let Some((low, high)) = self.host_port_range {
            for (i, port) in spec.ports.iter().enumerate() {
                if !(low..=high).contains(&port.host_port) {
                    return Err(err(
                        format!("port_mappings[{i}].host_port"),
                        format!(
                            "{} is outside the host ports containers may use ({low}-{high})",
                            port.host_port
                        ),
                    ));
                }
            }
        }
        if let (Some(cpus), Some(host)) = (spec.cpus, self.host_cpus) {
            if cpus > f64::from(host) {
                return Err(err(
                    "cpus",
                    format!("{cpus} is more than this host's {host} CPUs"),
                ));
            }
        }
        if let (Some(mb), Some(host)) = (spec.memory_mb, self.host_memory_mb) {
            if mb > host {
                return Err(err(
                    "memory_mb",
                    format!("{mb} is more than this host's {host} MiB of memory"),
                ));
            }
        }
        Ok(())
    }
}

/// The CPUs the engine counts (`/sys/devices/system/cpu/online`, e.g. `0-3,6`).
fn host_cpu_count() -> Option<u32> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online").ok()?;
    count_cpu_list(text.trim())
}

fn count_cpu_list(list: &str) -> Option<u32> {
    let mut total = 0u32;
    for part in list.split(',') {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<u32>().ok()?, b.parse::<u32>().ok()?),
            None => {
                let n = part.parse::<u32>().ok()?;
                (n, n)
            }
        };
        total = total.checked_add(last.checked_sub(first)?.checked_add(1)?)?;
    }
    (total > 0).then_some(total)
}

/// `MemTotal` of `/proc/meminfo`, in MiB.
fn host_memory_mb() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
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
                protocol: Protocol::Tcp,
                remote_port: 0,
            }]
        );
        assert!(
            spec.env.is_empty(),
            "the agent sets NVIDIA_VISIBLE_DEVICES itself"
        );
        assert_eq!(spec.container_name(), "utopia-claim-123");
    }

    #[test]
    fn remote_ports_are_optional_and_zero_lets_frps_choose() {
        let spec = parse(with(
            "port_mappings",
            json!([
                {"host_port": 8888, "container_port": 8888, "remote_port": 7005},
                {"host_port": 8889, "container_port": 8889, "remote_port": 0},
                {"host_port": 8890, "container_port": 8890},
                {"host_port": 8890, "container_port": 53, "protocol": "udp", "remote_port": 7005}
            ]),
        ))
        .unwrap();
        let remote: Vec<u16> = spec.ports.iter().map(|p| p.remote_port).collect();
        assert_eq!(remote, [7005, 0, 0, 7005]);
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
                "port_mappings[0].remote_port",
                with(
                    "port_mappings",
                    json!([{"host_port": 80, "container_port": 80, "remote_port": 65536}]),
                ),
            ),
            (
                "port_mappings[0].remote_port",
                with(
                    "port_mappings",
                    json!([{"host_port": 80, "container_port": 80, "remote_port": -2}]),
                ),
            ),
            (
                "port_mappings[0].remote_port",
                with(
                    "port_mappings",
                    json!([{"host_port": 80, "container_port": 80, "remote_port": "{{.Envs.X}}"}]),
                ),
            ),
            (
                "port_mappings[1].remote_port",
                with(
                    "port_mappings",
                    json!([
                        {"host_port": 80, "container_port": 80, "remote_port": 7005},
                        {"host_port": 81, "container_port": 81, "remote_port": 7005}
                    ]),
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
            ("claim_id", json!({"image": "busybox"})),
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
    fn type_errors_speak_the_users_words() {
        let cases = [
            (
                with(
                    "port_mappings",
                    json!([{"host_port": "80", "container_port": 80}]),
                ),
                "port_mappings[0].host_port",
                "a port number (1-65535)",
            ),
            (with("gpu_ids", json!([0.5])), "gpu_ids[0]", "an integer"),
            (with("cpus", json!("2")), "cpus", "a number"),
            (
                with("env_vars", json!("A=1")),
                "env_vars",
                "a list of strings",
            ),
            (json!([1, 2]), "body", "a JSON object"),
            (json!("x"), "body", "a JSON object"),
            (
                with("port_mappings", json!([7])),
                "port_mappings[0]",
                "a JSON object",
            ),
            (
                with(
                    "port_mappings",
                    json!([{"host_port": 1, "container_port": 2, "proto": "udp"}]),
                ),
                "port_mappings[0]",
                "unknown field \"proto\"",
            ),
            (json!({"claim_id": "c"}), "image", "is required"),
        ];
        for (body, field, words) in cases {
            let e = parse(body.clone()).unwrap_err();
            assert_eq!(e.field, field, "{body}: {e}");
            assert!(e.message.contains(words), "{body}: {e}");
            for rust in ["i64", "u16", "f64", "struct", "sequence", "CreateRequest"] {
                assert!(!e.to_string().contains(rust), "{body}: {e}");
            }
        }
        assert!(parse(with("gpu_count", serde_json::Value::Null)).is_ok());
        assert!(parse(with("port_mappings", serde_json::Value::Null)).is_ok());
        assert!(parse(with("env_vars", serde_json::Value::Null)).is_ok());
        assert_eq!(
            parse(with("image", serde_json::Value::Null))
                .unwrap_err()
                .field,
            "image"
        );
        let rewritten = humanize_json_error(
            "invalid type: sequence, expected struct CreateRequest with 10 elements at line 1",
        );
        assert_eq!(
            rewritten,
            "invalid type: a list, expected a JSON object at line 1"
        );
        assert_eq!(
            humanize_json_error("invalid type: string \"x\", expected u16"),
            "invalid type: string \"x\", expected a port number (1-65535)"
        );
    }

    #[test]
    fn registry_auth_is_checked_without_quoting_secrets() {
        let with_auth = |image: &str, auth: serde_json::Value| {
            parse(json!({"claim_id": "c", "image": image, "registry_auth": auth}))
        };
        let spec = with_auth(
            "reg.example.com:5000/team/x:1",
            json!({"username": "alice", "password": "s3cret"}),
        )
        .unwrap();
        let auth = spec.registry_auth.clone().unwrap();
        assert_eq!(auth.server, "reg.example.com:5000");
        assert!(auth.credential == Credential::Password("s3cret".into()));
        assert!(!format!("{spec:?}").contains("s3cret"));
        let hub = with_auth(
            "busybox",
            json!({"server": "index.docker.io", "identity_token": "t"}),
        )
        .unwrap();
        assert_eq!(hub.registry_auth.unwrap().server, "docker.io");
        for (auth, field) in [
            (json!({"password": "s3cret"}), "registry_auth.username"),
            (json!({"username": "alice"}), "registry_auth"),
            (
                json!({"username": "a", "password": "s3cret", "identity_token": "s3cret"}),
                "registry_auth",
            ),
            (
                json!({"server": "other.example.com", "username": "a", "password": "s3cret"}),
                "registry_auth.server",
            ),
            (
                json!({"username": "a", "password": "s3cret\nx"}),
                "registry_auth.password",
            ),
            (
                json!({"username": "a:b", "password": "s3cret"}),
                "registry_auth.username",
            ),
            (
                json!({"username": "a", "password": ""}),
                "registry_auth.password",
            ),
            (
                json!({"username": "a", "passwd": "s3cret"}),
                "registry_auth",
            ),
            (
                json!({"username": 5, "password": "s3cret"}),
                "registry_auth.username",
            ),
            (json!("alice:s3cret"), "registry_auth"),
        ] {
            let e = with_auth("reg.example.com:5000/x", auth.clone()).unwrap_err();
            assert_eq!(e.field, field, "{auth}: {e}");
            assert!(!e.to_string().contains("s3cret"), "{e}");
        }
    }

    #[test]
    fn registries_on_this_host_are_refused() {
        for local in [
            "127.0.0.1:5998/x",
            "127.0.0.1:1/x",
            "localhost/x",
            "localhost:5000/a/b:tag",
            "LOCALHOST:5000/x",
            "foo.localhost/x",
            "127.1:5000/x",
            "127.0.1/x",
            "2130706433:5000/x",
            "0x7f000001:5000/x",
            "0x7f.0.0.1:5000/x",
            "0177.0.0.1:5000/x",
            "0.0.0.0:5000/x",
            "0:5000/x",
            "169.254.169.254/x",
            "[::1]:5000/x",
            "[::1]/x",
            "[::]:5000/x",
            "[fe80::1]:5000/x",
            "[::ffff:7f00:1]:5000/x",
            "[::ffff:a9fe:a9fe]/x",
        ] {
            assert_eq!(
                validate_image(local),
                Ok(()),
                "{local} is a valid reference"
            );
            let registry = registry_of(local);
            assert!(
                check_registry_host(&registry).is_err(),
                "{local}: {registry} accepted"
            );
        }
        for remote in [
            "busybox",
            "nvidia/cuda:12",
            "registry.example.com/x",
            "10.0.0.5:5000/x",
            "192.168.1.1/x",
            "[2001:db8::1]:5000/x",
            "127.0.0.1.example.com/x",
            "my-registry:443/x",
        ] {
            assert_eq!(validate_image(remote), Ok(()), "{remote}");
            assert_eq!(
                check_registry_host(&registry_of(remote)),
                Ok(()),
                "{remote}"
            );
        }
        assert_eq!(registry_of("busybox"), "docker.io");
        assert_eq!(registry_of("nvidia/cuda:12"), "docker.io");
        assert_eq!(registry_of("Index.Docker.IO/library/x"), "docker.io");
        assert_eq!(
            registry_of("Reg.Example.com:5000/x"),
            "reg.example.com:5000"
        );
        assert_eq!(parse_ipv4_like_a_resolver("1.2.3.4.5"), None);
        assert_eq!(parse_ipv4_like_a_resolver("256.0.0.1"), None);
        assert_eq!(parse_ipv4_like_a_resolver("example"), None);
    }

    #[test]
    fn the_policy_checks_registries_ports_cpus_and_memory() {
        let policy = CreatePolicy {
            allowed_registries: vec!["docker.io".into(), "reg.example.com:5000".into()],
            host_port_range: Some((20000, 29999)),
            host_cpus: Some(2),
            host_memory_mb: Some(1024),
        };
        let check = |body: serde_json::Value| policy.check(&parse(body).unwrap());
        assert_eq!(check(base()), Ok(()));
        assert_eq!(
            check(with("image", json!("reg.example.com:5000/x"))),
            Ok(())
        );
        assert_eq!(
            check(with("image", json!("other.example.com/x")))
                .unwrap_err()
                .field,
            "image"
        );
        assert_eq!(
            check(with("image", json!("127.0.0.1:5000/x")))
                .unwrap_err()
                .field,
            "image"
        );
        let ports = |host: u16| {
            check(with(
                "port_mappings",
                json!([{"host_port": host, "container_port": 80}]),
            ))
        };
        assert_eq!(ports(20000), Ok(()));
        assert_eq!(ports(29999), Ok(()));
        assert_eq!(ports(22).unwrap_err().field, "port_mappings[0].host_port");
        assert!(ports(30000).is_err());
        assert_eq!(check(with("cpus", json!(2.0))), Ok(()));
        assert_eq!(check(with("cpus", json!(2.5))).unwrap_err().field, "cpus");
        assert_eq!(check(with("memory_mb", json!(1024))), Ok(()));
        assert_eq!(
            check(with("memory_mb", json!(1025))).unwrap_err().field,
            "memory_mb"
        );
        let open = CreatePolicy::default();
        assert_eq!(
            open.check(&parse(with("image", json!("any.example.com/x"))).unwrap()),
            Ok(())
        );
        assert!(open
            .check(&parse(with("image", json!("localhost:5000/x"))).unwrap())
            .is_err());
        assert_eq!(count_cpu_list("0-3,6"), Some(5));
        assert_eq!(count_cpu_list("0"), Some(1));
        assert_eq!(count_cpu_list("x"), None);
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
