//! Renters against each other and against the node's owner, on the real docker engine: what a
//! renter's image or request must not obtain (devices through toolkit variables, another
//! renter's network, the host's loopback services, a GPU someone else holds).

mod common;

use common::docker::{body, ready, wait_until, DerivedImage, Scope};
use common::Agent;
use std::collections::BTreeSet;
use std::time::Duration;

/// The environment a container printed (its command runs `env; echo ENV-DONE`).
fn printed_env(agent: &Agent, id: &str) -> BTreeSet<String> {
    let mut lines = BTreeSet::new();
    let done = wait_until(Duration::from_secs(15), || {
        let r = agent.get(&format!("/api/v1/containers/{id}/logs?tail=200"));
        assert_eq!(r.status, 200, "{}", r.text());
        lines = r.text().lines().map(str::to_string).collect();
        lines.contains("ENV-DONE")
    });
    assert!(
        done,
        "the container never printed its environment: {lines:?}"
    );
    lines
}

#[test]
fn toolkit_variables_an_image_sets_are_overridden() {
    if !ready("toolkit_variables_an_image_sets_are_overridden") {
        return;
    }
    // A renter's image asking the NVIDIA toolkit for IMEX channels, MIG management devices and
    // the host's InfiniBand and NVSwitch devices in its own ENV.
    let image = DerivedImage::new(&[
        "ENV NVIDIA_IMEX_CHANNELS=all",
        "ENV NVIDIA_MIG_CONFIG_DEVICES=all",
        "ENV NVIDIA_MIG_MONITOR_DEVICES=all",
        "ENV NVIDIA_MOFED=enabled",
        "ENV NVIDIA_NVSWITCH=enabled",
        "ENV NVIDIA_GDS=enabled",
        "ENV NVIDIA_GDRCOPY=enabled",
        "ENV NVIDIA_VISIBLE_DEVICES=all",
    ]);
    let scope = Scope::new();
    let agent = scope.agent(|_| {});
    let mut request = body(&scope.claim("img"), &[0], "env; echo ENV-DONE; sleep 600");
    request["image"] = image.tag.clone().into();
    let created = agent.create(&request);
    let env = printed_env(&agent, created["id"].as_str().unwrap());
    for expected in [
        "NVIDIA_IMEX_CHANNELS=",
        "NVIDIA_MIG_CONFIG_DEVICES=",
        "NVIDIA_MIG_MONITOR_DEVICES=",
        "NVIDIA_MOFED=disabled",
        "NVIDIA_NVSWITCH=disabled",
        "NVIDIA_GDS=disabled",
        "NVIDIA_GDRCOPY=disabled",
        "NVIDIA_VISIBLE_DEVICES=0",
    ] {
        assert!(env.contains(expected), "{expected} missing: {env:?}");
    }
    assert!(
        !env.iter()
            .any(|l| l.ends_with("=all") || l.ends_with("=enabled")),
        "an image's toolkit variable survived: {env:?}"
    );
}
