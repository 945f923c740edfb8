//! One voice session (a user in a voice channel) and the queue to its websocket thread.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use quaver_gateway::protocol::{Speaking, Token, VoicePayload};
use quaver_net::crypto::{EncryptionMode, Sealer, TransportCipher};

use super::framing;
use super::registry::CallKey;

/// Something the voice websocket thread of a session is asked to do. No `Debug`: a queued
/// Session Description carries the key.
#[derive(Clone)]
pub(crate) enum Outgoing {
    Text(String),
    /// A binary frame, already framed for the connection's version.
    Binary(Vec<u8>),
    Close(u16),
    /// Shut the TCP connection down without a close frame.
    Drop,
    /// Everything queued before this (an op 5 naming the SSRC) has been written: packets of
    /// this SSRC may now be forwarded to the session, starting with the held ones.
    Mapped(u32),
}

/// Forwarded packets held per (receiver, SSRC) while the op 5 naming the SSRC is on its way;
/// beyond this the oldest are dropped (a receiver whose websocket is away for long).
const MAX_HELD_PER_SSRC: usize = 50;

/// One voice session (one user in one voice channel), living across resumes.
pub(crate) struct Session {
    pub guild_id: u64,
    /// The voice channel (from the issued credentials; 0 when none were issued).
    pub channel_id: u64,
    /// Negotiated DAVE protocol version (0: none).
    pub dave_version: u16,
    pub user_id: u64,
    /// How the attached (last) websocket frames messages.
    pub framing: framing::Framing,
    pub session_id: String,
    pub token: Token,
    pub ssrc: u32,
    pub mode: Option<EncryptionMode>,
    pub cipher: Option<TransportCipher>,
    /// Seals packets forwarded *to* this session.
    pub sealer: Option<Sealer>,
    pub udp_peer: Option<SocketAddr>,
    pub seq: i64,
    /// Numbered messages for Resume (v8 only).
    pub replay: VecDeque<(i64, Outgoing)>,
    /// The attached websocket thread, if any: its generation and queue.
    pub outbox: Option<(u64, super::wake::Mailbox)>,
    pub detached_at: Option<Instant>,
    pub speaking: u32,
    pub established_at: Option<Instant>,
    pub dropped_once: bool,
    /// A forwarded packet held back by reorder injection.
    pub held: Option<Vec<u8>>,
    /// SSRCs whose op 5 this session's websocket has written: their packets flow.
    pub mapped: HashSet<u32>,
    /// SSRCs whose op 5 is queued but not yet written.
    pub announced: HashSet<u32>,
    /// Sealed packets per SSRC waiting for its op 5 to be written.
    pub pending: HashMap<u32, VecDeque<Vec<u8>>>,
}

impl Session {
    pub fn key(&self) -> CallKey {
        CallKey {
            guild_id: self.guild_id,
            channel_id: self.channel_id,
        }
    }

    /// Numbers `payload` (v8), keeps it for replay and queues it to the attached websocket.
    pub fn push(&mut self, payload: &VoicePayload, replay_cap: usize) {
        self.seq += 1;
        let frame = Outgoing::Text(self.framing.text(payload, self.seq));
        self.queue_numbered(frame, replay_cap);
    }

    /// A server binary frame (DAVE ops 25, 27, 29, 30), framed for the session's version and
    /// numbered like the text messages.
    pub fn push_binary(&mut self, op: u8, payload: &[u8], replay_cap: usize) {
        self.seq += 1;
        let frame = Outgoing::Binary(self.framing.binary(self.seq, op, payload));
        self.queue_numbered(frame, replay_cap);
    }

    fn queue_numbered(&mut self, frame: Outgoing, replay_cap: usize) {
        if self.framing.numbered() {
            self.replay.push_back((self.seq, frame.clone()));
            while self.replay.len() > replay_cap {
                self.replay.pop_front();
            }
        }
        if let Some((_, tx)) = &self.outbox {
            let _ = tx.send(frame);
        }
    }

    /// Sends op 5 for another member's SSRC, and makes sure this session's websocket writes it
    /// before any packet of that SSRC is forwarded here.
    pub fn tell_speaking(&mut self, speaking: Speaking, replay_cap: usize) {
        self.push(&VoicePayload::Speaking(speaking), replay_cap);
        if !self.mapped.contains(&speaking.ssrc) {
            self.announced.insert(speaking.ssrc);
            self.send(Outgoing::Mapped(speaking.ssrc));
        }
    }

    /// The op 5 that tells others who sends this session's SSRC: its flags as last sent, or
    /// microphone for a sender that sent audio without op 5.
    pub fn speaking_announcement(&self) -> Speaking {
        let flags = if self.speaking == 0 {
            quaver_gateway::protocol::SpeakingFlags::MICROPHONE
        } else {
            quaver_gateway::protocol::SpeakingFlags(self.speaking)
        };
        Speaking {
            speaking: flags,
            ssrc: self.ssrc,
            delay: None,
            user_id: Some(self.user_id.into()),
        }
    }

    /// Keeps a sealed packet of `ssrc` until its op 5 has been written.
    pub fn hold(&mut self, ssrc: u32, packet: Vec<u8>) {
        let held = self.pending.entry(ssrc).or_default();
        if held.len() >= MAX_HELD_PER_SSRC {
            held.pop_front();
        }
        held.push_back(packet);
    }

    /// Forgets a member that left (its SSRC is never reused while the server runs).
    pub fn forget(&mut self, ssrc: u32) {
        self.mapped.remove(&ssrc);
        self.announced.remove(&ssrc);
        self.pending.remove(&ssrc);
    }

    pub fn send(&self, out: Outgoing) -> bool {
        match &self.outbox {
            Some((_, tx)) => tx.send(out),
            None => false,
        }
    }
}
