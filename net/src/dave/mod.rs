//! DAVE media-path crypto (PROTOCOL.md §6): per-sender AES-128-GCM frame encryption under a
//! hash-ratcheted key, without the MLS session.
//!
//! The MLS session (davey's `DaveSession`, on the control thread) only has to hand over, per
//! epoch, the 16-byte base secret `MLS-Exporter("Discord Secure Frames v0", u64_le(user_id), 16)`
//! as a fixed-size [`SenderKey`]. Everything after that lives here and is lock-free:
//!
//! * [`FrameEncryptor`] — the sender's side, owned by the sender thread: no allocation, no lock,
//!   no clock, also on the first frame after a key change.
//! * [`FrameDecryptor`] — one remote sender's side (the receive path, the test server): libdave's
//!   rules of replay window, generation gap, missing-nonce tracking and 10 s key overlap, sans-IO
//!   (`now` is passed in).
//! * [`parse_frame`] — the protocol-frame check.
//!
//! Frames come out byte for byte as davey 0.2 makes them (`tests/dave_davey.rs`).

mod cipher;
mod decryptor;
mod encryptor;
mod frame;
pub mod leb128;
mod ratchet;

use std::fmt;

use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop};

pub use decryptor::{FrameDecryptor, Installed, Passthrough, PreparedKey};
pub use encryptor::FrameEncryptor;
pub use frame::{MARKER, MAX_OVERHEAD, MIN_SUPPLEMENTAL, ParsedFrame, TAG_LEN, parse_frame};

/// The MLS exporter label of the per-sender base secret.
pub const EXPORTER_LABEL: &str = "Discord Secure Frames v0";
/// Length of the exported base secret.
pub const BASE_SECRET_LEN: usize = 16;
/// The Opus silence frame, which is never wrapped and always passes through.
pub const SILENCE_FRAME: [u8; 3] = crate::rtp::SILENCE_FRAME;

/// How long a receiver keeps an epoch's keys after a newer epoch's arrive, and an old
/// generation's cipher after a newer generation decrypted (libdave `RATCHET_EXPIRY`,
/// `CIPHER_EXPIRY`).
pub const KEY_OVERLAP: std::time::Duration = std::time::Duration::from_secs(10);
/// How many generations ahead of the newest one seen a frame may be (libdave).
pub const MAX_GENERATION_GAP: u32 = 250;
/// How many skipped nonces a receiver remembers, so that late frames still decrypt (libdave).
pub const MAX_MISSING_NONCES: usize = 1000;
/// The frame rate libdave assumes when it checks that a generation is reachable yet: 50 audio
/// frames plus two 60 fps video streams per second.
pub const MAX_FRAMES_PER_SECOND: u64 = 50 + 2 * 60;

/// One sender's key for one epoch: the exported base secret and the epoch it belongs to. Fixed
/// size with no heap part, zeroized when dropped; `Debug` shows the epoch only. Deliberately not
/// `Copy`, so that copies of the secret are explicit.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct SenderKey {
    epoch: u64,
    base_secret: [u8; BASE_SECRET_LEN],
}

impl SenderKey {
    /// The key of `epoch` from the base secret that `MlsGroup::export_secret(crypto,
    /// EXPORTER_LABEL, &user_id.to_le_bytes(), 16)` returned.
    pub fn new(epoch: u64, base_secret: [u8; BASE_SECRET_LEN]) -> Self {
        Self { epoch, base_secret }
    }

    /// As [`SenderKey::new`] from a slice (what the exporter returns); fails unless it has 16
    /// bytes.
    pub fn from_slice(epoch: u64, base_secret: &[u8]) -> Result<Self, DaveError> {
        let bytes: [u8; BASE_SECRET_LEN] =
            base_secret
                .try_into()
                .map_err(|_| DaveError::BaseSecretLength {
                    len: base_secret.len(),
                })?;
        Ok(Self::new(epoch, bytes))
    }

    /// The MLS epoch this key belongs to.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether `other` is the same key domain (same epoch and base secret): re-installing it must
    /// continue the frame counter, not restart it. Compared in constant time.
    pub fn same_key(&self, other: &SenderKey) -> bool {
        let diff = self
            .base_secret
            .iter()
            .zip(&other.base_secret)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        diff == 0 && self.epoch == other.epoch
    }

    pub(crate) fn base_secret(&self) -> &[u8; BASE_SECRET_LEN] {
        &self.base_secret
    }
}

impl fmt::Debug for SenderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SenderKey")
            .field("epoch", &self.epoch)
            .field("base_secret", &"<redacted>")
            .finish()
    }
}

/// Why a DAVE frame could not be made, parsed or opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DaveError {
    /// The output buffer cannot hold the result.
    #[error("buffer too small for the DAVE frame: need {needed} bytes, have {have}")]
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        have: usize,
    },
    /// The exported base secret does not have 16 bytes.
    #[error("DAVE base secret must have 16 bytes, got {len}")]
    BaseSecretLength {
        /// Its length.
        len: usize,
    },
    /// The sender has used every nonce of every generation of this key (2^56 frames).
    #[error("DAVE frame nonces exhausted under this key")]
    NonceExhausted,
    /// AES-GCM refused to encrypt (only for absurdly long input).
    #[error("DAVE frame encryption failed")]
    EncryptFailed,
    /// Shorter than the smallest DAVE frame.
    #[error("not a DAVE frame: {len} bytes is too short")]
    FrameTooShort {
        /// The frame's length.
        len: usize,
    },
    /// Does not end in `FA FA`.
    #[error("not a DAVE frame: no FA FA marker")]
    NoMarker,
    /// The supplemental-size byte is below the minimum or beyond the frame.
    #[error("not a DAVE frame: supplemental size {size} in a frame of {frame_len} bytes")]
    BadSupplementalSize {
        /// The size byte.
        size: u8,
        /// The frame's length.
        frame_len: usize,
    },
    /// The nonce does not parse or exceeds 32 bits.
    #[error("not a DAVE frame: bad nonce")]
    BadNonce,
    /// The unencrypted ranges do not parse, overlap, or reach past the body.
    #[error("not a DAVE frame: bad unencrypted ranges")]
    BadRanges,
    /// A frame with unencrypted ranges (a video codec's); audio frames never have them.
    #[error("DAVE frame with unencrypted ranges is not an audio frame")]
    UnencryptedRanges,
    /// No key for this sender is installed (or all have expired).
    #[error("no DAVE key for this sender")]
    NoKey,
    /// The nonce was seen already, or is older than the missing-nonce window.
    #[error("DAVE frame nonce {nonce:#010x} replayed or too old")]
    Replayed {
        /// The frame's nonce.
        nonce: u32,
    },
    /// The frame's generation is gone (expired), too far ahead, or not reachable yet.
    #[error("DAVE frame generation {generation} is out of range")]
    GenerationOutOfRange {
        /// The frame's (unwrapped) generation.
        generation: u32,
    },
    /// The tag did not verify under any installed key.
    #[error("DAVE frame failed authentication")]
    AuthenticationFailed,
}
