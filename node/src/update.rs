//! `PATCH /v4/sessions/{id}/players/{guild}`: what a client may change, validated, then
//! applied in three steps — under the state lock (voice, volume, pause, which track), outside
//! it (opening the track's input can take a while), and under it again (installing the
//! source, unless another update replaced the track meanwhile).

use std::sync::Arc;
use std::time::Duration;

use quaver::CallId;
use quaver::engine::{FileOptions, HttpOptions, SourceHandle};
use quaver::gateway::protocol::Token;
use quaver::gateway::voice::VoiceConnectRequest;
use serde::Deserialize;
use serde_json::Value;

use crate::error::ApiError;
use crate::events::{self, EndReason};
use crate::node::Shared;
use crate::player::{Player, Playing, Voice};
use crate::session::{Owner, SessionId};
use crate::tracks::{self, Loaded, Track};

/// Filters Lavalink has built in; Quaver applies `volume` only.
const BUILT_IN_FILTERS: [&str; 10] = [
    "volume",
    "equalizer",
    "karaoke",
    "timescale",
    "tremolo",
    "vibrato",
    "rotation",
    "distortion",
    "channelMix",
    "lowPass",
];

/// Deserializes a present field (even `null`) as `Some`, so "absent" and "null" differ.
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// The body of a player update.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PlayerUpdate {
    #[serde(default)]
    track: Option<TrackUpdate>,
    /// Deprecated in v4 but still sent by older clients.
    #[serde(default, deserialize_with = "present")]
    encoded_track: Option<Option<String>>,
    /// Deprecated in v4.
    #[serde(default)]
    identifier: Option<String>,
    #[serde(default)]
    position: Option<u64>,
    #[serde(default, deserialize_with = "present")]
    end_time: Option<Option<u64>>,
    #[serde(default)]
    volume: Option<i64>,
    #[serde(default)]
    paused: Option<bool>,
    #[serde(default)]
    filters: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    voice: Option<VoiceUpdate>,
}

/// `track` of an update (and of a mix layer).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TrackUpdate {
    #[serde(default, deserialize_with = "present")]
    pub encoded: Option<Option<String>>,
    #[serde(default)]
    pub identifier: Option<String>,
    #[serde(default)]
    pub user_data: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VoiceUpdate {
    token: String,
    endpoint: String,
    session_id: String,
    #[serde(default)]
    channel_id: Option<String>,
}

impl std::fmt::Debug for VoiceUpdate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoiceUpdate").finish_non_exhaustive()
    }
}

/// What the track field asks for.
enum TrackChange {
    Keep,
    Stop,
    Play(Box<Track>),
}

/// Resolves `track`'s encoded string or identifier into a track, or a stop (`encoded: null`).
pub(crate) fn resolve_track(
    shared: &Shared,
    encoded: Option<Option<String>>,
    identifier: Option<String>,
    user_data: Option<Value>,
) -> Result<Option<Option<Track>>, ApiError> {
    match (encoded, identifier) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "Cannot specify both encodedTrack and identifier",
        )),
        (Some(None), None) => Ok(Some(None)),
        (Some(Some(encoded)), None) => Track::from_encoded(&encoded, user_data)
            .map(|t| Some(Some(t)))
            .map_err(|e| ApiError::bad_request(format!("Invalid encoded track: {e}"))),
        (None, Some(identifier)) => match tracks::load(&shared.config, &identifier) {
            Loaded::Track(info, seekable) => {
                let encoded = crate::codec::encode(&info)
                    .map_err(|e| ApiError::bad_request(e.to_string()))?;
                Ok(Some(Some(Track {
                    encoded,
                    info,
                    user_data: user_data.unwrap_or_else(|| serde_json::json!({})),
                    seekable,
                })))
            }
            Loaded::Empty => Err(ApiError::bad_request("No matching track found")),
            Loaded::Failed(message, _) => Err(ApiError::bad_request(message)),
        },
        (None, None) => Ok(None),
    }
}

