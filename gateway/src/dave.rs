//! The extension point where DAVE (end-to-end encryption, PROTOCOL.md §6) plugs in.
//!
//! The voice state machine parses and routes everything DAVE needs (ops 21–24 and 31 as JSON,
//! ops 25–30 as binary frames with their seq already stripped, the user roster from ops 11/13,
//! and the negotiated version from op 4) to a [`DaveExtension`]; the extension answers by pushing
//! frames into a [`DaveOutbox`]. Until the DAVE issue lands, [`NoDave`] ignores it all and
//! Identify advertises `max_dave_protocol_version: 0`.

use crate::protocol::{BinaryFrame, VoicePayload};
use crate::voice::OutgoingFrame;

/// Frames a DAVE extension wants sent on the voice websocket.
#[derive(Debug, Default)]
pub struct DaveOutbox {
    pub(crate) frames: Vec<OutgoingFrame>,
}

impl DaveOutbox {
    /// Queue a JSON payload (ops 23 and 31).
    pub fn send_json(&mut self, payload: &VoicePayload) {
        match payload.encode(None) {
            Ok(text) => self.frames.push(OutgoingFrame::Text(text)),
            Err(e) => tracing::warn!(error = %e, "dropping unencodable DAVE payload"),
        }
    }

    /// Queue a client binary frame `[op][payload]` (ops 26 and 28).
    pub fn send_binary(&mut self, op: u8, payload: &[u8]) {
        let frame = BinaryFrame {
            seq: None,
            op,
            payload,
        };
        self.frames.push(OutgoingFrame::Binary(frame.encode()));
    }
}

/// Who we are in the call, for MLS credentials and the group ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DaveContext {
    /// Our user ID (the MLS credential identity).
    pub user_id: u64,
    /// The voice channel ID (the MLS group ID).
    pub channel_id: u64,
}

/// Receives the DAVE-relevant parts of the voice gateway conversation.
pub trait DaveExtension: Send {
    /// Op 4 arrived with the negotiated `dave_protocol_version` (0 = no DAVE).
    fn on_session_description(
        &mut self,
        _ctx: DaveContext,
        _protocol_version: u16,
        _out: &mut DaveOutbox,
    ) {
    }
    /// Users announced by op 11 (may arrive before op 4).
    fn on_clients_connect(&mut self, _user_ids: &[u64]) {}
    /// A user left (op 13).
    fn on_client_disconnect(&mut self, _user_id: u64) {}
    /// A DAVE JSON op (21, 22, 24; or a client op echoed by a test server).
    fn on_json(&mut self, _payload: &VoicePayload, _out: &mut DaveOutbox) {}
    /// A DAVE binary op (25, 27, 29, 30) with the seq stripped.
    fn on_binary(&mut self, _op: u8, _payload: &[u8], _out: &mut DaveOutbox) {}
    /// The voice session was lost (full reconnect or end): drop all MLS state.
    fn on_reset(&mut self) {}
}

/// The placeholder extension: no DAVE, everything ignored.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoDave;

impl DaveExtension for NoDave {}
