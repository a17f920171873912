//! What the platform's registration answer gives the node besides its id: a per-node API token
//! and how the agent API is to be published on frps. Parsed here, strictly (the same parser
//! reads the registration answer and the record kept beside the identity file), and published
//! in the snapshot: the API reads the token, the frp supervisor the proxy.

use crate::names::{has_template_marker, is_name};
use serde_json::{Map, Value};
use std::fmt;

/// Shortest `api_token` accepted (as `agent_api.auth_token`).
pub const MIN_API_TOKEN_LEN: usize = crate::config::MIN_AUTH_TOKEN_LEN;
/// Longest `api_token` accepted.
pub const MAX_API_TOKEN_LEN: usize = 1024;
/// Longest stcp `secret_key` accepted.
pub const MAX_SECRET_KEY_LEN: usize = 256;

/// The platform's token for the agent API. Its `Debug` never shows it; it is serialized only
/// into the registration record (mode 0600).
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ApiToken(String);

impl ApiToken {
    /// Accepts a token of [`MIN_API_TOKEN_LEN`]..=[`MAX_API_TOKEN_LEN`] printable ASCII
    /// characters (it travels in an `Authorization` header). The reason never quotes it.
    pub fn parse(value: &str) -> Result<ApiToken, String> {
        if !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(
                "api_token may only contain printable ASCII characters without spaces".to_string(),
            );
        }
        if value.len() < MIN_API_TOKEN_LEN || value.len() > MAX_API_TOKEN_LEN {
            return Err(format!(
                "api_token is {} characters long (between {MIN_API_TOKEN_LEN} and \
                 {MAX_API_TOKEN_LEN} are accepted)",
                value.len()
            ));
        }
        Ok(ApiToken(value.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ApiToken {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        ApiToken::parse(&value)
    }
}

impl From<ApiToken> for String {
    fn from(token: ApiToken) -> String {
        token.0
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

/// How the platform wants the agent API published on frps (`frp.api_proxy` of the answer).
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "Value", into = "Value")]
pub enum PlatformApiProxy {
    /// A public port on frps; `None`: frps chooses.
    Tcp { remote_port: Option<u16> },
    /// Secret TCP: only a visitor presenting `secret_key`, as one of `allow_users`, reaches it.
    Stcp {
        secret_key: String,
        allow_users: Vec<String>,
    },
}

impl fmt::Debug for PlatformApiProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlatformApiProxy::Tcp { remote_port } => f
                .debug_struct("Tcp")
                .field("remote_port", remote_port)
                .finish(),
            PlatformApiProxy::Stcp { allow_users, .. } => f
                .debug_struct("Stcp")
                .field("secret_key", &"<redacted>")
                .field("allow_users", allow_users)
                .finish(),
        }
    }
}

