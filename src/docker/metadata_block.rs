//! `docker.block_metadata`: renters' containers cut off from link-local addresses
//! (169.254.0.0/16), where clouds serve instance metadata and credentials.
//!
//! The agent inserts, through the `iptables` CLI, one rule in each of two chains of the
//! `filter` table for the renters' bridge (`docker.network`):
//! - `DOCKER-USER` (docker's hook in `FORWARD`, evaluated before docker's own rules): packets a
//!   container sends to a link-local address beyond the host (a cloud's metadata service at
//!   169.254.169.254) are rejected;
//! - `INPUT`: the same for link-local addresses of the host itself (a metadata proxy on the
//!   node), which are delivered locally and never pass `FORWARD`.
//!
//! Each rule is `-i <bridge> -d 169.254.0.0/16 -m comment --comment <COMMENT_PREFIX>:<network>
//! -j REJECT`: the comment names the network, so agents with other networks on the same host
//! (and parallel tests) never touch each other's rules. Every reconcile ([`reconcile`]) checks
//! each rule with `-C` and inserts it with `-I` only when missing (a rule flushed by someone
//! else, a firewall reload, is put back with a warning), and deletes rules of this network's
//! comment that are not the wanted one (the bridge of a network created again). When the
//! option is off, the first reconcile that can list the chains deletes the rules of this
//! network's comment and nothing else (no `iptables`, or not allowed: there is nothing of ours
//! to remove).
//!
//! At shutdown the rules stay: the containers keep running without the agent, and so must
//! their isolation. Switching the option off takes a restart (like every `docker.*` key but the
//! deadlines); the first reconcile of the new agent removes the rules.
//!
//! IPv6: the renters' network is created without IPv6, so containers have no IPv6 route out;
//! the IPv6 link-local range (fe80::/10) is never forwarded by a router, so no `ip6tables`
//! rule is needed for `FORWARD`, and none is installed.
//!
//! Every `iptables` command runs as a supervised child with a deadline and is reaped
//! ([`crate::child::run`]).

use crate::child::{self, Keep, RunError, RunLimits};
use crate::shutdown::Shutdown;
use std::fmt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The start of the comment of every rule the agent installs; the network's name follows.
pub const COMMENT_PREFIX: &str = "utopia-node-agent:block-metadata";
/// The IPv4 link-local range.
pub const LINK_LOCAL: &str = "169.254.0.0/16";
/// The chains the rules go in (see the module doc).
pub const CHAINS: [&str; 2] = ["DOCKER-USER", "INPUT"];

/// The comment of the rules for network `network`.
pub fn comment(network: &str) -> String {
    format!("{COMMENT_PREFIX}:{network}")
}

/// Why the rules could not be checked or changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirewallError {
    /// The binary could not be started (not installed, not in `PATH`).
    Missing { binary: PathBuf, message: String },
    /// A chain the rules need does not exist (`DOCKER-USER` without docker's iptables rules).
    NoChain { chain: String, message: String },
    /// The command failed, timed out or was cancelled.
    Failed { command: String, message: String },
}

impl fmt::Display for FirewallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FirewallError::Missing { binary, message } => write!(
                f,
                "cannot run {} ({message}); install iptables or set docker.block_metadata to false",
                binary.display()
            ),
            FirewallError::NoChain { chain, message } => write!(
                f,
                "iptables has no {chain} chain in the filter table ({message}); docker creates \
                 DOCKER-USER when it manages iptables (dockerd --iptables=true)"
            ),
            FirewallError::Failed { command, message } => write!(f, "{command}: {message}"),
        }
    }
}

impl std::error::Error for FirewallError {}

/// The `iptables` CLI: each command a supervised child with a deadline.
#[derive(Clone)]
pub struct Iptables {
    binary: PathBuf,
    deadline: Duration,
    shutdown: Shutdown,
    /// Set once an "off" reconcile removed this network's rules: the option changes only with
    /// a restart, so later reconciles need not list the chains again.
    removed: Arc<AtomicBool>,
}

/// How one `iptables` command ended.
struct Ran {
    success: bool,
    output: String,
}

impl Iptables {
    pub fn new(binary: PathBuf, deadline: Duration, shutdown: Shutdown) -> Iptables {
        Iptables {
            binary,
            deadline,
            shutdown,
            removed: Arc::new(AtomicBool::new(false)),
        }
    }

