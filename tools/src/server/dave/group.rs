//! One channel's MLS bookkeeping as the delivery service sees it: who takes part, which leaf
//! each member holds, the epoch's proposals and the transition in flight. Sans-IO: every
//! method takes the time as an argument and queues frames in [`Group::out`]; the caller
//! delivers them (to websockets, or to the in-process observer).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use openmls::prelude::KeyPackage;
use openmls::prelude::tls_codec::{Serialize as _, VLBytes};
use quaver_gateway::protocol::{
    DavePrepareEpoch, DavePrepareTransition, DaveTransition, VoicePayload, op,
};

use super::DaveError;
use super::commit::CommitWelcome;
use super::external_sender::ExternalSenderKeys;

/// A participant: the voice session key, or [`OBSERVER`].
pub(crate) type Who = u64;

/// The server's own member (never a session key: those count up from 1).
pub(crate) const OBSERVER: Who = u64::MAX;

/// DAVE protocol version 1.
const VERSION: u16 = 1;

/// A frame for one participant.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum ToClient {
    /// A binary op (the seq prefix is added on delivery).
    Binary {
        /// Opcode.
        op: u8,
        /// Payload after the opcode.
        payload: Vec<u8>,
    },
    /// A JSON op.
    Json(VoicePayload),
}

/// A frame and its recipient.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Out {
    pub to: Who,
    pub frame: ToClient,
}

/// Why a commit was not taken. Races make these normal: every member commits and only the
/// first valid one counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ignored {
    NotParticipant,
    WrongGroup,
    StaleEpoch,
    NotCommitter,
    NothingToCommit,
    WrongProposals,
    WelcomeMismatch,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Add(Who),
    Remove { leaf: u32 },
}

struct Proposal {
    kind: Kind,
    message: Vec<u8>,
    reference: Vec<u8>,
    /// Who received it, so a revoke reaches the same set.
    recipients: Vec<Who>,
}

#[derive(Debug)]
struct Participant {
    user: u64,
    /// The member's leaf, once a commit or welcome put it into the group.
    leaf: Option<u32>,
    /// Sent op 31 (or a new key package while a member): its MLS state is gone, so it gets
    /// no proposals or commits until it is added again.
    resetting: bool,
}

struct Transition {
    id: u16,
    waiting: BTreeSet<Who>,
    deadline: Instant,
}

/// Counters for the report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct GroupCounters {
    pub commits: u64,
    pub ignored_commits: u64,
    pub transitions: u64,
    pub resets: u64,
}

/// One channel's group. No `Debug`: it holds the external sender's private key.
pub(crate) struct Group {
    channel_id: u64,
    keys: ExternalSenderKeys,
    transition_timeout: Duration,
    /// 0 while the group forms (every client has its own pending group).
    epoch: u64,
    leaves: Vec<Option<Who>>,
    participants: BTreeMap<Who, Participant>,
    proposals: Vec<Proposal>,
    /// When the oldest uncommitted proposal was made.
    proposals_since: Option<Instant>,
    transition: Option<Transition>,
    next_transition: u16,
    pub counters: GroupCounters,
    /// Frames to deliver, in order.
    pub out: Vec<Out>,
}

impl Group {
    pub fn new(channel_id: u64, transition_timeout: Duration) -> Result<Self, DaveError> {
        Ok(Group {
            channel_id,
            keys: ExternalSenderKeys::new(channel_id)?,
            transition_timeout,
            epoch: 0,
            leaves: Vec::new(),
            participants: BTreeMap::new(),
            proposals: Vec::new(),
            proposals_since: None,
            transition: None,
            next_transition: 0,
            counters: GroupCounters::default(),
            out: Vec::new(),
        })
    }

    /// The group's epoch (0 while it forms).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Members in the tree.
    pub fn member_count(&self) -> usize {
        self.leaves.iter().flatten().count()
    }

    /// User IDs of every participant (what a member may accept Adds for).
    pub fn user_ids(&self) -> Vec<u64> {
        self.participants.values().map(|p| p.user).collect()
    }

    /// Participants other than the observer.
    pub fn client_count(&self) -> usize {
        self.participants.keys().filter(|w| **w != OBSERVER).count()
    }

    /// (leaf, user) of every member, the way the server placed them.
    pub fn roster(&self) -> Vec<(u32, u64)> {
        self.leaves
            .iter()
            .enumerate()
            .filter_map(|(i, w)| {
                let user = self.participants.get(w.as_ref()?)?.user;
                Some((u32::try_from(i).ok()?, user))
            })
            .collect()
    }

