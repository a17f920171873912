//! Component health: a typed [`Health`] per [`Component`], rendered into `/health`'s
//! `components` strings in one place ([`Health::render`]), and what the whole map means: the
//! overall `status` ([`overall`]) and whether the node can do its work ([`not_ready`]).

use std::collections::BTreeMap;
use std::fmt;

/// The components that report their health, by their name in `/health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Component {
    Api,
    Docker,
    Frp,
    Gpu,
    Platform,
    System,
}

impl Component {
    /// Every component; each one reports a health once the agent runs.
    pub const ALL: [Component; 6] = [
        Component::Api,
        Component::Docker,
        Component::Frp,
        Component::Gpu,
        Component::Platform,
        Component::System,
    ];

    /// The key in `/health`'s `components`.
    pub fn name(self) -> &'static str {
        match self {
            Component::Api => "api",
            Component::Docker => "docker",
            Component::Frp => "frp",
            Component::Gpu => "gpu",
            Component::Platform => "platform",
            Component::System => "system",
        }
    }

    /// What "starting" is called for this component (the platform is registering).
    fn starting_word(self) -> &'static str {
        match self {
            Component::Platform => "registering",
            _ => "starting",
        }
    }

    /// What "degraded" is called for this component (the platform's heartbeats fail).
    fn degraded_word(self) -> &'static str {
        match self {
            Component::Platform => "heartbeat failing",
            _ => "degraded",
        }
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a component is doing; every state but `Ok` says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Not ready yet; the reason, when there is one, is the last thing that went wrong.
    Starting(Option<String>),
    Ok,
    /// Working, with a problem an operator should look at.
    Degraded(String),
    /// Not usable; the agent retries.
    Unavailable(String),
    /// Switched off by the configuration.
    Disabled(String),
}

impl Health {
    /// The state alone, without the reason: `starting`, `ok`, `degraded`, `unavailable`,
    /// `disabled` (the `status` label of `utopia_agent_component_status`).
    pub fn state(&self) -> &'static str {
        match self {
            Health::Starting(_) => "starting",
            Health::Ok => "ok",
            Health::Degraded(_) => "degraded",
            Health::Unavailable(_) => "unavailable",
            Health::Disabled(_) => "disabled",
        }
    }

    /// The `/health` string: `ok`, `starting`, `degraded: <why>`, `unavailable: <why>`,
    /// `disabled (<why>)`; the platform says `registering` and `heartbeat failing` for starting
    /// and degraded.
    pub fn render(&self, component: Component) -> String {
        match self {
            Health::Ok => "ok".to_string(),
            Health::Starting(None) => component.starting_word().to_string(),
            Health::Starting(Some(why)) => format!("{}: {why}", component.starting_word()),
            Health::Degraded(why) => format!("{}: {why}", component.degraded_word()),
            Health::Unavailable(why) => format!("unavailable: {why}"),
            Health::Disabled(why) => format!("disabled ({why})"),
        }
    }
}

/// `/health`'s overall `status`: `degraded` while any component is unavailable or degraded,
/// `ok` otherwise (starting and disabled components are not trouble).
pub fn overall(health: &BTreeMap<Component, Health>) -> &'static str {
    let trouble = health
        .values()
        .any(|h| matches!(h, Health::Unavailable(_) | Health::Degraded(_)));
    if trouble {
        "degraded"
    } else {
        "ok"
    }
}

/// What keeps the node from doing its work, one `component: state` line each; empty when it is
/// ready. Ready means: the API serves, the host is sampled, docker is reachable (a degraded
/// docker still runs containers), NVML answers (a lost GPU leaves the others usable; a GPU
/// sampler switched off expects none), and the node is registered when a platform is configured
/// (failing heartbeats do not unregister it). The frp tunnel never holds readiness back: the
/// node works locally without it, and its trouble shows in `/health` and `/api/v1/tunnels`.
pub fn not_ready(health: &BTreeMap<Component, Health>) -> Vec<String> {
    Component::ALL
        .iter()
        .filter_map(|&component| match health.get(&component) {
            None => Some(format!("{component}: not reported yet")),
            Some(h) if can_work(component, h) => None,
            Some(h) => Some(format!("{component}: {}", h.render(component))),
        })
        .collect()
}

