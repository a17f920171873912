//! fake_frpc: a stand-in for official frpc 0.61 (fatedier/frp) that the tests own and can make
//! misbehave. It behaves like frpc wherever the agent can see it; it does not talk to an frps.
//!
//! Built by `cargo build --example fake_frpc` (tests/common/fake_frpc.rs does it for the tests).
//!
//! # Command line (frpc's)
//! `fake_frpc -c FILE` (also `--config FILE`, `-c=FILE`), `fake_frpc verify -c FILE`,
//! `fake_frpc -v` (prints `0.61.1`). Anything else: frpc's cobra error, exit 1.
//!
//! # Config (frp >= 0.52 TOML schema, as frpc 0.61 reads it)
//! * The file is first rendered as a Go template by frpc: any `{{` here is refused with
//!   `template: frp:LINE: ...`, exit 1 (real frpc would render it, which is the injection the
//!   agent must prevent).
//! * Legacy INI (a `[common]` section, which official frpc still loads with a deprecation
//!   warning) is refused: frpc's warning, then an error, exit 1. The agent must write TOML.
//! * TOML syntax errors: `toml: line L, column C: ...`, exit 1.
//! * Strict decoding (frpc's default `--strict_config=true`): an unknown key anywhere gives
//!   `json: unknown field "KEY"` (inside `[[proxies]]`: `unmarshal ProxyConfig error: json:
//!   unknown field "KEY"`), a wrong type gives `json: cannot unmarshal ...`, exit 1. Known keys:
//!   the whole client common section of 0.61 (`serverAddr`, `serverPort`, `user`,
//!   `loginFailExit`, `auth.{method,token,additionalScopes,oidc}`, `transport.{protocol,tls.{enable,
//!   trustedCaFile,certFile,keyFile,serverName,disableCustomTLSFirstByte},...}`,
//!   `log.{to,level,maxDays,disablePrintColor}`, `webServer.{addr,port,user,password,...}`, ...).
//!   Proxies of type tcp, udp (`remotePort`) and stcp (`secretKey`, `allowUsers`) with the base
//!   fields (`name`, `type`, `localIP`, `localPort`, `transport`, `metadatas`, ...); other frp
//!   proxy types are refused as not modelled by this fake; an unknown type gives
//!   `unknown proxy type: T`.
//! * frpc's validation: auth method, log level, transport protocol, ports in range, proxy name
//!   not empty, duplicate names.
//! * `user = "U"` prefixes proxy names, as frpc does: proxy `agent-api` shows up in logs and
//!   `/api/status` as `U.agent-api`.
//!
//! # Runtime
//! * Logs in frpc's format (`2024-01-01 12:00:00.000 [I] [client/service.go:287] [RUNID] login
//!   to server success, get run id [RUNID]`, `[NAME] start proxy success`, `[W]`/`[E]` for
//!   problems), to stdout when `log.to = "console"` (ANSI colours unless
//!   `log.disablePrintColor = true`) or appended to the file `log.to`; `log.level` filters.
//! * Login is simulated (no frps): it succeeds unless a knob says otherwise. A failed login with
//!   `loginFailExit` true (frpc's default) exits 1 with frpc's message; with false it retries
//!   (1 s doubling to 10 s), logging each failure.
//! * Every tcp/udp proxy reports `remote_addr` = `serverAddr:remotePort`; remotePort 0 gets a
//!   free port (frps's choice). A tcp proxy really listens on 127.0.0.1:remotePort and forwards
//!   connections to `localIP:localPort`, so tests can reach the published service; a remote port
//!   that is already taken gives the proxy frps's `port already used` error. stcp proxies have an
//!   empty remote_addr, as with frps.
//! * Admin API on `webServer.addr:webServer.port` (none when port is 0), Basic auth when
//!   `webServer.user`/`password` are set (failure: 200 ms delay, `401 Unauthorized` with
//!   `WWW-Authenticate: Basic realm="Restricted"`): `GET /healthz`, `GET /api/status` (frpc's JSON
//!   grouped by proxy type: name/type/status/err/local_addr/plugin/remote_addr, `{}` before
//!   login), `GET /api/reload[?strictConfig=true]` (re-reads the file; strict only when asked;
//!   400 + message on a bad file; proxies whose config is unchanged keep running, changed ones
//!   restart, as frpc's proxy manager does; changes to the common section are ignored, as frpc
//!   does), `POST /api/stop` (exits 0), `GET /api/config`. Wrong method: 405; other paths: 404.
//! * SIGTERM/SIGINT: journaled, then the process dies of that signal, as frpc 0.61 (tcp
//!   transport) does: no graceful close, no log line.
//!
//! # Knobs (environment variables)
//! * `FAKE_FRPC_JOURNAL=PATH`: append one JSON object per line per event (below).
//! * `FAKE_FRPC_CRASH_AFTER_SECS=S` (float): after S seconds, `panic:` on stderr and exit 2.
//! * `FAKE_FRPC_CRASH_STARTS=K`: with the crash knob, crash only in the first K starts (counted
//!   from `start` events in the journal, which is then required).
//! * `FAKE_FRPC_FAIL_LOGIN=MSG`: every login fails with MSG (`1`: frps's token mismatch message).
//! * `FAKE_FRPC_FAIL_LOGIN_COUNT=N`: only the first N login attempts of this process fail.
//! * `FAKE_FRPC_SERVER_TOKEN=T`: login fails with frps's token message unless `auth.token` is T.
//! * `FAKE_FRPC_LOGIN_DELAY_MS=MS`: each login attempt takes this long.
//! * `FAKE_FRPC_FAIL_PROXY=NAME[,NAME...]` (names as written in the file, without the user
//!   prefix): those proxies get status `start error` with `FAKE_FRPC_FAIL_PROXY_ERROR` (default
//!   `port already used`).
//! * `FAKE_FRPC_REJECT_RELOAD=1`: `/api/reload` answers 500 and changes nothing.
//! * `FAKE_FRPC_NO_ADMIN=1`: no admin API even when `webServer.port` is set (as a build without
//!   one): reloads cannot work, only restarts.
//! * `FAKE_FRPC_IGNORE_SIGTERM=1`: SIGTERM is journaled and ignored (only SIGKILL stops it).
//! * `FAKE_FRPC_HANG_ADMIN=1`: every admin API request is journaled (`api_hang`) and never
//!   answered: the connection stays open until the process exits.
//! * `FAKE_FRPC_LEAK_SECRETS=1`: a hostile log line at start naming `auth.token`,
//!   `webServer.password` and every `secretKey` (for tests that the agent scrubs frpc's output).
//!
//! # Journal events (`"event"` field)
//! `start` (pid, ppid, config, mode as octal string, argv), `config_error` (error),
//! `admin_listen` (addr), `login` (ok, attempt, error), `proxy` (name, status, err, remote_addr),
//! `api` (method, path, code, authorized), `reload` (code, strict, added, removed, unchanged,
//! common_changed, error), `api_hang` (method, path), `signal` (signal, action), `crash`,
//! `exit` (code, reason).

