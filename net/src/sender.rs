//! The sender: ONE thread serves every call. Each tick `n` it takes the frames due for `n` from
//! every call's [`FrameReceiver`], builds and seals the packets into per-call preallocated
//! buffers, waits for the absolute deadline `grid.deadline(n)` ([`Pacer`]) and sends the whole
//! batch at once ([`BackendKind::IoUring`] or [`BackendKind::Portable`]).
//!
//! * Frames whose tick has already passed are sent at once (before waiting) and counted late.
//! * An [`FrameKind::EndOfStream`] frame starts five `F8 FF FE` silence frames on consecutive ticks,
//!   then [`SenderEvent::SpeakingStopped`]; the first audio frame after that (or ever) gives
//!   [`SenderEvent::SpeakingStarted`] when it is built — up to one tick before it is sent.
//! * Calls are added, removed and re-keyed through a bounded lock-free command queue. Everything is
//!   built on the caller's side; removed calls and replaced keys travel back over another queue
//!   and are dropped there. A re-key applies between two ticks, i.e. at a frame boundary.
//! * Send errors are counted per call and reported as [`SenderEvent::SendFailed`]; the thread
//!   and other calls carry on.
//!
//! After start-up the thread does not allocate, lock or make syscalls other than the sends and the
//! pacing sleep (`tests/sender_no_alloc.rs` proves the allocation part).
//!
//! ```no_run
//! use std::{net::UdpSocket, sync::Arc, time::Instant};
//! use quaver_engine::{EncodedFrame, Grid};
//! use quaver_net::crypto::{EncryptionMode, SecretKey};
//! use quaver_net::{CallConfig, Sender, SenderConfig, SenderEvent};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let grid = Grid::new(Instant::now()); // shared with the mixer
//! let mut sender = Sender::spawn(SenderConfig::new(grid))?;
//! println!("backend {:?}, pacing {:?}", sender.backend(), sender.pacing());
//!
//! // Per call, after Ready (ssrc, ip:port), IP discovery and the Session Description:
//! let socket = UdpSocket::bind("0.0.0.0:0")?;
//! socket.connect("127.0.0.1:50000")?;
//! let (mut frames_tx, frames_rx) = rtrb::RingBuffer::<EncodedFrame>::new(16); // mixer side keeps frames_tx
//! let call = sender.add_call(CallConfig {
//!     ssrc: 1234,
//!     socket: Arc::new(socket),
//!     mode: EncryptionMode::Aes256GcmRtpSize,
//!     key: SecretKey::from_slice(&[0u8; 32])?,
//!     frames: frames_rx,
//! })?;
//! # let _ = &mut frames_tx;
//!
//! // Control loop: forward events to the gateway (Speaking 1 / 0), watch errors.
//! while let Some(event) = sender.poll_event() {
//!     match event {
//!         SenderEvent::SpeakingStarted { call } => { /* gateway: op 5 speaking 1 */ }
//!         SenderEvent::SpeakingStopped { call } => { /* gateway: op 5 speaking 0 */ }
//!         other => eprintln!("{other:?}"),
//!     }
//! }
//! // New Session Description: switch at the next frame boundary.
//! sender.rekey(call, EncryptionMode::XChaCha20Poly1305RtpSize, &SecretKey::new([1; 32]))?;
//! let p99 = sender.stats().lateness_ns.value_at_quantile(0.99);
//! # let _ = p99;
//! # Ok(())
//! # }
//! ```

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use quaver_engine::{FrameKind, FrameReceiver, Grid};
use thiserror::Error;

use crate::crypto::{EncryptionMode, SEAL_OVERHEAD, Sealer, SecretKey};
use crate::pacer::{self, Pacer, PacingMode, SchedulingRequest};
use crate::rtp::{
    HEADER_LEN, MAX_PACKET, RtpStream, SILENCE_FRAME, SILENCE_FRAMES_AT_STOP, TIMESTAMP_STEP,
};
use crate::stats::SenderStats;
use crate::transmit::{BackendChoice, BackendKind, Datagram, Transmitter};

/// Why the sender refused a request.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SenderError {
    /// The command queue is full; try again after the next tick.
    #[error("sender command queue is full")]
    QueueFull,
    /// The call table is full ([`SenderConfig::max_calls`]).
    #[error("sender is at its call limit ({0})")]
    TooManyCalls(usize),
    /// The call's socket is not connected to the voice server.
    #[error("call socket must be connected to the voice server: {0}")]
    NotConnected(std::io::Error),
    /// The sender thread has stopped.
    #[error("sender thread has stopped")]
    Stopped,
    /// No call with this id was added (or it was removed already).
    #[error("unknown call {0:?}")]
    UnknownCall(CallId),
    /// The requested backend is not available.
    #[error("transmit backend unavailable: {0}")]
    Backend(std::io::Error),
}

