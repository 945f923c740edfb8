//! The join logic the serenity and twilight integrations share (see [`crate::host_gateway`]):
//! op 4 through a [`ShardRouter`], one call per guild, and dispatches filtered to this bot's own
//! voice state in guilds it joins or is in. Unused unless one of the two features is on.
#![cfg_attr(not(any(feature = "serenity", feature = "twilight")), allow(dead_code))]

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use quaver_engine::CallId;
use quaver_gateway::join::{
    JoinOptions, SendVoiceStateError, UpdateVoiceState, VoiceServerUpdate, VoiceStateSender,
    VoiceStateUpdate,
};

use crate::host_gateway::{ShardQueue, ShardRouter};
use crate::{Engine, Error};

/// One guild's call through the host library.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct GuildCall {
    /// `None` while `join` runs: op 4 is on its way and the dispatches may overtake its return.
    call: Option<CallId>,
    /// A VOICE_STATE_UPDATE put the bot in a channel since this join's op 4. Until then a
    /// state update with no channel is the echo of an earlier leave (the one a move sends
    /// first, or the user's own leave just before): a member not yet in a channel cannot be
    /// removed from one. Passed on, it would end the new join before it began.
    in_channel: bool,
}

/// Everything behind [`HostVoice`]'s lock.
#[derive(Debug)]
struct HostState<Q> {
    router: ShardRouter<Q>,
    user_id: Option<u64>,
    guilds: HashMap<u64, GuildCall>,
}

/// The join logic both integrations share: op 4 through a [`ShardRouter`], calls per guild,
/// and dispatches filtered to this bot's own voice state in guilds it is joining or in.
///
/// The lock is never held across a call into the engine: the engine's control thread takes it
/// to send op 4 while `join` waits for that thread.
pub(crate) struct HostVoice<Q> {
    engine: Arc<Engine>,
    state: Arc<Mutex<HostState<Q>>>,
}

impl<Q> Clone for HostVoice<Q> {
    fn clone(&self) -> Self {
        Self {
            engine: Arc::clone(&self.engine),
            state: Arc::clone(&self.state),
        }
    }
}

impl<Q> std::fmt::Debug for HostVoice<Q> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostVoice").finish_non_exhaustive()
    }
}

/// The engine's op 4 path for calls joined through a host library.
struct RouterSender<Q>(Arc<Mutex<HostState<Q>>>);

