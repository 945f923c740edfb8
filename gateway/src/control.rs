//! The control thread: one thread drives every call's voice-gateway websocket.
//!
//! Sockets are non-blocking under a `mio` poll, tungstenite runs over them (with rustls for
//! `wss://`, `ring` as the one crypto provider and webpki roots), host names are resolved on a
//! helper thread, and every timer comes from the sans-IO machines' `poll_timeout`. Nothing waits
//! on any single server, so a slow or dead one cannot stall the others.
//!
//! Handles out, values back: [`ControlThread`] sends commands in; [`ControlEvent`]s come back over
//! a queue ([`ControlThread::events`]).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use tungstenite::handshake::HandshakeError;
use tungstenite::handshake::MidHandshake;
use tungstenite::handshake::client::ClientHandshake;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::{WebSocketConfig, frame::coding::CloseCode};
use tungstenite::{Message, WebSocket};

use crate::Error;
use crate::backoff::SplitMixJitter;
use crate::dave::DaveExtension;
use crate::main_gateway::{MainGateway, MainGatewayConfig, MainGatewayEvent};
use crate::protocol::SpeakingFlags;
use crate::voice::{
    OutgoingFrame, Output, VoiceConfig, VoiceConnectRequest, VoiceEvent, VoiceGateway,
};

const WAKER: Token = Token(usize::MAX);

/// Identifies one call (one voice connection) on a control thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallId(pub u64);

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
        call: CallId,
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
        /// The connection's numeric ID (a `CallId` or `BotId` value).
        id: u64,
        /// Description.
        error: String,
    },
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
}

enum Command {
    Connect {
        id: u64,
        request: Box<VoiceConnectRequest>,
        config: Box<VoiceConfig>,
        dave: Option<Box<dyn DaveExtension>>,
    },
    ConnectBot {
        id: u64,
        config: Box<MainGatewayConfig>,
    },
    Discovered {
        id: u64,
        ip: String,
        port: u16,
    },
    Speaking {
        id: u64,
        flags: SpeakingFlags,
    },
    Disconnect {
        id: u64,
    },
    BotSend {
        id: u64,
        payload: String,
    },
    Resolved {
        id: u64,
        generation: u64,
        result: io::Result<Vec<SocketAddr>>,
    },
    Stats(Sender<ControlStats>),
    Shutdown,
}

/// Handle to a running control thread. Dropping it stops the thread and closes every socket.
pub struct ControlThread {
    commands: Sender<Command>,
    waker: Arc<Waker>,
    events: Receiver<ControlEvent>,
    next_id: std::sync::atomic::AtomicU64,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ControlThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlThread").finish_non_exhaustive()
    }
}