/// Identifies a call inside the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallId(pub u64);

/// Something the sender thread reports, as a value on the event queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SenderEvent {
    /// The call's first audio frame after idle was built: send Speaking 1 now.
    SpeakingStarted {
        /// The call.
        call: CallId,
    },
    /// The call's five silence frames went out: send Speaking 0.
    SpeakingStopped {
        /// The call.
        call: CallId,
    },
    /// A send failed (e.g. ENOBUFS, EHOSTUNREACH, a closed socket); the packet is lost.
    SendFailed {
        /// The call.
        call: CallId,
        /// The OS error number.
        errno: i32,
        /// Failed sends of this call so far.
        total: u64,
    },
    /// The call's key has used all 2^32 nonces; its packets are dropped until it is re-keyed.
    NonceExhausted {
        /// The call.
        call: CallId,
    },
    /// The call was added.
    CallAdded {
        /// The call.
        call: CallId,
    },
    /// The call was removed.
    CallRemoved {
        /// The call.
        call: CallId,
        /// Packets it sent.
        packets: u64,
        /// Its failed sends.
        send_errors: u64,
    },
    /// A re-key took effect; packets from now on use the new key.
    Rekeyed {
        /// The call.
        call: CallId,
    },
}

/// Everything the sender needs to send one call's packets.
#[derive(Debug)]
pub struct CallConfig {
    /// Our SSRC from Ready.
    pub ssrc: u32,
    /// The voice UDP socket, connected to the server (`connect(ip:port)` from Ready). The control
    /// side keeps its own `Arc` for discovery, keepalives and receiving.
    pub socket: Arc<UdpSocket>,
    /// Mode from the Session Description.
    pub mode: EncryptionMode,
    /// Key from the Session Description.
    pub key: SecretKey,
    /// The call's frame queue from the engine.
    pub frames: FrameReceiver,
}

/// Sender settings.
#[derive(Debug, Clone)]
pub struct SenderConfig {
    /// The shared 20 ms grid.
    pub grid: Grid,
    /// Which transmit backend.
    pub backend: BackendChoice,
    /// What to ask of the scheduler.
    pub scheduling: SchedulingRequest,
    /// Spin window before each deadline.
    pub spin: Duration,
    /// Size of the call table (preallocated).
    pub max_calls: usize,
    /// Capacity of the command queue.
    pub command_capacity: usize,
    /// Capacity of the event queue.
    pub event_capacity: usize,
    /// Called on the sender thread once start-up is done, right before the first tick (for
    /// instrumentation such as the allocation test, or CPU pinning).
    pub on_thread_start: Option<fn()>,
    /// Called on the sender thread when the tick loop has ended, before tear-down.
    pub on_thread_exit: Option<fn()>,
}

impl SenderConfig {
    /// Defaults on `grid`: Auto backend, FIFO if allowed, 200 µs spin, 1,024 calls.
    pub fn new(grid: Grid) -> Self {
        Self {
            grid,
            backend: BackendChoice::Auto,
            scheduling: SchedulingRequest::default(),
            spin: pacer::DEFAULT_SPIN,
            max_calls: 1024,
            command_capacity: 256,
            event_capacity: 4096,
            on_thread_start: None,
            on_thread_exit: None,
        }
    }
}

enum Command {
    Add(Box<Call>),
    Remove(CallId),
    Rekey(CallId, Box<Sealer>),
}

enum Returned {
    #[allow(dead_code)] // held only so that it is dropped on the control side
    Call(Box<Call>),
    #[allow(dead_code)] // held only so that it is dropped on the control side
    Sealer(Box<Sealer>),
}

struct Call {
    id: CallId,
    fd: std::os::fd::RawFd,
    // Keeps the descriptor open while the thread sends on it.
    _socket: Arc<UdpSocket>,
    frames: FrameReceiver,
    out: Outgoing,
    speaking: bool,
    silence_left: u8,
    stop_after_send: bool,
    packets: u64,
    send_errors: u64,
}

