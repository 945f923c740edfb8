//! The DAVE client protocol (PROTOCOL.md §6 "State machine (one bot)") on davey's MLS session.
//!
//! Sans-IO like the voice machine: inputs are the parsed ops, outputs are frames and
//! [`DaveEvent`]s in a [`DaveOutbox`]. Every MLS step runs here, on the control thread; the media
//! threads only ever see the exported [`EpochSecret`]s.

use std::collections::{BTreeSet, HashMap};
use std::num::NonZeroU16;

use davey::{DaveSession, ProposalsOperationType};

use super::untrusted::{Refused, untrusted};
use openmls_rust_crypto::RustCrypto;

use super::{DaveContext, DaveEvent, DaveExtension, DaveKeys, DaveOutbox, DaveStep, EpochSecret};
use crate::protocol::{DaveTransition, VoicePayload, op};

/// The exporter label of DAVE v1 sender keys (PROTOCOL.md §6 "Sender key derivation").
const SENDER_KEY_LABEL: &str = "Discord Secure Frames v0";

/// The highest DAVE protocol version this client speaks.
pub const MAX_PROTOCOL_VERSION: u16 = 1;

/// DAVE on davey's `DaveSession`: one per voice connection.
pub struct DaveClient {
    max_version: u16,
    ctx: Option<DaveContext>,
    /// The version op 4 or the last executed transition put in force.
    version: u16,
    session: Option<DaveSession>,
    /// Users announced by op 11 and not gone in op 13 (buffered from before op 4).
    recognised: BTreeSet<u64>,
    /// Op 25 as received, kept so a reset can rebuild the pending group without a new op 25.
    external_sender: Option<Vec<u8>>,
    /// Prepared transitions: ID → protocol version.
    pending: HashMap<u16, u16>,
}

impl std::fmt::Debug for DaveClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaveClient")
            .field("max_version", &self.max_version)
            .field("version", &self.version)
            .field("has_session", &self.session.is_some())
            .field("epoch", &self.epoch())
            .field("recognised", &self.recognised.len())
            .finish_non_exhaustive()
    }
}

impl DaveClient {
    /// A client advertising `max_version` (clamped to what davey speaks; 0 disables DAVE).
    pub fn new(max_version: u16) -> Self {
        Self {
            max_version: max_version.min(MAX_PROTOCOL_VERSION),
            ctx: None,
            version: 0,
            session: None,
            recognised: BTreeSet::new(),
            external_sender: None,
            pending: HashMap::new(),
        }
    }

    /// The MLS epoch of the current group, if one is established.
    pub fn epoch(&self) -> Option<u64> {
        self.session
            .as_ref()
            .and_then(|s| s.epoch())
            .map(|e| e.as_u64())
    }

    /// The protocol version in force.
    pub fn protocol_version(&self) -> u16 {
        self.version
    }

    /// The users we accept in proposals and welcomes: everyone announced, and ourselves.
    fn allowed_users(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.recognised.iter().copied().collect();
        if let Some(ctx) = self.ctx {
            ids.push(ctx.user_id);
        }
        ids
    }

    /// Builds a fresh session for `version` and sends its key package (op 26).
    fn start_session(&mut self, version: u16, out: &mut DaveOutbox) {
        let Some(ctx) = self.ctx else { return };
        self.pending.clear();
        let Some(nz) = NonZeroU16::new(version) else {
            self.session = None;
            return;
        };
        let built = match self.session.as_mut() {
            // Keeps the old keys until the next transition, as davey documents for reinit.
            Some(session) => session
                .reinit(nz, ctx.user_id, ctx.channel_id, None)
                .map_err(|e| tracing::warn!(error = %e, "DAVE: could not reset the MLS session")),
            None => DaveSession::new(nz, ctx.user_id, ctx.channel_id, None)
                .map(|s| self.session = Some(s))
                .map_err(|e| tracing::warn!(error = %e, "DAVE: could not create the MLS session")),
        };
        if built.is_err() {
            self.session = None;
            out.emit(failed(DaveStep::Session, None, false));
            return;
        }
        if let (Some(session), Some(external)) = (self.session.as_mut(), &self.external_sender)
            && session.group().is_none_or(|g| g.epoch().as_u64() == 0)
            && let Err(e) = session.set_external_sender(external)
        {
            tracing::warn!(error = %e, "DAVE: stored external sender refused after reset");
        }
        self.send_key_package(out);
    }

