//! `/v4/sessions/{id}` and its players (and their mix layers).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::events::{self, EndReason};
use crate::node::Shared;
use crate::routes::{guild_id, json_body};
use crate::session::SessionId;

#[derive(Deserialize)]
struct SessionUpdate {
    #[serde(default)]
    resuming: Option<bool>,
    #[serde(default)]
    timeout: Option<u64>,
}

pub(crate) async fn update_session(
    State(shared): State<Arc<Shared>>,
    Path(session): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let update: SessionUpdate = json_body(&body)?;
    let mut state = shared.lock();
    let s = state
        .sessions
        .get_mut(&SessionId(session))
        .ok_or_else(ApiError::session_not_found)?;
    if let Some(resuming) = update.resuming {
        s.resuming = resuming;
    }
    if let Some(timeout) = update.timeout {
        s.timeout = Duration::from_secs(timeout);
    }
    Ok(Json(
        json!({ "resuming": s.resuming, "timeout": s.timeout.as_secs() }),
    ))
}

pub(crate) async fn list(
    State(shared): State<Arc<Shared>>,
    Path(session): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let state = shared.lock();
    let s = state
        .sessions
        .get(&SessionId(session))
        .ok_or_else(ApiError::session_not_found)?;
    let players: Vec<Value> = s
        .players
        .values()
        .map(|p| p.to_json(shared.connection(p.call)))
        .collect();
    Ok(Json(Value::Array(players)))
}

pub(crate) async fn get_player(
    State(shared): State<Arc<Shared>>,
    Path((session, guild)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let guild = guild_id(&guild)?;
    let state = shared.lock();
    let s = state
        .sessions
        .get(&SessionId(session))
        .ok_or_else(ApiError::session_not_found)?;
    let player = s
        .players
        .get(&guild)
        .ok_or_else(ApiError::player_not_found)?;
    Ok(Json(player.to_json(shared.connection(player.call))))
}

pub(crate) async fn update_player(
    State(shared): State<Arc<Shared>>,
    Path((session, guild)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let guild = guild_id(&guild)?;
    let update = json_body(&body)?;
    let no_replace = query.get("noReplace").is_some_and(|v| v == "true");
    let session = SessionId(session);
    // Connecting and opening inputs wait on the engine: off the async workers.
    tokio::task::spawn_blocking(move || {
        crate::update::update_player(&shared, &session, guild, update, no_replace)
    })
    .await
    .map_err(|_| ApiError::internal("The update failed"))?
    .map(Json)
}

pub(crate) async fn destroy_player(
    State(shared): State<Arc<Shared>>,
    Path((session, guild)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let guild = guild_id(&guild)?;
    let session = SessionId(session);
    let limits = shared.config.limits;
    let call = {
        let mut state = shared.lock();
        let s = state
            .sessions
            .get_mut(&session)
            .ok_or_else(ApiError::session_not_found)?;
        let Some(mut player) = s.players.remove(&guild) else {
            return Ok(StatusCode::NO_CONTENT.into_response());
        };
        let ended = player.track.take();
        let call = state.forget_player(player);
        if let Some(playing) = ended {
            let message = events::track_end(guild, &playing.track, EndReason::Cleanup);
            if let Some(handle) = &playing.handle {
                handle.stop();
                state.sources.remove(&handle.id());
            }
            state.emit(&limits, &session, &message);
        }
        call
    };
    shared.disconnect_later(call.into_iter().collect());
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(crate) async fn add_layer(
    State(shared): State<Arc<Shared>>,
    Path((session, guild)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let guild = guild_id(&guild)?;
    let body = json_body(&body)?;
    let session = SessionId(session);
    let created =
        tokio::task::spawn_blocking(move || crate::mix::add(&shared, &session, guild, body))
            .await
            .map_err(|_| ApiError::internal("Error creating mix"))??;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

pub(crate) async fn list_layers(
    State(shared): State<Arc<Shared>>,
    Path((session, guild)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let guild = guild_id(&guild)?;
    crate::mix::list(&shared, &SessionId(session), guild).map(Json)
}

pub(crate) async fn set_layer(
    State(shared): State<Arc<Shared>>,
    Path((session, guild, mix)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let guild = guild_id(&guild)?;
    let volume = json_body(&body)?;
    crate::mix::change(&shared, &SessionId(session), guild, &mix, Some(volume))?;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn remove_layer(
    State(shared): State<Arc<Shared>>,
    Path((session, guild, mix)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    let guild = guild_id(&guild)?;
    crate::mix::change(&shared, &SessionId(session), guild, &mix, None)?;
    Ok(StatusCode::NO_CONTENT)
}
