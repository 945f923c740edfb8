//! The HTTP API: every route behind the password, bounded bodies, Lavalink's error shape.

pub(crate) mod info;
mod players;
mod tracks;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, patch};
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::node::Shared;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let max_body = shared.config.limits.max_body;
    Router::new()
        .route("/version", get(info::version))
        .route("/v4/info", get(info::info))
        .route("/v4/stats", get(info::stats_route))
        .route("/v4/loadtracks", get(tracks::load_tracks))
        .route("/v4/decodetrack", get(tracks::decode_track))
        .route(
            "/v4/decodetracks",
            axum::routing::post(tracks::decode_tracks),
        )
        .route("/v4/websocket", get(crate::websocket::upgrade))
        .route("/v4/sessions/{session}", patch(players::update_session))
        .route("/v4/sessions/{session}/players", get(players::list))
        .route(
            "/v4/sessions/{session}/players/{guild}",
            get(players::get_player)
                .patch(players::update_player)
                .delete(players::destroy_player),
        )
        .route(
            "/v4/sessions/{session}/players/{guild}/mix",
            get(players::list_layers).post(players::add_layer),
        )
        .route(
            "/v4/sessions/{session}/players/{guild}/mix/{mix}",
            patch(players::set_layer).delete(players::remove_layer),
        )
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&shared),
            crate::auth::require_password,
        ))
        .layer(middleware::from_fn(crate::error::shape_errors))
        .with_state(shared)
}

/// A JSON body: anything that is not the expected JSON is a 400, as in Lavalink.
pub(crate) fn json_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("Invalid body: {e}")))
}

/// A guild id from the path.
pub(crate) fn guild_id(text: &str) -> Result<u64, ApiError> {
    text.parse()
        .map_err(|_| ApiError::bad_request("Invalid guild id"))
}
