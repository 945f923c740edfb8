//! The control thread's loop: readiness, timers, commands, and the machines they drive.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use tungstenite::Message;
use tungstenite::protocol::WebSocketConfig;

use super::handle::Command;
use super::resolver::Resolver;
use super::socket::{Socket, Stream, Target, close_socket, deregister, parse_url, tls_config};
use super::upgrade::{Progress, Upgrade, UpgradeError};
use super::{
    BotId, ConnectionId, ControlConfig, ControlEvent, ControlHandler, ControlStats,
    HANDLER_TOKEN_BASE, SocketFailure, WAKER,
};
use crate::Error;
use crate::backoff::SplitMixJitter;
use crate::dave::DaveExtension;
use crate::main_gateway::{MAX_DISPATCH_LEN, MainGateway, MainGatewayConfig};
use crate::protocol::SpeakingFlags;
use crate::voice::{OutgoingFrame, Output, VoiceConfig, VoiceConnectRequest, VoiceGateway};

/// Read buffer of each websocket: voice messages are mostly under 300 bytes, and it grows for
/// a longer one (see where it is used, and [`super::upgrade`] for why it can be this small).
const WS_READ_BUFFER: usize = 1024;
/// Write buffer of each websocket (see where it is used).
const WS_WRITE_BUFFER: usize = 4 * 1024;

/// The sans-IO machine behind a connection.
pub(super) enum Machine {
    Voice(Box<VoiceGateway>),
    Bot(Box<MainGateway>),
}