use std::collections::{BTreeMap, HashMap};
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value as Json};
use toml::Value;

const VERSION: &str = "0.61.1";
const TOKEN_MISMATCH: &str = "token in login doesn't match token from configuration";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let cli = match parse_cli(&args[1..]) {
        Ok(cli) => cli,
        Err(message) => {
            eprintln!("Error: {message}");
            std::process::exit(1);
        }
    };
    match cli {
        Cli::Version => println!("{VERSION}"),
        Cli::Verify(path) => match load(&path, true) {
            Ok(_) => println!("frpc: the configuration file {path} syntax is ok"),
            Err(e) => {
                println!("{e}");
                std::process::exit(1);
            }
        },
        Cli::Run(path) => run(&path, &args),
    }
}

enum Cli {
    Version,
    Verify(String),
    Run(String),
}

fn parse_cli(args: &[String]) -> Result<Cli, String> {
    let mut config = "./frpc.ini".to_string();
    let mut verify = false;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-v" | "--version" => return Ok(Cli::Version),
            "verify" => verify = true,
            "-c" | "--config" => {
                config = it
                    .next()
                    .ok_or_else(|| format!("flag needs an argument: {arg}"))?
                    .clone()
            }
            other => {
                if let Some(v) = other
                    .strip_prefix("-c=")
                    .or(other.strip_prefix("--config="))
                {
                    config = v.to_string();
                } else if other.starts_with('-') {
                    return Err(format!("unknown flag: {other}"));
                } else {
                    return Err(format!("unknown command \"{other}\" for \"frpc\""));
                }
            }
        }
    }
    Ok(if verify {
        Cli::Verify(config)
    } else {
        Cli::Run(config)
    })
}

// ---------------------------------------------------------------------------------------------
// Journal and log

struct Journal(Option<Mutex<std::fs::File>>);

impl Journal {
    fn open() -> Journal {
        Journal(std::env::var_os("FAKE_FRPC_JOURNAL").map(|p| {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p)
                .unwrap_or_else(|e| panic!("FAKE_FRPC_JOURNAL {}: {e}", p.to_string_lossy()));
            Mutex::new(file)
        }))
    }

    fn record(&self, event: &str, mut fields: Json) {
        let Some(file) = &self.0 else { return };
        fields["event"] = json!(event);
        fields["pid"] = json!(std::process::id());
        fields["t_ms"] = json!(now_ms());
        let mut line = fields.to_string();
        line.push('\n');
        if let Ok(mut f) = file.lock() {
            // One write per line so concurrent writers (several fakes) never interleave.
            let _ = f.write_all(line.as_bytes());
        }
    }
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

#[derive(Clone, Copy, PartialEq, PartialOrd)]
enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    fn parse(s: &str) -> Option<Level> {
        Some(match s {
            "trace" => Level::Trace,
            "debug" => Level::Debug,
            "info" => Level::Info,
            "warn" => Level::Warn,
            "error" => Level::Error,
            _ => return None,
        })
    }
    fn letter(self) -> &'static str {
        match self {
            Level::Trace => "T",
            Level::Debug => "D",
            Level::Info => "I",
            Level::Warn => "W",
            Level::Error => "E",
        }
    }
    fn colour(self) -> &'static str {
        match self {
            Level::Trace | Level::Debug => "\x1b[1;34m",
            Level::Info => "\x1b[1;32m",
            Level::Warn => "\x1b[1;33m",
            Level::Error => "\x1b[1;31m",
        }
    }
}

struct Logger {
    level: Level,
    colour: bool,
    file: Option<Mutex<std::fs::File>>,
}

impl Logger {
    fn new(log: &LogConfig) -> Logger {
        let file = (log.to != "console").then(|| {
            let f = OpenOptions::new().create(true).append(true).open(&log.to);
            Mutex::new(f.unwrap_or_else(|e| panic!("open log file {}: {e}", log.to)))
        });
        Logger {
            level: Level::parse(&log.level).unwrap_or(Level::Info),
            colour: file.is_none() && !log.disable_print_color,
            file,
        }
    }

    /// One frpc log line: `2024-01-01 12:00:00.000 [I] [client/service.go:287] message`.
    fn log(&self, level: Level, caller: &str, message: &str) {
        if level < self.level {
            return;
        }
        let line = format!("{} [{}] [{caller}] {message}", timestamp(), level.letter());
        let line = if self.colour {
            format!("{}{line}\x1b[0m\n", level.colour())
        } else {
            format!("{line}\n")
        };
        match &self.file {
            Some(f) => {
                if let Ok(mut f) = f.lock() {
                    let _ = f.write_all(line.as_bytes());
                }
            }
            None => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(line.as_bytes());
                let _ = out.flush();
            }
        }
    }
}

/// Local time is what frpc prints; the tests run in UTC, so UTC it is.
fn timestamp() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

// ---------------------------------------------------------------------------------------------
// Config: frpc's strict schema

struct LogConfig {
    to: String,
    level: String,
    disable_print_color: bool,
}

struct ClientConfig {
    common: Value,
    server_addr: String,
    login_fail_exit: bool,
    token: String,
    log: LogConfig,
    web_addr: String,
    web_port: u16,
    web_user: String,
    web_password: String,
    proxies: Vec<ProxyConfig>,
}

