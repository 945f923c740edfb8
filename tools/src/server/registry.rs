//! The state the server's threads share: the [`Registry`] (sessions indexed by SSRC and by
//! call, issued credentials, per-SSRC receive records, counters) and [`Shared`], which holds it
//! beside the configuration and the sockets' addresses.

use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use quaver_gateway::protocol::{Token, VoicePayload};

#[cfg(doc)]
use super::Server;
use super::dave::{self, DaveCallStats};
use super::session::{Outgoing, Session};
use super::stats::{self, Percentiles};
use super::{CallStats, Counters, ServerConfig, ServerEvent, StreamStats};

/// One voice channel of one guild: the unit that hears itself (and, with DAVE, one group).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct CallKey {
    pub guild_id: u64,
    pub channel_id: u64,
}

/// Final statistics of streams whose call ended, kept for reports (each is a few hundred bytes;
/// a live stream's meter is hundreds of KB, and is freed when its call ends). The oldest go first.
pub(crate) const MAX_ENDED_STREAMS: usize = 4_096;

/// Credentials handed out by op 4 (or [`Server::voice_connect_request`]), for one channel.
pub(crate) struct Issued {
    pub channel_id: u64,
    pub session_id: String,
    pub token: Token,
}

/// Everything shared between the server's threads.
pub(crate) struct Registry {
    pub sessions: HashMap<u64, Session>,
    pub by_ssrc: HashMap<u32, u64>,
    /// Session keys per voice channel, so forwarding a packet touches only its call.
    pub by_call: HashMap<CallKey, Vec<u64>>,
    pub issued: HashMap<(u64, u64), Issued>,
    /// Main-gateway sessions, for Resume: session ID → (user ID, last seq sent when its last
    /// connection ended).
    pub main_sessions: HashMap<String, (u64, u64)>,
    pub next_session: u64,
    pub next_ssrc: u32,
    pub next_user: u64,
    pub counters: Counters,
    /// Receive statistics per SSRC of live calls (and of ended ones whose decoded audio is kept).
    pub streams: HashMap<u32, StreamRecord>,
    /// Final statistics of streams of ended calls, oldest first, at most [`MAX_ENDED_STREAMS`].
    pub ended_streams: VecDeque<StreamStats>,
    /// (guild, user) pairs already closed by the `close_code` fault.
    pub close_faulted: std::collections::HashSet<(u64, u64)>,
    /// The last report of each (guild, channel) DAVE group.
    pub dave_calls: HashMap<(u64, u64), DaveCallStats>,
}

pub(crate) struct StreamRecord {
    pub guild_id: u64,
    pub channel_id: u64,
    pub user_id: u64,
    pub meter: stats::StreamMeter,
    /// Whether the server decodes this stream (else the two counts below mean nothing).
    pub decodes: bool,
    pub decode_errors: u64,
    pub decoded_samples: u64,
    pub recording: Option<PathBuf>,
    pub decoded: Vec<i16>,
    pub dave_frames: u64,
    pub dave_undecryptable: u64,
    /// E2EE frames received (opened or not; see [`DAVE_SAMPLE`]).
    pub dave_seen: u64,
}

/// A server that does not decode opens one E2EE frame in this many per stream (one a second),
/// enough to catch a sender whose E2EE is wrong. Opening every frame was 42 % of the UDP
/// thread's time at 3,000 calls (perf), on the cores the engine it measures runs on; Discord's
/// own servers cannot open them at all.
pub(crate) const DAVE_SAMPLE: u64 = 50;

impl StreamRecord {
    /// Whether the server opens this E2EE frame, counting it.
    pub fn opens_dave_frame(&mut self) -> bool {
        let open = self.decodes || self.dave_seen.is_multiple_of(DAVE_SAMPLE);
        self.dave_seen += 1;
        open
    }

