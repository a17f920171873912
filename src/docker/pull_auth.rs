//! A create's `registry_auth`, used for its image pull only: the credentials go into a docker
//! config directory of that one pull (`DOCKER_CONFIG`, mode 0700, `config.json` mode 0600),
//! removed as soon as the pull ends, and by the next start after a crash. They never reach
//! docker's argv (readable by any local user in `/proc`), the agent's log, the container's
//! labels or its inspect output, or an error message.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Names of the per-pull directories: `utopia-pull-<pid>-<n>` in the temp directory.
pub const PULL_DIR_PREFIX: &str = "utopia-pull-";

/// The key docker's config uses for Docker Hub.
const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// The secret half of a registry login.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    Password(String),
    IdentityToken(String),
}

/// Validated credentials for the registry of one create's image.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryAuth {
    /// The registry (`host[:port]`, normalized; `docker.io` for Docker Hub).
    pub server: String,
    pub username: Option<String>,
    pub credential: Credential,
}

/// Never prints the secret: a create spec is logged in places with `{:?}`.
impl fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.credential {
            Credential::Password(_) => "password",
            Credential::IdentityToken(_) => "identity_token",
        };
        f.debug_struct("RegistryAuth")
            .field("server", &self.server)
            .field("username", &self.username.as_ref().map(|_| "<set>"))
            .field("credential", &format_args!("<{kind} redacted>"))
            .finish()
    }
}

impl RegistryAuth {
    /// docker's `config.json` holding only this login.
    pub fn config_json(&self) -> String {
        let key = if self.server == crate::docker::spec::DEFAULT_REGISTRY {
            DOCKER_HUB_KEY.to_string()
        } else {
            self.server.clone()
        };
        let entry = match &self.credential {
            Credential::Password(password) => serde_json::json!({
                "auth": crate::base64::encode(
                    format!(
                        "{}:{password}",
                        self.username.as_deref().unwrap_or_default()
                    )
                    .as_bytes()
                ),
            }),
            Credential::IdentityToken(token) => serde_json::json!({
                "auth": crate::base64::encode(
                    format!("{}:", self.username.as_deref().unwrap_or("<token>")).as_bytes()
                ),
                "identitytoken": token,
            }),
        };
        serde_json::json!({ "auths": { key: entry } }).to_string()
    }
}

/// Why the per-pull config could not be written.
#[derive(Debug)]
pub struct PullConfigError {
    pub path: PathBuf,
    pub error: std::io::Error,
}

impl fmt::Display for PullConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot write the pull's docker config in {}: {}",
            self.path.display(),
            self.error
        )
    }
}

impl std::error::Error for PullConfigError {}

/// A docker config directory holding one login, removed on drop.
pub struct PullConfig {
    dir: PathBuf,
}

impl PullConfig {
    /// Writes `auth` into a fresh directory under `root` (the temp directory).
    pub fn write(root: &Path, auth: &RegistryAuth) -> Result<PullConfig, PullConfigError> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = root.join(format!(
            "{PULL_DIR_PREFIX}{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let failed = |error: std::io::Error, path: &Path| PullConfigError {
            path: path.to_path_buf(),
            error,
        };
        // `create` fails when the name exists: nobody else can have prepared it.
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| failed(e, &dir))?;
        let config = PullConfig { dir };
        let path = config.dir.join("config.json");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| failed(e, &path))?;
        file.write_all(auth.config_json().as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| failed(e, &path))?;
        Ok(config)
    }

    /// The directory to give docker as `DOCKER_CONFIG`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for PullConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.dir.join("config.json"));
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            log::warn!(
                "cannot remove the pull's docker config {}: {e}",
                self.dir.display()
            );
        }
    }
}

/// Removes the per-pull config directories of agents that are no longer running (killed
/// mid-pull): only real directories of this user whose agent's pid is gone.
pub fn remove_stale_pull_configs(root: &Path) {
    super::scratch::remove_stale_dirs(root, PULL_DIR_PREFIX, "config.json", "registry credentials");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(credential: Credential) -> RegistryAuth {
        RegistryAuth {
            server: "reg.example.com:5000".into(),
            username: Some("alice".into()),
            credential,
        }
    }

    #[test]
    fn config_json_is_what_docker_reads() {
        let json: serde_json::Value =
            serde_json::from_str(&auth(Credential::Password("s3cret".into())).config_json())
                .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"auths": {"reg.example.com:5000": {"auth": "YWxpY2U6czNjcmV0"}}})
        );
        let mut hub = auth(Credential::IdentityToken("tok".into()));
        hub.server = "docker.io".into();
        hub.username = None;
        let json: serde_json::Value = serde_json::from_str(&hub.config_json()).unwrap();
        assert_eq!(
            json["auths"]["https://index.docker.io/v1/"]["identitytoken"],
            "tok"
        );
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let text = format!("{:?}", auth(Credential::Password("s3cret".into())));
        assert!(
            !text.contains("s3cret") && !text.contains("alice"),
            "{text}"
        );
    }

    #[test]
    fn the_directory_is_private_and_removed() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let config =
            PullConfig::write(root.path(), &auth(Credential::Password("s3cret".into()))).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(config.dir()), 0o700);
        assert_eq!(mode(&config.dir().join("config.json")), 0o600);
        let dir = config.dir().to_path_buf();
        drop(config);
        assert!(!dir.exists());

        let dead = root.path().join(format!("{PULL_DIR_PREFIX}999999999-0-1"));
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join("config.json"), "{}").unwrap();
        let live = root
            .path()
            .join(format!("{PULL_DIR_PREFIX}{}-0-1", std::process::id()));
        std::fs::create_dir(&live).unwrap();
        remove_stale_pull_configs(root.path());
        assert!(!dead.exists());
        assert!(live.exists());
    }
}
