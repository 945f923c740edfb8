//! Quaver's signalling half of a voice connection.
//!
//! * [`protocol`]: typed voice gateway v8 payloads (both directions, usable by a test server),
//!   binary DAVE frames, close codes and their policy.
//! * [`voice`]: the sans-IO voice gateway state machine ([`voice::VoiceGateway`]): frames and
//!   `now` in; frames, events and its next timeout out. Heartbeats ([`heartbeat`]), resume
//!   versus reconnect versus give-up, and backoff with injected jitter ([`backoff`]).
//! * [`dave`]: the extension point where DAVE (E2EE) plugs in; ops 21–31 and binary frames are
//!   already parsed and routed there.
//! * [`join`]: the main-gateway join flow (op 4, VOICE_STATE_UPDATE + VOICE_SERVER_UPDATE in
//!   either order, moves, endpoint changes, null endpoints, leaving), sans-IO.
//! * [`main_gateway`]: a minimal built-in main-gateway client for standalone bots (sans-IO).
//! * [`control`]: the one control thread that drives every websocket without blocking.
//!
//! Programs use all this through the `quaver` crate's `Engine`, the one front door: it joins
//! calls (raw credentials, the built-in main-gateway client, or a host library's shard through
//! [`join::VoiceStateSender`]) and runs every call's connection on the control thread as a
//! [`control::ControlHandler`]. This crate is the layer below it.
//!
//! # Events of a voice connection
//!
//! 1. [`voice::VoiceEvent::DiscoveryRequested`] `{ ssrc, ip, port }`: IP discovery from the
//!    call's UDP socket to `ip:port`, answered with
//!    [`control::ControlContext::set_discovered_address`].
//! 2. [`voice::VoiceEvent::SessionReady`] with a [`voice::VoiceSession`]: `ssrc`, server
//!    `ip`/`port`, `mode`, `secret_key` and `dave_protocol_version` for the sender. Speaking has
//!    already been sent (with [`voice::VoiceConfig::initial_speaking`]), so audio may flow.
//! 3. [`voice::VoiceEvent::Dave`]: DAVE keys after each executed transition (the sender's and
//!    every member's), or a failed step that was recovered.
//! 4. [`voice::VoiceEvent::Resuming`] / [`voice::VoiceEvent::Resumed`]: the websocket is
//!    resuming; keys and SSRC stay valid and UDP audio keeps flowing.
//!    [`voice::VoiceEvent::Reconnecting`]: the session is lost; stop audio until the next
//!    `SessionReady` (new SSRC and key). [`voice::VoiceEvent::Ended`] is the last event.
//!
//! # Driving the state machine yourself
//!
//! [`voice::VoiceGateway`] needs no thread, socket or clock; the control thread is one driver of
//! it, tests drive it in virtual time:
//!
//! ```
//! use std::time::Instant;
//! use quaver_gateway::backoff::FixedJitter;
//! use quaver_gateway::protocol::Token;
//! use quaver_gateway::voice::{Output, VoiceConfig, VoiceConnectRequest, VoiceGateway};
//!
//! let request = VoiceConnectRequest {
//!     guild_id: 1, channel_id: 2, user_id: 3,
//!     session_id: "session".into(), token: Token::new("token"),
//!     endpoint: "c-xyz.discord.media:8443".into(),
//! };
//! let mut gw = VoiceGateway::new(request, VoiceConfig::default(), Box::new(FixedJitter(0.5)));
//! let now = Instant::now();
//! gw.start(now);
//! assert!(matches!(gw.poll_output(), Some(Output::Connect { url }) if url == "wss://c-xyz.discord.media:8443/?v=8"));
//! gw.handle_socket_open(now);
//! assert!(matches!(gw.poll_output(), Some(Output::Send(_)))); // Identify
//! ```

#![warn(missing_docs)]

pub mod backoff;
pub mod control;
pub mod dave;
mod error;
pub mod heartbeat;
pub mod join;
pub mod main_gateway;
pub mod protocol;
pub mod voice;

pub use error::Error;
