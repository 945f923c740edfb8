//! Typed voice gateway v8 payloads, for both directions.
//!
//! Every payload derives `Serialize` and `Deserialize`, so the same types serve the client (encode
//! Identify, decode Ready) and a test server (encode Ready, decode Identify). Text frames are
//! `{op, d, seq?}` JSON; binary frames are `[seq u16 BE][op u8][payload]` server→client and
//! `[op u8][payload]` client→server (PROTOCOL.md §2).

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroize;

/// Default largest frame accepted from the network. DAVE welcome/commit messages grow with the
/// number of members, so this is generous; anything larger is refused before parsing.
pub const DEFAULT_MAX_FRAME_LEN: usize = 1 << 20;

/// Voice gateway opcodes (PROTOCOL.md §2). Plain constants rather than an enum so unknown values
/// can flow through without a fallible conversion.
pub mod op {
    /// C→S Identify.
    pub const IDENTIFY: u8 = 0;
    /// C→S Select Protocol.
    pub const SELECT_PROTOCOL: u8 = 1;
    /// S→C Ready.
    pub const READY: u8 = 2;
    /// C→S Heartbeat.
    pub const HEARTBEAT: u8 = 3;
    /// S→C Session Description.
    pub const SESSION_DESCRIPTION: u8 = 4;
    /// Both directions: Speaking.
    pub const SPEAKING: u8 = 5;
    /// S→C Heartbeat ACK.
    pub const HEARTBEAT_ACK: u8 = 6;
    /// C→S Resume.
    pub const RESUME: u8 = 7;
    /// S→C Hello.
    pub const HELLO: u8 = 8;
    /// S→C Resumed.
    pub const RESUMED: u8 = 9;
    /// S→C Clients Connect.
    pub const CLIENTS_CONNECT: u8 = 11;
    /// S→C Client Disconnect.
    pub const CLIENT_DISCONNECT: u8 = 13;
    /// S→C DAVE Prepare Transition.
    pub const DAVE_PREPARE_TRANSITION: u8 = 21;
    /// S→C DAVE Execute Transition.
    pub const DAVE_EXECUTE_TRANSITION: u8 = 22;
    /// C→S DAVE Transition Ready.
    pub const DAVE_TRANSITION_READY: u8 = 23;
    /// S→C DAVE Prepare Epoch.
    pub const DAVE_PREPARE_EPOCH: u8 = 24;
    /// S→C (binary) DAVE MLS External Sender.
    pub const DAVE_MLS_EXTERNAL_SENDER: u8 = 25;
    /// C→S (binary) DAVE MLS Key Package.
    pub const DAVE_MLS_KEY_PACKAGE: u8 = 26;
    /// S→C (binary) DAVE MLS Proposals.
    pub const DAVE_MLS_PROPOSALS: u8 = 27;
    /// C→S (binary) DAVE MLS Commit Welcome.
    pub const DAVE_MLS_COMMIT_WELCOME: u8 = 28;
    /// S→C (binary) DAVE MLS Announce Commit Transition.
    pub const DAVE_MLS_ANNOUNCE_COMMIT_TRANSITION: u8 = 29;
    /// S→C (binary) DAVE MLS Welcome.
    pub const DAVE_MLS_WELCOME: u8 = 30;
    /// C→S DAVE MLS Invalid Commit Welcome.
    pub const DAVE_MLS_INVALID_COMMIT_WELCOME: u8 = 31;

    /// Whether `op` belongs to the DAVE range (21–31).
    pub fn is_dave(op: u8) -> bool {
        (DAVE_PREPARE_TRANSITION..=DAVE_MLS_INVALID_COMMIT_WELCOME).contains(&op)
    }
}