    pub fn is_participant(&self, who: Who) -> bool {
        self.participants.contains_key(&who)
    }

    fn send(&mut self, to: Who, frame: ToClient) {
        self.out.push(Out { to, frame });
    }

    fn send_binary(&mut self, to: Who, op: u8, payload: Vec<u8>) {
        self.send(to, ToClient::Binary { op, payload });
    }

    /// A DAVE session joined: it gets op 25 and takes part once it sends a key package.
    pub fn join(&mut self, who: Who, user: u64) {
        if self.participants.contains_key(&who) {
            return;
        }
        self.participants.insert(
            who,
            Participant {
                user,
                leaf: None,
                resetting: false,
            },
        );
        let op25 = self.keys.op25().to_vec();
        self.send_binary(who, op::DAVE_MLS_EXTERNAL_SENDER, op25);
    }

    /// Members that receive this epoch's proposals: in the tree, still present, not resetting.
    fn members_except(&self, who: Who) -> Vec<Who> {
        self.participants
            .iter()
            .filter(|(w, p)| **w != who && p.leaf.is_some() && !p.resetting)
            .map(|(w, _)| *w)
            .collect()
    }

    /// While the group forms: participants with an Add on the table.
    fn pending_except(&self, who: Who) -> Vec<Who> {
        self.proposals
            .iter()
            .filter_map(|p| match p.kind {
                Kind::Add(w) if w != who => Some(w),
                _ => None,
            })
            .collect()
    }

    /// Whether a member other than `who` is able to commit the current proposals.
    pub fn others_can_commit(&self, who: Who) -> bool {
        if self.epoch == 0 {
            !self.pending_except(who).is_empty()
        } else {
            !self.members_except(who).is_empty()
        }
    }

    fn append_frame(messages: &[&[u8]]) -> Result<Vec<u8>, DaveError> {
        let all: Vec<u8> = messages.concat();
        let mut payload = vec![0u8];
        payload.extend(
            VLBytes::new(all)
                .tls_serialize_detached()
                .map_err(DaveError::Tls)?,
        );
        Ok(payload)
    }

    fn push_proposal(
        &mut self,
        kind: Kind,
        message: Vec<u8>,
        reference: Vec<u8>,
        to: Vec<Who>,
        now: Instant,
    ) -> Result<(), DaveError> {
        let payload = Self::append_frame(&[&message])?;
        for w in &to {
            self.send_binary(*w, op::DAVE_MLS_PROPOSALS, payload.clone());
        }
        self.proposals.push(Proposal {
            kind,
            message,
            reference,
            recipients: to,
        });
        self.proposals_since.get_or_insert(now);
        Ok(())
    }

    fn revoke(&mut self, index: usize) -> Result<(), DaveError> {
        let p = self.proposals.remove(index);
        let mut payload = vec![1u8];
        payload.extend(
            VLBytes::new(p.reference.clone())
                .tls_serialize_detached()
                .map_err(DaveError::Tls)?,
        );
        for w in p.recipients {
            if self.participants.contains_key(&w) {
                self.send_binary(w, op::DAVE_MLS_PROPOSALS, payload.clone());
            }
        }
        if self.proposals.is_empty() {
            self.proposals_since = None;
        }
        Ok(())
    }

    fn propose_remove(&mut self, leaf: u32, except: Who, now: Instant) -> Result<(), DaveError> {
        if self
            .proposals
            .iter()
            .any(|p| p.kind == Kind::Remove { leaf })
        {
            return Ok(());
        }
        let m = self.keys.remove(leaf, self.epoch)?;
        let to = self.members_except(except);
        self.push_proposal(Kind::Remove { leaf }, m.message, m.reference, to, now)
    }

