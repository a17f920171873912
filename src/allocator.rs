//! glibc's allocator as the agent runs it, however it is started.
//!
//! glibc's per-thread cache (tcache) keeps up to 7 freed blocks per size class in every thread
//! that allocates; on a thread-per-component daemon whose API and docker lanes start threads on
//! demand, those blocks add up and the soak's RSS climbed +0.49 MiB/min with it, +0.06 without
//! (README, "Soak RSS"). The cache's size is a tunable read from `GLIBC_TUNABLES` when the
//! process starts (glibc has no `mallopt` for it), so [`run_with_tcache_off`] executes the
//! agent's own binary again, once, before anything else runs, with the tunable added: the same
//! pid, argv, file (`/proc/self/exe`, even if the path was replaced since), descriptors and
//! signal mask. The service files set the variable themselves, which spares the second exec.
//! When it cannot be done (no `/proc`, a set-uid start where glibc drops the variable, or a
//! `/proc/self/exe` that is not the agent's file: started as `ld-linux-x86-64.so.2 agent ...`
//! or under valgrind, where executing it again would run the loader or valgrind's tool on the
//! agent's arguments) the agent runs on with the tcache and says so in its log.

use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

/// The environment variable glibc reads its tunables from.
pub const VARIABLE: &str = "GLIBC_TUNABLES";
/// The tunable that sizes the per-thread cache, and the value the agent runs with.
const TCACHE_COUNT: &str = "glibc.malloc.tcache_count";
pub const TCACHE_OFF: &str = "glibc.malloc.tcache_count=0";
/// What the kernel names a process started from `/proc/self/exe` (its `comm`).
const REEXEC_COMM: &[u8] = b"exe";

/// Why the agent runs with glibc's tcache after all (the re-exec did not happen).
#[derive(Debug)]
pub enum TcacheKept {
    /// The process is set-uid or set-gid (`AT_SECURE`): glibc ignores the variable there, so a
    /// re-exec would loop.
    SecureMode,
    /// The re-exec failed (e.g. `/proc` is not mounted).
    Exec(std::io::Error),
    /// An argument or environment entry holds a NUL byte (cannot be passed to `execve`).
    Nul,
    /// `/proc/self/exe` is another file than the one the agent's code was loaded from (the
    /// dynamic loader run by hand, valgrind), or that could not be told.
    NotOwnFile(String),
}

impl std::fmt::Display for TcacheKept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TcacheKept::SecureMode => write!(
                f,
                "the process runs set-uid/set-gid (glibc ignores {VARIABLE})"
            ),
            TcacheKept::Exec(e) => write!(f, "cannot execute /proc/self/exe again: {e}"),
            TcacheKept::Nul => write!(f, "an argument or environment entry holds a NUL byte"),
            TcacheKept::NotOwnFile(why) => write!(f, "/proc/self/exe is {why}"),
        }
    }
}

/// The `GLIBC_TUNABLES` value to run with: `current` with the tcache turned off, or `None` when
/// `current` already names the tcache's size (the operator's choice, or this very re-exec).
pub fn tunables_with_tcache_off(current: Option<&OsStr>) -> Option<OsString> {
    let current = current.map(OsStr::as_bytes).unwrap_or_default();
    let named = current
        .split(|&b| b == b':')
        .any(|entry| entry.split(|&b| b == b'=').next() == Some(TCACHE_COUNT.as_bytes()));
    if named {
        return None;
    }
    let mut value = current.to_vec();
    if !value.is_empty() {
        value.push(b':');
    }
    value.extend_from_slice(TCACHE_OFF.as_bytes());
    Some(OsString::from_vec(value))
}

/// Executes `/proc/self/exe` again with `GLIBC_TUNABLES` turning the tcache off, unless the
/// environment already names the tcache's size. Returns only when no re-exec happened: `Ok`
/// when none was needed, else why (the agent still works, with the tcache). Call it first
/// thing in `main`, while the process has one thread.
pub fn run_with_tcache_off() -> Result<(), TcacheKept> {
    restore_name();
    let Some(tunables) = tunables_with_tcache_off(std::env::var_os(VARIABLE).as_deref()) else {
        return Ok(());
    };
    // SAFETY: getauxval only reads the auxiliary vector the kernel gave the process.
    if unsafe { libc::getauxval(libc::AT_SECURE) } != 0 {
        return Err(TcacheKept::SecureMode);
    }
    exe_is_this_file().map_err(TcacheKept::NotOwnFile)?;
    let argv = std::env::args_os()
        .map(|a| CString::new(a.into_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| TcacheKept::Nul)?;
    let mut envp = Vec::new();
    for (key, value) in std::env::vars_os() {
        if key == VARIABLE {
            continue;
        }
        let mut entry = key.into_vec();
        entry.push(b'=');
        entry.extend_from_slice(value.as_bytes());
        envp.push(CString::new(entry).map_err(|_| TcacheKept::Nul)?);
    }
    let mut entry = format!("{VARIABLE}=").into_bytes();
    entry.extend_from_slice(tunables.as_bytes());
    envp.push(CString::new(entry).map_err(|_| TcacheKept::Nul)?);
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut envp_ptrs: Vec<*const libc::c_char> = envp.iter().map(|e| e.as_ptr()).collect();
    envp_ptrs.push(std::ptr::null());
    // SAFETY: every pointer is to a NUL-terminated string that lives across the call, and both
    // arrays end with a null pointer; execve returns only on failure.
    unsafe {
        libc::execve(
            c"/proc/self/exe".as_ptr(),
            argv_ptrs.as_ptr(),
            envp_ptrs.as_ptr(),
        );
    }
    Err(TcacheKept::Exec(std::io::Error::last_os_error()))
}

/// Ok when `/proc/self/exe` is the file this code was loaded from (same device and inode as
/// the mapping of `/proc/self/maps` that holds this function); else what it is instead.
fn exe_is_this_file() -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let exe = std::fs::metadata("/proc/self/exe").map_err(|e| format!("unreadable: {e}"))?;
    let maps = std::fs::read_to_string("/proc/self/maps")
        .map_err(|e| format!("not checked (/proc/self/maps: {e})"))?;
    let code = exe_is_this_file as *const () as usize;
    let (device, inode, path) = maps
        .lines()
        .find_map(|line| mapping_of(line, code))
        .ok_or("not checked (this code is in no mapping of /proc/self/maps)")?;
    if (device, inode) == (exe.dev(), exe.ino()) {
        return Ok(());
    }
    Err(format!(
        "not the file the agent's code was loaded from, {path} (started through the dynamic \
         loader, or under a tool such as valgrind)"
    ))
}