impl<Q: ShardQueue + Send> VoiceStateSender for RouterSender<Q> {
    fn send_voice_state_update(
        &self,
        update: &UpdateVoiceState,
    ) -> Result<(), SendVoiceStateError> {
        // Held is as good as sent: the shard sends it when it is back.
        lock(&self.0).router.send(*update);
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing behind the lock is left half-updated by a panic that matters: keep going.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<Q: ShardQueue + Send + 'static> HostVoice<Q> {
    /// For `engine`, a bot with `shard_count` shards and, when known, its user ID.
    pub(crate) fn new(engine: Arc<Engine>, shard_count: u32, user_id: Option<u64>) -> Self {
        Self {
            engine,
            state: Arc::new(Mutex::new(HostState {
                router: ShardRouter::new(shard_count),
                user_id,
                guilds: HashMap::new(),
            })),
        }
    }

    pub(crate) fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    pub(crate) fn initialise(&self, shard_count: u32, user_id: u64) {
        let mut state = lock(&self.state);
        state.router.set_shard_count(shard_count);
        state.user_id = Some(user_id);
    }

    pub(crate) fn register(&self, shard: u32, queue: Q) -> usize {
        lock(&self.state).router.register(shard, queue)
    }

    pub(crate) fn deregister(&self, shard: u32) {
        lock(&self.state).router.deregister(shard);
    }

    pub(crate) fn held(&self) -> usize {
        lock(&self.state).router.held()
    }

    pub(crate) fn shard_count(&self) -> u32 {
        lock(&self.state).router.shard_count()
    }

    pub(crate) fn call(&self, guild_id: u64) -> Option<CallId> {
        lock(&self.state).guilds.get(&guild_id).and_then(|g| g.call)
    }

    /// Joins (or moves to) a channel. A guild's earlier call is left first: one call per guild,
    /// as Discord allows one voice state per guild.
    pub(crate) fn join(
        &self,
        guild_id: u64,
        channel_id: u64,
        options: JoinOptions,
    ) -> Result<CallId, Error> {
        let (user_id, previous) = {
            let mut state = lock(&self.state);
            let user_id = state.user_id.ok_or(Error::UserIdUnknown)?;
            // Marked before op 4 can go out, so dispatches that overtake our return are kept.
            let pending = GuildCall {
                call: None,
                in_channel: false,
            };
            (user_id, state.guilds.insert(guild_id, pending))
        };
        if let Some(GuildCall {
            call: Some(old), ..
        }) = previous
        {
            // Already gone (kicked, ended) is fine: there is nothing left to leave.
            match self.engine.disconnect(old) {
                Ok(()) | Err(Error::NoSuchCall(_)) => {}
                Err(e) => tracing::warn!(%old, error = %e, "could not leave the previous call"),
            }
        }
        let sender = Arc::new(RouterSender(Arc::clone(&self.state)));
        let joined = self
            .engine
            .join_with(sender, user_id, guild_id, channel_id, options);
        let mut state = lock(&self.state);
        match joined {
            Ok(call) => {
                if let Some(g) = state.guilds.get_mut(&guild_id) {
                    g.call = Some(call);
                }
                Ok(call)
            }
            Err(e) => {
                state.guilds.remove(&guild_id);
                Err(e)
            }
        }
    }

    /// Leaves the guild's call: op 4 with no channel, then the voice connection closes.
    pub(crate) fn leave(&self, guild_id: u64) -> Result<(), Error> {
        let entry = lock(&self.state).guilds.remove(&guild_id);
        match entry.and_then(|g| g.call) {
            Some(call) => self.engine.disconnect(call),
            None => Err(Error::NotInGuild(guild_id)),
        }
    }

    /// Whether a VOICE_STATE_UPDATE is this bot's own in a guild it joins or is in, and not
    /// the echo of an earlier leave (see [`GuildCall::in_channel`]).
    fn wants_state(&self, update: &VoiceStateUpdate) -> bool {
        let mut state = lock(&self.state);
        if state.user_id != Some(update.user_id.0) {
            return false;
        }
        let Some(guild) = update.guild_id.and_then(|g| state.guilds.get_mut(&g.0)) else {
            return false;
        };
        if update.channel_id.is_some() {
            guild.in_channel = true;
            return true;
        }
        guild.in_channel
    }

    /// Hands this bot's own VOICE_STATE_UPDATE in a joined guild to the engine; others are
    /// dropped here (every member's voice state arrives, and the engine needs none of them).
    pub(crate) fn state_update(&self, update: &VoiceStateUpdate) -> Result<(), Error> {
        if !self.wants_state(update) {
            return Ok(());
        }
        self.engine.handle_voice_state_update(update)
    }

    /// Hands a VOICE_SERVER_UPDATE for a joined guild to the engine.
    pub(crate) fn server_update(&self, update: &VoiceServerUpdate) -> Result<(), Error> {
        if !lock(&self.state).guilds.contains_key(&update.guild_id.0) {
            return Ok(());
        }
        self.engine.handle_voice_server_update(update)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quaver_gateway::protocol::Snowflake;

    /// A queue that records frames.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<String>>>);

    impl Recorder {
        fn sent(&self) -> Vec<String> {
            lock(&self.0).clone()
        }
    }

    impl ShardQueue for Recorder {
        fn queue_frame(&self, frame: String) -> bool {
            lock(&self.0).push(frame);
            true
        }
    }

    #[test]
    fn only_the_bots_own_voice_state_in_a_guild_it_joins_is_wanted() {
        let mut config = crate::Config::default();
        config.engine.realtime_priority = false;
        let engine = Arc::new(Engine::new(config).unwrap());
        let host: HostVoice<Recorder> = HostVoice::new(engine, 1, None);
        let (me, guild) = (42, 7 << 22);
        let state = |user: u64, guild: u64| VoiceStateUpdate {
            guild_id: Some(Snowflake(guild)),
            channel_id: Some(Snowflake(5)),
            user_id: Snowflake(user),
            session_id: "s".into(),
        };
        let left = VoiceStateUpdate {
            channel_id: None,
            ..state(me, guild)
        };
        assert!(matches!(
            host.join(guild, 5, JoinOptions::default()),
            Err(Error::UserIdUnknown)
        ));
        assert!(
            !host.wants_state(&state(me, guild)),
            "a failed join forgets the guild"
        );
        host.initialise(1, me);
        let queue = Recorder::default();
        host.register(0, queue.clone());
        let call = host.join(guild, 5, JoinOptions::default()).unwrap();
        assert_eq!(queue.sent().len(), 1, "op 4 went to the shard");
        assert_eq!(host.call(guild), Some(call));
        assert!(
            !host.wants_state(&left),
            "no channel before any channel: the echo of an earlier leave"
        );
        assert!(host.wants_state(&state(me, guild)));
        assert!(host.wants_state(&left), "in a channel, then none: kicked");
        assert!(!host.wants_state(&state(me + 1, guild)), "another member");
        assert!(
            !host.wants_state(&state(me, guild + (1 << 22))),
            "another guild"
        );
        // Joining again in the same guild replaces the call (one voice state per guild).
        let moved = host.join(guild, 6, JoinOptions::default()).unwrap();
        assert_ne!(moved, call);
        assert_eq!(
            host.engine().call_status(call),
            None,
            "the old call is gone"
        );
        host.leave(guild).unwrap();
        assert!(!host.wants_state(&state(me, guild)));
        let channels: Vec<serde_json::Value> = queue
            .sent()
            .iter()
            .map(|f| {
                serde_json::from_str::<serde_json::Value>(f).unwrap()["d"]["channel_id"].clone()
            })
            .collect();
        assert_eq!(
            channels,
            [
                serde_json::json!("5"),
                serde_json::Value::Null,
                serde_json::json!("6"),
                serde_json::Value::Null
            ],
            "join, leave, join the new channel, leave"
        );
    }
}
