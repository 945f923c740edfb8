//! The sender: ONE thread serves every call. Each tick `n` it takes the frames due for `n` from
//! every call's [`FrameReceiver`], builds and seals the packets into per-call preallocated
//! buffers, waits for the absolute deadline `grid.deadline(n)` ([`crate::pacer::Pacer`]) and sends the whole
//! batch at once ([`crate::transmit::BackendKind::IoUring`] or [`crate::transmit::BackendKind::Portable`]).
//!
//! * Frames whose tick has already passed are sent at once (before waiting) and counted late.
//! * An [`quaver_engine::FrameKind::EndOfStream`] frame starts five `F8 FF FE` silence frames on consecutive ticks,
//!   then [`SenderEvent::SpeakingStopped`]; the first audio frame after that (or ever) gives
//!   [`SenderEvent::SpeakingStarted`] when it is built — up to one tick before it is sent.
//! * Calls are added, removed and re-keyed through a bounded lock-free command queue. Everything is
//!   built on the caller's side; removed calls and replaced keys travel back over another queue
//!   and are dropped there. A re-key applies between two ticks, i.e. at a frame boundary.
//! * With a DAVE key set ([`Sender::set_dave_key`]) each Opus frame is end-to-end encrypted
//!   ([`FrameEncryptor`]) straight into the packet buffer, between the RTP header and the
//!   transport seal; the `F8 FF FE` silence frames go out unwrapped. A key change applies at the
//!   same tick boundary as a re-key; the encryptor is built on the caller's thread and the old one
//!   is dropped (and zeroized) there too.
//! * Send errors are counted per call and reported as [`SenderEvent::SendFailed`]; the thread
//!   and other calls carry on.
//! * Idle calls do not tick: a call that is not speaking and has nothing queued is parked
//!   ([`FrameReceiver::try_park`]) and not looked at again until its producer's next frame rings
//!   the engine's [`quaver_engine::FrameSignal`], which the thread reads once per look. Queues
//!   without a doorbell (built from a bare `rtrb` consumer) are looked at every tick.
//!
//! After start-up the thread does not allocate, lock or make syscalls other than the sends and the
//! pacing sleep (`tests/sender_no_alloc.rs` proves the allocation part).
//!
//! ```no_run
//! use std::{net::UdpSocket, sync::Arc, time::Instant};
//! use quaver_engine::{FrameSignal, Grid, frame::frame_queue};
//! use quaver_net::crypto::{EncryptionMode, SecretKey};
//! use quaver_net::dave::SenderKey;
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
//! // The mixer side keeps frames_tx (an `Engine`'s calls come with their queues made). Its
//! // pushes wake the sender's look at the queue when it parked it for a quiet call.
//! let (mut frames_tx, frames_rx) = frame_queue(16, &Arc::new(FrameSignal::default()));
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
//! // DAVE: after each executed transition (op 22), the epoch's sender key from the MLS session:
//! // group.export_secret(crypto, dave::EXPORTER_LABEL, &user_id.to_le_bytes(), 16).
//! # let (epoch, base_secret) = (1, [0u8; 16]);
//! sender.set_dave_key(call, Some(SenderKey::new(epoch, base_secret)))?;
//! // New Session Description: switch at the next frame boundary.
//! sender.rekey(call, EncryptionMode::XChaCha20Poly1305RtpSize, &SecretKey::new([1; 32]))?;
//! let p99 = sender.stats().lateness_ns.value_at_quantile(0.99);
//! # let _ = p99;
//! # Ok(())
//! # }
//! ```

mod call;
mod core;
mod handle;
mod phase;
mod spin;
mod thread;

use call::Call;
pub use core::SenderCore;
pub use handle::Sender;
pub use phase::{MAX_PHASE_GROUPS, PhaseConfig};

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::Duration;

use quaver_engine::{FrameReceiver, Grid};
use thiserror::Error;

use crate::crypto::{EncryptionMode, Sealer, SecretKey};
use crate::dave::FrameEncryptor;
use crate::pacer::{self, SchedulingRequest};
use crate::transmit::BackendChoice;

/// Why the sender refused a call, a command or its start.
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
    UnknownCall(SendSlot),
    /// The requested backend is not available.
    #[error("transmit backend unavailable: {0}")]
    Backend(std::io::Error),
    /// Phase groups can only be set before the first call is added.
    #[error("phase groups are fixed once calls are added")]
    PhasesFixed,
}

/// Identifies a call inside the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SendSlot(pub u64);

/// Something the sender thread reports, as a value on the event queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SenderEvent {
    /// The call's first audio frame after idle was built: send Speaking 1 now.
    SpeakingStarted {
        /// The call.
        call: SendSlot,
    },
    /// The call's five silence frames went out: send Speaking 0.
    SpeakingStopped {
        /// The call.
        call: SendSlot,
    },
    /// A send failed (e.g. ENOBUFS, EHOSTUNREACH, a closed socket); the packet is lost.
    SendFailed {
        /// The call.
        call: SendSlot,
        /// The OS error number.
        errno: i32,
        /// Failed sends of this call so far.
        total: u64,
    },
    /// The call's key has used all 2^32 nonces; its packets are dropped until it is re-keyed.
    NonceExhausted {
        /// The call.
        call: SendSlot,
    },
    /// The call was added.
    CallAdded {
        /// The call.
        call: SendSlot,
    },
    /// The call was removed.
    CallRemoved {
        /// The call.
        call: SendSlot,
        /// Packets it sent.
        packets: u64,
        /// Its failed sends.
        send_errors: u64,
    },
    /// A re-key took effect; packets from now on use the new key.
    Rekeyed {
        /// The call.
        call: SendSlot,
    },
    /// A DAVE sender key took effect: Opus frames from now on are end-to-end encrypted under
    /// `epoch`. Also confirms a re-install of the key in use (whose frame counter carries on).
    DaveKeyInstalled {
        /// The call.
        call: SendSlot,
        /// The key's MLS epoch.
        epoch: u64,
    },
    /// The call's DAVE key was removed: frames from now on are plain Opus.
    DaveKeyRemoved {
        /// The call.
        call: SendSlot,
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
    /// The longest spin before each deadline; the sender spins only as long as its recent
    /// wake-up errors need, up to this (`Duration::ZERO` turns spinning off).
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
    /// Wakes the event reader after a tick that queued events (see [`EventNotifier`]).
    pub notify: Option<EventNotifier>,
    /// How calls are staggered over the 20 ms period (see [`PhaseConfig`]).
    pub phases: PhaseConfig,
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
            notify: None,
            phases: PhaseConfig::default(),
        }
    }
}

enum Command {
    Add(Box<Call>),
    Remove(SendSlot),
    Rekey(SendSlot, Box<Sealer>),
    DaveKey(SendSlot, Option<Box<FrameEncryptor>>),
}

enum Returned {
    #[allow(dead_code)] // held only so that it is dropped on the control side
    Call(Box<Call>),
    #[allow(dead_code)] // held only so that it is dropped on the control side
    Sealer(Box<Sealer>),
    #[allow(dead_code)] // held only so that it is dropped (and zeroized) on the control side
    Encryptor(Box<FrameEncryptor>),
}

/// Called on the sender thread after a tick that queued events, so whoever reads them wakes
/// instead of polling (the `quaver` facade passes the control thread's waker: one `eventfd`
/// write per such tick — speaking changes, errors — never per packet).
#[derive(Clone)]
pub struct EventNotifier(pub Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for EventNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventNotifier")
    }
}

#[cfg(test)]
mod tests;
