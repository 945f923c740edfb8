//! The main-gateway subset: enough for a bot to learn its user ID and join voice.

use serde_json::{Value, json};
use tungstenite::Message;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

use super::Shared;
use super::tls::Ws;

/// Main-gateway close codes used here.
const DECODE_ERROR: u16 = 4002;
const NOT_AUTHENTICATED: u16 = 4003;
const AUTHENTICATION_FAILED: u16 = 4004;
const UNKNOWN_OPCODE: u16 = 4001;
const INVALID_SEQ: u16 = 4007;

struct Conn {
    seq: u64,
    user_id: Option<u64>,
    session_id: String,
}

/// Serves one main-gateway websocket until it closes.
pub(crate) fn serve(ws: Ws, shared: &Shared) {
    let mut c = Conn {
        seq: 0,
        user_id: None,
        session_id: String::new(),
    };
    serve_conn(ws, &mut c, shared);
}

fn serve_conn(mut ws: Ws, c: &mut Conn, shared: &Shared) {
    // An integer on the main gateway, as Discord sends it (serenity and twilight reject a
    // float); the voice gateway's Hello is the one with a float.
    let interval = shared.config.heartbeat_interval_ms.round().max(1.0) as u64;
    let hello = json!({"op": 10, "d": {"heartbeat_interval": interval}, "s": null, "t": null});
    if ws.send(Message::text(hello.to_string())).is_err() {
        return;
    }
    loop {
        if shared.stopped() {
            let _ = close(&mut ws, 1001);
            return;
        }
        match ws.read() {
            Ok(Message::Text(text)) => {
                if let Err(code) = on_text(&mut ws, c, shared, text.as_str()) {
                    shared.lock().counters.closes_sent += 1;
                    let _ = close(&mut ws, code);
                    // Let the close handshake finish (or time out) before dropping the socket.
                    for _ in 0..40 {
                        if ws.read().is_err() && !ws.can_read() {
                            break;
                        }
                    }
                    return;
                }
            }
            Ok(Message::Close(_)) => {
                let _ = ws.flush();
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if super::read_timed_out(&e) => {}
            Err(tungstenite::Error::Capacity(_)) => {
                shared.lock().counters.oversized_frames += 1;
                let _ = close(&mut ws, DECODE_ERROR);
                return;
            }
            Err(_) => return,
        }
    }
}

fn close(ws: &mut Ws, code: u16) -> tungstenite::Result<()> {
    ws.close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: "".into(),
    }))?;
    ws.flush()
}

fn dispatch(ws: &mut Ws, c: &mut Conn, t: &str, d: Value) {
    // Never past u64::MAX, whatever a Resume said (it is checked, but this must not panic).
    c.seq = c.seq.saturating_add(1);
    let msg = json!({"op": 0, "t": t, "s": c.seq, "d": d});
    let _ = ws.send(Message::text(msg.to_string()));
}

/// A snowflake sent as a string (Discord) or a number (lenient).
fn snowflake(v: &Value) -> Option<u64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

fn on_text(ws: &mut Ws, c: &mut Conn, shared: &Shared, text: &str) -> Result<(), u16> {
    let before = c.seq;
    let handled = handle_text(ws, c, shared, text);
    if c.seq != before {
        // The session's last seq, so a Resume (perhaps racing this connection's end) is
        // checked against what was really sent.
        if let Some(session) = shared.lock().main_sessions.get_mut(&c.session_id) {
            session.1 = c.seq;
        }
    }
    handled
}

