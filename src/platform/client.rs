//! HTTP to the central platform: one `ureq` agent with bounded timeouts, the system's CA roots
//! plus `central_platform.ca_file`, and the proxy the host's environment names.
//!
//! - Every request is bounded by `request_timeout_secs`, for connecting and for the whole call
//!   (name resolution included), so the platform thread never blocks longer than that.
//! - Roots: `SSL_CERT_FILE` when set, else the distribution's CA bundle (Debian, RHEL, SUSE,
//!   Alpine paths), else the Mozilla roots built into the binary; `ca_file` is added to them.
//! - Proxy: chosen like curl does (`https_proxy`/`HTTPS_PROXY` for https URLs,
//!   `http_proxy`/`HTTP_PROXY` for http ones, then `all_proxy`/`ALL_PROXY`), skipped for hosts
//!   matched by `no_proxy`/`NO_PROXY` (domain suffixes, IPs, CIDR ranges, `*`). ureq's own
//!   environment lookup is not used: it prefers `ALL_PROXY` over the scheme's variable and
//!   matches `NO_PROXY=example.com` against that host only, not its subdomains as curl does.
//! - Redirects are not followed: a registration must not be replayed, with its token, to
//!   wherever a `Location` header points.
//!
//! The bootstrap token goes into the `Authorization` header and nowhere else: no error, log line
//! or status built here contains it, even when the platform echoes it in any answer (an error
//! body, or a success body the caller rejects: see [`PlatformClient::post_json`]).

use crate::config::{url_host, PlatformSettings};
use crate::platform::identity::{read_regular_file, FileProblem};
use serde::Serialize;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};

/// The distributions' CA bundles, in the order they are looked for.
pub const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// Largest response body read from the platform.
const MAX_RESPONSE_BYTES: u64 = 64 * 1024;

