//! Waking a voice websocket thread when something is queued for it, instead of having every
//! connection thread poll its queue.
//!
//! Each voice connection used to wake every `ws_poll_interval` (25 ms) to look for queued
//! frames: with 1,000 idle calls that was 40,000 wake-ups a second and ~38 % of a core
//! (`quaver jitter --idle --calls 1000`, server threads' CPU), and three times as much at 3,000
//! calls, on the same cores as the UDP thread that must forward every packet. Now a thread
//! sleeps in `poll(2)` on its socket and an eventfd that [`Mailbox::send`] signals.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use super::session::Outgoing;

/// An eventfd a connection thread sleeps on beside its socket.
pub(crate) struct Wake {
    fd: Option<OwnedFd>,
}

impl Wake {
    /// A new eventfd; without one (no descriptors left) the thread falls back to polling its
    /// queue every [`FALLBACK_POLL`].
    pub(crate) fn new() -> Self {
        // SAFETY: eventfd has no memory preconditions; a non-negative result is a new
        // descriptor that nothing else owns.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        Self {
            fd: (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) }),
        }
    }

    /// Wakes the thread (a no-op without an eventfd: that thread polls).
    pub(crate) fn wake(&self) {
        if let Some(fd) = &self.fd {
            let one = 1_u64.to_ne_bytes();
            // SAFETY: writes 8 bytes from a live buffer to a descriptor this struct owns. A
            // full counter (EAGAIN) means the thread is already due to wake.
            let _ = unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        }
    }

    /// Resets the counter after a wake-up.
    fn clear(&self) {
        if let Some(fd) = &self.fd {
            let mut value = [0_u8; 8];
            // SAFETY: reads 8 bytes into a live buffer from a descriptor this struct owns.
            let _ = unsafe { libc::read(fd.as_raw_fd(), value.as_mut_ptr().cast(), value.len()) };
        }
    }
}

/// How often a thread without an eventfd looks at its queue.
const FALLBACK_POLL: Duration = Duration::from_millis(25);

/// What ended a [`wait`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wakeup {
    /// The socket has data (or an error or hang-up, which the next read reports).
    Socket,
    /// Something was queued.
    Woken,
    /// Neither, within the timeout.
    TimedOut,
}

/// Sleeps until `socket` is readable, `wake` is signalled or `timeout` passes.
pub(crate) fn wait(socket: RawFd, wake: &Wake, timeout: Duration) -> Wakeup {
    let mut fds = [
        libc::pollfd {
            fd: socket,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: wake.fd.as_ref().map_or(-1, AsRawFd::as_raw_fd),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let timeout = if wake.fd.is_some() {
        timeout
    } else {
        timeout.min(FALLBACK_POLL)
    };
    // Rounded up, so a deadline is never polled for just before it passes.
    let ms = timeout.as_micros().div_ceil(1_000).min(i32::MAX as u128) as i32;
    // SAFETY: `fds` is a live array of two pollfd; a negative fd is ignored by poll(2).
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    let woken = n > 0 && fds[1].revents != 0;
    if woken {
        wake.clear();
    }
    if n > 0 && fds[0].revents != 0 {
        Wakeup::Socket
    } else if woken {
        Wakeup::Woken
    } else {
        Wakeup::TimedOut
    }
}

/// The sending end of a voice connection's queue: queues, then wakes its thread.
#[derive(Clone)]
pub(crate) struct Mailbox {
    tx: crossbeam_channel::Sender<Outgoing>,
    wake: Arc<Wake>,
}

impl Mailbox {
    pub(crate) fn new(tx: crossbeam_channel::Sender<Outgoing>, wake: Arc<Wake>) -> Self {
        Self { tx, wake }
    }

    /// Queues `out`; false when the connection's thread is gone.
    pub(crate) fn send(&self, out: Outgoing) -> bool {
        let sent = self.tx.send(out).is_ok();
        if sent {
            self.wake.wake();
        }
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    #[test]
    fn a_queued_frame_wakes_the_thread_and_data_on_the_socket_says_so() {
        let (mut client, server) = pair();
        let wake = Arc::new(Wake::new());
        assert!(wake.fd.is_some(), "eventfd available here");
        let (tx, rx) = crossbeam_channel::unbounded();
        let mailbox = Mailbox::new(tx, Arc::clone(&wake));

        // Nothing yet: the timeout ends the wait.
        assert_eq!(
            wait(server.as_raw_fd(), &wake, Duration::from_millis(1)),
            Wakeup::TimedOut
        );

        assert!(mailbox.send(Outgoing::Close(1000)));
        assert_eq!(
            wait(server.as_raw_fd(), &wake, Duration::from_secs(30)),
            Wakeup::Woken
        );
        assert!(matches!(rx.try_recv(), Ok(Outgoing::Close(1000))));
        // The wake-up was consumed: the next wait sleeps until the timeout again.
        assert_eq!(
            wait(server.as_raw_fd(), &wake, Duration::from_millis(1)),
            Wakeup::TimedOut
        );

        client.write_all(b"x").unwrap();
        assert_eq!(
            wait(server.as_raw_fd(), &wake, Duration::from_secs(30)),
            Wakeup::Socket
        );

        drop(rx);
        assert!(!mailbox.send(Outgoing::Drop), "thread gone");
    }
}