/// Decoding failures. None of them is fatal for a connection by itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The frame exceeds the configured maximum.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// Received length.
        len: usize,
        /// Configured limit.
        max: usize,
    },
    /// Not JSON, or the envelope (`op`, `d`, `seq`) has the wrong shape.
    #[error("malformed envelope: {0}")]
    Envelope(#[source] serde_json::Error),
    /// The envelope was fine but `d` did not match the opcode's payload type.
    #[error("malformed payload for op {op}: {source}")]
    Payload {
        /// The opcode whose payload failed.
        op: u8,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
    /// A binary frame shorter than its header.
    #[error("binary frame of {len} bytes is shorter than its header")]
    BinaryTooShort {
        /// Received length.
        len: usize,
    },
    /// Encoding failed (only possible for payloads with non-finite floats).
    #[error("could not encode payload: {0}")]
    Encode(#[source] serde_json::Error),
}

/// A Discord snowflake. JSON carries it as a string; numbers are accepted on input too.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Snowflake(pub u64);

impl fmt::Display for Snowflake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<u64> for Snowflake {
    fn from(v: u64) -> Self {
        Snowflake(v)
    }
}

impl Serialize for Snowflake {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Snowflake {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Snowflake;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a snowflake as a decimal string or integer")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Snowflake, E> {
                Ok(Snowflake(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Snowflake, E> {
                v.parse().map(Snowflake).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A voice (or bot) token. `Debug` is redacted and the bytes are wiped on drop, so it never ends
/// up in logs by accident.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Token(String);

impl Token {
    /// Wrap a token.
    pub fn new(token: impl Into<String>) -> Self {
        Token(token.into())
    }
    /// The token text, for putting on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// A voice `session_id` (from VOICE_STATE_UPDATE): with the voice token it lets anyone resume
/// the call, so `Debug` is redacted and the bytes are wiped on drop, like [`Token`].
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(String);

impl SessionId {
    /// Wrap a session ID.
    pub fn new(id: impl Into<String>) -> Self {
        SessionId(id.into())
    }
    /// The ID, for putting on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionId(<redacted>)")
    }
}

impl Drop for SessionId {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl From<String> for SessionId {
    fn from(id: String) -> Self {
        SessionId(id)
    }
}

impl From<&str> for SessionId {
    fn from(id: &str) -> Self {
        SessionId(id.into())
    }
}

impl PartialEq<str> for SessionId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for SessionId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// The transport key and modes are the sender's own types: one vocabulary from the gateway to
/// the packet path.
pub use quaver_net::crypto::{EncryptionMode, SecretKey};

/// `secret_key` on the wire: a JSON array of 32 numbers.
mod secret_key_json {
    use super::SecretKey;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use zeroize::Zeroize;

    pub(super) fn serialize<S: Serializer>(key: &SecretKey, s: S) -> Result<S::Ok, S::Error> {
        key.expose().serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SecretKey, D::Error> {
        let mut bytes = <[u8; 32]>::deserialize(d)?;
        let key = SecretKey::new(bytes);
        bytes.zeroize();
        Ok(key)
    }
}

/// Speaking flags (op 5): 1 microphone, 2 soundshare, 4 priority.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SpeakingFlags(pub u32);

impl SpeakingFlags {
    /// Not speaking.
    pub const NONE: SpeakingFlags = SpeakingFlags(0);
    /// Normal voice transmission.
    pub const MICROPHONE: SpeakingFlags = SpeakingFlags(1);
    /// Context audio, no speaking indicator.
    pub const SOUNDSHARE: SpeakingFlags = SpeakingFlags(2);
    /// Priority speaker.
    pub const PRIORITY: SpeakingFlags = SpeakingFlags(4);

    /// Whether any flag is set.
    pub fn is_speaking(self) -> bool {
        self.0 != 0
    }
}

/// Op 0 Identify (C→S).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Identify {
    /// Guild (or DM channel) ID.
    pub server_id: Snowflake,
    /// Our user ID.
    pub user_id: Snowflake,
    /// From VOICE_STATE_UPDATE (redacted in `Debug`).
    pub session_id: SessionId,
    /// From VOICE_SERVER_UPDATE.
    pub token: Token,
    /// Highest DAVE protocol version we support (0 = none).
    #[serde(default)]
    pub max_dave_protocol_version: u16,
}

/// Op 1 Select Protocol (C→S).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SelectProtocol {
    /// Always `"udp"`.
    pub protocol: String,
    /// Our discovered address and the chosen mode.
    pub data: SelectProtocolData,
}

/// The `data` of Select Protocol.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SelectProtocolData {
    /// Our external IP from IP discovery.
    pub address: String,
    /// Our external port from IP discovery.
    pub port: u16,
    /// Chosen encryption mode (wire name).
    pub mode: String,
}

/// Op 2 Ready (S→C). Its `heartbeat_interval` is documented as erroneous and ignored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ready {
    /// Our SSRC.
    pub ssrc: u32,
    /// Voice server UDP IP.
    pub ip: String,
    /// Voice server UDP port.
    pub port: u16,
    /// Offered encryption modes.
    pub modes: Vec<String>,
}

/// Op 3 Heartbeat (C→S), v8 form.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Nonce, kept below 2^53.
    pub t: u64,
    /// Last sequence number seen, −1 if none.
    #[serde(default = "minus_one")]
    pub seq_ack: i64,
}

fn minus_one() -> i64 {
    -1
}

/// Op 4 Session Description (S→C).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionDescription {
    /// Selected mode (wire name).
    pub mode: String,
    /// Transport key.
    #[serde(with = "secret_key_json")]
    pub secret_key: SecretKey,
    /// Negotiated DAVE version (0 = transport encryption only).
    #[serde(default)]
    pub dave_protocol_version: u16,
}

/// Op 5 Speaking, both directions: C→S `{speaking, delay, ssrc}`, S→C `{user_id, ssrc, speaking}`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Speaking {
    /// Flags.
    pub speaking: SpeakingFlags,
    /// The speaker's SSRC.
    pub ssrc: u32,
    /// Client only: always 0 for bots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<u32>,
    /// Server only: who is speaking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<Snowflake>,
}

/// Op 6 Heartbeat ACK (S→C).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatAck {
    /// The echoed nonce.
    pub t: u64,
}

/// Op 7 Resume (C→S).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Resume {
    /// Guild ID.
    pub server_id: Snowflake,
    /// Voice session ID (redacted in `Debug`).
    pub session_id: SessionId,
    /// Voice token.
    pub token: Token,
    /// Last sequence number seen; the server replays everything after it.
    #[serde(default = "minus_one")]
    pub seq_ack: i64,
}

