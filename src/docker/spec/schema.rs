//! The create's JSON shape, checked before serde reads it: unknown fields, missing required
//! ones and values of the wrong kind are refused in the user's words.

use super::{err, SpecError};

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

pub(super) fn check_json_shape(value: &serde_json::Value) -> Result<(), SpecError> {
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
