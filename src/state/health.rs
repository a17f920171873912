//! Component health: a typed [`Health`] per [`Component`], rendered into `/health`'s
//! `components` strings in one place ([`Health::render`]).

use std::fmt;

/// The components that report their health, by their name in `/health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Component {
    Api,
    Docker,
    Gpu,
    Platform,
    System,
}

impl Component {
    /// The key in `/health`'s `components`.
    pub fn name(self) -> &'static str {
        match self {
            Component::Api => "api",
            Component::Docker => "docker",
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

#[cfg(test)]
mod tests {
    use super::*;

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
