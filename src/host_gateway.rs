//! What the serenity and twilight integrations share: joining voice through a main-gateway
//! library the bot already runs.
//!
//! Two sans-IO pieces, used by both `quaver::serenity` and `quaver::twilight` and by anyone
//! wiring another library:
//! - [`shard_for_guild`]: which shard carries a guild (`(guild_id >> 22) % shard_count`, the
//!   rule Discord routes a guild's events by, so op 4 must go out on that shard too);
//! - [`ShardRouter`]: op 4 frames routed to their shard's outgoing queue, and held back while
//!   that shard is not registered (connecting, reconnecting, or its queue closed), then flushed
//!   when it registers again. Only the newest op 4 of each guild is held: a later op 4 for a
//!   guild replaces the earlier one (a leave cancels a join that never went out), so the buffer
//!   is bounded by the number of guilds, and the order between guilds does not matter.
//!
//! The integrations build on a crate-private `HostVoice` (`src/host_voice.rs`): which guilds
//! this bot is joining or has joined (so dispatches for other users and guilds never reach the
//! engine's request queue), and the `VoiceStateSender` that hands op 4 to the router.

use std::collections::{BTreeMap, HashMap};

use quaver_gateway::join::UpdateVoiceState;

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

#[cfg(test)]
mod tests {
    use super::*;
    use quaver_gateway::protocol::Snowflake;
    use std::sync::{Arc, Mutex};

    /// A queue that records frames, or is closed.
    #[derive(Clone, Default)]
    struct Recorder {
        frames: Arc<Mutex<Vec<String>>>,
        closed: bool,
    }

    impl Recorder {
        fn sent(&self) -> Vec<String> {
            self.frames.lock().unwrap().clone()
        }
    }

    impl ShardQueue for Recorder {
        fn queue_frame(&self, frame: String) -> bool {
            if self.closed {
                return false;
            }
            self.frames.lock().unwrap().push(frame);
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
}