    /// Op 26: a validated key package from `who` (its identity already checked).
    pub fn key_package(&mut self, who: Who, kp: KeyPackage, now: Instant) -> Result<(), DaveError> {
        let Some(p) = self.participants.get(&who) else {
            return Err(DaveError::NotNegotiated);
        };
        let leaf = p.leaf;
        // A fresh key package replaces an Add still on the table.
        if let Some(i) = self.proposals.iter().position(|x| x.kind == Kind::Add(who)) {
            self.revoke(i)?;
        }
        // A member asking in again has lost its state: out with the old leaf.
        if let Some(leaf) = leaf {
            if let Some(p) = self.participants.get_mut(&who) {
                p.resetting = true;
            }
            self.propose_remove(leaf, who, now)?;
        }
        let m = self.keys.add(kp, self.epoch)?;
        let to = if self.epoch == 0 {
            // While the group forms, each pending member gets the others' Adds: whoever
            // commits first creates the group with the rest.
            let others: Vec<&[u8]> = self
                .proposals
                .iter()
                .filter(|x| matches!(x.kind, Kind::Add(w) if w != who))
                .map(|x| x.message.as_slice())
                .collect();
            if !others.is_empty() {
                let payload = Self::append_frame(&others)?;
                self.send_binary(who, op::DAVE_MLS_PROPOSALS, payload);
                for x in self.proposals.iter_mut() {
                    if matches!(x.kind, Kind::Add(w) if w != who) && !x.recipients.contains(&who) {
                        x.recipients.push(who);
                    }
                }
            }
            self.pending_except(who)
        } else {
            self.members_except(who)
        };
        self.push_proposal(Kind::Add(who), m.message, m.reference, to, now)
    }

    /// Op 28 from `who`. The first valid commit of the epoch moves the group on; anything else
    /// is ignored, as Discord does.
    pub fn commit(&mut self, who: Who, cw: &CommitWelcome, now: Instant) -> Result<u64, Ignored> {
        let Some(p) = self.participants.get(&who) else {
            return Err(self.ignore(Ignored::NotParticipant));
        };
        let c = &cw.parsed;
        if c.group_id != self.channel_id.to_be_bytes() {
            return Err(self.ignore(Ignored::WrongGroup));
        }
        if c.epoch != self.epoch {
            return Err(self.ignore(Ignored::StaleEpoch));
        }
        let forming = self.epoch == 0;
        let own_add = self.proposals.iter().position(|x| x.kind == Kind::Add(who));
        let committer_ok = if forming {
            c.sender_leaf == 0 && own_add.is_some()
        } else {
            p.leaf == Some(c.sender_leaf) && !p.resetting
        };
        if !committer_ok {
            return Err(self.ignore(Ignored::NotCommitter));
        }
        let expected: Vec<usize> = (0..self.proposals.len())
            .filter(|i| !(forming && Some(*i) == own_add))
            .collect();
        if expected.is_empty() {
            return Err(self.ignore(Ignored::NothingToCommit));
        }
        // The references must be exactly the expected proposals, each once; their order is
        // the order the committer applied them in.
        let mut order = Vec::with_capacity(c.refs.len());
        for r in &c.refs {
            match expected
                .iter()
                .find(|i| self.proposals[**i].reference == *r)
            {
                Some(i) if !order.contains(i) => order.push(*i),
                _ => return Err(self.ignore(Ignored::WrongProposals)),
            }
        }
        if order.len() != expected.len() {
            return Err(self.ignore(Ignored::WrongProposals));
        }
        let adds: Vec<Who> = order
            .iter()
            .filter_map(|i| match self.proposals[*i].kind {
                Kind::Add(w) => Some(w),
                Kind::Remove { .. } => None,
            })
            .collect();
        if adds.is_empty() == cw.welcome.is_some() {
            return Err(self.ignore(Ignored::WelcomeMismatch));
        }
        let removed: Vec<u32> = order
            .iter()
            .filter_map(|i| match self.proposals[*i].kind {
                Kind::Remove { leaf } => Some(leaf),
                Kind::Add(_) => None,
            })
            .collect();

        // Op 29 goes to the members that stay (the committer included), op 30 to the added.
        let announce: Vec<Who> = if forming {
            vec![who]
        } else {
            self.participants
                .iter()
                .filter(|(_, p)| p.leaf.is_some_and(|l| !removed.contains(&l)) && !p.resetting)
                .map(|(w, _)| *w)
                .collect()
        };
        // Leaves (RFC 9420 §12.3): removes blank theirs, adds take the leftmost blank or the
        // end, trailing blanks are trimmed.
        if forming {
            self.leaves = vec![Some(who)];
            if let Some(p) = self.participants.get_mut(&who) {
                p.leaf = Some(0);
            }
        }
        for leaf in &removed {
            if let Some(slot) = self.leaves.get_mut(*leaf as usize)
                && let Some(w) = slot.take()
                && let Some(p) = self.participants.get_mut(&w)
                && p.leaf == Some(*leaf)
            {
                p.leaf = None;
            }
        }
        while self.leaves.last().is_some_and(Option::is_none) {
            self.leaves.pop();
        }
        for w in &adds {
            let index = match self.leaves.iter().position(Option::is_none) {
                Some(i) => {
                    self.leaves[i] = Some(*w);
                    i
                }
                None => {
                    self.leaves.push(Some(*w));
                    self.leaves.len() - 1
                }
            };
            if let Some(p) = self.participants.get_mut(w) {
                p.leaf = Some(index as u32);
                p.resetting = false;
            }
        }
        self.epoch += 1;
        self.proposals.clear();
        self.proposals_since = None;
        self.counters.commits += 1;

        // A transition still waiting is overtaken: execute it now so nobody keeps an old id.
        if let Some(t) = self.transition.take() {
            self.execute(t.id);
        }
        let id = self.fresh_transition_id();
        let mut framed = id.to_be_bytes().to_vec();
        framed.extend_from_slice(&cw.commit);
        for w in announce {
            self.send_binary(w, op::DAVE_MLS_ANNOUNCE_COMMIT_TRANSITION, framed.clone());
        }
        if let Some(welcome) = &cw.welcome {
            let mut framed = id.to_be_bytes().to_vec();
            framed.extend_from_slice(welcome);
            for w in &adds {
                self.send_binary(*w, op::DAVE_MLS_WELCOME, framed.clone());
            }
        }
        let waiting: BTreeSet<Who> = self.leaves.iter().flatten().copied().collect();
        self.transition = Some(Transition {
            id,
            waiting,
            deadline: now + self.transition_timeout,
        });
        Ok(self.epoch)
    }