    fn run(&self, args: &[String]) -> Result<Ran, FirewallError> {
        let mut command = Command::new(&self.binary);
        // `-w`: wait for the xtables lock (docker and firewalld take it too) rather than fail.
        command.arg("-w").arg("5").args(args);
        let limits = RunLimits {
            deadline: self.deadline,
            stdout_cap: 1024 * 1024,
            keep: Keep::Head,
            merge_stderr: true,
        };
        let described = format!("iptables {}", args.join(" "));
        match child::run(command, limits, &self.shutdown) {
            Ok(finished) => Ok(Ran {
                success: finished.status.success(),
                output: finished.stdout.text(),
            }),
            Err(RunError::Spawn(e)) => Err(FirewallError::Missing {
                binary: self.binary.clone(),
                message: e.to_string(),
            }),
            Err(e) => Err(FirewallError::Failed {
                command: described,
                message: e.to_string(),
            }),
        }
    }

    /// `iptables -S <chain>`: the chain's rules as `-A ...` lines.
    fn list(&self, chain: &str) -> Result<Vec<String>, FirewallError> {
        let ran = self.run(&words(&["-t", "filter", "-S", chain]))?;
        if !ran.success {
            return Err(FirewallError::NoChain {
                chain: chain.to_string(),
                message: first_line(&ran.output),
            });
        }
        Ok(ran
            .output
            .lines()
            .filter(|l| l.starts_with("-A "))
            .map(str::to_string)
            .collect())
    }

    /// Runs `-C`, `-I` or `-D` of `rule` in `chain`; `Ok(false)`: the command said no (for
    /// `-C`, the rule is absent).
    fn rule(&self, op: &str, chain: &str, rule: &[String]) -> Result<bool, FirewallError> {
        let mut args = words(&["-t", "filter", op, chain]);
        if op == "-I" {
            args.push("1".to_string());
        }
        args.extend(rule.iter().cloned());
        let ran = self.run(&args)?;
        if ran.success || op == "-C" {
            return Ok(ran.success);
        }
        Err(FirewallError::Failed {
            command: format!("iptables {}", args.join(" ")),
            message: first_line(&ran.output),
        })
    }
}

fn words(list: &[&str]) -> Vec<String> {
    list.iter().map(|w| w.to_string()).collect()
}

/// The first line that is not iptables' warning about legacy tables.
fn first_line(text: &str) -> String {
    text.lines()
        .find(|l| !l.starts_with("# Warning") && !l.trim().is_empty())
        .unwrap_or("no message")
        .trim()
        .to_string()
}

/// The rule's match and target (after `-A <chain>`) for `bridge` of `network`.
pub fn rule(bridge: &str, network: &str) -> Vec<String> {
    words(&[
        "-i",
        bridge,
        "-d",
        LINK_LOCAL,
        "-m",
        "comment",
        "--comment",
        &comment(network),
        "-j",
        "REJECT",
    ])
}

/// The rules of `listing` (`iptables -S` lines of `chain`) that carry `network`'s comment,
/// as the words after `-A <chain>`. The comment has no spaces or quotes (network names are
/// `[A-Za-z0-9_.-]`), so the words are the line's words, unquoted (the nf_tables iptables
/// prints every comment in double quotes, the legacy one only those with spaces).
fn ours(listing: &[String], chain: &str, network: &str) -> Vec<Vec<String>> {
    let comment = comment(network);
    let prefix = format!("-A {chain} ");
    listing
        .iter()
        .filter_map(|line| {
            let words: Vec<&str> = line
                .strip_prefix(&prefix)?
                .split_whitespace()
                .map(|w| w.trim_matches('"'))
                .collect();
            let tagged = words
                .windows(2)
                .any(|w| w[0] == "--comment" && w[1] == comment);
            tagged.then(|| words.iter().map(|w| w.to_string()).collect())
        })
        .collect()
}

/// True when `listed` (a rule as `iptables -S` prints it) is `wanted` (as the agent gives it):
/// the same words, in any order (iptables prints `-d` before `-i` and adds the reject type).
fn same_rule(listed: &[String], wanted: &[String]) -> bool {
    let mut listed: Vec<&str> = listed.iter().map(String::as_str).collect();
    // iptables adds the default reject type to what it prints.
    if let Some(i) = listed.iter().position(|w| *w == "--reject-with") {
        if listed.get(i + 1) == Some(&"icmp-port-unreachable") {
            listed.drain(i..i + 2);
        }
    }
    let mut wanted: Vec<&str> = wanted.iter().map(String::as_str).collect();
    listed.sort_unstable();
    wanted.sort_unstable();
    listed == wanted
}

