//! Quaver: a real-time voice engine for Discord-compatible voice.
//!
//! This facade re-exports the engine ([`engine`]), the packet half ([`net`]) and the
//! signalling half ([`gateway`]).

pub use quaver_engine as engine;
pub use quaver_gateway as gateway;
pub use quaver_net as net;
