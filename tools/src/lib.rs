//! Library side of the `quaver` command, so tests and benches can reuse its pieces.
//!
//! * [`render`]: offline mixing into Ogg Opus.
//! * [`server`]: the local Discord-compatible voice server behind `quaver serve`, embeddable
//!   in tests ([`server::Server::start`]).

pub mod args;
pub mod baseline;
pub mod bundled;
pub mod channel;
pub mod chart;
pub mod connect;
pub mod cpu;
pub mod demo;
pub mod hearing;
pub mod idle;
pub mod jitter;
pub mod listener;
pub mod media;
pub mod play;
pub mod probe;
pub mod progress;
pub mod ramp;
pub mod record;
pub mod remote;
pub mod render;
pub mod report;
pub mod server;
pub mod session;

use std::path::{Path, PathBuf};

/// Errors of the `quaver` tools.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The audio engine failed (a source, the mixer, the encoder).
    #[error(transparent)]
    Engine(#[from] quaver::engine::Error),
    /// The voice side (sender, gateway, sessions) failed.
    #[error(transparent)]
    Voice(#[from] quaver::Error),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The options given cannot work together (the message says why).
    #[error("{0}")]
    Usage(String),
    /// The local server failed to start.
    #[error("serve: {0}")]
    Server(#[from] server::ServerError),
    /// A media file cannot be played (checked before anything starts).
    #[error("{}: {problem}", path.display())]
    Media {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: media::MediaProblem,
    },
    /// The voice server ended a call before it was ready (for example 4017: DAVE required).
    #[error("the voice server ended call {call}: {reason}")]
    CallEnded {
        /// The call.
        call: quaver::CallId,
        /// Why, with the close code.
        reason: quaver::gateway::voice::EndReason,
    },
    /// Calls that did not connect in time.
    #[error("only {ready} of {calls} calls connected within {waited:?}")]
    NotConnected {
        /// Calls ready.
        ready: usize,
        /// Calls started.
        calls: usize,
        /// How long the run waited.
        waited: std::time::Duration,
    },
    /// Ctrl-C (or SIGTERM) arrived before there was anything to report.
    #[error("interrupted {stage}")]
    Interrupted {
        /// What the run was doing.
        stage: Stage,
    },
}

/// Exit status of a measuring run that completed but lost audio on the way to the server.
pub const AUDIO_LOST_EXIT_CODE: u8 = 3;

/// What a run was doing when it was interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Stage {
    /// Joining the voice channel or connecting the calls.
    #[error("while connecting")]
    Connecting,
}

/// How a run that Ctrl-C may cut short ended. Interrupted runs still report what they did;
/// the command then exits with [`INTERRUPTED_EXIT_CODE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// The run did everything it set out to do.
    Completed,
    /// Ctrl-C or SIGTERM cut it short.
    Interrupted,
    /// It ran its course, but packets never reached the server (the report says how many);
    /// the command exits with [`AUDIO_LOST_EXIT_CODE`].
    AudioLost,
}

/// Exit status of a run cut short by Ctrl-C or SIGTERM (128 + SIGINT, as shells report it).
/// `serve`, which only ever ends that way, exits 0.
pub const INTERRUPTED_EXIT_CODE: u8 = 130;

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
