//! Who holds frpc's admin port: before the agent sends the admin password (HTTP Basic auth) to
//! `127.0.0.1:<frp.admin_port>`, every listening socket a connection there could reach must be
//! one of frpc's own. A local user who bound the port first (frpc's admin server then fails to
//! listen) would otherwise be sent the password.
//!
//! The listening sockets come from netlink's `sock_diag` ([`super::sock_diag`]), or where that
//! fails from `/proc/net/tcp` and `/proc/net/tcp6` (state `0A`): those on `127.0.0.1`,
//! `0.0.0.0`, `::` or `::ffff:127.0.0.1` at the port, each of which would take a connection to
//! `127.0.0.1`. frpc's sockets come from the `socket:[inode]` links in
//! `/proc/<frpc pid>/fd`. When frpc holds a listener bound to 127.0.0.1 itself, the wildcard
//! ones (`0.0.0.0`, `::`) are not looked at: the kernel hands a connection to 127.0.0.1 to a
//! listener bound to that address before any wildcard one, and another 127.0.0.1 listener (an
//! `SO_REUSEPORT` twin) is still found. So a `::` listener with `IPV6_V6ONLY`, which any local
//! user may bind beside frpc's and which never gets a 127.0.0.1 connection, does not block the
//! admin API. The check runs right before each call. frpc is the agent's child and
//! is not reaped while it runs, so its pid cannot be reused; should it exit between the check
//! and the connection and someone bind the port in that moment, the password they would get
//! belonged to an frpc that is gone (every start has its own).

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Why the admin port cannot be trusted with the password now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerError {
    /// Nothing listens there (frpc's admin server is not up yet, or failed to listen).
    NotListening,
    /// A socket frpc does not hold listens there; `holder` names its process when found.
    NotFrpc { port: u16, holder: Option<String> },
    /// `/proc` could not be read.
    Unreadable(String),
}

impl fmt::Display for ListenerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenerError::NotListening => f.write_str("nothing listens on the admin port yet"),
            ListenerError::NotFrpc { port, holder } => {
                write!(
                    f,
                    "127.0.0.1:{port} (frp.admin_port) is held by {}, not by frpc: the admin \
                     password is not sent there (proxy status and reloads wait until frpc \
                     holds the port; free it, or change frp.admin_port)",
                    holder.as_deref().unwrap_or("another process")
                )
            }
            ListenerError::Unreadable(why) => {
                write!(f, "cannot tell who holds the admin port: {why}")
            }
        }
    }
}

impl std::error::Error for ListenerError {}

/// Ok when something listens on `127.0.0.1:port` and every listening socket there is held by
/// the process `pid`; a foreign listener's holder is named through `holders`.
pub fn check_admin_listener(
    port: u16,
    pid: u32,
    holders: &HolderNames,
) -> Result<(), ListenerError> {
    let listeners = match super::sock_diag::tcp_listeners() {
        Ok(all) => all
            .iter()
            .filter(|l| l.port == port && reaches_loopback(l.address) && l.inode != 0)
            .map(|l| Candidate {
                inode: l.inode,
                exact: is_exact(l.address),
            })
            .collect(),
        Err(e) => {
            log::debug!("sock_diag: {e}; reading /proc/net/tcp instead");
            listening_inodes(Path::new("/proc/net"), port)?
        }
    };
    if listeners.is_empty() {
        return Err(ListenerError::NotListening);
    }
    let held = socket_inodes(pid)
        .map_err(|e| ListenerError::Unreadable(format!("/proc/{pid}/fd: {e}")))?;
    match foreign_listener(&listeners, &held) {
        None => Ok(()),
        Some(foreign) => Err(ListenerError::NotFrpc {
            port,
            holder: holders.name(foreign),
        }),
    }
}

/// A listening socket that takes connections to 127.0.0.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Candidate {
    inode: u64,
    /// Bound to 127.0.0.1 itself (or `::ffff:127.0.0.1`), not to a wildcard address.
    exact: bool,
}

/// A listener not in `held` that could take a connection to 127.0.0.1, if any. Listeners
/// bound to 127.0.0.1 itself come first in the kernel's lookup: when there are some, only they
/// can take it (all must be held); otherwise every wildcard one must be.
fn foreign_listener(listeners: &BTreeSet<Candidate>, held: &BTreeSet<u64>) -> Option<u64> {
    let exact = listeners.iter().any(|l| l.exact);
    listeners
        .iter()
        .filter(|l| l.exact || !exact)
        .map(|l| l.inode)
        .find(|inode| !held.contains(inode))
}

