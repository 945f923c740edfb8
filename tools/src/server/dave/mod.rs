//! DAVE (Discord's end-to-end encryption, PROTOCOL.md §6) on the local server: the gateway as
//! MLS external sender and delivery service, plus a member of its own in every group.
//!
//! # Negotiation ([`DaveMode`])
//!
//! Like Discord since March 2026, [`DaveMode::Required`] (the default) closes a voice session
//! whose Identify offers `max_dave_protocol_version` 0 with **4017**, and negotiates version 1
//! with every other client (op 4 `dave_protocol_version: 1`). [`DaveMode::Optional`] accepts
//! both (a version-0 client gets 0; E2EE frames are not forwarded to it). [`DaveMode::Off`]
//! behaves like a stage channel: version 0 for everyone, no DAVE opcodes.
//!
//! # The delivery service
//!
//! One group per voice channel, keyed by (guild, channel) with the channel snowflake (big
//! endian) as the MLS group ID, with its own P-256 external sender (ciphersuite 2). The
//! channel is the one the server issued the session's credentials for (op 4 on the main
//! gateway, or [`Server::voice_connect_request`]); a session whose credentials the server did
//! not issue (allowed unless `require_issued_tokens`) is in channel 0 of its guild.
//!
//! * op 25 goes to each DAVE session right after its op 4;
//! * op 26 is validated (signature, MLS 1.0, ciphersuite 2, basic credential whose 8-byte
//!   identity is the authenticated user, leaf capabilities, lifetime 0..2^64−1) and answered with an external
//!   Add in op 27; a member leaving, dropping for good or sending op 31 gets a Remove, and an
//!   Add that was never committed is revoked;
//! * while the group forms (epoch 0) each pending member gets the other members' Adds; once it
//!   exists, proposals go to members only;
//! * op 28 is parsed by hand ([`parse_commit_welcome`]) and accepted only when it is for the
//!   current epoch, from a member (or, at epoch 0, from a pending member as leaf 0), references
//!   exactly the epoch's unrevoked proposals (minus the committer's own Add at epoch 0), and
//!   carries a Welcome exactly when it adds members. The first valid commit of an epoch wins;
//!   any other is ignored (counted in [`Counters::dave_ignored_commits`]). Undecodable binary
//!   frames close the websocket with 4002;
//! * op 29 (`transition_id ‖ commit`) goes to the members that stay, the committer included,
//!   op 30 (`transition_id ‖ welcome`) to the added; op 22 follows once every member of the new
//!   roster sent op 23, or after [`ServerConfig::dave_transition_timeout`]. Commits need no
//!   op 21: their transition ID travels in op 29/30, as libdave and davey expect;
//! * a group whose proposals stay uncommitted past [`ServerConfig::dave_commit_timeout`], when
//!   the observer cannot commit them either, restarts: op 24 (epoch 1) and op 21 (transition 0)
//!   to everyone, who then send new key packages. Discord does the same for a member left alone
//!   in its group ("sole member reset"); here the observer is always a second member, so that
//!   happens only without an observer. When the last client leaves, the group is dropped and
//!   the next join starts a new one.
//!
//! Binary server frames carry the v8 seq prefix and go into the replay buffer like JSON ones,
//! so a resumed session keeps its membership and gets what it missed.
//!
//! # The observer: why the server can still report on E2EE audio
//!
//! A media server cannot read E2EE frames. The local server's reports (loss, decode errors,
//! recordings) need the audio, so each group holds one extra member: the **observer**, user
//! [`OBSERVER_USER_ID`], announced to DAVE clients in op 11 like any user (it never sends
//! audio). It is a real davey `DaveSession` driven in-process through the same frames a client
//! gets: it makes a key package, is added by the server's proposals, processes commits and
//! welcomes, answers op 23 and executes transitions. Its own commits are kept as a fallback and
//! go through the same op 28 validation as a client's, and only when no other member can commit
//! or nobody committed within the commit timeout, so clients normally win the race. Each report
//! says whether the server's own leaf bookkeeping equals the observer's MLS tree
//! ([`DaveCallStats::roster_matches_observer`]).
//!
//! Turning it off ([`ServerConfig::dave_observer`]) leaves the groups to the clients alone; E2EE
//! frames are then counted as undecryptable and not decoded.
//!
//! The UDP side opens each E2EE frame with the observer's session
//! (`decrypt(user_id, Audio, frame)`, the sender's user from the server's own SSRC
//! bookkeeping) before the Opus decode, and counts [`StreamStats::dave_frames`] and
//! [`StreamStats::dave_undecryptable`]. Forwarding sends the E2EE frame on unchanged
//! (re-sealed with each receiver's transport key).
//!
//! [`Server::voice_connect_request`]: super::Server::voice_connect_request
//! [`Counters::dave_ignored_commits`]: super::Counters::dave_ignored_commits
//! [`ServerConfig::dave_observer`]: super::ServerConfig::dave_observer
//! [`ServerConfig::dave_transition_timeout`]: super::ServerConfig::dave_transition_timeout
//! [`ServerConfig::dave_commit_timeout`]: super::ServerConfig::dave_commit_timeout
//! [`StreamStats::dave_frames`]: super::StreamStats::dave_frames
//! [`StreamStats::dave_undecryptable`]: super::StreamStats::dave_undecryptable

