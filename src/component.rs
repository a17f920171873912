//! What every component shares: one error for a component that could not start
//! ([`StartError`]), and one way to start a component's thread ([`spawn`]), named so that
//! `top -H`, a panic message and the agent's stop report say which component it is.

use std::fmt;
use std::thread::JoinHandle;

/// Why a component (and so the agent) could not start, in words an operator can act on.
#[derive(Debug)]
pub struct StartError {
    message: String,
}

impl StartError {
    pub fn new(message: impl fmt::Display) -> StartError {
        StartError {
            message: message.to_string(),
        }
    }
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StartError {}

/// Runs `body` on a new thread named `name`.
pub fn spawn(
    name: impl Into<String>,
    body: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>, StartError> {
    let name = name.into();
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(body)
        .map_err(|e| StartError::new(format!("cannot start the {name} thread: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_component_thread_carries_its_name() {
        let thread = spawn("test-component", || {
            assert_eq!(std::thread::current().name(), Some("test-component"));
        })
        .unwrap();
        thread.join().unwrap();
        assert_eq!(
            StartError::new("cannot listen on 1.2.3.4:5").to_string(),
            "cannot listen on 1.2.3.4:5"
        );
    }
}
