//! The engine's error type.

use std::path::PathBuf;

/// Everything that can go wrong in the engine, as a value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A sample rate outside 8–192 kHz or a channel count other than 1 or 2.
    #[error("unsupported PCM format: {0}")]
    UnsupportedFormat(String),
    /// A configured limit (calls per engine, sources per call) would be exceeded.
    #[error("limit reached: {what} (configured maximum {max})")]
    LimitReached {
        /// Which limit (for example "calls").
        what: &'static str,
        /// The configured maximum.
        max: usize,
    },
    /// An [`crate::EngineConfig`] value that cannot work (for example a limit of zero).
    #[error("invalid engine configuration: {0}")]
    InvalidConfig(&'static str),
    /// The call does not exist (never created, or already removed).
    #[error("no such call: {0}")]
    NoSuchCall(crate::CallId),
    /// The source has ended (stopped, finished, or its call was removed); nothing more can be written.
    #[error("source has ended")]
    SourceEnded,
    /// An Opus packet that Quaver cannot carry: not a valid 20 ms packet, or too large.
    #[error("invalid Opus packet: {0}")]
    InvalidOpusPacket(&'static str),
    /// libopus refused a setting or failed to create an encoder/decoder.
    #[error("opus: {0}")]
    Opus(#[from] audiopus::Error),
    /// The resampler could not be built for this rate.
    #[error("resampler: {0}")]
    Resampler(String),
    /// A media file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system reported.
        source: std::io::Error,
    },
    /// A media file is corrupt or in a format Quaver cannot decode.
    #[error("{path}: {reason}")]
    UnsupportedMedia {
        /// The file.
        path: PathBuf,
        /// What the decoder reported.
        reason: String,
    },
    /// [`crate::SourceHandle::seek`] on a source whose input cannot reposition (live writers,
    /// child processes, HTTP streams from servers without range requests).
    #[error("{0} cannot seek")]
    NotSeekable(crate::SourceId),
    /// An input (file, command, URL) could not be opened, read or decoded.
    #[error("{input}: {error}")]
    Input {
        /// Which input.
        input: crate::input::InputName,
        /// What went wrong.
        #[source]
        error: crate::input::InputError,
    },
    /// The mixer thread is not running (the engine has shut down or its thread failed to start).
    #[error("the mixer has shut down")]
    MixerGone,
    /// A thread could not be spawned.
    #[error("could not start the {name} thread: {source}")]
    Thread {
        /// The thread's role (for example "mixer").
        name: &'static str,
        /// Why spawning failed.
        source: std::io::Error,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
