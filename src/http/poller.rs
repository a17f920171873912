//! epoll as the I/O threads use it: sockets registered level-triggered or one-shot under a key,
//! a wait with a timeout, and a wake-up other threads can send ([`Poller::notify`], an eventfd
//! registered once, level-triggered, and read only when it fired).
//!
//! A wait is one `epoll_wait`. (The `polling` crate, used before, armed a timerfd and re-armed
//! its notifier around every wait: `timerfd_settime`, two `epoll_ctl` and a `read` that fails
//! with `EAGAIN`, four system calls per wake-up on the request path.) The timeout is rounded up
//! to whole milliseconds: the deadlines it serves are 100 ms and longer.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// The key of the poller's own wake-up; never reported.
const NOTIFY_KEY: u64 = u64::MAX;
/// Events taken per wait.
const EVENTS: usize = 1024;

const READ_INTEREST: u32 = (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLPRI) as u32;
const READ_REPORT: u32 =
    (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR | libc::EPOLLPRI) as u32;
const WRITE_REPORT: u32 = (libc::EPOLLOUT | libc::EPOLLHUP | libc::EPOLLERR) as u32;

/// How a registration reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollMode {
    /// Whenever the source is ready.
    Level,
    /// Once, then nothing until modified again (a hang-up or error included).
    Oneshot,
}

/// Interest in, or readiness of, the source registered under `key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    pub key: usize,
    pub readable: bool,
    pub writable: bool,
}

impl Event {
    pub fn new(key: usize, readable: bool, writable: bool) -> Event {
        Event {
            key,
            readable,
            writable,
        }
    }

    pub fn readable(key: usize) -> Event {
        Event::new(key, true, false)
    }

    /// No interest (a hang-up or an error is still reported).
    pub fn none(key: usize) -> Event {
        Event::new(key, false, false)
    }

    fn epoll(self, mode: PollMode) -> libc::epoll_event {
        let mut events = 0;
        if self.readable {
            events |= READ_INTEREST;
        }
        if self.writable {
            events |= libc::EPOLLOUT as u32;
        }
        if mode == PollMode::Oneshot {
            events |= libc::EPOLLONESHOT as u32;
        }
        libc::epoll_event {
            events,
            u64: self.key as u64,
        }
    }
}

/// What one wait reported.
pub struct Events {
    list: Vec<libc::epoll_event>,
    len: usize,
}

impl Events {
    pub fn new() -> Events {
        Events {
            list: vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS],
            len: 0,
        }
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    /// The sources reported ready (the poller's own wake-up left out).
    pub fn iter(&self) -> impl Iterator<Item = Event> + '_ {
        self.list[..self.len]
            .iter()
            .filter(|e| e.u64 != NOTIFY_KEY)
            .map(|e| Event {
                key: e.u64 as usize,
                readable: e.events & READ_REPORT != 0,
                writable: e.events & WRITE_REPORT != 0,
            })
    }
}

impl Default for Events {
    fn default() -> Self {
        Events::new()
    }
}

/// An epoll instance and its wake-up eventfd.
pub struct Poller {
    epoll: OwnedFd,
    wake: OwnedFd,
}

/// A return value of -1 as the error it stands for.
fn check(result: libc::c_int) -> io::Result<libc::c_int> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

