//! The mix extension, as NodeLink defines it so clients that support NodeLink's mixer work
//! unchanged: `POST/GET /v4/sessions/{id}/players/{guild}/mix` (body `{track: {encoded},
//! volume}` with volume 0–1; answers 201 `{id, track, volume}` and `{mixes: [{id, track,
//! volume, position, startTime}]}`), `PATCH/DELETE …/mix/{mixId}` (204), and the events
//! `MixStartedEvent {mixId, track, volume}` and `MixEndedEvent {mixId, reason}`. Each layer is
//! one more source in the player's call, mixed by Quaver's mixer at its own gain; the player's
//! volume applies on top. Quaver also accepts `track.identifier`, like a player update.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::events::{self, EndReason};
use crate::node::Shared;
use crate::player::Layer;
use crate::session::{Owner, SessionId};
use crate::update::{TrackUpdate, open_source, resolve_track};

/// `POST …/mix`.
#[derive(Debug, Deserialize)]
pub(crate) struct AddLayer {
    track: TrackUpdate,
    #[serde(default)]
    volume: Option<f64>,
}

/// `PATCH …/mix/{mixId}`.
#[derive(Debug, Deserialize)]
pub(crate) struct SetLayer {
    volume: f64,
}

/// NodeLink's default layer volume.
const DEFAULT_VOLUME: f32 = 0.8;

fn check_volume(volume: f64) -> Result<f32, ApiError> {
    if (0.0..=1.0).contains(&volume) {
        Ok(volume as f32)
    } else {
        Err(ApiError::bad_request(
            "Invalid parameters: volume must be between 0 and 1",
        ))
    }
}

/// Adds a layer; the player must have a voice connection.
pub(crate) fn add(
    shared: &Arc<Shared>,
    session: &SessionId,
    guild: u64,
    body: AddLayer,
) -> Result<Value, ApiError> {
    let limits = shared.config.limits;
    let volume = body.volume.map_or(Ok(DEFAULT_VOLUME), check_volume)?;
    let Some(Some(track)) = resolve_track(
        shared,
        body.track.encoded,
        body.track.identifier,
        body.track.user_data,
    )?
    else {
        return Err(ApiError::bad_request(
            "Track must provide track.encoded or track.identifier for mix creation.",
        ));
    };
    let (call, paused) = {
        let state = shared.lock();
        let s = state
            .sessions
            .get(session)
            .ok_or_else(ApiError::session_not_found)?;
        let player = s
            .players
            .get(&guild)
            .ok_or_else(ApiError::player_not_found)?;
        if player.layers.len() >= limits.max_layers {
            return Err(ApiError::bad_request(
                "Maximum number of mix layers reached",
            ));
        }
        let call = player
            .call
            .ok_or_else(|| ApiError::bad_request("The player has no voice connection"))?;
        (call, player.paused)
    };
    let handle = open_source(shared, call, &track, 0, paused, volume)
        .map_err(|e| ApiError::internal(format!("Error creating mix: {e}")))?;
    let id = uuid_like();
    let mut state = shared.lock();
    let state = &mut *state;
    let player = state
        .sessions
        .get_mut(session)
        .and_then(|s| s.players.get_mut(&guild))
        .filter(|p| p.call == Some(call));
    let Some(player) = player else {
        handle.stop();
        return Err(ApiError::player_not_found());
    };
    let source = handle.id();
    state.sources.insert(
        source,
        Owner {
            session: session.clone(),
            guild,
            layer: Some(id.clone()),
        },
    );
    let start_time = now_ms();
    player.layers.insert(
        id.clone(),
        Layer {
            track: track.clone(),
            handle,
            volume,
            start_time,
        },
    );
    state.emit(
        &limits,
        session,
        &events::mix_started(guild, &id, &track, volume),
    );
    if let Some(reason) = state.take_unowned_end(source) {
        state.sources.remove(&source);
        if let Some(p) = state
            .sessions
            .get_mut(session)
            .and_then(|s| s.players.get_mut(&guild))
        {
            p.layers.remove(&id);
        }
        state.emit(&limits, session, &events::mix_ended(guild, &id, reason));
    }
    Ok(json!({ "id": id, "track": track.to_json(None), "volume": volume }))
}

/// The player's layers.
pub(crate) fn list(shared: &Shared, session: &SessionId, guild: u64) -> Result<Value, ApiError> {
    let state = shared.lock();
    let s = state
        .sessions
        .get(session)
        .ok_or_else(ApiError::session_not_found)?;
    let mixes: Vec<Value> = s
        .players
        .get(&guild)
        .into_iter()
        .flat_map(|p| &p.layers)
        .map(|(id, layer)| {
            let position = layer.handle.position().as_millis() as u64;
            json!({
                "id": id,
                "track": layer.track.to_json(Some(position)),
                "volume": layer.volume,
                "position": position,
                "startTime": layer.start_time,
            })
        })
        .collect();
    Ok(json!({ "mixes": mixes }))
}

/// Sets a layer's volume (`Some`) or removes it (`None`).
pub(crate) fn change(
    shared: &Shared,
    session: &SessionId,
    guild: u64,
    id: &str,
    volume: Option<SetLayer>,
) -> Result<(), ApiError> {
    let volume = volume.map(|v| check_volume(v.volume)).transpose()?;
    let limits = shared.config.limits;
    let mut state = shared.lock();
    let state = &mut *state;
    let s = state
        .sessions
        .get_mut(session)
        .ok_or_else(ApiError::session_not_found)?;
    let player = s
        .players
        .get_mut(&guild)
        .ok_or_else(|| ApiError::not_found("Mix not found"))?;
    match volume {
        Some(volume) => {
            let layer = player
                .layers
                .get_mut(id)
                .ok_or_else(|| ApiError::not_found("Mix not found"))?;
            layer.volume = volume;
            layer.handle.set_volume(volume);
        }
        None => {
            let layer = player
                .layers
                .remove(id)
                .ok_or_else(|| ApiError::not_found("Mix not found"))?;
            layer.handle.stop();
            state.sources.remove(&layer.handle.id());
            state.emit(
                &limits,
                session,
                &events::mix_ended(guild, id, EndReason::Stopped),
            );
        }
    }
    Ok(())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A random id in UUID v4's text form (NodeLink's layer ids are UUIDs).
fn uuid_like() -> String {
    let mut bytes: [u8; 16] = rand::random();
    bytes[6] = (bytes[6] & 0x0F) | 0x40;
    bytes[8] = (bytes[8] & 0x3F) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}