    fn ignore(&mut self, why: Ignored) -> Ignored {
        self.counters.ignored_commits += 1;
        why
    }

    fn fresh_transition_id(&mut self) -> u16 {
        self.next_transition = self.next_transition.wrapping_add(1).max(1);
        self.next_transition
    }

    fn execute(&mut self, id: u16) {
        self.counters.transitions += 1;
        let to: Vec<Who> = self.participants.keys().copied().collect();
        for w in to {
            self.send(
                w,
                ToClient::Json(VoicePayload::DaveExecuteTransition(DaveTransition {
                    transition_id: id,
                })),
            );
        }
    }

    /// Op 23.
    pub fn transition_ready(&mut self, who: Who, id: u16) {
        let done = match &mut self.transition {
            Some(t) if t.id == id => {
                t.waiting.remove(&who);
                t.waiting.is_empty()
            }
            _ => false,
        };
        if done {
            self.transition = None;
            self.execute(id);
        }
    }

    /// Op 31: `who` could not process a commit or welcome. It leaves the group (Remove, or its
    /// Add revoked) and is added again on its next key package.
    pub fn invalid_commit_welcome(&mut self, who: Who, now: Instant) -> Result<(), DaveError> {
        let Some(p) = self.participants.get_mut(&who) else {
            return Err(DaveError::NotNegotiated);
        };
        p.resetting = p.leaf.is_some();
        let leaf = p.leaf;
        if let Some(i) = self.proposals.iter().position(|x| x.kind == Kind::Add(who)) {
            self.revoke(i)?;
        }
        if let Some(leaf) = leaf {
            self.propose_remove(leaf, who, now)?;
        }
        if let Some(t) = &mut self.transition {
            t.waiting.remove(&who);
        }
        self.finish_transition_if_complete();
        Ok(())
    }

    fn finish_transition_if_complete(&mut self) {
        if self
            .transition
            .as_ref()
            .is_some_and(|t| t.waiting.is_empty())
            && let Some(t) = self.transition.take()
        {
            self.execute(t.id);
        }
    }

    /// `who` left the channel for good: Remove its leaf, or revoke its Add.
    pub fn leave(&mut self, who: Who, now: Instant) -> Result<(), DaveError> {
        let Some(p) = self.participants.remove(&who) else {
            return Ok(());
        };
        if let Some(i) = self.proposals.iter().position(|x| x.kind == Kind::Add(who)) {
            self.revoke(i)?;
        }
        if let Some(leaf) = p.leaf {
            self.propose_remove(leaf, who, now)?;
        }
        if let Some(t) = &mut self.transition {
            t.waiting.remove(&who);
        }
        self.finish_transition_if_complete();
        Ok(())
    }

    /// When exactly one participant remains and the group cannot go on without another member
    /// (the observer is gone too), Discord restarts the group for it: op 24 epoch 1 and op 21
    /// with transition 0. Returns whether it did.
    pub fn sole_member_reset(&mut self) -> bool {
        if self.participants.len() != 1 || self.epoch == 0 {
            return false;
        }
        self.reset();
        true
    }

