//! Sessions (one per client websocket) and the node's shared state: who owns which source and
//! call, how events reach a client, and what is kept while a resumable client is away.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use quaver::CallId;
use quaver::engine::SourceId;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::config::Limits;
use crate::player::Player;

/// Lavalink's default resume timeout.
pub(crate) const DEFAULT_RESUME_TIMEOUT: Duration = Duration::from_secs(60);

/// A session id: 16 random lowercase letters and digits, as Lavalink makes them. It lets
/// anyone holding the password take over the session's players, so it is kept out of `Debug`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct SessionId(pub String);

impl SessionId {
    pub(crate) fn random() -> Self {
        use rand::Rng as _;
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let mut rng = rand::rng();
        Self(
            (0..16)
                .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
                .collect(),
        )
    }
}

impl std::fmt::Debug for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionId(<redacted>)")
    }
}

/// The websocket a session's messages go to.
#[derive(Debug)]
pub(crate) struct Socket {
    /// Which connection (a resumed session gets a new one; the old one's end is ignored).
    pub generation: u64,
    pub tx: mpsc::Sender<String>,
}

/// One client connection and its players.
#[derive(Debug)]
pub(crate) struct Session {
    pub user_id: u64,
    pub resuming: bool,
    pub timeout: Duration,
    pub socket: Option<Socket>,
    /// When the client's websocket closed (resumable sessions only).
    pub away_since: Option<Instant>,
    /// Events for a client that is away, replayed when it resumes.
    pub buffer: VecDeque<String>,
    pub players: HashMap<u64, Player>,
    /// Messages dropped: the client's queue was full, or the resume buffer overflowed.
    pub dropped: u64,
}

impl Session {
    pub(crate) fn new(user_id: u64) -> Self {
        Self {
            user_id,
            resuming: false,
            timeout: DEFAULT_RESUME_TIMEOUT,
            socket: None,
            away_since: None,
            buffer: VecDeque::new(),
            players: HashMap::new(),
            dropped: 0,
        }
    }

    /// Sends `message` to the client, or keeps it for a resume while the client is away.
    pub(crate) fn send(&mut self, limits: &Limits, message: &Value) {
        let text = message.to_string();
        if let Some(socket) = &self.socket {
            if socket.tx.try_send(text).is_err() {
                self.dropped += 1;
                tracing::warn!("a client reads its websocket too slowly; a message was dropped");
            }
            return;
        }
        if self.resuming {
            if self.buffer.len() >= limits.resume_buffer.max(1) {
                self.buffer.pop_front();
                self.dropped += 1;
            }
            self.buffer.push_back(text);
        }
    }
}

/// Which player (and which mix layer of it) a source plays for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Owner {
    pub session: SessionId,
    pub guild: u64,
    pub layer: Option<String>,
}

/// Everything the routes, the websocket and the event thread share, behind one lock. The lock
/// is never held across an await or a blocking engine call.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub sessions: HashMap<SessionId, Session>,
    pub sources: HashMap<SourceId, Owner>,
    pub calls: HashMap<CallId, (SessionId, u64)>,
    pub next_generation: u64,
    pub next_play: u64,
    /// Sources that ended before anyone owned them: a very short input can end while the
    /// update that started it has not installed it yet. Bounded; the oldest go first.
    pub unowned_ends: VecDeque<(SourceId, crate::events::EndReason)>,
}

/// How many unowned ends are remembered (far more than updates in flight at once).
const UNOWNED_ENDS: usize = 1_024;

impl State {
    /// Sends an event to a session (dropped if the session is gone).
    pub(crate) fn emit(&mut self, limits: &Limits, session: &SessionId, message: &Value) {
        if let Some(s) = self.sessions.get_mut(session) {
            s.send(limits, message);
        }
    }

    /// Remembers that a source nobody owns (yet) ended.
    pub(crate) fn unowned_end(&mut self, source: SourceId, reason: crate::events::EndReason) {
        if self.unowned_ends.len() >= UNOWNED_ENDS {
            self.unowned_ends.pop_front();
        }
        self.unowned_ends.push_back((source, reason));
    }

    /// Why `source` ended, if it ended before it was installed.
    pub(crate) fn take_unowned_end(
        &mut self,
        source: SourceId,
    ) -> Option<crate::events::EndReason> {
        let at = self.unowned_ends.iter().position(|(id, _)| *id == source)?;
        self.unowned_ends.remove(at).map(|(_, reason)| reason)
    }

    /// Removes a session with its players; returns the calls to disconnect.
    pub(crate) fn remove_session(&mut self, id: &SessionId) -> Vec<CallId> {
        let Some(session) = self.sessions.remove(id) else {
            return Vec::new();
        };
        let mut calls = Vec::new();
        for (_, player) in session.players {
            calls.extend(self.forget_player(player));
        }
        calls
    }

    /// Stops a removed player's sources and forgets them; returns its call to disconnect.
    pub(crate) fn forget_player(&mut self, mut player: Player) -> Option<CallId> {
        for handle in player.handles() {
            handle.stop();
            self.sources.remove(&handle.id());
        }
        player.layers.clear();
        let call = player.call.take();
        if let Some(call) = call {
            self.calls.remove(&call);
        }
        call
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EndReason;

    #[test]
    fn unowned_ends_are_found_once() {
        let mut state = State::default();
        let (_engine, ids) = sources(3);
        state.unowned_end(ids[0], EndReason::Finished);
        state.unowned_end(ids[1], EndReason::LoadFailed);
        assert_eq!(state.take_unowned_end(ids[1]), Some(EndReason::LoadFailed));
        assert_eq!(state.take_unowned_end(ids[1]), None);
        assert_eq!(state.take_unowned_end(ids[2]), None);
        assert_eq!(state.take_unowned_end(ids[0]), Some(EndReason::Finished));
        assert!(state.unowned_ends.is_empty());
    }

    /// Real source ids from an audio engine (they cannot be made otherwise).
    fn sources(n: usize) -> (quaver::engine::Engine, Vec<SourceId>) {
        let config = quaver::engine::EngineConfig {
            realtime_priority: false,
            ..quaver::engine::EngineConfig::default()
        };
        let engine = quaver::engine::Engine::new(config).unwrap();
        let (call, _frames) = engine.create_call().unwrap();
        let ids = (0..n)
            .map(|_| {
                let (handle, _writer) = engine
                    .push_source(call, quaver::engine::PcmFormat::STEREO_48K)
                    .unwrap();
                handle.id()
            })
            .collect();
        (engine, ids)
    }
}
