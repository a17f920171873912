//! frpc's configuration file: the frp >= 0.52 TOML schema, rendered from plain data and
//! written atomically with mode 0600 (it holds the frps token, the admin password and the stcp
//! secret).
//!
//! frpc renders the file as a Go template before parsing it; every value written here comes
//! from validated settings (which refuse `{{` and `}}`) or is made by the agent (proxy names,
//! addresses, the password), and [`render`] refuses a marker anyway rather than write one.

use super::ApiProxy;
use crate::state::PublishedPort;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Name of the agent API's proxy.
pub const API_PROXY_NAME: &str = "agent-api";

/// User name of frpc's admin API.
pub const ADMIN_USER: &str = "agent";

/// Everything the file says.
#[derive(Debug, Clone, PartialEq)]
pub struct FrpcConfig {
    pub server_addr: String,
    pub server_port: u16,
    pub user: String,
    pub token: String,
    pub tls_ca_file: Option<PathBuf>,
    /// frpc's `log.level` (trace, debug, info, warn, error).
    pub log_level: &'static str,
    pub admin_port: u16,
    pub admin_password: String,
    pub api_local_port: u16,
    pub api_proxy: ApiProxy,
    /// Where container ports are published on the host (`docker.publish_address`).
    pub publish_address: String,
    /// The container proxies (empty when `frp.expose_container_ports` is off).
    pub ports: Vec<PublishedPort>,
}

/// A value the agent refuses to write into frpc's file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateMarker {
    pub field: String,
}

impl std::fmt::Display for TemplateMarker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} contains a Go template marker ({{{{ or }}}}), which frpc would execute; not written",
            self.field
        )
    }
}

/// The name of a container port's proxy: `<claim_id>-<container_port>-<protocol>`.
pub fn container_proxy_name(port: &PublishedPort) -> String {
    format!(
        "{}-{}-{}",
        port.claim_id, port.container_port, port.protocol
    )
}

/// Splits `ports` into those the file may publish and those that ask frps for the agent API's
/// own public port (tcp, the API proxy's remote port): frps gives a port to whichever proxy
/// registers first, so such a container could take the API's address and receive the
/// platform's requests with their bearer token. The second list is left out of the file.
pub fn without_api_port(
    ports: Vec<PublishedPort>,
    api_proxy: &ApiProxy,
) -> (Vec<PublishedPort>, Vec<PublishedPort>) {
    let api_port = match api_proxy {
        ApiProxy::Tcp {
            remote_port: Some(port),
        } if *port != 0 => *port,
        _ => return (ports, Vec::new()),
    };
    ports
        .into_iter()
        .partition(|p| !(p.protocol == "tcp" && p.remote_port == api_port))
}