fn handle_text(ws: &mut Ws, c: &mut Conn, shared: &Shared, text: &str) -> Result<(), u16> {
    let Ok(msg) = serde_json::from_str::<Value>(text) else {
        shared.lock().counters.bad_json += 1;
        return Err(DECODE_ERROR);
    };
    let op = msg.get("op").and_then(Value::as_u64);
    let d = msg.get("d").cloned().unwrap_or(Value::Null);
    match op {
        // Heartbeat.
        Some(1) => {
            let ack = json!({"op": 11, "d": null, "s": null, "t": null});
            let _ = ws.send(Message::text(ack.to_string()));
        }
        // Identify.
        Some(2) => {
            let token = d.get("token").and_then(Value::as_str).unwrap_or("");
            if token.is_empty() {
                return Err(AUTHENTICATION_FAILED);
            }
            let user_id = {
                let mut reg = shared.lock();
                let id = reg.next_user;
                reg.next_user += 1;
                c.session_id = super::random_hex(16);
                reg.main_sessions.insert(c.session_id.clone(), (id, 0));
                id
            };
            c.user_id = Some(user_id);
            let scheme = if shared.tls.is_some() { "wss" } else { "ws" };
            let ready = json!({
                "v": 10,
                // The user object as Discord sends it to a bot (libraries such as twilight
                // require `mfa_enabled`).
                "user": {
                    "id": user_id.to_string(), "username": "quaver-bot", "discriminator": "0",
                    "global_name": null, "avatar": null, "bot": true, "mfa_enabled": false,
                    "verified": true, "email": null, "flags": 0, "public_flags": 0,
                },
                "session_id": c.session_id,
                "resume_gateway_url": format!("{scheme}://{}", shared.main_addr),
                "guilds": [],
                "application": {"id": user_id.to_string(), "flags": 0}
            });
            dispatch(ws, c, "READY", ready);
        }
        // Resume: any session this server handed out resumes (no replay; nothing was missed
        // that matters to a voice bot).
        Some(6) => {
            let sid = d.get("session_id").and_then(Value::as_str).unwrap_or("");
            let seq = d.get("seq").and_then(Value::as_u64).unwrap_or(0);
            let user = shared.lock().main_sessions.get(sid).copied();
            match user {
                // A seq this session never reached (u64::MAX …): Discord closes with 4007.
                Some((_, last)) if seq > last => return Err(INVALID_SEQ),
                Some((u, last)) => {
                    c.user_id = Some(u);
                    c.session_id = sid.to_string();
                    c.seq = last;
                    dispatch(ws, c, "RESUMED", json!({}));
                }
                None => {
                    let invalid = json!({"op": 9, "d": false, "s": null, "t": null});
                    let _ = ws.send(Message::text(invalid.to_string()));
                }
            }
        }
        // Update Voice State.
        Some(4) => {
            let Some(user_id) = c.user_id else {
                return Err(NOT_AUTHENTICATED);
            };
            let Some(guild_id) = d.get("guild_id").and_then(snowflake) else {
                shared.lock().counters.bad_json += 1;
                return Err(DECODE_ERROR);
            };
            let channel_id = d.get("channel_id").and_then(snowflake);
            let self_mute = d.get("self_mute").and_then(Value::as_bool).unwrap_or(false);
            let self_deaf = d.get("self_deaf").and_then(Value::as_bool).unwrap_or(false);
            voice_state(
                ws, c, shared, user_id, guild_id, channel_id, self_mute, self_deaf,
            );
        }
        _ => {
            shared.lock().counters.unknown_opcodes += 1;
            return Err(UNKNOWN_OPCODE);
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn voice_state(
    ws: &mut Ws,
    c: &mut Conn,
    shared: &Shared,
    user_id: u64,
    guild_id: u64,
    channel_id: Option<u64>,
    self_mute: bool,
    self_deaf: bool,
) {
    let mut state = json!({
        "guild_id": guild_id.to_string(),
        "channel_id": channel_id.map(|c| c.to_string()),
        "user_id": user_id.to_string(),
        "deaf": false, "mute": false,
        "self_deaf": self_deaf, "self_mute": self_mute,
        "self_video": false, "suppress": false,
        "request_to_speak_timestamp": null,
    });
    match channel_id {
        Some(channel) => {
            let (session_id, token) = {
                let mut reg = shared.lock();
                // A move: the voice session in the old channel ends (4014, as Discord closes
                // it), and the client identifies again with the credentials below.
                let moved = reg.sessions.values().any(|s| {
                    s.guild_id == guild_id && s.user_id == user_id && s.channel_id != channel
                });
                if moved {
                    reg.end_sessions_of(guild_id, user_id, shared);
                }
                shared.issue(&mut reg, guild_id, channel, user_id)
            };
            state["session_id"] = json!(session_id);
            dispatch(ws, c, "VOICE_STATE_UPDATE", state);
            let server = json!({
                "token": token.expose(),
                "guild_id": guild_id.to_string(),
                "endpoint": shared.voice_endpoint(),
            });
            dispatch(ws, c, "VOICE_SERVER_UPDATE", server);
        }
        None => {
            let session_id = {
                let mut reg = shared.lock();
                let issued = reg.issued.remove(&(guild_id, user_id));
                reg.end_sessions_of(guild_id, user_id, shared);
                issued.map(|i| i.session_id).unwrap_or_default()
            };
            state["session_id"] = json!(session_id);
            dispatch(ws, c, "VOICE_STATE_UPDATE", state);
        }
    }
}
