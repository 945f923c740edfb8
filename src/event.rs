//! What the engine tells its user: one event stream, one status per call.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Select};
use quaver_engine::CallId;
use quaver_gateway::control::BotId;
use quaver_gateway::dave::DaveStep;
use quaver_gateway::main_gateway::MainGatewayEvent;
use quaver_gateway::voice::{EndReason, VoiceEvent};
use quaver_net::SenderEvent;

use crate::Error;

/// Where a call's voice connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallStatus {
    /// Waiting for the main gateway's two voice dispatches (joined calls only).
    Joining,
    /// Handshaking (or re-identifying after a lost session); no packets are sent.
    Connecting,
    /// The session is up; frames are sent as RTP.
    Ready,
    /// The websocket is resuming; packets keep flowing with the same key.
    Resuming,
    /// The connection ended for good (see [`CallEvent::Ended`] for why).
    Ended,
}

/// The end-to-end encryption in force on a call's outgoing audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct E2eeStatus {
    /// The DAVE protocol version in force (0 = none: transport encryption only).
    pub protocol_version: u16,
    /// The MLS epoch of the key in use (0 when none).
    pub epoch: u64,
    /// Transitions executed so far on this call.
    pub transitions: u64,
    /// DAVE steps that failed (each recovered as the protocol says).
    pub failures: u64,
}

/// What happened to a call's connection.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum CallEvent {
    /// The voice gateway reported something (session ready, resuming, users, DAVE …).
    Voice {
        /// The call.
        call: CallId,
        /// What the gateway said.
        event: VoiceEvent,
    },
    /// The sender reported something (speaking started/stopped, send errors, DAVE keys).
    Sender {
        /// The call.
        call: CallId,
        /// What the sender said.
        event: SenderEvent,
    },
    /// A DAVE transition executed: outgoing audio now uses this protection.
    E2ee {
        /// The call.
        call: CallId,
        /// What is in force now.
        status: E2eeStatus,
    },
    /// A DAVE step failed; the client recovered as the protocol says.
    E2eeFailed {
        /// The call.
        call: CallId,
        /// What failed.
        step: DaveStep,
    },
    /// Setting up the call's UDP side failed; the connection retries with the next session.
    Failed {
        /// The call.
        call: CallId,
        /// Why.
        error: Arc<Error>,
    },
    /// The built-in main-gateway client's connection changed: it dropped and is reconnecting
    /// (without a limit, with capped backoff), came back (after a fresh Identify every joined
    /// call sends op 4 again on its own), or ended for good. Calls keep their audio flowing
    /// meanwhile; only joins and moves wait for the main gateway.
    Bot {
        /// The bot connection.
        bot: BotId,
        /// What happened: `Reconnecting`, `Reconnected` or `Ended`.
        event: MainGatewayEvent,
    },
    /// The call's connection ended for good; nothing more is sent. The call and its sources
    /// stay until [`crate::Engine::disconnect`].
    Ended {
        /// The call.
        call: CallId,
        /// Why (the close code is in it when the server closed).
        reason: EndReason,
    },
}

/// Everything the engine tells its user, in one stream.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// Sources and calls of the audio engine (a source ended, a file failed …).
    Audio(quaver_engine::Event),
    /// Voice connections (sessions, speaking, encryption, endings).
    Call(CallEvent),
}

/// The one event stream ([`crate::Engine::events`]): audio and connection events as [`Event`]s.
/// Both queues are bounded; what nobody reads is dropped and counted in
/// [`crate::Stats::events_dropped`].
#[derive(Debug)]
pub struct Events {
    audio: Receiver<quaver_engine::Event>,
    calls: Receiver<CallEvent>,
}

impl Events {
    pub(crate) fn new(audio: Receiver<quaver_engine::Event>, calls: Receiver<CallEvent>) -> Self {
        Self { audio, calls }
    }

    /// The next event if one is waiting.
    pub fn try_recv(&self) -> Option<Event> {
        if let Ok(e) = self.calls.try_recv() {
            return Some(Event::Call(e));
        }
        self.audio.try_recv().ok().map(Event::Audio)
    }

    /// Waits up to `timeout` for the next event.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Event> {
        if let Some(e) = self.try_recv() {
            return Some(e);
        }
        let mut select = Select::new();
        let calls = select.recv(&self.calls);
        let audio = select.recv(&self.audio);
        let op = select.select_timeout(timeout).ok()?;
        match op.index() {
            i if i == calls => op.recv(&self.calls).ok().map(Event::Call),
            i if i == audio => op.recv(&self.audio).ok().map(Event::Audio),
            _ => None,
        }
    }

    /// Waits for the next event; `None` once the engine is gone.
    pub fn recv(&self) -> Option<Event> {
        if let Some(e) = self.try_recv() {
            return Some(e);
        }
        let mut select = Select::new();
        let calls = select.recv(&self.calls);
        select.recv(&self.audio);
        let op = select.select();
        if op.index() == calls {
            op.recv(&self.calls).ok().map(Event::Call)
        } else {
            op.recv(&self.audio).ok().map(Event::Audio)
        }
    }

    /// Every event waiting now.
    pub fn try_iter(&self) -> impl Iterator<Item = Event> + '_ {
        std::iter::from_fn(|| self.try_recv())
    }

    /// Events as they come, until the engine is gone.
    pub fn iter(&self) -> impl Iterator<Item = Event> + '_ {
        std::iter::from_fn(|| self.recv())
    }
}
