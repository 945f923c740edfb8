//! DAVE end-to-end encryption on the control side (PROTOCOL.md §6).
//!
//! The voice state machine parses and routes everything DAVE needs (ops 21–24 and 31 as JSON,
//! ops 25–30 as binary frames with their seq already stripped, the user roster from ops 11/13,
//! and the negotiated version from op 4) to a [`DaveExtension`]; the extension answers by pushing
//! frames and [`DaveEvent`]s into a [`DaveOutbox`].
//!
//! [`DaveClient`] is the real extension (davey's MLS session). It never touches media: when a
//! transition executes it exports each member's 16-byte base secret ([`EpochSecret`]) and hands
//! them out as a [`DaveEvent::KeysChanged`], which the owner turns into fixed-size keys for the
//! sender thread (and later the receive thread). The MLS session stays on the control thread,
//! so no lock is shared with the media path. [`NoDave`] ignores it all (stage channels, or
//! `max_dave_protocol_version: 0`).

mod client;
mod secret;
mod untrusted;

pub use client::{DaveClient, MAX_PROTOCOL_VERSION};
pub use secret::EpochSecret;
pub use untrusted::{Refused, untrusted};

use crate::protocol::{BinaryFrame, VoicePayload};
use crate::voice::OutgoingFrame;

/// Frames and events a DAVE extension wants out.
#[derive(Debug, Default)]
pub struct DaveOutbox {
    pub(crate) frames: Vec<OutgoingFrame>,
    pub(crate) events: Vec<DaveEvent>,
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

    /// Tell the call's owner something (it arrives as [`crate::voice::VoiceEvent::Dave`]).
    pub fn emit(&mut self, event: DaveEvent) {
        self.events.push(event);
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

/// The keys in force after a transition executed: what the media threads need, nothing more.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaveKeys {
    /// The protocol version now in force (0 = plain Opus, no E2EE).
    pub protocol_version: u16,
    /// The MLS epoch the keys belong to (0 when there is no group).
    pub epoch: u64,
    /// Our own sender base secret; `None` means send plain Opus.
    pub own: Option<EpochSecret>,
    /// Every other member's base secret, for decrypting what they send.
    pub members: Vec<(u64, EpochSecret)>,
}

/// Which step of the DAVE protocol failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DaveStep {
    /// Creating the MLS session or a key package.
    Session,
    /// Op 25: the external sender could not be used.
    ExternalSender,
    /// Op 27: proposals were refused (malformed, or an Add for a user not in the call).
    Proposals,
    /// Op 29: the announced commit could not be processed.
    Commit,
    /// Op 30: the welcome could not be processed.
    Welcome,
    /// Preparing or executing a transition, or exporting its keys.
    Transition,
    /// A binary frame too short or with an unknown operation byte.
    Malformed,
}

/// What a DAVE extension tells the call's owner.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DaveEvent {
    /// A transition executed (op 22, or a transition ID 0 applied at once): frames from now on
    /// use these keys.
    KeysChanged(DaveKeys),
    /// A DAVE message could not be used. When `recovering`, the client told the server (op 31
    /// when a transition ID was known) and sent a fresh key package to be added again.
    Failed {
        /// What failed.
        step: DaveStep,
        /// The transition it belonged to, if any.
        transition_id: Option<u16>,
        /// Whether the client reset its MLS state and asked to be re-added.
        recovering: bool,
    },
}

/// Receives the DAVE-relevant parts of the voice gateway conversation.
pub trait DaveExtension: Send {
    /// The highest DAVE version to advertise in Identify.
    fn max_protocol_version(&self) -> u16 {
        0
    }
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

/// The placeholder extension: no DAVE, everything ignored, Identify advertises version 0.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoDave;

impl DaveExtension for NoDave {}