/// Bound to 127.0.0.1 itself (as IPv4, or IPv4-mapped IPv6).
fn is_exact(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => v4 == Ipv4Addr::LOCALHOST,
        IpAddr::V6(v6) => v6.to_ipv4_mapped() == Some(Ipv4Addr::LOCALHOST),
    }
}

/// The inodes of the listening TCP sockets under `net` (`/proc/net`) that a connection to
/// `127.0.0.1:port` could reach.
fn listening_inodes(net: &Path, port: u16) -> Result<BTreeSet<Candidate>, ListenerError> {
    let mut inodes = BTreeSet::new();
    for table in ["tcp", "tcp6"] {
        let path = net.join(table);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            // No IPv6 in this kernel: no tcp6 table.
            Err(e) if table == "tcp6" && e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(ListenerError::Unreadable(format!(
                    "{}: {e}",
                    path.display()
                )))
            }
        };
        inodes.extend(parse_listeners(&text, port));
    }
    Ok(inodes)
}

/// The listening sockets of one `/proc/net/tcp{,6}` table at `port` that take connections to
/// 127.0.0.1.
fn parse_listeners(table: &str, port: u16) -> Vec<Candidate> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
            if *state != "0A" {
                return None;
            }
            let (address, local_port) = local.split_once(':')?;
            if u16::from_str_radix(local_port, 16).ok()? != port {
                return None;
            }
            let inode: u64 = inode.parse().ok()?;
            let address = parse_address(address)?;
            (reaches_loopback(address) && inode != 0).then_some(Candidate {
                inode,
                exact: is_exact(address),
            })
        })
        .collect()
}

/// Whether a socket listening on `address` takes connections to 127.0.0.1.
fn reaches_loopback(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => v4 == Ipv4Addr::LOCALHOST || v4.is_unspecified(),
        IpAddr::V6(v6) => {
            v6.is_unspecified()
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| v4 == Ipv4Addr::LOCALHOST || v4.is_unspecified())
        }
    }
}

/// An address as `/proc/net/tcp{,6}` prints it: 32-bit words in hex, each in the host's byte
/// order.
fn parse_address(hex: &str) -> Option<IpAddr> {
    let word = |i: usize| -> Option<[u8; 4]> {
        let text = hex.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(text, 16).ok()?.to_ne_bytes())
    };
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(0)?))),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            Some(IpAddr::V6(Ipv6Addr::from(bytes)))
        }
        _ => None,
    }
}

/// The socket inodes among the open files of `pid`.
fn socket_inodes(pid: u32) -> std::io::Result<BTreeSet<u64>> {
    let mut inodes = BTreeSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let Ok(target) = std::fs::read_link(entry?.path()) else {
            // Closed since the listing.
            continue;
        };
        if let Some(inode) = socket_inode(&target.to_string_lossy()) {
            inodes.insert(inode);
        }
    }
    Ok(inodes)
}

/// `socket:[12345]` → 12345.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Most processes looked through for the holder of a foreign socket.
const MAX_PROCESSES: usize = 65_536;
/// Least time between two walks of every process's open files to name a holder.
pub const RESCAN: Duration = Duration::from_secs(60);

/// Names the processes holding foreign listeners, at a bounded cost. While a squatter holds the
/// admin port the port is checked every status round (2 s) and on every pending reload, and
/// naming its holder means reading the open files of every process on the host. So the holder
/// found is remembered: while it still holds the socket in question (one process's open files
/// read), it is named again without a walk; otherwise every process is walked again at most
/// once per [`RESCAN`] (a holder that cannot be seen, such as one hidden by `hidepid`, or a
/// squatter that keeps changing sockets, costs one walk a minute, not one per check), and the
/// listener is meanwhile reported as held by "another process". The safety check itself
/// (every listener at the port held by frpc) never depends on this.
#[derive(Default)]
pub struct HolderNames {
    last: Mutex<Option<Scanned>>,
}

/// What the last walk of every process found.
struct Scanned {
    at: Instant,
    holder: Option<u32>,
    #[cfg(test)]
    walks: usize,
}