/// Op 8 Hello (S→C).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Milliseconds between heartbeats (may be fractional).
    pub heartbeat_interval: f64,
    /// Gateway version, if sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v: Option<u32>,
}

/// Op 11 Clients Connect (S→C).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClientsConnect {
    /// Users now present.
    pub user_ids: Vec<Snowflake>,
}

/// Op 13 Client Disconnect (S→C).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClientDisconnect {
    /// The user who left.
    pub user_id: Snowflake,
}

/// Op 21 DAVE Prepare Transition (S→C).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct DavePrepareTransition {
    /// Protocol version after the transition (0 = downgrade).
    pub protocol_version: u16,
    /// Transition ID (0 = (re)initialisation).
    pub transition_id: u16,
}

/// Op 22 DAVE Execute Transition (S→C), op 23 Transition Ready (C→S) and op 31 Invalid Commit
/// Welcome (C→S) all carry just a transition ID.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct DaveTransition {
    /// Transition ID.
    pub transition_id: u16,
}

/// Op 24 DAVE Prepare Epoch (S→C).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct DavePrepareEpoch {
    /// Protocol version.
    pub protocol_version: u16,
    /// Epoch; 1 announces a new group.
    pub epoch: u64,
    /// Transition ID, when sent.
    #[serde(default)]
    pub transition_id: u16,
}

/// One decoded JSON message, tagged by opcode.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum VoicePayload {
    /// Op 0.
    Identify(Identify),
    /// Op 1.
    SelectProtocol(SelectProtocol),
    /// Op 2.
    Ready(Ready),
    /// Op 3.
    Heartbeat(Heartbeat),
    /// Op 4.
    SessionDescription(SessionDescription),
    /// Op 5.
    Speaking(Speaking),
    /// Op 6.
    HeartbeatAck(HeartbeatAck),
    /// Op 7.
    Resume(Resume),
    /// Op 8.
    Hello(Hello),
    /// Op 9.
    Resumed,
    /// Op 11.
    ClientsConnect(ClientsConnect),
    /// Op 13.
    ClientDisconnect(ClientDisconnect),
    /// Op 21.
    DavePrepareTransition(DavePrepareTransition),
    /// Op 22.
    DaveExecuteTransition(DaveTransition),
    /// Op 23.
    DaveTransitionReady(DaveTransition),
    /// Op 24.
    DavePrepareEpoch(DavePrepareEpoch),
    /// Op 31.
    DaveMlsInvalidCommitWelcome(DaveTransition),
    /// Any opcode not listed above (including binary-only DAVE ops sent as JSON). Ignored by the
    /// client, never fatal.
    Unknown {
        /// The opcode.
        op: u64,
    },
}

/// The opcode and sequence number of a text frame; `d` is skipped here and decoded straight
/// into its type by [`typed`], so no `serde_json::Value` tree ever holds a payload (op 4's
/// `secret_key` would be freed from one without being wiped).
#[derive(Deserialize)]
struct InEnvelope {
    op: u64,
    #[serde(default)]
    seq: Option<i64>,
}

#[derive(Deserialize)]
struct InBody<T> {
    d: T,
}

#[derive(Serialize)]
struct OutEnvelope<'a, T: Serialize> {
    op: u8,
    d: &'a T,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<i64>,
}

