//! The crate's error type: one enum wrapping the small per-module enums.

use thiserror::Error;

use crate::crypto::CryptoError;
use crate::dave::DaveError;
use crate::discovery::DiscoveryError;
use crate::receive::ReceiveError;

use crate::rtp::RtpError;
use crate::sender::SenderError;

/// Everything that can go wrong in `quaver-net`.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// An RTP header could not be written or parsed.
    #[error(transparent)]
    Rtp(#[from] RtpError),
    /// Transport encryption or decryption failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// A DAVE (end-to-end) frame could not be made or opened.
    #[error(transparent)]
    Dave(#[from] DaveError),
    /// IP discovery failed.
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    /// A received packet was rejected.
    #[error(transparent)]
    Receive(#[from] ReceiveError),
    /// The sender refused a request.
    #[error(transparent)]
    Sender(#[from] SenderError),
    /// An operating-system call failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
