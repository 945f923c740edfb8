//! The connection driver: lives on the control thread (a [`ControlHandler`]) and turns gateway
//! events into IP discovery, sender slots and DAVE keys, sender events into Speaking, and the
//! user's requests into joins and leaves. No thread of its own, nothing polled: it runs when a
//! socket, a timer, a request or the sender's waker wakes the control thread.

mod call;
mod discovery;
mod listen;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender as Reply};
use quaver_engine::{CallId, FrameReceiver};
use quaver_gateway::control::{
    BotId, ConnectionId as GatewayCall, ControlContext, ControlEvent, ControlHandler, ControlStats,
};
use quaver_gateway::dave::{DaveEvent, DaveKeys};
use quaver_gateway::join::{JoinAction, JoinFlow, VoiceServerUpdate, VoiceStateUpdate};
use quaver_gateway::main_gateway::{MainGatewayConfig, MainGatewayEvent};
use quaver_gateway::protocol::SpeakingFlags;
use quaver_gateway::voice::{
    EndReason, VoiceConfig, VoiceConnectRequest, VoiceEvent, VoiceSession,
};
use quaver_net::dave::SenderKey;
use quaver_net::keepalive::Keepalive;
use quaver_net::{CallConfig, SendSlot, Sender, SenderEvent, SenderStats};

pub(crate) use call::JoinVia;
use call::{Call, Link, Sending, send_voice_state};
use discovery::{Discovery, Progress};

use crate::event::{CallEvent, CallStatus, E2eeStatus};
use crate::listen::ReceiveOptions;
use crate::{Error, JoinOptions};

/// How soon a sender command that found the queue full is tried again.
const RETRY: Duration = Duration::from_millis(20);

/// What user threads ask of the driver.
pub(crate) enum Request {
    Connect {
        call: CallId,
        frames: FrameReceiver,
        request: Box<VoiceConnectRequest>,
    },
    Join {
        call: CallId,
        frames: FrameReceiver,
        via: JoinVia,
        guild_id: u64,
        channel_id: u64,
        options: JoinOptions,
        reply: Reply<Result<(), Error>>,
    },
    VoiceStateUpdate(Box<VoiceStateUpdate>),
    VoiceServerUpdate(Box<VoiceServerUpdate>),
    ConnectBot {
        config: Box<MainGatewayConfig>,
        reply: Reply<(BotId, u64)>,
    },
    DisconnectBot(BotId),
    Disconnect {
        call: CallId,
        reply: Reply<Result<(), Error>>,
    },
    Stats(Reply<(SenderStats, ControlStats)>),
    Listen {
        call: CallId,
        options: ReceiveOptions,
        reply: Reply<Result<ListenReply, Error>>,
    },
    Unlisten(CallId),
}

/// What [`Request::Listen`] answers: the listener's event channel and counters.
pub(crate) type ListenReply = (
    crossbeam_channel::Receiver<crate::listen::ListenEvent>,
    Arc<quaver_net::receiver::CallCounters>,
);

/// What the driver posts of one call for user threads to read without asking.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Posted {
    pub(crate) status: CallStatus,
    pub(crate) e2ee: E2eeStatus,
    /// The round trip of the current voice connection's last acknowledged heartbeat.
    pub(crate) latency: Option<Duration>,
}

/// What user threads may read without asking: each call's status.
pub(crate) type Board = RwLock<HashMap<CallId, Posted>>;

/// Where events for the user go (bounded; drops are counted).
pub(crate) struct Outbox {
    pub(crate) tx: crossbeam_channel::Sender<CallEvent>,
    pub(crate) dropped: Arc<AtomicU64>,
}

