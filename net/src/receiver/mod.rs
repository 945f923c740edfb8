//! The receive thread (PROTOCOL.md §7): ONE thread for every listened call. It waits on all the
//! calls' UDP sockets at once, reads each socket's datagrams in batches (`recvmmsg` on Linux),
//! demultiplexes them by socket and SSRC, opens the transport encryption ([`crate::receive`]),
//! removes the DAVE layer with the sending member's [`FrameDecryptor`], and files the Opus frame
//! into that user's [`Playout`](crate::playout::Playout) buffer. On every tick of the engine's
//! 20 ms grid it plays each stream out — decoded, FEC-recovered or concealed — onto the user's
//! lock-free ring, where [`UserAudio`] reads it.
//!
//! Everything the thread touches is made on the control side and handed over a command queue
//! (streams with their decoder, buffers and ring; DAVE keys as [`PreparedKey`]s); what it is done
//! with comes back over another queue to be dropped there. After start-up the thread allocates
//! nothing, takes no lock and makes no system call but `epoll_wait` and the receives
//! (`net/tests/receiver_no_alloc.rs`).
//!
//! Packets whose SSRC no op 5 has mapped yet are held (a fixed pool per call, up to
//! [`ReceiverConfig::hold_for`]) and replayed into the stream when the mapping arrives: a member's
//! first packets often overtake its Speaking op on the way.

mod core;
mod handle;
mod held;
mod socket;
mod stream;
#[cfg(test)]
mod tests;
mod thread;

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use quaver_engine::Grid;
use thiserror::Error;

use crate::crypto::{EncryptionMode, SecretKey};
use crate::dave::{Passthrough, PreparedKey};
use crate::playout::PlayoutConfig;
use crate::sender::EventNotifier;

pub use self::core::ReceiverCore;
pub use handle::Receiver;
pub use stream::{FrameOrigin, ReceivedFrame, StreamStats, UserAudio};

/// Stereo samples in one 20 ms frame at 48 kHz.
pub const FRAME_PCM_LEN: usize = quaver_engine::FRAME_SAMPLES * 2;
/// The largest datagram the receive path reads; Discord's media packets stay well under an
/// Ethernet MTU.
pub const MAX_DATAGRAM: usize = 1500;

/// Identifies a call on the receive thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenSlot(pub(crate) u64);

impl ListenSlot {
    /// Index in the thread's call table (the low 32 bits); the high bits tell reuses apart.
    pub(crate) fn index(self) -> usize {
        (self.0 & 0xFFFF_FFFF) as usize
    }
}

/// What the receive thread does with a call's audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ReceiveMode {
    /// Reorder, de-duplicate and hand out each user's decrypted Opus frames in order (lost ones
    /// as [`FrameOrigin::Lost`] without payload), for recorders that do not decode. No libopus.
    Opus,
    /// Also decode to 48 kHz stereo PCM, with in-band FEC and loss concealment (~40 µs a frame).
    #[default]
    Decode,
}

/// Receive settings for one listened user stream.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// The playout buffer's settings.
    pub playout: PlayoutConfig,
    /// Frames the user's ring holds before the oldest unread ones are dropped (and counted):
    /// 50 = one second. Each slot takes ~5.2 KB.
    pub ring_frames: usize,
}

impl Default for StreamOptions {
    fn default() -> Self {
        Self {
            playout: PlayoutConfig::default(),
            ring_frames: 50,
        }
    }
}

/// Everything the receive thread needs to read one call.
#[derive(Debug)]
pub struct ListenConfig {
    /// The voice UDP socket (connected to the server), shared with the sender. It is switched to
    /// non-blocking mode, which the sender expects anyway.
    pub socket: Arc<UdpSocket>,
    /// Transport encryption mode from the Session Description.
    pub mode: EncryptionMode,
    /// Transport key from the Session Description.
    pub key: SecretKey,
    /// Our own SSRC: packets carrying it are ignored.
    pub own_ssrc: u32,
    /// Whether to decode.
    pub receive: ReceiveMode,
    /// Where the call's counters go; the same counters may span several sessions of a call.
    pub counters: Arc<CallCounters>,
}

/// One remote user's stream to open on a call: who, under which SSRC, with which keys.
#[derive(Debug)]
pub struct StreamConfig {
    /// The user's ID.
    pub user_id: u64,
    /// Their SSRC (op 5).
    pub ssrc: u32,
    /// Buffer and ring settings.
    pub options: StreamOptions,
    /// Their DAVE keys so far, oldest first (empty before E2EE).
    pub keys: Vec<PreparedKey>,
    /// Whether frames that are not DAVE frames pass (see [`Passthrough`]).
    pub passthrough: Passthrough,
}