#[derive(Clone)]
struct ProxyConfig {
    /// The name as frpc uses it: `user.name` when `user` is set.
    name: String,
    /// The name as written in the file.
    raw_name: String,
    kind: String,
    local_ip: String,
    local_port: u16,
    remote_port: u16,
    /// The whole `[[proxies]]` table: a reload restarts a proxy only when this changed.
    table: Value,
}

#[derive(Clone, Copy)]
enum Kind {
    Str,
    Int,
    Bool,
    StrList,
    StrMap,
    /// Not modelled in detail: any value is accepted.
    Any,
}

enum Field {
    Leaf(&'static str, Kind),
    Table(&'static str, &'static [Field]),
}

use Field::{Leaf, Table};

const TLS_FIELDS: &[Field] = &[
    Leaf("certFile", Kind::Str),
    Leaf("keyFile", Kind::Str),
    Leaf("trustedCaFile", Kind::Str),
    Leaf("serverName", Kind::Str),
];

const CLIENT_TLS_FIELDS: &[Field] = &[
    Leaf("enable", Kind::Bool),
    Leaf("disableCustomTLSFirstByte", Kind::Bool),
    Leaf("certFile", Kind::Str),
    Leaf("keyFile", Kind::Str),
    Leaf("trustedCaFile", Kind::Str),
    Leaf("serverName", Kind::Str),
];

/// frpc 0.61's `ClientCommonConfig` (pkg/config/v1/client.go and common.go).
const COMMON_FIELDS: &[Field] = &[
    Table(
        "auth",
        &[
            Leaf("method", Kind::Str),
            Leaf("additionalScopes", Kind::StrList),
            Leaf("token", Kind::Str),
            Leaf("oidc", Kind::Any),
        ],
    ),
    Leaf("user", Kind::Str),
    Leaf("serverAddr", Kind::Str),
    Leaf("serverPort", Kind::Int),
    Leaf("natHoleStunServer", Kind::Str),
    Leaf("dnsServer", Kind::Str),
    Leaf("loginFailExit", Kind::Bool),
    Leaf("start", Kind::StrList),
    Table(
        "log",
        &[
            Leaf("to", Kind::Str),
            Leaf("level", Kind::Str),
            Leaf("maxDays", Kind::Int),
            Leaf("disablePrintColor", Kind::Bool),
        ],
    ),
    Table(
        "webServer",
        &[
            Leaf("addr", Kind::Str),
            Leaf("port", Kind::Int),
            Leaf("user", Kind::Str),
            Leaf("password", Kind::Str),
            Leaf("assetsDir", Kind::Str),
            Leaf("pprofEnable", Kind::Bool),
            Table("tls", TLS_FIELDS),
        ],
    ),
    Table(
        "transport",
        &[
            Leaf("protocol", Kind::Str),
            Leaf("dialServerTimeout", Kind::Int),
            Leaf("dialServerKeepalive", Kind::Int),
            Leaf("connectServerLocalIP", Kind::Str),
            Leaf("proxyURL", Kind::Str),
            Leaf("poolCount", Kind::Int),
            Leaf("tcpMux", Kind::Bool),
            Leaf("tcpMuxKeepaliveInterval", Kind::Int),
            Leaf("quic", Kind::Any),
            Leaf("heartbeatInterval", Kind::Int),
            Leaf("heartbeatTimeout", Kind::Int),
            Table("tls", CLIENT_TLS_FIELDS),
        ],
    ),
    Leaf("virtualNet", Kind::Any),
    Leaf("featureGates", Kind::Any),
    Leaf("udpPacketSize", Kind::Int),
    Leaf("metadatas", Kind::StrMap),
    Leaf("includes", Kind::StrList),
];

/// `ProxyBaseConfig` of frpc 0.61 (pkg/config/v1/proxy.go).
const PROXY_BASE_FIELDS: &[Field] = &[
    Leaf("name", Kind::Str),
    Leaf("type", Kind::Str),
    Leaf("annotations", Kind::StrMap),
    Table(
        "transport",
        &[
            Leaf("useEncryption", Kind::Bool),
            Leaf("useCompression", Kind::Bool),
            Leaf("bandwidthLimit", Kind::Str),
            Leaf("bandwidthLimitMode", Kind::Str),
            Leaf("proxyProtocolVersion", Kind::Str),
        ],
    ),
    Leaf("metadatas", Kind::StrMap),
    Table(
        "loadBalancer",
        &[Leaf("group", Kind::Str), Leaf("groupKey", Kind::Str)],
    ),
    Table(
        "healthCheck",
        &[
            Leaf("type", Kind::Str),
            Leaf("timeoutSeconds", Kind::Int),
            Leaf("maxFailed", Kind::Int),
            Leaf("intervalSeconds", Kind::Int),
            Leaf("path", Kind::Str),
            Leaf("httpHeaders", Kind::Any),
        ],
    ),
    Leaf("localIP", Kind::Str),
    Leaf("localPort", Kind::Int),
    Leaf("plugin", Kind::Any),
];

const TCP_UDP_FIELDS: &[Field] = &[Leaf("remotePort", Kind::Int)];
const STCP_FIELDS: &[Field] = &[
    Leaf("secretKey", Kind::Str),
    Leaf("allowUsers", Kind::StrList),
];

/// frp's proxy types that this fake does not model (the agent never writes them).
const UNMODELLED_TYPES: &[&str] = &["http", "https", "tcpmux", "xtcp", "sudp"];

fn go_type(kind: Kind) -> &'static str {
    match kind {
        Kind::Str => "string",
        Kind::Int => "int",
        Kind::Bool => "bool",
        Kind::StrList => "[]string",
        Kind::StrMap => "map[string]string",
        Kind::Any => "any",
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::String(_) | Value::Datetime(_) => "string",
        Value::Integer(_) | Value::Float(_) => "number",
        Value::Boolean(_) => "bool",
        Value::Array(_) => "array",
        Value::Table(_) => "object",
    }
}

fn kind_matches(kind: Kind, v: &Value) -> bool {
    match kind {
        Kind::Str => v.is_str(),
        Kind::Int => v.is_integer(),
        Kind::Bool => v.is_bool(),
        Kind::StrList => v.as_array().is_some_and(|a| a.iter().all(Value::is_str)),
        Kind::StrMap => v.as_table().is_some_and(|t| t.values().all(Value::is_str)),
        Kind::Any => true,
    }
}