impl PlatformApiProxy {
    /// Reads `{"type":"tcp","remote_port":N}` (port absent or null: frps chooses) or
    /// `{"type":"stcp","secret_key":"...","allow_users":["..."]}`; an unknown type or key, a
    /// wrong type of value, a template marker: an error naming the field (never the secret).
    pub fn from_json(value: &Value) -> Result<PlatformApiProxy, String> {
        let Value::Object(fields) = value else {
            return Err(format!("frp.api_proxy is not an object: {}", quoted(value)));
        };
        let kind = match fields.get("type") {
            Some(Value::String(kind)) => kind.as_str(),
            Some(other) => {
                return Err(format!(
                    "frp.api_proxy.type is not a string: {}",
                    quoted(other)
                ))
            }
            None => return Err("frp.api_proxy has no type (tcp or stcp)".to_string()),
        };
        match kind {
            "tcp" => {
                only_keys(fields, &["type", "remote_port"])?;
                let remote_port = match fields.get("remote_port") {
                    None | Some(Value::Null) => None,
                    Some(port) => Some(parse_port("frp.api_proxy.remote_port", port)?),
                };
                Ok(PlatformApiProxy::Tcp { remote_port })
            }
            "stcp" => {
                only_keys(fields, &["type", "secret_key", "allow_users"])?;
                let secret_key = match fields.get("secret_key") {
                    Some(Value::String(key)) => key.clone(),
                    Some(_) => return Err("frp.api_proxy.secret_key is not a string".to_string()),
                    None => return Err("frp.api_proxy (stcp) has no secret_key".to_string()),
                };
                if secret_key.is_empty()
                    || secret_key.len() > MAX_SECRET_KEY_LEN
                    || !secret_key.bytes().all(|b| b.is_ascii_graphic())
                {
                    return Err(format!(
                        "frp.api_proxy.secret_key must be 1-{MAX_SECRET_KEY_LEN} printable ASCII \
                         characters without spaces"
                    ));
                }
                if has_template_marker(&secret_key) {
                    return Err(
                        "frp.api_proxy.secret_key must not contain `{{` or `}}` (frpc \
                                renders its config as a Go template)"
                            .to_string(),
                    );
                }
                let allow_users = match fields.get("allow_users") {
                    None | Some(Value::Null) => Vec::new(),
                    Some(Value::Array(users)) => users
                        .iter()
                        .map(|user| match user {
                            Value::String(name) if name == "*" || is_name(name, 128) => {
                                Ok(name.clone())
                            }
                            other => Err(format!(
                                "frp.api_proxy.allow_users: {} is not an frp user name \
                                 (A-Z a-z 0-9 _ . -, at most 128) or \"*\"",
                                quoted(other)
                            )),
                        })
                        .collect::<Result<_, _>>()?,
                    Some(other) => {
                        return Err(format!(
                            "frp.api_proxy.allow_users is not a list of names: {}",
                            quoted(other)
                        ))
                    }
                };
                Ok(PlatformApiProxy::Stcp {
                    secret_key,
                    allow_users,
                })
            }
            other => Err(format!(
                "frp.api_proxy.type {:?} is not tcp or stcp",
                other.chars().take(32).collect::<String>()
            )),
        }
    }

    /// `tcp` or `stcp`.
    pub fn kind(&self) -> &'static str {
        match self {
            PlatformApiProxy::Tcp { .. } => "tcp",
            PlatformApiProxy::Stcp { .. } => "stcp",
        }
    }

    fn to_json(&self) -> Value {
        match self {
            PlatformApiProxy::Tcp { remote_port } => {
                serde_json::json!({ "type": "tcp", "remote_port": remote_port })
            }
            PlatformApiProxy::Stcp {
                secret_key,
                allow_users,
            } => serde_json::json!({
                "type": "stcp",
                "secret_key": secret_key,
                "allow_users": allow_users,
            }),
        }
    }
}

impl TryFrom<Value> for PlatformApiProxy {
    type Error = String;
    fn try_from(value: Value) -> Result<Self, String> {
        PlatformApiProxy::from_json(&value)
    }
}

impl From<PlatformApiProxy> for Value {
    fn from(proxy: PlatformApiProxy) -> Value {
        proxy.to_json()
    }
}

/// What registration gave besides the node id, as published in the snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlatformGrant {
    /// Accepted by the API besides `agent_api.auth_token`.
    pub api_token: Option<ApiToken>,
    /// How the platform wants the API published; `None`: it said nothing.
    pub api_proxy: Option<PlatformApiProxy>,
}

/// A port number of the answer: 1-65535.
pub fn parse_port(field: &str, value: &Value) -> Result<u16, String> {
    value
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("{field} {} is not a port", quoted(value)))
}

fn only_keys(fields: &Map<String, Value>, allowed: &[&str]) -> Result<(), String> {
    match fields.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(key) => Err(format!(
            "frp.api_proxy has an unknown key {:?} (for this type: {})",
            key.chars().take(32).collect::<String>(),
            allowed.join(", ")
        )),
        None => Ok(()),
    }
}

