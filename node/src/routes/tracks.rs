//! `/v4/loadtracks`, `/v4/decodetrack`, `/v4/decodetracks`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::node::Shared;
use crate::routes::json_body;
use crate::tracks::{self, Track};

pub(crate) async fn load_tracks(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let identifier = query
        .get("identifier")
        .cloned()
        .ok_or_else(|| ApiError::bad_request("Missing identifier"))?;
    // Probing a file reads it, probing a URL requests it: off the async workers.
    let loaded = tokio::task::spawn_blocking(move || tracks::load(&shared.config, &identifier))
        .await
        .map_err(|_| ApiError::internal("Loading failed"))?;
    Ok(Json(tracks::load_result(loaded)))
}

pub(crate) async fn decode_track(
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let encoded = query
        .get("encodedTrack")
        .or_else(|| query.get("track"))
        .ok_or_else(|| ApiError::bad_request("Missing encodedTrack"))?;
    let track = Track::from_encoded(encoded, None).map_err(ApiError::bad_request)?;
    Ok(Json(track.to_json(None)))
}

pub(crate) async fn decode_tracks(
    State(shared): State<Arc<Shared>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let encoded: Vec<String> = json_body(&body)?;
    if encoded.len() > shared.config.limits.max_decode {
        return Err(ApiError::bad_request("Too many tracks"));
    }
    let tracks = encoded
        .iter()
        .map(|e| {
            Track::from_encoded(e, None)
                .map(|t| t.to_json(None))
                .map_err(ApiError::bad_request)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(json!(tracks)))
}