/// Checks `table` against `fields` the way Go's json decoder does. `strict` rejects unknown keys.
fn check_fields(
    table: &toml::Table,
    fields: &[&[Field]],
    path: &str,
    go_struct: &str,
    strict: bool,
) -> Result<(), String> {
    for (key, value) in table {
        let found = fields.iter().flat_map(|f| f.iter()).find(|f| match f {
            Leaf(name, _) | Table(name, _) => name == key,
        });
        let field_path = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        match found {
            None if strict => return Err(format!("json: unknown field \"{key}\"")),
            None => {}
            Some(Leaf(_, kind)) if !kind_matches(*kind, value) => {
                return Err(format!(
                    "json: cannot unmarshal {} into Go struct field {go_struct}.{field_path} of type {}",
                    json_kind(value),
                    go_type(*kind)
                ));
            }
            Some(Leaf(..)) => {}
            Some(Table(_, sub)) => match value.as_table() {
                Some(t) => check_fields(t, &[sub], &field_path, go_struct, strict)?,
                None => {
                    return Err(format!(
                        "json: cannot unmarshal {} into Go struct field {go_struct}.{field_path} of type object",
                        json_kind(value)
                    ))
                }
            },
        }
    }
    Ok(())
}

fn get<'a>(t: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(t, |v, k| v.get(k))
}

fn get_str(t: &Value, path: &str, default: &str) -> String {
    get(t, path)
        .and_then(Value::as_str)
        .unwrap_or(default)
        .to_string()
}

fn get_int(t: &Value, path: &str) -> i64 {
    get(t, path).and_then(Value::as_integer).unwrap_or(0)
}

fn get_bool(t: &Value, path: &str, default: bool) -> bool {
    get(t, path).and_then(Value::as_bool).unwrap_or(default)
}

fn port(value: i64, field: &str) -> Result<u16, String> {
    u16::try_from(value)
        .map_err(|_| format!("{field}: port number {value} must be in the range 0..65535"))
}

/// Reads and checks the config file as frpc 0.61 does; the error text is what frpc prints.
fn load(path: &str, strict: bool) -> Result<ClientConfig, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("open {path}: {}", io_error(&e)))?;
    if let Some(line) = text.lines().position(|l| l.contains("{{")) {
        return Err(format!(
            "template: frp:{}: the fake frpc refuses template actions (official frpc would \
             render this \"{{{{ ... }}}}\" as a Go template)",
            line + 1
        ));
    }
    // frpc detects legacy INI (a `[common]` section) before anything else.
    if text.lines().any(|l| l.trim() == "[common]") {
        return Err(
            "WARNING: ini format is deprecated and the support will be removed in the \
                    future, please use yaml/json/toml format instead!\n\
                    fake frpc: legacy INI configuration ([common] section) refused: write the \
                    TOML schema"
                .to_string(),
        );
    }
    let root: toml::Table = toml::from_str(&text).map_err(|e| toml_error(&text, &e))?;
    let mut common = root.clone();
    let proxies = common.remove("proxies");
    let visitors = common.remove("visitors");
    check_fields(&common, &[COMMON_FIELDS], "", "ClientCommonConfig", strict)?;
    if visitors.is_some() {
        return Err("fake frpc: [[visitors]] are not modelled".to_string());
    }
    let common = Value::Table(common);

    let auth_method = get_str(&common, "auth.method", "token");
    if auth_method != "token" && auth_method != "oidc" {
        return Err("invalid auth method, optional values are [token oidc]".to_string());
    }
    let level = get_str(&common, "log.level", "info");
    if Level::parse(&level).is_none() {
        return Err(
            "invalid log level, optional values are [trace debug info warn error]".to_string(),
        );
    }
    let protocol = get_str(&common, "transport.protocol", "tcp");
    if !["tcp", "kcp", "quic", "websocket", "wss"].contains(&protocol.as_str()) {
        return Err(
            "invalid transport.protocol, optional values are [tcp kcp quic websocket wss]"
                .to_string(),
        );
    }
    let web_port = port(get_int(&common, "webServer.port"), "webServer.port")?;
    let user = get_str(&common, "user", "");

    let mut parsed = Vec::new();
    let list = match proxies {
        None => Vec::new(),
        Some(Value::Array(list)) => list,
        Some(other) => {
            return Err(format!(
                "json: cannot unmarshal {} into Go struct field ClientConfig.proxies of type []v1.TypedProxyConfig",
                json_kind(&other)
            ))
        }
    };
    for entry in list {
        parsed.push(proxy(entry, &user, strict)?);
    }
    for (i, p) in parsed.iter().enumerate() {
        if parsed[..i].iter().any(|q| q.name == p.name) {
            return Err(format!("proxy name [{}] is duplicated", p.name));
        }
    }

    Ok(ClientConfig {
        server_addr: get_str(&common, "serverAddr", "0.0.0.0"),
        login_fail_exit: get_bool(&common, "loginFailExit", true),
        token: get_str(&common, "auth.token", ""),
        log: LogConfig {
            to: get_str(&common, "log.to", "console"),
            level,
            disable_print_color: get_bool(&common, "log.disablePrintColor", false),
        },
        web_addr: get_str(&common, "webServer.addr", "127.0.0.1"),
        web_port,
        web_user: get_str(&common, "webServer.user", ""),
        web_password: get_str(&common, "webServer.password", ""),
        proxies: parsed,
        common,
    })
}