/// Why the client could not be set up (the agent does not start).
#[derive(Debug)]
pub enum ClientError {
    CaFileUnreadable {
        /// The config key that names the file.
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    CaFileInvalid {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::CaFileUnreadable { key, path, source } => {
                write!(f, "cannot read {key} {}: {source}", path.display())
            }
            ClientError::CaFileInvalid { key, path, reason } => write!(
                f,
                "{key} {} is not usable: {reason}; it must hold PEM certificates \
                 (-----BEGIN CERTIFICATE-----)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for ClientError {}

/// Why one request to the platform failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// No answer: connection refused, DNS, TLS, timeout.
    Transport { url: String, message: String },
    /// An answer with a status that is not success.
    Status {
        url: String,
        status: u16,
        body: String,
    },
    /// A success status with a body that breaks the protocol.
    InvalidResponse { url: String, reason: String },
}

impl RequestError {
    /// The platform refused the bootstrap token.
    pub fn is_auth_rejected(&self) -> bool {
        matches!(
            self,
            RequestError::Status {
                status: 401 | 403,
                ..
            }
        )
    }

    /// The platform does not know the node (heartbeat answered 404 or 410).
    pub fn is_node_unknown(&self) -> bool {
        matches!(
            self,
            RequestError::Status {
                status: 404 | 410,
                ..
            }
        )
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::Transport { url, message } => write!(f, "POST {url}: {message}"),
            RequestError::Status { url, status, body } => {
                write!(f, "POST {url}: HTTP {status}")?;
                if *status == 401 || *status == 403 {
                    write!(
                        f,
                        " (the platform rejected the bootstrap token: check \
                         central_platform.bootstrap_token / PHOENIX_BOOTSTRAP_TOKEN on this node \
                         and the token on the platform)"
                    )?;
                } else if (300..400).contains(status) {
                    write!(
                        f,
                        " (redirects are not followed: set central_platform.api_url to the \
                         final URL)"
                    )?;
                }
                if !body.is_empty() {
                    write!(f, ": {body}")?;
                }
                Ok(())
            }
            RequestError::InvalidResponse { url, reason } => {
                write!(f, "POST {url}: invalid answer: {reason}")
            }
        }
    }
}

impl std::error::Error for RequestError {}

/// Where the proxy for the platform comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyChoice {
    pub variable: &'static str,
    pub url: String,
}

/// The connection to the platform.
pub struct PlatformClient {
    /// Why the configured proxy cannot be used, if it cannot.
    unusable_proxy: Option<String>,
    /// The proxy in use, `host:port (from $VARIABLE)`, named in transport errors: the proxy
    /// failing is not the platform failing.
    proxy_in_use: Option<String>,
    agent: ureq::Agent,
    base_url: String,
    bootstrap_token: String,
    timeout: Duration,
}

impl PlatformClient {
    /// Builds the client for the platform at `base_url` (validated, without a trailing `/`),
    /// reading the proxy variables through `env`.
    pub fn new(
        base_url: &str,
        config: &PlatformSettings,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<PlatformClient, ClientError> {
        let timeout = config.request_timeout;
        let base_url = base_url.to_string();
        let (mut roots, source) = system_roots();
        log::debug!(
            "platform TLS roots: {} certificates from {source}",
            roots.len()
        );
        if let Some(ca_file) = &config.ca_file {
            let extra = load_ca_file(ca_file)?;
            log::info!(
                "trusting {} extra CA certificate(s) from {} for the platform",
                extra.len(),
                ca_file.display()
            );
            roots.extend(extra);
        }
        // A proxy variable that cannot be used does not stop the agent (its API and containers
        // matter more than the platform): every platform request fails with the reason instead,
        // which `/health` and the log show.
        let mut unusable_proxy = None;
        let mut proxy_in_use = None;
        let proxy = match proxy_for(&base_url, &env) {
            Some(choice) => match ureq::Proxy::new(&choice.url) {
                Ok(proxy) => {
                    // Host and port only: the proxy URL may carry credentials.
                    let named = format!(
                        "{}:{} from ${}",
                        proxy.host(),
                        proxy.port(),
                        choice.variable
                    );
                    log::info!("platform requests go through the proxy {named}");
                    proxy_in_use = Some(named);
                    Some(proxy)
                }
                Err(e) => {
                    let reason = format!(
                        "the proxy in ${} is not usable ({e}); fix it, or exclude the platform \
                         with NO_PROXY",
                        choice.variable
                    );
                    log::error!("{reason}");
                    unusable_proxy = Some(reason);
                    None
                }
            },
            None => None,
        };
        let agent_config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .timeout_connect(Some(timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .max_redirects_will_error(false)
            .proxy(proxy)
            .user_agent(format!("utopia-node-agent/{}", crate::VERSION))
            .tls_config(
                TlsConfig::builder()
                    .root_certs(RootCerts::Specific(Arc::new(roots)))
                    .build(),
            )
            .build();
        Ok(PlatformClient {
            unusable_proxy,
            proxy_in_use,
            agent: agent_config.into(),
            base_url,
            bootstrap_token: config.bootstrap_token.clone(),
            timeout,
        })
    }

    /// The URL of an API path on the platform.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// POSTs `body` as JSON and reads a 2xx answer with `parse`; an answer `parse` rejects is
    /// an [`RequestError::InvalidResponse`] with its reason. The reason may quote the answer:
    /// `parse` is given the answer with the bootstrap token already replaced (so that a quote
    /// cut short cannot keep a part of it), and the reason is redacted again.
    pub fn post_json<T>(
        &self,
        path: &str,
        body: &impl Serialize,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, RequestError> {
        let url = self.url(path);
        let text = self.redact(&self.post(&url, body)?);
        parse(&text).map_err(|reason| RequestError::InvalidResponse {
            url,
            reason: self.redact(&reason),
        })
    }

    /// Whether `value` is the bootstrap token (which no answer may make public).
    pub fn is_bootstrap_token(&self, value: &str) -> bool {
        !self.bootstrap_token.is_empty() && value == self.bootstrap_token
    }

    /// `text` with the bootstrap token replaced.
    fn redact(&self, text: &str) -> String {
        if self.bootstrap_token.is_empty() {
            text.to_string()
        } else {
            text.replace(&self.bootstrap_token, "<redacted>")
        }
    }

    /// The body of a 2xx answer to a POST of `body` as JSON, or why there is none.
    fn post(&self, url: &str, body: &impl Serialize) -> Result<String, RequestError> {
        let url = url.to_string();
        if let Some(reason) = &self.unusable_proxy {
            return Err(RequestError::Transport {
                url,
                message: reason.clone(),
            });
        }
        let transport = |error: ureq::Error| {
            let mut message = match error {
                ureq::Error::Timeout(_) => {
                    format!(
                        "no answer within {}s (request_timeout_secs)",
                        self.timeout.as_secs()
                    )
                }
                other => {
                    let message = self.redact(&other.to_string());
                    if message.contains("UnknownIssuer") {
                        format!(
                            "{message} (the platform's certificate is not signed by a trusted \
                             CA; for a private CA, set central_platform.ca_file)"
                        )
                    } else {
                        message
                    }
                }
            };
            if let Some(proxy) = &self.proxy_in_use {
                message.push_str(&format!(
                    " (through the proxy {proxy}: check the proxy, or exclude the platform \
                     with NO_PROXY)"
                ));
            }
            RequestError::Transport {
                url: url.clone(),
                message,
            }
        };
        let mut request = self.agent.post(&url).header("Accept", "application/json");
        if !self.bootstrap_token.is_empty() {
            request = request.header("Authorization", format!("Bearer {}", self.bootstrap_token));
        }
        let mut response = request.send_json(body).map_err(transport)?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE_BYTES)
            .read_to_string();
        if !(200..300).contains(&status) {
            // A platform that echoes the request must not put the token into our logs.
            let body = self.redact(&text.unwrap_or_default());
            return Err(RequestError::Status {
                url,
                status,
                body: excerpt(&body),
            });
        }
        text.map_err(transport)
    }
}

/// The start of a response body, on one line, for an error message.
fn excerpt(text: &str) -> String {
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    line.trim().to_string()
}

/// The system's trusted roots, and where they came from.
fn system_roots() -> (Vec<Certificate<'static>>, String) {
    let from_env = std::env::var("SSL_CERT_FILE")
        .ok()
        .filter(|v| !v.is_empty());
    let candidates = from_env
        .iter()
        .map(String::as_str)
        .chain(SYSTEM_CA_BUNDLES.iter().copied());
    for candidate in candidates {
        let Ok(pem) = read_regular_file(Path::new(candidate), MAX_PEM_BYTES) else {
            continue;
        };
        let certs = pem_certificates(&pem);
        if !certs.is_empty() {
            return (certs, candidate.to_string());
        }
    }
    let builtin = webpki_root_certs::TLS_SERVER_ROOT_CERTS
        .iter()
        .map(|der| Certificate::from_der(der.as_ref()).to_owned())
        .collect();
    (
        builtin,
        "the Mozilla roots built into the agent".to_string(),
    )
}

/// Largest certificate file read (a distribution's whole bundle is about 200 KiB).
const MAX_PEM_BYTES: u64 = 8 * 1024 * 1024;

/// Every certificate of a PEM text (other items are skipped).
fn pem_certificates(pem: &[u8]) -> Vec<Certificate<'static>> {
    ureq::tls::parse_pem(pem)
        .filter_map(|item| match item {
            Ok(PemItem::Certificate(cert)) => Some(cert),
            _ => None,
        })
        .collect()
}

/// Reads `central_platform.ca_file`: at least one PEM certificate, or an error naming the file.
pub fn load_ca_file(path: &Path) -> Result<Vec<Certificate<'static>>, ClientError> {
    load_pem_certificates("central_platform.ca_file", path)
}

/// Reads the CA file the config key `key` names: at least one PEM certificate, or an error
/// naming the key and the file.
pub fn load_pem_certificates(
    key: &'static str,
    path: &Path,
) -> Result<Vec<Certificate<'static>>, ClientError> {
    let pem = read_regular_file(path, MAX_PEM_BYTES).map_err(|problem| match problem {
        FileProblem::NotRegular(what) => ClientError::CaFileInvalid {
            key,
            path: path.to_path_buf(),
            reason: what.to_string(),
        },
        FileProblem::Io(source) => ClientError::CaFileUnreadable {
            key,
            path: path.to_path_buf(),
            source,
        },
    })?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(PemItem::Certificate(cert)) => certs.push(cert),
            Ok(_) => {}
            Err(e) => {
                return Err(ClientError::CaFileInvalid {
                    key,
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })
            }
        }
    }
    if certs.is_empty() {
        return Err(ClientError::CaFileInvalid {
            key,
            path: path.to_path_buf(),
            reason: "it contains no certificate".to_string(),
        });
    }
    Ok(certs)
}

