//! The API contract of the running agent: health, auth, metrics against the fake GPUs, errors.

mod common;

use common::{Agent, AgentOptions, TOKEN};

#[test]
fn health_is_public_and_reports_components() {
    let agent = Agent::start(|_| {});
    let response = agent.request("GET", "/health", &[], b"");
    assert_eq!(response.status, 200);
    let health = response.json();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
    assert!(health["uptime_secs"].is_u64());
    assert_eq!(health["components"]["gpu"], "ok");
    assert_eq!(health["components"]["api"], "ok");
    assert_eq!(health["components"]["system"], "ok");
    assert!(!response.text().contains(TOKEN));
    let _ = AgentOptions::default();
}
