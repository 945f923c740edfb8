//! `quaver node`: a Lavalink v4-compatible node on Quaver's engine, so bots written against
//! any Lavalink client library (JavaScript, Python, Java, C#, Rust) play through Quaver
//! unchanged, and spread their guilds over several nodes as they already do.
//!
//! The HTTP and websocket API (axum on a small tokio runtime) is the control plane only: each
//! player is one [`quaver::Engine`] call, each track one source in it, so audio is mixed,
//! encoded, encrypted (DAVE included) and paced on Quaver's real-time threads.
//!
//! What it serves: `/version`, `/v4/info`, `/v4/stats`, `/v4/loadtracks` (local files and
//! HTTP(S) URLs), `/v4/decodetrack(s)` (Lavalink's binary track encoding, [`codec`]),
//! `/v4/websocket` (`ready`, `playerUpdate`, `stats` with `frameStats`, and the track and
//! voice events), `/v4/sessions/{id}` (resuming) and its players, and NodeLink's mix
//! extension (several tracks per guild at once). Filters: `volume`; the other built-in ones
//! are refused as Lavalink refuses a filter it does not run, and `pluginFilters` are kept
//! and shown as Lavalink does when no plugin handles them.
//!
//! ```no_run
//! let mut config = quaver_node::NodeConfig::default();
//! config.password = quaver_node::Password::new("youshallnotpass");
//! let node = quaver_node::Node::start(config)?;
//! println!("listening on {}", node.addr());
//! # Ok::<(), quaver_node::NodeError>(())
//! ```

mod auth;
pub mod codec;
mod config;
mod error;
mod events;
mod mix;
mod node;
mod player;
mod pump;
mod routes;
mod session;
mod stats;
mod tracks;
mod update;
mod websocket;

pub use config::{ConfigError, Limits, NodeConfig, Password, Sources};
pub use error::{ApiError, NodeError};
pub use node::Node;