/// The packet being built for a call, apart from its frame queue so both can be borrowed at once.
struct Outgoing {
    rtp: RtpStream,
    /// The grid tick and RTP timestamp of the call's first packet. Timestamps follow the grid
    /// from there, so a gap (a stalled mixer, a pause between stretches of audio) shows as a
    /// jump in the timestamp, as in any real-time RTP stream, instead of every later packet
    /// looking late to the receiver's jitter buffer.
    anchor: Option<(u64, u32)>,
    /// The tick of the last packet, so timestamps never go backwards.
    last_tick: Option<u64>,
    sealer: Box<Sealer>,
    len: usize,
    buf: [u8; MAX_PACKET],
}

impl Call {
    fn build(config: CallConfig, id: CallId) -> Result<Box<Self>, SenderError> {
        config
            .socket
            .peer_addr()
            .map_err(SenderError::NotConnected)?;
        // The blocking mode is left alone (the control side may read with timeouts): every send
        // passes MSG_DONTWAIT instead.
        Ok(Box::new(Self {
            id,
            fd: config.socket.as_raw_fd(),
            _socket: config.socket,
            frames: config.frames,
            out: Outgoing {
                rtp: RtpStream::new(config.ssrc),
                anchor: None,
                last_tick: None,
                sealer: Box::new(Sealer::new(config.mode, &config.key)),
                len: 0,
                buf: [0; MAX_PACKET],
            },
            speaking: false,
            silence_left: 0,
            stop_after_send: false,
            packets: 0,
            send_errors: 0,
        }))
    }
}

impl Outgoing {
    /// Seals `payload` as the packet of grid tick `tick` into `buf`. False when the key is
    /// exhausted.
    fn seal(&mut self, payload: Option<&[u8]>, tick: u64) -> bool {
        let tick = self.last_tick.map_or(tick, |last| tick.max(last + 1));
        let (anchor_tick, anchor_timestamp) =
            *self.anchor.get_or_insert((tick, self.rtp.timestamp));
        let frames_since = (tick - anchor_tick) as u32;
        let timestamp = anchor_timestamp.wrapping_add(frames_since.wrapping_mul(TIMESTAMP_STEP));
        let payload = payload.unwrap_or(&SILENCE_FRAME);
        // Opus frames are at most 1,275 bytes, so header + payload + overhead fits MAX_PACKET;
        // longer input is cut rather than allowed to fail.
        let len = payload.len().min(MAX_PACKET - HEADER_LEN - SEAL_OVERHEAD);
        let _ =
            crate::rtp::write_header(&mut self.buf, self.rtp.sequence, timestamp, self.rtp.ssrc);
        self.buf[HEADER_LEN..HEADER_LEN + len].copy_from_slice(&payload[..len]);
        match self.sealer.seal(&mut self.buf, HEADER_LEN, len) {
            Ok(n) => {
                self.len = n;
                self.rtp.sequence = self.rtp.sequence.wrapping_add(1);
                self.last_tick = Some(tick);
                true
            }
            Err(_) => false,
        }
    }
}

/// What [`SenderCore::build`] should take from the queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Only frames whose tick is before `n` (late ones).
    Late,
    /// One frame due at or before `n`, or a silence frame.
    OnTime,
}

/// The sender's per-tick work without the thread and the clock: build, seal and send one batch.
/// The thread drives it; benches drive it directly.
pub struct SenderCore {
    grid: Grid,
    // Boxed: a call's packet buffer must keep its address while io_uring reads it even when the
    // table is reordered, and calls cross the command queues as one pointer.
    #[allow(clippy::vec_box)]
    calls: Vec<Box<Call>>,
    max_calls: usize,
    tx: Transmitter,
    batch: Vec<Datagram>,
    batch_calls: Vec<u32>,
    batch_due: Vec<u64>,
    results: Vec<i32>,
    sent_at: Vec<Instant>,
    stats: Box<SenderStats>,
    events: rtrb::Producer<SenderEvent>,
    next_id: u64,
}

impl std::fmt::Debug for SenderCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SenderCore")
            .field("calls", &self.calls.len())
            .field("backend", &self.tx.kind())
            .finish()
    }
}

impl SenderCore {
    /// A core for up to `max_calls` calls on `grid`, with its event queue.
    pub fn new(
        grid: Grid,
        backend: BackendChoice,
        max_calls: usize,
        event_capacity: usize,
    ) -> Result<(Self, rtrb::Consumer<SenderEvent>), SenderError> {
        let tx = Transmitter::new(backend, max_calls).map_err(SenderError::Backend)?;
        let (events, events_rx) = rtrb::RingBuffer::new(event_capacity.max(1));
        let now = Instant::now();
        Ok((
            Self {
                grid,
                calls: Vec::with_capacity(max_calls),
                max_calls,
                tx,
                batch: Vec::with_capacity(max_calls),
                batch_calls: Vec::with_capacity(max_calls),
                batch_due: Vec::with_capacity(max_calls),
                results: vec![0; max_calls],
                sent_at: vec![now; max_calls],
                stats: Box::new(SenderStats::new()),
                events,
                next_id: 0,
            },
            events_rx,
        ))
    }

