//! What the serenity and twilight integrations share: joining voice through a main-gateway
//! library the bot already runs.
//!
//! Two sans-IO pieces, used by both `quaver::serenity` and `quaver::twilight` and by anyone
//! wiring another library:
//! - [`shard_for_guild`]: which shard carries a guild (`(guild_id >> 22) % shard_count`, the
//!   rule Discord routes a guild's events by, so op 4 must go out on that shard too);
//! - [`ShardRouter`]: op 4 frames routed to their shard's outgoing queue, and held back while
//!   that shard is not registered (connecting, reconnecting, or its queue closed), then flushed
//!   in order when it registers again. Only the newest op 4 of each guild is held: a later op 4
//!   for a guild replaces the earlier one (a leave cancels a join that never went out), so the
//!   buffer is bounded by the number of guilds.
//!
//! The integrations build on a crate-private `HostVoice`: which guilds this bot is joining or
//! has joined (so dispatches for other users and guilds never reach the engine's request
//! queue), and the [`VoiceStateSender`] that hands op 4 to the router.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use quaver_engine::CallId;
use quaver_gateway::join::{
    JoinOptions, SendVoiceStateError, UpdateVoiceState, VoiceServerUpdate, VoiceStateSender,
    VoiceStateUpdate,
};

use crate::{Engine, Error};

/// The shard that carries `guild_id`'s events, and so must send its op 4:
/// `(guild_id >> 22) % shard_count`. A `shard_count` of 0 is treated as 1.
pub fn shard_for_guild(guild_id: u64, shard_count: u32) -> u32 {
    // The remainder is below `shard_count`, so it fits in a u32.
    ((guild_id >> 22) % u64::from(shard_count.max(1))) as u32
}

/// A shard's outgoing queue, as a [`ShardRouter`] sees it.
pub trait ShardQueue {
    /// Queues one main-gateway frame (the JSON text of op 4) for the shard to send. `false`
    /// means the queue is closed (the shard is gone): the router holds the frame back until a
    /// queue for that shard is registered again.
    fn queue_frame(&self, frame: String) -> bool;
}

/// What happened to one op 4 given to [`ShardRouter::send`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Queued on this shard.
    Queued {
        /// The shard.
        shard: u32,
    },
    /// Held until this shard registers (it is not registered, or its queue was closed).
    Held {
        /// The shard it waits for.
        shard: u32,
    },
}

/// Routes op 4 to the right shard's queue and holds it back while that shard is away; see the
/// [module docs](self). Sans-IO apart from the queues themselves, which only enqueue.
#[derive(Debug)]
pub struct ShardRouter<Q> {
    shard_count: u32,
    queues: HashMap<u32, Q>,
    /// The newest op 4 per guild whose shard was away; a BTreeMap, so a flush sends them in a
    /// stable order.
    held: BTreeMap<u64, UpdateVoiceState>,
}

impl<Q: ShardQueue> ShardRouter<Q> {
    /// A router for a bot with `shard_count` shards (0 is treated as 1) and none registered.
    pub fn new(shard_count: u32) -> Self {
        Self {
            shard_count: shard_count.max(1),
            queues: HashMap::new(),
            held: BTreeMap::new(),
        }
    }

    /// The bot's shard count (serenity learns it when the client starts).
    pub fn shard_count(&self) -> u32 {
        self.shard_count
    }

    /// Changes the shard count. Held frames are routed by the new count when shards register.
    pub fn set_shard_count(&mut self, shard_count: u32) {
        self.shard_count = shard_count.max(1);
    }

    /// Sends `update` on its guild's shard, or holds it back until that shard registers.
    pub fn send(&mut self, update: UpdateVoiceState) -> Delivery {
        let guild = update.guild_id.0;
        let shard = shard_for_guild(guild, self.shard_count);
        // A held op 4 for this guild is outdated by this one.
        self.held.remove(&guild);
        if let Some(queue) = self.queues.get(&shard) {
            if queue.queue_frame(update.to_gateway_json()) {
                return Delivery::Queued { shard };
            }
            tracing::debug!(
                shard,
                "a shard's queue is closed: holding op 4 until it returns"
            );
            self.queues.remove(&shard);
        }
        self.held.insert(guild, update);
        Delivery::Held { shard }
    }

    /// Registers (or replaces) `shard`'s queue and flushes the frames held for it, oldest
    /// guild ID first. Returns how many were queued.
    pub fn register(&mut self, shard: u32, queue: Q) -> usize {
        let waiting: Vec<u64> = self
            .held
            .keys()
            .copied()
            .filter(|&guild| shard_for_guild(guild, self.shard_count) == shard)
            .collect();
        let mut flushed = 0;
        for guild in waiting {
            let Some(update) = self.held.get(&guild) else {
                continue;
            };
            if !queue.queue_frame(update.to_gateway_json()) {
                // Closed already: keep the rest held and the shard unregistered.
                return flushed;
            }
            self.held.remove(&guild);
            flushed += 1;
        }
        self.queues.insert(shard, queue);
        flushed
    }

    /// Forgets `shard`'s queue (it is reconnecting or shutting down): its op 4 is held from now
    /// on. Returns the queue.
    pub fn deregister(&mut self, shard: u32) -> Option<Q> {
        self.queues.remove(&shard)
    }

    /// Whether `shard` has a queue.
    pub fn is_registered(&self, shard: u32) -> bool {
        self.queues.contains_key(&shard)
    }

