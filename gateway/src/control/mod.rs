//! The control thread: one thread drives every call's voice-gateway websocket.
//!
//! Sockets are non-blocking under a `mio` poll, tungstenite runs over them (with rustls for
//! `wss://`, `ring` as the one crypto provider and webpki roots), host names are resolved on a
//! helper thread, and every timer comes from the sans-IO machines' `poll_timeout`. Nothing waits
//! on any single server, so a slow or dead one cannot stall the others.
//!
//! Handles out, values back: [`ControlThread`] sends commands in; [`ControlEvent`]s come back over
//! a bounded queue ([`ControlThread::events`]), or, for an owner that wants to live on the control
//! thread itself, go straight to its [`ControlHandler`] ([`ControlThread::spawn_with_handler`]):
//! that is how the `quaver` facade runs every call's connection state without a thread of its own.
//!
//! Files: `handle` (the [`ControlThread`] other threads hold), `event_loop` (readiness, timers,
//! commands, the handler's [`ControlContext`]), `socket` (TCP/TLS/websocket opening), `resolver`
//! (host names, off the loop).

mod event_loop;
mod handle;
mod resolver;
mod socket;
mod upgrade;

pub use event_loop::ControlContext;
pub use handle::{ControlThread, ControlWaker};
pub use upgrade::{MAX_RESPONSE_HEAD, UpgradeError, parse_response as parse_upgrade_response};

use std::time::{Duration, Instant};

use mio::Token;

use crate::Error;
use crate::main_gateway::MainGatewayEvent;
use crate::voice::VoiceEvent;

pub(crate) const WAKER: Token = Token(usize::MAX);

/// Checks a websocket URL exactly as the control thread does before connecting; returns its
/// host, port and whether it uses TLS. For validating configuration early (and for fuzzing the
/// parser: URLs arrive from the network in READY and VOICE_SERVER_UPDATE).
pub fn check_url(url: &str) -> Result<(String, u16, bool), Error> {
    let target = socket::parse_url(url)?;
    Ok((target.host, target.port, target.tls))
}

/// Tokens at and above this belong to sockets a [`ControlHandler`] registered (key = token − base);
/// connection IDs count up from 1 and never get near it.
pub(crate) const HANDLER_TOKEN_BASE: usize = 1 << 40;

/// Commands queued to the control thread before a sender blocks (backpressure, never unbounded).
pub(crate) const COMMAND_QUEUE: usize = 4096;

/// Events queued for [`ControlThread::events`] before new ones are dropped and counted.
pub(crate) const EVENT_QUEUE: usize = 4096;

/// Code that runs on the control thread itself, owning whatever connects calls to the rest of a
/// program (the `quaver` facade's connection driver). Every method runs on the control thread
/// with a [`ControlContext`] to act on connections directly; none may block.
pub trait ControlHandler: Send + 'static {
    /// A connection's event (instead of the [`ControlThread::events`] queue).
    fn on_event(&mut self, event: ControlEvent, ctl: &mut ControlContext<'_>);
    /// [`ControlWaker::wake`] or a command woke the loop: look at the handler's own queues.
    fn on_wake(&mut self, ctl: &mut ControlContext<'_>);
    /// A socket registered with [`ControlContext::register`] under `key` is readable.
    fn on_readable(&mut self, key: usize, ctl: &mut ControlContext<'_>);
    /// When [`ControlHandler::on_timeout`] is next due.
    fn poll_timeout(&self) -> Option<Instant>;
    /// The time from [`ControlHandler::poll_timeout`] has come.
    fn on_timeout(&mut self, now: Instant, ctl: &mut ControlContext<'_>);
}

/// Identifies one voice connection on a control thread (a call gets a new one for every fresh
/// voice session: moves, endpoint changes). Not the user's `quaver::CallId`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u64);

/// Identifies one built-in main-gateway connection on a control thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BotId(pub u64);

/// Events from the control thread, in the order they happened per connection.
#[derive(Debug)]
#[non_exhaustive]
pub enum ControlEvent {
    /// Something happened on a call's voice connection.
    Voice {
        /// Which call.
        call: ConnectionId,
        /// What happened.
        event: VoiceEvent,
    },
    /// Something happened on a built-in main-gateway connection.
    MainGateway {
        /// Which bot connection.
        bot: BotId,
        /// What happened.
        event: MainGatewayEvent,
    },
    /// A socket-level problem worth knowing about (the machines recover on their own).
    SocketError {
        /// The connection's numeric ID (a `ConnectionId` or `BotId` value).
        id: u64,
        /// What failed.
        error: SocketFailure,
    },
}

/// Why a gateway socket failed (the connection's machine decides whether to resume,
/// reconnect or give up).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SocketFailure {
    /// The URL could not be used.
    #[error("bad url: {0}")]
    Url(Box<Error>),
    /// The host name did not resolve.
    #[error("resolving {host}: {source}")]
    Resolve {
        /// The host.
        host: String,
        /// Why.
        source: std::io::Error,
    },
    /// The host resolved to no address at all.
    #[error("no address to connect to")]
    NoAddress,
    /// The TCP connection could not be made (the last address tried).
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// TLS could not start.
    #[error("tls: {0}")]
    Tls(Box<Error>),
    /// The websocket upgrade failed.
    #[error("upgrade: {0}")]
    Upgrade(Box<UpgradeError>),
    /// Reading or writing the open websocket failed.
    #[error("websocket: {0}")]
    WebSocket(Box<tungstenite::Error>),
}

/// Control-thread tuning.
#[derive(Clone, Debug)]
pub struct ControlConfig {
    /// Largest websocket message accepted.
    pub max_message_size: usize,
    /// Outgoing bytes buffered per socket before it counts as dead.
    pub max_write_buffer: usize,
    /// Thread name.
    pub thread_name: String,
    /// Certificates to trust besides the webpki roots (a local server's self-signed one).
    pub extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
}

impl ControlConfig {
    /// Adds every certificate of a PEM file's contents to [`ControlConfig::extra_roots`] (for
    /// example the CA a local `quaver serve` wrote with `--cert-out`). Returns how many were
    /// added; text without any certificate is an error, so a wrong file is noticed.
    pub fn trust_pem(&mut self, pem: &[u8]) -> Result<usize, Error> {
        use rustls::pki_types::pem::PemObject;
        let certs = rustls::pki_types::CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()?;
        if certs.is_empty() {
            return Err(Error::Certificate(
                rustls::pki_types::pem::Error::NoItemsFound,
            ));
        }
        let added = certs.len();
        self.extra_roots.extend(certs);
        Ok(added)
    }
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            max_message_size: crate::protocol::DEFAULT_MAX_FRAME_LEN,
            max_write_buffer: 4 << 20,
            thread_name: "quaver-control".into(),
            extra_roots: Vec::new(),
        }
    }
}

/// Counters for benchmarks and health checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ControlStats {
    /// Connections (calls plus bots) currently held.
    pub connections: usize,
    /// Connections whose websocket is currently open.
    pub open_sockets: usize,
    /// CPU time the control thread has used (user + system).
    pub cpu_time: Duration,
    /// The system (kernel) part of `cpu_time`; on loopback it includes the receiver's TCP work.
    pub cpu_system: Duration,
    /// Websocket frames received.
    pub frames_in: u64,
    /// Websocket frames sent.
    pub frames_out: u64,
    /// Events dropped because nobody read [`ControlThread::events`] (bounded queue).
    pub events_dropped: u64,
}