/// A decoded text frame: its optional v8 `seq` and the payload.
#[derive(Clone, Debug, PartialEq)]
pub struct TextFrame {
    /// Server sequence number, if present.
    pub seq: Option<i64>,
    /// The payload.
    pub payload: VoicePayload,
}

fn typed<T: for<'de> Deserialize<'de>>(op: u8, text: &str) -> Result<T, ProtocolError> {
    serde_json::from_str::<InBody<T>>(text)
        .map(|body| body.d)
        .map_err(|source| ProtocolError::Payload { op, source })
}

impl VoicePayload {
    /// The opcode this payload travels under.
    pub fn op(&self) -> u64 {
        u64::from(match self {
            VoicePayload::Identify(_) => op::IDENTIFY,
            VoicePayload::SelectProtocol(_) => op::SELECT_PROTOCOL,
            VoicePayload::Ready(_) => op::READY,
            VoicePayload::Heartbeat(_) => op::HEARTBEAT,
            VoicePayload::SessionDescription(_) => op::SESSION_DESCRIPTION,
            VoicePayload::Speaking(_) => op::SPEAKING,
            VoicePayload::HeartbeatAck(_) => op::HEARTBEAT_ACK,
            VoicePayload::Resume(_) => op::RESUME,
            VoicePayload::Hello(_) => op::HELLO,
            VoicePayload::Resumed => op::RESUMED,
            VoicePayload::ClientsConnect(_) => op::CLIENTS_CONNECT,
            VoicePayload::ClientDisconnect(_) => op::CLIENT_DISCONNECT,
            VoicePayload::DavePrepareTransition(_) => op::DAVE_PREPARE_TRANSITION,
            VoicePayload::DaveExecuteTransition(_) => op::DAVE_EXECUTE_TRANSITION,
            VoicePayload::DaveTransitionReady(_) => op::DAVE_TRANSITION_READY,
            VoicePayload::DavePrepareEpoch(_) => op::DAVE_PREPARE_EPOCH,
            VoicePayload::DaveMlsInvalidCommitWelcome(_) => op::DAVE_MLS_INVALID_COMMIT_WELCOME,
            VoicePayload::Unknown { op } => return *op,
        })
    }

    /// Encode as a JSON text frame, with `seq` when the server side wants to number it.
    pub fn encode(&self, seq: Option<i64>) -> Result<String, ProtocolError> {
        fn enc<T: Serialize>(op: u8, d: &T, seq: Option<i64>) -> Result<String, ProtocolError> {
            serde_json::to_string(&OutEnvelope { op, d, seq }).map_err(ProtocolError::Encode)
        }
        let null = serde_json::Value::Null;
        match self {
            VoicePayload::Identify(p) => enc(op::IDENTIFY, p, seq),
            VoicePayload::SelectProtocol(p) => enc(op::SELECT_PROTOCOL, p, seq),
            VoicePayload::Ready(p) => enc(op::READY, p, seq),
            VoicePayload::Heartbeat(p) => enc(op::HEARTBEAT, p, seq),
            VoicePayload::SessionDescription(p) => enc(op::SESSION_DESCRIPTION, p, seq),
            VoicePayload::Speaking(p) => enc(op::SPEAKING, p, seq),
            VoicePayload::HeartbeatAck(p) => enc(op::HEARTBEAT_ACK, p, seq),
            VoicePayload::Resume(p) => enc(op::RESUME, p, seq),
            VoicePayload::Hello(p) => enc(op::HELLO, p, seq),
            VoicePayload::Resumed => enc(op::RESUMED, &null, seq),
            VoicePayload::ClientsConnect(p) => enc(op::CLIENTS_CONNECT, p, seq),
            VoicePayload::ClientDisconnect(p) => enc(op::CLIENT_DISCONNECT, p, seq),
            VoicePayload::DavePrepareTransition(p) => enc(op::DAVE_PREPARE_TRANSITION, p, seq),
            VoicePayload::DaveExecuteTransition(p) => enc(op::DAVE_EXECUTE_TRANSITION, p, seq),
            VoicePayload::DaveTransitionReady(p) => enc(op::DAVE_TRANSITION_READY, p, seq),
            VoicePayload::DavePrepareEpoch(p) => enc(op::DAVE_PREPARE_EPOCH, p, seq),
            VoicePayload::DaveMlsInvalidCommitWelcome(p) => {
                enc(op::DAVE_MLS_INVALID_COMMIT_WELCOME, p, seq)
            }
            VoicePayload::Unknown { op } => serde_json::to_string(&serde_json::json!({
                "op": op, "d": null, "seq": seq
            }))
            .map_err(ProtocolError::Encode),
        }
    }