/// Applies `update` to the guild's player (created if new) and returns the player's JSON.
pub(crate) fn update_player(
    shared: &Arc<Shared>,
    session: &SessionId,
    guild: u64,
    update: PlayerUpdate,
    no_replace: bool,
) -> Result<Value, ApiError> {
    let limits = shared.config.limits;
    if let Some(volume) = update.volume
        && !(0..=1000).contains(&volume)
    {
        return Err(ApiError::bad_request("Volume must be between 0 and 1000"));
    }
    if let Some(Some(0)) = update.end_time {
        return Err(ApiError::bad_request("End time must be greater than 0"));
    }
    if let Some(filters) = &update.filters {
        let disabled: Vec<&str> = filters
            .keys()
            .filter(|k| BUILT_IN_FILTERS.contains(&k.as_str()) && *k != "volume")
            .map(String::as_str)
            .collect();
        if !disabled.is_empty() {
            // Lavalink's answer to a filter it does not run: 400 naming it.
            return Err(ApiError::bad_request(format!(
                "Following filters are disabled in the config: {}",
                disabled.join(", ")
            )));
        }
        if let Some(v) = filters.get("volume")
            && !v.as_f64().is_some_and(|v| (0.0..=5.0).contains(&v))
        {
            return Err(ApiError::bad_request(
                "Volume filter must be between 0 and 5",
            ));
        }
    }
    // `channelId` is required (as in Lavalink 4.2): DAVE's MLS group is the channel, so a call
    // joined without one could never encrypt end to end.
    let voice = match update.voice {
        Some(v)
            if v.token.is_empty()
                || v.endpoint.is_empty()
                || v.session_id.is_empty()
                || v.channel_id.as_deref().is_none_or(str::is_empty) =>
        {
            return Err(ApiError::bad_request(
                "Partial Lavalink voice state: token, endpoint, sessionId and channelId are required",
            ));
        }
        Some(v) => {
            let channel = v.channel_id.as_deref().and_then(|c| c.parse::<u64>().ok());
            let Some(channel) = channel.filter(|&c| c != 0) else {
                return Err(ApiError::bad_request("channelId must be a snowflake"));
            };
            Some((
                Voice {
                    token: v.token,
                    endpoint: v.endpoint,
                    session_id: v.session_id,
                    channel_id: channel.to_string(),
                },
                channel,
            ))
        }
        None => None,
    };
    let (encoded, identifier, user_data) = match update.track {
        Some(t) => (t.encoded, t.identifier, t.user_data),
        None => (update.encoded_track, update.identifier, None),
    };
    let change = match resolve_track(shared, encoded, identifier, user_data)? {
        None => TrackChange::Keep,
        Some(None) => TrackChange::Stop,
        Some(Some(track)) => TrackChange::Play(Box::new(track)),
    };

    let mut leave = Vec::new();
    let start = {
        let mut state = shared.lock();
        let state = &mut *state;
        let Some(s) = state.sessions.get_mut(session) else {
            return Err(ApiError::session_not_found());
        };
        let user_id = s.user_id;
        if !s.players.contains_key(&guild) && s.players.len() >= limits.max_players {
            return Err(ApiError::bad_request("Too many players in this session"));
        }
        let player = s.players.entry(guild).or_insert_with(|| Player::new(guild));
        let mut emitted = Vec::new();
        let mut forgotten = Vec::new();

        if let Some((voice, channel_id)) = voice
            && player.voice.as_ref() != Some(&voice)
        {
            let request = VoiceConnectRequest {
                guild_id: guild,
                channel_id,
                user_id,
                session_id: voice.session_id.clone().into(),
                token: Token::new(voice.token.clone()),
                endpoint: voice.endpoint.clone(),
            };
            let call = shared
                .engine
                .connect(request)
                .map_err(|e| ApiError::internal(format!("Cannot connect: {e}")))?;
            if let Some(old) = player.call.replace(call) {
                leave.push(old);
            }
            // The old call's sources end with it: the track restarts where it was on the
            // new call, the layers end.
            if let Some(playing) = &mut player.track
                && let Some(handle) = playing.handle.take()
            {
                playing.start_at = handle.position().as_millis() as u64;
                forgotten.push(handle.id());
            }
            for (id, layer) in std::mem::take(&mut player.layers) {
                forgotten.push(layer.handle.id());
                emitted.push(events::mix_ended(guild, &id, EndReason::Cleanup));
            }
            player.voice = Some(voice);
        }
        if let Some(volume) = update.volume {
            player.volume = volume as u16;
        }
        if let Some(filters) = update.filters {
            player.filters = Value::Object(filters);
        }
        if let Some(paused) = update.paused {
            player.paused = paused;
            for handle in player.handles() {
                if paused {
                    handle.pause();
                } else {
                    handle.resume();
                }
            }
        }
        if let Some(call) = player.call {
            // The call is new or known; failing here means it is gone, which its events say.
            let _ = shared.engine.set_call_volume(call, player.gain());
        }
        let replacing = matches!(change, TrackChange::Play(_));
        let busy = player.track.is_some();
        match change {
            TrackChange::Keep => {}
            TrackChange::Play(_) if no_replace && busy => {}
            TrackChange::Stop | TrackChange::Play(_) => {
                if let Some(old) = player.track.take() {
                    if let Some(handle) = &old.handle {
                        handle.stop();
                        forgotten.push(handle.id());
                    }
                    let reason = if replacing {
                        EndReason::Replaced
                    } else {
                        EndReason::Stopped
                    };
                    emitted.push(events::track_end(guild, &old.track, reason));
                }
                if let TrackChange::Play(track) = change {
                    state.next_play += 1;
                    let end_time = update.end_time.flatten();
                    player.track = Some(Playing::new(
                        state.next_play,
                        *track,
                        update.position.unwrap_or(0),
                        end_time,
                    ));
                }
            }
        }
        if let Some(playing) = &mut player.track {
            if let Some(end_time) = update.end_time {
                playing.end_time = end_time;
            }
            if let Some(position) = update.position {
                match &playing.handle {
                    Some(handle) => {
                        handle
                            .seek(Duration::from_millis(position))
                            .map_err(|e| ApiError::bad_request(format!("Cannot seek: {e}")))?;
                        playing.progress.1 = std::time::Instant::now();
                    }
                    None => playing.start_at = position,
                }
            }
        }
        let start = match (&player.track, player.call) {
            (Some(p), Some(call)) if p.handle.is_none() => {
                Some((call, p.play, p.track.clone(), p.start_at, player.paused))
            }
            _ => None,
        };
        for id in forgotten {
            state.sources.remove(&id);
        }
        for call in &leave {
            state.calls.remove(call);
        }
        if let Some(call) = player.call {
            state.calls.insert(call, (session.clone(), guild));
        }
        for e in emitted {
            state.emit(&limits, session, &e);
        }
        start
    };
    shared.disconnect_later(leave);
    if let Some((call, play, track, start_at, paused)) = start {
        start_track(shared, session, guild, call, play, track, start_at, paused);
    }
    let state = shared.lock();
    let player = state
        .sessions
        .get(session)
        .and_then(|s| s.players.get(&guild))
        .ok_or_else(ApiError::player_not_found)?;
    Ok(player.to_json(shared.connection(player.call)))
}

