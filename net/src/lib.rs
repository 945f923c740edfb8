//! Quaver's packet half of a voice connection (PROTOCOL.md §3–§5, §7):
//!
//! * [`rtp`]: RTP headers — writing (random start, +960 per frame, wrap-around), parsing (CSRC,
//!   extension, padding), the `F8 FF FE` silence frame.
//! * [`crypto`]: transport encryption, `aead_aes256_gcm_rtpsize` (preferred) and
//!   `aead_xchacha20_poly1305_rtpsize`, sealed in caller-owned buffers; a [`crypto::Sealer`]
//!   never repeats a nonce under a key.
//! * [`dave`]: DAVE end-to-end frame encryption (per-sender ratcheted AES-128-GCM, PROTOCOL.md
//!   §6) without locks or allocation on the media path; the sender encrypts each Opus frame
//!   into the packet buffer between the RTP header and the transport seal.
//! * [`discovery`] (74-byte IP discovery, sans-IO plus a blocking helper) and [`keepalive`].
//! * [`receive`]: RTP/RTCP demultiplexing and opening into a caller buffer.
//! * [`sender`]: ONE thread for every call. Each tick it drains the calls' frame queues
//!   ([`quaver_engine::FrameReceiver`]), seals the packets, waits for the absolute deadline
//!   `epoch + n·20 ms` with the [`pacer`] and sends the whole tick at once through a
//!   [`transmit`] backend. Control goes in over a lock-free command queue; events
//!   ([`SenderEvent`]) and statistics ([`SenderStats`]) come out over lock-free rings.
//!
//! # Choices and the numbers behind them
//!
//! * **Backend.** io_uring through the raw `io-uring` crate (0.6, the version tokio-uring pins), one
//!   submission per tick, no SQPOLL; tokio-uring was not used because its timers are tokio's 1 ms
//!   wheel and the pacing here needs none of its runtime. [`BackendChoice::Auto`] falls back to
//!   non-blocking sockets (`send`, `sendmmsg` for runs on one socket) when the ring cannot be
//!   created or lacks `IORING_OP_SEND` (ENOSYS, EPERM under seccomp, old kernels). Measured here
//!   (`benches/sender.rs`, loopback to sinks that are never read, 240-byte frames, AES-GCM, a
//!   2-core VM shared with other builds, load 2–4): build + seal + send costs 2.2–2.9 µs per
//!   packet for 100–1,000 calls on either backend and 3.5–3.7 µs at 10,000 calls (cache misses).
//!   The UDP stack dominates, so the single submission buys little (the two backends are within
//!   noise of each other). Registered files (fixed fds) are not used yet; `fget` was ~3.5 % of
//!   the profile.
//! * **Pacing.** `clock_nanosleep(ABS)` with 1 ns timer slack to deadline − 200 µs, then a spin;
//!   `SCHED_FIFO` when permitted, else the EEVDF custom slice, else plain. The pacer returns
//!   0.4–0.6 µs after the deadline at p50 (p99 ≈ 1 µs at FIFO on a quiet moment,
//!   `SenderStats::wake_ns`); what follows is the send cost of the batch. On loopback a send
//!   that wakes a blocked local receiver costs ~50 µs here (cross-vCPU wake-up), so receiver-side
//!   numbers in `benches/lateness.rs` overstate what a remote server sees. The mode in effect is
//!   reported by [`Sender::pacing`].
//! * **Crypto.** AES-256-GCM seals a 240-byte packet in ~0.34 µs, XChaCha20-Poly1305 in ~3.4 µs
//!   (`benches/crypto.rs`), hence the preference order.
#![warn(missing_docs)]

pub mod crypto;
pub mod dave;
pub mod discovery;
pub mod error;
pub mod keepalive;
pub use quaver_engine::pacer;
pub mod playout;
pub mod receive;
pub mod receiver;
pub mod rtp;
pub mod sender;
pub mod stats;
pub mod transmit;

pub use error::{Error, Result};
pub use pacer::PacingMode;
pub use receiver::{ListenSlot, Receiver, ReceiverConfig, ReceiverEvent, UserAudio};
pub use sender::{
    CallConfig, EventNotifier, SendSlot, Sender, SenderConfig, SenderCore, SenderEvent,
};
pub use stats::SenderStats;
pub use transmit::{BackendChoice, BackendKind};