impl Outbox {
    fn emit(&self, event: CallEvent) {
        if self.tx.try_send(event).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What the driver keeps of the engine's configuration.
pub(crate) struct Settings {
    /// Every voice connection's settings.
    pub(crate) voice: VoiceConfig,
    /// Whether host-path joins may use a `ws://` voice endpoint as given.
    pub(crate) plain_endpoints: bool,
}

/// The driver's state; see the module docs.
pub(crate) struct Driver {
    audio: Arc<quaver_engine::Engine>,
    sender: Sender,
    receiver: quaver_net::Receiver,
    requests: Receiver<Request>,
    out: Outbox,
    board: Arc<Board>,
    voice: VoiceConfig,
    /// Whether host-path joins may use a `ws://` voice endpoint as given.
    plain_endpoints: bool,
    /// Boxed: a call is ~700 bytes, and a table sized for twice the calls (as hash tables
    /// grow) holding them inline cost 1.4 KB a call at 550 calls.
    calls: HashMap<CallId, Box<Call>>,
    by_gateway: HashMap<GatewayCall, CallId>,
    by_slot: HashMap<SendSlot, CallId>,
    /// Discovery sockets registered with the control thread, by their key.
    by_key: HashMap<usize, CallId>,
    next_key: usize,
    /// Bots that sent READY (their user ID), and requests waiting for it.
    bots: HashMap<BotId, u64>,
    waiting_bots: HashMap<BotId, Reply<(BotId, u64)>>,
    /// Discovery deadlines (stale entries are skipped).
    timers: BinaryHeap<Reverse<(Instant, CallId)>>,
    next_keepalive: Option<Instant>,
    /// Sender slots whose removal found the command queue full: removed on the next turn, so
    /// no slot is left behind.
    unremoved: Vec<SendSlot>,
    /// Sessions whose slot could not be added yet (queue full), retried on the next turn.
    unadded: Vec<(CallId, VoiceSession)>,
    retry_at: Option<Instant>,
}

impl Driver {
    pub(crate) fn new(
        audio: Arc<quaver_engine::Engine>,
        sender: Sender,
        receiver: quaver_net::Receiver,
        requests: Receiver<Request>,
        out: Outbox,
        board: Arc<Board>,
        settings: Settings,
    ) -> Self {
        let Settings {
            voice,
            plain_endpoints,
        } = settings;
        Self {
            audio,
            sender,
            receiver,
            requests,
            out,
            board,
            voice,
            plain_endpoints,
            calls: HashMap::new(),
            by_gateway: HashMap::new(),
            by_slot: HashMap::new(),
            by_key: HashMap::new(),
            next_key: 0,
            bots: HashMap::new(),
            waiting_bots: HashMap::new(),
            timers: BinaryHeap::new(),
            next_keepalive: None,
            unremoved: Vec::new(),
            unadded: Vec::new(),
            retry_at: None,
        }
    }

    fn publish(&self, call: &Call) {
        let mut board = self
            .board
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        board.insert(
            call.id,
            Posted {
                status: call.status,
                e2ee: call.e2ee,
                latency: call.latency,
            },
        );
    }

    fn set_status(&mut self, call: CallId, status: CallStatus) {
        if let Some(c) = self.calls.get_mut(&call) {
            c.status = status;
            if !matches!(status, CallStatus::Ready | CallStatus::Resuming) {
                // A new connection measures its own round trip.
                c.latency = None;
            }
            let c = &self.calls[&call];
            self.publish(c);
        }
    }

    fn on_request(&mut self, request: Request, ctl: &mut ControlContext<'_>) {
        match request {
            Request::Connect {
                call,
                frames,
                request,
            } => {
                let mut c = Box::new(Call::new(call, frames, None));
                let gateway = ctl.connect(*request, self.voice.clone());
                c.gateway = Some(gateway);
                self.by_gateway.insert(gateway, call);
                self.publish(&c);
                self.calls.insert(call, c);
            }
            Request::Join {
                call,
                frames,
                via,
                guild_id,
                channel_id,
                options,
                reply,
            } => {
                let user_id = match &via {
                    JoinVia::Host { user_id, .. } => *user_id,
                    JoinVia::Bot(bot) => match self.bots.get(bot) {
                        Some(&id) => id,
                        None => {
                            let _ = reply.send(Err(Error::UnknownBot(*bot)));
                            return;
                        }
                    },
                };
                let mut flow = JoinFlow::new(guild_id, user_id);
                if via.is_host() {
                    // The endpoint comes from a library we do not control: a `ws://` one is
                    // upgraded unless the user said their server is plain.
                    flow.allow_plain_endpoints(self.plain_endpoints);
                }
                flow.join(channel_id, options);
                // Op 4 goes out now, so a shard that cannot send it fails the join at once.
                let Some(JoinAction::SendVoiceStateUpdate(update)) = flow.poll_action() else {
                    let _ = reply.send(Ok(()));
                    return;
                };
                match send_voice_state(&via, &update, ctl) {
                    Ok(()) => {
                        let c = Box::new(Call::new(call, frames, Some((via, flow))));
                        self.publish(&c);
                        self.calls.insert(call, c);
                        let _ = reply.send(Ok(()));
                        self.run_join_actions(call, ctl);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Request::VoiceStateUpdate(update) => self.on_dispatch(
                JoinVia::is_host,
                |f| f.handle_voice_state_update(&update),
                ctl,
            ),
            Request::VoiceServerUpdate(update) => self.on_dispatch(
                JoinVia::is_host,
                |f| f.handle_voice_server_update(&update),
                ctl,
            ),
            Request::ConnectBot { config, reply } => {
                let bot = ctl.connect_bot(*config);
                self.waiting_bots.insert(bot, reply);
            }
            Request::DisconnectBot(bot) => {
                self.waiting_bots.remove(&bot);
                self.bots.remove(&bot);
                ctl.disconnect_bot(bot);
            }
            Request::Disconnect { call, reply } => {
                let _ = reply.send(self.leave(call, ctl));
            }
            Request::Stats(reply) => {
                let _ = reply.send((self.sender.stats().clone(), ctl.stats()));
            }
            Request::Listen {
                call,
                options,
                reply,
            } => self.listen(call, options, reply),
            Request::Unlisten(call) => self.unlisten(call),
        }
    }

    /// Leaves: op 4 with no channel for joined calls, closes the voice connection, stops the
    /// packets, removes the call and its sources.
    fn leave(&mut self, call: CallId, ctl: &mut ControlContext<'_>) -> Result<(), Error> {
        let mut c = self.calls.remove(&call).ok_or(Error::NoSuchCall(call))?;
        if let Some((via, flow)) = c.join.as_mut() {
            flow.leave();
            while let Some(action) = flow.poll_action() {
                if let JoinAction::SendVoiceStateUpdate(update) = action
                    && let Err(e) = send_voice_state(via, &update, ctl)
                {
                    tracing::warn!(%call, error = %e, "could not send op 4 to leave");
                }
            }
        }
        self.take_link(&mut c, ctl);
        if let Some(gateway) = c.gateway.take() {
            self.by_gateway.remove(&gateway);
            ctl.disconnect(gateway);
        }
        self.unadded.retain(|(id, _)| *id != call);
        self.board
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&call);
        self.audio.remove_call(call)?;
        Ok(())
    }

    /// Stops whatever the call's UDP side was doing (discovery or sending).
    fn take_link(&mut self, c: &mut Call, ctl: &mut ControlContext<'_>) {
        match std::mem::replace(&mut c.link, Link::Down) {
            Link::Down | Link::ExpectSession(_) => {}
            Link::ExpectDiscovery(d) => {
                self.by_key.retain(|_, id| *id != c.id);
                drop(d.finish(ctl));
            }
            Link::Sending(s) => {
                self.by_slot.remove(&s.slot);
                self.remove_slot(s.slot);
                listen::release(&mut self.receiver, c);
            }
        }
    }

    fn remove_slot(&mut self, slot: SendSlot) {
        if let Err(e) = self.sender.remove_call(slot) {
            tracing::debug!(?slot, error = %e, "sender slot removal deferred");
            self.unremoved.push(slot);
            self.retry_at = Some(Instant::now() + RETRY);
        }
    }

    /// Feeds a voice dispatch to the join flows whose main gateway `owns` says it came from.
    fn on_dispatch(
        &mut self,
        owns: impl Fn(&JoinVia) -> bool,
        feed: impl Fn(&mut JoinFlow),
        ctl: &mut ControlContext<'_>,
    ) {
        let mut touched = Vec::new();
        for c in self.calls.values_mut() {
            if let Some((via, flow)) = c.join.as_mut()
                && owns(via)
            {
                feed(flow);
                touched.push(c.id);
            }
        }
        for call in touched {
            self.run_join_actions(call, ctl);
        }
    }

    /// Carries out what a call's join flow asks for.
    fn run_join_actions(&mut self, call: CallId, ctl: &mut ControlContext<'_>) {
        loop {
            let Some(c) = self.calls.get_mut(&call) else {
                return;
            };
            let Some((via, flow)) = c.join.as_mut() else {
                return;
            };
            let Some(action) = flow.poll_action() else {
                return;
            };
            let via = via.clone();
            match action {
                JoinAction::SendVoiceStateUpdate(update) => {
                    if let Err(e) = send_voice_state(&via, &update, ctl) {
                        self.out.emit(CallEvent::Failed {
                            call,
                            error: Arc::new(e),
                        });
                    }
                }
                JoinAction::Connect(request) => {
                    self.close_voice(call, ctl);
                    let gateway = ctl.connect(request, self.voice.clone());
                    self.by_gateway.insert(gateway, call);
                    if let Some(c) = self.calls.get_mut(&call) {
                        c.gateway = Some(gateway);
                    }
                    self.set_status(call, CallStatus::Connecting);
                }
                JoinAction::Disconnect => {
                    self.close_voice(call, ctl);
                    self.set_status(call, CallStatus::Joining);
                }
                JoinAction::Left => {
                    self.close_voice(call, ctl);
                    self.set_status(call, CallStatus::Ended);
                }
                _ => {}
            }
        }
    }

    /// Closes the call's current voice connection (if any) and stops its packets.
    fn close_voice(&mut self, call: CallId, ctl: &mut ControlContext<'_>) {
        let Some(mut c) = self.calls.remove(&call) else {
            return;
        };
        self.take_link(&mut c, ctl);
        if let Some(gateway) = c.gateway.take() {
            self.by_gateway.remove(&gateway);
            ctl.disconnect(gateway);
        }
        self.calls.insert(call, c);
    }

    fn on_voice_event(
        &mut self,
        gateway: GatewayCall,
        event: VoiceEvent,
        ctl: &mut ControlContext<'_>,
    ) {
        let Some(&call) = self.by_gateway.get(&gateway) else {
            return;
        };
        let now = Instant::now();
        match &event {
            VoiceEvent::DiscoveryRequested { ssrc, ip, port } => {
                self.discover(call, *ssrc, ip, *port, ctl, now)
            }
            VoiceEvent::SessionReady(session) => self.start_sending(call, session.clone()),
            VoiceEvent::Resuming { .. } => self.set_status(call, CallStatus::Resuming),
            VoiceEvent::Resumed => self.set_status(call, CallStatus::Ready),
            VoiceEvent::Reconnecting { .. } => {
                self.stop_link(call, ctl);
                self.set_status(call, CallStatus::Connecting);
            }
            VoiceEvent::Dave(DaveEvent::KeysChanged(keys)) => {
                self.install_keys(call, keys);
                self.on_member_keys(call, keys);
            }
            VoiceEvent::UserSpeaking { user_id, ssrc, .. } => {
                self.on_user_ssrc(call, *user_id, *ssrc)
            }
            VoiceEvent::ClientDisconnected(user_id) => self.on_user_left(call, *user_id),
            VoiceEvent::Dave(DaveEvent::Failed { step, .. }) => {
                if let Some(c) = self.calls.get_mut(&call) {
                    c.e2ee.failures += 1;
                    let c = &self.calls[&call];
                    self.publish(c);
                }
                self.out.emit(CallEvent::E2eeFailed { call, step: *step });
            }
            VoiceEvent::Ended(reason) => self.on_ended(call, gateway, reason, ctl),
            VoiceEvent::HeartbeatAcked(rtt) => {
                // Posted, not sent: one per call per heartbeat would crowd the event queue,
                // and `Engine::gateway_latency` reads the board.
                if let Some(c) = self.calls.get_mut(&call) {
                    c.latency = Some(*rtt);
                    let c = &self.calls[&call];
                    self.publish(c);
                }
                return;
            }
            _ => {}
        }
        self.out.emit(CallEvent::Voice { call, event });
    }

    fn on_ended(
        &mut self,
        call: CallId,
        gateway: GatewayCall,
        reason: &EndReason,
        ctl: &mut ControlContext<'_>,
    ) {
        self.stop_link(call, ctl);
        self.by_gateway.remove(&gateway);
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        c.gateway = None;
        if let Some((_, flow)) = c.join.as_mut() {
            // The join flow decides: wait for a new server update, or re-join.
            flow.handle_voice_ended(reason);
            self.set_status(call, CallStatus::Joining);
            self.run_join_actions(call, ctl);
            if self
                .calls
                .get(&call)
                .is_some_and(|c| c.status != CallStatus::Ended)
            {
                return;
            }
        } else {
            self.set_status(call, CallStatus::Ended);
        }
        self.out.emit(CallEvent::Ended {
            call,
            reason: reason.clone(),
        });
    }

    fn stop_link(&mut self, call: CallId, ctl: &mut ControlContext<'_>) {
        if let Some(mut c) = self.calls.remove(&call) {
            self.take_link(&mut c, ctl);
            self.calls.insert(call, c);
        }
    }

    fn discover(
        &mut self,
        call: CallId,
        ssrc: u32,
        ip: &str,
        port: u16,
        ctl: &mut ControlContext<'_>,
        now: Instant,
    ) {
        self.stop_link(call, ctl);
        let server = match ip.parse::<std::net::IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, port),
            Err(_) => {
                let e = std::io::Error::new(std::io::ErrorKind::InvalidInput, "bad server IP");
                self.fail(call, Error::Net(quaver_net::Error::Io(e)));
                return;
            }
        };
        let key = self.next_key;
        self.next_key = self.next_key.wrapping_add(1);
        match Discovery::start(server, ssrc, key, ctl, now) {
            Ok(d) => {
                self.timers.push(Reverse((d.deadline, call)));
                self.by_key.insert(key, call);
                if let Some(c) = self.calls.get_mut(&call) {
                    c.link = Link::ExpectDiscovery(d);
                }
            }
            Err(e) => self.fail(call, Error::Net(quaver_net::Error::Io(e))),
        }
    }

    fn fail(&self, call: CallId, error: Error) {
        tracing::warn!(%call, %error, "call setup failed");
        self.out.emit(CallEvent::Failed {
            call,
            error: Arc::new(error),
        });
    }

    fn on_discovery(&mut self, call: CallId, progress: Progress, ctl: &mut ControlContext<'_>) {
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        match progress {
            Progress::Pending => {
                if let Link::ExpectDiscovery(d) = &c.link {
                    self.timers.push(Reverse((d.deadline, call)));
                }
            }
            Progress::Found(address) => {
                let Link::ExpectDiscovery(d) = std::mem::replace(&mut c.link, Link::Down) else {
                    return;
                };
                self.by_key.retain(|_, id| *id != call);
                c.link = Link::ExpectSession(d.finish(ctl));
                if let Some(gateway) = c.gateway
                    && let Err(e) = ctl.set_discovered_address(
                        gateway,
                        address.ip().to_string(),
                        address.port(),
                    )
                {
                    tracing::debug!(%call, error = %e, "discovery result not used");
                }
            }
            Progress::GaveUp => {
                // The gateway's handshake timeout reconnects; say why meanwhile.
                self.stop_link(call, ctl);
                let e = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the voice server never answered IP discovery",
                );
                self.fail(call, Error::Net(quaver_net::Error::Io(e)));
            }
        }
    }

    fn start_sending(&mut self, call: CallId, session: VoiceSession) {
        match self.try_start_sending(call, &session) {
            Ok(()) => self.set_status(call, CallStatus::Ready),
            Err(Error::Net(quaver_net::Error::Sender(
                quaver_net::sender::SenderError::QueueFull,
            ))) => {
                // The call must not stay Connecting forever: try again shortly.
                self.unadded.push((call, session));
                self.retry_at = Some(Instant::now() + RETRY);
            }
            Err(error) => self.fail(call, error),
        }
    }

    fn try_start_sending(&mut self, call: CallId, session: &VoiceSession) -> Result<(), Error> {
        let c = self.calls.get_mut(&call).ok_or(Error::NoSuchCall(call))?;
        // A second session on the same socket (a re-sent op 4) replaces the slot.
        c.link = match std::mem::replace(&mut c.link, Link::Down) {
            Link::Sending(s) => {
                self.by_slot.remove(&s.slot);
                if let Err(e) = self.sender.remove_call(s.slot) {
                    tracing::debug!(error = %e, "sender slot removal deferred");
                    self.unremoved.push(s.slot);
                }
                listen::release(&mut self.receiver, c);
                Link::ExpectSession(s.socket)
            }
            other => other,
        };
        let Link::ExpectSession(socket) = &c.link else {
            return Err(Error::Net(quaver_net::Error::Io(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "a session arrived before IP discovery finished",
            ))));
        };
        let socket = Arc::clone(socket);
        // A previous session took the frame queue: give the mixer a fresh one.
        let frames = match c.frames.take() {
            Some(frames) => frames,
            None => self.audio.replace_frame_queue(call)?,
        };
        let added = self.sender.add_call(CallConfig {
            ssrc: session.ssrc,
            socket: Arc::clone(&socket),
            mode: session.mode,
            key: session.secret_key.clone(),
            frames,
        });
        let slot = match added {
            Ok(slot) => slot,
            Err(e) => {
                // Keep the frames for the retry (the sender hands them back on failure).
                return Err(e.into());
            }
        };
        // The mixer builds calls in the order their packets are due. A call it cannot tell
        // stays at phase 0 (built among the first), which costs others slack, never audio.
        if let Some(phase) = self.sender.phase_offset(slot)
            && let Err(e) = self.audio.set_call_phase(call, phase)
        {
            tracing::debug!(error = %e, "mixer phase not set");
        }
        c.link = Link::Sending(Sending {
            socket,
            slot,
            ssrc: session.ssrc,
            mode: session.mode,
            key: session.secret_key.clone(),
            // Speaking went out with the session description; the first audio frame would
            // otherwise say so again.
            speaking: true,
            keepalive: Keepalive::new(Instant::now()),
        });
        c.e2ee = E2eeStatus::default();
        self.by_slot.insert(slot, call);
        self.start_listening(call);
        Ok(())
    }