    /// How many op 4 frames are held back.
    pub fn held(&self) -> usize {
        self.held.len()
    }
}

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

    /// A queue that records frames, or is closed.
    #[derive(Clone, Default)]
    struct Recorder {
        frames: Arc<Mutex<Vec<String>>>,
        closed: bool,
    }

    impl Recorder {
        fn sent(&self) -> Vec<String> {
            lock(&self.frames).clone()
        }
    }

    impl ShardQueue for Recorder {
        fn queue_frame(&self, frame: String) -> bool {
            if self.closed {
                return false;
            }
            lock(&self.frames).push(frame);
            true
        }
    }

    fn op4(guild: u64, channel: Option<u64>) -> UpdateVoiceState {
        UpdateVoiceState {
            guild_id: Snowflake(guild),
            channel_id: channel.map(Snowflake),
            self_mute: false,
            self_deaf: true,
        }
    }

    /// A guild ID whose shard (of `count`) is `shard`.
    fn guild_on(shard: u64, count: u64, n: u64) -> u64 {
        ((n * count + shard) << 22) | 0x2a
    }

    #[test]
    fn shards_follow_discords_formula() {
        // A real-looking snowflake: (id >> 22) is the millisecond timestamp part.
        let guild = 81_384_788_765_712_384_u64;
        assert_eq!(shard_for_guild(guild, 1), 0);
        assert_eq!(
            shard_for_guild(guild, 16),
            ((guild >> 22) % 16) as u32,
            "timestamp part modulo the count"
        );
        assert_eq!(shard_for_guild(guild_on(5, 8, 3), 8), 5);
        assert_eq!(
            shard_for_guild(guild, 0),
            0,
            "no shards counts as one, never divides by zero"
        );
        assert_eq!(
            shard_for_guild(u64::MAX, u32::MAX),
            ((u64::MAX >> 22) % u64::from(u32::MAX)) as u32
        );
    }

    #[test]
    fn op4_goes_to_its_guilds_shard() {
        let mut router = ShardRouter::new(4);
        let queues: Vec<Recorder> = (0..4).map(|_| Recorder::default()).collect();
        for (shard, q) in queues.iter().enumerate() {
            assert_eq!(router.register(shard as u32, q.clone()), 0);
        }
        let guild = guild_on(2, 4, 7);
        assert_eq!(
            router.send(op4(guild, Some(9))),
            Delivery::Queued { shard: 2 }
        );
        let sent: Vec<usize> = queues.iter().map(|q| q.sent().len()).collect();
        assert_eq!(sent, [0, 0, 1, 0]);
        let frame: serde_json::Value = serde_json::from_str(&queues[2].sent()[0]).unwrap();
        assert_eq!(
            frame,
            serde_json::json!({"op": 4, "d": {"guild_id": guild.to_string(), "channel_id": "9", "self_mute": false, "self_deaf": true}})
        );
    }

    #[test]
    fn op4_waits_for_its_shard_and_only_the_newest_per_guild_is_sent() {
        let mut router = ShardRouter::new(2);
        let (a, b, other) = (guild_on(1, 2, 1), guild_on(1, 2, 2), guild_on(0, 2, 1));
        assert_eq!(router.send(op4(a, Some(1))), Delivery::Held { shard: 1 });
        assert_eq!(router.send(op4(b, Some(2))), Delivery::Held { shard: 1 });
        // A leave replaces the join that never went out.
        router.send(op4(b, None));
        router.send(op4(other, Some(3)));
        assert_eq!(router.held(), 3);

        let zero = Recorder::default();
        assert_eq!(router.register(0, zero.clone()), 1, "only shard 0's guild");
        assert_eq!(router.held(), 2);
        let one = Recorder::default();
        assert_eq!(router.register(1, one.clone()), 2);
        let guilds_and_channels: Vec<(String, serde_json::Value)> = one
            .sent()
            .iter()
            .map(|f| {
                let v: serde_json::Value = serde_json::from_str(f).unwrap();
                (
                    v["d"]["guild_id"].as_str().unwrap().to_string(),
                    v["d"]["channel_id"].clone(),
                )
            })
            .collect();
        assert_eq!(
            guilds_and_channels,
            [
                (a.to_string(), serde_json::json!("1")),
                (b.to_string(), serde_json::Value::Null)
            ]
        );
        assert_eq!(router.held(), 0);
    }

    #[test]
    fn a_closed_queue_holds_op4_until_the_shard_registers_again() {
        let mut router = ShardRouter::new(1);
        router.register(
            0,
            Recorder {
                closed: true,
                ..Recorder::default()
            },
        );
        assert!(router.is_registered(0));
        assert_eq!(
            router.send(op4(7 << 22, Some(1))),
            Delivery::Held { shard: 0 }
        );
        assert!(!router.is_registered(0), "a closed queue is dropped");
        // Registering another closed queue keeps the frame and the shard unregistered.
        let closed = Recorder {
            closed: true,
            ..Recorder::default()
        };
        assert_eq!(router.register(0, closed), 0);
        assert!(!router.is_registered(0));
        assert_eq!(router.held(), 1);
        let open = Recorder::default();
        assert_eq!(router.register(0, open.clone()), 1);
        assert_eq!(open.sent().len(), 1);
        // Deregistered (reconnecting): held again.
        assert!(router.deregister(0).is_some());
        assert_eq!(router.send(op4(7 << 22, None)), Delivery::Held { shard: 0 });
        assert_eq!(open.sent().len(), 1);
    }

    #[test]
    fn a_new_shard_count_routes_held_frames_by_it() {
        let mut router = ShardRouter::new(1);
        let guild = guild_on(3, 4, 2);
        router.send(op4(guild, Some(1)));
        router.set_shard_count(4);
        let zero = Recorder::default();
        assert_eq!(router.register(0, zero.clone()), 0);
        assert_eq!(router.register(3, Recorder::default()), 1);
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
