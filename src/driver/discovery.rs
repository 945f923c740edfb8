//! IP discovery (PROTOCOL.md §3) without blocking: the request goes out from the call's UDP
//! socket, the control thread's poll says when the answer is readable, timers resend it.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quaver_gateway::control::ControlContext;
use quaver_net::discovery::{PACKET_LEN, encode_request, parse_response};

/// How long one attempt waits for its answer, and how many attempts are made (the voice
/// gateway's own handshake timeout covers a server that never answers at all).
pub(crate) const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(1_000);
pub(crate) const ATTEMPTS: u32 = 5;

/// One call's discovery in flight.
pub(crate) struct Discovery {
    pub(crate) socket: Arc<UdpSocket>,
    ssrc: u32,
    attempts: u32,
    pub(crate) deadline: Instant,
}

/// What a readable socket or an expired attempt came to.
pub(crate) enum Progress {
    /// Still waiting.
    Pending,
    /// Our address as the server sees it.
    Found(SocketAddr),
    /// Every attempt went unanswered.
    GaveUp,
}

impl Discovery {
    /// Opens the call's socket towards `server`, registers it under `key` and sends the first
    /// request.
    pub(crate) fn start(
        server: SocketAddr,
        ssrc: u32,
        key: usize,
        ctl: &mut ControlContext<'_>,
        now: Instant,
    ) -> std::io::Result<Self> {
        let local: SocketAddr = if server.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(local)?;
        socket.connect(server)?;
        socket.set_nonblocking(true)?;
        ctl.register(socket.as_raw_fd(), key)?;
        let mut discovery = Self {
            socket: Arc::new(socket),
            ssrc,
            attempts: 0,
            deadline: now,
        };
        discovery.send(now);
        Ok(discovery)
    }

    fn send(&mut self, now: Instant) {
        self.attempts += 1;
        self.deadline = now + ATTEMPT_TIMEOUT;
        if let Err(e) = self.socket.send(&encode_request(self.ssrc)) {
            tracing::debug!(error = %e, "IP discovery request not sent");
        }
    }

    /// Reads whatever arrived; an answer for another SSRC or garbage is skipped.
    pub(crate) fn on_readable(&mut self) -> Progress {
        let mut buf = [0u8; PACKET_LEN + 64];
        loop {
            match self.socket.recv(&mut buf) {
                Ok(n) => match parse_response(&buf[..n]) {
                    Ok(response) if response.ssrc == self.ssrc => {
                        return Progress::Found(response.address);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "not an IP discovery response"),
                },
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Progress::Pending,
                // ICMP "port unreachable" shows up here; the resend timer tries again.
                Err(e) => {
                    tracing::debug!(error = %e, "IP discovery receive failed");
                    return Progress::Pending;
                }
            }
        }
    }

    /// The attempt's time is up: resend, or give up after the last one.
    pub(crate) fn on_timeout(&mut self, now: Instant) -> Progress {
        if self.attempts >= ATTEMPTS {
            return Progress::GaveUp;
        }
        self.send(now);
        Progress::Pending
    }

    /// Stops watching the socket and hands it back in blocking mode, for the sender.
    pub(crate) fn finish(self, ctl: &mut ControlContext<'_>) -> Arc<UdpSocket> {
        if let Err(e) = ctl.deregister(self.socket.as_raw_fd()) {
            tracing::debug!(error = %e, "could not deregister the discovery socket");
        }
        if let Err(e) = self.socket.set_nonblocking(false) {
            tracing::debug!(error = %e, "could not make the voice socket blocking again");
        }
        self.socket
    }
}
