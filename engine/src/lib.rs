//! Quaver's audio engine: turns many audio sources into a stream of 20 ms Opus frames per call,
//! on a few dedicated real-time mixer threads.
//!
//! ```text
//! PcmWriter ─rtrb─┐
//! file decoder ───┼─▶ source slot ─▶ resample ─▶ mix+gain ─▶ limiter ─▶ Opus ─▶ frame queue ─▶ (sender)
//! OpusWriter ─────┘      (a few mixer threads, many calls, many sources per call)
//! ```
//!
//! * [`Engine`] is the front door: calls, sources ([`Engine::push_source`], [`Engine::push_opus`],
//!   [`Engine::play_file`], [`Engine::play_command`], [`Engine::play_url`]), the per-call track
//!   queue ([`Engine::enqueue`]), events and statistics. Files and HTTP streams seek while they
//!   play ([`SourceHandle::seek`]).
//! * Each call's frames come out of a bounded lock-free [`FrameReceiver`], each stamped with its
//!   tick on the shared 20 ms [`Grid`].
//! * [`Engine::manual`] gives you the clock-free [`Mixer`] to drive yourself, for offline
//!   rendering and deterministic tests.
//!
//! Files are decoded on one shared worker thread; inputs that arrive through blocking reads (a
//! child's pipe, an HTTP socket) each get a thread of their own, so a slow one never stalls the
//! others.
//!
//! After start-up the mixer threads never allocate, locks, logs or blocks: everything a source
//! or call needs is built by the calling thread and handed over through lock-free queues, and
//! what the mixer is done with is handed back to be dropped elsewhere.

pub mod analysis;
mod child;
mod codec;
mod decode;
mod engine;
mod error;
mod event;
mod file;
pub mod frame;
mod frame_queue;
pub mod http;
mod http_stream;
mod input;
mod latency;
mod limiter;
mod mixer;
pub mod ogg_opus;
mod overload;
pub mod pacer;
mod packets;
mod pcm;
mod pool;
mod queue;
mod rebalance;
mod resample;
mod seek;
mod source;
mod stats;
mod stream;
mod writer;

pub use child::{CommandOptions, STDERR_TAIL};
pub use codec::{OpusApplication, OpusConfig};
pub use decode::{InputFormat, SampleEncoding};
pub use engine::{Engine, EngineConfig};
pub use error::{Error, Result};
pub use event::Event;
pub use file::{FileOptions, probe_container};
pub use frame::{
    EncodedFrame, FRAME_DURATION, FRAME_SAMPLES, FrameHead, FrameKind, FrameReceiver, FrameSender,
    FrameSignal, Grid, MAX_OPUS_PACKET, QueueFull,
};
pub use http::HttpError;
pub use http_stream::{HttpOptions, UrlProbe, probe_url};
pub use input::{InputError, InputName};
pub use mixer::Mixer;
pub use pcm::{MIX_RATE, PcmFormat};
pub use queue::{QueueEntry, Track};
pub use source::{EndReason, MAX_VOLUME, OPUS_SILENCE, SourceHandle, SourceOptions, SourceStats};
pub use stats::{EngineStats, MixerHistograms, Summary};
pub use writer::{OpusWriter, PcmWriter, validate_opus_packet};

/// Identifies a call within one [`Engine`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallId(pub(crate) u32);

impl std::fmt::Display for CallId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "call#{}", self.0)
    }
}

/// Identifies a source within one [`Engine`]; never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceId(pub(crate) u64);

impl std::fmt::Display for SourceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "source#{}", self.0)
    }
}