    pub fn snapshot(&self, ssrc: u32) -> StreamStats {
        StreamStats {
            ssrc,
            user_id: self.user_id,
            guild_id: self.guild_id,
            channel_id: self.channel_id,
            packets: self.meter.packets,
            unique_packets: self.meter.unique(),
            bytes: self.meter.bytes,
            lost: self.meter.lost(),
            reordered: self.meter.reordered,
            duplicates: self.meter.duplicates,
            timestamp_step_errors: self.meter.timestamp_step_errors,
            decode_errors: self.decodes.then_some(self.decode_errors),
            decoded_samples: self.decodes.then_some(self.decoded_samples),
            lateness_us: Some(Percentiles::of(&self.meter.lateness())).filter(|p| p.count > 0),
            jitter_us: Some(Percentiles::of_ns(&self.meter.jitter_ns)).filter(|p| p.count > 0),
            recording: self.recording.clone(),
            dave_frames: self.dave_frames,
            dave_undecryptable: self.dave_undecryptable,
        }
    }
}

impl Registry {
    /// An empty registry: SSRCs are handed out from a random point below 2³¹, main-gateway
    /// user IDs from `first_user_id`.
    pub fn new(first_user_id: u64) -> Self {
        Registry {
            sessions: HashMap::new(),
            by_ssrc: HashMap::new(),
            by_call: HashMap::new(),
            issued: HashMap::new(),
            main_sessions: HashMap::new(),
            next_session: 0,
            next_ssrc: rand::random::<u32>() >> 1,
            next_user: first_user_id,
            counters: Counters::default(),
            streams: HashMap::new(),
            ended_streams: VecDeque::new(),
            close_faulted: Default::default(),
            dave_calls: HashMap::new(),
        }
    }

    /// Adds a session to the indexes.
    pub fn insert_session(&mut self, key: u64, session: Session) {
        self.by_ssrc.insert(session.ssrc, key);
        self.by_call.entry(session.key()).or_default().push(key);
        self.sessions.insert(key, session);
    }

    /// The sessions of one call (voice channel).
    pub fn call_members(&self, call: CallKey) -> &[u64] {
        self.by_call.get(&call).map_or(&[], Vec::as_slice)
    }

    pub fn session_by_ssrc(&mut self, ssrc: u32) -> Option<&mut Session> {
        let id = *self.by_ssrc.get(&ssrc)?;
        self.sessions.get_mut(&id)
    }

    pub fn call_stats(&self, call: CallKey) -> CallStats {
        let mut streams: Vec<StreamStats> = self
            .streams
            .iter()
            .filter(|(_, r)| r.guild_id == call.guild_id && r.channel_id == call.channel_id)
            .map(|(ssrc, r)| r.snapshot(*ssrc))
            .chain(
                self.ended_streams
                    .iter()
                    .filter(|s| s.guild_id == call.guild_id && s.channel_id == call.channel_id)
                    .filter(|s| !self.streams.contains_key(&s.ssrc))
                    .cloned(),
            )
            .collect();
        streams.sort_by_key(|s| (s.user_id, s.ssrc));
        let dave = self
            .dave_calls
            .get(&(call.guild_id, call.channel_id))
            .cloned();
        CallStats {
            guild_id: call.guild_id,
            channel_id: call.channel_id,
            ended: !self.by_call.contains_key(&call),
            streams,
            dave,
        }
    }