    /// Decode a text frame (either direction), refusing anything longer than `max_len` bytes.
    /// Unknown opcodes decode to [`VoicePayload::Unknown`] rather than an error.
    pub fn decode(text: &str, max_len: usize) -> Result<TextFrame, ProtocolError> {
        if text.len() > max_len {
            return Err(ProtocolError::FrameTooLarge {
                len: text.len(),
                max: max_len,
            });
        }
        let env: InEnvelope = serde_json::from_str(text).map_err(ProtocolError::Envelope)?;
        let Ok(op) = u8::try_from(env.op) else {
            return Ok(TextFrame {
                seq: env.seq,
                payload: VoicePayload::Unknown { op: env.op },
            });
        };
        let d = text;
        let payload = match op {
            op::IDENTIFY => VoicePayload::Identify(typed(op, d)?),
            op::SELECT_PROTOCOL => VoicePayload::SelectProtocol(typed(op, d)?),
            op::READY => VoicePayload::Ready(typed(op, d)?),
            op::HEARTBEAT => VoicePayload::Heartbeat(typed(op, d)?),
            op::SESSION_DESCRIPTION => VoicePayload::SessionDescription(typed(op, d)?),
            op::SPEAKING => VoicePayload::Speaking(typed(op, d)?),
            op::HEARTBEAT_ACK => VoicePayload::HeartbeatAck(typed(op, d)?),
            op::RESUME => VoicePayload::Resume(typed(op, d)?),
            op::HELLO => VoicePayload::Hello(typed(op, d)?),
            op::RESUMED => VoicePayload::Resumed,
            op::CLIENTS_CONNECT => VoicePayload::ClientsConnect(typed(op, d)?),
            op::CLIENT_DISCONNECT => VoicePayload::ClientDisconnect(typed(op, d)?),
            op::DAVE_PREPARE_TRANSITION => VoicePayload::DavePrepareTransition(typed(op, d)?),
            op::DAVE_EXECUTE_TRANSITION => VoicePayload::DaveExecuteTransition(typed(op, d)?),
            op::DAVE_TRANSITION_READY => VoicePayload::DaveTransitionReady(typed(op, d)?),
            op::DAVE_PREPARE_EPOCH => VoicePayload::DavePrepareEpoch(typed(op, d)?),
            op::DAVE_MLS_INVALID_COMMIT_WELCOME => {
                VoicePayload::DaveMlsInvalidCommitWelcome(typed(op, d)?)
            }
            other => VoicePayload::Unknown {
                op: u64::from(other),
            },
        };
        Ok(TextFrame {
            seq: env.seq,
            payload,
        })
    }
}

/// A binary frame (DAVE ops 25–30), borrowed from the received buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BinaryFrame<'a> {
    /// Server sequence number (server→client frames only).
    pub seq: Option<u16>,
    /// Opcode.
    pub op: u8,
    /// Everything after the header.
    pub payload: &'a [u8],
}

impl<'a> BinaryFrame<'a> {
    /// Parse a server→client v8 frame: `[seq u16 BE][op u8][payload]`.
    pub fn parse_server(bytes: &'a [u8], max_len: usize) -> Result<Self, ProtocolError> {
        check_len(bytes, max_len)?;
        match bytes {
            [s0, s1, op, payload @ ..] => Ok(BinaryFrame {
                seq: Some(u16::from_be_bytes([*s0, *s1])),
                op: *op,
                payload,
            }),
            _ => Err(ProtocolError::BinaryTooShort { len: bytes.len() }),
        }
    }

    /// Parse a client→server frame: `[op u8][payload]`.
    pub fn parse_client(bytes: &'a [u8], max_len: usize) -> Result<Self, ProtocolError> {
        check_len(bytes, max_len)?;
        match bytes {
            [op, payload @ ..] => Ok(BinaryFrame {
                seq: None,
                op: *op,
                payload,
            }),
            _ => Err(ProtocolError::BinaryTooShort { len: bytes.len() }),
        }
    }

    /// Encode: with a seq prefix when `seq` is set (server side), without otherwise (client side).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(3 + self.payload.len());
        if let Some(seq) = self.seq {
            out.extend_from_slice(&seq.to_be_bytes());
        }
        out.push(self.op);
        out.extend_from_slice(self.payload);
        out
    }
}

fn check_len(bytes: &[u8], max: usize) -> Result<(), ProtocolError> {
    if bytes.len() > max {
        Err(ProtocolError::FrameTooLarge {
            len: bytes.len(),
            max,
        })
    } else {
        Ok(())
    }
}