/// Opens a track's input in `call` as its source manager says (`local`: a file, `http`: a
/// download); the error is the message of its `TrackExceptionEvent`.
pub(crate) fn open_source(
    shared: &Shared,
    call: CallId,
    track: &Track,
    start_at: u64,
    paused: bool,
    volume: f32,
) -> Result<SourceHandle, String> {
    let start_at = Duration::from_millis(start_at);
    let result = match track.info.source_name.as_str() {
        "local" if shared.config.sources.local => shared.engine.play_file(
            call,
            &track.info.identifier,
            FileOptions {
                volume,
                paused,
                start_at,
                ..FileOptions::default()
            },
        ),
        "http" if shared.config.sources.http => shared.engine.play_url(
            call,
            &track.info.identifier,
            HttpOptions {
                volume,
                paused,
                start_at,
                extra_roots: shared.config.engine.control.extra_roots.clone(),
                ..HttpOptions::default()
            },
        ),
        other => return Err(format!("No source manager is enabled for \"{other}\"")),
    };
    result.map_err(|e| e.to_string())
}

/// Starts the player's track `play` and installs its source, unless the track changed
/// meanwhile; a track that cannot be opened ends with `loadFailed`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn start_track(
    shared: &Arc<Shared>,
    session: &SessionId,
    guild: u64,
    call: CallId,
    play: u64,
    track: Track,
    start_at: u64,
    paused: bool,
) {
    let opened = open_source(shared, call, &track, start_at, paused, 1.0);
    let limits = shared.config.limits;
    let mut state = shared.lock();
    let state = &mut *state;
    let player = state
        .sessions
        .get_mut(session)
        .and_then(|s| s.players.get_mut(&guild));
    let current = player.and_then(|p| {
        let same = p.track.as_ref().is_some_and(|t| t.play == play) && p.call == Some(call);
        same.then_some(p)
    });
    let Some(player) = current else {
        if let Ok(handle) = opened {
            handle.stop();
        }
        return;
    };
    match opened {
        Ok(handle) => {
            // The source knows for sure whether it seeks (an HTTP server may have changed).
            let mut track = track;
            track.seekable = Some(handle.is_seekable());
            if player.paused != handle.is_paused() {
                if player.paused {
                    handle.pause();
                } else {
                    handle.resume();
                }
            }
            let id = handle.id();
            if let Some(playing) = &mut player.track {
                playing.track.seekable = track.seekable;
                playing.handle = Some(handle);
                playing.progress = (0, std::time::Instant::now());
            }
            state.sources.insert(
                id,
                Owner {
                    session: session.clone(),
                    guild,
                    layer: None,
                },
            );
            state.emit(&limits, session, &events::track_start(guild, &track));
            if let Some(reason) = state.take_unowned_end(id) {
                state.sources.remove(&id);
                if let Some(p) = state
                    .sessions
                    .get_mut(session)
                    .and_then(|s| s.players.get_mut(&guild))
                {
                    p.track = None;
                }
                state.emit(&limits, session, &events::track_end(guild, &track, reason));
            }
        }
        Err(message) => {
            player.track = None;
            state.emit(
                &limits,
                session,
                &events::track_exception(guild, &track, &message, "common"),
            );
            state.emit(
                &limits,
                session,
                &events::track_end(guild, &track, EndReason::LoadFailed),
            );
        }
    }
}
