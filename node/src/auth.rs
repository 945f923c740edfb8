//! `Authorization` on every route, the websocket's upgrade included: a missing or wrong
//! password gets 401 (in Lavalink's error shape, by [`crate::error::shape_errors`]).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::node::Shared;

/// Middleware: passes requests that carry the node's password, answers 401 otherwise.
pub(crate) async fn require_password(
    State(shared): State<Arc<Shared>>,
    request: Request<Body>,
    next: Next,
) -> Response {
    let offered = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    match offered {
        Some(offered) if shared.config.password.matches(offered) => next.run(request).await,
        _ => ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: "Unauthorized".into(),
        }
        .into_response(),
    }
}
