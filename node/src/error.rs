//! Errors: the node's own ([`NodeError`], starting it) and the API's, which every client sees
//! in Lavalink's shape: `{timestamp, status, error, message, path}`, plus `trace` when the
//! request asked `?trace=true`. One middleware ([`shape_errors`]) gives every error response
//! that shape, including the framework's own (unknown route, wrong method, body too large).

use axum::body::Body;
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The engine (mixer, sender, control thread) could not start.
    #[error("engine: {0}")]
    Engine(#[from] quaver::Error),
    /// The voice CA certificate could not be read.
    #[error("voice CA certificate: {0}")]
    Certificate(#[source] quaver::gateway::Error),
    /// The listen address could not be bound.
    #[error("cannot listen: {0}")]
    Listen(#[source] std::io::Error),
    /// The runtime or a thread could not be started.
    #[error("cannot start the node's runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// An API error: a status and a message for the client.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What went wrong, for the client.
    pub message: String,
}

impl ApiError {
    /// 400 with `message`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    /// 404 with `message`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
        }
    }

    /// 500 with `message`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
        }
    }

    pub(crate) fn session_not_found() -> Self {
        Self::not_found("Session not found")
    }

    pub(crate) fn player_not_found() -> Self {
        Self::not_found("Player not found")
    }
}

/// Marks a response as one of ours; [`shape_errors`] fills in the request's path.
#[derive(Clone)]
struct Shaped(String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = self.status.into_response();
        response.extensions_mut().insert(Shaped(self.message));
        response
    }
}

/// Middleware: every 4xx/5xx response leaves in Lavalink's error shape.
pub async fn shape_errors(request: Request<Body>, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    let trace = request
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "trace=true"));
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let message = match response.extensions().get::<Shaped>() {
        Some(Shaped(message)) => message.clone(),
        None => {
            // The framework's own rejection: its body is a short plain-text reason.
            let body = axum::body::to_bytes(response.into_body(), 4_096)
                .await
                .unwrap_or_default();
            let text = String::from_utf8_lossy(&body).into_owned();
            if text.is_empty() {
                status.canonical_reason().unwrap_or("Error").to_owned()
            } else {
                text
            }
        }
    };
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut body = serde_json::json!({
        "timestamp": timestamp,
        "status": status.as_u16(),
        "error": status.canonical_reason().unwrap_or("Error"),
        "message": message,
        "path": path,
    });
    if trace {
        body["trace"] = serde_json::Value::String(format!("{status}: {message}"));
    }
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
