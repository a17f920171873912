//! A create's `registry_auth`: credentials for its image's pull only.

use super::image::{normalize_registry, registry_of, valid_registry};
use super::{err, RegistryAuthRequest, SpecError};
use crate::docker::pull_auth::{Credential, RegistryAuth};

/// Longest username or password, and identity token, in bytes.
pub const MAX_CREDENTIAL_BYTES: usize = 4096;
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Checks `registry_auth` against the image it is for. No message quotes a secret.
pub(super) fn validate_registry_auth(
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