mod commit;
mod external_sender;
mod group;
mod observer;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use quaver_gateway::protocol::{BinaryFrame, VoicePayload, close_code, op};

pub use commit::{CommitWelcome, ParsedCommit, parse_commit, parse_commit_welcome};
pub use external_sender::parse_key_package;

use group::{Group, OBSERVER, Out, ToClient};
use observer::{Observer, Reply};

use super::Shared;

/// The user ID of the server's observer in every DAVE group (announced in op 11; never a real
/// Discord user: Discord snowflakes of that size belong to 2029).
pub const OBSERVER_USER_ID: u64 = 999_999_999_999_999_999;

/// How the server negotiates DAVE (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub enum DaveMode {
    /// Version 1 for every client; a client without DAVE is closed with 4017 (Discord today).
    #[default]
    Required,
    /// Version 1 for clients that offer it, 0 for the others.
    Optional,
    /// Version 0 for everyone, no DAVE opcodes (like a stage channel).
    Off,
}

/// `required`, `optional` or `off`.
#[derive(Debug, thiserror::Error)]
#[error("unknown DAVE mode (expected required, optional or off)")]
pub struct UnknownDaveMode;

impl FromStr for DaveMode {
    type Err = UnknownDaveMode;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "required" => Ok(DaveMode::Required),
            "optional" => Ok(DaveMode::Optional),
            "off" => Ok(DaveMode::Off),
            _ => Err(UnknownDaveMode),
        }
    }
}

/// Runs an openmls parser on bytes from the network. openmls 0.8.3 can panic on malformed input
/// (a key package whose extensions re-serialise to another length slices out of range in
/// `Extensions::tls_deserialize_bytes`; found by `server_dave`'s mutation test, kept in
/// `tools/tests/fixtures/`): one client's bytes must not take a server thread down.
pub(crate) fn untrusted<T>(parse: impl FnOnce() -> Result<T, DaveError>) -> Result<T, DaveError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(parse))
        .unwrap_or(Err(DaveError::ParserPanicked))
}