/// What a machine asks of its socket.
pub(super) enum Io {
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
                    call: ConnectionId(id),
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

pub(super) struct Conn {
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
pub(super) fn flush_open(poll: &Poll, id: u64, conn: &mut Conn) -> Result<(), SocketFailure> {
    let Some(Socket::Open(ws)) = conn.socket.as_mut() else {
        return Ok(());
    };
    let pending = match ws.flush() {
        Ok(()) => false,
        Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => true,
        Err(e) => return Err(SocketFailure::WebSocket(Box::new(e))),
    };
    if pending != conn.write_interest {
        let interest = if pending {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        poll.registry()
            .reregister(ws.get_mut().tcp(), Token(id as usize), interest)
            .map_err(SocketFailure::Connect)?;
        conn.write_interest = pending;
    }
    Ok(())
}

pub(super) struct EventLoop {
    poll: Poll,
    commands: Receiver<Command>,
    events: Sender<ControlEvent>,
    events_dropped: u64,
    conns: HashMap<u64, Conn>,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    config: ControlConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
    resolver: Resolver,
    frames_in: u64,
    frames_out: u64,
    /// Shared with the [`super::ControlThread`] handle, so IDs made here never collide.
    next_id: Arc<AtomicU64>,
    /// Taken out while one of its methods runs (it gets `&mut self` through the context).
    handler: Option<Box<dyn ControlHandler>>,
    /// Whether events go to the handler (set once, at start) rather than the queue.
    has_handler: bool,
    /// Events waiting for the handler.
    pending: VecDeque<ControlEvent>,
    /// Handler socket keys that were readable this round (kept to reuse its capacity).
    readable: Vec<usize>,
}

impl EventLoop {
    pub(super) fn new(
        poll: Poll,
        commands: Receiver<Command>,
        events: Sender<ControlEvent>,
        config: ControlConfig,
        resolver: Resolver,
        next_id: Arc<AtomicU64>,
        handler: Option<Box<dyn ControlHandler>>,
    ) -> Self {
        EventLoop {
            poll,
            commands,
            events,
            events_dropped: 0,
            conns: HashMap::new(),
            timers: BinaryHeap::new(),
            config,
            tls: None,
            resolver,
            frames_in: 0,
            frames_out: 0,
            next_id,
            has_handler: handler.is_some(),
            handler,
            pending: VecDeque::new(),
            readable: Vec::new(),
        }
    }

    pub(super) fn run(&mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            let now = Instant::now();
            let handler_due = self.handler.as_ref().and_then(|h| h.poll_timeout());
            let due = match (self.timers.peek().map(|Reverse((t, _))| *t), handler_due) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let timeout = due.map(|t| t.saturating_duration_since(now));
            if let Err(e) = self.poll.poll(&mut events, timeout)
                && e.kind() != io::ErrorKind::Interrupted
            {
                tracing::error!(error = %e, "control thread poll failed; stopping");
                return;
            }
            let mut woken = false;
            self.readable.clear();
            for ev in events.iter() {
                let token = ev.token();
                if token == WAKER {
                    woken = true;
                } else if token.0 >= HANDLER_TOKEN_BASE {
                    self.readable.push(token.0 - HANDLER_TOKEN_BASE);
                } else {
                    self.on_socket_ready(token.0 as u64);
                }
            }
            if !self.drain_commands() {
                return;
            }
            self.fire_timers();
            self.run_handler(woken);
        }
    }

    /// Gives the handler its readiness, wake-up, timer and every pending event, in that order,
    /// and repeats for events its own actions caused.
    fn run_handler(&mut self, woken: bool) {
        let Some(mut handler) = self.handler.take() else {
            return;
        };
        let readable = std::mem::take(&mut self.readable);
        {
            let mut ctl = ControlContext { lp: self };
            for &key in &readable {
                handler.on_readable(key, &mut ctl);
            }
            if woken {
                handler.on_wake(&mut ctl);
            }
            let now = Instant::now();
            if handler.poll_timeout().is_some_and(|t| t <= now) {
                handler.on_timeout(now, &mut ctl);
            }
            while let Some(event) = ctl.lp.pending.pop_front() {
                handler.on_event(event, &mut ctl);
            }
        }
        self.readable = readable;
        self.handler = Some(handler);
    }

    fn emit(&mut self, event: ControlEvent) {
        if self.has_handler {
            self.pending.push_back(event);
        } else if self.events.try_send(event).is_err() {
            self.events_dropped += 1;
        }
    }

    fn fresh_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn connect_voice(
        &mut self,
        id: u64,
        request: VoiceConnectRequest,
        config: VoiceConfig,
        dave: Option<Box<dyn DaveExtension>>,
    ) {
        let jitter = Box::new(SplitMixJitter::from_entropy());
        let mut m = match dave {
            Some(d) => VoiceGateway::with_dave(request, config, jitter, d),
            None => VoiceGateway::new(request, config, jitter),
        };
        m.start(Instant::now());
        self.add(id, Machine::Voice(Box::new(m)));
    }

    fn connect_bot(&mut self, id: u64, config: MainGatewayConfig) {
        let jitter = SplitMixJitter::from_entropy();
        let mut m = MainGateway::new(config, Box::new(jitter));
        m.start(Instant::now());
        self.add(id, Machine::Bot(Box::new(m)));
    }

    fn voice(&mut self, id: u64) -> Option<&mut VoiceGateway> {
        match self.conns.get_mut(&id) {
            Some(Conn {
                machine: Machine::Voice(m),
                ..
            }) => Some(m),
            _ => None,
        }
    }

    fn discovered(&mut self, id: u64, ip: String, port: u16) -> Result<(), Error> {
        let now = Instant::now();
        let result = match self.voice(id) {
            Some(m) => m.set_discovered_address(ip, port, now).map_err(Error::from),
            None => Err(Error::UnknownConnection(id)),
        };
        self.drive(id);
        result
    }

    fn speaking(&mut self, id: u64, flags: SpeakingFlags) {
        if let Some(m) = self.voice(id) {
            m.set_speaking(flags);
        }
        self.drive(id);
    }

    fn bot_send(&mut self, id: u64, payload: String) -> Result<(), Error> {
        let sent = match self.conns.get_mut(&id) {
            Some(Conn {
                machine: Machine::Bot(m),
                ..
            }) => {
                m.send_raw(payload);
                Ok(())
            }
            _ => Err(Error::UnknownConnection(id)),
        };
        self.drive(id);
        sent
    }

    fn disconnect(&mut self, id: u64) {
        match self.conns.get_mut(&id).map(|c| &mut c.machine) {
            Some(Machine::Voice(m)) => m.disconnect(),
            Some(Machine::Bot(m)) => m.disconnect(),
            None => {}
        }
        self.drive(id);
    }

    /// Returns false on shutdown.
    fn drain_commands(&mut self) -> bool {
        while let Ok(cmd) = self.commands.try_recv() {
            match cmd {
                Command::Connect {
                    id,
                    request,
                    config,
                    dave,
                } => self.connect_voice(id, *request, *config, dave),
                Command::ConnectBot { id, config } => self.connect_bot(id, *config),
                Command::Discovered { id, ip, port } => {
                    if let Err(e) = self.discovered(id, ip, port) {
                        tracing::debug!(id, error = %e, "discovery result not used");
                    }
                }
                Command::Speaking { id, flags } => self.speaking(id, flags),
                Command::BotSend { id, payload } => {
                    if let Err(e) = self.bot_send(id, payload) {
                        tracing::debug!(id, error = %e, "op not sent");
                    }
                }
                Command::Disconnect { id } => self.disconnect(id),
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
            events_dropped: self.events_dropped,
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
                Io::Event(e) => self.emit(e),
                Io::Send(frame) => {
                    let msg = match frame {
                        OutgoingFrame::Text(t) => Message::text(t),
                        OutgoingFrame::Binary(b) => Message::binary(b),
                    };
                    match conn.socket.as_mut() {
                        Some(Socket::Open(ws)) => {
                            self.frames_out += 1;
                            if let Err(e) = ws.write(msg) {
                                self.fail_socket(
                                    id,
                                    Some(SocketFailure::WebSocket(Box::new(e))),
                                    None,
                                );
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
                        Err(e) => self.fail_socket(id, Some(SocketFailure::Url(Box::new(e))), None),
                    }
                }
            }
        }
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if let Err(e) = flush_open(&self.poll, id, conn) {
            return self.fail_socket(id, Some(e), None);
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
            Err(source) => {
                let host = target.host;
                self.fail_socket(id, Some(SocketFailure::Resolve { host, source }), None)
            }
        }
    }

    /// Start a TCP connect to the first of `addrs` that accepts one; the rest are kept for
    /// when it fails.
    fn connect_next(&mut self, id: u64, target: Target, mut addrs: Vec<SocketAddr>) {
        let mut last_error = SocketFailure::NoAddress;
        while !addrs.is_empty() {
            let addr = addrs.remove(0);
            let mut stream = match TcpStream::connect(addr) {
                Ok(s) => s,
                Err(e) => {
                    last_error = SocketFailure::Connect(e);
                    continue;
                }
            };
            let interest = Interest::READABLE | Interest::WRITABLE;
            if let Err(e) = self
                .poll
                .registry()
                .register(&mut stream, Token(id as usize), interest)
            {
                last_error = SocketFailure::Connect(e);
                continue;
            }
            let Some(conn) = self.conns.get_mut(&id) else {
                return deregister(&self.poll, stream);
            };
            conn.socket = Some(Socket::Connecting(target, stream, addrs));
            conn.write_interest = true;
            return;
        }
        self.fail_socket(id, Some(last_error), None)
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
                // The main gateway's dispatches (a big guild's GUILD_CREATE) are far larger
                // than anything the voice gateway sends.
                let max_message = match conn.machine {
                    Machine::Voice(_) => self.config.max_message_size,
                    Machine::Bot(_) => self.config.max_message_size.max(MAX_DISPATCH_LEN),
                };
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
                        return self.fail_socket(id, Some(SocketFailure::Connect(e)), None);
                    }
                    return self.connect_next(id, target, rest);
                }
                let _ = stream.set_nodelay(true);
                let stream = if target.tls {
                    match self.tls_stream(&target.host, stream) {
                        Ok(s) => s,
                        Err((e, stream)) => {
                            deregister(&self.poll, stream);
                            return self.fail_socket(
                                id,
                                Some(SocketFailure::Tls(Box::new(e))),
                                None,
                            );
                        }
                    }
                } else {
                    Stream::Plain(stream)
                };
                // tungstenite reserves `read_buffer_size` per connection up front (128 KiB by
                // default: 128 MB for 1,000 calls, most of a call's memory). Voice messages are
                // small, and the buffer still grows for a large one (a GUILD_CREATE).
                let ws_config = WebSocketConfig::default()
                    .read_buffer_size(WS_READ_BUFFER)
                    .write_buffer_size(WS_WRITE_BUFFER)
                    .max_message_size(Some(max_message))
                    .max_frame_size(Some(max_message))
                    .max_write_buffer_size(self.config.max_write_buffer);
                let uri = target.url.parse::<tungstenite::http::Uri>();
                match uri
                    .map_err(|_| UpgradeError::NoHost)
                    .and_then(|uri| Upgrade::start(&uri, stream, ws_config))
                {
                    Ok(upgrade) => self.on_upgrade(id, upgrade.step(), now),
                    Err(e) => self.fail_socket(id, Some(SocketFailure::Upgrade(Box::new(e))), None),
                }
            }
            Some(Socket::Upgrading(upgrade)) => {
                self.on_upgrade(id, upgrade.step(), now);
            }
            Some(Socket::Open(ws)) => {
                conn.socket = Some(Socket::Open(ws));
                self.read_open(id, now);
            }
        }
    }

