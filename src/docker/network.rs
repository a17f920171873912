//! The renters' network: every managed container is attached to one bridge network the agent
//! creates and owns (`docker.network`), with inter-container traffic switched off
//! (`com.docker.network.bridge.enable_icc=false`). Two renters' containers on it cannot open a
//! connection to each other (a Jupyter token on `172.x.0.y:8888` stays private), while each
//! keeps outbound access through the bridge's gateway (docker's NAT), and containers on other
//! networks (docker's default bridge, anyone else's) are cut off by docker's own isolation
//! between networks.
//!
//! Checked at every reconcile ([`check`]): created when missing; refused when a network of that
//! name exists that the agent did not create (no [`OWNER_LABEL`]) or that lets containers talk to
//! each other; and any container on it that no utopia agent created (no claim label) is reported,
//! never touched. While the network is not usable, creates are refused (503) and `/health` says
//! why; existing containers are served as before.
//!
//! With `docker.block_metadata`, the same reconcile puts the firewall rules that cut the
//! network's bridge off from link-local addresses in place ([`check_firewall`], see
//! [`metadata_block`]); while they are not, creates are refused too (the operator asked for
//! them, and a renter must not get the metadata service meanwhile).

use crate::docker::cli::{DockerCli, DockerError};
use crate::docker::labels::LABEL_CLAIM_ID;
use crate::docker::metadata_block::{self, Iptables};
use serde::Deserialize;
use std::collections::BTreeMap;

/// The label the agent puts on the network it creates; a network without it is not the agent's.
pub const OWNER_LABEL: (&str, &str) = ("io.utopia.owner", "utopia-node-agent");
/// The bridge driver option that keeps containers on the network from reaching each other.
pub const ICC_OPTION: &str = "com.docker.network.bridge.enable_icc";
/// The bridge driver option naming the network's bridge interface (else `br-<id>`).
pub const BRIDGE_NAME_OPTION: &str = "com.docker.network.bridge.name";

/// What `docker network inspect` says of a network (the parts the agent checks).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Inspect {
    #[serde(default)]
    id: String,
    #[serde(default)]
    driver: String,
    #[serde(default)]
    options: Option<BTreeMap<String, String>>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

/// Why the network cannot be used for renters' containers (`None`: it can).
fn problem_of(name: &str, inspect: &Inspect) -> Option<String> {
    let labels = inspect.labels.clone().unwrap_or_default();
    if labels.get(OWNER_LABEL.0).map(String::as_str) != Some(OWNER_LABEL.1) {
        return Some(format!(
            "docker network {name} exists but was not created by the agent (no label {}={}); \
             remove it or set docker.network to another name",
            OWNER_LABEL.0, OWNER_LABEL.1
        ));
    }
    if inspect.driver != "bridge" {
        return Some(format!(
            "docker network {name} has driver {:?}, not bridge; remove it so the agent creates it \
             again",
            inspect.driver
        ));
    }
    let icc = inspect
        .options
        .as_ref()
        .and_then(|o| o.get(ICC_OPTION))
        .map(String::as_str);
    if icc != Some("false") {
        return Some(format!(
            "docker network {name} lets containers reach each other ({ICC_OPTION} is not false); \
             remove it so the agent creates it again"
        ));
    }
    None
}

/// Parses `docker network inspect` output (a JSON array of one network).
fn parse(name: &str, json: &[u8]) -> Result<Option<String>, String> {
    let items: Vec<Inspect> = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    let first = items
        .first()
        .ok_or_else(|| format!("docker network inspect {name} printed no network"))?;
    Ok(problem_of(name, first))
}

fn is_no_such_network(e: &DockerError) -> bool {
    let lower = e.stderr().to_ascii_lowercase();
    lower.contains("no such network") || lower.contains("not found")
}

fn words(list: &[&str]) -> Vec<String> {
    list.iter().map(|w| w.to_string()).collect()
}

/// `docker network inspect <name>` failed because two networks have that name.
fn is_ambiguous(e: &DockerError) -> bool {
    let lower = e.stderr().to_ascii_lowercase();
    lower.contains("is ambiguous") || lower.contains("matches found based on name")
}

