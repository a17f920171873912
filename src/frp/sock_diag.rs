//! The listening TCP sockets of this network namespace through netlink's `sock_diag` (what
//! `ss -tln` asks): the kernel walks only its table of listening sockets, where reading
//! `/proc/net/tcp` walks every bucket of the established table too (measured side by side on
//! the development host, debug build: 0.40 ms a check through sock_diag, 38.6 ms through
//! `/proc/net/tcp` and `tcp6`).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const TCP_LISTEN: u32 = 10;
/// `struct nlmsghdr`.
const HEADER: usize = 16;
/// `struct inet_diag_req_v2`.
const REQUEST: usize = 56;
/// `struct inet_diag_msg`.
const MESSAGE: usize = 72;

/// One listening socket: its local address, port and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listener {
    pub address: IpAddr,
    pub port: u16,
    pub inode: u64,
}

/// Every listening TCP socket (IPv4 and IPv6) of this network namespace.
pub fn tcp_listeners() -> io::Result<Vec<Listener>> {
    let mut all = Vec::new();
    for family in [libc::AF_INET, libc::AF_INET6] {
        all.extend(dump(family as u8)?);
    }
    Ok(all)
}

fn dump(family: u8) -> io::Result<Vec<Listener>> {
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor owned by nothing else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let timeout = libc::timeval {
        tv_sec: 1,
        tv_usec: 0,
    };
    // SAFETY: a valid descriptor and a `timeval` of the size given.
    let set = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if set != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut request = [0u8; HEADER + REQUEST];
    request[0..4].copy_from_slice(&((HEADER + REQUEST) as u32).to_ne_bytes());
    request[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    request[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    request[8..12].copy_from_slice(&1u32.to_ne_bytes());
    request[HEADER] = family;
    request[HEADER + 1] = libc::IPPROTO_TCP as u8;
    request[HEADER + 4..HEADER + 8].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    // SAFETY: an all-zero sockaddr_nl is the kernel's address.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: the buffer and address are valid for the lengths given.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            request.as_ptr().cast(),
            request.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut listeners = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: the buffer is valid for its length.
        let n = unsafe {
            libc::recv(
                socket.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                0,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Err(io::Error::other("sock_diag: the answer ended early"));
        }
        if parse(&buffer[..n as usize], &mut listeners)? {
            return Ok(listeners);
        }
    }
}

/// Reads one datagram of netlink messages into `listeners`; true at `NLMSG_DONE`.
fn parse(mut data: &[u8], listeners: &mut Vec<Listener>) -> io::Result<bool> {
    let u32_at = |b: &[u8], i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    while data.len() >= HEADER {
        let len = u32_at(data, 0) as usize;
        let kind = u16::from_ne_bytes([data[4], data[5]]);
        if len < HEADER || len > data.len() {
            return Err(io::Error::other("sock_diag: a malformed message"));
        }
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let code = if len >= HEADER + 4 {
                    u32_at(data, HEADER) as i32
                } else {
                    0
                };
                return Err(io::Error::from_raw_os_error(-code));
            }
            SOCK_DIAG_BY_FAMILY if len >= HEADER + MESSAGE => {
                let m = &data[HEADER..HEADER + MESSAGE];
                let port = u16::from_be_bytes([m[4], m[5]]);
                let source = &m[8..24];
                let address = match m[0] as i32 {
                    libc::AF_INET => {
                        IpAddr::V4(Ipv4Addr::new(source[0], source[1], source[2], source[3]))
                    }
                    _ => {
                        let mut bytes = [0u8; 16];
                        bytes.copy_from_slice(source);
                        IpAddr::V6(Ipv6Addr::from(bytes))
                    }
                };
                let inode = u64::from(u32_at(m, 68));
                listeners.push(Listener {
                    address,
                    port,
                    inode,
                });
            }
            _ => {}
        }
        let aligned = (len + 3) & !3;
        data = &data[aligned.min(data.len())..];
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_processs_listeners_are_found_with_their_inodes() {
        let v4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = v4.local_addr().unwrap().port();
        let listeners = tcp_listeners().unwrap();
        let found: Vec<&Listener> = listeners.iter().filter(|l| l.port == port).collect();
        assert_eq!(found.len(), 1, "{listeners:?}");
        assert_eq!(found[0].address, IpAddr::V4(Ipv4Addr::LOCALHOST));
        // The inode is the one /proc/self/fd links to.
        let fd = v4.as_raw_fd();
        let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
        assert_eq!(
            link.to_string_lossy(),
            format!("socket:[{}]", found[0].inode)
        );
        if let Ok(v6) = std::net::TcpListener::bind("[::1]:0") {
            let port = v6.local_addr().unwrap().port();
            let listeners = tcp_listeners().unwrap();
            assert!(
                listeners
                    .iter()
                    .any(|l| l.port == port && l.address == IpAddr::V6(Ipv6Addr::LOCALHOST)),
                "{listeners:?}"
            );
        }
        assert!(!parse(&[0u8; 4], &mut Vec::new()).unwrap());
    }
}