/// Voice gateway close codes (PROTOCOL.md "Close codes"), for servers that send them and
/// clients that log them. [`close_policy`] says what a client does about each.
pub mod close_code {
    /// Unknown opcode.
    pub const UNKNOWN_OPCODE: u16 = 4001;
    /// Failed to decode payload.
    pub const DECODE_FAILURE: u16 = 4002;
    /// Not authenticated (a payload before Identify).
    pub const NOT_AUTHENTICATED: u16 = 4003;
    /// Authentication failed (bad token).
    pub const AUTHENTICATION_FAILED: u16 = 4004;
    /// Already authenticated.
    pub const ALREADY_AUTHENTICATED: u16 = 4005;
    /// Session no longer valid.
    pub const SESSION_INVALID: u16 = 4006;
    /// Session timeout.
    pub const SESSION_TIMEOUT: u16 = 4009;
    /// Server not found.
    pub const SERVER_NOT_FOUND: u16 = 4011;
    /// Unknown protocol.
    pub const UNKNOWN_PROTOCOL: u16 = 4012;
    /// Disconnected (kicked, channel deleted, main gateway session dropped).
    pub const DISCONNECTED: u16 = 4014;
    /// Voice server crashed.
    pub const VOICE_SERVER_CRASHED: u16 = 4015;
    /// Unknown encryption mode.
    pub const UNKNOWN_ENCRYPTION_MODE: u16 = 4016;
    /// E2EE/DAVE protocol required.
    pub const DAVE_REQUIRED: u16 = 4017;
    /// Bad request.
    pub const BAD_REQUEST: u16 = 4020;
    /// Rate limited.
    pub const RATE_LIMITED: u16 = 4021;
    /// Call terminated (channel deleted, voice server changed).
    pub const CALL_TERMINATED: u16 = 4022;

    /// What a close code means, in a few words, for error messages.
    pub fn describe(code: u16) -> &'static str {
        match code {
            UNKNOWN_OPCODE => "unknown opcode",
            DECODE_FAILURE => "failed to decode payload",
            NOT_AUTHENTICATED => "not authenticated",
            AUTHENTICATION_FAILED => "authentication failed",
            ALREADY_AUTHENTICATED => "already authenticated",
            SESSION_INVALID => "session no longer valid",
            SESSION_TIMEOUT => "session timeout",
            SERVER_NOT_FOUND => "server not found",
            UNKNOWN_PROTOCOL => "unknown protocol",
            DISCONNECTED => "disconnected",
            VOICE_SERVER_CRASHED => "voice server crashed",
            UNKNOWN_ENCRYPTION_MODE => "unknown encryption mode",
            DAVE_REQUIRED => "E2EE/DAVE protocol required",
            BAD_REQUEST => "bad request",
            RATE_LIMITED => "rate limited",
            CALL_TERMINATED => "call terminated",
            1000 => "normal closure",
            1001 => "going away",
            1006 => "abnormal closure",
            _ => "unknown close code",
        }
    }
}

/// What to do after the voice websocket closes (PROTOCOL.md "Close codes").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClosePolicy {
    /// Network trouble or a crashed voice server: open a new socket and Resume (op 7).
    Resume,
    /// 4009 session timeout: try one resume, then a full reconnect.
    ResumeOnceThenReconnect,
    /// A client bug (4001, 4002, 4003, 4005, 4012, 4016, 4020, unknown 4xxx): reconnect
    /// (Identify) once, then give up rather than loop.
    ReconnectOnce,
    /// 4004 / 4006: the credentials are dead; the main gateway must send a new op 4.
    NewVoiceState,
    /// 4011 / 4014 / 4022: stop and wait for a fresh VOICE_SERVER_UPDATE.
    AwaitServerUpdate,
    /// 4017 (DAVE required, we don't speak it) / 4021 (rate limited): stop.
    GiveUp,
}