    /// Starts the group over: everyone gets op 24 (epoch 1) and op 21 (transition 0) and sends
    /// a new key package.
    pub fn reset(&mut self) {
        self.counters.resets += 1;
        self.epoch = 0;
        self.leaves.clear();
        self.proposals.clear();
        self.proposals_since = None;
        self.transition = None;
        let to: Vec<Who> = self.participants.keys().copied().collect();
        for p in self.participants.values_mut() {
            p.leaf = None;
            p.resetting = false;
        }
        for w in to {
            self.send(
                w,
                ToClient::Json(VoicePayload::DavePrepareEpoch(DavePrepareEpoch {
                    protocol_version: VERSION,
                    epoch: 1,
                    transition_id: 0,
                })),
            );
            self.send(
                w,
                ToClient::Json(VoicePayload::DavePrepareTransition(DavePrepareTransition {
                    protocol_version: VERSION,
                    transition_id: 0,
                })),
            );
        }
    }

    /// Time passes: a transition whose members did not all answer executes anyway. Returns
    /// whether proposals have waited longer than `commit_timeout` for a commit.
    pub fn tick(&mut self, now: Instant, commit_timeout: Duration) -> bool {
        if self.transition.as_ref().is_some_and(|t| now >= t.deadline)
            && let Some(t) = self.transition.take()
        {
            self.execute(t.id);
        }
        // Proposals no present participant received (the first Add of a forming group) wait
        // for company, not for a commit.
        self.proposals_since
            .is_some_and(|t| now.saturating_duration_since(t) >= commit_timeout)
            && self.proposals.iter().any(|p| {
                p.recipients
                    .iter()
                    .any(|w| self.participants.contains_key(w))
            })
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU16;

    use super::*;
    use crate::server::dave::parse_key_package;

    const CHANNEL: u64 = 5;

    fn key_package(user: u64) -> KeyPackage {
        let mut s = davey::DaveSession::new(NonZeroU16::MIN, user, CHANNEL, None).expect("session");
        let kp = s.create_key_package().expect("kp");
        parse_key_package(&kp, user).expect("valid")
    }

    fn ops_to(out: &[Out], who: Who) -> Vec<(u8, Option<u8>)> {
        out.iter()
            .filter(|o| o.to == who)
            .map(|o| match &o.frame {
                ToClient::Binary { op, payload } => (*op, payload.first().copied()),
                ToClient::Json(p) => (u8::try_from(p.op()).unwrap_or(u8::MAX), None),
            })
            .collect()
    }

    #[test]
    fn forming_routes_adds_to_the_other_pending_members_and_revokes_on_leave() {
        let now = Instant::now();
        let mut g = Group::new(CHANNEL, Duration::from_secs(2)).expect("group");
        g.join(1, 10);
        g.join(2, 20);
        assert_eq!(ops_to(&g.out, 1).len(), 1);
        assert_eq!(ops_to(&g.out, 1)[0].0, op::DAVE_MLS_EXTERNAL_SENDER);
        g.out.clear();
        g.key_package(1, key_package(10), now).expect("add 10");
        assert!(g.out.is_empty(), "nobody else is pending yet");
        g.key_package(2, key_package(20), now).expect("add 20");
        // 20 gets 10's Add, 10 gets 20's Add: both appends.
        assert_eq!(ops_to(&g.out, 2), vec![(27, Some(0))]);
        assert_eq!(ops_to(&g.out, 1), vec![(27, Some(0))]);
        g.out.clear();
        g.leave(2, now).expect("leave");
        assert_eq!(ops_to(&g.out, 1), vec![(27, Some(1))], "20's Add revoked");
        g.out.clear();
        assert!(
            !g.tick(now + Duration::from_secs(2), Duration::from_secs(1)),
            "10's Add alone reached nobody: nothing to commit yet"
        );
        g.join(3, 30);
        g.key_package(3, key_package(30), now).expect("add 30");
        g.out.clear();
        assert!(!g.tick(now + Duration::from_millis(500), Duration::from_secs(1)));
        assert!(
            g.tick(now + Duration::from_secs(2), Duration::from_secs(1)),
            "stalled"
        );
        g.reset();
        assert_eq!(ops_to(&g.out, 1), vec![(24, None), (21, None)]);
        assert_eq!(ops_to(&g.out, 3), vec![(24, None), (21, None)]);
        assert_eq!((g.epoch(), g.member_count(), g.counters.resets), (0, 0, 1));
    }
}
