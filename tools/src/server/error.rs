//! Why the server could not start, and the I/O error helpers its threads share.

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A socket could not be bound or configured.
    #[error("{what}: {source}")]
    Io {
        /// Which socket.
        what: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// TLS set-up failed.
    #[error("tls: {0}")]
    Tls(String),
    /// A configuration value is out of range.
    #[error("config: {0}")]
    Config(String),
}

/// A websocket read that only hit its poll timeout (the sockets are read with a short timeout
/// so each connection thread can also serve its outgoing queue).
pub(crate) fn read_timed_out(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

pub(super) fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> ServerError {
    move |source| ServerError::Io { what, source }
}
