//! A guild's player: its voice connection (one Quaver call), its track (one source in that
//! call), volume, pause, filters and mix layers, and the JSON the API shows of it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use quaver::CallId;
use quaver::engine::SourceHandle;
use serde_json::{Value, json};

use crate::tracks::Track;

/// What the API shows of a player's voice connection.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Connection {
    /// The voice session is up.
    pub connected: bool,
    /// The voice gateway's last heartbeat round trip, while connected.
    pub ping: Option<Duration>,
}

/// The voice credentials a client PATCHes in; the token and session id are secrets.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Voice {
    pub token: String,
    pub endpoint: String,
    pub session_id: String,
    pub channel_id: String,
}

impl std::fmt::Debug for Voice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Voice")
            .field("endpoint", &self.endpoint)
            .field("channel_id", &self.channel_id)
            .finish_non_exhaustive()
    }
}

/// The player's current track.
#[derive(Debug)]
pub(crate) struct Playing {
    /// Tells a track apart from the one that replaced it while its source was starting.
    pub play: u64,
    pub track: Track,
    /// `None` until the source runs (no voice connection yet, or starting).
    pub handle: Option<SourceHandle>,
    /// Where the source should start (ms), for a track that waits for its source.
    pub start_at: u64,
    /// Stop (reason `finished`) at this position (ms).
    pub end_time: Option<u64>,
    /// Audible frames when last checked, and since when that number has stood still.
    pub progress: (u64, Instant),
    pub stuck_reported: bool,
    /// Underruns at the last `stats` message, for `frameStats.nulled`.
    pub underruns_at_stats: u64,
}

impl Playing {
    pub(crate) fn new(play: u64, track: Track, start_at: u64, end_time: Option<u64>) -> Self {
        Self {
            play,
            track,
            handle: None,
            start_at,
            end_time,
            progress: (0, Instant::now()),
            stuck_reported: false,
            underruns_at_stats: 0,
        }
    }

    /// The playback position in ms.
    pub(crate) fn position(&self) -> u64 {
        self.handle
            .as_ref()
            .map_or(self.start_at, |h| h.position().as_millis() as u64)
    }
}

/// A mix layer: a track played over the player's own (the NodeLink mix extension).
#[derive(Debug)]
pub(crate) struct Layer {
    pub track: Track,
    pub handle: SourceHandle,
    pub volume: f32,
    /// When it started, in ms since the Unix epoch.
    pub start_time: u64,
}

/// One guild's player.
#[derive(Debug)]
pub(crate) struct Player {
    pub guild: u64,
    pub voice: Option<Voice>,
    pub call: Option<CallId>,
    pub track: Option<Playing>,
    /// 0–1000, 100 = unity.
    pub volume: u16,
    pub paused: bool,
    /// The `filters` object as the client last set it (only `volume` has an effect).
    pub filters: Value,
    pub layers: BTreeMap<String, Layer>,
}

impl Player {
    pub(crate) fn new(guild: u64) -> Self {
        Self {
            guild,
            voice: None,
            call: None,
            track: None,
            volume: 100,
            paused: false,
            filters: json!({}),
            layers: BTreeMap::new(),
        }
    }

    /// Every running source of the player.
    pub(crate) fn handles(&self) -> Vec<SourceHandle> {
        self.track
            .iter()
            .filter_map(|p| p.handle.clone())
            .chain(self.layers.values().map(|l| l.handle.clone()))
            .collect()
    }

    /// The call's gain: the player's volume times the volume filter.
    pub(crate) fn gain(&self) -> f32 {
        let filter = self
            .filters
            .get("volume")
            .and_then(Value::as_f64)
            .unwrap_or(1.0) as f32;
        (f32::from(self.volume) / 100.0 * filter).clamp(0.0, quaver::engine::MAX_VOLUME)
    }

    /// The API's player object.
    pub(crate) fn to_json(&self, connection: Connection) -> Value {
        let position = self.track.as_ref().map_or(0, Playing::position);
        json!({
            "guildId": self.guild.to_string(),
            "track": self.track.as_ref().map(|p| p.track.to_json(Some(position))),
            "volume": self.volume,
            "paused": self.paused,
            "state": self.state_json(connection),
            "voice": self.voice.as_ref().map_or_else(
                || json!({"token": "", "endpoint": "", "sessionId": ""}),
                |v| json!({
                    "token": v.token,
                    "endpoint": v.endpoint,
                    "sessionId": v.session_id,
                    "channelId": v.channel_id,
                }),
            ),
            "filters": self.filters,
        })
    }

    /// The `state` object of players and `playerUpdate`; `ping` is the voice gateway's
    /// heartbeat round trip in ms, -1 when not connected or not measured yet (as Lavalink).
    pub(crate) fn state_json(&self, connection: Connection) -> Value {
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let ping = match connection.ping {
            Some(rtt) if connection.connected => i64::try_from(rtt.as_millis()).unwrap_or(i64::MAX),
            _ => -1,
        };
        json!({
            "time": time,
            "position": self.track.as_ref().map_or(0, Playing::position),
            "connected": connection.connected,
            "ping": ping,
        })
    }
}