fn proxy(entry: Value, user: &str, strict: bool) -> Result<ProxyConfig, String> {
    let Some(table) = entry.as_table() else {
        return Err(format!(
            "json: cannot unmarshal {} into Go value of type v1.TypedProxyConfig",
            json_kind(&entry)
        ));
    };
    let kind = get_str(&entry, "type", "");
    let extra = match kind.as_str() {
        "tcp" | "udp" => TCP_UDP_FIELDS,
        "stcp" => STCP_FIELDS,
        t if UNMODELLED_TYPES.contains(&t) => {
            return Err(format!("fake frpc: proxy type {t} is not modelled"))
        }
        t => return Err(format!("unknown proxy type: {t}")),
    };
    check_fields(
        table,
        &[PROXY_BASE_FIELDS, extra],
        "",
        "v1.ProxyBaseConfig",
        strict,
    )
    .map_err(|e| format!("unmarshal ProxyConfig error: {e}"))?;
    let raw_name = get_str(&entry, "name", "");
    if raw_name.is_empty() {
        return Err("proxy : name should not be empty".to_string());
    }
    let local_port = port(get_int(&entry, "localPort"), "localPort")
        .map_err(|e| format!("proxy {raw_name}: localPort: {e}"))?;
    let remote_port = port(get_int(&entry, "remotePort"), "remotePort")
        .map_err(|e| format!("proxy {raw_name}: {e}"))?;
    Ok(ProxyConfig {
        name: if user.is_empty() {
            raw_name.clone()
        } else {
            format!("{user}.{raw_name}")
        },
        raw_name,
        local_ip: get_str(&entry, "localIP", "127.0.0.1"),
        local_port,
        remote_port,
        table: Value::Table(known_only(table, &[PROXY_BASE_FIELDS, extra])),
        kind,
    })
}

/// The table as Go decodes it without strict mode: unknown keys are dropped, so a reload that
/// only adds an unknown key leaves the proxy unchanged (and running).
fn known_only(table: &toml::Table, fields: &[&[Field]]) -> toml::Table {
    let mut out = toml::Table::new();
    for (key, value) in table {
        let found = fields.iter().flat_map(|f| f.iter()).find(|f| match f {
            Leaf(name, _) | Table(name, _) => name == key,
        });
        match (found, value.as_table()) {
            (Some(Leaf(..)), _) => {
                out.insert(key.clone(), value.clone());
            }
            (Some(Table(_, sub)), Some(t)) => {
                out.insert(key.clone(), Value::Table(known_only(t, &[sub])));
            }
            _ => {}
        }
    }
    out
}

fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let (line, col) = match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            (line, col)
        }
        None => (0, 0),
    };
    format!("toml: line {line}, column {col}: {}", e.message().trim())
}

fn io_error(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory",
        std::io::ErrorKind::PermissionDenied => "permission denied",
        _ => "input/output error",
    }
}

// ---------------------------------------------------------------------------------------------
// Running proxies

struct RunningProxy {
    cfg: ProxyConfig,
    status: &'static str,
    err: String,
    remote_addr: String,
    stop: Option<Arc<AtomicBool>>,
}

struct State {
    cfg: ClientConfig,
    run_id: Option<String>,
    proxies: BTreeMap<String, RunningProxy>,
}

struct Fake {
    config_path: String,
    state: Mutex<State>,
    log: Logger,
    journal: Journal,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn fail_proxy(raw_name: &str) -> Option<String> {
    let names = env("FAKE_FRPC_FAIL_PROXY")?;
    names.split(',').any(|n| n.trim() == raw_name).then(|| {
        env("FAKE_FRPC_FAIL_PROXY_ERROR").unwrap_or_else(|| "port already used".to_string())
    })
}

impl Fake {
    /// Starts one proxy the way frpc + frps do: `start proxy success` or `start error`.
    fn start_proxy(&self, state: &State, cfg: &ProxyConfig) -> RunningProxy {
        let run_id = state.run_id.clone().unwrap_or_default();
        let mut proxy = RunningProxy {
            cfg: cfg.clone(),
            status: "running",
            err: String::new(),
            remote_addr: String::new(),
            stop: None,
        };
        let result = match fail_proxy(&cfg.raw_name) {
            Some(err) => Err(err),
            None if cfg.kind == "stcp" => Ok(()),
            None => self.bind_remote(cfg).map(|(port, stop)| {
                proxy.remote_addr = format!("{}:{port}", state.cfg.server_addr);
                proxy.stop = stop;
            }),
        };
        match result {
            Ok(()) => self.log.log(
                Level::Info,
                "client/control.go:168",
                &format!("[{run_id}] [{}] start proxy success", cfg.name),
            ),
            Err(err) => {
                self.log.log(
                    Level::Warn,
                    "client/control.go:166",
                    &format!("[{run_id}] [{}] start error: {err}", cfg.name),
                );
                proxy.status = "start error";
                proxy.err = err;
            }
        }
        self.journal.record(
            "proxy",
            json!({"name": cfg.name, "status": proxy.status, "err": proxy.err,
                   "remote_addr": proxy.remote_addr}),
        );
        proxy
    }

    /// The remote port frps would open: tcp proxies really listen on it and forward.
    fn bind_remote(&self, cfg: &ProxyConfig) -> Result<(u16, Option<Arc<AtomicBool>>), String> {
        if cfg.kind == "udp" {
            let port = if cfg.remote_port != 0 {
                cfg.remote_port
            } else {
                std::net::UdpSocket::bind("127.0.0.1:0")
                    .and_then(|s| s.local_addr())
                    .map(|a| a.port())
                    .map_err(|_| "no available port".to_string())?
            };
            return Ok((port, None));
        }
        let listener = TcpListener::bind(("127.0.0.1", cfg.remote_port))
            .map_err(|_| "port already used".to_string())?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let target = format!("{}:{}", cfg.local_ip, cfg.local_port);
        let flag = stop.clone();
        std::thread::spawn(move || forward(listener, target, flag));
        Ok((port, Some(stop)))
    }

    fn stop_proxy(&self, proxy: &RunningProxy) {
        if let Some(stop) = &proxy.stop {
            stop.store(true, Ordering::SeqCst);
        }
    }
}

/// Accepts on the remote port and copies bytes both ways to the local service, until `stop`.
fn forward(listener: TcpListener, target: String, stop: Arc<AtomicBool>) {
    let mut conns: Vec<TcpStream> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                let _ = client.set_nonblocking(false);
                let Ok(local) = TcpStream::connect_timeout(
                    &match target.parse() {
                        Ok(a) => a,
                        Err(_) => continue,
                    },
                    Duration::from_secs(5),
                ) else {
                    continue;
                };
                conns.extend(client.try_clone().ok());
                conns.extend(local.try_clone().ok());
                pipe(&client, &local);
                pipe(&local, &client);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    // A removed proxy takes its connections with it, as frpc closes its work connections.
    for s in &conns {
        let _ = s.shutdown(Shutdown::Both);
    }
}

fn pipe(from: &TcpStream, to: &TcpStream) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
}