    fn send_key_package(&mut self, out: &mut DaveOutbox) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        match session.create_key_package() {
            Ok(kp) => out.send_binary(op::DAVE_MLS_KEY_PACKAGE, &kp),
            Err(e) => {
                tracing::warn!(error = %e, "DAVE: could not create a key package");
                out.emit(failed(DaveStep::Session, None, false));
            }
        }
    }

    /// A commit or welcome failed: tell the server (op 31) and ask to be added again.
    fn recover(&mut self, step: DaveStep, transition_id: Option<u16>, out: &mut DaveOutbox) {
        if let Some(transition_id) = transition_id {
            out.send_json(&VoicePayload::DaveMlsInvalidCommitWelcome(DaveTransition {
                transition_id,
            }));
        }
        out.emit(failed(step, transition_id, true));
        let version = if self.version == 0 {
            self.max_version
        } else {
            self.version
        };
        self.start_session(version, out);
    }

    fn on_external_sender(&mut self, payload: &[u8], out: &mut DaveOutbox) {
        let Some(session) = self.session.as_mut() else {
            self.external_sender = Some(payload.to_vec());
            return;
        };
        match session.set_external_sender(payload) {
            Ok(()) => self.external_sender = Some(payload.to_vec()),
            Err(e) => {
                tracing::warn!(error = %e, "DAVE: op 25 refused");
                out.emit(failed(DaveStep::ExternalSender, None, false));
                // davey drops its pending group before parsing: rebuild it from the last good op 25.
                if let Some(previous) = &self.external_sender
                    && let Err(e) = session.set_external_sender(previous)
                {
                    tracing::warn!(error = %e, "DAVE: could not restore the external sender");
                }
            }
        }
    }

    fn on_proposals(&mut self, payload: &[u8], out: &mut DaveOutbox) {
        let allowed = self.allowed_users();
        let Some(session) = self.session.as_mut() else {
            return;
        };
        let operation = match payload.first() {
            Some(0) => ProposalsOperationType::APPEND,
            Some(1) => ProposalsOperationType::REVOKE,
            _ => {
                out.emit(failed(DaveStep::Malformed, None, false));
                return;
            }
        };
        let result =
            untrusted(|| session.process_proposals(operation, &payload[1..], Some(&allowed)));
        match result {
            Ok(Some(commit)) => {
                let mut frame = commit.commit;
                if let Some(welcome) = commit.welcome {
                    frame.extend_from_slice(&welcome);
                }
                out.send_binary(op::DAVE_MLS_COMMIT_WELCOME, &frame);
            }
            Ok(None) => {}
            Err(Refused::Error(e)) => {
                // Proposals carry no transition ID, so there is nothing to answer with op 31;
                // the server re-proposes when the roster changes.
                tracing::warn!(error = %e, "DAVE: op 27 refused");
                out.emit(failed(DaveStep::Proposals, None, false));
            }
            Err(Refused::Panicked) => {
                tracing::warn!("DAVE: op 27 broke the MLS library; starting a new session");
                self.recover(DaveStep::Proposals, None, out);
            }
        }
    }

    /// Ops 29 and 30: `[transition_id u16 BE][commit or welcome]`.
    fn on_commit_or_welcome(&mut self, op: u8, payload: &[u8], out: &mut DaveOutbox) {
        let (step, transition_id, body) = match payload {
            [a, b, body @ ..] => {
                let step = if op == op::DAVE_MLS_WELCOME {
                    DaveStep::Welcome
                } else {
                    DaveStep::Commit
                };
                (step, u16::from_be_bytes([*a, *b]), body)
            }
            _ => {
                out.emit(failed(DaveStep::Malformed, None, false));
                return;
            }
        };
        let allowed = self.allowed_users();
        let Some(session) = self.session.as_mut() else {
            return;
        };
        let result = if step == DaveStep::Welcome {
            untrusted(|| session.process_welcome(body, Some(&allowed)))
                .map(|()| true)
                .map_err(|e| tracing::warn!(error = %e, transition_id, "DAVE: welcome refused"))
        } else {
            untrusted(|| session.process_commit(body))
                .map_err(|e| tracing::warn!(error = %e, transition_id, "DAVE: commit refused"))
        };
        match result {
            Ok(true) => {
                let version = self.version.max(1);
                self.prepare(transition_id, version, out);
            }
            Ok(false) => {}
            Err(()) => self.recover(step, Some(transition_id), out),
        }
    }

    /// Prepares a transition; ID 0 applies at once, others wait for op 22 after our op 23.
    fn prepare(&mut self, transition_id: u16, version: u16, out: &mut DaveOutbox) {
        if let Some(session) = self.session.as_mut()
            && let Err(e) = session.prepare_transition(transition_id, version)
        {
            tracing::warn!(error = %e, transition_id, "DAVE: could not prepare the transition");
            self.recover(DaveStep::Transition, Some(transition_id), out);
            return;
        }
        if transition_id == 0 {
            self.applied(version, out);
        } else {
            self.pending.insert(transition_id, version);
            out.send_json(&VoicePayload::DaveTransitionReady(DaveTransition {
                transition_id,
            }));
        }
    }

    fn execute(&mut self, transition_id: u16, out: &mut DaveOutbox) {
        let Some(version) = self.pending.remove(&transition_id) else {
            tracing::debug!(transition_id, "DAVE: op 22 for a transition never prepared");
            return;
        };
        if let Some(session) = self.session.as_mut()
            && let Err(e) = session.execute_transition(transition_id)
        {
            tracing::warn!(error = %e, transition_id, "DAVE: could not execute the transition");
            self.recover(DaveStep::Transition, Some(transition_id), out);
            return;
        }
        self.applied(version, out);
    }

    /// A transition took effect: export the keys now in force.
    fn applied(&mut self, version: u16, out: &mut DaveOutbox) {
        self.version = version;
        let keys = match self.export_keys(version) {
            Ok(keys) => keys,
            Err(()) => {
                out.emit(failed(DaveStep::Transition, None, false));
                DaveKeys {
                    protocol_version: version,
                    epoch: 0,
                    own: None,
                    members: Vec::new(),
                }
            }
        };
        out.emit(DaveEvent::KeysChanged(keys));
    }

    fn export_keys(&self, version: u16) -> Result<DaveKeys, ()> {
        let (Some(ctx), Some(session)) = (self.ctx, self.session.as_ref()) else {
            return Ok(DaveKeys {
                protocol_version: version,
                epoch: 0,
                own: None,
                members: Vec::new(),
            });
        };
        let group = match session.group() {
            Some(group) if version > 0 && session.can_encrypt() => group,
            _ => {
                return Ok(DaveKeys {
                    protocol_version: version,
                    epoch: 0,
                    own: None,
                    members: Vec::new(),
                });
            }
        };
        let crypto = RustCrypto::default();
        let export = |user_id: u64| -> Result<EpochSecret, ()> {
            let bytes = group
                .export_secret(&crypto, SENDER_KEY_LABEL, &user_id.to_le_bytes(), 16)
                .map_err(|e| tracing::warn!(error = %e, "DAVE: exporting a sender key failed"))?;
            let array: [u8; 16] = bytes.as_slice().try_into().map_err(|_| ())?;
            Ok(EpochSecret::new(array))
        };
        let mut members = Vec::new();
        for member in group.members() {
            let Ok(id) = <[u8; 8]>::try_from(member.credential.serialized_content()) else {
                continue;
            };
            let user_id = u64::from_be_bytes(id);
            if user_id != ctx.user_id {
                members.push((user_id, export(user_id)?));
            }
        }
        Ok(DaveKeys {
            protocol_version: version,
            epoch: group.epoch().as_u64(),
            own: Some(export(ctx.user_id)?),
            members,
        })
    }
}

