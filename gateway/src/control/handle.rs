//! The handle other threads hold: commands in, events out.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use mio::{Poll, Waker};

use super::event_loop::EventLoop;
use super::resolver::Resolver;
use super::{
    BotId, COMMAND_QUEUE, ConnectionId, ControlConfig, ControlEvent, ControlHandler, ControlStats,
    EVENT_QUEUE, WAKER,
};
use crate::Error;
use crate::dave::DaveExtension;
use crate::main_gateway::MainGatewayConfig;
use crate::protocol::SpeakingFlags;
use crate::voice::{VoiceConfig, VoiceConnectRequest};

pub(super) enum Command {
    Connect {
        id: u64,
        request: Box<VoiceConnectRequest>,
        config: Box<VoiceConfig>,
        dave: Option<Box<dyn DaveExtension>>,
    },
    ConnectBot {
        id: u64,
        config: Box<MainGatewayConfig>,
    },
    Discovered {
        id: u64,
        ip: String,
        port: u16,
    },
    Speaking {
        id: u64,
        flags: SpeakingFlags,
    },
    Disconnect {
        id: u64,
    },
    BotSend {
        id: u64,
        payload: String,
    },
    Resolved {
        id: u64,
        generation: u64,
        result: io::Result<Vec<SocketAddr>>,
    },
    Stats(Sender<ControlStats>),
    Shutdown,
}

/// Handle to a running control thread. Dropping it stops the thread and closes every socket.
pub struct ControlThread {
    commands: Sender<Command>,
    waker: Arc<Waker>,
    events: Receiver<ControlEvent>,
    next_id: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

/// Wakes the control thread from any thread (one `eventfd` write), so its [`ControlHandler`]
/// looks at its queues: how the sender thread reports events without anyone polling.
#[derive(Clone)]
pub struct ControlWaker(Arc<Waker>);

impl ControlWaker {
    /// Wake the loop; [`ControlHandler::on_wake`] runs soon after. Nothing is logged here:
    /// the sender thread calls it, and real-time threads do not log.
    pub fn wake(&self) -> std::io::Result<()> {
        self.0.wake()
    }
}

impl std::fmt::Debug for ControlWaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ControlWaker")
    }
}

impl std::fmt::Debug for ControlThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlThread").finish_non_exhaustive()
    }
}

impl ControlThread {
    /// Start the control thread (and its resolver helper). Events go to
    /// [`ControlThread::events`].
    pub fn spawn(config: ControlConfig) -> Result<Self, Error> {
        Self::spawn_inner(config, None)
    }

    /// Start the control thread with `handler` living on it: every event goes to the handler
    /// (nothing to [`ControlThread::events`]), which acts on connections directly.
    pub fn spawn_with_handler(
        config: ControlConfig,
        handler: Box<dyn ControlHandler>,
    ) -> Result<Self, Error> {
        Self::spawn_inner(config, Some(handler))
    }

    fn spawn_inner(
        config: ControlConfig,
        handler: Option<Box<dyn ControlHandler>>,
    ) -> Result<Self, Error> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (cmd_tx, cmd_rx) = crossbeam_channel::bounded(COMMAND_QUEUE);
        let (ev_tx, ev_rx) = crossbeam_channel::bounded(EVENT_QUEUE);
        let resolver = Resolver::spawn(cmd_tx.clone(), waker.clone())?;
        let next_id = Arc::new(AtomicU64::new(1));
        let name = config.thread_name.clone();
        let ids = Arc::clone(&next_id);
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            EventLoop::new(poll, cmd_rx, ev_tx, config, resolver, ids, handler).run();
        })?;
        Ok(ControlThread {
            commands: cmd_tx,
            waker,
            events: ev_rx,
            next_id,
            thread: Some(thread),
        })
    }

    /// A waker for the loop's [`ControlHandler`] (see [`ControlWaker`]).
    pub fn waker(&self) -> ControlWaker {
        ControlWaker(Arc::clone(&self.waker))
    }

    /// The event queue (bounded: events nobody reads are dropped and counted in
    /// [`ControlStats::events_dropped`]). Empty when the thread runs a [`ControlHandler`].
    pub fn events(&self) -> &Receiver<ControlEvent> {
        &self.events
    }

    /// Start a voice connection. Events for it carry the returned [`ConnectionId`].
    pub fn connect(
        &self,
        request: VoiceConnectRequest,
        config: VoiceConfig,
    ) -> Result<ConnectionId, Error> {
        self.connect_inner(request, config, None)
    }

    /// Start a voice connection whose DAVE traffic goes to `dave` (which lives on the control
    /// thread from then on). Set `config.max_dave_protocol_version` to what it supports.
    pub fn connect_with_dave(
        &self,
        request: VoiceConnectRequest,
        config: VoiceConfig,
        dave: Box<dyn DaveExtension>,
    ) -> Result<ConnectionId, Error> {
        self.connect_inner(request, config, Some(dave))
    }

    fn connect_inner(
        &self,
        request: VoiceConnectRequest,
        config: VoiceConfig,
        dave: Option<Box<dyn DaveExtension>>,
    ) -> Result<ConnectionId, Error> {
        let id = self.fresh_id();
        self.send(Command::Connect {
            id,
            request: Box::new(request),
            config: Box::new(config),
            dave,
        })?;
        Ok(ConnectionId(id))
    }

    /// Feed back the result of IP discovery requested by [`crate::voice::VoiceEvent::DiscoveryRequested`].
    pub fn set_discovered_address(
        &self,
        call: ConnectionId,
        ip: String,
        port: u16,
    ) -> Result<(), Error> {
        self.send(Command::Discovered {
            id: call.0,
            ip,
            port,
        })
    }

    /// Ask for Speaking on or off ([`crate::voice::VoiceEvent::SpeakingSent`] confirms it went out).
    pub fn set_speaking(&self, call: ConnectionId, flags: SpeakingFlags) -> Result<(), Error> {
        self.send(Command::Speaking { id: call.0, flags })
    }

    /// Close a call's voice connection; it ends with [`crate::voice::EndReason::Left`].
    pub fn disconnect(&self, call: ConnectionId) -> Result<(), Error> {
        self.send(Command::Disconnect { id: call.0 })
    }

    /// Start a built-in main-gateway connection (see [`crate::main_gateway`]).
    pub fn connect_bot(&self, config: MainGatewayConfig) -> Result<BotId, Error> {
        let id = self.fresh_id();
        self.send(Command::ConnectBot {
            id,
            config: Box::new(config),
        })?;
        Ok(BotId(id))
    }

    /// Send a raw JSON payload on a bot's main-gateway socket (used for op 4).
    pub fn bot_send(&self, bot: BotId, payload: String) -> Result<(), Error> {
        self.send(Command::BotSend { id: bot.0, payload })
    }

    /// Close a bot's main-gateway connection.
    pub fn disconnect_bot(&self, bot: BotId) -> Result<(), Error> {
        self.send(Command::Disconnect { id: bot.0 })
    }

    /// Counters, including the control thread's own CPU time.
    pub fn stats(&self) -> Result<ControlStats, Error> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(Command::Stats(tx))?;
        rx.recv_timeout(Duration::from_secs(10))
            .map_err(|_| Error::ControlStopped)
    }

    fn fresh_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn send(&self, cmd: Command) -> Result<(), Error> {
        self.commands.send(cmd).map_err(|_| Error::ControlStopped)?;
        self.waker.wake()?;
        Ok(())
    }
}

impl Drop for ControlThread {
    fn drop(&mut self) {
        let _ = self.send(Command::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