/// Receive thread settings.
#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    /// The engine's 20 ms grid: streams play out on its ticks.
    pub grid: Grid,
    /// Size of the call table (preallocated).
    pub max_calls: usize,
    /// Streams per call (preallocated per call). Discord caps a voice channel at 99 members.
    pub max_streams: usize,
    /// Packets of not-yet-mapped SSRCs held per call.
    pub held_packets: usize,
    /// How long such a packet is held.
    pub hold_for: Duration,
    /// Capacity of the command queue.
    pub command_capacity: usize,
    /// Capacity of the event queue.
    pub event_capacity: usize,
    /// Called on the receive thread once start-up is done (instrumentation).
    pub on_thread_start: Option<fn()>,
    /// Called on the receive thread when its loop has ended, before tear-down.
    pub on_thread_exit: Option<fn()>,
    /// Wakes the event reader after a wake-up that queued events (speaking changes), never per
    /// packet.
    pub notify: Option<EventNotifier>,
}

impl ReceiverConfig {
    /// Defaults on `grid`: 1,024 calls, 99 streams and 32 held packets (1 s) per call.
    pub fn new(grid: Grid) -> Self {
        Self {
            grid,
            max_calls: 1024,
            max_streams: 99,
            held_packets: 32,
            hold_for: Duration::from_secs(1),
            command_capacity: 1024,
            event_capacity: 4096,
            on_thread_start: None,
            on_thread_exit: None,
            notify: None,
        }
    }
}

/// Why a receive request failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ReceiverError {
    /// The call table is full.
    #[error("the receive thread already reads {0} calls")]
    TooManyCalls(usize),
    /// The call has as many streams as configured.
    #[error("the call already has {0} receive streams")]
    TooManyStreams(usize),
    /// No such call.
    #[error("unknown receive slot")]
    UnknownCall,
    /// The command queue is full; retry after the thread has caught up.
    #[error("the receive thread's command queue is full")]
    QueueFull,
    /// The receive thread has stopped.
    #[error("the receive thread has stopped")]
    Stopped,
    /// A socket could not be set up, or the thread not started.
    #[error("receive socket or thread: {0}")]
    Io(#[from] std::io::Error),
    /// The stream's Opus decoder could not be made.
    #[error("opus decoder: {0}")]
    Decoder(#[from] crate::playout::PlayoutError),
}

/// What the receive thread reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReceiverEvent {
    /// A user's audio started (after a pause, or for the first time).
    SpeakingStarted {
        /// The call.
        call: ListenSlot,
        /// The user.
        user_id: u64,
    },
    /// A user's audio stopped (their client went quiet; not loss).
    SpeakingStopped {
        /// The call.
        call: ListenSlot,
        /// The user.
        user_id: u64,
    },
}

/// Counters of one call's receive path, shared with the control side (relaxed atomics, live).
#[derive(Debug, Default)]
pub struct CallCounters {
    datagrams: AtomicU64,
    rtcp: AtomicU64,
    not_opus: AtomicU64,
    transport_failures: AtomicU64,
    own_ssrc: AtomicU64,
    held: AtomicU64,
    held_expired: AtomicU64,
}

/// A snapshot of [`CallCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallReceiveStats {
    /// Datagrams read from the socket.
    pub datagrams: u64,
    /// RTCP packets (counted, not interpreted).
    pub rtcp: u64,
    /// Datagrams that were neither Opus RTP nor RTCP (keepalive echoes, video, garbage).
    pub not_opus: u64,
    /// Packets whose transport encryption did not open.
    pub transport_failures: u64,
    /// Packets carrying our own SSRC.
    pub own_ssrc: u64,
    /// Packets held because their SSRC was not mapped yet.
    pub held: u64,
    /// Held packets whose SSRC was never mapped in time (or that found the pool full).
    pub held_expired: u64,
}

impl CallCounters {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> CallReceiveStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CallReceiveStats {
            datagrams: get(&self.datagrams),
            rtcp: get(&self.rtcp),
            not_opus: get(&self.not_opus),
            transport_failures: get(&self.transport_failures),
            own_ssrc: get(&self.own_ssrc),
            held: get(&self.held),
            held_expired: get(&self.held_expired),
        }
    }
}

enum Command {
    Add(Box<core::ListenCall>),
    Remove(ListenSlot),
    AddStream(ListenSlot, Box<stream::Stream>),
    RemoveStream(ListenSlot, u64),
    Key(ListenSlot, u64, PreparedKey),
    Passthrough(ListenSlot, u64, Passthrough),
}

enum Returned {
    #[allow(dead_code)] // held only so that it is dropped on the control side
    Call(Box<core::ListenCall>),
    #[allow(dead_code)] // held only so that it is dropped on the control side
    Stream(Box<stream::Stream>),
    #[allow(dead_code)] // held only so that it is dropped (and zeroized) on the control side
    Key(PreparedKey),
}