impl ControlThread {
    /// Start the control thread (and its resolver helper).
    pub fn spawn(config: ControlConfig) -> Result<Self, Error> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (cmd_tx, cmd_rx) = crossbeam_channel::unbounded();
        let (ev_tx, ev_rx) = crossbeam_channel::unbounded();
        let resolver = Resolver::spawn(cmd_tx.clone(), waker.clone())?;
        let name = config.thread_name.clone();
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            let mut lp = EventLoop {
                poll,
                commands: cmd_rx,
                events: ev_tx,
                conns: HashMap::new(),
                timers: BinaryHeap::new(),
                config,
                tls: None,
                resolver,
                frames_in: 0,
                frames_out: 0,
            };
            lp.run();
        })?;
        Ok(ControlThread {
            commands: cmd_tx,
            waker,
            events: ev_rx,
            next_id: std::sync::atomic::AtomicU64::new(1),
            thread: Some(thread),
        })
    }

    /// The event queue. Read it from any thread.
    pub fn events(&self) -> &Receiver<ControlEvent> {
        &self.events
    }

    /// Start a voice connection. Events for it carry the returned [`CallId`].
    pub fn connect(
        &self,
        request: VoiceConnectRequest,
        config: VoiceConfig,
    ) -> Result<CallId, Error> {
        self.connect_inner(request, config, None)
    }

    /// Start a voice connection whose DAVE traffic goes to `dave` (which lives on the control
    /// thread from then on). Set `config.max_dave_protocol_version` to what it supports.
    pub fn connect_with_dave(
        &self,
        request: VoiceConnectRequest,
        config: VoiceConfig,
        dave: Box<dyn DaveExtension>,
    ) -> Result<CallId, Error> {
        self.connect_inner(request, config, Some(dave))
    }

    fn connect_inner(
        &self,
        request: VoiceConnectRequest,
        config: VoiceConfig,
        dave: Option<Box<dyn DaveExtension>>,
    ) -> Result<CallId, Error> {
        let id = self.fresh_id();
        self.send(Command::Connect {
            id,
            request: Box::new(request),
            config: Box::new(config),
            dave,
        })?;
        Ok(CallId(id))
    }

    /// Feed back the result of IP discovery requested by [`VoiceEvent::DiscoveryRequested`].
    pub fn set_discovered_address(&self, call: CallId, ip: String, port: u16) -> Result<(), Error> {
        self.send(Command::Discovered {
            id: call.0,
            ip,
            port,
        })
    }

    /// Ask for Speaking on or off ([`VoiceEvent::SpeakingSent`] confirms it went out).
    pub fn set_speaking(&self, call: CallId, flags: SpeakingFlags) -> Result<(), Error> {
        self.send(Command::Speaking { id: call.0, flags })
    }

    /// Close a call's voice connection; it ends with [`crate::voice::EndReason::Left`].
    pub fn disconnect(&self, call: CallId) -> Result<(), Error> {
        self.send(Command::Disconnect { id: call.0 })
    }

    /// Start a built-in main-gateway connection (see [`crate::main_gateway`]).
    pub fn connect_bot(&self, config: MainGatewayConfig) -> Result<BotId, Error> {
        let id = self.fresh_id();
        self.send(Command::ConnectBot {
            id,
            config: Box::new(config),
        })?;
        Ok(BotId(id))
    }

    /// Send a raw JSON payload on a bot's main-gateway socket (used for op 4).
    pub fn bot_send(&self, bot: BotId, payload: String) -> Result<(), Error> {
        self.send(Command::BotSend { id: bot.0, payload })
    }

    /// Close a bot's main-gateway connection.
    pub fn disconnect_bot(&self, bot: BotId) -> Result<(), Error> {
        self.send(Command::Disconnect { id: bot.0 })
    }

    /// Counters, including the control thread's own CPU time.
    pub fn stats(&self) -> Result<ControlStats, Error> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(Command::Stats(tx))?;
        rx.recv_timeout(Duration::from_secs(10))
            .map_err(|_| Error::ControlStopped)
    }

    fn fresh_id(&self) -> u64 {
        self.next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    fn send(&self, cmd: Command) -> Result<(), Error> {
        self.commands.send(cmd).map_err(|_| Error::ControlStopped)?;
        self.waker.wake()?;
        Ok(())
    }
}

