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
//! * [`manager`]: [`manager::VoiceManager`], which wires join flows to the control thread.
//!
//! # What a call looks like to its owner
//!
//! Every call is a [`control::CallId`]. Its events arrive as values on
//! [`control::ControlThread::events`] (or tagged with their guild through
//! [`manager::VoiceManager::handle_control_event`]):
//!
//! 1. [`voice::VoiceEvent::DiscoveryRequested`] `{ ssrc, ip, port }`: do IP discovery from the
//!    call's UDP socket to `ip:port`, then feed the result back with
//!    [`control::ControlThread::set_discovered_address`].
//! 2. [`voice::VoiceEvent::SessionReady`] with a [`voice::VoiceSession`]: `ssrc`, server
//!    `ip`/`port`, `mode`, `secret_key` and `dave_protocol_version` for the sender. Speaking has
//!    already been sent (with [`voice::VoiceConfig::initial_speaking`]), so audio may flow.
//! 3. [`control::ControlThread::set_speaking`] turns Speaking on/off later;
//!    [`voice::VoiceEvent::SpeakingSent`] confirms each one went out.
//! 4. [`voice::VoiceEvent::Resuming`] / [`voice::VoiceEvent::Resumed`]: the websocket is
//!    resuming; keys and SSRC stay valid and UDP audio keeps flowing.
//!    [`voice::VoiceEvent::Reconnecting`]: the session is lost; stop audio until the next
//!    `SessionReady` (new SSRC and key). [`voice::VoiceEvent::Ended`] is the last event.
//!
//! # Joining with a main-gateway library you already run (twilight, serenity, …)
//!
//! Implement [`join::VoiceStateSender`] to send op 4 through your shard, and forward the two
//! voice dispatches:
//!
//! ```no_run
//! use std::sync::Arc;
//! use quaver_gateway::control::{ControlConfig, ControlThread};
//! use quaver_gateway::join::{UpdateVoiceState, VoiceServerUpdate, VoiceStateSender, VoiceStateUpdate};
//! use quaver_gateway::manager::VoiceManager;
//! use quaver_gateway::voice::{VoiceConfig, VoiceEvent};
//!
//! struct MyShard; // e.g. wraps twilight's `MessageSender`
//! impl VoiceStateSender for MyShard {
//!     fn send_voice_state_update(&self, update: &UpdateVoiceState) {
//!         // twilight: sender.command(&UpdateVoiceState::new(guild, channel, deaf, mute))
//!         // or write the raw frame: update.to_gateway_json()
//!         let _ = update.to_gateway_json();
//!     }
//! }
//!
//! # fn main() -> Result<(), quaver_gateway::Error> {
//! let control = Arc::new(ControlThread::spawn(ControlConfig::default())?);
//! let bot_user_id = 1234;
//! let mut voice = VoiceManager::new(control.clone(), MyShard, bot_user_id, VoiceConfig::default());
//! voice.join(111 /* guild */, 222 /* channel */)?;
//!
//! // In your library's event handler, hand over the two dispatches (typed or raw `d` JSON):
//! # let (state_json, server_json) = ("", "");
//! voice.handle_voice_state_update(&VoiceStateUpdate::from_json(state_json)?)?;
//! voice.handle_voice_server_update(&VoiceServerUpdate::from_json(server_json)?)?;
//!
//! // And drain the control thread's events somewhere:
//! for ev in control.events().iter() {
//!     let Ok(Some(call_event)) = voice.handle_control_event(ev) else { continue };
//!     match call_event.event {
//!         VoiceEvent::DiscoveryRequested { ssrc, ip, port } => {
//!             // run IP discovery with the `net` crate, then:
//!             # let (my_ip, my_port) = (String::new(), 0);
//!             control.set_discovered_address(call_event.call, my_ip, my_port)?;
//!         }
//!         VoiceEvent::SessionReady(session) => { /* hand ssrc, mode, key to the sender */ }
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Joining with the built-in main-gateway client (standalone bots)
//!
//! ```no_run
//! use std::sync::Arc;
//! use quaver_gateway::control::{ControlConfig, ControlEvent, ControlThread};
//! use quaver_gateway::main_gateway::{MainGatewayConfig, MainGatewayEvent};
//! use quaver_gateway::manager::{BotVoiceStateSender, VoiceManager};
//! use quaver_gateway::protocol::Token;
//! use quaver_gateway::voice::VoiceConfig;
//!
//! # fn main() -> Result<(), quaver_gateway::Error> {
//! let control = Arc::new(ControlThread::spawn(ControlConfig::default())?);
//! let token = Token::new(std::env::var("DISCORD_TOKEN").unwrap_or_default());
//! let bot = control.connect_bot(MainGatewayConfig::new(token))?;
//! // READY tells us who we are.
//! let user_id = loop {
//!     if let ControlEvent::MainGateway { event: MainGatewayEvent::Ready { user_id }, .. } =
//!         control.events().recv().map_err(|_| quaver_gateway::Error::ControlStopped)?
//!     {
//!         break user_id;
//!     }
//! };
//! let sender = BotVoiceStateSender::new(control.clone(), bot);
//! let mut voice = VoiceManager::new(control.clone(), sender, user_id, VoiceConfig::default());
//! voice.join(111, 222)?;
//! for ev in control.events().iter() {
//!     // Voice dispatches from the bot's socket are consumed here; call events come back.
//!     if let Ok(Some(call_event)) = voice.handle_control_event(ev) {
//!         println!("guild {}: {:?}", call_event.guild_id, call_event.event);
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! The built-in client is deliberately small: one shard, JSON without compression, no cache,
//! every dispatch other than READY/RESUMED and the two voice ones dropped, no command rate
//! limiting. It is enough for one bot in a few guilds; anything bigger should use a full
//! library through [`join::VoiceStateSender`].
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
pub mod manager;
pub mod protocol;
pub mod voice;

pub use error::Error;
