//! Quaver's packet half of a voice connection: RTP headers ([`rtp`]), transport encryption
//! ([`crypto`]: `aead_aes256_gcm_rtpsize`, `aead_xchacha20_poly1305_rtpsize`), IP discovery
//! ([`discovery`]) and keepalives ([`keepalive`]), receive-side parsing ([`receive`]), and the
//! sender thread ([`sender`]) that drains every call's frame queue
//! ([`quaver_engine::FrameReceiver`]) and sends sealed packets on the absolute 20 ms grid.
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