/// The proxy for `url` according to the environment read through `env`, like curl chooses it.
pub fn proxy_for(url: &str, env: &impl Fn(&str) -> Option<String>) -> Option<ProxyChoice> {
    let get = |name: &'static str| {
        env(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .map(|v| (name, v))
    };
    let https = url.starts_with("https://");
    let scheme_vars: [&'static str; 2] = if https {
        ["https_proxy", "HTTPS_PROXY"]
    } else {
        ["http_proxy", "HTTP_PROXY"]
    };
    let (variable, proxy_url) = scheme_vars
        .into_iter()
        .chain(["all_proxy", "ALL_PROXY"])
        .find_map(get)?;
    let no_proxy = get("no_proxy").or_else(|| get("NO_PROXY"));
    if let (Some((_, list)), Some(host)) = (no_proxy, url_host(url)) {
        if no_proxy_matches(&list, &host) {
            return None;
        }
    }
    Some(ProxyChoice {
        variable,
        url: proxy_url,
    })
}

/// Whether `host` is excluded from proxying by a `NO_PROXY` list, with curl's rules: `*` matches
/// everything; `example.com` and `.example.com` match that domain and its subdomains; an IP
/// matches itself; `10.0.0.0/8` matches the range. A `:port` on an entry is ignored.
pub fn no_proxy_matches(list: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let host_ip: Option<IpAddr> = host.parse().ok();
    list.split([',', ' ', '\t'])
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            if let Some((net, bits)) = entry.split_once('/') {
                return match (
                    host_ip,
                    net.trim_matches(['[', ']']).parse::<IpAddr>(),
                    bits.parse::<u8>(),
                ) {
                    (Some(ip), Ok(net), Ok(bits)) => in_cidr(ip, net, bits),
                    _ => false,
                };
            }
            let entry = strip_port(entry);
            if let (Some(ip), Ok(entry_ip)) = (host_ip, entry.parse::<IpAddr>()) {
                return ip == entry_ip;
            }
            let domain = entry
                .trim_start_matches('*')
                .trim_start_matches('.')
                .trim_end_matches('.')
                .to_ascii_lowercase();
            !domain.is_empty()
                && (host == domain
                    || host
                        .strip_suffix(domain.as_str())
                        .is_some_and(|prefix| prefix.ends_with('.')))
        })
}