/// A value of the answer as JSON, cut to 64 characters: enough to recognise it in a log line.
pub fn quoted(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(64) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn api_proxies_are_parsed_strictly() {
        assert_eq!(
            PlatformApiProxy::from_json(&json!({"type": "tcp", "remote_port": 7001})),
            Ok(PlatformApiProxy::Tcp {
                remote_port: Some(7001)
            })
        );
        assert_eq!(
            PlatformApiProxy::from_json(&json!({"type": "tcp"})),
            Ok(PlatformApiProxy::Tcp { remote_port: None })
        );
        assert_eq!(
            PlatformApiProxy::from_json(&json!({
                "type": "stcp", "secret_key": "s3cr3t", "allow_users": ["platform", "*"]
            })),
            Ok(PlatformApiProxy::Stcp {
                secret_key: "s3cr3t".into(),
                allow_users: vec!["platform".into(), "*".into()],
            })
        );
        for (bad, says) in [
            (json!("tcp"), "not an object"),
            (json!({}), "no type"),
            (json!({"type": 1}), "type is not a string"),
            (json!({"type": "udp"}), "not tcp or stcp"),
            (json!({"type": "tcp", "remote_port": 0}), "not a port"),
            (json!({"type": "tcp", "remote_port": 65536}), "not a port"),
            (json!({"type": "tcp", "remote_port": "7001"}), "not a port"),
            (
                json!({"type": "tcp", "secret_key": "x"}),
                "unknown key \"secret_key\"",
            ),
            (json!({"type": "stcp"}), "no secret_key"),
            (json!({"type": "stcp", "secret_key": ""}), "printable"),
            (json!({"type": "stcp", "secret_key": "a b"}), "printable"),
            (
                json!({"type": "stcp", "secret_key": "{{.Envs.X}}"}),
                "template",
            ),
            (
                json!({"type": "stcp", "secret_key": "k", "remote_port": 1}),
                "unknown key",
            ),
            (
                json!({"type": "stcp", "secret_key": "k", "allow_users": "p"}),
                "list",
            ),
            (
                json!({"type": "stcp", "secret_key": "k", "allow_users": ["a b"]}),
                "user name",
            ),
            (
                json!({"type": "stcp", "secret_key": "k", "allow_users": ["{{x}}"]}),
                "user name",
            ),
            (
                json!({"type": "stcp", "secret_key": "k", "allow_users": [1]}),
                "user name",
            ),
        ] {
            let e = PlatformApiProxy::from_json(&bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn secrets_are_never_shown() {
        let e = PlatformApiProxy::from_json(&json!({"type": "stcp", "secret_key": "a SECRET"}))
            .unwrap_err();
        assert!(!e.contains("SECRET"), "{e}");
        let proxy = PlatformApiProxy::Stcp {
            secret_key: "SECRETKEY".into(),
            allow_users: vec![],
        };
        assert!(!format!("{proxy:?}").contains("SECRETKEY"));
        let token = ApiToken::parse("TOKEN-0123456789abcdef").unwrap();
        assert!(!format!("{token:?}").contains("TOKEN"));
        let e = ApiToken::parse("SHORT").unwrap_err();
        assert!(!e.contains("SHORT"), "{e}");
        let e = ApiToken::parse("with a WORD 0123456789").unwrap_err();
        assert!(!e.contains("WORD"), "{e}");
    }

    #[test]
    fn round_trips_through_json() {
        for proxy in [
            PlatformApiProxy::Tcp {
                remote_port: Some(7001),
            },
            PlatformApiProxy::Tcp { remote_port: None },
            PlatformApiProxy::Stcp {
                secret_key: "k".into(),
                allow_users: vec!["platform".into()],
            },
        ] {
            let text = serde_json::to_string(&proxy).unwrap();
            assert_eq!(
                serde_json::from_str::<PlatformApiProxy>(&text).unwrap(),
                proxy
            );
        }
        let token = ApiToken::parse("0123456789abcdef").unwrap();
        let text = serde_json::to_string(&token).unwrap();
        assert_eq!(serde_json::from_str::<ApiToken>(&text).unwrap(), token);
        assert!(serde_json::from_str::<ApiToken>("\"short\"").is_err());
    }
}