    fn on_upgrade(&mut self, id: u64, progress: Progress, now: Instant) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        match progress {
            Progress::Open(ws) => {
                conn.socket = Some(Socket::Open(ws));
                conn.machine.open(now);
                self.drive(id);
                // Data may have arrived together with the upgrade response.
                self.read_open(id, now);
            }
            Progress::Pending(upgrade) => {
                conn.socket = Some(Socket::Upgrading(upgrade));
            }
            Progress::Failed(e) => {
                // The stream was owned by the upgrade and is dropped with it; mio deregisters
                // closed sockets from epoll automatically.
                self.fail_socket(id, Some(SocketFailure::Upgrade(Box::new(e))), None);
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
                            self.fail_socket(id, Some(e), code)
                        }
                    };
                }
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    let code = conn.close_code;
                    return self.fail_socket(id, None, code);
                }
                Err(e) => {
                    let code = conn.close_code;
                    return self.fail_socket(id, Some(SocketFailure::WebSocket(Box::new(e))), code);
                }
            }
        }
    }

    /// The socket is gone: tell the machine (with the close code if the server sent one).
    fn fail_socket(&mut self, id: u64, error: Option<SocketFailure>, code: Option<u16>) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if let Some(s) = conn.socket.take() {
            close_socket(&self.poll, s, 1000);
        }
        conn.machine.closed(code, Instant::now());
        if let Some(error) = error {
            tracing::debug!(id, %error, "gateway socket failed");
            self.emit(ControlEvent::SocketError { id, error });
        }
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

