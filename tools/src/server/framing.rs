//! Voice gateway framing per version, as Discord serves it.
//!
//! v8 numbers every replayable server message with a top-level `seq` (and prefixes server binary
//! frames with it), takes `{t, seq_ack}` heartbeats and answers `{t}`. Before v8 there was no
//! `seq` at all: heartbeats and their ACKs carry the bare nonce as `d`, binary frames start with
//! the opcode, and Resume replays nothing. songbird 0.6 speaks v4 and its parser rejects v8's
//! extra fields, so versions 4–7 get this older framing; nothing between 4 and 8 changed what
//! this server sends.

use quaver_gateway::protocol::{HeartbeatAck, VoicePayload};

/// How one voice websocket frames its messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// `?v=8`: numbered messages, object heartbeats, buffered Resume.
    V8,
    /// `?v=4` to `?v=7`: no `seq`, bare-nonce heartbeats, Resume without replay.
    Legacy {
        /// The version the client asked for (echoed in Hello).
        version: u32,
    },
}

impl Framing {
    /// The framing of a supported version (4–8); `None` for anything else.
    pub fn of_version(version: u32) -> Option<Framing> {
        match version {
            8 => Some(Framing::V8),
            4..=7 => Some(Framing::Legacy { version }),
            _ => None,
        }
    }

    /// The version number sent back in Hello.
    pub fn version(self) -> u32 {
        match self {
            Framing::V8 => 8,
            Framing::Legacy { version } => version,
        }
    }

    /// Whether server messages carry `seq` and are kept for Resume.
    pub fn numbered(self) -> bool {
        self == Framing::V8
    }

    /// A server text message, numbered under v8.
    pub fn text(self, payload: &VoicePayload, seq: i64) -> String {
        let seq = self.numbered().then_some(seq);
        // Invariant: server payloads are plain structs that always serialise.
        payload.encode(seq).expect("server payloads encode")
    }

    /// The answer to a heartbeat with `nonce`.
    pub fn heartbeat_ack(self, nonce: u64) -> String {
        match self {
            Framing::V8 => VoicePayload::HeartbeatAck(HeartbeatAck { t: nonce })
                .encode(None)
                .expect("server payloads encode"),
            Framing::Legacy { .. } => format!(r#"{{"op":6,"d":{nonce}}}"#),
        }
    }

    /// A server binary frame: `[seq u16 BE][op][payload]` under v8, `[op][payload]` before.
    pub fn binary(self, seq: i64, op: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(payload.len() + 3);
        if self.numbered() {
            // The binary seq is the low 16 bits of the shared message counter.
            out.extend_from_slice(&(seq as u16).to_be_bytes());
        }
        out.push(op);
        out.extend_from_slice(payload);
        out
    }
}

/// The nonce of a client heartbeat (op 3) in either form: v8's `{"t": n, "seq_ack": s}` or the
/// bare `n` older clients send. `None` when `text` is not a heartbeat with a readable nonce.
/// Clients of any version may send either; the ACK follows the connection's version.
pub(crate) fn heartbeat_nonce(value: &serde_json::Value) -> Option<u64> {
    if value.get("op").and_then(serde_json::Value::as_u64) != Some(3) {
        return None;
    }
    let d = value.get("d")?;
    match d {
        serde_json::Value::Number(n) => n.as_u64(),
        // Some clients send the nonce as a string to stay clear of JS number limits.
        serde_json::Value::String(s) => s.parse().ok(),
        serde_json::Value::Object(o) => o.get("t").and_then(serde_json::Value::as_u64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quaver_gateway::protocol::Ready;

    #[test]
    fn versions_and_heartbeats() {
        assert_eq!(Framing::of_version(8), Some(Framing::V8));
        assert_eq!(Framing::of_version(4), Some(Framing::Legacy { version: 4 }));
        assert_eq!(Framing::of_version(3), None);
        assert_eq!(Framing::of_version(9), None);
        let v = |s: &str| serde_json::from_str::<serde_json::Value>(s).expect("json");
        assert_eq!(heartbeat_nonce(&v(r#"{"op":3,"d":77}"#)), Some(77));
        assert_eq!(
            heartbeat_nonce(&v(r#"{"op":3,"d":{"t":5,"seq_ack":2}}"#)),
            Some(5)
        );
        assert_eq!(heartbeat_nonce(&v(r#"{"op":3,"d":null}"#)), None);
        assert_eq!(heartbeat_nonce(&v(r#"{"op":5,"d":1}"#)), None);
        let legacy = Framing::Legacy { version: 4 };
        assert_eq!(legacy.heartbeat_ack(77), r#"{"op":6,"d":77}"#);
        assert_eq!(Framing::V8.heartbeat_ack(77), r#"{"op":6,"d":{"t":77}}"#);
        let ready = VoicePayload::Ready(Ready {
            ssrc: 1,
            ip: "127.0.0.1".into(),
            port: 2,
            modes: vec![],
        });
        assert!(!legacy.text(&ready, 3).contains("seq"));
        assert!(Framing::V8.text(&ready, 3).contains(r#""seq":3"#));
        assert_eq!(legacy.binary(0x0102, 25, &[9]), vec![25, 9]);
        assert_eq!(Framing::V8.binary(0x0102, 25, &[9]), vec![1, 2, 25, 9]);
    }
}
