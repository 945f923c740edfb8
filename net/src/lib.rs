//! Quaver's packet half of a voice connection (PROTOCOL.md §3–§5, §7):
//!
//! * [`rtp`]: RTP headers — writing (random start, +960 per frame, wrap-around), parsing (CSRC,
//!   extension, padding), the `F8 FF FE` silence frame.
//! * [`crypto`]: transport encryption, `aead_aes256_gcm_rtpsize` (preferred) and
//!   `aead_xchacha20_poly1305_rtpsize`, sealed in caller-owned buffers; a [`crypto::Sealer`]
//!   never repeats a nonce under a key.
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
//!   (`benches/sender.rs`, loopback, 240-byte frames, AES-GCM, a loaded 2-core VM): the per-tick
//!   cost is about 2–3 µs per packet for 100–1,000 calls on either backend — the UDP stack
//!   dominates, so batching buys little; at 10,000 calls cache misses raise it to ~4.5 µs.
//! * **Pacing.** `clock_nanosleep(ABS)` with 1 ns timer slack to deadline − 200 µs, then a spin;
//!   `SCHED_FIFO` when permitted, else the EEVDF custom slice, else plain. Receiver-side lateness
//!   on these VMs: sleep+spin 12/160 µs (p50/p99), at FIFO 13/65 µs idle; tokio timers ~1.5 ms.
//!   The mode in effect is reported by [`Sender::pacing`].
//! * **Crypto.** AES-256-GCM seals a 240-byte packet in ~0.3–0.5 µs, XChaCha20-Poly1305 in
//!   ~2–3.6 µs (`benches/crypto.rs`), hence the preference order.
#![warn(missing_docs)]

pub mod crypto;
pub mod discovery;
pub mod error;
pub mod keepalive;
pub mod pacer;
pub mod receive;
pub mod rtp;
pub mod sender;
pub mod stats;
pub mod transmit;

pub use error::{Error, Result};
pub use pacer::PacingMode;
pub use sender::{CallConfig, CallId, Sender, SenderConfig, SenderCore, SenderEvent};
pub use stats::SenderStats;
pub use transmit::{BackendChoice, BackendKind};