// ---------------------------------------------------------------------------------------------
// Main loop

enum Event {
    Stop,
    Signal(i32),
}

fn run(path: &str, argv: &[String]) -> ! {
    let journal = Journal::open();
    let mode = std::fs::metadata(path).map(|m| format!("{:04o}", m.permissions().mode() & 0o7777));
    journal.record(
        "start",
        json!({"ppid": std::os::unix::process::parent_id(), "config": path,
               "mode": mode.unwrap_or_default(), "argv": argv}),
    );
    let cfg = match load(path, true) {
        Ok(cfg) => cfg,
        Err(e) => {
            journal.record("config_error", json!({"error": e}));
            println!("{e}");
            exit(&journal, 1, "config error");
        }
    };
    let log = Logger::new(&cfg.log);
    let (events_tx, events) = std::sync::mpsc::channel();
    spawn_signal_thread(events_tx.clone());

    log.log(
        Level::Info,
        "sub/root.go:142",
        &format!("start frpc service for config file [{path}]"),
    );
    let admin = if cfg.web_port == 0 || env("FAKE_FRPC_NO_ADMIN").is_some() {
        None
    } else {
        match TcpListener::bind((cfg.web_addr.as_str(), cfg.web_port)) {
            Ok(l) => Some(l),
            Err(e) => {
                let msg = format!(
                    "listen tcp {}:{}: bind: {}",
                    cfg.web_addr,
                    cfg.web_port,
                    if e.kind() == std::io::ErrorKind::AddrInUse {
                        "address already in use"
                    } else {
                        "cannot assign requested address"
                    }
                );
                journal.record("config_error", json!({"error": msg}));
                println!("{msg}");
                exit(&journal, 1, "admin listen failed");
            }
        }
    };
    let fake = Arc::new(Fake {
        config_path: path.to_string(),
        state: Mutex::new(State {
            cfg,
            run_id: None,
            proxies: BTreeMap::new(),
        }),
        log,
        journal,
    });
    if let Some(listener) = admin {
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        fake.log.log(
            Level::Info,
            "client/service.go:174",
            &format!("admin server listen on {addr}"),
        );
        fake.journal.record("admin_listen", json!({"addr": addr}));
        let (fake, tx) = (fake.clone(), events_tx.clone());
        std::thread::spawn(move || serve_admin(listener, fake, tx));
    }
    if let Some(secs) = env("FAKE_FRPC_CRASH_AFTER_SECS").and_then(|s| s.parse::<f64>().ok()) {
        if crash_this_start() {
            let fake = fake.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_secs_f64(secs.max(0.0)));
                fake.journal.record("crash", json!({"after_secs": secs}));
                eprintln!("panic: fake frpc crash (FAKE_FRPC_CRASH_AFTER_SECS={secs})");
                exit(&fake.journal, 2, "crash");
            });
        }
    }
    {
        let fake = fake.clone();
        std::thread::spawn(move || login_loop(&fake));
    }
    match events.recv() {
        Ok(Event::Stop) | Err(_) => {
            fake.log.log(
                Level::Info,
                "sub/root.go:150",
                &format!("frpc service for config file [{path}] stopped"),
            );
            exit(&fake.journal, 0, "api stop");
        }
        Ok(Event::Signal(sig)) => {
            // frpc 0.61 with the tcp transport does not catch SIGTERM: it dies of it.
            let _ = std::io::stdout().flush();
            fake.journal.record(
                "exit",
                json!({"code": null, "reason": format!("signal {sig}")}),
            );
            // SAFETY: plain libc calls restoring the default action and re-raising.
            unsafe {
                libc::signal(sig, libc::SIG_DFL);
                libc::raise(sig);
            }
            exit(&fake.journal, 128 + sig, "signal");
        }
    }
}

fn exit(journal: &Journal, code: i32, reason: &str) -> ! {
    journal.record("exit", json!({"code": code, "reason": reason}));
    let _ = std::io::stdout().flush();
    std::process::exit(code)
}

/// With `FAKE_FRPC_CRASH_STARTS=K`, only the first K starts (journal `start` lines) crash.
fn crash_this_start() -> bool {
    let Some(k) = env("FAKE_FRPC_CRASH_STARTS").and_then(|s| s.parse::<usize>().ok()) else {
        return true;
    };
    let Some(path) = env("FAKE_FRPC_JOURNAL") else {
        panic!("FAKE_FRPC_CRASH_STARTS needs FAKE_FRPC_JOURNAL");
    };
    let starts = std::fs::read_to_string(path)
        .map(|t| {
            t.lines()
                .filter(|l| l.contains("\"event\":\"start\""))
                .count()
        })
        .unwrap_or(0);
    starts <= k
}

fn spawn_signal_thread(tx: std::sync::mpsc::Sender<Event>) {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let ignore_term = env("FAKE_FRPC_IGNORE_SIGTERM").is_some();
    let mut signals = match signal_hook::iterator::Signals::new([SIGTERM, SIGINT]) {
        Ok(s) => s,
        Err(e) => panic!("signal handler: {e}"),
    };
    // The journal file is reopened by the thread (it is append-only, lines stay whole).
    std::thread::spawn(move || {
        let journal = Journal::open();
        for sig in signals.forever() {
            let name = if sig == SIGTERM { "SIGTERM" } else { "SIGINT" };
            if sig == SIGTERM && ignore_term {
                journal.record("signal", json!({"signal": name, "action": "ignored"}));
                continue;
            }
            journal.record("signal", json!({"signal": name, "action": "exit"}));
            let _ = tx.send(Event::Signal(sig));
        }
    });
}

