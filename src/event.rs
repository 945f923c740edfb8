//! What the engine tells its user: one event stream, one status per call.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, TryRecvError};
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
    /// The voice gateway reported something (session ready, resuming, users, DAVE …): every
    /// [`VoiceEvent`] but `HeartbeatAcked`, whose round trip [`crate::Engine::gateway_latency`]
    /// gives instead.
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
///
/// The two queues are fed by different threads. When one of them is gone (the control thread
/// stopped, say) the other is still waited on properly: a disconnected queue is always "ready",
/// so selecting on it would turn every wait into a busy loop.
#[derive(Debug)]
pub struct Events {
    audio: Receiver<quaver_engine::Event>,
    calls: Receiver<CallEvent>,
    audio_gone: AtomicBool,
    calls_gone: AtomicBool,
}

impl Events {
    pub(crate) fn new(audio: Receiver<quaver_engine::Event>, calls: Receiver<CallEvent>) -> Self {
        Self {
            audio,
            calls,
            audio_gone: AtomicBool::new(false),
            calls_gone: AtomicBool::new(false),
        }
    }

    /// The next event if one is waiting.
    pub fn try_recv(&self) -> Option<Event> {
        match self.calls.try_recv() {
            Ok(e) => return Some(Event::Call(e)),
            Err(TryRecvError::Disconnected) => self.calls_gone.store(true, Ordering::Relaxed),
            Err(TryRecvError::Empty) => {}
        }
        match self.audio.try_recv() {
            Ok(e) => Some(Event::Audio(e)),
            Err(TryRecvError::Disconnected) => {
                self.audio_gone.store(true, Ordering::Relaxed);
                None
            }
            Err(TryRecvError::Empty) => None,
        }
    }

    /// Waits up to `timeout` for the next event; `None` when none came in time or the engine is
    /// gone.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Event> {
        self.wait(Some(Instant::now() + timeout))
    }

    /// Waits for the next event; `None` once the engine is gone.
    pub fn recv(&self) -> Option<Event> {
        self.wait(None)
    }

    fn wait(&self, deadline: Option<Instant>) -> Option<Event> {
        loop {
            if let Some(e) = self.try_recv() {
                return Some(e);
            }
            let calls_gone = self.calls_gone.load(Ordering::Relaxed);
            let audio_gone = self.audio_gone.load(Ordering::Relaxed);
            let mut select = Select::new();
            let calls = (!calls_gone).then(|| select.recv(&self.calls));
            let audio = (!audio_gone).then(|| select.recv(&self.audio));
            if calls.is_none() && audio.is_none() {
                return None;
            }
            let op = match deadline {
                Some(deadline) => select.select_deadline(deadline).ok()?,
                None => select.select(),
            };
            let index = Some(op.index());
            if index == calls {
                match op.recv(&self.calls) {
                    Ok(e) => return Some(Event::Call(e)),
                    Err(_) => self.calls_gone.store(true, Ordering::Relaxed),
                }
            } else {
                match op.recv(&self.audio) {
                    Ok(e) => return Some(Event::Audio(e)),
                    Err(_) => self.audio_gone.store(true, Ordering::Relaxed),
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A real call id (ids cannot be made up outside the engine).
    fn call_id() -> CallId {
        let (engine, _mixer) =
            quaver_engine::Engine::manual(quaver_engine::EngineConfig::default()).unwrap(); // invariant: default config is valid
        engine.create_call().unwrap().0 // invariant: below the call limit
    }

    fn removed(call: CallId) -> quaver_engine::Event {
        quaver_engine::Event::CallRemoved { call }
    }

    #[test]
    fn a_stopped_control_thread_does_not_end_or_spin_the_audio_events() {
        let (audio_tx, audio_rx) = crossbeam_channel::bounded(4);
        let (calls_tx, calls_rx) = crossbeam_channel::bounded::<CallEvent>(4);
        let events = Events::new(audio_rx, calls_rx);
        drop(calls_tx);
        let call = call_id();
        let producer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            audio_tx.send(removed(call)).unwrap(); // invariant: `events` is alive
            std::thread::sleep(Duration::from_millis(30));
            audio_tx.send(removed(call)).unwrap(); // invariant: `events` is alive
        });
        // Before the fix both returned `None` at once: the dead queue was always "ready".
        assert!(matches!(
            events.recv(),
            Some(Event::Audio(quaver_engine::Event::CallRemoved { .. }))
        ));
        assert!(matches!(
            events.recv_timeout(Duration::from_secs(30)),
            Some(Event::Audio(quaver_engine::Event::CallRemoved { .. }))
        ));
        producer.join().unwrap(); // invariant: the producer does not panic
        assert!(events.recv().is_none(), "both queues gone: the stream ends");
        assert!(events.recv_timeout(Duration::from_secs(30)).is_none());
    }
}