/// The device, inode and path of a `/proc/<pid>/maps` line's file when its range holds
/// `address`.
fn mapping_of(line: &str, address: usize) -> Option<(u64, u64, &str)> {
    let mut fields = line.split_whitespace();
    let (low, high) = fields.next()?.split_once('-')?;
    let (low, high) = (
        usize::from_str_radix(low, 16).ok()?,
        usize::from_str_radix(high, 16).ok()?,
    );
    if !(low..high).contains(&address) {
        return None;
    }
    let (major, minor) = fields.nth(2)?.split_once(':')?;
    let (major, minor) = (
        u32::from_str_radix(major, 16).ok()?,
        u32::from_str_radix(minor, 16).ok()?,
    );
    let inode = fields.next()?.parse().ok()?;
    Some((
        libc::makedev(major, minor),
        inode,
        fields.next().unwrap_or(""),
    ))
}

/// After the re-exec the kernel names the process `exe` (the file name it was executed by);
/// it gets the name it was started with back, from argv[0] as the kernel took it then (the
/// file name, at most 15 bytes), so `ps`, `pgrep` and the journal see the agent as before.
fn restore_name() {
    let mut comm = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes, NUL-terminated, into the buffer.
    if unsafe { libc::prctl(libc::PR_GET_NAME, comm.as_mut_ptr()) } != 0 {
        return;
    }
    let len = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    if &comm[..len] != REEXEC_COMM {
        return;
    }
    let Some(name) = std::env::args_os().next().and_then(|arg0| comm_of(&arg0)) else {
        return;
    };
    // SAFETY: the name is NUL-terminated; PR_SET_NAME copies at most 16 bytes of it.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, name.as_ptr());
    }
}

/// The kernel's `comm` for a program executed as `path`: its file name's first 15 bytes.
fn comm_of(path: &OsStr) -> Option<CString> {
    let name = std::path::Path::new(path).file_name()?.as_bytes();
    CString::new(&name[..name.len().min(15)]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(current: Option<&str>) -> Option<String> {
        tunables_with_tcache_off(current.map(OsStr::new)).map(|v| v.to_string_lossy().into_owned())
    }

    #[test]
    fn the_tunable_is_added_to_what_is_there() {
        assert_eq!(with(None).as_deref(), Some(TCACHE_OFF));
        assert_eq!(with(Some("")).as_deref(), Some(TCACHE_OFF));
        assert_eq!(
            with(Some("glibc.malloc.arena_max=2")).as_deref(),
            Some("glibc.malloc.arena_max=2:glibc.malloc.tcache_count=0")
        );
        // A name that only starts like it is another tunable.
        assert_eq!(
            with(Some("glibc.malloc.tcache_count_x=1")).as_deref(),
            Some("glibc.malloc.tcache_count_x=1:glibc.malloc.tcache_count=0")
        );
    }

    #[test]
    fn a_tcache_size_already_named_is_kept() {
        assert_eq!(with(Some(TCACHE_OFF)), None);
        assert_eq!(with(Some("glibc.malloc.tcache_count=7")), None);
        assert_eq!(
            with(Some("glibc.malloc.arena_max=2:glibc.malloc.tcache_count=3")),
            None
        );
    }

    #[test]
    fn a_maps_line_gives_the_file_of_an_address() {
        let line = "5647c642e000-5647c6f0f000 r-xp 003e6000 fe:01 10208656     /usr/bin/agent";
        assert_eq!(
            mapping_of(line, 0x5647c642e000),
            Some((libc::makedev(0xfe, 1), 10208656, "/usr/bin/agent"))
        );
        assert_eq!(mapping_of(line, 0x5647c6f0f000), None);
        assert_eq!(mapping_of("garbage", 1), None);
        // Run as a plain program, this test's /proc/self/exe is its own file.
        assert_eq!(exe_is_this_file(), Ok(()));
    }

    #[test]
    fn the_name_is_the_file_name_cut_as_the_kernel_cuts_it() {
        assert_eq!(
            comm_of(OsStr::new("/usr/local/bin/utopia-node-agent")).as_deref(),
            Some(c"utopia-node-age")
        );
        assert_eq!(comm_of(OsStr::new("agent")).as_deref(), Some(c"agent"));
        assert_eq!(comm_of(OsStr::new("/")), None);
    }
}
