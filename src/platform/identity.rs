//! The node's identity on disk: the id the platform gave this node (`identity_file_path`), and
//! beside it what else registration answered (`<identity_file_path>.registration.json`).
//!
//! Both files are written atomically (a temp file in the same directory, fsync, rename, fsync of
//! the directory), mode 0600, so a crash at any moment leaves either the old file, no file, or
//! the complete new one. The identity file is the commit point: the registration record is
//! written first, so a crash between the two leaves no identity and the next start registers
//! again, replacing both.

use crate::state::{ApiToken, PlatformApiProxy, PlatformGrant};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Longest node id accepted.
pub const MAX_NODE_ID_LEN: usize = 128;

/// A node id as the platform issued it: 1-128 characters of `[A-Za-z0-9_.:-]`, other than `.`
/// and `..` (which would be path steps in the heartbeat URL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeId(String);

impl NodeId {
    /// Accepts `value` only if it is a well-formed node id.
    pub fn parse(value: &str) -> Result<NodeId, String> {
        if value.is_empty() {
            return Err("it is empty".to_string());
        }
        if let Some(bad) = value
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')))
        {
            return Err(format!(
                "it contains {bad:?} (only A-Z a-z 0-9 _ . : - are allowed)"
            ));
        }
        // ASCII from here on: bytes are characters.
        if value.len() > MAX_NODE_ID_LEN {
            return Err(format!(
                "it is {} characters long (at most {MAX_NODE_ID_LEN})",
                value.len()
            ));
        }
        if value == "." || value == ".." {
            // In the heartbeat URL it would be a path step, not a node.
            return Err(format!("{value:?} is a path step, not a name"));
        }
        Ok(NodeId(value.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What registration answered besides the node id, kept so that a start that does not register
/// still knows it. It holds the platform's API token and stcp secret: written with mode 0600
/// only, and its `Debug` shows neither.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationRecord {
    pub node_id: String,
    /// The frps remote port the platform assigned to the agent API (tcp), if it assigned one.
    /// Written beside `api_proxy` so that an older agent reading the record still finds it.
    pub api_remote_port: Option<u16>,
    /// How the platform wants the agent API published (absent in records of older agents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_proxy: Option<PlatformApiProxy>,
    /// The platform's token for the agent API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_token: Option<ApiToken>,
    pub registered_at: String,
}

impl RegistrationRecord {
    /// What the record grants: `api_proxy`, or, in an older record, tcp on `api_remote_port`.
    pub fn grant(&self) -> PlatformGrant {
        let api_proxy =
            self.api_proxy
                .clone()
                .or(self.api_remote_port.map(|port| PlatformApiProxy::Tcp {
                    remote_port: Some(port),
                }));
        PlatformGrant {
            api_token: self.api_token.clone(),
            api_proxy,
        }
    }
}

/// Why the identity could not be read or written. Each variant names the file.
#[derive(Debug)]
pub enum IdentityError {
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    Invalid {
        path: PathBuf,
        reason: String,
    },
    Write {
        path: PathBuf,
        step: &'static str,
        source: std::io::Error,
    },
}

impl fmt::Display for IdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentityError::Unreadable { path, source } => write!(
                f,
                "cannot read the identity file {} (identity_file_path): {source}. It holds this \
                 node's id on the platform: make it readable by the agent, or, only if this \
                 server should join the platform as a new node, remove it",
                path.display()
            ),
            IdentityError::Invalid { path, reason } => write!(
                f,
                "the identity file {} (identity_file_path) does not hold a valid node id: \
                 {reason}. The agent will not register a second node silently: restore the \
                 node id from a backup or from the platform, or, only if this server should \
                 join the platform as a new node, remove the file",
                path.display()
            ),
            IdentityError::Write { path, step, source } => {
                write!(f, "cannot write {} ({step}): {source}", path.display())
            }
        }
    }
}

impl std::error::Error for IdentityError {}

/// Where the registration record of the identity file at `identity_path` is kept.
pub fn registration_record_path(identity_path: &Path) -> PathBuf {
    let mut name = identity_path.as_os_str().to_os_string();
    name.push(".registration.json");
    PathBuf::from(name)
}