    fn install_keys(&mut self, call: CallId, keys: &DaveKeys) {
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        c.e2ee.protocol_version = keys.protocol_version;
        c.e2ee.epoch = keys.epoch;
        c.e2ee.transitions += 1;
        let status = c.e2ee;
        if let Some(slot) = c.slot() {
            let key = keys
                .own
                .as_ref()
                .map(|secret| SenderKey::new(keys.epoch, *secret.expose()));
            if let Err(e) = self.sender.set_dave_key(slot, key) {
                self.fail(call, e.into());
            }
        }
        let c = &self.calls[&call];
        self.publish(c);
        self.out.emit(CallEvent::E2ee { call, status });
    }

    fn drain_sender(&mut self, ctl: &mut ControlContext<'_>) {
        while let Some(event) = self.sender.poll_event() {
            let (slot, speaking) = match event {
                SenderEvent::SpeakingStarted { call } => (call, Some(true)),
                SenderEvent::SpeakingStopped { call } => (call, Some(false)),
                SenderEvent::SendFailed { call, .. } | SenderEvent::NonceExhausted { call } => {
                    (call, None)
                }
                _ => continue,
            };
            let Some(&call) = self.by_slot.get(&slot) else {
                continue;
            };
            let Some(c) = self.calls.get_mut(&call) else {
                continue;
            };
            if let (Some(speaking), Link::Sending(s)) = (speaking, &mut c.link) {
                s.speaking = speaking;
                s.keepalive.on_activity(Instant::now());
                let flags = if speaking {
                    SpeakingFlags::MICROPHONE
                } else {
                    SpeakingFlags::NONE
                };
                if let Some(gateway) = c.gateway {
                    ctl.set_speaking(gateway, flags);
                }
                if !speaking {
                    self.next_keepalive = Some(
                        self.next_keepalive
                            .map_or(s.keepalive.next_due(), |t| t.min(s.keepalive.next_due())),
                    );
                }
            }
            self.out.emit(CallEvent::Sender { call, event });
        }
    }

