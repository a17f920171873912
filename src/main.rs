//! The `utopia-node-agent` binary: read the command line, load the config, start the
//! components, wait for a signal, stop.

use std::process::ExitCode;
use std::sync::Arc;
use utopia_node_agent::agent::{self, Agent};
use utopia_node_agent::allocator;
use utopia_node_agent::cli::{self, Command};
use utopia_node_agent::config::{self, Config};
use utopia_node_agent::logging;
use utopia_node_agent::notify::{self, Notifier};
use utopia_node_agent::reload::{self, ReloadThread, Reloader};
use utopia_node_agent::shutdown::{self, SignalThread};

fn main() -> ExitCode {
    // glibc gives each thread that allocates its own malloc arena (up to 8 per core), each
    // keeping freed memory: two arenas hold the agent's small, mostly idle heap, and a
    // thread-per-component daemon does not contend on them.
    // SAFETY: mallopt only sets an allocator parameter; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
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
        Command::CheckConfig { config } => check_config(&config),
        Command::Doctor { config, json } => {
            let checks = utopia_node_agent::doctor::run(&config);
            if json {
                match serde_json::to_string_pretty(&checks) {
                    Ok(text) => println!("{text}"),
                    Err(e) => eprintln!("error: cannot encode the report: {e}"),
                }
            } else {
                print!("{}", utopia_node_agent::doctor::render_text(&checks));
            }
            if utopia_node_agent::doctor::healthy(&checks) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Run { config } => run(&config),
    }
}

/// `--check-config`: the config's own checks, then the start's [`preflight`](agent::preflight)
/// on the files it names; exit 0 exactly when the agent would start past them.
fn check_config(path: &std::path::Path) -> ExitCode {
    let (settings, warnings) = match Config::load(path) {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    for warning in &warnings {
        eprintln!("warning: {warning}");
    }
    match agent::preflight(&settings) {
        Ok(checked) => {
            for warning in &checked.warnings {
                eprintln!("warning: {warning}");
            }
            print!("{}", settings.redacted_yaml());
            eprintln!("{}: configuration is valid", path.display());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(path: &std::path::Path) -> ExitCode {
    // Still one thread: execute the binary again with glibc's tcache off unless the
    // environment already sets its size (returns only when no re-exec happened).
    let tcache = allocator::run_with_tcache_off();
    let (config, warnings) = match Config::load(path) {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("utopia-node-agent: {error}");
            return ExitCode::FAILURE;
        }
    };
    // Still one thread: the children (the docker CLI) must not inherit the tokens, nor
    // systemd's notify socket. A reload applies the overrides again from this copy.
    let env = reload::captured_env();
    config::remove_env_overrides();
    let (notifier, notify_warnings) = Notifier::from_env();
    let notifier = Arc::new(notifier);
    logging::init(config.log_level);
    log::info!(
        "utopia-node-agent {} starting with {}",
        utopia_node_agent::VERSION,
        path.display()
    );
    for warning in &warnings {
        log::warn!("{warning}");
    }
    for warning in &notify_warnings {
        log::warn!("{warning}");
    }
    if let Err(why) = tcache {
        log::warn!(
            "glibc's per-thread malloc cache stays on ({why}): memory grows under load; set \
             {}={} in the agent's environment as the service files do",
            allocator::VARIABLE,
            allocator::TCACHE_OFF
        );
    }
    notifier.status("starting");

    // A component thread silent for twice the watchdog timeout is stuck (without a watchdog:
    // DEFAULT_DEADLINE, and only logged). Set before any component registers.
    let liveness = notify::board();
    liveness.set_deadline(
        notifier
            .watchdog()
            .map_or(notify::DEFAULT_DEADLINE, |w| w * 2),
    );
    let (trigger, shutdown) = shutdown::channel();
    let signals = match SignalThread::start(trigger.clone()) {
        Ok(signals) => signals,
        Err(error) => {
            log::error!("cannot install signal handlers: {error}");
            return ExitCode::FAILURE;
        }
    };
    let listen = config.api.listen;
    let agent = match Agent::start(&config, shutdown.clone()) {
        Ok(agent) => agent,
        Err(error) => {
            log::error!("not started: {error}; exiting (status 1)");
            notifier.status(&format!("failed to start: {error}"));
            trigger.fire();
            signals.stop();
            return ExitCode::FAILURE;
        }
    };
    // SIGHUP: re-read the config and apply what can change live.
    let reloader = Reloader::new(path.to_path_buf(), env, config, agent.live());
    let reload_thread = ReloadThread::start(reloader, Arc::clone(&notifier))
        .map_err(|e| log::error!("cannot start the reload thread (SIGHUP is ignored): {e}"))
        .ok();
    // The API listens now: READY=1, then status and watchdog from the notify thread.
    let notify_thread = notify::start(notifier, listen, Arc::clone(liveness), shutdown)
        .unwrap_or_else(|e| {
            log::error!("cannot start the systemd notify thread: {e}");
            None
        });
    agent.run_until_shutdown();
    if let Some(thread) = notify_thread {
        // It sends STOPPING=1 as soon as the shutdown starts; a self-check in flight ends
        // within a second.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        while !thread.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        if thread.is_finished() {
            let _ = thread.join();
        }
    }
    if let Some(thread) = reload_thread {
        thread.stop();
    }
    signals.stop();
    ExitCode::SUCCESS
}