/// One network of a name two or more networks have (`docker network inspect <ids>`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Twin {
    #[serde(default)]
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    created: String,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    containers: Option<BTreeMap<String, serde_json::Value>>,
}

/// Of the networks named `name`, those to remove: every one but the oldest (ties: the lowest
/// id, so agents racing to do this keep the same one) that the agent created and that holds no
/// container. The others are left for the operator.
fn twins_to_remove(name: &str, mut twins: Vec<Twin>) -> Vec<String> {
    twins.retain(|t| t.name == name);
    twins.sort_by(|a, b| (&a.created, &a.id).cmp(&(&b.created, &b.id)));
    twins
        .into_iter()
        .skip(1)
        .filter(|t| {
            let labels = t.labels.clone().unwrap_or_default();
            labels.get(OWNER_LABEL.0).map(String::as_str) == Some(OWNER_LABEL.1)
                && t.containers.as_ref().is_none_or(BTreeMap::is_empty)
        })
        .map(|t| t.id)
        .collect()
}

/// Two agents on one host that find the network missing at the same moment may both create it:
/// docker before 23.0 does not always refuse a second network of a name, and the name is then
/// ambiguous to every command (creates included). Removes the agent's empty duplicates, keeping
/// the oldest.
fn remove_twins(cli: &DockerCli, name: &str) -> Result<(), DockerError> {
    let filter = format!("name={name}");
    let listed = cli.run(
        &words(&[
            "network",
            "ls",
            "--no-trunc",
            "--filter",
            &filter,
            "--format",
            "{{.ID}}",
        ]),
        cli.command_timeout(),
        1024 * 1024,
    )?;
    let mut args = words(&["network", "inspect", "--"]);
    args.extend(
        String::from_utf8_lossy(&listed.stdout)
            .split_whitespace()
            .map(str::to_string),
    );
    let out = cli.run(&args, cli.command_timeout(), 4 * 1024 * 1024)?;
    let twins: Vec<Twin> =
        serde_json::from_slice(&out.stdout).map_err(|e| DockerError::BadOutput {
            command: "docker network inspect".into(),
            message: e.to_string(),
        })?;
    for id in twins_to_remove(name, twins) {
        log::warn!(
            "docker network {name} exists twice (two agents created it at once); removing the              empty duplicate {id}"
        );
        match cli.run(
            &words(&["network", "rm", "--", &id]),
            cli.command_timeout(),
            4096,
        ) {
            Ok(_) => {}
            // Another agent removed it first.
            Err(e) if is_no_such_network(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Makes sure the network `name` exists as the agent wants it, creating it when missing.
/// `Ok(Some(problem))`: it exists but must not be used; `Err`: docker failed.
pub fn ensure(cli: &DockerCli, name: &str) -> Result<Option<String>, DockerError> {
    let inspect = |cli: &DockerCli| {
        let args = words(&["network", "inspect", "--", name]);
        match cli.run(&args, cli.command_timeout(), 1024 * 1024) {
            Err(e) if is_ambiguous(&e) => {
                remove_twins(cli, name)?;
                cli.run(&args, cli.command_timeout(), 1024 * 1024)
            }
            other => other,
        }
    };
    let out = match inspect(cli) {
        Ok(out) => out,
        Err(e) if is_no_such_network(&e) => {
            log::info!("creating the renters' network {name} (bridge, no inter-container traffic)");
            let icc = format!("{ICC_OPTION}=false");
            let label = format!("{}={}", OWNER_LABEL.0, OWNER_LABEL.1);
            let created = cli.run(
                &words(&[
                    "network", "create", "--driver", "bridge", "--opt", &icc, "--label", &label,
                    "--", name,
                ]),
                cli.command_timeout(),
                4096,
            );
            match created {
                Ok(_) => {}
                // Another agent on the host created it meanwhile: inspect it below.
                Err(e) if e.stderr().contains("already exists") => {}
                Err(e) => return Err(e),
            }
            inspect(cli)?
        }
        Err(e) => return Err(e),
    };
    parse(name, &out.stdout).map_err(|message| DockerError::BadOutput {
        command: "docker network inspect".into(),
        message,
    })
}

/// The containers on network `name` that no utopia agent created (no claim label): names, for
/// the operator. They are reported, never touched.
pub fn strangers(cli: &DockerCli, name: &str) -> Result<Vec<String>, DockerError> {
    let filter = format!("network={name}");
    let format = format!("{{{{.Names}}}}\t{{{{.Label \"{LABEL_CLAIM_ID}\"}}}}");
    let out = cli.run(
        &words(&["ps", "-a", "--filter", &filter, "--format", &format]),
        cli.command_timeout(),
        1024 * 1024,
    )?;
    Ok(parse_strangers(&String::from_utf8_lossy(&out.stdout)))
}

fn parse_strangers(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let (name, claim) = line.split_once('\t').unwrap_or((line, ""));
            (!name.trim().is_empty() && claim.trim().is_empty()).then(|| name.trim().to_string())
        })
        .collect()
}

/// The network's state as one reconcile found it: `None` when renters' containers may be
/// created on it, else why not (or what is wrong with it).
pub fn check(cli: &DockerCli, name: &str) -> Option<String> {
    match ensure(cli, name) {
        Ok(Some(problem)) => return Some(problem),
        Ok(None) => {}
        Err(e) => return Some(format!("cannot set up docker network {name}: {e}")),
    }
    match strangers(cli, name) {
        Ok(names) if names.is_empty() => None,
        Ok(names) => Some(format!(
            "docker network {name} {STRANGERS}: {}; \
             disconnect them (docker network disconnect {name} <container>)",
            names.join(", ")
        )),
        Err(e) => Some(format!("cannot list the containers on network {name}: {e}")),
    }
}

/// The bridge interface of network `name` (`None`: no such network).
pub fn bridge(cli: &DockerCli, name: &str) -> Result<Option<String>, DockerError> {
    let out = match cli.run(
        &words(&["network", "inspect", "--", name]),
        cli.command_timeout(),
        1024 * 1024,
    ) {
        Ok(out) => out,
        Err(e) if is_no_such_network(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let bad = |message: String| DockerError::BadOutput {
        command: "docker network inspect".into(),
        message,
    };
    let items: Vec<Inspect> =
        serde_json::from_slice(&out.stdout).map_err(|e| bad(e.to_string()))?;
    let first = items
        .first()
        .ok_or_else(|| bad(format!("docker network inspect {name} printed no network")))?;
    let option = first
        .options
        .as_ref()
        .and_then(|o| o.get(BRIDGE_NAME_OPTION))
        .map(String::as_str);
    metadata_block::bridge_name(&first.id, option)
        .map(Some)
        .ok_or_else(|| bad(format!("network {name} has no bridge id ({:?})", first.id)))
}

/// Puts `docker.block_metadata`'s firewall rules for network `name` in place (`enabled`), or
/// removes them (off). `None`: the firewall is as wanted; else why not.
pub fn check_firewall(
    cli: &DockerCli,
    iptables: &Iptables,
    name: &str,
    enabled: bool,
) -> Option<String> {
    let bridge = if enabled {
        match bridge(cli, name) {
            Ok(bridge) => bridge,
            Err(e) => return Some(format!("{FIREWALL_PROBLEM}: {e}")),
        }
    } else {
        None
    };
    match metadata_block::reconcile(iptables, name, bridge.as_deref(), enabled) {
        Ok(()) => None,
        Err(e) if enabled => Some(format!("{FIREWALL_PROBLEM}: {e}")),
        // Off: a rule left behind blocks nothing a renter is owed; it is not the network's
        // problem (and never stops creates). The next reconcile tries again.
        Err(e) => {
            log::warn!("docker.block_metadata is off but its rules could not be removed: {e}");
            None
        }
    }
}

/// How a [`check_firewall`] problem starts.
pub const FIREWALL_PROBLEM: &str =
    "docker.block_metadata: the rules keeping containers from link-local addresses are not in \
     place";

/// What [`check`] and [`check_firewall`] found, as one problem (`None`: nothing).
pub fn join_problems(problems: [Option<String>; 2]) -> Option<String> {
    let found: Vec<String> = problems.into_iter().flatten().collect();
    (!found.is_empty()).then(|| found.join(" | "))
}

const STRANGERS: &str = "is shared with containers the agent did not create";

/// True when the problem [`check`] and [`check_firewall`] reported must stop creates (the
/// network is missing, not the agent's, or lets containers talk; the metadata rules are not in
/// place); strangers on a good network are only reported.
pub fn blocks_creates(problem: &str) -> bool {
    problem.split(" | ").any(|part| !part.contains(STRANGERS))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn twin(id: &str, created: &str, owned: bool, containers: usize) -> Twin {
        let labels =
            owned.then(|| BTreeMap::from([(OWNER_LABEL.0.to_string(), OWNER_LABEL.1.to_string())]));
        let containers = (0..containers)
            .map(|n| (format!("endpoint{n}"), serde_json::json!({"Name": "c"})))
            .collect();
        Twin {
            id: id.into(),
            name: "utopia-renters".into(),
            created: created.into(),
            labels,
            containers: Some(containers),
        }
    }

    #[test]
    fn of_twin_networks_the_oldest_stays_and_only_the_agents_empty_ones_go() {
        let t1 = "2026-12-04T04:18:53.496094354Z";
        let t2 = "2026-12-04T04:18:53.523090171Z";
        let removed = twins_to_remove(
            "utopia-renters",
            vec![twin("bbb", t2, true, 0), twin("aaa", t1, true, 0)],
        );
        assert_eq!(removed, vec!["bbb".to_string()]);
        // Same creation time: the lowest id stays, whatever order docker lists them in.
        let removed = twins_to_remove(
            "utopia-renters",
            vec![twin("bbb", t1, true, 0), twin("aaa", t1, true, 0)],
        );
        assert_eq!(removed, vec!["bbb".to_string()]);
        // One with a container, or not the agent's, or of another name (the name filter
        // matches parts of names): left alone.
        let mut other = twin("ddd", t2, true, 0);
        other.name = "utopia-renters-2".into();
        let removed = twins_to_remove(
            "utopia-renters",
            vec![
                twin("aaa", t1, true, 0),
                twin("bbb", t2, true, 1),
                twin("ccc", t2, false, 0),
                other,
                twin("eee", t2, true, 0),
            ],
        );
        assert_eq!(removed, vec!["eee".to_string()]);
        assert!(twins_to_remove("utopia-renters", vec![twin("aaa", t1, true, 0)]).is_empty());
    }

    fn inspect(json: &str) -> Option<String> {
        parse("utopia-renters", json.as_bytes()).unwrap()
    }

    #[test]
    fn only_the_agents_bridge_without_icc_is_accepted() {
        let good = r#"[{"Name":"utopia-renters","Driver":"bridge",
            "Options":{"com.docker.network.bridge.enable_icc":"false"},
            "Labels":{"io.utopia.owner":"utopia-node-agent"}}]"#;
        assert_eq!(inspect(good), None);
        let foreign = r#"[{"Driver":"bridge",
            "Options":{"com.docker.network.bridge.enable_icc":"false"},"Labels":{}}]"#;
        assert!(inspect(foreign)
            .unwrap()
            .contains("not created by the agent"));
        let talkative = r#"[{"Driver":"bridge","Options":{},
            "Labels":{"io.utopia.owner":"utopia-node-agent"}}]"#;
        assert!(inspect(talkative).unwrap().contains("reach each other"));
        let overlay = r#"[{"Driver":"overlay","Options":null,
            "Labels":{"io.utopia.owner":"utopia-node-agent"}}]"#;
        assert!(inspect(overlay).unwrap().contains("not bridge"));
        assert!(parse("n", b"[]").is_err());
        assert!(parse("n", b"nope").is_err());
    }

    #[test]
    fn strangers_are_the_containers_without_a_claim_label() {
        let listed = "utopia-a\ta\nsomeones-db\t\nutopia-b\tb\n\n";
        assert_eq!(parse_strangers(listed), vec!["someones-db".to_string()]);
        let problem = "docker network n is shared with containers the agent did not create: x";
        assert!(!blocks_creates(problem));
        assert!(blocks_creates(
            "docker network n exists but was not created"
        ));
        let both = join_problems([
            Some(problem.to_string()),
            Some(format!("{FIREWALL_PROBLEM}: no iptables")),
        ])
        .unwrap();
        assert!(blocks_creates(&both), "{both}");
        assert_eq!(join_problems([None, None]), None);
    }
}