fn login_loop(fake: &Fake) {
    let fail_all = env("FAKE_FRPC_FAIL_LOGIN").map(|m| {
        if m == "1" {
            TOKEN_MISMATCH.to_string()
        } else {
            m
        }
    });
    let fail_count = env("FAKE_FRPC_FAIL_LOGIN_COUNT").and_then(|s| s.parse::<u32>().ok());
    let server_token = std::env::var("FAKE_FRPC_SERVER_TOKEN").ok();
    let delay = env("FAKE_FRPC_LOGIN_DELAY_MS").and_then(|s| s.parse::<u64>().ok());
    let mut wait = Duration::from_secs(1);
    for attempt in 1u32.. {
        fake.log.log(
            Level::Info,
            "client/service.go:295",
            "try to connect to server...",
        );
        if let Some(ms) = delay {
            std::thread::sleep(Duration::from_millis(ms));
        }
        let (token, login_fail_exit) = match fake.state.lock() {
            Ok(s) => (s.cfg.token.clone(), s.cfg.login_fail_exit),
            Err(_) => return,
        };
        let error = if let Some(m) = &fail_all {
            Some(m.clone())
        } else if fail_count.is_some_and(|n| attempt <= n)
            || server_token.as_ref().is_some_and(|t| *t != token)
        {
            Some(TOKEN_MISMATCH.to_string())
        } else {
            None
        };
        let Some(error) = error else {
            fake.journal
                .record("login", json!({"ok": true, "attempt": attempt}));
            logged_in(fake);
            return;
        };
        fake.journal.record(
            "login",
            json!({"ok": false, "attempt": attempt, "error": error}),
        );
        fake.log.log(Level::Error, "client/service.go:280", &error);
        fake.log.log(
            Level::Warn,
            "client/service.go:298",
            &format!("connect to server error: {error}"),
        );
        if login_fail_exit {
            println!(
                "login to the server failed: {error}. With loginFailExit enabled, no additional \
                 retries will be attempted"
            );
            exit(&fake.journal, 1, "login failed");
        }
        std::thread::sleep(wait);
        wait = (wait * 2).min(Duration::from_secs(10));
    }
}

fn random_run_id() -> String {
    let mut bytes = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut bytes);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn logged_in(fake: &Fake) {
    let Ok(mut state) = fake.state.lock() else {
        return;
    };
    let run_id = random_run_id();
    fake.log.log(
        Level::Info,
        "client/service.go:287",
        &format!("[{run_id}] login to server success, get run id [{run_id}]"),
    );
    state.run_id = Some(run_id.clone());
    if env("FAKE_FRPC_LEAK_SECRETS").is_some() {
        let keys: Vec<&str> = state
            .cfg
            .proxies
            .iter()
            .filter_map(|p| p.table.get("secretKey").and_then(Value::as_str))
            .collect();
        fake.log.log(
            Level::Warn,
            "client/service.go:290",
            &format!(
                "[{run_id}] debug dump: token [{}] admin password [{}] secret keys [{}]",
                state.cfg.token,
                state.cfg.web_password,
                keys.join(" ")
            ),
        );
    }
    let cfgs = state.cfg.proxies.clone();
    if !cfgs.is_empty() {
        let names: Vec<&str> = cfgs.iter().map(|p| p.name.as_str()).collect();
        fake.log.log(
            Level::Info,
            "proxy/proxy_manager.go:173",
            &format!("[{run_id}] proxy added: [{}]", names.join(" ")),
        );
    }
    for cfg in cfgs {
        let proxy = fake.start_proxy(&state, &cfg);
        state.proxies.insert(cfg.name.clone(), proxy);
    }
}

/// `/api/reload`: re-read the file and apply the proxy diff as frpc's proxy manager does.
fn reload(fake: &Fake, strict: bool) -> (u16, String) {
    fake.log.log(
        Level::Info,
        "client/admin_api.go:72",
        "api request [/api/reload]",
    );
    let (code, msg) = if env("FAKE_FRPC_REJECT_RELOAD").is_some() {
        let msg = "fake frpc: reload rejected (FAKE_FRPC_REJECT_RELOAD)".to_string();
        fake.journal.record(
            "reload",
            json!({"code": 500, "strict": strict, "error": msg}),
        );
        (500, msg)
    } else {
        match load(&fake.config_path, strict) {
            Err(e) => {
                fake.journal
                    .record("reload", json!({"code": 400, "strict": strict, "error": e}));
                (400, e)
            }
            Ok(new) => apply_reload(fake, new, strict),
        }
    };
    if code != 200 {
        fake.log.log(
            Level::Warn,
            "client/admin_api.go:86",
            &format!("reload frpc proxy config error: {msg}"),
        );
    } else {
        fake.log.log(
            Level::Info,
            "client/admin_api.go:103",
            "success reload conf",
        );
    }
    fake.log.log(
        Level::Info,
        "client/admin_api.go:75",
        &format!("api response [/api/reload], code [{code}]"),
    );
    (code, msg)
}

fn apply_reload(fake: &Fake, new: ClientConfig, strict: bool) -> (u16, String) {
    let Ok(mut state) = fake.state.lock() else {
        return (500, "state poisoned".to_string());
    };
    // frpc applies only proxies and visitors on reload; the common section stays as started.
    let common_changed = new.common != state.cfg.common;
    let new_proxies = new.proxies;
    let run_id = state.run_id.clone().unwrap_or_default();
    let (mut removed, mut unchanged, mut added) = (Vec::new(), Vec::new(), Vec::new());
    let old: Vec<String> = state.proxies.keys().cloned().collect();
    for name in old {
        let keep = state.proxies.get(&name).is_some_and(|p| {
            new_proxies
                .iter()
                .any(|n| n.name == name && n.table == p.cfg.table)
        });
        if keep {
            unchanged.push(name);
        } else if let Some(p) = state.proxies.remove(&name) {
            fake.stop_proxy(&p);
            removed.push(name);
        }
    }
    if !removed.is_empty() {
        fake.log.log(
            Level::Info,
            "proxy/proxy_manager.go:155",
            &format!("[{run_id}] proxy removed: [{}]", removed.join(" ")),
        );
    }
    let logged_in = state.run_id.is_some();
    let mut to_start = Vec::new();
    for cfg in &new_proxies {
        if !unchanged.contains(&cfg.name) {
            added.push(cfg.name.clone());
            to_start.push(cfg.clone());
        }
    }
    if !added.is_empty() {
        fake.log.log(
            Level::Info,
            "proxy/proxy_manager.go:173",
            &format!("[{run_id}] proxy added: [{}]", added.join(" ")),
        );
    }
    if logged_in {
        for cfg in to_start {
            let proxy = fake.start_proxy(&state, &cfg);
            state.proxies.insert(cfg.name.clone(), proxy);
        }
    }
    // Before login, the proxies start at login from the reloaded list.
    state.cfg.proxies = new_proxies;
    fake.journal.record(
        "reload",
        json!({"code": 200, "strict": strict, "added": added, "removed": removed,
               "unchanged": unchanged, "common_changed": common_changed}),
    );
    (200, String::new())
}