/// A TOML basic string, quoted and escaped.
fn quoted(field: &str, value: &str) -> Result<String, TemplateMarker> {
    if value.contains("{{") || value.contains("}}") {
        return Err(TemplateMarker {
            field: field.to_string(),
        });
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    Ok(out)
}

/// The file's text.
pub fn render(config: &FrpcConfig) -> Result<String, TemplateMarker> {
    let mut t = String::new();
    let q = quoted;
    t.push_str(
        "# Written by utopia-node-agent at every frpc start and proxy change; edits are lost.\n",
    );
    let _ = writeln!(t, "serverAddr = {}", q("serverAddr", &config.server_addr)?);
    let _ = writeln!(t, "serverPort = {}", config.server_port);
    let _ = writeln!(t, "user = {}", q("user", &config.user)?);
    t.push_str("loginFailExit = false\n\n");
    t.push_str("auth.method = \"token\"\n");
    let _ = writeln!(t, "auth.token = {}\n", q("auth.token", &config.token)?);
    t.push_str("transport.tls.enable = true\n");
    if let Some(ca) = &config.tls_ca_file {
        let _ = writeln!(
            t,
            "transport.tls.trustedCaFile = {}",
            q("transport.tls.trustedCaFile", &ca.to_string_lossy())?
        );
    }
    t.push_str("\nlog.to = \"console\"\n");
    let _ = writeln!(t, "log.level = \"{}\"", config.log_level);
    t.push_str("log.disablePrintColor = true\n\n");
    t.push_str("webServer.addr = \"127.0.0.1\"\n");
    let _ = writeln!(t, "webServer.port = {}", config.admin_port);
    let _ = writeln!(t, "webServer.user = \"{ADMIN_USER}\"");
    let _ = writeln!(
        t,
        "webServer.password = {}",
        q("webServer.password", &config.admin_password)?
    );

    t.push_str("\n[[proxies]]\n");
    let _ = writeln!(t, "name = \"{API_PROXY_NAME}\"");
    match &config.api_proxy {
        ApiProxy::Tcp { remote_port } => {
            t.push_str("type = \"tcp\"\n");
            t.push_str("localIP = \"127.0.0.1\"\n");
            let _ = writeln!(t, "localPort = {}", config.api_local_port);
            let _ = writeln!(t, "remotePort = {}", remote_port.unwrap_or(0));
        }
        ApiProxy::Stcp {
            secret_key,
            allow_users,
        } => {
            t.push_str("type = \"stcp\"\n");
            t.push_str("localIP = \"127.0.0.1\"\n");
            let _ = writeln!(t, "localPort = {}", config.api_local_port);
            let _ = writeln!(t, "secretKey = {}", q("secretKey", secret_key)?);
            let users: Result<Vec<String>, TemplateMarker> =
                allow_users.iter().map(|u| q("allowUsers", u)).collect();
            let _ = writeln!(t, "allowUsers = [{}]", users?.join(", "));
        }
    }
    for port in &config.ports {
        let name = container_proxy_name(port);
        t.push_str("\n[[proxies]]\n");
        let _ = writeln!(t, "name = {}", q("proxy name", &name)?);
        let _ = writeln!(t, "type = \"{}\"", port.protocol);
        let _ = writeln!(t, "localIP = {}", q("localIP", &config.publish_address)?);
        let _ = writeln!(t, "localPort = {}", port.host_port);
        let _ = writeln!(t, "remotePort = {}", port.remote_port);
    }
    Ok(t)
}

/// Writes `text` to `path` atomically: a 0600 temporary file in the same directory, synced,
/// then renamed over `path`. The directory is created (0700) when missing.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "frpc.toml".to_string());
    let temporary = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    // A name left there (an older run, or someone else in a directory others can write to: a
    // symlink to another file, a file they own and can read) is removed, never opened: the
    // file is created new, so the secrets only ever go into a file of the agent's own.
    match std::fs::remove_file(&temporary) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> FrpcConfig {
        FrpcConfig {
            server_addr: "frps.example.com".into(),
            server_port: 7000,
            user: "node-1".into(),
            token: "tok\"en".into(),
            tls_ca_file: Some("/etc/frp/ca.pem".into()),
            log_level: "info",
            admin_port: 7400,
            admin_password: "pw".into(),
            api_local_port: 8080,
            api_proxy: ApiProxy::Stcp {
                secret_key: "s3cret".into(),
                allow_users: vec!["platform".into(), "*".into()],
            },
            publish_address: "127.0.0.1".into(),
            ports: vec![PublishedPort {
                claim_id: "claim-1".into(),
                container_port: 80,
                protocol: "tcp",
                host_port: 18080,
                remote_port: 0,
            }],
        }
    }

    #[test]
    fn the_file_follows_the_frp_052_schema() {
        let text = render(&config()).unwrap();
        for line in [
            "serverAddr = \"frps.example.com\"",
            "serverPort = 7000",
            "user = \"node-1\"",
            "loginFailExit = false",
            "auth.method = \"token\"",
            "auth.token = \"tok\\\"en\"",
            "transport.tls.enable = true",
            "transport.tls.trustedCaFile = \"/etc/frp/ca.pem\"",
            "log.to = \"console\"",
            "log.disablePrintColor = true",
            "webServer.addr = \"127.0.0.1\"",
            "webServer.port = 7400",
            "webServer.password = \"pw\"",
            "name = \"agent-api\"",
            "type = \"stcp\"",
            "secretKey = \"s3cret\"",
            "allowUsers = [\"platform\", \"*\"]",
            "name = \"claim-1-80-tcp\"",
            "localPort = 18080",
            "remotePort = 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in\n{text}"
            );
        }
        let mut tcp = config();
        tcp.api_proxy = ApiProxy::Tcp {
            remote_port: Some(7001),
        };
        tcp.tls_ca_file = None;
        let text = render(&tcp).unwrap();
        assert!(text.contains(
            "type = \"tcp\"\nlocalIP = \"127.0.0.1\"\nlocalPort = 8080\nremotePort = 7001\n"
        ));
        assert!(!text.contains("trustedCaFile"));
    }

    #[test]
    fn a_container_port_never_takes_the_api_proxys_public_port() {
        let port = |claim: &str, protocol: &'static str, remote_port: u16| PublishedPort {
            claim_id: claim.into(),
            container_port: 80,
            protocol,
            host_port: 18080,
            remote_port,
        };
        let ports = vec![
            port("thief", "tcp", 7001),
            port("udp-same-number", "udp", 7001),
            port("other", "tcp", 7002),
            port("any", "tcp", 0),
        ];
        let api = ApiProxy::Tcp {
            remote_port: Some(7001),
        };
        let (kept, dropped) = without_api_port(ports.clone(), &api);
        assert_eq!(dropped, vec![ports[0].clone()]);
        assert_eq!(kept, ports[1..].to_vec());
        // The API on a port frps chooses, or on stcp: nothing to take.
        let (kept, dropped) = without_api_port(ports.clone(), &ApiProxy::Tcp { remote_port: None });
        assert_eq!((kept, dropped.len()), (ports.clone(), 0));
        let stcp = ApiProxy::Stcp {
            secret_key: "s".into(),
            allow_users: Vec::new(),
        };
        assert_eq!(without_api_port(ports.clone(), &stcp).0, ports);
    }

    #[test]
    fn template_markers_are_refused() {
        let mut c = config();
        c.ports[0].claim_id = "x{{ .Envs.HOME }}".into();
        assert_eq!(render(&c).unwrap_err().field, "proxy name");
        let mut c = config();
        c.token = "a}}b".into();
        assert_eq!(render(&c).unwrap_err().field, "auth.token");
    }

    #[test]
    fn the_file_is_written_atomically_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("frp/frpc.toml");
        write_atomically(&path, "a = 1\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_atomically(&path, "a = 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a = 2\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let leftovers = std::fs::read_dir(path.parent().unwrap()).unwrap().count();
        assert_eq!(leftovers, 1);
    }

    #[test]
    fn a_planted_temporary_name_is_never_written_through() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("frpc.toml");
        let temporary = dir
            .path()
            .join(format!(".frpc.toml.{}.tmp", std::process::id()));
        // A symlink to a file someone else reads.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "theirs\n").unwrap();
        std::os::unix::fs::symlink(&victim, &temporary).unwrap();
        write_atomically(&path, "auth.token = \"secret\"\n").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "theirs\n");
        assert!(!std::fs::symlink_metadata(&path).unwrap().is_symlink());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "auth.token = \"secret\"\n"
        );
        // A readable file planted under the name: replaced by a private one, not reused.
        std::fs::write(&temporary, "").unwrap();
        std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o666)).unwrap();
        let planted = std::fs::File::open(&temporary).unwrap();
        write_atomically(&path, "auth.token = \"other\"\n").unwrap();
        let mut seen = String::new();
        std::io::Read::read_to_string(&mut &planted, &mut seen).unwrap();
        assert_eq!(seen, "", "the secret went into the planted file");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