    /// Keeps NAT mappings alive on calls that are connected but silent.
    fn send_keepalives(&mut self, now: Instant) {
        let mut next: Option<Instant> = None;
        for c in self.calls.values_mut() {
            let Link::Sending(s) = &mut c.link else {
                continue;
            };
            if s.speaking {
                continue;
            }
            if let Some(datagram) = s.keepalive.poll(now)
                && let Err(e) = s.socket.send(&datagram)
            {
                tracing::debug!(call = %c.id, error = %e, "keepalive not sent");
            }
            let due = s.keepalive.next_due();
            next = Some(next.map_or(due, |t| t.min(due)));
        }
        self.next_keepalive = next;
    }

    fn retry(&mut self) {
        self.retry_at = None;
        for slot in std::mem::take(&mut self.unremoved) {
            self.remove_slot(slot);
        }
        for (call, session) in std::mem::take(&mut self.unadded) {
            self.start_sending(call, session);
        }
    }

    fn on_main_gateway_event(
        &mut self,
        bot: BotId,
        event: MainGatewayEvent,
        ctl: &mut ControlContext<'_>,
    ) {
        match event {
            MainGatewayEvent::Ready { user_id } => {
                self.bots.insert(bot, user_id);
                if let Some(reply) = self.waiting_bots.remove(&bot) {
                    let _ = reply.send((bot, user_id));
                }
            }
            MainGatewayEvent::VoiceStateUpdate(update) => self.on_dispatch(
                |via| via.is_bot(bot),
                |f| f.handle_voice_state_update(&update),
                ctl,
            ),
            MainGatewayEvent::VoiceServerUpdate(update) => self.on_dispatch(
                |via| via.is_bot(bot),
                |f| f.handle_voice_server_update(&update),
                ctl,
            ),
            MainGatewayEvent::Reconnected { resumed, .. } => {
                if !resumed {
                    // A fresh Identify: Discord dropped the old session's voice states, so
                    // every call joined through this bot asks for its channel again.
                    let joined: Vec<CallId> = self
                        .calls
                        .values_mut()
                        .filter_map(|c| match c.join.as_mut() {
                            Some((via, flow)) if via.is_bot(bot) => {
                                flow.rejoin();
                                Some(c.id)
                            }
                            _ => None,
                        })
                        .collect();
                    for call in joined {
                        self.run_join_actions(call, ctl);
                    }
                }
                self.out.emit(CallEvent::Bot { bot, event });
            }
            event @ (MainGatewayEvent::Reconnecting { .. } | MainGatewayEvent::Ended { .. }) => {
                self.out.emit(CallEvent::Bot { bot, event });
            }
            _ => {}
        }
    }
}

