//! The docker work of the [`DockerRunner`](super::runner)'s worker threads: each takes a
//! [`Work`] item from one of the runner's bounded queues (an on-demand
//! [`WorkerPool`](crate::workers::WorkerPool)), runs the docker commands it needs (each with
//! its deadline, see [`DockerCli`]) and sends a [`Done`] report back (see [`jobs`](super::jobs)).
//! Workers decide nothing and answer nobody: the runner has already reserved GPUs and ports,
//! applies the report to its ledger and table, and answers the API.
//!
//! Stops: a worker thread waits on the queue and the shutdown channel; a docker command in
//! flight when shutdown starts is killed and reaped by [`DockerCli`].

use crate::docker::argv::{run_args, run_labels};
use crate::docker::cli::{DockerCli, DockerError, Output, PullFailure};
use crate::docker::container::{parse_inspect, ContainerView};
use crate::docker::jobs::{Done, Work, WorkerContext};
use crate::docker::labels::LABEL_CLAIM_ID;
use crate::docker::ledger::short_id;
use crate::docker::network;
use crate::docker::protocol::{Action, ContainerError};
use crate::docker::pull_auth::{PullConfig, RegistryAuth};
use crate::docker::pull_progress::{run_in_terminal, PullProgress, PullReader};
use crate::docker::spec::{join_ids, CreateSpec, SpecError};
use crossbeam_channel::Sender;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Most bytes of logs one request returns.
pub const MAX_LOG_BYTES: usize = 8 * 1024 * 1024;
/// What the `docker ps`/`inspect` output of a reconcile may be at most.
const INSPECT_CAP: usize = 64 * 1024 * 1024;

/// Runs one [`Work`] item on a worker thread of the runner's pools; its report is sent back
/// by the pool's handler (steps of a create are sent on `done` meanwhile).
pub(super) fn execute(context: &WorkerContext, work: Work, done: &Sender<Done>) -> Done {
    match work {
        Work::Create {
            ticket,
            spec,
            gpus,
            uuids,
        } => Done::Created {
            ticket,
            claim_id: spec.claim_id.clone(),
            result: create(context, &spec, &gpus, &uuids, done),
        },
        Work::Act { ticket, id, action } => Done::Acted {
            ticket,
            result: act(context, &id, action),
            id,
        },
        Work::Delete { ticket, view } => Done::Deleted {
            ticket,
            result: delete(context, &view.id),
            view,
        },
        Work::Logs { ticket, id, tail } => Done::Logs {
            ticket,
            result: logs(context, &id, tail),
        },
        Work::Reconcile { generation } => {
            let result = reconcile(context);
            // Only worth asking while docker answers.
            let network = match &result {
                Ok(_) => network::join_problems([
                    network::check(&context.cli, &context.settings.network),
                    network::check_firewall(
                        &context.cli,
                        &context.iptables,
                        &context.settings.network,
                        context.settings.block_metadata,
                    ),
                ]),
                Err(_) => None,
            };
            Done::Reconciled {
                generation,
                result,
                network,
            }
        }
        Work::Refresh { id, generation } => Done::Refreshed {
            result: inspect_one(context, &id),
            id,
            generation,
        },
    }
}

