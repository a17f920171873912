//! The command line: flags, `--help` text, and what the binary was asked to do.

use crate::config::DEFAULT_CONFIG_PATH;
use std::ffi::OsString;
use std::path::PathBuf;

/// What the binary was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run the agent with this config file.
    Run {
        config: PathBuf,
    },
    /// Validate the config, print it with secrets redacted, exit 0 or 1.
    CheckConfig {
        config: PathBuf,
    },
    /// `doctor [--json]`: check the host.
    Doctor {
        config: PathBuf,
        json: bool,
    },
    Version,
    Help,
}

/// The `--help` text; its `ENVIRONMENT` part comes from the one table of overrides.
pub fn help() -> String {
    format!(
        "{HELP_HEAD}ENVIRONMENT (each overrides its config key; empty values are ignored):\n{}\n{HELP_TAIL}",
        crate::config::env::help_lines()
    )
}

const HELP_HEAD: &str = "\
utopia-node-agent: the node agent of a Utopia GPU server

Registers the node with the central platform, reports host and GPU metrics, runs containers
with GPUs through docker, and serves a Bearer-token REST API.

USAGE:
    utopia-node-agent [OPTIONS]
    utopia-node-agent doctor [--json] [-c PATH]
                         Check the host (config, identity, NVML, docker and the GPU mode,
                         frpc, frps, platform, clock, disk): one line per check, pass/warn/fail
                         and what to do; exit 0 when nothing fails. --json for machines.

OPTIONS:
    -c, --config PATH    Config file (default: /etc/utopia/agent-config.yaml)
        --check-config   Validate the config, print it with secrets redacted, and exit
                         (status 0 when valid, 1 when not)
    -V, --version        Print the version and exit
    -h, --help           Print this help and exit

";

const HELP_TAIL: &str = "\
SIGNALS:
    SIGTERM, SIGINT  stop gracefully (a second one forces exit)
";

/// Parses the process's arguments.
pub fn parse() -> Result<Command, String> {
    parse_from(std::env::args_os().skip(1))
}

/// Parses the given arguments (without the program name).
pub fn parse_from(args: impl IntoIterator<Item = OsString>) -> Result<Command, String> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_args(args);
    let mut config = PathBuf::from(DEFAULT_CONFIG_PATH);
    let mut check = false;
    let mut doctor = false;
    let mut json = false;
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Value(word) if word == "doctor" && !doctor => doctor = true,
            Long("json") if doctor => json = true,
            Short('c') | Long("config") => {
                config = parser.value().map_err(|e| e.to_string())?.into();
            }
            Long("check-config") => check = true,
            Short('V') | Long("version") => return Ok(Command::Version),
            Short('h') | Long("help") => return Ok(Command::Help),
            other => return Err(other.unexpected().to_string()),
        }
    }
    Ok(if doctor {
        if check {
            return Err("--check-config and doctor cannot be combined".into());
        }
        Command::Doctor { config, json }
    } else if check {
        Command::CheckConfig { config }
    } else {
        Command::Run { config }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, String> {
        parse_from(args.iter().map(OsString::from))
    }

    #[test]
    fn doctor() {
        assert_eq!(
            parse(&["doctor", "--json", "-c", "/x"]),
            Ok(Command::Doctor {
                config: "/x".into(),
                json: true
            })
        );
        assert_eq!(
            parse(&["-c", "/x", "doctor"]),
            Ok(Command::Doctor {
                config: "/x".into(),
                json: false
            })
        );
        assert!(parse(&["--json"]).is_err());
        assert!(parse(&["doctor", "doctor"]).is_err());
    }

    #[test]
    fn flags() {
        assert_eq!(
            parse(&[]),
            Ok(Command::Run {
                config: DEFAULT_CONFIG_PATH.into()
            })
        );
        assert_eq!(
            parse(&["-c", "/tmp/a.yaml"]),
            Ok(Command::Run {
                config: "/tmp/a.yaml".into()
            })
        );
        assert_eq!(
            parse(&["--config=/x", "--check-config"]),
            Ok(Command::CheckConfig {
                config: "/x".into()
            })
        );
        assert_eq!(parse(&["--version"]), Ok(Command::Version));
        assert_eq!(parse(&["-h"]), Ok(Command::Help));
    }

    #[test]
    fn mistakes_are_named() {
        assert!(parse(&["--confg", "x"]).unwrap_err().contains("--confg"));
        assert!(parse(&["--config"]).unwrap_err().contains("--config"));
        assert!(parse(&["extra"]).unwrap_err().contains("extra"));
    }
}