/// Makes the firewall match `docker.block_metadata` for `network` (bridge `bridge`; `None`
/// when the network does not exist). On: the rule is inserted in each chain where missing and
/// stale ones of this network are removed. Off: this network's rules are removed. `Err`: the
/// firewall is not as wanted.
pub fn reconcile(
    iptables: &Iptables,
    network: &str,
    bridge: Option<&str>,
    enabled: bool,
) -> Result<(), FirewallError> {
    if !enabled && iptables.removed.load(Ordering::SeqCst) {
        return Ok(());
    }
    let wanted = match (enabled, bridge) {
        (true, Some(bridge)) => Some(rule(bridge, network)),
        // The network is missing: nothing to protect yet, stale rules go.
        _ => None,
    };
    for chain in CHAINS {
        let listing = match iptables.list(chain) {
            Ok(listing) => listing,
            // Off, without iptables or without the chain: no rule of ours can exist.
            Err(FirewallError::Missing { .. } | FirewallError::NoChain { .. }) if !enabled => {
                continue
            }
            // Off, and iptables timed out: the next reconcile tries again.
            Err(_) if !enabled => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut present = false;
        for existing in ours(&listing, chain, network) {
            if wanted.as_ref().is_some_and(|w| same_rule(&existing, w)) && !present {
                present = true;
                continue;
            }
            iptables.rule("-D", chain, &existing)?;
            log::info!(
                "removed the firewall rule {chain} {} (docker.block_metadata {})",
                existing.join(" "),
                if enabled { "on, stale rule" } else { "off" }
            );
        }
        let Some(wanted) = &wanted else {
            continue;
        };
        // `-C` too before inserting: the listing's words are compared loosely.
        if !present && !iptables.rule("-C", chain, wanted)? {
            iptables.rule("-I", chain, wanted)?;
            log::warn!(
                "inserted the firewall rule {chain} {} (docker.block_metadata: renters' \
                 containers cannot reach link-local addresses; it was missing: first start, or \
                 flushed by someone else)",
                wanted.join(" ")
            );
        }
    }
    if !enabled {
        iptables.removed.store(true, Ordering::SeqCst);
    }
    Ok(())
}

/// The bridge interface of a docker network: its `com.docker.network.bridge.name` option, or
/// docker's default name `br-<first 12 characters of its id>`.
pub fn bridge_name(id: &str, name_option: Option<&str>) -> Option<String> {
    if let Some(name) = name_option.filter(|n| !n.is_empty()) {
        return Some(name.to_string());
    }
    (id.len() >= 12 && id.is_ascii()).then(|| format!("br-{}", &id[..12]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shutdown;

    #[test]
    fn listed_rules_of_this_network_are_found_and_compared() {
        let listing: Vec<String> = [
            "-A DOCKER-USER -d 169.254.0.0/16 -i br-0123456789ab -m comment --comment \
             \"utopia-node-agent:block-metadata:renters\" -j REJECT --reject-with \
             icmp-port-unreachable",
            "-A DOCKER-USER -d 169.254.0.0/16 -i br-ffff -m comment --comment \
             utopia-node-agent:block-metadata:renters-2 -j REJECT",
            "-A DOCKER-USER -j RETURN",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let found = ours(&listing, "DOCKER-USER", "renters");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(same_rule(&found[0], &rule("br-0123456789ab", "renters")));
        assert!(!same_rule(&found[0], &rule("br-other", "renters")));
        assert_eq!(ours(&listing, "INPUT", "renters").len(), 0);
        assert_eq!(ours(&listing, "DOCKER-USER", "renter").len(), 0);
    }

    #[test]
    fn bridge_names_follow_docker() {
        assert_eq!(
            bridge_name("0123456789abcdef", None).as_deref(),
            Some("br-0123456789ab")
        );
        assert_eq!(
            bridge_name("0123456789abcdef", Some("renters0")).as_deref(),
            Some("renters0")
        );
        assert_eq!(bridge_name("short", None), None);
    }

    #[test]
    fn a_missing_binary_is_a_problem_only_when_on() {
        let (_trigger, shutdown) = shutdown::channel();
        let iptables = Iptables::new(
            PathBuf::from("/nonexistent/iptables"),
            Duration::from_secs(5),
            shutdown,
        );
        let err = reconcile(&iptables, "renters", Some("br-0123456789ab"), true).unwrap_err();
        assert!(matches!(err, FirewallError::Missing { .. }), "{err:?}");
        assert!(err.to_string().contains("install iptables"), "{err}");
        assert_eq!(
            reconcile(&iptables, "renters", Some("br-0123456789ab"), false),
            Ok(())
        );
    }
}
