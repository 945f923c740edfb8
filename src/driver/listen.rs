//! The driver's receive half: which calls are heard, which member sends under which SSRC (op 5,
//! gone with op 13), and each member's DAVE key, handed to the receive thread as they change.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Sender as Reply;
use quaver_engine::CallId;
use quaver_gateway::dave::DaveKeys;
use quaver_net::Receiver;
use quaver_net::dave::{KEY_OVERLAP, Passthrough, PreparedKey, SenderKey};
use quaver_net::receiver::{CallCounters, ListenConfig, ListenSlot, ReceiverEvent, StreamConfig};

use super::call::{Call, Link};
use super::{Driver, ListenReply};
use crate::Error;
use crate::listen::{ListenEvent, ReceiveOptions};

/// What the call knows of the other members, whether or not it is heard.
#[derive(Default)]
pub(crate) struct Members {
    /// SSRC of each member who announced one.
    ssrcs: HashMap<u64, u32>,
    /// Each member's key for the current epoch.
    keys: HashMap<u64, SenderKey>,
    /// The DAVE protocol version in force (0: plain Opus).
    protocol_version: u16,
}

impl Members {
    /// Whether frames that are not DAVE frames pass: always without E2EE; for a transition's
    /// grace period with it, since members switch at slightly different moments.
    fn passthrough(&self, now: Instant) -> Passthrough {
        if self.protocol_version == 0 {
            Passthrough::On
        } else {
            Passthrough::Until(now + KEY_OVERLAP)
        }
    }
}

/// A call being heard.
pub(crate) struct Listening {
    options: ReceiveOptions,
    events: crossbeam_channel::Sender<ListenEvent>,
    counters: Arc<CallCounters>,
    /// The receive thread's slot for the current session's socket.
    slot: Option<ListenSlot>,
    /// Users with an open stream, and under which SSRC.
    streams: HashMap<u64, u32>,
}

impl Listening {
    fn emit(&self, event: ListenEvent) {
        // A listener that stopped reading loses events, never the call; the channel is unbounded
        // only in the number of users (streams) and speaking changes, both rare.
        let _ = self.events.send(event);
    }
}

/// Stops reading the call's socket (its session ended, or nobody listens any more); its user
/// streams close.
pub(super) fn release(receiver: &mut Receiver, c: &mut Call) {
    let Some(listening) = c.listen.as_mut() else {
        return;
    };
    listening.streams.clear();
    if let Some(slot) = listening.slot.take()
        && let Err(e) = receiver.remove_call(slot)
    {
        tracing::debug!(call = %c.id, error = %e, "receive slot not removed");
    }
}

impl Driver {
    pub(super) fn listen(
        &mut self,
        call: CallId,
        options: ReceiveOptions,
        reply: Reply<Result<ListenReply, Error>>,
    ) {
        let Some(c) = self.calls.get_mut(&call) else {
            let _ = reply.send(Err(Error::NoSuchCall(call)));
            return;
        };
        if c.listen.is_some() {
            let _ = reply.send(Err(Error::AlreadyListening(call)));
            return;
        }
        let (tx, rx) = crossbeam_channel::unbounded();
        let counters = Arc::new(CallCounters::default());
        c.listen = Some(Listening {
            options,
            events: tx,
            counters: Arc::clone(&counters),
            slot: None,
            streams: HashMap::new(),
        });
        let _ = reply.send(Ok((rx, counters)));
        self.start_listening(call);
    }

    /// Gives the current session's socket to the receive thread, with a stream for every member
    /// whose SSRC is known.
    pub(super) fn start_listening(&mut self, call: CallId) {
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        let (Some(listening), Link::Sending(sending)) = (c.listen.as_mut(), &c.link) else {
            return;
        };
        if listening.slot.is_some() {
            return;
        }
        let added = self.receiver.add_call(ListenConfig {
            socket: Arc::clone(&sending.socket),
            mode: sending.mode,
            key: sending.key.clone(),
            own_ssrc: sending.ssrc,
            receive: listening.options.mode,
            counters: Arc::clone(&listening.counters),
        });
        match added {
            Ok(slot) => listening.slot = Some(slot),
            Err(e) => {
                self.fail(call, Error::Receive(e));
                return;
            }
        }
        let users: Vec<(u64, u32)> = c.members.ssrcs.iter().map(|(u, s)| (*u, *s)).collect();
        for (user_id, ssrc) in users {
            self.open_stream(call, user_id, ssrc);
        }
    }