    /// The backend in use.
    pub fn backend(&self) -> BackendKind {
        self.tx.kind()
    }

    /// Number of calls.
    pub fn call_count(&self) -> usize {
        self.calls.len()
    }

    /// Adds a call directly (for benches and custom drivers; the thread uses commands).
    pub fn add_call(&mut self, config: CallConfig) -> Result<CallId, SenderError> {
        if self.calls.len() >= self.max_calls {
            return Err(SenderError::TooManyCalls(self.max_calls));
        }
        let id = CallId(self.next_id);
        self.next_id += 1;
        self.calls.push(Call::build(config, id)?);
        Ok(id)
    }

    /// Statistics recorded so far.
    pub fn stats(&self) -> &SenderStats {
        &self.stats
    }

    /// Runs tick `n` without waiting: late frames, then the tick's frames, all sent at once.
    /// Returns the packets sent.
    pub fn run_tick(&mut self, n: u64) -> usize {
        let mut sent = self.send_late(n);
        let started = Instant::now();
        self.build(n, Pass::OnTime);
        sent += self.flush(started);
        self.stats.ticks += 1;
        sent
    }

    /// Sends frames whose tick is before `n`, in rounds of at most one per call, bounded so a
    /// huge backlog cannot hold up tick `n` for long.
    fn send_late(&mut self, n: u64) -> usize {
        let mut sent = 0;
        for _ in 0..4 {
            let started = Instant::now();
            if self.build(n, Pass::Late) == 0 {
                break;
            }
            self.stats.late_frames += self.batch.len() as u64;
            sent += self.flush(started);
        }
        sent
    }

    /// Fills the batch for tick `n`; returns its size.
    fn build(&mut self, n: u64, pass: Pass) -> usize {
        self.batch.clear();
        self.batch_calls.clear();
        self.batch_due.clear();
        for (index, call) in self.calls.iter_mut().enumerate() {
            let mut due = n;
            let mut payload_ready = false;
            let mut has_packet = false;
            if let Ok(frame) = call.frames.peek() {
                let take = match pass {
                    Pass::Late => frame.tick < n,
                    Pass::OnTime => frame.tick <= n,
                };
                if take {
                    due = frame.tick;
                    match frame.kind {
                        FrameKind::Audio => payload_ready = true,
                        FrameKind::EndOfStream => {
                            if call.speaking {
                                call.silence_left = SILENCE_FRAMES_AT_STOP;
                            }
                            let _ = call.frames.pop();
                        }
                    }
                }
            }
            if payload_ready {
                let Ok(chunk) = call.frames.read_chunk(1) else {
                    continue;
                };
                let (first, second) = chunk.as_slices();
                // Sealing copies the Opus bytes straight out of the ring slot: no frame copy.
                let ok = match first.first().or(second.first()) {
                    Some(frame) => call.out.seal(Some(frame.opus()), due),
                    None => false,
                };
                chunk.commit_all();
                if !ok {
                    push_event(
                        &mut self.events,
                        &mut self.stats,
                        SenderEvent::NonceExhausted { call: call.id },
                    );
                    continue;
                }
                call.silence_left = 0;
                call.stop_after_send = false;
                if !call.speaking {
                    call.speaking = true;
                    push_event(
                        &mut self.events,
                        &mut self.stats,
                        SenderEvent::SpeakingStarted { call: call.id },
                    );
                }
                has_packet = true;
            } else if pass == Pass::OnTime && call.silence_left > 0 {
                if call.out.seal(None, n) {
                    call.silence_left -= 1;
                    if call.silence_left == 0 {
                        call.speaking = false;
                        call.stop_after_send = true;
                    }
                    has_packet = true;
                } else {
                    push_event(
                        &mut self.events,
                        &mut self.stats,
                        SenderEvent::NonceExhausted { call: call.id },
                    );
                    call.silence_left = 0;
                }
            }
            if has_packet {
                self.batch.push(Datagram {
                    fd: call.fd,
                    ptr: call.out.buf.as_ptr(),
                    len: call.out.len as u32,
                });
                self.batch_calls.push(index as u32);
                self.batch_due.push(due);
            }
        }
        self.batch.len()
    }

