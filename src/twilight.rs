//! Joining voice through twilight-gateway 0.17 (feature `twilight`).
//!
//! Register each shard's [`MessageSender`] with a [`VoiceManager`] and pass every event you
//! receive to [`VoiceManager::process`]: it takes `Event::VoiceStateUpdate` and
//! `Event::VoiceServerUpdate` as twilight parsed them (and the bot's user ID from
//! `Event::Ready`). [`VoiceManager::join`] sends op 4 through the sender of the guild's shard
//! (`(guild_id >> 22) % shard_count`) and returns the engine's [`CallId`] at once; the call
//! connects when the two dispatches arrive. A shard whose sender is not registered, or was
//! closed (the shard dropped), holds its op 4 until a sender is registered for it
//! ([`crate::host_gateway::ShardRouter`]). Ask for the events you need: at least
//! `EventTypeFlags::READY | VOICE_STATE_UPDATE | VOICE_SERVER_UPDATE` and the
//! `GUILD_VOICE_STATES` intent.
//!
//! ```no_run
//! use std::sync::Arc;
//! use quaver::twilight::VoiceManager;
//! use quaver::{Config, Engine, FileOptions, JoinOptions};
//! use twilight_gateway::{Event, EventTypeFlags, Intents, Shard, ShardId, StreamExt as _};
//! use twilight_model::id::Id;
//!
//! # async fn bot() -> Result<(), Box<dyn std::error::Error>> {
//! let engine = Arc::new(Engine::new(Config::default())?);
//! let intents = Intents::GUILDS | Intents::GUILD_VOICE_STATES;
//! let mut shard = Shard::new(ShardId::ONE, std::env::var("DISCORD_TOKEN")?, intents);
//! let voice = VoiceManager::new(engine, shard.id().total());
//! voice.register_shard(&shard);
//! while let Some(item) = shard.next_event(EventTypeFlags::all()).await {
//!     let Ok(event) = item else { continue };
//!     voice.process(&event)?; // voice dispatches, and the user ID from Ready
//!     if let Event::Ready(_) = event {
//!         // Returns once op 4 is queued on the shard's sender.
//!         let call = voice.join(Id::new(111), Id::new(222), JoinOptions::default())?;
//!         voice.engine().play_file(call, "music.flac", FileOptions::default())?;
//!     }
//! }
//! # Ok(()) }
//! ```

use std::sync::Arc;

use twilight_gateway::{Event, MessageSender, Shard, ShardId};
use twilight_model::id::Id;
use twilight_model::id::marker::{ChannelMarker, GuildMarker, UserMarker};
use twilight_model::voice::VoiceState;

use quaver_engine::CallId;
use quaver_gateway::join::{JoinOptions, VoiceServerUpdate, VoiceStateUpdate};
use quaver_gateway::protocol::{Snowflake, Token};

use crate::host_gateway::ShardQueue;
use crate::host_voice::HostVoice;
use crate::{Engine, Error};

/// A twilight shard's command queue: op 4 goes out as a text frame (through the shard's
/// command ratelimiter).
impl ShardQueue for MessageSender {
    fn queue_frame(&self, frame: String) -> bool {
        self.send(frame).is_ok()
    }
}

/// Quaver's voice calls joined through twilight shards; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct VoiceManager {
    host: HostVoice<MessageSender>,
}

impl VoiceManager {
    /// A voice manager for `engine` and a bot with `shard_count` shards (the `total` of its
    /// [`ShardId`]s). The bot's user ID comes from the `Ready` event given to
    /// [`VoiceManager::process`], or from [`VoiceManager::with_user_id`].
    pub fn new(engine: Arc<Engine>, shard_count: u32) -> Self {
        Self {
            host: HostVoice::new(engine, shard_count, None),
        }
    }

    /// Sets the bot's user ID now (when it is known before any `Ready`).
    pub fn with_user_id(self, user_id: Id<UserMarker>) -> Self {
        let count = self.host.shard_count();
        self.host.initialise(count, user_id.get());
        self
    }

    /// Registers `shard`'s sender (see [`VoiceManager::register_sender`]).
    pub fn register_shard<Q>(&self, shard: &Shard<Q>) {
        self.register_sender(shard.id(), shard.sender());
    }

    /// Registers the sender of shard `id` (replacing an earlier one) and sends the op 4 held
    /// for it. Returns how many were sent.
    pub fn register_sender(&self, id: ShardId, sender: MessageSender) -> usize {
        self.host.register(id.number(), sender)
    }

    /// Forgets shard `number`'s sender: its op 4 is held until one is registered again.
    pub fn deregister_shard(&self, number: u32) {
        self.host.deregister(number);
    }

    /// The engine, to push audio into joined calls.
    pub fn engine(&self) -> &Arc<Engine> {
        self.host.engine()
    }

    /// Joins (or moves to) a voice channel: op 4 goes to the guild's shard now, or when its
    /// sender is registered. The returned call takes sources right away; they are heard once
    /// the voice session is ready ([`Engine::call_status`]). A call this manager already has
    /// in the guild is left first (one voice state per guild).
    ///
    /// Blocks for a round trip to Quaver's control thread (not for Discord's answer).
    /// [`Error::UserIdUnknown`] until the user ID is known.
    pub fn join(
        &self,
        guild_id: Id<GuildMarker>,
        channel_id: Id<ChannelMarker>,
        options: JoinOptions,
    ) -> Result<CallId, Error> {
        self.host.join(guild_id.get(), channel_id.get(), options)
    }

    /// Leaves the guild's call: op 4 with no channel, the voice connection closes and the call
    /// and its sources are removed.
    pub fn leave(&self, guild_id: Id<GuildMarker>) -> Result<(), Error> {
        self.host.leave(guild_id.get())
    }

    /// The call in this guild, if [`VoiceManager::join`] made one.
    pub fn call(&self, guild_id: Id<GuildMarker>) -> Option<CallId> {
        self.host.call(guild_id.get())
    }

    /// Op 4 frames waiting for their shard's sender.
    pub fn held_voice_states(&self) -> usize {
        self.host.held()
    }

    /// Takes what voice needs from a gateway event: the bot's voice state and voice server
    /// (other users' voice states and other guilds are dropped here) and, from `Ready`, the
    /// bot's user ID. Every other event is ignored, so pass them all.
    pub fn process(&self, event: &Event) -> Result<(), Error> {
        match event {
            Event::Ready(ready) => {
                let count = ready
                    .shard
                    .map_or(self.host.shard_count(), |shard| shard.total());
                self.host.initialise(count, ready.user.id.get());
                Ok(())
            }
            Event::VoiceStateUpdate(update) => self.host.state_update(&state_update(&update.0)),
            Event::VoiceServerUpdate(update) => self.host.server_update(&VoiceServerUpdate {
                token: Token::new(update.token.as_str()),
                guild_id: Snowflake(update.guild_id.get()),
                endpoint: update.endpoint.clone(),
            }),
            _ => Ok(()),
        }
    }
}

/// A twilight voice state in the engine's terms.
fn state_update(state: &VoiceState) -> VoiceStateUpdate {
    VoiceStateUpdate {
        guild_id: state.guild_id.map(|g| Snowflake(g.get())),
        channel_id: state.channel_id.map(|c| Snowflake(c.get())),
        user_id: Snowflake(state.user_id.get()),
        session_id: state.session_id.as_str().into(),
    }
}