fn failed(step: DaveStep, transition_id: Option<u16>, recovering: bool) -> DaveEvent {
    DaveEvent::Failed {
        step,
        transition_id,
        recovering,
    }
}

impl DaveExtension for DaveClient {
    fn max_protocol_version(&self) -> u16 {
        self.max_version
    }

    fn on_session_description(
        &mut self,
        ctx: DaveContext,
        protocol_version: u16,
        out: &mut DaveOutbox,
    ) {
        let same_call = self.ctx == Some(ctx);
        self.ctx = Some(ctx);
        self.version = protocol_version.min(self.max_version);
        if self.version == 0 {
            self.session = None;
            self.pending.clear();
        } else if !(same_call && self.session.is_some()) {
            self.start_session(self.version, out);
        }
    }

    fn on_clients_connect(&mut self, user_ids: &[u64]) {
        for &user in user_ids {
            // The voice machine already caps what it forwards; this keeps a client driven
            // directly bounded too.
            if self.recognised.len() >= crate::voice::MAX_PEERS {
                tracing::warn!(
                    max = crate::voice::MAX_PEERS,
                    "DAVE: refusing users beyond the cap"
                );
                break;
            }
            self.recognised.insert(user);
        }
    }

    fn on_client_disconnect(&mut self, user_id: u64) {
        self.recognised.remove(&user_id);
    }