impl ControlHandler for Driver {
    fn on_event(&mut self, event: ControlEvent, ctl: &mut ControlContext<'_>) {
        match event {
            ControlEvent::Voice { call, event } => self.on_voice_event(call, event, ctl),
            ControlEvent::MainGateway { bot, event } => self.on_main_gateway_event(bot, event, ctl),
            ControlEvent::SocketError { id, error } => {
                tracing::debug!(id, "gateway socket: {error}")
            }
            _ => {}
        }
    }

    fn on_wake(&mut self, ctl: &mut ControlContext<'_>) {
        while let Ok(request) = self.requests.try_recv() {
            self.on_request(request, ctl);
        }
        self.drain_sender(ctl);
        self.drain_receiver();
    }

    fn on_readable(&mut self, key: usize, ctl: &mut ControlContext<'_>) {
        let Some(&call) = self.by_key.get(&key) else {
            return;
        };
        let progress = match self.calls.get_mut(&call).map(|c| &mut c.link) {
            Some(Link::ExpectDiscovery(d)) => d.on_readable(),
            _ => return,
        };
        self.on_discovery(call, progress, ctl);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        [
            self.timers.peek().map(|Reverse((t, _))| *t),
            self.next_keepalive,
            self.retry_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn on_timeout(&mut self, now: Instant, ctl: &mut ControlContext<'_>) {
        while let Some(&Reverse((t, call))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            let progress = match self.calls.get_mut(&call).map(|c| &mut c.link) {
                Some(Link::ExpectDiscovery(d)) if d.deadline == t => d.on_timeout(now),
                _ => continue,
            };
            self.on_discovery(call, progress, ctl);
        }
        if self.next_keepalive.is_some_and(|t| t <= now) {
            self.send_keepalives(now);
        }
        if self.retry_at.is_some_and(|t| t <= now) {
            self.retry();
        }
        // Speaking changes are rare; catching any that arrived with no wake-up costs nothing.
        self.drain_sender(ctl);
        self.drain_receiver();
    }
}