    /// Sends the batch now and books the results; `started` is when building began.
    fn flush(&mut self, started: Instant) -> usize {
        let count = self.batch.len();
        if count == 0 {
            return 0;
        }
        self.tx
            .send(&self.batch, &mut self.results, &mut self.sent_at);
        let mut sent = 0;
        for i in 0..count {
            let call = &mut self.calls[self.batch_calls[i] as usize];
            let lateness =
                self.sent_at[i].saturating_duration_since(self.grid.deadline(self.batch_due[i]));
            self.stats
                .lateness_ns
                .saturating_record(lateness.as_nanos() as u64);
            let r = self.results[i];
            if r >= 0 {
                call.packets += 1;
                sent += 1;
            } else {
                call.send_errors += 1;
                self.stats.send_errors += 1;
                let event = SenderEvent::SendFailed {
                    call: call.id,
                    errno: -r,
                    total: call.send_errors,
                };
                push_event(&mut self.events, &mut self.stats, event);
            }
            if call.stop_after_send {
                call.stop_after_send = false;
                push_event(
                    &mut self.events,
                    &mut self.stats,
                    SenderEvent::SpeakingStopped { call: call.id },
                );
            }
        }
        self.stats.packets_sent += sent as u64;
        self.stats.batch_size.saturating_record(count as u64);
        self.stats
            .tick_work_ns
            .saturating_record(started.elapsed().as_nanos() as u64);
        sent
    }

    fn apply(&mut self, command: Command, garbage: &mut rtrb::Producer<Returned>) {
        match command {
            Command::Add(call) => {
                let id = call.id;
                if self.calls.len() < self.max_calls {
                    self.calls.push(call);
                    push_event(
                        &mut self.events,
                        &mut self.stats,
                        SenderEvent::CallAdded { call: id },
                    );
                } else {
                    // The control side checks the limit first; this only guards a race.
                    let _ = garbage.push(Returned::Call(call));
                }
            }
            Command::Remove(id) => {
                if let Some(pos) = self.calls.iter().position(|c| c.id == id) {
                    let call = self.calls.swap_remove(pos);
                    let event = SenderEvent::CallRemoved {
                        call: id,
                        packets: call.packets,
                        send_errors: call.send_errors,
                    };
                    let _ = garbage.push(Returned::Call(call));
                    push_event(&mut self.events, &mut self.stats, event);
                }
            }
            Command::Rekey(id, sealer) => {
                if let Some(call) = self.calls.iter_mut().find(|c| c.id == id) {
                    let old = std::mem::replace(&mut call.out.sealer, sealer);
                    let _ = garbage.push(Returned::Sealer(old));
                    push_event(
                        &mut self.events,
                        &mut self.stats,
                        SenderEvent::Rekeyed { call: id },
                    );
                } else {
                    let _ = garbage.push(Returned::Sealer(sealer));
                }
            }
        }
    }
}

fn push_event(
    events: &mut rtrb::Producer<SenderEvent>,
    stats: &mut SenderStats,
    event: SenderEvent,
) {
    if events.push(event).is_err() {
        stats.events_dropped += 1;
    }
}

/// Handle to the running sender thread (control side). Dropping it stops the thread.
pub struct Sender {
    commands: rtrb::Producer<Command>,
    events: rtrb::Consumer<SenderEvent>,
    garbage: rtrb::Consumer<Returned>,
    stats_full: rtrb::Consumer<Box<SenderStats>>,
    stats_free: rtrb::Producer<Box<SenderStats>>,
    totals: SenderStats,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    backend: BackendKind,
    pacing: PacingMode,
    next_id: u64,
    live: std::collections::HashSet<CallId>,
    max_calls: usize,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("backend", &self.backend)
            .field("pacing", &self.pacing)
            .field("calls", &self.live.len())
            .finish()
    }
}

/// Ticks between statistics hand-overs (one second).
const STATS_EVERY_TICKS: u64 = 50;
/// Statistics buffers in circulation besides the one being recorded.
const STATS_SPARES: usize = 3;

