//! The `utopia-node-agent` binary: read the command line, load the config, start the
//! components, wait for a signal, stop.

use std::process::ExitCode;
use utopia_node_agent::agent::Agent;
use utopia_node_agent::cli::{self, Command};
use utopia_node_agent::config::{self, Config, LogLevel};
use utopia_node_agent::shutdown::{self, SignalThread};

fn main() -> ExitCode {
    let command = match cli::parse() {
        Ok(command) => command,
        Err(error) => {
            eprintln!("utopia-node-agent: {error}\nTry --help.");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Help => {
            print!("{}", cli::help());
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("utopia-node-agent {}", utopia_node_agent::VERSION);
            ExitCode::SUCCESS
        }
        Command::CheckConfig { config } => match Config::load(&config) {
            Ok((config_value, warnings)) => {
                for warning in &warnings {
                    eprintln!("warning: {warning}");
                }
                print!("{}", config_value.redacted_yaml());
                eprintln!("{}: configuration is valid", config.display());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => run(&config),
    }
}

fn run(path: &std::path::Path) -> ExitCode {
    let (config, warnings) = match Config::load(path) {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("utopia-node-agent: {error}");
            return ExitCode::FAILURE;
        }
    };
    // Still one thread: the children (the docker CLI) must not inherit the tokens.
    config::remove_env_overrides();
    init_logging(config.log_level);
    log::info!(
        "utopia-node-agent {} starting with {}",
        utopia_node_agent::VERSION,
        path.display()
    );
    for warning in &warnings {
        log::warn!("{warning}");
    }

    let (trigger, shutdown) = shutdown::channel();
    let signals = match SignalThread::start(trigger.clone()) {
        Ok(signals) => signals,
        Err(error) => {
            log::error!("cannot install signal handlers: {error}");
            return ExitCode::FAILURE;
        }
    };
    let agent = match Agent::start(&config, shutdown) {
        Ok(agent) => agent,
        Err(error) => {
            log::error!("{error}");
            trigger.fire();
            signals.stop();
            return ExitCode::FAILURE;
        }
    };
    agent.run_until_shutdown();
    signals.stop();
    ExitCode::SUCCESS
}

fn init_logging(level: LogLevel) {
    let config = simplelog::ConfigBuilder::new()
        // Dependencies' debug output can include request headers (tokens): keep it out.
        .add_filter_ignore_str("ureq")
        .add_filter_ignore_str("rustls")
        .set_time_format_rfc3339()
        .build();
    let _ = simplelog::TermLogger::init(
        level.to_filter(),
        config,
        simplelog::TerminalMode::Stderr,
        simplelog::ColorChoice::Never,
    );
}
