//! The server's own member of each channel's group: a real davey [`DaveSession`] driven
//! in-process exactly like a client (key package, proposals, commits, welcomes,
//! transitions), so the UDP side can open the E2EE frames it measures and decodes.

use std::num::NonZeroU16;

use davey::{DaveSession, MediaType, ProposalsOperationType};
use quaver_gateway::dave::untrusted;
use quaver_gateway::protocol::{VoicePayload, op};

use super::group::ToClient;

/// What the observer answers, as a client would on its websocket.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    /// Op 26.
    KeyPackage(Vec<u8>),
    /// Op 28 (commit ‖ welcome), kept as a fallback rather than sent at once.
    Commit(Vec<u8>),
    /// Its proposals were all revoked: the kept commit is void.
    NoCommit,
    /// Op 23.
    Ready(u16),
    /// Op 31.
    Invalid(u16),
}

/// The observer's session. `DaveSession`'s own `Debug` shows no secrets.
#[derive(Debug)]
pub(crate) struct Observer {
    session: DaveSession,
    user_id: u64,
    channel_id: u64,
}

fn version() -> NonZeroU16 {
    NonZeroU16::MIN
}

impl Observer {
    pub fn new(user_id: u64, channel_id: u64) -> Option<Self> {
        match DaveSession::new(version(), user_id, channel_id, None) {
            Ok(session) => Some(Observer {
                session,
                user_id,
                channel_id,
            }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot create the DAVE observer");
                None
            }
        }
    }

    /// The observer's epoch (0 or none while pending).
    pub fn epoch(&self) -> u64 {
        self.session.epoch().map_or(0, |e| e.as_u64())
    }

    /// (leaf, user) of every member of the observer's established group, and its epoch.
    pub fn roster(&self) -> Option<(u64, Vec<(u32, u64)>)> {
        let group = self.session.group()?;
        let epoch = group.epoch().as_u64();
        if epoch == 0 {
            return None;
        }
        let mut members: Vec<(u32, u64)> = group
            .members()
            .filter_map(|m| {
                let id: [u8; 8] = m.credential.serialized_content().try_into().ok()?;
                Some((m.index.u32(), u64::from_be_bytes(id)))
            })
            .collect();
        members.sort_unstable();
        Some((epoch, members))
    }

    fn reinit(&mut self) -> Vec<Reply> {
        if let Err(e) = self
            .session
            .reinit(version(), self.user_id, self.channel_id, None)
        {
            tracing::warn!(error = %e, "observer reinit failed");
        }
        self.key_package()
    }

    fn key_package(&mut self) -> Vec<Reply> {
        match self.session.create_key_package() {
            Ok(kp) => vec![Reply::KeyPackage(kp)],
            Err(e) => {
                tracing::warn!(error = %e, "observer key package failed");
                Vec::new()
            }
        }
    }

    /// Handles one frame the group sent it. `recognized` are the users it accepts in Adds and
    /// welcomes (the channel's participants, as op 11 would have told a client).
    pub fn handle(&mut self, frame: &ToClient, recognized: &[u64]) -> Vec<Reply> {
        match frame {
            ToClient::Binary { op, payload } => self.binary(*op, payload, recognized),
            ToClient::Json(p) => self.json(p),
        }
    }

    fn binary(&mut self, op: u8, payload: &[u8], recognized: &[u64]) -> Vec<Reply> {
        match op {
            op::DAVE_MLS_EXTERNAL_SENDER => {
                if let Err(e) = self.session.set_external_sender(payload) {
                    tracing::warn!(error = %e, "observer rejected the external sender");
                    return Vec::new();
                }
                self.key_package()
            }
            op::DAVE_MLS_PROPOSALS => {
                let Some((kind, rest)) = payload.split_first() else {
                    return Vec::new();
                };
                let kind = if *kind == 0 {
                    ProposalsOperationType::APPEND
                } else {
                    ProposalsOperationType::REVOKE
                };
                let session = &mut self.session;
                match untrusted(|| session.process_proposals(kind, rest, Some(recognized))) {
                    Ok(Some(cw)) => {
                        let mut bytes = cw.commit;
                        if let Some(w) = cw.welcome {
                            bytes.extend(w);
                        }
                        vec![Reply::Commit(bytes)]
                    }
                    Ok(None) => vec![Reply::NoCommit],
                    Err(e) => {
                        tracing::warn!(error = %e, "observer could not process proposals");
                        Vec::new()
                    }
                }
            }
            op::DAVE_MLS_ANNOUNCE_COMMIT_TRANSITION | op::DAVE_MLS_WELCOME => {
                let (Some(id), Some(body)) = (payload.get(..2), payload.get(2..)) else {
                    return Vec::new();
                };
                let id = u16::from_be_bytes([id[0], id[1]]);
                let session = &mut self.session;
                let result = if op == op::DAVE_MLS_WELCOME {
                    untrusted(|| session.process_welcome(body, Some(recognized)))
                        .map(|()| true)
                        .map_err(|e| e.to_string())
                } else {
                    untrusted(|| session.process_commit(body)).map_err(|e| e.to_string())
                };
                match result {
                    Ok(true) => {
                        if let Err(e) = self.session.prepare_transition(id, 1) {
                            tracing::warn!(error = %e, "observer could not prepare the transition");
                        }
                        vec![Reply::Ready(id)]
                    }
                    Ok(false) => Vec::new(),
                    Err(e) => {
                        tracing::warn!(error = %e, "observer could not process a commit or welcome");
                        let mut out = vec![Reply::Invalid(id)];
                        out.extend(self.reinit());
                        out
                    }
                }
            }
            _ => Vec::new(),
        }
    }

    fn json(&mut self, p: &VoicePayload) -> Vec<Reply> {
        match p {
            VoicePayload::DavePrepareTransition(t) => {
                if let Err(e) = self
                    .session
                    .prepare_transition(t.transition_id, t.protocol_version)
                {
                    tracing::warn!(error = %e, "observer could not prepare the transition");
                }
                if t.transition_id != 0 {
                    vec![Reply::Ready(t.transition_id)]
                } else {
                    Vec::new()
                }
            }
            VoicePayload::DaveExecuteTransition(t) => {
                if let Err(e) = self.session.execute_transition(t.transition_id) {
                    tracing::warn!(error = %e, "observer could not execute the transition");
                }
                Vec::new()
            }
            VoicePayload::DavePrepareEpoch(e) if e.epoch == 1 => self.reinit(),
            _ => Vec::new(),
        }
    }

    /// Opens one sender's E2EE frame.
    pub fn decrypt(&mut self, user_id: u64, frame: &[u8]) -> Option<Vec<u8>> {
        self.session.decrypt(user_id, MediaType::AUDIO, frame).ok()
    }
}
