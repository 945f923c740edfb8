//! Library side of the `quaver` command, so tests and benches can reuse its pieces.
//!
//! * [`render`]: offline mixing into Ogg Opus.
//! * [`server`]: the local Discord-compatible voice server behind `quaver serve`, embeddable
//!   in tests ([`server::Server::start`]).

pub mod baseline;
pub mod cpu;
pub mod demo;
pub mod jitter;
pub mod listener;
pub mod play;
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
    #[error(transparent)]
    Engine(#[from] quaver::engine::Error),
    /// The voice side (sender, gateway, sessions) failed.
    #[error(transparent)]
    Voice(#[from] quaver::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Usage(String),
    /// The local server failed to start.
    #[error("serve: {0}")]
    Server(#[from] server::ServerError),
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
