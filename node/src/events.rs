//! The websocket's `event` messages (Lavalink v4 shapes; the mix events as NodeLink sends
//! them).

use serde_json::{Value, json};

use crate::tracks::Track;

/// Why a track ended (`TrackEndEvent.reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EndReason {
    Finished,
    LoadFailed,
    Stopped,
    Replaced,
    Cleanup,
}

impl EndReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EndReason::Finished => "finished",
            EndReason::LoadFailed => "loadFailed",
            EndReason::Stopped => "stopped",
            EndReason::Replaced => "replaced",
            EndReason::Cleanup => "cleanup",
        }
    }

    /// Why the engine ended a source the node did not stop itself.
    pub(crate) fn from_engine(reason: quaver::engine::EndReason) -> Self {
        match reason {
            quaver::engine::EndReason::Finished => EndReason::Finished,
            quaver::engine::EndReason::Failed => EndReason::LoadFailed,
            quaver::engine::EndReason::Stopped => EndReason::Stopped,
            _ => EndReason::Cleanup,
        }
    }
}

fn event(kind: &str, guild: u64) -> Value {
    json!({ "op": "event", "type": kind, "guildId": guild.to_string() })
}

pub(crate) fn track_start(guild: u64, track: &Track) -> Value {
    let mut e = event("TrackStartEvent", guild);
    e["track"] = track.to_json(None);
    e
}

pub(crate) fn track_end(guild: u64, track: &Track, reason: EndReason) -> Value {
    let mut e = event("TrackEndEvent", guild);
    e["track"] = track.to_json(None);
    e["reason"] = reason.as_str().into();
    e
}

pub(crate) fn track_exception(guild: u64, track: &Track, message: &str, severity: &str) -> Value {
    let mut e = event("TrackExceptionEvent", guild);
    e["track"] = track.to_json(None);
    e["exception"] = json!({ "message": message, "severity": severity, "cause": message });
    e
}

pub(crate) fn track_stuck(guild: u64, track: &Track, threshold_ms: u64) -> Value {
    let mut e = event("TrackStuckEvent", guild);
    e["track"] = track.to_json(None);
    e["thresholdMs"] = threshold_ms.into();
    e
}

pub(crate) fn socket_closed(guild: u64, code: u16, reason: &str, by_remote: bool) -> Value {
    let mut e = event("WebSocketClosedEvent", guild);
    e["code"] = code.into();
    e["reason"] = reason.into();
    e["byRemote"] = by_remote.into();
    e
}

pub(crate) fn mix_started(guild: u64, id: &str, track: &Track, volume: f32) -> Value {
    let mut e = event("MixStartedEvent", guild);
    e["mixId"] = id.into();
    e["track"] = track.to_json(None);
    e["volume"] = f64::from(volume).into();
    e
}

pub(crate) fn mix_ended(guild: u64, id: &str, reason: EndReason) -> Value {
    let mut e = event("MixEndedEvent", guild);
    e["mixId"] = id.into();
    e["reason"] = reason.as_str().into();
    e
}

pub(crate) fn player_update(guild: u64, state: Value) -> Value {
    json!({ "op": "playerUpdate", "guildId": guild.to_string(), "state": state })
}