/// Why a DAVE frame from a client was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaveError {
    /// The frame ended early.
    #[error("truncated DAVE message")]
    Truncated,
    /// An MLS length prefix with the reserved top bits `11`.
    #[error("invalid MLS variable-length prefix")]
    BadVarint,
    /// openmls' structural decoding failed.
    #[error("undecodable MLS structure: {0:?}")]
    Tls(openmls::prelude::tls_codec::Error),
    /// openmls panicked on the input (see [`untrusted`]); refused like any malformed message.
    #[error("malformed MLS structure (the MLS parser failed on it)")]
    ParserPanicked,
    /// The message does not re-serialise to what was received.
    #[error("non-canonical MLS message")]
    NonCanonical,
    /// Not MLS 1.0.
    #[error("unsupported MLS version {0}")]
    UnsupportedVersion(u16),
    /// Handshakes must be PublicMessages (wire format 1).
    #[error("wire format {0} is not PublicMessage")]
    NotPublicMessage(u16),
    /// The commit's sender is not a member.
    #[error("sender type {0} is not a member")]
    NotMemberSender(u8),
    /// The content is not a commit.
    #[error("content type {0} is not a commit")]
    NotCommit(u8),
    /// DAVE commits carry proposal references only.
    #[error("commit carries an inline proposal")]
    InlineProposal,
    /// A `ProposalOrRef` type that is neither 1 nor 2.
    #[error("unknown ProposalOrRef type {0}")]
    UnknownProposalOrRef(u8),
    /// The key package failed openmls validation.
    #[error("invalid key package: {0}")]
    KeyPackage(#[source] openmls::prelude::KeyPackageVerifyError),
    /// The key package is not for ciphersuite 2.
    #[error("key package for the wrong ciphersuite")]
    WrongCiphersuite,
    /// The key package's credential is not a basic credential.
    #[error("key package credential is not basic")]
    NotBasicCredential,
    /// The credential identity is not 8 bytes.
    #[error("credential identity is not a user ID")]
    BadIdentity,
    /// The credential names somebody else.
    #[error("key package for user {claimed}, session of user {expected}")]
    WrongIdentity {
        /// The authenticated user.
        expected: u64,
        /// The identity in the key package.
        claimed: u64,
    },
    /// The leaf does not advertise MLS 1.0, ciphersuite 2 and basic credentials.
    #[error("key package leaf lacks DAVE's capabilities")]
    MissingCapabilities,
    /// The lifetime is not DAVE's 0..2^64−1.
    #[error("key package lifetime is not 0..2^64-1")]
    BadLifetime,
    /// A binary opcode clients don't send.
    #[error("unexpected binary opcode {0}")]
    UnexpectedOpcode(u8),
    /// The session did not negotiate DAVE.
    #[error("DAVE was not negotiated on this session")]
    NotNegotiated,
    /// Signing or hashing failed.
    #[error("MLS crypto failure")]
    Crypto,
}

/// One DAVE group's state for the report.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DaveCallStats {
    /// The voice channel (the MLS group ID).
    pub channel_id: u64,
    /// Negotiated protocol version (1).
    pub protocol_version: u16,
    /// The group's epoch as the server counts it (0 while it forms).
    pub epoch: u64,
    /// Members in the tree, the observer included.
    pub members: usize,
    /// The observer's own epoch (equals `epoch` once it processed the last commit).
    pub observer_epoch: u64,
    /// Commits accepted.
    pub commits: u64,
    /// Commits ignored (stale, racing or invalid).
    pub ignored_commits: u64,
    /// Transitions executed (op 22 sent).
    pub transitions: u64,
    /// Group restarts (op 24 epoch 1).
    pub resets: u64,
    /// Whether the server's leaf bookkeeping equals the observer's MLS tree (leaf index and
    /// user of every member); `None` while the observer is not at the server's epoch.
    pub roster_matches_observer: Option<bool>,
}

/// Result of opening one RTP payload.
pub(crate) enum Opened {
    /// Not an E2EE frame (no DAVE marker): use as is.
    Plain,
    /// Decrypted Opus.
    Decrypted(Vec<u8>),
    /// An E2EE frame the observer could not open.
    Undecryptable,
}

struct Channel {
    guild_id: u64,
    channel_id: u64,
    group: Group,
    observer: Option<Observer>,
    /// The observer's latest commit (epoch, op 28 payload), held back as a fallback.
    observer_commit: Option<(u64, Vec<u8>)>,
}

