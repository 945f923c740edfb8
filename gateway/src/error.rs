//! The crate's one error type, wrapping the small per-module enums.

use crate::join::JoinError;
use crate::protocol::ProtocolError;
use crate::voice::VoiceError;

/// Everything that can go wrong in `quaver-gateway`.
///
/// Errors caused by network input are returned, never panicked on; most of them are also
/// non-fatal for the connection (the state machine ignores the offending frame).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A frame could not be decoded (malformed JSON, wrong types, oversized, truncated).
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The voice gateway state machine refused an input.
    #[error(transparent)]
    Voice(#[from] VoiceError),
    /// The main-gateway join flow refused an input.
    #[error(transparent)]
    Join(#[from] JoinError),
    /// The control thread has stopped; its handle can no longer send commands.
    #[error("the control thread has stopped")]
    ControlStopped,
    /// No call or bot connection with this ID exists (any more) on the control thread.
    #[error("no connection {0} on the control thread")]
    UnknownConnection(u64),
    /// A URL or endpoint could not be understood.
    #[error("invalid gateway url {0:?}")]
    InvalidUrl(String),
    /// Socket or resolver failure.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// Websocket protocol failure.
    #[error("websocket error: {0}")]
    WebSocket(#[from] Box<tungstenite::Error>),
    /// TLS failure.
    #[error("tls error: {0}")]
    Tls(#[from] rustls::Error),
    /// A PEM certificate file could not be read.
    #[error("certificate: {0}")]
    Certificate(#[from] rustls::pki_types::pem::Error),
}

impl From<tungstenite::Error> for Error {
    fn from(e: tungstenite::Error) -> Self {
        Error::WebSocket(Box::new(e))
    }
}