/// Map a close code (or none, for a dropped TCP connection) to its policy.
pub fn close_policy(code: Option<u16>) -> ClosePolicy {
    match code {
        None => ClosePolicy::Resume,
        Some(c) if c < 4000 => ClosePolicy::Resume,
        Some(4015) => ClosePolicy::Resume,
        Some(4009) => ClosePolicy::ResumeOnceThenReconnect,
        Some(4004 | 4006) => ClosePolicy::NewVoiceState,
        Some(4011 | 4014 | 4022) => ClosePolicy::AwaitServerUpdate,
        Some(4017 | 4021) => ClosePolicy::GiveUp,
        Some(_) => ClosePolicy::ReconnectOnce,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_every_payload() {
        let payloads = vec![
            VoicePayload::Identify(Identify {
                server_id: Snowflake(1),
                user_id: Snowflake(2),
                session_id: "s".into(),
                token: Token::new("tok"),
                max_dave_protocol_version: 0,
            }),
            VoicePayload::SelectProtocol(SelectProtocol {
                protocol: "udp".into(),
                data: SelectProtocolData {
                    address: "1.2.3.4".into(),
                    port: 5,
                    mode: EncryptionMode::Aes256GcmRtpSize.as_str().into(),
                },
            }),
            VoicePayload::Ready(Ready {
                ssrc: 7,
                ip: "127.0.0.1".into(),
                port: 9,
                modes: vec!["a".into()],
            }),
            VoicePayload::Heartbeat(Heartbeat { t: 3, seq_ack: -1 }),
            VoicePayload::SessionDescription(SessionDescription {
                mode: "m".into(),
                secret_key: SecretKey::new([7; 32]),
                dave_protocol_version: 1,
            }),
            VoicePayload::Speaking(Speaking {
                speaking: SpeakingFlags::MICROPHONE,
                ssrc: 1,
                delay: Some(0),
                user_id: None,
            }),
            VoicePayload::HeartbeatAck(HeartbeatAck { t: 3 }),
            VoicePayload::Resume(Resume {
                server_id: Snowflake(1),
                session_id: "s".into(),
                token: Token::new("t"),
                seq_ack: 10,
            }),
            VoicePayload::Hello(Hello {
                heartbeat_interval: 13750.5,
                v: Some(8),
            }),
            VoicePayload::Resumed,
            VoicePayload::ClientsConnect(ClientsConnect {
                user_ids: vec![Snowflake(4), Snowflake(5)],
            }),
            VoicePayload::ClientDisconnect(ClientDisconnect {
                user_id: Snowflake(4),
            }),
            VoicePayload::DavePrepareTransition(DavePrepareTransition {
                protocol_version: 1,
                transition_id: 2,
            }),
            VoicePayload::DaveExecuteTransition(DaveTransition { transition_id: 2 }),
            VoicePayload::DaveTransitionReady(DaveTransition { transition_id: 2 }),
            VoicePayload::DavePrepareEpoch(DavePrepareEpoch {
                protocol_version: 1,
                epoch: 1,
                transition_id: 0,
            }),
            VoicePayload::DaveMlsInvalidCommitWelcome(DaveTransition { transition_id: 3 }),
        ];
        for (i, p) in payloads.into_iter().enumerate() {
            let text = p.encode(Some(i as i64)).expect("finite payloads encode");
            let back = VoicePayload::decode(&text, DEFAULT_MAX_FRAME_LEN).expect("own output");
            assert_eq!(back.payload, p, "{text}");
            assert_eq!(back.seq, Some(i as i64));
        }
    }

    #[test]
    fn snowflakes_are_strings_on_the_wire_and_accept_numbers() {
        let text = VoicePayload::ClientDisconnect(ClientDisconnect {
            user_id: Snowflake(42),
        })
        .encode(None)
        .unwrap();
        assert_eq!(text, r#"{"op":13,"d":{"user_id":"42"}}"#);
        let f = VoicePayload::decode(r#"{"op":13,"d":{"user_id":42}}"#, 100).unwrap();
        assert_eq!(
            f.payload,
            VoicePayload::ClientDisconnect(ClientDisconnect {
                user_id: Snowflake(42)
            })
        );
    }

    #[test]
    fn unknown_opcodes_decode_as_unknown() {
        for op in [10u64, 12, 14, 15, 16, 18, 20, 25, 99, 255, 70000] {
            let text = format!(r#"{{"op":{op},"d":{{"whatever":[1,2]}}}}"#);
            let f = VoicePayload::decode(&text, 1000).unwrap();
            assert_eq!(f.payload, VoicePayload::Unknown { op });
        }
    }

    #[test]
    fn malformed_input_is_an_error() {
        let bad = [
            "",
            "{",
            "null",
            "[]",
            r#"{"d":{}}"#,
            r#"{"op":"2","d":{}}"#,
            r#"{"op":-1}"#,
            r#"{"op":2,"d":{"ssrc":"x","ip":"a","port":1,"modes":[]}}"#,
            r#"{"op":2,"d":{"ssrc":1,"ip":"a","port":70000,"modes":[]}}"#,
            r#"{"op":4,"d":{"mode":"m","secret_key":[1,2,3]}}"#,
            r#"{"op":8,"d":null}"#,
            r#"{"op":13,"d":{"user_id":"not a number"}}"#,
        ];
        for b in bad {
            assert!(VoicePayload::decode(b, 1000).is_err(), "{b}");
        }
        let big = format!(
            r#"{{"op":8,"d":{{"heartbeat_interval":1,"x":"{}"}}}}"#,
            "a".repeat(200)
        );
        assert!(matches!(
            VoicePayload::decode(&big, 100),
            Err(ProtocolError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn binary_frames() {
        let f = BinaryFrame::parse_server(&[0x01, 0x02, 25, 9, 9], 100).unwrap();
        assert_eq!(f.seq, Some(0x0102));
        assert_eq!(f.op, 25);
        assert_eq!(f.payload, &[9, 9]);
        assert_eq!(f.encode(), vec![0x01, 0x02, 25, 9, 9]);
        let c = BinaryFrame::parse_client(&[26, 1], 100).unwrap();
        assert_eq!((c.seq, c.op, c.payload), (None, 26, &[1u8][..]));
        assert_eq!(c.encode(), vec![26, 1]);
        assert!(BinaryFrame::parse_server(&[1, 2], 100).is_err());
        assert!(BinaryFrame::parse_client(&[], 100).is_err());
        assert!(BinaryFrame::parse_server(&[0; 101], 100).is_err());
    }

    #[test]
    fn garbage_never_panics() {
        // A small deterministic generator: random bytes, random ASCII and mutated valid frames.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let seeds = [
            r#"{"op":2,"d":{"ssrc":1,"ip":"127.0.0.1","port":1,"modes":["aead_aes256_gcm_rtpsize"]},"seq":1}"#,
            r#"{"op":8,"d":{"heartbeat_interval":41250.5}}"#,
            r#"{"op":4,"d":{"mode":"aead_aes256_gcm_rtpsize","secret_key":[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]}}"#,
        ];
        for i in 0..20_000 {
            let len = (next() % 64) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let _ = BinaryFrame::parse_server(&bytes, 32);
            let _ = BinaryFrame::parse_client(&bytes, 32);
            let text = String::from_utf8_lossy(&bytes);
            let _ = VoicePayload::decode(&text, 1 << 10);
            let mut seed = seeds[i % seeds.len()].as_bytes().to_vec();
            for _ in 0..1 + next() % 4 {
                let at = (next() as usize) % seed.len();
                seed[at] = b" {}[]\":,0123456789-.eEanulltrfs"[(next() % 31) as usize];
            }
            let _ = VoicePayload::decode(&String::from_utf8_lossy(&seed), 1 << 10);
        }
    }

    #[test]
    fn close_policies() {
        use ClosePolicy::*;
        let table = [
            (None, Resume),
            (Some(1000), Resume),
            (Some(1001), Resume),
            (Some(1006), Resume),
            (Some(4015), Resume),
            (Some(4009), ResumeOnceThenReconnect),
            (Some(4001), ReconnectOnce),
            (Some(4002), ReconnectOnce),
            (Some(4003), ReconnectOnce),
            (Some(4005), ReconnectOnce),
            (Some(4012), ReconnectOnce),
            (Some(4016), ReconnectOnce),
            (Some(4020), ReconnectOnce),
            (Some(4999), ReconnectOnce),
            (Some(4004), NewVoiceState),
            (Some(4006), NewVoiceState),
            (Some(4011), AwaitServerUpdate),
            (Some(4014), AwaitServerUpdate),
            (Some(4022), AwaitServerUpdate),
            (Some(4017), GiveUp),
            (Some(4021), GiveUp),
        ];
        for (code, policy) in table {
            assert_eq!(close_policy(code), policy, "{code:?}");
        }
    }

    #[test]
    fn secrets_are_redacted() {
        let k = SecretKey::new([0xAB; 32]);
        let t = Token::new("very-secret");
        let s = format!("{k:?} {t:?}");
        assert!(!s.contains("171") && !s.contains("very-secret"), "{s}");
    }

    #[test]
    fn best_mode() {
        assert_eq!(
            EncryptionMode::choose_current([
                "aead_xchacha20_poly1305_rtpsize",
                "aead_aes256_gcm_rtpsize"
            ]),
            Some(EncryptionMode::Aes256GcmRtpSize)
        );
        assert_eq!(
            EncryptionMode::choose_current([
                "xsalsa20_poly1305",
                "aead_xchacha20_poly1305_rtpsize"
            ]),
            Some(EncryptionMode::XChaCha20Poly1305RtpSize)
        );
        assert_eq!(EncryptionMode::choose_current(["xsalsa20_poly1305"]), None);
    }
}