impl HolderNames {
    /// `pid 1234 (python3)` for the process holding socket `inode`, when one can be found.
    pub fn name(&self, inode: u64) -> Option<String> {
        self.name_in(Path::new("/proc"), inode)
    }

    fn name_in(&self, proc: &Path, inode: u64) -> Option<String> {
        let wanted = format!("socket:[{inode}]");
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(scanned) = last.as_ref() {
            if let Some(pid) = scanned.holder {
                if let Some(name) = holder_name(&proc.join(pid.to_string()), pid, &wanted) {
                    return Some(name);
                }
            }
            if scanned.at.elapsed() < RESCAN {
                return None;
            }
        }
        let found = walk_processes(proc, &wanted);
        #[cfg(test)]
        let walks = last.as_ref().map_or(0, |s| s.walks) + 1;
        *last = Some(Scanned {
            at: Instant::now(),
            holder: found.as_ref().map(|(pid, _)| *pid),
            #[cfg(test)]
            walks,
        });
        found.map(|(_, name)| name)
    }

    /// How many times every process was walked.
    #[cfg(test)]
    fn walks(&self) -> usize {
        let last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        last.as_ref().map_or(0, |s| s.walks)
    }
}

/// The process under `proc` holding `wanted` (`socket:[inode]`): its pid and name.
fn walk_processes(proc: &Path, wanted: &str) -> Option<(u32, String)> {
    let processes = std::fs::read_dir(proc).ok()?;
    for entry in processes.flatten().take(MAX_PROCESSES) {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if let Some(holder) = holder_name(&entry.path(), pid, wanted) {
            return Some((pid, holder));
        }
    }
    None
}