fn args(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

fn create(
    context: &WorkerContext,
    spec: &CreateSpec,
    gpus: &[u32],
    uuids: &[String],
    done: &Sender<Done>,
) -> Result<ContainerView, ContainerError> {
    let cli = &context.cli;
    // The API shows these steps while a create that answered 202 goes on.
    let step = |status: String, pull: Option<PullProgress>| {
        let _ = done.send(Done::Progress {
            claim_id: spec.claim_id.clone(),
            status,
            pull,
        });
    };
    step("starting container".to_string(), None);
    log::info!(
        "creating container {} for claim {} (image {}, GPUs [{}])",
        spec.container_name(),
        spec.claim_id,
        spec.image,
        join_ids(gpus)
    );
    // `docker run --pull=never` first: when docker has the image (the usual case) the create
    // costs no separate image check. Only a missing image is pulled, then run again.
    let run = match run_container(context, spec, gpus, uuids)? {
        Err(e) if e.is_no_such_image() => {
            pull_image(cli, &spec.image, spec.registry_auth.as_ref(), &|pull| {
                step(format!("pulling image {}", spec.image), Some(pull))
            })?;
            step("starting container".to_string(), None);
            run_container(context, spec, gpus, uuids)?
        }
        run => run,
    };
    let printed = match run {
        Ok(out) => out.stdout,
        Err(e) => {
            // Docker's own text goes to the log only (the answer says what kind of failure).
            let log_refusal = |e: &DockerError| {
                log::warn!(
                    "creating container {} failed: {}",
                    spec.container_name(),
                    e.log_line()
                )
            };
            if e.is_name_taken() {
                log_refusal(&e);
                // Someone else's container has our name: not ours to remove.
                return Err(ContainerError::Conflict {
                    code: "claim_in_use",
                    message: format!(
                        "a container named {} already exists (not created by this request)",
                        spec.container_name()
                    ),
                });
            }
            // A timed-out `docker run` may still be carried out by the engine: the runner keeps
            // the reservation (state unknown) and the next reconcile decides.
            if matches!(e, DockerError::Timeout { .. }) {
                return Err(e.into());
            }
            remove_leftovers(context, &spec.claim_id);
            if e.is_port_taken() {
                log_refusal(&e);
                return Err(ContainerError::Conflict {
                    code: "port_in_use",
                    message: "a host port is used outside the agent".to_string(),
                });
            }
            if let Some((field, why)) = e.run_refusal() {
                log_refusal(&e);
                // Docker refused the settings themselves: the request is at fault.
                return Err(ContainerError::Invalid(SpecError {
                    field: field.to_string(),
                    message: why.to_string(),
                }));
            }
            return Err(e.into());
        }
    };
    // `docker run --detach` prints the container's id once docker has started it: the answer
    // needs no second docker command (the runner refreshes the container from docker right
    // after, for docker's times and pid).
    if let Some(id) = printed_id(&printed) {
        return Ok(ContainerView::started(
            id,
            spec.container_name(),
            spec.image.clone(),
            &run_labels(spec, gpus, uuids),
        ));
    }
    // It printed something else (a wrapper in front of docker): ask docker by the name.
    let name = spec.container_name();
    log::warn!("`docker run` printed no container id for {name}; inspecting it by name");
    match inspect_one(context, &name) {
        Ok(Some(view)) => Ok(view),
        Ok(None) => Err(ContainerError::Docker(DockerError::BadOutput {
            command: "docker run".into(),
            message: format!("container {name} vanished right after it was created"),
        })),
        Err(e) => {
            if !matches!(e, DockerError::Timeout { .. }) {
                remove_leftovers(context, &spec.claim_id);
            }
            Err(e.into())
        }
    }
}

/// `docker run` of the create (with its env file, written for this run only): docker's answer,
/// or why the run could not even be started.
fn run_container(
    context: &WorkerContext,
    spec: &CreateSpec,
    gpus: &[u32],
    uuids: &[String],
) -> Result<Result<Output, DockerError>, ContainerError> {
    let cli = &context.cli;
    let env_file = if spec.env.is_empty() {
        None
    } else {
        Some(EnvFile::write(&spec.claim_id, &spec.env)?)
    };
    let argv = run_args(
        spec,
        gpus,
        uuids,
        &context.settings,
        env_file.as_ref().map(|f| f.path.as_path()),
    );
    Ok(cli.run(&argv, cli.command_timeout(), 4096))
}

/// The container id `docker run --detach` printed (its last line: 64 hex digits); `None` when
/// it printed anything else.
fn printed_id(stdout: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(stdout).ok()?;
    let last = text.lines().map(str::trim).rfind(|l| !l.is_empty())?;
    (last.len() == 64 && last.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| last.to_ascii_lowercase())
}

/// Pulls an image docker does not have; with `auth`, through a docker config of this pull only
/// (removed when it ends).
fn pull_image(
    cli: &DockerCli,
    image: &str,
    auth: Option<&RegistryAuth>,
    pulling: &dyn Fn(PullProgress),
) -> Result<(), ContainerError> {
    // A registry name that DNS turns into this host's own address is refused now, before the
    // engine reaches it.
    crate::docker::registry_address::check(image).map_err(|e| match e {
        crate::docker::registry_address::RegistryAddressError::Local { .. } => {
            ContainerError::ImageNotFound(format!("image {image} may not be pulled: {e}"))
        }
        _ => ContainerError::ImagePull(format!("image {image} could not be pulled: {e}")),
    })?;
    log::info!("pulling image {image}");
    pulling(PullProgress::default());
    let pull_args = args(&["pull", "--", image]);
    let pulled = match auth {
        None => pull(cli, &pull_args, None, pulling),
        Some(auth) => {
            let config = PullConfig::write(&std::env::temp_dir(), auth).map_err(|e| {
                log::warn!("{e}");
                ContainerError::Docker(DockerError::BadOutput {
                    command: "docker pull".into(),
                    message: "cannot write the pull's registry credentials".into(),
                })
            })?;
            pull(cli, &pull_args, Some(config.dir()), pulling)
            // `config` is dropped here: the credentials are gone once the pull ends.
        }
    };
    match pulled {
        Ok(_) => Ok(()),
        Err(e @ DockerError::Failed { .. }) => {
            // Docker's text may quote what the registry answered: the answer says only which
            // kind of failure it was.
            log::warn!("pulling image {image} failed: {}", e.log_line());
            let failure = e.pull_failure();
            let message = format!("image {image} could not be pulled: {}", failure.describe());
            match failure {
                PullFailure::NotFound | PullFailure::AuthRequired => {
                    Err(ContainerError::ImageNotFound(message))
                }
                _ => Err(ContainerError::ImagePull(message)),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// How often at most a pull's progress is reported to the runner.
const PULL_REPORT_EVERY: Duration = Duration::from_millis(250);

/// `docker pull` within the pull deadline (with the create's own `DOCKER_CONFIG` when it has
/// registry credentials), its output read as it arrives: each change of its progress is handed
/// to `pulling`, at most every [`PULL_REPORT_EVERY`], and the last one always.
fn pull(
    cli: &DockerCli,
    pull_args: &[String],
    config_dir: Option<&std::path::Path>,
    pulling: &dyn Fn(PullProgress),
) -> Result<Output, DockerError> {
    let mut reader = PullReader::default();
    let mut shown = PullProgress::default();
    let mut shown_at = Instant::now();
    let deadline = cli.pull_timeout();
    let result = cli.execute_with(pull_args, deadline, false, config_dir, |cmd, shutdown| {
        run_in_terminal(cmd, deadline, shutdown, &mut |chunk| {
            reader.feed(chunk);
            let now = reader.progress();
            if now != shown && shown_at.elapsed() >= PULL_REPORT_EVERY {
                pulling(now.clone());
                shown = now;
                shown_at = Instant::now();
            }
        })
    });
    let last = reader.progress();
    if last != shown {
        pulling(last);
    }
    result
}

/// After a failed create: removes whatever managed container of this claim docker made.
fn remove_leftovers(context: &WorkerContext, claim_id: &str) {
    let cli = &context.cli;
    let claim_filter = format!("label={LABEL_CLAIM_ID}={claim_id}");
    let managed_filter = format!("label={}", context.settings.managed_label);
    let listed = cli.run(
        &args(&[
            "ps",
            "-a",
            "-q",
            "--no-trunc",
            "--filter",
            &managed_filter,
            "--filter",
            &claim_filter,
        ]),
        cli.command_timeout(),
        64 * 1024,
    );
    let Ok(out) = listed else { return };
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    for id in ids {
        log::warn!(
            "removing half-created container {} of claim {claim_id}",
            short_id(&id)
        );
        if let Err(e) = cli.run(
            &args(&["rm", "--force", "--volumes", "--", &id]),
            cli.command_timeout(),
            4096,
        ) {
            log::warn!(
                "cannot remove half-created container {}: {e}",
                short_id(&id)
            );
        }
    }
}

fn act(context: &WorkerContext, id: &str, action: Action) -> Result<ContainerView, ContainerError> {
    let cli = &context.cli;
    let grace = cli.stop_timeout().as_secs().to_string();
    let (argv, deadline) = match action {
        Action::Start => (args(&["start", "--", id]), cli.command_timeout()),
        Action::Stop | Action::Restart => (
            args(&[action.word(), "--time", &grace, "--", id]),
            cli.command_timeout() + cli.stop_timeout(),
        ),
    };
    log::info!("{} container {}", action.word(), short_id(id));
    match cli.run(&argv, deadline, 4096) {
        Ok(_) => {}
        Err(e) if e.is_no_such_container() => {
            return Err(ContainerError::NotFound(format!(
                "container {id} no longer exists"
            )))
        }
        Err(e) => return Err(e.into()),
    }
    match inspect_one(context, id) {
        Ok(Some(view)) => Ok(view),
        Ok(None) => Err(ContainerError::NotFound(format!(
            "container {id} no longer exists"
        ))),
        Err(e) => Err(e.into()),
    }
}

fn delete(context: &WorkerContext, id: &str) -> Result<(), ContainerError> {
    let cli = &context.cli;
    let grace = cli.stop_timeout().as_secs().to_string();
    log::info!("deleting container {}", short_id(id));
    match cli.run(
        &args(&["stop", "--time", &grace, "--", id]),
        cli.command_timeout() + cli.stop_timeout(),
        4096,
    ) {
        Ok(_) => {}
        Err(e) if e.is_no_such_container() => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    // `--volumes`: the anonymous volumes of the image's `VOLUME`s go with it (left behind,
    // every rental could leave its data on the node's disk for good). Managed containers
    // have no named volumes or bind mounts, which it would not touch anyway.
    match cli.run(
        &args(&["rm", "--force", "--volumes", "--", id]),
        cli.command_timeout(),
        4096,
    ) {
        Ok(_) => Ok(()),
        Err(e) if e.is_no_such_container() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn logs(context: &WorkerContext, id: &str, tail: u32) -> Result<String, ContainerError> {
    let cli = &context.cli;
    let tail = tail.to_string();
    match cli.run_merged(
        &args(&["logs", "--tail", &tail, "--", id]),
        cli.command_timeout(),
        MAX_LOG_BYTES,
    ) {
        Ok(out) => Ok(log_text(out.stdout, out.truncated)),
        Err(e) if e.is_no_such_container() => Err(ContainerError::NotFound(format!(
            "container {id} no longer exists"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// The logs as text: when more than [`MAX_LOG_BYTES`] came, the newest whole lines were kept,
/// under a note saying so.
fn log_text(bytes: Vec<u8>, truncated: bool) -> String {
    if !truncated {
        return String::from_utf8_lossy(&bytes).into_owned();
    }
    // The cut fell inside a line (or a UTF-8 sequence): start at the next whole line.
    let start = bytes.iter().position(|b| *b == b'\n').map_or(0, |i| i + 1);
    format!(
        "[... cut: earlier lines left out, more than {} MiB of logs; ask for a smaller tail]\n{}",
        MAX_LOG_BYTES / (1024 * 1024),
        String::from_utf8_lossy(&bytes[start..])
    )
}

/// `docker container inspect` of one container; `None` when it does not exist (or is not
/// managed).
fn inspect_one(context: &WorkerContext, id: &str) -> Result<Option<ContainerView>, DockerError> {
    let cli = &context.cli;
    match cli.run(
        &args(&["container", "inspect", "--", id]),
        cli.command_timeout(),
        INSPECT_CAP,
    ) {
        Ok(out) => parse_inspect(&out.stdout, &context.settings.managed_label)
            .map(|views| views.into_iter().next())
            .map_err(|message| DockerError::BadOutput {
                command: "docker container inspect".into(),
                message,
            }),
        Err(e) if e.is_no_such_container() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Every managed container, running or not.
pub(super) fn reconcile(context: &WorkerContext) -> Result<Vec<ContainerView>, DockerError> {
    let cli = &context.cli;
    let filter = format!("label={}", context.settings.managed_label);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let out = cli.run(
            &args(&["ps", "-a", "-q", "--no-trunc", "--filter", &filter]),
            cli.command_timeout(),
            INSPECT_CAP,
        )?;
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut argv = args(&["container", "inspect", "--"]);
        argv.extend(ids);
        match cli.run(&argv, cli.command_timeout(), INSPECT_CAP) {
            Ok(out) => {
                return parse_inspect(&out.stdout, &context.settings.managed_label).map_err(
                    |message| DockerError::BadOutput {
                        command: "docker container inspect".into(),
                        message,
                    },
                )
            }
            // One was removed between ps and inspect: list again.
            Err(e) if e.is_no_such_container() && attempt < 3 => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Prefix of the directory each [`EnvFile`] lives in: `utopia-agent-<pid>-<claim>-<nanos>`.
const ENV_DIR_PREFIX: &str = "utopia-agent-";

/// Removes the env file directories that agents which died mid-create (SIGKILL, power loss)
/// left in `root`: they hold renters' secrets. Those of live processes (this agent, another
/// agent on the host) are left alone.
pub(super) fn remove_stale_env_files(root: &Path) {
    super::scratch::remove_stale_dirs(root, ENV_DIR_PREFIX, "env", "env file");
}

/// The user's environment, in a file only the agent's user can read (mode 0600 in a fresh
/// directory of mode 0700), both removed when dropped.
struct EnvFile {
    dir: PathBuf,
    path: PathBuf,
}

impl EnvFile {
    fn write(claim_id: &str, env: &[(String, String)]) -> Result<EnvFile, ContainerError> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        // `create` (not `create_all`) fails when the name exists: nobody else can have
        // prepared the directory.
        let dir = std::env::temp_dir().join(format!(
            "{ENV_DIR_PREFIX}{}-{claim_id}-{nanos}",
            std::process::id()
        ));
        let failed = |e: std::io::Error, what: &Path| {
            ContainerError::Docker(DockerError::BadOutput {
                command: "docker run".into(),
                message: format!("cannot write the env file in {}: {e}", what.display()),
            })
        };
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| failed(e, &dir))?;
        let file = EnvFile {
            path: dir.join("env"),
            dir,
        };
        let mut text = String::new();
        for (key, value) in env {
            // Validated: KEY is a plain name and VALUE has no line break, so each entry is one
            // line docker's env-file reader takes verbatim.
            text.push_str(key);
            text.push('=');
            text.push_str(value);
            text.push('\n');
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&file.path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|e| failed(e, &file.dir))?;
        Ok(file)
    }
}

impl Drop for EnvFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_docker_run_printed() {
        let id = "0123456789abcdef".repeat(4);
        assert_eq!(printed_id(format!("{id}\n").as_bytes()), Some(id.clone()));
        let upper = format!("{}\n\n", id.to_ascii_uppercase());
        assert_eq!(printed_id(upper.as_bytes()), Some(id.clone()));
        let after_a_line = format!("Unable to find image locally\n{id}\n");
        assert_eq!(printed_id(after_a_line.as_bytes()), Some(id.clone()));
        for other in [
            "".to_string(),
            "\n".to_string(),
            id[..63].to_string(),
            format!("{id}0"),
            format!("{}g", &id[..63]),
            format!("{id} extra"),
        ] {
            assert_eq!(printed_id(other.as_bytes()), None, "{other:?}");
        }
        assert_eq!(printed_id(b"\xff\xfe"), None);
    }

    #[test]
    fn cut_logs_keep_the_newest_whole_lines() {
        assert_eq!(log_text(b"a\nb\n".to_vec(), false), "a\nb\n");
        let text = log_text(b"rtial\nline 2\nline 3\n".to_vec(), true);
        assert!(text.starts_with("[... cut:"), "{text}");
        assert!(text.ends_with("\nline 2\nline 3\n"), "{text}");
        assert!(!text.contains("rtial"), "{text}");
    }

    #[test]
    fn env_files_of_dead_agents_are_removed() {
        let root = tempfile::tempdir().unwrap();
        // A process that has exited: its pid is (for the moment) nobody's.
        let mut gone = std::process::Command::new("true").spawn().unwrap();
        let dead = gone.id();
        gone.wait().unwrap();
        let make = |name: String| {
            let dir = root.path().join(name);
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("env"), "SECRET=1\n").unwrap();
            dir
        };
        let of_dead = make(format!("utopia-agent-{dead}-claim-1-123"));
        let of_live = make("utopia-agent-1-claim-2-456".to_string());
        let of_us = make(format!("utopia-agent-{}-claim-3-789", std::process::id()));
        let other = make("something-else".to_string());
        remove_stale_env_files(root.path());
        assert!(!of_dead.exists(), "a crashed agent's secrets stay on disk");
        assert!(of_live.exists() && of_us.exists() && other.exists());
    }

    #[test]
    fn env_file_is_private_and_removed() {
        use std::os::unix::fs::PermissionsExt;
        let env = vec![("A".to_string(), " spaced = value ".to_string())];
        let file = EnvFile::write("claim", &env).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&file.dir), 0o700);
        assert_eq!(mode(&file.path), 0o600);
        assert_eq!(
            std::fs::read_to_string(&file.path).unwrap(),
            "A= spaced = value \n"
        );
        let dir = file.dir.clone();
        drop(file);
        assert!(!dir.exists());
    }
}
