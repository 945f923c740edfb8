//! Quaver's signalling half of a voice connection: a sans-IO voice gateway v8 state machine
//! (with an extension point for DAVE end-to-end encryption), the main-gateway join flow, and the
//! control thread that drives every call's websocket without blocking on any one of them.

pub mod backoff;
pub mod control;
pub mod dave;
mod error;
pub mod heartbeat;
pub mod join;
pub mod main_gateway;
pub mod manager;
pub mod protocol;
pub mod voice;

pub use error::Error;