/// `host:port` → `host`, `[v6]:port` → `v6`; a bare IPv6 address is left whole.
fn strip_port(entry: &str) -> &str {
    if let Some(bracketed) = entry.strip_prefix('[') {
        return bracketed.split(']').next().unwrap_or(bracketed);
    }
    match entry.split_once(':') {
        Some((host, port)) if !port.contains(':') => host,
        _ => entry,
    }
}

fn in_cidr(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) if bits <= 32 => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) if bits <= 128 => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error a registration request to `api_url` ends in, with `vars` as the environment
    /// (the proxy variables) and a 2 s timeout.
    fn register_error(api_url: &str, vars: &[(&str, &str)]) -> RequestError {
        let settings = crate::config::PlatformConfig {
            api_url: api_url.into(),
            request_timeout_secs: 2,
            ..Default::default()
        }
        .validate(&mut Vec::new())
        .unwrap();
        let client = PlatformClient::new(api_url, &settings, env(vars)).unwrap();
        client
            .post_json("/api/v1/nodes/register", &(), |_| Ok(()))
            .unwrap_err()
    }

    /// A local port nothing listens on.
    fn dead_port() -> u16 {
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        dead.local_addr().unwrap().port()
    }

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn proxy_is_chosen_by_scheme_then_all_proxy() {
        let e = env(&[
            ("HTTPS_PROXY", "http://secure:3128"),
            ("http_proxy", "http://plain:3128"),
            ("ALL_PROXY", "http://all:3128"),
        ]);
        let https = proxy_for("https://p.example", &e).unwrap();
        assert_eq!(
            (https.variable, https.url.as_str()),
            ("HTTPS_PROXY", "http://secure:3128")
        );
        let http = proxy_for("http://p.example", &e).unwrap();
        assert_eq!(http.variable, "http_proxy");
        let only_all = env(&[("ALL_PROXY", "http://all:3128")]);
        assert_eq!(
            proxy_for("https://p.example", &only_all).unwrap().variable,
            "ALL_PROXY"
        );
        assert_eq!(proxy_for("https://p.example", &env(&[])), None);
        // Lower case wins, as in curl.
        let both = env(&[
            ("https_proxy", "http://lower:1"),
            ("HTTPS_PROXY", "http://upper:1"),
        ]);
        assert_eq!(
            proxy_for("https://p.example", &both).unwrap().url,
            "http://lower:1"
        );
    }

    #[test]
    fn no_proxy_skips_the_proxy() {
        let e = env(&[
            ("HTTPS_PROXY", "http://proxy:3128"),
            ("NO_PROXY", "localhost, .internal.example,10.0.0.0/8"),
        ]);
        assert_eq!(proxy_for("https://api.internal.example/x", &e), None);
        assert_eq!(proxy_for("https://10.1.2.3:8443", &e), None);
        assert!(proxy_for("https://platform.example", &e).is_some());
    }

    #[test]
    fn no_proxy_matching_follows_curl() {
        let cases = [
            ("example.com", "example.com", true),
            ("example.com", "api.example.com", true),
            ("example.com", "EXAMPLE.com.", true),
            ("example.com", "badexample.com", false),
            (".example.com", "example.com", true),
            (".example.com", "a.b.example.com", true),
            ("*.example.com", "a.example.com", true),
            ("*", "anything", true),
            ("example.com:443", "example.com", true),
            ("127.0.0.1", "127.0.0.1", true),
            ("127.0.0.1", "127.0.0.2", false),
            ("192.168.0.0/16", "192.168.7.9", true),
            ("192.168.0.0/16", "192.169.0.1", false),
            ("::1", "::1", true),
            ("[::1]", "::1", true),
            ("fd00::/8", "fd12::5", true),
            ("fd00::/8", "fe80::1", false),
            ("localhost,  other", "other", true),
            ("", "example.com", false),
        ];
        for (list, host, expected) in cases {
            assert_eq!(
                no_proxy_matches(list, host),
                expected,
                "NO_PROXY={list:?} host={host}"
            );
        }
    }

    #[test]
    fn an_unusable_proxy_fails_requests_with_the_reason() {
        let e = register_error("https://p.example", &[("HTTPS_PROXY", "gopher://x:70")]);
        let RequestError::Transport { message, .. } = &e else {
            panic!("{e}");
        };
        assert!(message.contains("$HTTPS_PROXY"), "{e}");
    }

    #[test]
    fn a_failing_proxy_is_named_in_the_error() {
        // The platform may be fine: an operator reading "connection refused" must know that
        // it was the proxy that refused.
        let port = dead_port();
        let proxy = format!("http://user:pw@127.0.0.1:{port}");
        let e = register_error("https://p.example", &[("https_proxy", &proxy)]);
        let RequestError::Transport { message, .. } = &e else {
            panic!("{e}");
        };
        assert!(
            message.contains(&format!("proxy 127.0.0.1:{port}"))
                && message.contains("$https_proxy"),
            "{e}"
        );
        assert!(!message.contains("pw"), "proxy credentials in {e}");
    }

    #[test]
    fn a_socks_proxy_from_the_environment_is_used_not_a_panic() {
        // ureq without its socks feature panicked in the platform thread on a socks5:// proxy:
        // the thread died, and the node never registered nor said why.
        let port = dead_port();
        for scheme in ["socks5", "socks5h", "socks4"] {
            let proxy = format!("{scheme}://127.0.0.1:{port}");
            let e = register_error("http://127.0.0.1:9", &[("ALL_PROXY", &proxy)]);
            assert!(
                e.to_string().contains(&format!("proxy 127.0.0.1:{port}")),
                "{scheme}: {e}"
            );
        }
    }

    #[test]
    fn ca_file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = load_ca_file(&missing).unwrap_err().to_string();
        assert!(
            e.contains("missing.pem") && e.contains("central_platform.ca_file"),
            "{e}"
        );
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "hello\n").unwrap();
        let e = load_ca_file(&not_pem).unwrap_err().to_string();
        assert!(e.contains("not.pem") && e.contains("no certificate"), "{e}");
    }

    #[test]
    fn a_ca_file_that_is_not_a_regular_file_is_refused_at_once() {
        // A FIFO would block the start, before the API exists, waiting for a writer.
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("ca.pem");
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo(3) on a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let (tx, rx) = std::sync::mpsc::channel();
        let probe = fifo.clone();
        std::thread::spawn(move || {
            let _ = tx.send(
                load_ca_file(&probe)
                    .map(|c| c.len())
                    .map_err(|e| e.to_string()),
            );
        });
        let e = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("load_ca_file blocked on a FIFO")
            .unwrap_err();
        assert!(
            e.contains("ca.pem") && e.contains("not a regular file"),
            "{e}"
        );
        let e = load_ca_file(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("ca_file") && e.contains("not a regular file"),
            "{e}"
        );
    }

    #[test]
    fn ca_file_certificates_are_loaded() {
        // The test CA of the HTTPS integration test, and it twice with a key between: both load.
        let ca = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls/ca.pem");
        assert_eq!(load_ca_file(&ca).unwrap().len(), 1);
        let pem = std::fs::read_to_string(&ca).unwrap();
        let key = std::fs::read_to_string(ca.with_file_name("server.key")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("bundle.pem");
        std::fs::write(&bundle, format!("{pem}{key}{pem}")).unwrap();
        assert_eq!(load_ca_file(&bundle).unwrap().len(), 2);
    }

    #[test]
    fn roots_are_never_empty() {
        let (roots, source) = system_roots();
        assert!(roots.len() > 50, "{} roots from {source}", roots.len());
    }

    #[test]
    fn auth_errors_say_the_token_was_rejected() {
        let e = RequestError::Status {
            url: "https://p/api/v1/nodes/register".into(),
            status: 401,
            body: String::new(),
        };
        assert!(e.is_auth_rejected());
        assert!(
            e.to_string().contains("rejected the bootstrap token"),
            "{e}"
        );
    }
}
