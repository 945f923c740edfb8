//! `/v4/websocket`: one session per connection (headers `User-Id`, `Client-Name`, and
//! `Session-Id` to resume). The node only sends on it — `ready`, then events, `playerUpdate`
//! and `stats` — and ignores what the client sends (v4 defines no client messages).
//!
//! When the socket closes, a session with resuming on keeps its players playing and buffers
//! its events until the client resumes within the timeout; any other session is destroyed
//! with its players.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::node::Shared;
use crate::session::{Session, SessionId, Socket};

pub(crate) async fn upgrade(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let Some(user_id) = text("User-Id").and_then(|v| v.trim().parse::<u64>().ok()) else {
        return ApiError::bad_request("Missing or invalid User-Id header").into_response();
    };
    let client = text("Client-Name").unwrap_or("unknown").to_owned();
    let resume = text("Session-Id").map(|v| SessionId(v.to_owned()));
    let limits = shared.config.limits;
    let (tx, rx) = mpsc::channel(limits.socket_queue.max(16));
    let (id, generation) = {
        let mut state = shared.lock();
        let state = &mut *state;
        state.next_generation += 1;
        let generation = state.next_generation;
        let resumable = resume.filter(|id| {
            state
                .sessions
                .get(id)
                .is_some_and(|s| s.resuming && s.away_since.is_some() && s.user_id == user_id)
        });
        let (id, resumed) = match resumable {
            Some(id) => (id, true),
            None => {
                if state.sessions.len() >= limits.max_sessions {
                    return ApiError {
                        status: axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        message: "Too many sessions".into(),
                    }
                    .into_response();
                }
                let id = SessionId::random();
                state.sessions.insert(id.clone(), Session::new(user_id));
                (id, false)
            }
        };
        let Some(session) = state.sessions.get_mut(&id) else {
            return ApiError::internal("The session vanished").into_response();
        };
        session.socket = Some(Socket {
            generation,
            tx: tx.clone(),
        });
        session.away_since = None;
        let ready = json!({ "op": "ready", "resumed": resumed, "sessionId": id.0 });
        session.send(&limits, &ready);
        let replay: Vec<String> = session.buffer.drain(..).collect();
        for message in replay {
            if tx.try_send(message).is_err() {
                session.dropped += 1;
            }
        }
        tracing::info!(client = %client, resumed, "client connected");
        (id, generation)
    };
    ws.max_message_size(64 * 1024)
        .on_upgrade(move |socket| serve(shared, id, generation, socket, rx))
}

async fn serve(
    shared: Arc<Shared>,
    id: SessionId,
    generation: u64,
    mut socket: WebSocket,
    mut rx: mpsc::Receiver<String>,
) {
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(text) => {
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                // The session was destroyed (DELETE, timeout) or replaced its socket.
                None => {
                    let _ = socket.send(Message::Close(None)).await;
                    break;
                }
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
    closed(&shared, &id, generation);
}

/// The client's socket ended: keep a resumable session for its timeout, destroy any other.
fn closed(shared: &Arc<Shared>, id: &SessionId, generation: u64) {
    let calls = {
        let mut state = shared.lock();
        let Some(session) = state.sessions.get_mut(id) else {
            return;
        };
        if session.socket.as_ref().map(|s| s.generation) != Some(generation) {
            return;
        }
        session.socket = None;
        if session.resuming {
            session.away_since = Some(Instant::now());
            tracing::info!(
                timeout_s = session.timeout.as_secs(),
                "client disconnected; its session waits to be resumed"
            );
            return;
        }
        state.remove_session(id)
    };
    tracing::info!(
        players = calls.len(),
        "client disconnected; session destroyed"
    );
    shared.disconnect_later(calls);
}