impl Poller {
    pub fn new() -> io::Result<Poller> {
        // SAFETY: plain system calls; each descriptor is owned at once.
        let epoll =
            unsafe { OwnedFd::from_raw_fd(check(libc::epoll_create1(libc::EPOLL_CLOEXEC))?) };
        let wake = unsafe {
            OwnedFd::from_raw_fd(check(libc::eventfd(
                0,
                libc::EFD_CLOEXEC | libc::EFD_NONBLOCK,
            ))?)
        };
        let poller = Poller { epoll, wake };
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: NOTIFY_KEY,
        };
        poller.ctl(libc::EPOLL_CTL_ADD, poller.wake.as_raw_fd(), &mut event)?;
        Ok(poller)
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, event: &mut libc::epoll_event) -> io::Result<()> {
        // SAFETY: epoll_ctl on our epoll descriptor with a valid event.
        check(unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, event) }).map(|_| ())
    }

    /// Watches `source` under `interest.key` (closing the source ends its registration).
    pub fn add(&self, source: &impl AsFd, interest: Event, mode: PollMode) -> io::Result<()> {
        let fd = source.as_fd().as_raw_fd();
        self.ctl(libc::EPOLL_CTL_ADD, fd, &mut interest.epoll(mode))
    }

    pub fn modify(&self, source: &impl AsFd, interest: Event, mode: PollMode) -> io::Result<()> {
        let fd = source.as_fd().as_raw_fd();
        self.ctl(libc::EPOLL_CTL_MOD, fd, &mut interest.epoll(mode))
    }

    pub fn delete(&self, source: &impl AsFd) -> io::Result<()> {
        let fd = source.as_fd().as_raw_fd();
        let mut unused = libc::epoll_event { events: 0, u64: 0 };
        self.ctl(libc::EPOLL_CTL_DEL, fd, &mut unused)
    }

    /// Waits until a source is ready, [`notify`](Poller::notify) is called, or `timeout`
    /// (rounded up to a millisecond; `None`: no limit) has passed.
    pub fn wait(&self, events: &mut Events, timeout: Option<Duration>) -> io::Result<()> {
        let ms = match timeout {
            None => -1,
            Some(t) => {
                let ms = t.as_nanos().div_ceil(1_000_000);
                libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
            }
        };
        events.len = 0;
        // SAFETY: the buffer holds `list.len()` events and outlives the call.
        let n = check(unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                events.list.as_mut_ptr(),
                events.list.len() as libc::c_int,
                ms,
            )
        })?;
        events.len = n as usize;
        if events.list[..events.len]
            .iter()
            .any(|e| e.u64 == NOTIFY_KEY)
        {
            // Reset the counter (level-triggered: it would be reported again otherwise).
            let mut count = [0u8; 8];
            // SAFETY: reads 8 bytes into a buffer of 8.
            let _ = unsafe {
                libc::read(
                    self.wake.as_raw_fd(),
                    count.as_mut_ptr().cast(),
                    count.len(),
                )
            };
        }
        Ok(())
    }

    /// Wakes the thread waiting (or the next wait returns at once).
    pub fn notify(&self) -> io::Result<()> {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a buffer of 8.
        let written = unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        match check(written as libc::c_int) {
            Ok(_) => Ok(()),
            // The counter is full: a wake-up is pending anyway.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::Arc;
    use std::time::Instant;

    fn keys(poller: &Poller, timeout: Duration) -> Vec<(usize, bool, bool)> {
        let mut events = Events::new();
        poller.wait(&mut events, Some(timeout)).unwrap();
        events
            .iter()
            .map(|e| (e.key, e.readable, e.writable))
            .collect()
    }

    #[test]
    fn level_oneshot_notify_and_timeout() {
        let poller = Poller::new().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();

        // Nothing ready: the timeout, rounded up to whole milliseconds, passes.
        poller
            .add(&server, Event::readable(7), PollMode::Level)
            .unwrap();
        let started = Instant::now();
        assert!(keys(&poller, Duration::from_micros(1500)).is_empty());
        assert!(started.elapsed() >= Duration::from_millis(2));

        // Level-triggered: reported again while unread, not once read.
        client.write_all(b"x").unwrap();
        assert_eq!(keys(&poller, Duration::from_secs(5)), [(7, true, false)]);
        assert_eq!(keys(&poller, Duration::from_secs(5)), [(7, true, false)]);
        let mut byte = [0u8; 1];
        assert_eq!(server.read(&mut byte).unwrap(), 1);
        assert!(keys(&poller, Duration::ZERO).is_empty());

        // One-shot with no interest: a hang-up (both sides shut) is reported once, then nothing.
        poller
            .modify(&server, Event::none(7), PollMode::Oneshot)
            .unwrap();
        drop(client);
        server.shutdown(std::net::Shutdown::Write).unwrap();
        let reported = keys(&poller, Duration::from_secs(5));
        assert_eq!(reported.len(), 1);
        assert!(reported[0].1, "a hang-up reads as readable");
        assert!(keys(&poller, Duration::from_millis(20)).is_empty());

        // Writable interest.
        poller
            .modify(&server, Event::new(7, false, true), PollMode::Level)
            .unwrap();
        assert!(keys(&poller, Duration::from_secs(5))[0].2);
        poller.delete(&server).unwrap();
        assert!(keys(&poller, Duration::ZERO).is_empty());

        // A notification from another thread ends a wait with no limit and is not reported;
        // it is consumed, so the next wait times out.
        let poller = Arc::new(poller);
        let other = Arc::clone(&poller);
        let waker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            other.notify().unwrap();
        });
        let mut events = Events::new();
        poller.wait(&mut events, None).unwrap();
        assert!(events.is_empty());
        waker.join().unwrap();
        assert!(keys(&poller, Duration::from_millis(10)).is_empty());
    }
}