/// CPU time (user, system) of the calling thread.
#[cfg(target_os = "linux")]
pub(super) fn thread_cpu_time() -> (Duration, Duration) {
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
pub(super) fn thread_cpu_time() -> (Duration, Duration) {
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

/// What a [`ControlHandler`] can do to the control thread's connections, from inside its
/// methods: the same verbs as [`super::ControlThread`], carried out at once, with no queue.
pub struct ControlContext<'a> {
    lp: &'a mut EventLoop,
}

impl std::fmt::Debug for ControlContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlContext")
            .field("connections", &self.lp.conns.len())
            .finish_non_exhaustive()
    }
}

impl ControlContext<'_> {
    /// Start a voice connection (DAVE as `config` says); its events carry the returned ID.
    pub fn connect(&mut self, request: VoiceConnectRequest, config: VoiceConfig) -> ConnectionId {
        let id = self.lp.fresh_id();
        self.lp.connect_voice(id, request, config, None);
        ConnectionId(id)
    }

    /// Feed back the result of IP discovery; an error when the call is gone or asked for none.
    pub fn set_discovered_address(
        &mut self,
        call: ConnectionId,
        ip: String,
        port: u16,
    ) -> Result<(), Error> {
        self.lp.discovered(call.0, ip, port)
    }

    /// Ask for Speaking on or off.
    pub fn set_speaking(&mut self, call: ConnectionId, flags: SpeakingFlags) {
        self.lp.speaking(call.0, flags);
    }

    /// Close a call's voice connection (it ends with [`crate::voice::EndReason::Left`]).
    pub fn disconnect(&mut self, call: ConnectionId) {
        self.lp.disconnect(call.0);
    }

    /// Start a built-in main-gateway connection.
    pub fn connect_bot(&mut self, config: MainGatewayConfig) -> BotId {
        let id = self.lp.fresh_id();
        self.lp.connect_bot(id, config);
        BotId(id)
    }

    /// Send a raw JSON payload on a bot's socket (op 4); an error for an unknown bot. While the
    /// bot is reconnecting the machine queues it.
    pub fn bot_send(&mut self, bot: BotId, payload: String) -> Result<(), Error> {
        self.lp.bot_send(bot.0, payload)
    }

    /// Close a bot's main-gateway connection.
    pub fn disconnect_bot(&mut self, bot: BotId) {
        self.lp.disconnect(bot.0);
    }

    /// Watch `fd` for readability; [`ControlHandler::on_readable`] gets `key`.
    pub fn register(&mut self, fd: std::os::fd::RawFd, key: usize) -> io::Result<()> {
        self.lp.poll.registry().register(
            &mut mio::unix::SourceFd(&fd),
            Token(HANDLER_TOKEN_BASE + key),
            Interest::READABLE,
        )
    }

    /// Stop watching `fd`.
    pub fn deregister(&mut self, fd: std::os::fd::RawFd) -> io::Result<()> {
        self.lp
            .poll
            .registry()
            .deregister(&mut mio::unix::SourceFd(&fd))
    }

    /// The loop's counters.
    pub fn stats(&self) -> ControlStats {
        self.lp.stats()
    }
}