impl Sender {
    /// Starts the sender thread. Fails when the requested backend is unavailable; with
    /// [`BackendChoice::Auto`] it falls back to the portable path instead.
    pub fn spawn(config: SenderConfig) -> Result<Self, SenderError> {
        let (commands, commands_rx) = rtrb::RingBuffer::new(config.command_capacity.max(1));
        let (garbage_tx, garbage) = rtrb::RingBuffer::new(config.command_capacity.max(1));
        let (stats_full_tx, stats_full) = rtrb::RingBuffer::new(STATS_SPARES + 1);
        let (mut stats_free, stats_free_rx) = rtrb::RingBuffer::new(STATS_SPARES + 1);
        for _ in 0..STATS_SPARES {
            // The ring was just created with room for STATS_SPARES + 1 boxes.
            let _ = stats_free.push(Box::new(SenderStats::new()));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let thread_stop = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("quaver-sender".into())
            .spawn(move || {
                // Start-up: everything allocated here, before the first tick.
                let core = SenderCore::new(
                    config.grid,
                    config.backend,
                    config.max_calls,
                    config.event_capacity,
                );
                let (core, events_rx) = match core {
                    Ok(pair) => pair,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let pacing = pacer::configure_current_thread(config.scheduling);
                let pacer = Pacer::new(config.spin);
                let _ = ready_tx.send(Ok((events_rx, core.backend(), pacing)));
                let mut worker = Worker {
                    core,
                    pacer,
                    commands: commands_rx,
                    garbage: garbage_tx,
                    stats_full: stats_full_tx,
                    stats_free: stats_free_rx,
                    stop: thread_stop,
                    build_ahead: MIN_BUILD_AHEAD,
                    recent_build: Duration::ZERO,
                };
                if let Some(hook) = config.on_thread_start {
                    hook();
                }
                worker.run();
                if let Some(hook) = config.on_thread_exit {
                    hook();
                }
            })
            .map_err(SenderError::Backend)?;
        let (events, backend, pacing) = ready_rx.recv().map_err(|_| SenderError::Stopped)??;
        Ok(Self {
            commands,
            events,
            garbage,
            stats_full,
            stats_free,
            totals: SenderStats::new(),
            stop,
            thread: Some(thread),
            backend,
            pacing,
            next_id: 0,
            live: std::collections::HashSet::new(),
            max_calls: config.max_calls,
        })
    }

    /// The transmit backend in use.
    pub fn backend(&self) -> BackendKind {
        self.backend
    }

    /// The scheduling mode of the sender thread.
    pub fn pacing(&self) -> PacingMode {
        self.pacing
    }

    fn collect_garbage(&mut self) {
        while self.garbage.pop().is_ok() {}
    }

    fn command(&mut self, command: Command) -> Result<(), SenderError> {
        self.collect_garbage();
        if self.thread.as_ref().is_none_or(|t| t.is_finished()) {
            return Err(SenderError::Stopped);
        }
        self.commands
            .push(command)
            .map_err(|_| SenderError::QueueFull)
    }

    /// Adds a call; its frames are sent from the next tick on. The socket must be connected.
    pub fn add_call(&mut self, config: CallConfig) -> Result<CallId, SenderError> {
        if self.live.len() >= self.max_calls {
            return Err(SenderError::TooManyCalls(self.max_calls));
        }
        let id = CallId(self.next_id);
        let call = Call::build(config, id)?;
        self.command(Command::Add(call))?;
        self.next_id += 1;
        self.live.insert(id);
        Ok(id)
    }

    /// Removes a call (after the tick in progress); [`SenderEvent::CallRemoved`] confirms it.
    pub fn remove_call(&mut self, call: CallId) -> Result<(), SenderError> {
        if !self.live.contains(&call) {
            return Err(SenderError::UnknownCall(call));
        }
        self.command(Command::Remove(call))?;
        self.live.remove(&call);
        Ok(())
    }

    /// Switches a call to a new mode and key (a new Session Description) at the next frame
    /// boundary; [`SenderEvent::Rekeyed`] confirms it. The nonce counter starts afresh under the
    /// new key.
    pub fn rekey(
        &mut self,
        call: CallId,
        mode: EncryptionMode,
        key: &SecretKey,
    ) -> Result<(), SenderError> {
        if !self.live.contains(&call) {
            return Err(SenderError::UnknownCall(call));
        }
        let sealer = Box::new(Sealer::new(mode, key));
        self.command(Command::Rekey(call, sealer))
    }

    /// Calls currently added.
    pub fn call_count(&self) -> usize {
        self.live.len()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<SenderEvent> {
        self.events.pop().ok()
    }

    /// Statistics since start (merged from what the thread has handed over, about once a
    /// second).
    pub fn stats(&mut self) -> &SenderStats {
        while let Ok(mut s) = self.stats_full.pop() {
            self.totals.merge(&s);
            s.reset();
            // Boxes circulate between exactly these two rings, so there is always room.
            let _ = self.stats_free.push(s);
        }
        &self.totals
    }

    /// Stops the thread, waits for it and returns the final statistics.
    pub fn shutdown(mut self) -> SenderStats {
        self.stop_thread();
        self.stats().clone()
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.collect_garbage();
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

struct Worker {
    core: SenderCore,
    pacer: Pacer,
    commands: rtrb::Consumer<Command>,
    garbage: rtrb::Producer<Returned>,
    stats_full: rtrb::Producer<Box<SenderStats>>,
    stats_free: rtrb::Consumer<Box<SenderStats>>,
    stop: Arc<AtomicBool>,
    /// How long before a deadline the tick's packets are built. The mixer builds frame `n`
    /// only shortly before `deadline(n)`, so building right after the previous send would find
    /// it missing and send it a tick late.
    build_ahead: Duration,
    /// Recent worst build time (decaying), from which `build_ahead` follows.
    recent_build: Duration,
}

/// Bounds of the build-ahead time; the mixer's lead (`EngineConfig::min_lead`, 6 ms by
/// default) must stay above the upper bound's typical values.
const MIN_BUILD_AHEAD: Duration = Duration::from_micros(600);
const MAX_BUILD_AHEAD: Duration = Duration::from_millis(5);

impl Worker {
    fn run(&mut self) {
        let grid = self.core.grid;
        let mut n = grid.tick_at_or_after(Instant::now());
        while !self.stop.load(Ordering::Acquire) {
            // Commands apply between ticks: a re-key lands on a frame boundary. Each command
            // returns at most one object, so only take one when the return queue has room.
            while self.garbage.slots() > 0 {
                match self.commands.pop() {
                    Ok(c) => self.core.apply(c, &mut self.garbage),
                    Err(_) => break,
                }
            }
            self.core.send_late(n);
            let deadline = grid.deadline(n);
            self.pacer
                .sleep_until(deadline.checked_sub(self.build_ahead).unwrap_or(deadline));
            self.core.send_late(n);
            let started = Instant::now();
            if self.core.build(n, Pass::OnTime) > 0 {
                let work_before_wait = started.elapsed();
                self.recent_build = work_before_wait.max(self.recent_build.mul_f32(0.99));
                self.build_ahead = (self.recent_build * 2 + Duration::from_micros(300))
                    .clamp(MIN_BUILD_AHEAD, MAX_BUILD_AHEAD);
                self.pacer.wait_until(deadline);
                // Booked time is build + send, without the wait in between.
                let send_start = Instant::now();
                self.core.stats.wake_ns.saturating_record(
                    send_start.saturating_duration_since(deadline).as_nanos() as u64,
                );
                self.core.flush(
                    send_start
                        .checked_sub(work_before_wait)
                        .unwrap_or(send_start),
                );
            } else {
                // Nothing to send: no need for precision, so no spin.
                self.pacer.sleep_until(deadline);
            }
            self.core.stats.ticks += 1;
            if self.core.stats.ticks >= STATS_EVERY_TICKS {
                self.hand_over_stats();
            }
            n += 1;
            // Far behind (stalled thread, suspended VM): jump ahead rather than race through
            // every missed tick; queued frames for those ticks go out as late frames.
            let now_tick = grid.tick_at_or_after(Instant::now());
            if now_tick > n + 1 {
                n = now_tick - 1;
            }
        }
        self.hand_over_stats();
    }

    fn hand_over_stats(&mut self) {
        if self.stats_full.slots() == 0 {
            return;
        }
        if let Ok(fresh) = self.stats_free.pop() {
            let full = std::mem::replace(&mut self.core.stats, fresh);
            // Checked for room just above; the control side only ever pops from this ring.
            let _ = self.stats_full.push(full);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quaver_engine::EncodedFrame;

    fn core_with_call() -> (
        SenderCore,
        rtrb::Consumer<SenderEvent>,
        rtrb::Producer<EncodedFrame>,
        UdpSocket,
        CallId,
    ) {
        let grid = Grid::new(Instant::now());
        let (mut core, events) = SenderCore::new(grid, BackendChoice::Portable, 4, 64).unwrap(); // invariant: the portable backend always builds
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap(); // invariant: loopback bind
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap(); // invariant: loopback bind
        socket.connect(receiver.local_addr().unwrap()).unwrap(); // invariant: bound, loopback
        let (tx, rx) = rtrb::RingBuffer::new(16);
        let id = core
            .add_call(CallConfig {
                ssrc: 1,
                socket: Arc::new(socket),
                mode: EncryptionMode::Aes256GcmRtpSize,
                key: SecretKey::new([0; 32]),
                frames: rx,
            })
            .unwrap(); // invariant: below max_calls, socket connected
        (core, events, tx, receiver, id)
    }

    fn drain(events: &mut rtrb::Consumer<SenderEvent>) -> Vec<SenderEvent> {
        std::iter::from_fn(|| events.pop().ok()).collect()
    }

    #[test]
    fn ticks_frames_silence_and_speaking_events() {
        let (mut core, mut events, mut tx, _rx, id) = core_with_call();
        for t in [5, 6] {
            tx.push(EncodedFrame::from_packet(t, b"abc").expect("small packet"))
                .unwrap(); // invariant: small, room
        }
        tx.push(EncodedFrame::new(7, FrameKind::EndOfStream))
            .unwrap(); // invariant: room
        assert_eq!(core.run_tick(4), 0, "nothing due before tick 5");
        assert_eq!(core.run_tick(5), 1);
        assert_eq!(
            drain(&mut events),
            [SenderEvent::SpeakingStarted { call: id }]
        );
        assert_eq!(core.run_tick(6), 1);
        for t in 7..12 {
            assert_eq!(core.run_tick(t), 1, "silence frame at tick {t}");
            let stopped = drain(&mut events).contains(&SenderEvent::SpeakingStopped { call: id });
            assert_eq!(
                stopped,
                t == 11,
                "speaking stops after the fifth silence frame"
            );
        }
        assert_eq!(core.run_tick(12), 0, "idle after the silence");
        assert_eq!(core.stats().packets_sent, 7);
        assert_eq!(core.stats().late_frames, 0);
    }

    #[test]
    fn timestamps_follow_the_grid_across_gaps() {
        let (mut core, _events, mut tx, receiver, _id) = core_with_call();
        for t in [10, 11, 15] {
            tx.push(EncodedFrame::from_packet(t, b"abc").expect("small packet"))
                .unwrap(); // invariant: small, room
        }
        for t in 10..16 {
            core.run_tick(t);
        }
        let mut buf = [0_u8; 256];
        let mut stamps = Vec::new();
        let mut sequences = Vec::new();
        for _ in 0..3 {
            let len = receiver.recv(&mut buf).unwrap(); // invariant: three packets were sent
            let header = crate::rtp::RtpHeader::parse(&buf[..len]).unwrap(); // invariant: ours
            stamps.push(header.timestamp);
            sequences.push(header.sequence);
        }
        assert_eq!(stamps[1].wrapping_sub(stamps[0]), 960);
        assert_eq!(
            stamps[2].wrapping_sub(stamps[1]),
            4 * 960,
            "the gap of ticks 12–14 shows"
        );
        assert_eq!(sequences[1], sequences[0].wrapping_add(1));
        assert_eq!(
            sequences[2],
            sequences[1].wrapping_add(1),
            "sequence numbers stay contiguous"
        );
    }

    #[test]
    fn late_frames_go_out_at_once_and_audio_cancels_silence() {
        let (mut core, mut events, mut tx, _rx, id) = core_with_call();
        for t in 1..=3 {
            tx.push(EncodedFrame::from_packet(t, b"x").expect("small packet"))
                .unwrap(); // invariant: room
        }
        assert_eq!(core.run_tick(3), 3, "two late frames plus the on-time one");
        assert_eq!(core.stats().late_frames, 2);
        tx.push(EncodedFrame::new(4, FrameKind::EndOfStream))
            .unwrap(); // invariant: room
        tx.push(EncodedFrame::from_packet(6, b"y").expect("small packet"))
            .unwrap(); // invariant: room
        assert_eq!(core.run_tick(4), 1); // silence 1
        assert_eq!(core.run_tick(5), 1); // silence 2
        assert_eq!(core.run_tick(6), 1); // audio again: silence cancelled
        assert_eq!(core.run_tick(7), 0);
        let ev = drain(&mut events);
        assert_eq!(
            ev,
            [SenderEvent::SpeakingStarted { call: id }],
            "no stop, no second start"
        );
    }

    #[test]
    fn end_of_stream_while_idle_sends_nothing() {
        let (mut core, mut events, mut tx, _rx, _id) = core_with_call();
        tx.push(EncodedFrame::new(1, FrameKind::EndOfStream))
            .unwrap(); // invariant: room
        for t in 1..8 {
            assert_eq!(core.run_tick(t), 0);
        }
        assert!(drain(&mut events).is_empty());
    }
}