/// Whether `component` in state `health` lets the node do its work (see [`not_ready`]).
fn can_work(component: Component, health: &Health) -> bool {
    use Component::{Docker, Frp, Gpu, Platform};
    if component == Frp {
        return true;
    }
    match health {
        Health::Ok => true,
        Health::Degraded(_) => matches!(component, Docker | Gpu | Platform),
        Health::Disabled(_) => matches!(component, Gpu | Platform),
        Health::Starting(_) | Health::Unavailable(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_ok() -> BTreeMap<Component, Health> {
        Component::ALL.iter().map(|&c| (c, Health::Ok)).collect()
    }

    #[test]
    fn status_is_degraded_while_a_component_is_unavailable_or_degraded() {
        let mut health = all_ok();
        assert_eq!(overall(&health), "ok");
        health.insert(Component::Gpu, Health::Starting(None));
        health.insert(Component::Platform, Health::Disabled("no url".into()));
        assert_eq!(overall(&health), "ok");
        health.insert(Component::Docker, Health::Unavailable("no socket".into()));
        assert_eq!(overall(&health), "degraded");
        health.insert(Component::Docker, Health::Degraded("GPU 3 gone".into()));
        assert_eq!(overall(&health), "degraded");
    }

    #[test]
    fn ready_only_when_every_component_can_work() {
        let mut health = all_ok();
        assert!(not_ready(&health).is_empty());
        health.insert(Component::Platform, Health::Disabled("no url".into()));
        health.insert(Component::Gpu, Health::Degraded("GPU 1 lost".into()));
        health.insert(Component::Docker, Health::Degraded("c1: GPU gone".into()));
        assert!(not_ready(&health).is_empty(), "{:?}", not_ready(&health));

        health.insert(Component::Docker, Health::Unavailable("no socket".into()));
        health.insert(Component::Gpu, Health::Starting(None));
        health.insert(
            Component::Platform,
            Health::Starting(Some("HTTP 401".into())),
        );
        health.remove(&Component::System);
        assert_eq!(
            not_ready(&health),
            [
                "docker: unavailable: no socket",
                "gpu: starting",
                "platform: registering: HTTP 401",
                "system: not reported yet",
            ]
        );
        // The API and the host sampler have no "good enough" state but ok.
        let mut health = all_ok();
        health.insert(Component::Api, Health::Degraded("draining".into()));
        health.insert(Component::System, Health::Disabled("off".into()));
        assert_eq!(not_ready(&health).len(), 2);
    }

    #[test]
    fn rendering_keeps_the_documented_strings() {
        let cases = [
            (Component::Gpu, Health::Ok, "ok"),
            (Component::Gpu, Health::Starting(None), "starting"),
            (
                Component::Gpu,
                Health::Degraded("GPU 1 lost".into()),
                "degraded: GPU 1 lost",
            ),
            (
                Component::Docker,
                Health::Unavailable("no socket".into()),
                "unavailable: no socket",
            ),
            (Component::Platform, Health::Starting(None), "registering"),
            (
                Component::Platform,
                Health::Starting(Some("HTTP 401".into())),
                "registering: HTTP 401",
            ),
            (
                Component::Platform,
                Health::Degraded("timeout".into()),
                "heartbeat failing: timeout",
            ),
            (
                Component::Platform,
                Health::Disabled("central_platform.api_url is empty".into()),
                "disabled (central_platform.api_url is empty)",
            ),
        ];
        for (component, health, expected) in cases {
            assert_eq!(health.render(component), expected);
        }
    }
}
