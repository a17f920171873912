//! Who holds frpc's admin port: before the agent sends the admin password (HTTP Basic auth) to
//! `127.0.0.1:<frp.admin_port>`, every listening socket a connection there could reach must be
//! one of frpc's own. A local user who bound the port first (frpc's admin server then fails to
//! listen) would otherwise be sent the password.
//!
//! The listening sockets come from netlink's `sock_diag` ([`super::sock_diag`]), or where that
//! fails from `/proc/net/tcp` and `/proc/net/tcp6` (state `0A`): those on `127.0.0.1`,
//! `0.0.0.0`, `::` or `::ffff:127.0.0.1` at the port, each of which would take a connection to
//! `127.0.0.1`. frpc's sockets come from the `socket:[inode]` links in
//! `/proc/<frpc pid>/fd`. The check runs right before each call. frpc is the agent's child and
//! is not reaped while it runs, so its pid cannot be reused; should it exit between the check
//! and the connection and someone bind the port in that moment, the password they would get
//! belonged to an frpc that is gone (every start has its own).

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

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
/// the process `pid`.
pub fn check_admin_listener(port: u16, pid: u32) -> Result<(), ListenerError> {
    let listeners = match super::sock_diag::tcp_listeners() {
        Ok(all) => all
            .iter()
            .filter(|l| l.port == port && reaches_loopback(l.address) && l.inode != 0)
            .map(|l| l.inode)
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
    match listeners.iter().find(|inode| !held.contains(inode)) {
        None => Ok(()),
        Some(foreign) => Err(ListenerError::NotFrpc {
            port,
            holder: holder_of(*foreign),
        }),
    }
}

/// The inodes of the listening TCP sockets under `net` (`/proc/net`) that a connection to
/// `127.0.0.1:port` could reach.
fn listening_inodes(net: &Path, port: u16) -> Result<BTreeSet<u64>, ListenerError> {
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
fn parse_listeners(table: &str, port: u16) -> Vec<u64> {
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
            (reaches_loopback(parse_address(address)?) && inode != 0).then_some(inode)
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

/// `pid 1234 (python3)` for the process holding socket `inode`, when one can be found.
fn holder_of(inode: u64) -> Option<String> {
    let wanted = format!("socket:[{inode}]");
    let processes = std::fs::read_dir("/proc").ok()?;
    for entry in processes.flatten().take(MAX_PROCESSES) {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy() == wanted));
        if holds {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            return Some(format!("pid {pid} ({})", comm.trim()));
        }
    }
    None
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
        assert_eq!(parse_listeners(&table, port), [11, 12, 16, 17]);
        assert_eq!(parse_listeners(&table, port + 1), Vec::<u64>::new());
        assert_eq!(
            parse_listeners("header\ngarbage line\n", port),
            Vec::<u64>::new()
        );
        assert_eq!(socket_inode("socket:[4242]"), Some(4242));
        assert_eq!(socket_inode("pipe:[4242]"), None);
    }

    #[test]
    fn a_listener_is_ours_only_when_our_process_holds_it() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(check_admin_listener(port, std::process::id()), Ok(()));
        // The /proc/net/tcp path (used where sock_diag fails) finds the same socket.
        let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
        let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
        let inodes = listening_inodes(Path::new("/proc/net"), port).unwrap();
        assert_eq!(
            inodes
                .iter()
                .map(|i| format!("socket:[{i}]"))
                .collect::<Vec<_>>(),
            [link.to_string_lossy()]
        );
        // Another process (a child of this test) does not hold it: the holder is named.
        let mut other = Command::new("sleep")
            .arg("30")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let verdict = check_admin_listener(port, other.id());
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
        drop(listener);
        assert_eq!(
            check_admin_listener(port, std::process::id()),
            Err(ListenerError::NotListening)
        );
    }
}