    pub(super) fn unlisten(&mut self, call: CallId) {
        if let Some(c) = self.calls.get_mut(&call) {
            release(&mut self.receiver, c);
            c.listen = None;
        }
    }

    fn open_stream(&mut self, call: CallId, user_id: u64, ssrc: u32) {
        let now = Instant::now();
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        let Some(listening) = c.listen.as_mut() else {
            return;
        };
        let Some(slot) = listening.slot else {
            return;
        };
        if listening.streams.get(&user_id) == Some(&ssrc) {
            return;
        }
        let keys = c
            .members
            .keys
            .get(&user_id)
            .map(|k| vec![PreparedKey::new(k.clone(), now)])
            .unwrap_or_default();
        let config = StreamConfig {
            user_id,
            ssrc,
            options: listening.options.stream.clone(),
            keys,
            passthrough: c.members.passthrough(now),
        };
        match self.receiver.add_stream(slot, config) {
            Ok(audio) => {
                listening.streams.insert(user_id, ssrc);
                listening.emit(ListenEvent::User(audio));
            }
            Err(e) => listening.emit(ListenEvent::StreamFailed {
                user_id,
                error: Arc::new(Error::Receive(e)),
            }),
        }
    }

    /// Op 5: a member's SSRC.
    pub(super) fn on_user_ssrc(&mut self, call: CallId, user_id: u64, ssrc: u32) {
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        if ssrc == 0 {
            return;
        }
        c.members.ssrcs.insert(user_id, ssrc);
        self.open_stream(call, user_id, ssrc);
    }

    /// Op 13: a member left; their SSRC mapping and stream go with them.
    pub(super) fn on_user_left(&mut self, call: CallId, user_id: u64) {
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        c.members.ssrcs.remove(&user_id);
        c.members.keys.remove(&user_id);
        let Some(listening) = c.listen.as_mut() else {
            return;
        };
        if listening.streams.remove(&user_id).is_none() {
            return;
        }
        if let Some(slot) = listening.slot
            && let Err(e) = self.receiver.remove_stream(slot, user_id)
        {
            tracing::debug!(%call, user_id, error = %e, "receive stream not removed");
        }
        listening.emit(ListenEvent::UserLeft { user_id });
    }

    /// A DAVE transition executed: every member's key for the new epoch goes to their stream.
    pub(super) fn on_member_keys(&mut self, call: CallId, keys: &DaveKeys) {
        let now = Instant::now();
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        c.members.protocol_version = keys.protocol_version;
        c.members.keys = keys
            .members
            .iter()
            .map(|(user, secret)| (*user, SenderKey::new(keys.epoch, *secret.expose())))
            .collect();
        let Some(listening) = c.listen.as_ref() else {
            return;
        };
        let Some(slot) = listening.slot else {
            return;
        };
        let passthrough = c.members.passthrough(now);
        for user_id in listening.streams.keys() {
            let result = match c.members.keys.get(user_id) {
                Some(key) => self.receiver.install_key(slot, *user_id, key.clone()),
                None => Ok(()),
            }
            .and_then(|()| self.receiver.set_passthrough(slot, *user_id, passthrough));
            if let Err(e) = result {
                // A full queue here would leave a member undecryptable until the next epoch.
                tracing::warn!(%call, user_id, error = %e, "receive key not installed");
            }
        }
    }

    /// Speaking changes from the receive thread, to the listeners.
    pub(super) fn drain_receiver(&mut self) {
        while let Some(event) = self.receiver.poll_event() {
            let (slot, user_id, started) = match event {
                ReceiverEvent::SpeakingStarted { call, user_id } => (call, user_id, true),
                ReceiverEvent::SpeakingStopped { call, user_id } => (call, user_id, false),
                _ => continue,
            };
            let listening = self
                .calls
                .values()
                .filter_map(|c| c.listen.as_ref())
                .find(|l| l.slot == Some(slot));
            if let Some(l) = listening {
                l.emit(if started {
                    ListenEvent::SpeakingStarted { user_id }
                } else {
                    ListenEvent::SpeakingStopped { user_id }
                });
            }
        }
    }
}
