//! Hearing a call: [`Engine::listen`](crate::Engine::listen) and what it hands out.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;
use quaver_engine::CallId;
use quaver_gateway::control::ControlWaker;
use quaver_net::UserAudio;
use quaver_net::receiver::{CallCounters, CallReceiveStats, ReceiveMode, StreamOptions};

use crate::driver::Request;

/// How a call is heard.
#[derive(Debug, Clone, Default)]
pub struct ReceiveOptions {
    /// Decode to PCM (the default) or hand out each user's Opus frames as they came.
    pub mode: ReceiveMode,
    /// Each user stream's playout buffer and ring.
    pub stream: StreamOptions,
}

/// What a [`Listener`] reports, in order.
#[derive(Debug)]
#[non_exhaustive]
pub enum ListenEvent {
    /// A user's stream opened (their SSRC was announced): their frames arrive on `audio`. A user
    /// who reconnects gets a fresh stream; the old one reports
    /// [`UserAudio::is_closed`](quaver_net::UserAudio::is_closed).
    User(UserAudio),
    /// A user's audio started playing out.
    SpeakingStarted {
        /// The user.
        user_id: u64,
    },
    /// A user's audio stopped (their client went quiet; not loss).
    SpeakingStopped {
        /// The user.
        user_id: u64,
    },
    /// A user left the call; their stream is closed.
    UserLeft {
        /// The user.
        user_id: u64,
    },
    /// The receive side could not open a stream (its decoder, or a full table); the user is
    /// not heard.
    StreamFailed {
        /// The user.
        user_id: u64,
        /// Why.
        error: Arc<crate::Error>,
    },
}

/// Hears one call until dropped: user streams and speaking changes arrive as [`ListenEvent`]s;
/// each user's audio is read from their [`UserAudio`]. Dropping the listener stops receiving
/// (the receive thread stops reading the call's socket).
pub struct Listener {
    pub(crate) call: CallId,
    pub(crate) events: Receiver<ListenEvent>,
    pub(crate) counters: Arc<CallCounters>,
    pub(crate) requests: crossbeam_channel::Sender<Request>,
    pub(crate) waker: ControlWaker,
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("call", &self.call)
            .field("queued", &self.events.len())
            .finish()
    }
}

impl Listener {
    /// The call heard.
    pub fn call(&self) -> CallId {
        self.call
    }

    /// The next event, if one is queued.
    pub fn try_event(&self) -> Option<ListenEvent> {
        self.events.try_recv().ok()
    }

    /// The next event, waiting up to `timeout`.
    pub fn event_timeout(&self, timeout: Duration) -> Option<ListenEvent> {
        self.events.recv_timeout(timeout).ok()
    }

    /// The event channel itself (for `select!` with other channels).
    pub fn events(&self) -> &Receiver<ListenEvent> {
        &self.events
    }

    /// The call's packet counters so far (across its sessions).
    pub fn stats(&self) -> CallReceiveStats {
        self.counters.snapshot()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // The engine may be gone already; then there is nothing left to stop.
        if self.requests.send(Request::Unlisten(self.call)).is_ok() {
            let _ = self.waker.wake();
        }
    }
}
