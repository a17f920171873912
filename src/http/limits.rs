//! The open-file limit: raised to what the system allows at start, and the share of it the
//! connection layer may hold.

/// File descriptors kept for everything but API connections: the listening socket, the poller,
/// pipes to docker children, log and identity files, the platform's TLS connections.
pub const RESERVED_FDS: u64 = 128;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the soft limit now in force.
pub fn raise_nofile_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            let error = std::io::Error::last_os_error();
            log::warn!(
                "cannot raise the open-file limit from {} to {}: {error}",
                limit.rlim_cur,
                limit.rlim_max
            );
            return Ok(limit.rlim_cur);
        }
        return Ok(limit.rlim_max);
    }
    Ok(limit.rlim_cur)
}

/// How many connections fit under `soft_limit` open files, at most `wanted`.
pub fn connection_cap(wanted: usize, soft_limit: u64) -> usize {
    let available = soft_limit.saturating_sub(RESERVED_FDS).max(16);
    wanted.min(usize::try_from(available).unwrap_or(usize::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_room_for_other_files() {
        assert_eq!(connection_cap(64, 1_048_576), 64);
        assert_eq!(connection_cap(10_000, 1024), 1024 - RESERVED_FDS as usize);
        assert_eq!(connection_cap(64, 100), 16);
    }

    #[test]
    fn raising_keeps_at_least_the_current_limit() {
        let mut before = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as above.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut before) },
            0
        );
        let now = raise_nofile_limit().unwrap();
        assert!(now >= before.rlim_cur);
        assert!(now <= before.rlim_max);
    }
}
