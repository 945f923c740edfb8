//! Joining voice through serenity 0.12 (feature `serenity`).
//!
//! [`VoiceManager`] is serenity's [`VoiceGatewayManager`]: give it to the client builder and
//! serenity hands it the bot's user ID and shard count, each shard's runner queue as the shard
//! becomes ready, and every VOICE_STATE_UPDATE and VOICE_SERVER_UPDATE. [`VoiceManager::join`]
//! sends op 4 on the guild's shard (`(guild_id >> 22) % shard_count`) through that queue and
//! returns the engine's [`CallId`] at once; the call connects when the two dispatches arrive.
//! While a shard is reconnecting (between serenity's `deregister_shard` and `register_shard`)
//! its op 4 waits, and goes out when the shard is back ([`crate::host_gateway::ShardRouter`]).
//! Only the bot's own voice state in guilds it joins reaches the engine.
//!
//! ```no_run
//! use std::sync::Arc;
//! use quaver::serenity::VoiceManager;
//! use quaver::{Config, Engine, FileOptions, JoinOptions};
//! use serenity::all::{ChannelId, Client, Context, EventHandler, GatewayIntents, GuildId, Ready};
//! use serenity::async_trait;
//!
//! struct Bot(Arc<VoiceManager>);
//!
//! #[async_trait]
//! impl EventHandler for Bot {
//!     async fn ready(&self, _: Context, _: Ready) {
//!         let (guild, channel) = (GuildId::new(111), ChannelId::new(222));
//!         // Returns once op 4 is queued on the guild's shard (a round trip to Quaver's
//!         // control thread, well under a millisecond).
//!         let call = self.0.join(guild, channel, JoinOptions::default()).expect("join");
//!         let engine = self.0.engine();
//!         engine.play_file(call, "music.flac", FileOptions::default()).expect("play");
//!     }
//! }
//!
//! # async fn bot() -> Result<(), Box<dyn std::error::Error>> {
//! let engine = Arc::new(Engine::new(Config::default())?);
//! let voice = VoiceManager::new(engine);
//! // GUILD_VOICE_STATES: without it Discord sends no voice dispatches.
//! let intents = GatewayIntents::GUILDS | GatewayIntents::GUILD_VOICE_STATES;
//! let mut client = Client::builder(std::env::var("DISCORD_TOKEN")?, intents)
//!     .voice_manager_arc(voice.clone())
//!     .event_handler(Bot(voice))
//!     .await?;
//! client.start().await?;
//! # Ok(()) }
//! ```

use std::sync::Arc;

use serenity::async_trait;
use serenity::futures::channel::mpsc::UnboundedSender;
use serenity::gateway::{ShardRunnerMessage, VoiceGatewayManager};
use serenity::model::id::{ChannelId, GuildId, UserId};
use serenity::model::voice::VoiceState;

use quaver_engine::CallId;
use quaver_gateway::join::{JoinOptions, VoiceServerUpdate, VoiceStateUpdate};
use quaver_gateway::protocol::{Snowflake, Token};

use crate::host_gateway::ShardQueue;
use crate::host_voice::HostVoice;
use crate::{Engine, Error};

/// A serenity shard runner's queue: op 4 goes out as a text frame on the shard's websocket.
impl ShardQueue for UnboundedSender<ShardRunnerMessage> {
    fn queue_frame(&self, frame: String) -> bool {
        self.unbounded_send(ShardRunnerMessage::Message(frame.into()))
            .is_ok()
    }
}

/// Quaver as serenity's voice manager; see the [module docs](self).
#[derive(Debug)]
pub struct VoiceManager {
    host: HostVoice<UnboundedSender<ShardRunnerMessage>>,
}

impl VoiceManager {
    /// A voice manager for `engine`, to hand to serenity's client builder
    /// (`voice_manager_arc`). It learns the user ID and shard count from serenity.
    pub fn new(engine: Arc<Engine>) -> Arc<Self> {
        Arc::new(Self {
            host: HostVoice::new(engine, 1, None),
        })
    }

    /// The engine, to push audio into joined calls.
    pub fn engine(&self) -> &Arc<Engine> {
        self.host.engine()
    }

    /// Joins (or moves to) a voice channel: op 4 goes to the guild's shard now, or when that
    /// shard is back if it is reconnecting. The returned call takes sources right away; they
    /// are heard once the voice session is ready ([`Engine::call_status`]). A call this
    /// manager already has in the guild is left first (one voice state per guild).
    ///
    /// Blocks for a round trip to Quaver's control thread (not for Discord's answer).
    /// [`Error::UserIdUnknown`] until serenity has started the client.
    pub fn join(
        &self,
        guild_id: GuildId,
        channel_id: ChannelId,
        options: JoinOptions,
    ) -> Result<CallId, Error> {
        self.host.join(guild_id.get(), channel_id.get(), options)
    }

    /// Leaves the guild's call: op 4 with no channel, the voice connection closes and the call
    /// and its sources are removed.
    pub fn leave(&self, guild_id: GuildId) -> Result<(), Error> {
        self.host.leave(guild_id.get())
    }

    /// The call in this guild, if [`VoiceManager::join`] made one.
    pub fn call(&self, guild_id: GuildId) -> Option<CallId> {
        self.host.call(guild_id.get())
    }

    /// Op 4 frames waiting for their shard to come back.
    pub fn held_voice_states(&self) -> usize {
        self.host.held()
    }

    /// The shard count serenity announced (1 until it did).
    pub fn shard_count(&self) -> u32 {
        self.host.shard_count()
    }
}

/// A serenity VOICE_STATE_UPDATE in the engine's terms.
fn state_update(guild_id: GuildId, state: &VoiceState) -> VoiceStateUpdate {
    VoiceStateUpdate {
        guild_id: Some(Snowflake(guild_id.get())),
        channel_id: state.channel_id.map(|c| Snowflake(c.get())),
        user_id: Snowflake(state.user_id.get()),
        session_id: state.session_id.as_str().into(),
    }
}

#[async_trait]
impl VoiceGatewayManager for VoiceManager {
    async fn initialise(&self, shard_count: u32, user_id: UserId) {
        self.host.initialise(shard_count, user_id.get());
    }

    async fn register_shard(&self, shard_id: u32, sender: UnboundedSender<ShardRunnerMessage>) {
        let flushed = self.host.register(shard_id, sender);
        if flushed > 0 {
            tracing::debug!(shard_id, flushed, "sent op 4 held while the shard was away");
        }
    }

    async fn deregister_shard(&self, shard_id: u32) {
        self.host.deregister(shard_id);
    }

    async fn server_update(&self, guild_id: GuildId, endpoint: &Option<String>, token: &str) {
        let update = VoiceServerUpdate {
            token: Token::new(token),
            guild_id: Snowflake(guild_id.get()),
            endpoint: endpoint.clone(),
        };
        // Serenity gives the handler no way to fail; the engine is stopping if this does.
        if let Err(e) = self.host.server_update(&update) {
            tracing::warn!(guild = guild_id.get(), error = %e, "VOICE_SERVER_UPDATE not handled");
        }
    }

    async fn state_update(&self, guild_id: GuildId, voice_state: &VoiceState) {
        if let Err(e) = self.host.state_update(&state_update(guild_id, voice_state)) {
            tracing::warn!(guild = guild_id.get(), error = %e, "VOICE_STATE_UPDATE not handled");
        }
    }
}