/// `pid 1234 (python3)` when the process whose `/proc` directory is `dir` holds `wanted`.
fn holder_name(dir: &Path, pid: u32, wanted: &str) -> Option<String> {
    let fds = std::fs::read_dir(dir.join("fd")).ok()?;
    let holds = fds
        .flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == wanted));
    if !holds {
        return None;
    }
    let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
    Some(format!("pid {pid} ({})", comm.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::process::{Command, Stdio};

    #[test]
    fn proc_net_tables_are_read_in_host_byte_order() {
        let port = 7400u16;
        let line = |address: &str, state: &str, inode: u64| {
            format!(
                "   0: {address}:{port:04X} 00000000:0000 {state} 00000000:00000000 00:00000000 \
                 00000000     0        0 {inode} 1 0000000000000000 100 0 0 10 0\n"
            )
        };
        let v4 = |ip: [u8; 4]| format!("{:08X}", u32::from_ne_bytes(ip));
        let v6 = |ip: Ipv6Addr| {
            ip.octets()
                .chunks(4)
                .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
                .collect::<String>()
        };
        let mut table = String::from("  sl  local_address rem_address   st ...\n");
        table += &line(&v4([127, 0, 0, 1]), "0A", 11);
        table += &line(&v4([0, 0, 0, 0]), "0A", 12);
        table += &line(&v4([127, 0, 0, 2]), "0A", 13); // not reached by 127.0.0.1
        table += &line(&v4([10, 0, 0, 1]), "0A", 14);
        table += &line(&v4([127, 0, 0, 1]), "01", 15); // a connection, not a listener
        table += &line(&v6(Ipv6Addr::UNSPECIFIED), "0A", 16);
        table += &line(&v6(Ipv4Addr::LOCALHOST.to_ipv6_mapped()), "0A", 17);
        table += &line(&v6(Ipv6Addr::LOCALHOST), "0A", 18); // ::1 is not 127.0.0.1
        let at = |inode, exact| Candidate { inode, exact };
        assert_eq!(
            parse_listeners(&table, port),
            [at(11, true), at(12, false), at(16, false), at(17, true)]
        );
        assert_eq!(parse_listeners(&table, port + 1), Vec::<Candidate>::new());
        assert_eq!(
            parse_listeners("header\ngarbage line\n", port),
            Vec::<Candidate>::new()
        );
        assert_eq!(socket_inode("socket:[4242]"), Some(4242));
        assert_eq!(socket_inode("pipe:[4242]"), None);
    }

    #[test]
    fn a_listener_is_ours_only_when_our_process_holds_it() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(
            check_admin_listener(port, std::process::id(), &HolderNames::default()),
            Ok(())
        );
        // The /proc/net/tcp path (used where sock_diag fails) finds the same socket.
        let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
        let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
        let inodes = listening_inodes(Path::new("/proc/net"), port).unwrap();
        assert_eq!(
            inodes
                .iter()
                .map(|l| format!("socket:[{}]", l.inode))
                .collect::<Vec<_>>(),
            [link.to_string_lossy()]
        );
        // Another process (a child of this test) does not hold it: the holder is named.
        let mut other = Command::new("sleep")
            .arg("30")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let verdict = check_admin_listener(port, other.id(), &HolderNames::default());
        let _ = other.kill();
        let _ = other.wait();
        match verdict {
            Err(ListenerError::NotFrpc { port: p, holder }) => {
                assert_eq!(p, port);
                let holder = holder.expect("the holder is found");
                assert!(
                    holder.starts_with(&format!("pid {} (", std::process::id())),
                    "{holder}"
                );
            }
            other => panic!("{other:?}"),
        }
        // (A child another test forks meanwhile holds a copy until it executes its program.)
        drop(listener);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let gone = loop {
            let verdict = check_admin_listener(port, std::process::id(), &HolderNames::default());
            if verdict == Err(ListenerError::NotListening) || std::time::Instant::now() > deadline {
                break verdict;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        assert_eq!(gone, Err(ListenerError::NotListening));
    }

    #[test]
    fn wildcard_listeners_count_only_when_none_is_bound_to_127_0_0_1() {
        let set = |ls: &[(u64, bool)]| -> BTreeSet<Candidate> {
            ls.iter()
                .map(|&(inode, exact)| Candidate { inode, exact })
                .collect()
        };
        let held: BTreeSet<u64> = [1, 2].into();
        // frpc's 127.0.0.1 listener beside someone's `::` (IPV6_V6ONLY) or 0.0.0.0 one: the
        // kernel hands 127.0.0.1 connections to frpc's.
        assert_eq!(
            foreign_listener(&set(&[(1, true), (9, false)]), &held),
            None
        );
        // An SO_REUSEPORT twin on 127.0.0.1 is still found.
        assert_eq!(
            foreign_listener(&set(&[(1, true), (9, true), (8, false)]), &held),
            Some(9)
        );
        // Nobody on 127.0.0.1 itself: every wildcard listener must be frpc's.
        assert_eq!(foreign_listener(&set(&[(2, false)]), &held), None);
        assert_eq!(
            foreign_listener(&set(&[(2, false), (9, false)]), &held),
            Some(9)
        );
        // A squatter on 127.0.0.1 while frpc holds only a wildcard one.
        assert_eq!(
            foreign_listener(&set(&[(2, false), (9, true)]), &held),
            Some(9)
        );
        assert!(is_exact(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert!(is_exact(IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped())));
        assert!(!is_exact(IpAddr::V4(Ipv4Addr::UNSPECIFIED)));
        assert!(!is_exact(IpAddr::V6(Ipv6Addr::UNSPECIFIED)));
    }

    #[test]
    fn a_v6only_wildcard_listener_beside_ours_is_not_a_squatter() {
        // What any local user may bind beside frpc's 127.0.0.1 listener at any time: `[::]`
        // at the port with IPV6_V6ONLY (it never receives a connection to 127.0.0.1). Here the
        // test holds both; "frpc" is the 127.0.0.1 one only.
        let ours = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = ours.local_addr().unwrap().port();
        // SAFETY: socket(2) with constant arguments.
        let fd = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return; // no IPv6 in this kernel: nothing can bind beside it
        }
        // SAFETY: the descriptor was just created and is owned by nobody else.
        let v6 = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let one: libc::c_int = 1;
        // SAFETY: a zeroed sockaddr_in6 is valid (the unspecified address, port 0).
        let mut address: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        address.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        address.sin6_port = port.to_be();
        // SAFETY: setsockopt/bind/listen on the descriptor above with pointers to live locals
        // of the sizes given.
        let bound = unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_IPV6,
                libc::IPV6_V6ONLY,
                std::ptr::addr_of!(one).cast(),
                std::mem::size_of_val(&one) as libc::socklen_t,
            ) == 0
                && libc::bind(
                    fd,
                    std::ptr::addr_of!(address).cast(),
                    std::mem::size_of_val(&address) as libc::socklen_t,
                ) == 0
                && libc::listen(fd, 1) == 0
        };
        assert!(
            bound,
            "a v6-only [::]:{port} listener binds beside 127.0.0.1:{port}"
        );
        let ours_link = std::fs::read_link(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&ours)
        ))
        .unwrap();
        let ours_inode = socket_inode(&ours_link.to_string_lossy()).unwrap();
        let held: BTreeSet<u64> = [ours_inode].into();
        let from_proc = listening_inodes(Path::new("/proc/net"), port).unwrap();
        assert_eq!(from_proc.len(), 2, "{from_proc:?}");
        assert_eq!(foreign_listener(&from_proc, &held), None);
        if let Ok(all) = super::super::sock_diag::tcp_listeners() {
            let from_diag: BTreeSet<Candidate> = all
                .iter()
                .filter(|l| l.port == port && reaches_loopback(l.address))
                .map(|l| Candidate {
                    inode: l.inode,
                    exact: is_exact(l.address),
                })
                .collect();
            assert_eq!(from_diag, from_proc);
        }
        // Without ours, the wildcard one alone would be a squatter. (A child another test
        // forks in the meantime holds a copy of ours until it executes its program: ours may
        // take a moment to go.)
        drop(ours);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let alone = loop {
            let alone = listening_inodes(Path::new("/proc/net"), port).unwrap();
            if alone.len() == 1 || std::time::Instant::now() > deadline {
                break alone;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        assert_eq!(alone.len(), 1, "{alone:?}");
        assert!(foreign_listener(&alone, &held).is_some());
        drop(v6);
    }

    #[test]
    fn a_holder_is_named_again_without_walking_every_process_and_walks_are_rate_limited() {
        let squatter = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = squatter.local_addr().unwrap().port();
        let inode_of = |l: &TcpListener| {
            let fd = std::os::fd::AsRawFd::as_raw_fd(l);
            let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
            socket_inode(&link.to_string_lossy()).unwrap()
        };
        let me = format!("pid {} (", std::process::id());
        // "frpc" is a child that holds nothing: the squatter (this process) is named at every
        // check, by one walk of /proc in all.
        let mut frpc = Command::new("sleep")
            .arg("30")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let holders = HolderNames::default();
        let mut verdicts = Vec::new();
        for _ in 0..5 {
            verdicts.push(check_admin_listener(port, frpc.id(), &holders));
        }
        let _ = frpc.kill();
        let _ = frpc.wait();
        for verdict in verdicts {
            match verdict {
                Err(ListenerError::NotFrpc { holder, .. }) => {
                    assert!(
                        holder.as_deref().is_some_and(|h| h.starts_with(&me)),
                        "{holder:?}"
                    );
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(holders.walks(), 1);
        // Another socket of the same holder (a squatter binding again) is named without a walk.
        let again = TcpListener::bind("127.0.0.1:0").unwrap();
        let named = holders.name(inode_of(&again));
        assert!(
            named.as_deref().is_some_and(|h| h.starts_with(&me)),
            "{named:?}"
        );
        assert_eq!(holders.walks(), 1);

        // A holder no walk can find (here: a /proc with no process in it) is looked for at
        // most once per RESCAN, however often it is asked for.
        let empty = tempfile::tempdir().unwrap();
        let hidden = HolderNames::default();
        for _ in 0..5 {
            assert_eq!(hidden.name_in(empty.path(), inode_of(&squatter)), None);
        }
        assert_eq!(hidden.walks(), 1);
        if let Some(scanned) = hidden.last.lock().unwrap().as_mut() {
            scanned.at -= RESCAN;
        }
        assert_eq!(hidden.name_in(empty.path(), inode_of(&squatter)), None);
        assert_eq!(hidden.walks(), 2);
        // Once a walk finds it, the holder is named again (no walk) while it holds the socket,
        // and once it no longer does, not before the next RESCAN.
        if let Some(scanned) = hidden.last.lock().unwrap().as_mut() {
            scanned.at -= RESCAN;
        }
        let inode = inode_of(&squatter);
        let named = hidden.name(inode);
        assert!(
            named.as_deref().is_some_and(|h| h.starts_with(&me)),
            "{named:?}"
        );
        assert_eq!(hidden.name(inode), named);
        assert_eq!(hidden.walks(), 3);
        drop(squatter);
        assert_eq!(hidden.name(inode), None);
        assert_eq!(hidden.walks(), 3);
    }
}
