//! Shutdown: one channel that is never sent on, only closed, and the signal thread that closes it.
//!
//! Every component loop `select!`s on [`Shutdown::receiver`] next to its work or its tick (or
//! waits with [`Shutdown::wait_timeout`]); when the [`ShutdownTrigger`] fires, the channel's only
//! sender is dropped and every receiver wakes at once.
//!
//! The signal thread owns nothing but the trigger: the first SIGTERM or SIGINT fires it, a second
//! one exits the process at once (an operator who presses Ctrl-C twice means it). It stops when
//! [`SignalThread::stop`] closes its signal iterator.

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Exit status used when a second signal forces the process out.
pub const FORCED_EXIT_CODE: i32 = 130;

/// The side that starts the shutdown. Cloning shares the same trigger.
#[derive(Clone)]
pub struct ShutdownTrigger {
    sender: Arc<Mutex<Option<Sender<()>>>>,
}

/// The side every component watches.
#[derive(Clone)]
pub struct Shutdown {
    receiver: Receiver<()>,
}

/// A new, not yet fired, shutdown channel.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (sender, receiver) = crossbeam_channel::bounded(0);
    (
        ShutdownTrigger {
            sender: Arc::new(Mutex::new(Some(sender))),
        },
        Shutdown { receiver },
    )
}

impl ShutdownTrigger {
    /// Starts the shutdown; returns false when it had already started.
    pub fn fire(&self) -> bool {
        let mut guard = match self.sender.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        guard.take().is_some()
    }
}

impl Shutdown {
    /// For `select!`: it becomes ready (with a disconnection error) when shutdown starts.
    pub fn receiver(&self) -> &Receiver<()> {
        &self.receiver
    }

    pub fn is_triggered(&self) -> bool {
        matches!(self.receiver.try_recv(), Err(TryRecvError::Disconnected))
    }

    /// Sleeps up to `timeout`; returns true as soon as shutdown has started.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        matches!(
            self.receiver.recv_timeout(timeout),
            Err(RecvTimeoutError::Disconnected)
        )
    }

    /// Blocks until shutdown starts.
    pub fn wait(&self) {
        let _ = self.receiver.recv();
    }
}

/// The thread that turns SIGTERM/SIGINT into a shutdown.
pub struct SignalThread {
    handle: signal_hook::iterator::Handle,
    thread: JoinHandle<()>,
}

impl SignalThread {
    pub fn start(trigger: ShutdownTrigger) -> std::io::Result<SignalThread> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
        let handle = signals.handle();
        let thread = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for signal in signals.forever() {
                    let name = if signal == SIGINT {
                        "SIGINT"
                    } else {
                        "SIGTERM"
                    };
                    if trigger.fire() {
                        log::info!("{name} received: shutting down (send it again to force exit)");
                    } else {
                        log::warn!("{name} received again: forcing exit");
                        std::process::exit(FORCED_EXIT_CODE);
                    }
                }
            })?;
        Ok(SignalThread { handle, thread })
    }

    /// Closes the signal iterator and joins the thread.
    pub fn stop(self) {
        self.handle.close();
        let _ = self.thread.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn fire_wakes_every_receiver_once() {
        let (trigger, shutdown) = channel();
        let other = shutdown.clone();
        assert!(!shutdown.is_triggered());
        assert!(!shutdown.wait_timeout(Duration::from_millis(10)));
        let waiter = std::thread::spawn(move || other.wait());
        assert!(trigger.fire());
        assert!(!trigger.fire(), "second fire reports it had already fired");
        waiter.join().unwrap();
        let start = Instant::now();
        assert!(shutdown.wait_timeout(Duration::from_secs(5)));
        assert!(start.elapsed() < Duration::from_secs(1));
        assert!(shutdown.is_triggered());
    }
}