/// Reads the identity file: `Ok(None)` when there is none, an error when there is one that
/// cannot be used (the agent must not start then).
pub fn load_node_id(path: &Path) -> Result<Option<NodeId>, IdentityError> {
    let invalid = |reason: String| IdentityError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    // A node id is short: reading a little more than the longest one is enough to reject a
    // file that is something else, without reading all of it.
    let bytes = match read_if_present(path, MAX_NODE_ID_LEN as u64 + 3) {
        Ok(Some(bytes)) => bytes,
        // A link whose target is missing (an unmounted volume, a moved disk) is a damaged
        // identity, not an absent one: registering would replace the link and orphan the node.
        Ok(None) => match std::fs::read_link(path) {
            Ok(target) => {
                return Err(invalid(format!(
                    "it is a symbolic link to {}, which does not exist (is its volume                      mounted?)",
                    target.display()
                )))
            }
            Err(_) => return Ok(None),
        },
        Err(FileProblem::NotRegular(what)) => return Err(invalid(what.to_string())),
        Err(FileProblem::Io(source)) => {
            return Err(IdentityError::Unreadable {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if bytes.len() > MAX_NODE_ID_LEN + 2 {
        return Err(invalid(format!(
            "it is longer than a node id ({MAX_NODE_ID_LEN} characters at most)"
        )));
    }
    let text = String::from_utf8(bytes).map_err(|_| invalid("it is not UTF-8 text".into()))?;
    // One trailing newline is tolerated: people write these files with `echo`.
    let value = text.strip_suffix('\n').unwrap_or(&text);
    let value = value.strip_suffix('\r').unwrap_or(value);
    NodeId::parse(value).map(Some).map_err(invalid)
}

/// Reads the registration record that belongs to `node_id`; anything else (missing, damaged,
/// or left from another id) is `None`, with a warning for the damaged case.
pub fn load_registration_record(
    identity_path: &Path,
    node_id: &NodeId,
) -> Option<RegistrationRecord> {
    let path = registration_record_path(identity_path);
    let problem = match read_if_present(&path, MAX_RECORD_BYTES) {
        Ok(Some(bytes)) => match serde_json::from_slice::<RegistrationRecord>(&bytes) {
            Ok(record) if record.node_id == node_id.as_str() => return Some(record),
            Ok(_) => {
                log::warn!("{} belongs to another node id; ignoring it", path.display());
                return None;
            }
            Err(e) => format!("it is damaged ({e})"),
        },
        Ok(None) => return None,
        Err(FileProblem::NotRegular(what)) => what.to_string(),
        Err(FileProblem::Io(e)) => format!("cannot read it: {e}"),
    };
    log::warn!(
        "ignoring {}: {problem}; the platform's API token and frp settings are unknown until \
         the next registration",
        path.display()
    );
    None
}

/// Largest registration record read (one is about 150 bytes).
const MAX_RECORD_BYTES: u64 = 64 * 1024;

/// Why [`read_regular_file`] read nothing.
pub(crate) enum FileProblem {
    Io(std::io::Error),
    /// What is there instead of a regular file.
    NotRegular(&'static str),
}

/// Up to `limit` bytes of the regular file at `path`. The file is opened non-blocking: a FIFO
/// would otherwise wait for a writer, forever (at start, before signals are handled). Used for
/// the identity files here and for the platform's CA files.
pub(crate) fn read_regular_file(path: &Path, limit: u64) -> Result<Vec<u8>, FileProblem> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(FileProblem::Io)?;
    let file_type = file.metadata().map_err(FileProblem::Io)?.file_type();
    if file_type.is_dir() {
        return Err(FileProblem::NotRegular(
            "it is a directory, not a regular file",
        ));
    }
    if !file_type.is_file() {
        return Err(FileProblem::NotRegular("it is not a regular file"));
    }
    let mut bytes = Vec::new();
    file.take(limit)
        .read_to_end(&mut bytes)
        .map_err(FileProblem::Io)?;
    Ok(bytes)
}

/// [`read_regular_file`], with `None` when there is nothing at `path` (nor can be: a parent is
/// not a directory).
fn read_if_present(path: &Path, limit: u64) -> Result<Option<Vec<u8>>, FileProblem> {
    match read_regular_file(path, limit) {
        Err(FileProblem::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(None)
        }
        other => other.map(Some),
    }
}

/// Persists a registration: first the record, then the identity file (the commit point).
pub fn save_registration(
    identity_path: &Path,
    record: &RegistrationRecord,
) -> Result<(), IdentityError> {
    let mut json = serde_json::to_string_pretty(record).unwrap_or_default();
    json.push('\n');
    write_atomic(&registration_record_path(identity_path), json.as_bytes())?;
    write_atomic(identity_path, format!("{}\n", record.node_id).as_bytes())
}

/// Checks that the identity at `identity_path` can be written (its directory exists or can be
/// created, and a file can be created in it), so that a node is not registered only to lose its
/// id: every restart would register another one.
pub fn check_writable(identity_path: &Path) -> Result<(), IdentityError> {
    let (dir, mut probe_name) = dir_and_temp_prefix(identity_path)?;
    probe_name.push(format!(
        ".probe-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    ));
    let probe = dir.join(probe_name);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&probe)
        .map_err(|source| IdentityError::Write {
            path: identity_path.to_path_buf(),
            step: "creating a file beside it",
            source,
        })?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// The directory of `path`, created (0700) if missing, and the prefix of the temp files beside
/// `path` (`.<file name>`).
fn dir_and_temp_prefix(path: &Path) -> Result<(PathBuf, std::ffi::OsString), IdentityError> {
    let fail = |step: &'static str| {
        let path = path.to_path_buf();
        move |source| IdentityError::Write { path, step, source }
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path.file_name().ok_or_else(|| {
        fail("the path has no file name")(std::io::Error::from(std::io::ErrorKind::InvalidInput))
    })?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(fail("creating its directory"))?;
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(file_name);
    Ok((dir, prefix))
}

/// Removes the temp and probe files (`<prefix>.tmp-*`, `<prefix>.probe-*`) that an agent killed
/// mid-write left in `dir`: nothing else writes them, and they would pile up crash after crash.
fn remove_leftovers(dir: &Path, prefix: &std::ffi::OsStr) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = prefix.as_encoded_bytes();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.as_encoded_bytes().strip_prefix(prefix) else {
            continue;
        };
        let ours = rest.starts_with(b".tmp-") || rest.starts_with(b".probe-");
        if ours && entry.file_type().is_ok_and(|t| t.is_file()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Replaces `path` with `contents` atomically, mode 0600, creating the parent directory (0700).
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), IdentityError> {
    let fail = |step: &'static str| {
        let path = path.to_path_buf();
        move |source| IdentityError::Write { path, step, source }
    };
    let (dir, mut temp_name) = dir_and_temp_prefix(path)?;
    remove_leftovers(&dir, &temp_name);
    temp_name.push(format!(".tmp-{}-{}", std::process::id(), fastrand::u32(..)));
    let temp_path = dir.join(temp_name);
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp_path)
            .map_err(fail("creating a temp file beside it"))?;
        file.write_all(contents)
            .map_err(fail("writing the temp file"))?;
        file.sync_all().map_err(fail("fsync of the temp file"))?;
        drop(file);
        std::fs::rename(&temp_path, path).map_err(fail("renaming the temp file over it"))?;
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(fail("fsync of its directory"))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp_path);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn node_id_syntax() {
        for good in ["a", "node-abc123", "N_1.2:3-x", &"x".repeat(128)] {
            assert!(NodeId::parse(good).is_ok(), "{good}");
        }
        for bad in ["", " a", "a b", "a/b", "../x", "ü", "a\n", &"x".repeat(129)] {
            assert!(NodeId::parse(bad).is_err(), "{bad:?}");
        }
        // Dot segments: in the heartbeat URL they would name another path
        // (/api/v1/nodes/../heartbeat is /api/v1/heartbeat).
        for dots in [".", ".."] {
            let e = NodeId::parse(dots).unwrap_err();
            assert!(e.contains("path"), "{dots}: {e}");
        }
        assert!(NodeId::parse("...").is_ok());
        // Too long and not ASCII: the reason is the character, not a length counted in bytes.
        let e = NodeId::parse(&"ü".repeat(100)).unwrap_err();
        assert!(e.contains("'ü'"), "{e}");
    }

    #[test]
    fn write_then_load_round_trips_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deep/er/node_id");
        let record = RegistrationRecord {
            node_id: "node-1".into(),
            api_remote_port: None,
            api_proxy: Some(PlatformApiProxy::Stcp {
                secret_key: "stcp-secret".into(),
                allow_users: vec!["platform".into()],
            }),
            api_token: Some(ApiToken::parse("platform-token-0123456789").unwrap()),
            registered_at: "2026-11-29T09:00:00Z".into(),
        };
        save_registration(&path, &record).unwrap();
        let id = load_node_id(&path).unwrap().unwrap();
        assert_eq!(id.as_str(), "node-1");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "node-1\n");
        for file in [path.clone(), registration_record_path(&path)] {
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", file.display());
        }
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        assert_eq!(load_registration_record(&path, &id), Some(record));
        // No temp files are left behind.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn replacing_keeps_one_complete_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node_id");
        write_atomic(&path, b"old\n").unwrap();
        write_atomic(&path, b"new\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new\n");
    }

    #[test]
    fn missing_is_none_and_damaged_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node_id");
        assert!(load_node_id(&path).unwrap().is_none());
        let huge = "x".repeat(100_000);
        for bad in ["", "\n", "has space\n", "a\nb\n", &huge] {
            std::fs::write(&path, bad).unwrap();
            let e = load_node_id(&path).unwrap_err().to_string();
            assert!(e.contains(&path.display().to_string()), "{e}");
            assert!(e.contains("remove the file"), "{e}");
        }
        std::fs::write(&path, "node-7\n").unwrap();
        assert_eq!(load_node_id(&path).unwrap().unwrap().as_str(), "node-7");
        // A directory where the file should be is not an identity.
        let as_dir = dir.path().join("dir");
        std::fs::create_dir(&as_dir).unwrap();
        let e = load_node_id(&as_dir).unwrap_err().to_string();
        assert!(e.contains("is a directory") && e.contains("dir"), "{e}");
        // A link to a missing file (an unmounted volume) is damaged, not absent.
        let link = dir.path().join("linked");
        std::os::unix::fs::symlink(dir.path().join("gone/node_id"), &link).unwrap();
        let e = load_node_id(&link).unwrap_err().to_string();
        assert!(
            e.contains("symbolic link") && e.contains("gone/node_id"),
            "{e}"
        );
    }

    #[test]
    fn a_fifo_in_place_of_the_file_is_refused_at_once() {
        // Opening a FIFO for reading blocks until a writer comes: the agent hung at start,
        // before its signal handling could stop it.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node_id");
        let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo(3) on a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let (tx, rx) = std::sync::mpsc::channel();
        let probe = path.clone();
        std::thread::spawn(move || {
            let _ = tx.send(load_node_id(&probe).map_err(|e| e.to_string()));
        });
        let result = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("load_node_id blocked on a FIFO");
        let e = result.unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        assert!(e.contains(&path.display().to_string()), "{e}");
    }

    #[test]
    fn a_failed_write_names_the_file_and_the_step_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("not-a-dir");
        std::fs::write(&blocker, "x").unwrap();
        let path = blocker.join("node_id");
        let e = write_atomic(&path, b"node-1\n").unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains("creating its directory"), "{e}");
        // Renaming onto a directory fails after the temp file was written: it is removed.
        let target = dir.path().join("occupied");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("keep"), "x").unwrap();
        let e = write_atomic(&target, b"node-1\n").unwrap_err().to_string();
        assert!(e.contains("renaming"), "{e}");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.contains(".tmp-")), "{names:?}");
    }

    #[test]
    fn temp_files_left_by_a_crash_are_removed_by_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node_id");
        // What a crash between creating and renaming leaves, and files that are not ours.
        let leftovers = [".node_id.tmp-4242-17", ".node_id.probe-4242-18"];
        let others = [".other.tmp-1-2", "node_id.tmp-1-2", "keep"];
        for name in leftovers.iter().chain(&others) {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        save_registration(
            &path,
            &RegistrationRecord {
                node_id: "node-1".into(),
                api_remote_port: None,
                api_proxy: None,
                api_token: None,
                registered_at: String::new(),
            },
        )
        .unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut expected: Vec<String> = others.iter().map(|n| n.to_string()).collect();
        expected.extend(["node_id".into(), "node_id.registration.json".into()]);
        expected.sort();
        assert_eq!(names, expected);
    }

    #[test]
    fn writability_is_checked_without_leaving_anything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new/node_id");
        check_writable(&path).unwrap();
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            0
        );
        // A file where the directory should be: nothing to read, nothing can be written.
        let blocker = dir.path().join("blocker");
        std::fs::write(&blocker, "x").unwrap();
        let blocked = blocker.join("node_id");
        assert!(load_node_id(&blocked).unwrap().is_none());
        let e = check_writable(&blocked).unwrap_err().to_string();
        assert!(
            e.contains("blocker/node_id") && e.contains("cannot write"),
            "{e}"
        );
    }

    #[test]
    fn a_record_that_is_not_a_small_regular_file_is_ignored_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node_id");
        let id = NodeId::parse("node-1").unwrap();
        let record = registration_record_path(&path);
        // Far larger than any record: not read whole into memory, ignored.
        std::fs::write(&record, " ".repeat(2 * 1024 * 1024)).unwrap();
        assert_eq!(load_registration_record(&path, &id), None);
        // A FIFO: reading it would wait for a writer at start, forever.
        std::fs::remove_file(&record).unwrap();
        let c_path = std::ffi::CString::new(record.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo(3) on a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(load_registration_record(&path, &id));
        });
        let loaded = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("load_registration_record blocked on a FIFO");
        assert_eq!(loaded, None);
    }

    #[test]
    fn a_record_of_another_node_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node_id");
        let record = RegistrationRecord {
            node_id: "node-1".into(),
            api_remote_port: Some(7001),
            api_proxy: None,
            api_token: None,
            registered_at: String::new(),
        };
        save_registration(&path, &record).unwrap();
        let other = NodeId::parse("node-2").unwrap();
        assert_eq!(load_registration_record(&path, &other), None);
        std::fs::write(registration_record_path(&path), "{").unwrap();
        let same = NodeId::parse("node-1").unwrap();
        assert_eq!(load_registration_record(&path, &same), None);
    }

    #[test]
    fn an_older_record_means_tcp_on_its_port() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node_id");
        std::fs::write(&path, "node-1\n").unwrap();
        std::fs::write(
            registration_record_path(&path),
            r#"{"node_id":"node-1","api_remote_port":7001,"registered_at":""}"#,
        )
        .unwrap();
        let id = NodeId::parse("node-1").unwrap();
        let grant = load_registration_record(&path, &id).unwrap().grant();
        assert_eq!(
            grant.api_proxy,
            Some(PlatformApiProxy::Tcp {
                remote_port: Some(7001)
            })
        );
        assert_eq!(grant.api_token, None);
        // A record whose token or proxy is not one the answer could have given is damaged.
        for bad in [
            r#"{"node_id":"node-1","api_remote_port":null,"api_token":"short","registered_at":""}"#,
            r#"{"node_id":"node-1","api_remote_port":null,"api_proxy":{"type":"x"},"registered_at":""}"#,
        ] {
            std::fs::write(registration_record_path(&path), bad).unwrap();
            assert_eq!(load_registration_record(&path, &id), None, "{bad}");
        }
    }

    #[test]
    fn debug_of_a_record_shows_no_secret() {
        let record = RegistrationRecord {
            node_id: "node-1".into(),
            api_remote_port: None,
            api_proxy: Some(PlatformApiProxy::Stcp {
                secret_key: "STCPSECRET".into(),
                allow_users: vec![],
            }),
            api_token: Some(ApiToken::parse("APITOKEN-0123456789").unwrap()),
            registered_at: String::new(),
        };
        let shown = format!("{record:?}");
        assert!(
            !shown.contains("STCPSECRET") && !shown.contains("APITOKEN"),
            "{shown}"
        );
    }
}