struct Slot {
    dead: AtomicBool,
    channel: Mutex<Channel>,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, Channel> {
        self.channel.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A session that ended for good.
struct Left {
    session: u64,
    guild_id: u64,
    channel_id: u64,
}

/// The server's DAVE state. Lock order: `left` and `channels` are taken alone; a channel's
/// lock may be held while taking the registry lock, never the other way round.
#[derive(Default)]
pub(crate) struct Hub {
    channels: Mutex<HashMap<(u64, u64), Arc<Slot>>>,
    left: Mutex<Vec<Left>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The protocol version for a client offering `offered`, or the close code.
pub(crate) fn negotiate(mode: DaveMode, offered: u16) -> Result<u16, u16> {
    match mode {
        DaveMode::Off => Ok(0),
        DaveMode::Optional => Ok(offered.min(1)),
        DaveMode::Required if offered == 0 => Err(close_code::DAVE_REQUIRED),
        DaveMode::Required => Ok(1),
    }
}

/// Whether an RTP payload looks like a DAVE protocol frame (PROTOCOL.md §6 "Protocol-frame
/// check"): at least 11 bytes ending in the `FA FA` marker with a plausible supplemental size.
pub(crate) fn is_protocol_frame(frame: &[u8]) -> bool {
    let n = frame.len();
    n >= 11
        && frame[n - 2..] == [0xFA, 0xFA]
        && usize::from(frame[n - 3]) >= 11
        && usize::from(frame[n - 3]) <= n
}

struct SessionInfo {
    guild_id: u64,
    channel_id: u64,
    user_id: u64,
    version: u16,
}

fn session_info(shared: &Shared, key: u64) -> Option<SessionInfo> {
    let reg = shared.lock();
    let s = reg.sessions.get(&key)?;
    Some(SessionInfo {
        guild_id: s.guild_id,
        channel_id: s.channel_id,
        user_id: s.user_id,
        version: s.dave_version,
    })
}

impl Channel {
    fn new(shared: &Shared, guild_id: u64, channel_id: u64) -> Result<Self, DaveError> {
        let mut group = Group::new(channel_id, shared.config.dave_transition_timeout)?;
        let observer = if shared.config.dave_observer {
            Observer::new(OBSERVER_USER_ID, channel_id)
        } else {
            None
        };
        if observer.is_some() {
            group.join(OBSERVER, OBSERVER_USER_ID);
        }
        Ok(Channel {
            guild_id,
            channel_id,
            group,
            observer,
            observer_commit: None,
        })
    }

    /// Delivers the group's frames to the observer (whose answers feed the group again) until
    /// only frames for websockets remain; returns those, in order.
    fn run(&mut self, now: Instant) -> Vec<Out> {
        let mut out = Vec::new();
        // The observer's answers are finite, but a bound keeps a bug from hanging a thread.
        for _ in 0..10_000 {
            if self.group.out.is_empty() {
                if self.observer.is_none() && self.group.sole_member_reset() {
                    continue;
                }
                break;
            }
            let batch = std::mem::take(&mut self.group.out);
            for o in batch {
                if o.to != OBSERVER {
                    out.push(o);
                    continue;
                }
                let recognized = self.group.user_ids();
                let Some(obs) = self.observer.as_mut() else {
                    continue;
                };
                for reply in obs.handle(&o.frame, &recognized) {
                    self.observer_reply(reply, now);
                }
            }
        }
        out
    }

    fn observer_reply(&mut self, reply: Reply, now: Instant) {
        match reply {
            Reply::KeyPackage(kp) => {
                let done = parse_key_package(&kp, OBSERVER_USER_ID)
                    .and_then(|kp| self.group.key_package(OBSERVER, kp, now));
                if let Err(e) = done {
                    tracing::warn!(error = %e, "the observer's key package was refused");
                }
            }
            Reply::Commit(bytes) => {
                self.observer_commit = Some((self.group.epoch(), bytes));
                if !self.group.others_can_commit(OBSERVER) {
                    self.submit_observer_commit(now);
                }
            }
            Reply::NoCommit => self.observer_commit = None,
            Reply::Ready(id) => self.group.transition_ready(OBSERVER, id),
            Reply::Invalid(_) => {
                self.observer_commit = None;
                if let Err(e) = self.group.invalid_commit_welcome(OBSERVER, now) {
                    tracing::warn!(error = %e, "observer op 31 failed");
                }
            }
        }
    }

    /// Puts the observer's kept commit through op 28 validation. Whether it was accepted.
    fn submit_observer_commit(&mut self, now: Instant) -> bool {
        let Some((epoch, bytes)) = self.observer_commit.take() else {
            return false;
        };
        if epoch != self.group.epoch() {
            return false;
        }
        match parse_commit_welcome(&bytes) {
            Ok(cw) => match self.group.commit(OBSERVER, &cw, now) {
                Ok(epoch) => {
                    tracing::debug!(epoch, "the observer's commit was taken");
                    true
                }
                Err(why) => {
                    tracing::debug!(?why, "the observer's commit was not taken");
                    false
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "the observer's commit does not parse");
                false
            }
        }
    }

    fn snapshot(&self) -> DaveCallStats {
        let c = self.group.counters;
        let roster_matches_observer = self
            .observer
            .as_ref()
            .and_then(Observer::roster)
            .filter(|(epoch, _)| *epoch == self.group.epoch())
            .map(|(_, members)| members == self.group.roster());
        DaveCallStats {
            channel_id: self.channel_id,
            protocol_version: 1,
            epoch: self.group.epoch(),
            members: self.group.member_count(),
            observer_epoch: self.observer.as_ref().map_or(0, Observer::epoch),
            commits: c.commits,
            ignored_commits: c.ignored_commits,
            transitions: c.transitions,
            resets: c.resets,
            roster_matches_observer,
        }
    }
}

/// Runs the channel, then hands its frames to the websockets and refreshes the report.
fn flush(shared: &Shared, ch: &mut Channel, now: Instant) {
    let out = ch.run(now);
    let snapshot = ch.snapshot();
    let cap = shared.config.replay_buffer;
    let mut reg = shared.lock();
    for o in out {
        let Some(s) = reg.sessions.get_mut(&o.to) else {
            continue;
        };
        match o.frame {
            ToClient::Binary { op, payload } => s.push_binary(op, &payload, cap),
            ToClient::Json(p) => s.push(&p, cap),
        }
    }
    reg.dave_calls
        .insert((ch.guild_id, ch.channel_id), snapshot);
}

impl Hub {
    fn slot(
        &self,
        shared: &Shared,
        guild_id: u64,
        channel_id: u64,
        create: bool,
    ) -> Option<Arc<Slot>> {
        let mut map = lock(&self.channels);
        let key = (guild_id, channel_id);
        if let Some(s) = map.get(&key)
            && !s.dead.load(Ordering::Acquire)
        {
            return Some(s.clone());
        }
        if !create {
            return None;
        }
        match Channel::new(shared, guild_id, channel_id) {
            Ok(ch) => {
                let slot = Arc::new(Slot {
                    dead: AtomicBool::new(false),
                    channel: Mutex::new(ch),
                });
                map.insert(key, slot.clone());
                Some(slot)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot create the channel's DAVE group");
                None
            }
        }
    }

    /// Applies the sessions that ended since the last call, all of a channel's at once so that
    /// no commit (the observer's included) is made between two of them: a client already told
    /// by op 13 that a user left would refuse a welcome still listing that user.
    fn process_left(&self, shared: &Shared, now: Instant) {
        let left = std::mem::take(&mut *lock(&self.left));
        if left.is_empty() {
            return;
        }
        let mut by_channel: HashMap<(u64, u64), Vec<u64>> = HashMap::new();
        for l in left {
            by_channel
                .entry((l.guild_id, l.channel_id))
                .or_default()
                .push(l.session);
        }
        for ((guild_id, channel_id), sessions) in by_channel {
            let Some(slot) = self.slot(shared, guild_id, channel_id, false) else {
                continue;
            };
            let mut ch = slot.lock();
            for session in sessions {
                tracing::debug!(session, "DAVE leave");
                if let Err(e) = ch.group.leave(session, now) {
                    tracing::warn!(error = %e, "DAVE remove failed");
                }
            }
            flush(shared, &mut ch, now);
            if ch.group.client_count() == 0 {
                // Nobody left to talk to: the next join starts a new group.
                slot.dead.store(true, Ordering::Release);
                drop(ch);
                let mut map = lock(&self.channels);
                if map
                    .get(&(guild_id, channel_id))
                    .is_some_and(|s| Arc::ptr_eq(s, &slot))
                {
                    map.remove(&(guild_id, channel_id));
                }
            }
        }
    }
}

/// Op 4 went out with `dave_protocol_version` 1: op 25 follows, and the session takes part.
pub(crate) fn on_established(shared: &Shared, key: u64) {
    let now = Instant::now();
    shared.dave.process_left(shared, now);
    let Some(info) = session_info(shared, key) else {
        return;
    };
    if info.version == 0 {
        return;
    }
    // A channel whose last client just left is retired under its own lock: join a live one.
    for _ in 0..3 {
        let Some(slot) = shared
            .dave
            .slot(shared, info.guild_id, info.channel_id, true)
        else {
            return;
        };
        let mut ch = slot.lock();
        if slot.dead.load(Ordering::Acquire) {
            continue;
        }
        tracing::debug!(session = key, user = info.user_id, "DAVE join");
        ch.group.join(key, info.user_id);
        flush(shared, &mut ch, now);
        return;
    }
    tracing::warn!(session = key, "could not join a DAVE group");
}

/// A binary frame from a client. An error means the frame was malformed: close with 4002.
pub(crate) fn on_binary(shared: &Shared, key: u64, bytes: &[u8]) -> Result<(), DaveError> {
    let now = Instant::now();
    shared.dave.process_left(shared, now);
    let frame = BinaryFrame::parse_client(bytes, usize::MAX).map_err(|_| DaveError::Truncated)?;
    let Some(info) = session_info(shared, key) else {
        return Ok(());
    };
    if info.version == 0 {
        return Err(DaveError::NotNegotiated);
    }
    let Some(slot) = shared
        .dave
        .slot(shared, info.guild_id, info.channel_id, false)
    else {
        return Err(DaveError::NotNegotiated);
    };
    let mut ch = slot.lock();
    if !ch.group.is_participant(key) {
        return Err(DaveError::NotNegotiated);
    }
    let result = match frame.op {
        op::DAVE_MLS_KEY_PACKAGE => {
            let kp = parse_key_package(frame.payload, info.user_id);
            let ok = kp.is_ok();
            let r = kp.and_then(|kp| ch.group.key_package(key, kp, now));
            if ok {
                shared.lock().counters.dave_key_packages += 1;
            }
            r
        }
        op::DAVE_MLS_COMMIT_WELCOME => {
            let cw = parse_commit_welcome(frame.payload)?;
            let taken = ch.group.commit(key, &cw, now);
            let mut reg = shared.lock();
            match taken {
                Ok(epoch) => {
                    reg.counters.dave_commits += 1;
                    tracing::debug!(epoch, user = info.user_id, "DAVE commit accepted");
                }
                Err(why) => {
                    reg.counters.dave_ignored_commits += 1;
                    tracing::debug!(?why, user = info.user_id, "DAVE commit ignored");
                }
            }
            Ok(())
        }
        other => Err(DaveError::UnexpectedOpcode(other)),
    };
    flush(shared, &mut ch, now);
    result
}

/// Ops 23 and 31 from a client.
pub(crate) fn on_json(shared: &Shared, key: u64, payload: &VoicePayload) {
    let now = Instant::now();
    shared.dave.process_left(shared, now);
    let Some(info) = session_info(shared, key) else {
        return;
    };
    let Some(slot) = shared
        .dave
        .slot(shared, info.guild_id, info.channel_id, false)
    else {
        return;
    };
    let mut ch = slot.lock();
    match payload {
        VoicePayload::DaveTransitionReady(t) => ch.group.transition_ready(key, t.transition_id),
        VoicePayload::DaveMlsInvalidCommitWelcome(_) => {
            if let Err(e) = ch.group.invalid_commit_welcome(key, now) {
                tracing::debug!(error = %e, "op 31 from a session without DAVE");
            }
        }
        _ => {}
    }
    flush(shared, &mut ch, now);
}

/// A session ended for good (called with the registry locked, so only queued here).
pub(crate) fn session_ended(shared: &Shared, session: u64, guild_id: u64, channel_id: u64) {
    lock(&shared.dave.left).push(Left {
        session,
        guild_id,
        channel_id,
    });
}

/// Periodic work: ended sessions, transition and commit timeouts.
pub(crate) fn tick(shared: &Shared, now: Instant) {
    shared.dave.process_left(shared, now);
    let slots: Vec<Arc<Slot>> = lock(&shared.dave.channels).values().cloned().collect();
    for slot in slots {
        let mut ch = slot.lock();
        if ch.group.tick(now, shared.config.dave_commit_timeout) {
            // Nobody committed in time: the observer's commit, or a fresh start.
            if !ch.submit_observer_commit(now) {
                tracing::info!(
                    channel = ch.channel_id,
                    "no DAVE commit in time; restarting the group"
                );
                ch.group.reset();
                ch.observer_commit = None;
            }
        }
        flush(shared, &mut ch, now);
    }
}

/// Opens one sender's RTP payload with the channel's observer.
pub(crate) fn open(
    shared: &Shared,
    guild_id: u64,
    channel_id: u64,
    user_id: u64,
    payload: &[u8],
) -> Opened {
    if !is_protocol_frame(payload) {
        return Opened::Plain;
    }
    let Some(slot) = shared.dave.slot(shared, guild_id, channel_id, false) else {
        return Opened::Undecryptable;
    };
    let mut ch = slot.lock();
    match ch
        .observer
        .as_mut()
        .and_then(|o| o.decrypt(user_id, payload))
    {
        Some(plain) => Opened::Decrypted(plain),
        None => Opened::Undecryptable,
    }
}