    fn on_json(&mut self, payload: &VoicePayload, out: &mut DaveOutbox) {
        match payload {
            VoicePayload::DavePrepareTransition(p) => {
                if p.protocol_version == 0 {
                    // Downgrade: keys go at op 22 (or now for ID 0); plain frames are accepted.
                    self.prepare(p.transition_id, 0, out);
                } else if p.transition_id == 0 {
                    // Sole-member reset or (re)initialisation: apply what we have at once.
                    self.prepare(0, p.protocol_version.min(self.max_version), out);
                } else {
                    self.prepare(
                        p.transition_id,
                        p.protocol_version.min(self.max_version),
                        out,
                    );
                }
            }
            VoicePayload::DaveExecuteTransition(t) => self.execute(t.transition_id, out),
            // Epoch 1 announces a new group: start over with a fresh key package.
            VoicePayload::DavePrepareEpoch(p)
                if p.epoch == 1 && p.protocol_version > 0 && self.max_version > 0 =>
            {
                self.start_session(p.protocol_version.min(self.max_version), out);
            }
            _ => {}
        }
    }

    fn on_binary(&mut self, op: u8, payload: &[u8], out: &mut DaveOutbox) {
        if self.max_version == 0 {
            return;
        }
        match op {
            op::DAVE_MLS_EXTERNAL_SENDER => self.on_external_sender(payload, out),
            op::DAVE_MLS_PROPOSALS => self.on_proposals(payload, out),
            op::DAVE_MLS_ANNOUNCE_COMMIT_TRANSITION | op::DAVE_MLS_WELCOME => {
                self.on_commit_or_welcome(op, payload, out)
            }
            _ => tracing::debug!(op, "DAVE: ignoring an unknown binary op"),
        }
    }

    fn on_reset(&mut self) {
        self.session = None;
        self.version = 0;
        self.recognised.clear();
        self.external_sender = None;
        self.pending.clear();
    }
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