impl Drop for ControlThread {
    fn drop(&mut self) {
        let _ = self.send(Command::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Resolves host names off the control thread (getaddrinfo blocks).
struct Resolver {
    requests: Option<Sender<(u64, u64, String, u16)>>,
    thread: Option<JoinHandle<()>>,
}

impl Resolver {
    fn spawn(results: Sender<Command>, waker: Arc<Waker>) -> io::Result<Self> {
        let (tx, rx) = crossbeam_channel::unbounded::<(u64, u64, String, u16)>();
        let thread = std::thread::Builder::new()
            .name("quaver-resolver".into())
            .spawn(move || {
                for (id, generation, host, port) in rx {
                    let result = (host.as_str(), port)
                        .to_socket_addrs()
                        .map(|it| it.collect::<Vec<_>>())
                        .and_then(|addrs| {
                            if addrs.is_empty() {
                                Err(io::Error::new(
                                    io::ErrorKind::NotFound,
                                    "host has no addresses",
                                ))
                            } else {
                                Ok(addrs)
                            }
                        });
                    if results
                        .send(Command::Resolved {
                            id,
                            generation,
                            result,
                        })
                        .is_err()
                    {
                        return;
                    }
                    let _ = waker.wake();
                }
            })?;
        Ok(Resolver {
            requests: Some(tx),
            thread: Some(thread),
        })
    }

    fn resolve(&self, id: u64, generation: u64, host: String, port: u16) {
        if let Some(tx) = &self.requests {
            let _ = tx.send((id, generation, host, port));
        }
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        self.requests = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A TCP stream, optionally wrapped in TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&mut self) -> &mut TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &mut s.sock,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// Where a parsed websocket URL points.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Target {
    url: String,
    host: String,
    port: u16,
    tls: bool,
}

fn parse_url(url: &str) -> Result<Target, Error> {
    let uri: tungstenite::http::Uri = url.parse().map_err(|_| Error::InvalidUrl(url.into()))?;
    let tls = match uri.scheme_str() {
        Some("wss") => true,
        Some("ws") => false,
        _ => return Err(Error::InvalidUrl(url.into())),
    };
    let host = uri
        .host()
        .ok_or_else(|| Error::InvalidUrl(url.into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    Ok(Target {
        url: url.into(),
        host,
        port,
        tls,
    })
}

type Handshake = MidHandshake<ClientHandshake<Stream>>;

enum Socket {
    /// Waiting for the resolver.
    Resolving(Target),
    /// TCP connect in flight; the other resolved addresses to try if it fails.
    Connecting(Target, TcpStream, Vec<SocketAddr>),
    /// TLS + websocket upgrade in flight.
    Handshaking(Box<Handshake>),
    /// Up.
    Open(Box<WebSocket<Stream>>),
}

/// The sans-IO machine behind a connection.
enum Machine {
    Voice(Box<VoiceGateway>),
    Bot(Box<MainGateway>),
}

/// What a machine asks of its socket.
enum Io {
    Connect(String),
    Send(OutgoingFrame),
    Close(u16),
    Event(ControlEvent),
}

impl Machine {
    fn open(&mut self, now: Instant) {
        match self {
            Machine::Voice(m) => m.handle_socket_open(now),
            Machine::Bot(m) => m.handle_socket_open(now),
        }
    }
    fn closed(&mut self, code: Option<u16>, now: Instant) {
        match self {
            Machine::Voice(m) => m.handle_socket_closed(code, now),
            Machine::Bot(m) => m.handle_socket_closed(code, now),
        }
    }
    fn timeout(&mut self, now: Instant) {
        match self {
            Machine::Voice(m) => m.handle_timeout(now),
            Machine::Bot(m) => m.handle_timeout(now),
        }
    }
    fn poll_timeout(&self) -> Option<Instant> {
        match self {
            Machine::Voice(m) => m.poll_timeout(),
            Machine::Bot(m) => m.poll_timeout(),
        }
    }
    fn text(&mut self, id: u64, text: &str, now: Instant) {
        let r = match self {
            Machine::Voice(m) => m.handle_text(text, now),
            Machine::Bot(m) => m.handle_text(text, now),
        };
        if let Err(e) = r {
            // Frames are ignored, not fatal; the text itself may hold secrets so only the error
            // is logged.
            tracing::debug!(id, error = %e, "ignored a gateway frame");
        }
    }
    fn binary(&mut self, id: u64, bytes: &[u8], now: Instant) {
        let r = match self {
            Machine::Voice(m) => m.handle_binary(bytes, now),
            Machine::Bot(_) => Ok(()),
        };
        if let Err(e) = r {
            tracing::debug!(id, error = %e, "ignored a binary gateway frame");
        }
    }
    fn next_io(&mut self, id: u64) -> Option<Io> {
        match self {
            Machine::Voice(m) => m.poll_output().map(|o| match o {
                Output::Connect { url } => Io::Connect(url),
                Output::Send(f) => Io::Send(f),
                Output::Close { code } => Io::Close(code),
                Output::Event(event) => Io::Event(ControlEvent::Voice {
                    call: CallId(id),
                    event,
                }),
            }),
            Machine::Bot(m) => m.poll_output().map(|o| match o {
                crate::main_gateway::Output::Connect { url } => Io::Connect(url),
                crate::main_gateway::Output::Send(text) => Io::Send(OutgoingFrame::Text(text)),
                crate::main_gateway::Output::Close { code } => Io::Close(code),
                crate::main_gateway::Output::Event(event) => Io::Event(ControlEvent::MainGateway {
                    bot: BotId(id),
                    event,
                }),
            }),
        }
    }
    fn is_ended(&self) -> bool {
        match self {
            Machine::Voice(m) => m.is_ended(),
            Machine::Bot(m) => m.is_ended(),
        }
    }
}

struct Conn {
    machine: Machine,
    socket: Option<Socket>,
    /// Bumped per socket so stale resolver answers are ignored.
    generation: u64,
    /// The deadline currently in the timer heap for this connection.
    scheduled: Option<Instant>,
    /// Whether the socket is registered for WRITABLE too.
    write_interest: bool,
    /// The code of a close frame received on the current socket: the TCP connection usually
    /// ends on a later readiness event, and the machine needs the code then.
    close_code: Option<u16>,
}

/// Flush a socket's queued frames, keeping WRITABLE interest only while data is pending, so idle
/// sockets don't wake the loop each time an ACK frees send-buffer space.
fn flush_open(poll: &Poll, id: u64, conn: &mut Conn) -> Result<(), String> {
    let Some(Socket::Open(ws)) = conn.socket.as_mut() else {
        return Ok(());
    };
    let pending = match ws.flush() {
        Ok(()) => false,
        Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => true,
        Err(e) => return Err(e.to_string()),
    };
    if pending != conn.write_interest {
        let interest = if pending {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        poll.registry()
            .reregister(ws.get_mut().tcp(), Token(id as usize), interest)
            .map_err(|e| e.to_string())?;
        conn.write_interest = pending;
    }
    Ok(())
}

struct EventLoop {
    poll: Poll,
    commands: Receiver<Command>,
    events: Sender<ControlEvent>,
    conns: HashMap<u64, Conn>,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    config: ControlConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
    resolver: Resolver,
    frames_in: u64,
    frames_out: u64,
}

impl EventLoop {
    fn run(&mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self
                .timers
                .peek()
                .map(|Reverse((t, _))| t.saturating_duration_since(Instant::now()));
            if let Err(e) = self.poll.poll(&mut events, timeout)
                && e.kind() != io::ErrorKind::Interrupted
            {
                tracing::error!(error = %e, "control thread poll failed; stopping");
                return;
            }
            for ev in events.iter() {
                if ev.token() == WAKER {
                    continue;
                }
                let id = ev.token().0 as u64;
                self.on_socket_ready(id);
            }
            if !self.drain_commands() {
                return;
            }
            self.fire_timers();
        }
    }

    /// Returns false on shutdown.
    fn drain_commands(&mut self) -> bool {
        while let Ok(cmd) = self.commands.try_recv() {
            let now = Instant::now();
            match cmd {
                Command::Connect {
                    id,
                    request,
                    config,
                    dave,
                } => {
                    let jitter = Box::new(SplitMixJitter::from_entropy());
                    let mut m = match dave {
                        Some(d) => VoiceGateway::with_dave(*request, *config, jitter, d),
                        None => VoiceGateway::new(*request, *config, jitter),
                    };
                    m.start(now);
                    self.add(id, Machine::Voice(Box::new(m)));
                }
                Command::ConnectBot { id, config } => {
                    let jitter = SplitMixJitter::from_entropy();
                    let mut m = MainGateway::new(*config, Box::new(jitter));
                    m.start(now);
                    self.add(id, Machine::Bot(Box::new(m)));
                }
                Command::Discovered { id, ip, port } => {
                    if let Some(Conn {
                        machine: Machine::Voice(m),
                        ..
                    }) = self.conns.get_mut(&id)
                        && let Err(e) = m.set_discovered_address(ip, port, now)
                    {
                        tracing::debug!(id, error = %e, "discovery result not used");
                    }
                    self.drive(id);
                }
                Command::Speaking { id, flags } => {
                    if let Some(Conn {
                        machine: Machine::Voice(m),
                        ..
                    }) = self.conns.get_mut(&id)
                    {
                        m.set_speaking(flags);
                    }
                    self.drive(id);
                }
                Command::BotSend { id, payload } => {
                    if let Some(Conn {
                        machine: Machine::Bot(m),
                        ..
                    }) = self.conns.get_mut(&id)
                    {
                        m.send_raw(payload);
                    }
                    self.drive(id);
                }
                Command::Disconnect { id } => {
                    match self.conns.get_mut(&id).map(|c| &mut c.machine) {
                        Some(Machine::Voice(m)) => m.disconnect(),
                        Some(Machine::Bot(m)) => m.disconnect(),
                        None => {}
                    }
                    self.drive(id);
                }
                Command::Resolved {
                    id,
                    generation,
                    result,
                } => self.on_resolved(id, generation, result),
                Command::Stats(tx) => {
                    let _ = tx.send(self.stats());
                }
                Command::Shutdown => {
                    for (_, mut c) in self.conns.drain() {
                        if let Some(s) = c.socket.take() {
                            close_socket(&self.poll, s, 1000);
                        }
                    }
                    return false;
                }
            }
        }
        true
    }

    fn stats(&self) -> ControlStats {
        let cpu = thread_cpu_time();
        ControlStats {
            connections: self.conns.len(),
            open_sockets: self
                .conns
                .values()
                .filter(|c| matches!(c.socket, Some(Socket::Open(_))))
                .count(),
            cpu_time: cpu.0 + cpu.1,
            cpu_system: cpu.1,
            frames_in: self.frames_in,
            frames_out: self.frames_out,
        }
    }

    fn add(&mut self, id: u64, machine: Machine) {
        self.conns.insert(
            id,
            Conn {
                machine,
                socket: None,
                generation: 0,
                scheduled: None,
                write_interest: false,
                close_code: None,
            },
        );
        self.drive(id);
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((t, id))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            let Some(conn) = self.conns.get_mut(&id) else {
                continue;
            };
            if conn.scheduled != Some(t) {
                continue; // superseded entry
            }
            conn.scheduled = None;
            conn.machine.timeout(now);
            self.drive(id);
        }
    }

    /// Carry out everything the connection's machine asked for, then re-arm its timer.
    fn drive(&mut self, id: u64) {
        loop {
            let Some(conn) = self.conns.get_mut(&id) else {
                return;
            };
            let Some(io) = conn.machine.next_io(id) else {
                break;
            };
            match io {
                Io::Event(e) => {
                    let _ = self.events.send(e);
                }
                Io::Send(frame) => {
                    let msg = match frame {
                        OutgoingFrame::Text(t) => Message::text(t),
                        OutgoingFrame::Binary(b) => Message::binary(b),
                    };
                    match conn.socket.as_mut() {
                        Some(Socket::Open(ws)) => {
                            self.frames_out += 1;
                            if let Err(e) = ws.write(msg) {
                                self.fail_socket(id, e.to_string(), None);
                                continue;
                            }
                        }
                        _ => tracing::debug!(id, "dropping a frame: socket not open"),
                    }
                }
                Io::Close(code) => {
                    if let Some(s) = conn.socket.take() {
                        close_socket(&self.poll, s, code);
                    }
                }
                Io::Connect(url) => {
                    if let Some(s) = conn.socket.take() {
                        close_socket(&self.poll, s, 1000);
                    }
                    conn.generation += 1;
                    conn.close_code = None;
                    let generation = conn.generation;
                    match parse_url(&url) {
                        Ok(target) => match target.host.parse::<IpAddr>() {
                            Ok(ip) => {
                                let addr = SocketAddr::new(ip, target.port);
                                conn.socket = Some(Socket::Resolving(target));
                                self.on_resolved(id, generation, Ok(vec![addr]));
                            }
                            Err(_) => {
                                self.resolver.resolve(
                                    id,
                                    generation,
                                    target.host.clone(),
                                    target.port,
                                );
                                conn.socket = Some(Socket::Resolving(target));
                            }
                        },
                        Err(e) => self.fail_socket(id, e.to_string(), None),
                    }
                }
            }
        }
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if let Err(e) = flush_open(&self.poll, id, conn) {
            return self.fail_socket(id, e, None);
        }
        if conn.machine.is_ended() {
            if let Some(s) = conn.socket.take() {
                close_socket(&self.poll, s, 1000);
            }
            self.conns.remove(&id);
            return;
        }
        let t = conn.machine.poll_timeout();
        if t != conn.scheduled {
            conn.scheduled = t;
            if let Some(t) = t {
                self.timers.push(Reverse((t, id)));
            }
        }
    }

    fn on_resolved(&mut self, id: u64, generation: u64, result: io::Result<Vec<SocketAddr>>) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if conn.generation != generation {
            return;
        }
        let Some(Socket::Resolving(target)) = conn.socket.take() else {
            return;
        };
        match result {
            Ok(addrs) => self.connect_next(id, target, addrs),
            Err(e) => self.fail_socket(id, format!("resolving {}: {e}", target.host), None),
        }
    }

    /// Start a TCP connect to the first of `addrs` that accepts one; the rest are kept for
    /// when it fails.
    fn connect_next(&mut self, id: u64, target: Target, mut addrs: Vec<SocketAddr>) {
        let mut last_error = String::from("no address to connect to");
        while !addrs.is_empty() {
            let addr = addrs.remove(0);
            let mut stream = match TcpStream::connect(addr) {
                Ok(s) => s,
                Err(e) => {
                    last_error = format!("connect {addr}: {e}");
                    continue;
                }
            };
            let interest = Interest::READABLE | Interest::WRITABLE;
            if let Err(e) = self
                .poll
                .registry()
                .register(&mut stream, Token(id as usize), interest)
            {
                last_error = e.to_string();
                continue;
            }
            let Some(conn) = self.conns.get_mut(&id) else {
                return deregister(&self.poll, stream);
            };
            conn.socket = Some(Socket::Connecting(target, stream, addrs));
            conn.write_interest = true;
            return;
        }
        self.fail_socket(id, last_error, None)
    }

    fn on_socket_ready(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let now = Instant::now();
        match conn.socket.take() {
            None => {}
            Some(s @ Socket::Resolving(_)) => conn.socket = Some(s),
            Some(Socket::Connecting(target, stream, rest)) => {
                let failed = match stream.take_error() {
                    Ok(Some(e)) | Err(e) => Some(e),
                    Ok(None) => match stream.peer_addr() {
                        Ok(_) => None,
                        Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                            conn.socket = Some(Socket::Connecting(target, stream, rest));
                            return;
                        }
                        Err(e) => Some(e),
                    },
                };
                if let Some(e) = failed {
                    deregister(&self.poll, stream);
                    if rest.is_empty() {
                        return self.fail_socket(id, format!("connect: {e}"), None);
                    }
                    return self.connect_next(id, target, rest);
                }
                let _ = stream.set_nodelay(true);
                let stream = if target.tls {
                    match self.tls_stream(&target.host, stream) {
                        Ok(s) => s,
                        Err((e, stream)) => {
                            deregister(&self.poll, stream);
                            return self.fail_socket(id, e.to_string(), None);
                        }
                    }
                } else {
                    Stream::Plain(stream)
                };
                let ws_config = WebSocketConfig::default()
                    .max_message_size(Some(self.config.max_message_size))
                    .max_frame_size(Some(self.config.max_message_size))
                    .max_write_buffer_size(self.config.max_write_buffer);
                let r = tungstenite::client::client_with_config(
                    target.url.as_str(),
                    stream,
                    Some(ws_config),
                );
                self.on_handshake(id, r, now);
            }
            Some(Socket::Handshaking(mid)) => {
                let r = mid.handshake();
                self.on_handshake(id, r, now);
            }
            Some(Socket::Open(ws)) => {
                conn.socket = Some(Socket::Open(ws));
                self.read_open(id, now);
            }
        }
    }

    fn on_handshake(
        &mut self,
        id: u64,
        r: Result<
            (WebSocket<Stream>, tungstenite::handshake::client::Response),
            HandshakeError<ClientHandshake<Stream>>,
        >,
        now: Instant,
    ) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        match r {
            Ok((ws, _response)) => {
                conn.socket = Some(Socket::Open(Box::new(ws)));
                conn.machine.open(now);
                self.drive(id);
                // Data may have arrived together with the upgrade response.
                self.read_open(id, now);
            }
            Err(HandshakeError::Interrupted(mid)) => {
                conn.socket = Some(Socket::Handshaking(Box::new(mid)));
            }
            Err(HandshakeError::Failure(e)) => {
                // The stream is owned by the failed handshake and is dropped with it; mio
                // deregisters closed sockets from epoll automatically.
                self.fail_socket(id, format!("handshake: {e}"), None);
            }
        }
    }

    fn read_open(&mut self, id: u64, now: Instant) {
        loop {
            let Some(conn) = self.conns.get_mut(&id) else {
                return;
            };
            let Some(Socket::Open(ws)) = conn.socket.as_mut() else {
                return;
            };
            match ws.read() {
                Ok(Message::Text(t)) => {
                    self.frames_in += 1;
                    conn.machine.text(id, t.as_str(), now);
                    self.drive(id);
                }
                Ok(Message::Binary(b)) => {
                    self.frames_in += 1;
                    conn.machine.binary(id, &b, now);
                    self.drive(id);
                }
                Ok(Message::Close(frame)) => {
                    conn.close_code = frame.map(|f| u16::from(f.code));
                }
                Ok(_) => {} // ping/pong/raw frames: tungstenite answers pings itself
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Flush anything queued (pongs, close replies).
                    return match flush_open(&self.poll, id, conn) {
                        Ok(()) => {}
                        Err(e) => {
                            let code = conn.close_code;
                            self.fail_socket(id, e, code)
                        }
                    };
                }
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    let code = conn.close_code;
                    return self.fail_socket(id, String::new(), code);
                }
                Err(e) => {
                    let code = conn.close_code;
                    return self.fail_socket(id, e.to_string(), code);
                }
            }
        }
    }

    /// The socket is gone: tell the machine (with the close code if the server sent one).
    fn fail_socket(&mut self, id: u64, error: String, code: Option<u16>) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if let Some(s) = conn.socket.take() {
            close_socket(&self.poll, s, 1000);
        }
        if !error.is_empty() {
            tracing::debug!(id, %error, "gateway socket failed");
            let _ = self.events.send(ControlEvent::SocketError { id, error });
        }
        conn.machine.closed(code, Instant::now());
        self.drive(id);
    }

    fn tls_stream(&mut self, host: &str, stream: TcpStream) -> Result<Stream, (Error, TcpStream)> {
        let config = match &self.tls {
            Some(c) => c.clone(),
            None => match tls_config(&self.config.extra_roots) {
                Ok(c) => {
                    self.tls = Some(c.clone());
                    c
                }
                Err(e) => return Err((e, stream)),
            },
        };
        let name = match rustls::pki_types::ServerName::try_from(host.to_string()) {
            Ok(n) => n,
            Err(_) => return Err((Error::InvalidUrl(host.into()), stream)),
        };
        match rustls::ClientConnection::new(config, name) {
            Ok(c) => Ok(Stream::Tls(Box::new(rustls::StreamOwned::new(c, stream)))),
            Err(e) => Err((e.into(), stream)),
        }
    }
}