fn status_json(fake: &Fake) -> String {
    let Ok(state) = fake.state.lock() else {
        return "{}".to_string();
    };
    let mut groups: BTreeMap<String, Vec<Json>> = BTreeMap::new();
    if state.run_id.is_some() {
        for p in state.proxies.values() {
            groups.entry(p.cfg.kind.clone()).or_default().push(json!({
                "name": p.cfg.name,
                "type": p.cfg.kind,
                "status": p.status,
                "err": p.err,
                "local_addr": format!("{}:{}", p.cfg.local_ip, p.cfg.local_port),
                "plugin": "",
                "remote_addr": p.remote_addr,
            }));
        }
    }
    serde_json::to_string(&groups).unwrap_or_else(|_| "{}".to_string())
}

// ---------------------------------------------------------------------------------------------
// Admin API (frpc's webServer)

struct Request {
    method: String,
    path: String,
    query: HashMap<String, String>,
    authorization: Option<String>,
}

fn serve_admin(listener: TcpListener, fake: Arc<Fake>, events: std::sync::mpsc::Sender<Event>) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let (fake, events) = (fake.clone(), events.clone());
        std::thread::spawn(move || {
            let _ = handle(conn, &fake, &events);
        });
    }
}

fn read_request(conn: &TcpStream) -> std::io::Result<Option<Request>> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Ok(None);
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut authorization = None;
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "authorization" => authorization = Some(value.trim().to_string()),
                "content-length" => length = value.trim().parse().unwrap_or(0),
                _ => {}
            }
        }
    }
    let mut body = vec![0; length.min(1 << 20)];
    reader.read_exact(&mut body)?;
    Ok(Some(Request {
        method: method.to_string(),
        path: path.to_string(),
        query,
        authorization,
    }))
}

fn authorized(fake: &Fake, header: Option<&str>) -> bool {
    let Ok(state) = fake.state.lock() else {
        return false;
    };
    let (user, password) = (&state.cfg.web_user, &state.cfg.web_password);
    if user.is_empty() && password.is_empty() {
        return true;
    }
    let Some(encoded) = header.and_then(|h| h.strip_prefix("Basic ")) else {
        return false;
    };
    let Some(decoded) = base64_decode(encoded.trim()) else {
        return false;
    };
    decoded == format!("{user}:{password}").into_bytes()
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let s = s.trim_end_matches('=');
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes() {
        let v = ALPHABET.iter().position(|&a| a == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

fn handle(
    mut conn: TcpStream,
    fake: &Fake,
    events: &std::sync::mpsc::Sender<Event>,
) -> std::io::Result<()> {
    let Some(req) = read_request(&conn)? else {
        return Ok(());
    };
    if env("FAKE_FRPC_HANG_ADMIN").is_some() {
        fake.journal
            .record("api_hang", json!({"method": req.method, "path": req.path}));
        loop {
            std::thread::sleep(Duration::from_secs(60));
        }
    }
    let route: Option<(&str, bool)> = match req.path.as_str() {
        "/healthz" => Some(("GET", false)),
        "/api/reload" | "/api/status" | "/api/config" => Some(("GET", true)),
        "/api/stop" => Some(("POST", true)),
        _ => None,
    };
    let needs_auth = route.is_none_or(|(_, auth)| auth);
    let ok = !needs_auth || authorized(fake, req.authorization.as_deref());
    let (code, content_type, body, stop) = if !ok {
        // frpc's auth middleware delays failures by 200 ms.
        std::thread::sleep(Duration::from_millis(200));
        (
            401,
            "text/plain; charset=utf-8",
            "Unauthorized\n".to_string(),
            false,
        )
    } else {
        match route {
            None => (
                404,
                "text/plain; charset=utf-8",
                "404 page not found\n".to_string(),
                false,
            ),
            Some((method, _)) if method != req.method => (405, "", String::new(), false),
            Some(_) => match req.path.as_str() {
                "/healthz" => (200, "", String::new(), false),
                "/api/status" => (200, "text/plain; charset=utf-8", status_json(fake), false),
                "/api/reload" => {
                    let strict = req.query.get("strictConfig").is_some_and(|v| {
                        matches!(v.as_str(), "true" | "1" | "t" | "TRUE" | "True")
                    });
                    let (code, msg) = reload(fake, strict);
                    (code, "text/plain; charset=utf-8", msg, false)
                }
                "/api/config" => match std::fs::read_to_string(&fake.config_path) {
                    Ok(text) => (200, "text/plain; charset=utf-8", text, false),
                    Err(e) => (400, "text/plain; charset=utf-8", e.to_string(), false),
                },
                _ => {
                    fake.log.log(
                        Level::Info,
                        "client/admin_api.go:111",
                        "api request [/api/stop]",
                    );
                    (200, "", String::new(), true)
                }
            },
        }
    };
    fake.journal.record(
        "api",
        json!({"method": req.method, "path": req.path, "code": code, "authorized": ok}),
    );
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Internal Server Error",
    };
    let mut head = format!("HTTP/1.1 {code} {reason}\r\n");
    if code == 401 {
        head.push_str("Www-Authenticate: Basic realm=\"Restricted\"\r\n");
    }
    if !content_type.is_empty() {
        head.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    conn.write_all(head.as_bytes())?;
    conn.write_all(body.as_bytes())?;
    conn.flush()?;
    let _ = conn.shutdown(Shutdown::Write);
    if stop {
        let _ = events.send(Event::Stop);
    }
    Ok(())
}