    /// Ends every session of `user_id` in `guild_id` (a user is in one channel per guild).
    pub fn end_sessions_of(&mut self, guild_id: u64, user_id: u64, shared: &Shared) {
        let ids: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.guild_id == guild_id && s.user_id == user_id)
            .map(|(k, _)| *k)
            .collect();
        for id in ids {
            self.end_session(id, shared);
        }
    }

    /// Removes a session; tells the rest of its call and reports the call when it was the last.
    pub fn end_session(&mut self, id: u64, shared: &Shared) {
        let Some(s) = self.sessions.remove(&id) else {
            return;
        };
        self.by_ssrc.remove(&s.ssrc);
        let call = s.key();
        if s.dave_version > 0 {
            dave::session_ended(shared, id, s.guild_id, s.channel_id);
        }
        if let Some(members) = self.by_call.get_mut(&call) {
            members.retain(|k| *k != id);
            if members.is_empty() {
                self.by_call.remove(&call);
            }
        }
        if let Some((_, tx)) = &s.outbox {
            let _ = tx.send(Outgoing::Close(
                quaver_gateway::protocol::close_code::DISCONNECTED,
            ));
        }
        let gone = VoicePayload::ClientDisconnect(quaver_gateway::protocol::ClientDisconnect {
            user_id: s.user_id.into(),
        });
        let cap = shared.config.replay_buffer;
        for key in self.by_call.get(&call).into_iter().flatten() {
            if let Some(other) = self.sessions.get_mut(key) {
                other.push(&gone, cap);
                other.forget(s.ssrc);
            }
        }
        tracing::info!(
            guild = s.guild_id,
            channel = s.channel_id,
            user = s.user_id,
            ssrc = s.ssrc,
            "voice session ended"
        );
        if !self.by_call.contains_key(&call) {
            let stats = self.call_stats(call);
            if !shared.config.keep_decoded_audio {
                self.retire_streams(&stats);
            }
            let _ = shared.events_tx.send(ServerEvent::CallEnded(stats));
        }
    }

    /// The call of `stats` ended: free its streams' meters, keep their final figures.
    pub fn retire_streams(&mut self, stats: &CallStats) {
        for s in &stats.streams {
            if self.streams.remove(&s.ssrc).is_some() {
                self.ended_streams.retain(|e| e.ssrc != s.ssrc);
                if self.ended_streams.len() >= MAX_ENDED_STREAMS {
                    self.ended_streams.pop_front();
                }
                self.ended_streams.push_back(s.clone());
            }
        }
    }

    /// Per-stream meters held (live streams; ended ones only with decoded audio kept).
    pub fn held_meters(&self) -> usize {
        self.streams.len()
    }

    /// The next SSRC no live session owns (never 0).
    pub fn fresh_ssrc(&mut self) -> u32 {
        loop {
            self.next_ssrc = self.next_ssrc.wrapping_add(1);
            if self.next_ssrc != 0 && !self.by_ssrc.contains_key(&self.next_ssrc) {
                return self.next_ssrc;
            }
        }
    }
}

/// Immutable configuration plus the shared state, one per server.
pub(crate) struct Shared {
    pub config: ServerConfig,
    pub stop: AtomicBool,
    pub registry: Mutex<Registry>,
    pub events_tx: crossbeam_channel::Sender<ServerEvent>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub voice_addr: SocketAddr,
    pub main_addr: SocketAddr,
    pub udp_addr: SocketAddr,
    pub udp: UdpSocket,
    pub ws_generation: AtomicU64,
    pub dave: dave::Hub,
    /// Websocket connection threads running (both gateways).
    pub live_connections: AtomicUsize,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, Registry> {
        // A panicking server thread must not take the whole server down with a poisoned lock;
        // the registry holds plain data that stays consistent between statements.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// The `endpoint` of VOICE_SERVER_UPDATE: a bare `host:port` under TLS (clients add
    /// `wss://`), an explicit `ws://host:port` otherwise, since a bare endpoint means TLS.
    pub fn voice_endpoint(&self) -> String {
        if self.tls.is_some() {
            self.voice_addr.to_string()
        } else {
            format!("ws://{}", self.voice_addr)
        }
    }

    /// Issues voice credentials for a user in a channel (replacing any earlier ones: a user is
    /// in one channel per guild).
    pub fn issue(
        &self,
        reg: &mut Registry,
        guild_id: u64,
        channel_id: u64,
        user_id: u64,
    ) -> (String, Token) {
        let session_id = random_hex(16);
        let token = Token::new(random_hex(16));
        reg.issued.insert(
            (guild_id, user_id),
            Issued {
                channel_id,
                session_id: session_id.clone(),
                token: token.clone(),
            },
        );
        (session_id, token)
    }
}

pub(crate) fn random_hex(bytes: usize) -> String {
    let mut out = String::with_capacity(bytes * 2);
    for _ in 0..bytes {
        out.push_str(&format!("{:02x}", rand::random::<u8>()));
    }
    out
}