/// rustls with exactly one provider (`ring`), chosen explicitly so no process-wide default is
/// needed, and the webpki roots.
fn tls_config(
    extra_roots: &[rustls::pki_types::CertificateDer<'static>],
) -> Result<Arc<rustls::ClientConfig>, Error> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for cert in extra_roots {
        roots.add(cert.clone())?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

fn deregister(poll: &Poll, mut stream: TcpStream) {
    let _ = poll.registry().deregister(&mut stream);
}

/// Best-effort close: queue a close frame, push what the kernel takes right now, drop the socket.
fn close_socket(poll: &Poll, socket: Socket, code: u16) {
    match socket {
        Socket::Resolving(_) => {}
        Socket::Connecting(_, s, _) => deregister(poll, s),
        Socket::Handshaking(mid) => {
            drop(mid);
        }
        Socket::Open(mut ws) => {
            let _ = ws.close(Some(CloseFrame {
                code: CloseCode::from(code),
                reason: "".into(),
            }));
            let _ = ws.flush();
            let _ = poll.registry().deregister(ws.get_mut().tcp());
        }
    }
}

/// CPU time (user, system) of the calling thread.
#[cfg(target_os = "linux")]
fn thread_cpu_time() -> (Duration, Duration) {
    // SAFETY: getrusage only writes into the zeroed struct we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage; RUSAGE_THREAD is supported on Linux.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    if rc != 0 {
        return (Duration::ZERO, Duration::ZERO);
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    (tv(usage.ru_utime), tv(usage.ru_stime))
}

/// CPU time of the calling thread: no per-thread rusage outside Linux, so the thread CPU clock
/// (macOS, the BSDs) gives user and system time together, reported as user time.
#[cfg(not(target_os = "linux"))]
fn thread_cpu_time() -> (Duration, Duration) {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer for the duration of the call.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return (Duration::ZERO, Duration::ZERO);
    }
    (
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32),
        Duration::ZERO,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = parse_url("wss://c-waw05.discord.media:8443/?v=8").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.tls),
            ("c-waw05.discord.media", 8443, true)
        );
        let t = parse_url("ws://[::1]:9000/?v=8").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.tls), ("::1", 9000, false));
        let t = parse_url("wss://gateway.discord.gg/?v=10&encoding=json").unwrap();
        assert_eq!(t.port, 443);
        assert!(parse_url("http://x/").is_err());
        assert!(parse_url("not a url").is_err());
    }

    #[test]
    fn tls_config_builds_with_ring() {
        tls_config(&[]).unwrap();
    }
}
