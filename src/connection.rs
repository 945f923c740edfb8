//! The glue of a voice connection: the gateway's events drive IP discovery and the sender, the
//! sender's events drive Speaking. Runs on the facade's driver thread (control side: it may
//! allocate and block briefly, never on the real-time threads).

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quaver_engine::{CallId, FrameReceiver};
use quaver_gateway::control::{BotId, CallId as GatewayCallId, ControlThread};
use quaver_gateway::join::{JoinAction, JoinFlow, VoiceStateSender};
use quaver_gateway::main_gateway::MainGatewayEvent;
use quaver_gateway::protocol::SpeakingFlags;
use quaver_gateway::voice::{VoiceEvent, VoiceSession};
use quaver_net::keepalive::Keepalive;
use quaver_net::{CallConfig, Sender, SenderEvent};

use crate::{CallEvent, CallStatus, Error};

/// How long one IP discovery attempt waits, and how many attempts it makes.
const DISCOVERY_TIMEOUT: Duration = Duration::from_millis(1_000);
const DISCOVERY_ATTEMPTS: u32 = 5;

/// One call's voice connection as the driver sees it.
pub(crate) struct Connection {
    pub(crate) call: CallId,
    /// The current voice connection; a channel move or endpoint change replaces it.
    pub(crate) gateway: Option<GatewayCallId>,
    /// Set when the call was joined through a main gateway (ours or the host's).
    pub(crate) join: Option<(JoinVia, JoinFlow)>,
    pub(crate) status: CallStatus,
    /// The mixer's frames, waiting for the session (taken by the sender once it is ready).
    frames: Option<FrameReceiver>,
    socket: Option<Arc<UdpSocket>>,
    sender_call: Option<quaver_net::CallId>,
    speaking: bool,
    keepalive: Keepalive,
}

impl Connection {
    pub(crate) fn new(
        call: CallId,
        gateway: Option<GatewayCallId>,
        join: Option<(JoinVia, JoinFlow)>,
        frames: FrameReceiver,
    ) -> Self {
        Self {
            call,
            gateway,
            join,
            status: CallStatus::Connecting,
            frames: Some(frames),
            socket: None,
            sender_call: None,
            speaking: false,
            keepalive: Keepalive::new(Instant::now()),
        }
    }
}

/// Whose main-gateway connection sends op 4 for a call, and receives its voice dispatches.
#[derive(Clone)]
pub(crate) enum JoinVia {
    /// The built-in client, on the control thread.
    Bot(BotId),
    /// The host program's own library (twilight, serenity …); it hands us the dispatches.
    Host(Arc<dyn VoiceStateSender + Sync>),
}

impl JoinVia {
    pub(crate) fn send(
        &self,
        control: &ControlThread,
        update: &quaver_gateway::join::UpdateVoiceState,
    ) {
        match self {
            JoinVia::Bot(bot) => {
                let _ = control.bot_send(*bot, update.to_gateway_json());
            }
            JoinVia::Host(host) => host.send_voice_state_update(update),
        }
    }
}

/// A voice dispatch from a main gateway.
pub(crate) enum Dispatch<'a> {
    State(&'a quaver_gateway::join::VoiceStateUpdate),
    Server(&'a quaver_gateway::join::VoiceServerUpdate),
}

/// Everything the driver thread owns.
pub(crate) struct Connections {
    pub(crate) by_call: HashMap<CallId, Connection>,
    by_gateway: HashMap<GatewayCallId, CallId>,
    by_sender: HashMap<quaver_net::CallId, CallId>,
}

impl Connections {
    pub(crate) fn new() -> Self {
        Self {
            by_call: HashMap::new(),
            by_gateway: HashMap::new(),
            by_sender: HashMap::new(),
        }
    }

    pub(crate) fn insert(&mut self, connection: Connection) {
        if let Some(gateway) = connection.gateway {
            self.by_gateway.insert(gateway, connection.call);
        }
        self.by_call.insert(connection.call, connection);
    }

    pub(crate) fn call_for_gateway(&self, gateway: GatewayCallId) -> Option<CallId> {
        self.by_gateway.get(&gateway).copied()
    }

    /// Forgets a call, stopping its packets. Returns what is left of it to close.
    pub(crate) fn remove(&mut self, call: CallId, sender: &mut Sender) -> Option<Connection> {
        let mut connection = self.by_call.remove(&call)?;
        if let Some(gateway) = connection.gateway {
            self.by_gateway.remove(&gateway);
        }
        self.stop_sending(&mut connection, sender);
        Some(connection)
    }

    fn stop_sending(&mut self, connection: &mut Connection, sender: &mut Sender) {
        if let Some(id) = connection.sender_call.take() {
            self.by_sender.remove(&id);
            let _ = sender.remove_call(id);
        }
    }
}

/// What the driver needs to act on events.
pub(crate) struct Driver<'a> {
    pub(crate) engine: &'a quaver_engine::Engine,
    pub(crate) control: &'a Arc<ControlThread>,
    pub(crate) voice: &'a quaver_gateway::voice::VoiceConfig,
    pub(crate) sender: &'a mut Sender,
    pub(crate) connections: &'a mut Connections,
    pub(crate) emit: &'a dyn Fn(CallEvent),
}

impl Driver<'_> {
    pub(crate) fn on_voice_event(&mut self, gateway: GatewayCallId, event: VoiceEvent) {
        let Some(call) = self.connections.call_for_gateway(gateway) else {
            return;
        };
        match &event {
            VoiceEvent::DiscoveryRequested { ssrc, ip, port } => {
                self.discover(call, *ssrc, ip, *port)
            }
            VoiceEvent::SessionReady(session) => self.start_sending(call, session),
            VoiceEvent::Resuming { .. } => self.set_status(call, CallStatus::Resuming),
            VoiceEvent::Resumed => self.set_status(call, CallStatus::Ready),
            VoiceEvent::Reconnecting { .. } => {
                self.halt(call);
                self.set_status(call, CallStatus::Connecting);
            }
            VoiceEvent::Ended(reason) => {
                self.halt(call);
                self.connections.by_gateway.remove(&gateway);
                let joined = self.connections.by_call.get_mut(&call).and_then(|c| {
                    c.gateway = None;
                    c.join.as_mut()
                });
                match joined {
                    // The join flow decides: wait for a new server update, or re-join.
                    Some((_, flow)) => {
                        flow.handle_voice_ended(reason);
                        self.set_status(call, CallStatus::Connecting);
                        self.run_join_actions(call);
                    }
                    None => self.set_status(call, CallStatus::Ended),
                }
            }
            _ => {}
        }
        (self.emit)(CallEvent::Voice { call, event });
    }

    pub(crate) fn on_sender_event(&mut self, event: SenderEvent) {
        let (id, speaking) = match event {
            SenderEvent::SpeakingStarted { call } => (call, Some(true)),
            SenderEvent::SpeakingStopped { call } => (call, Some(false)),
            SenderEvent::SendFailed { call, .. } | SenderEvent::NonceExhausted { call } => {
                (call, None)
            }
            _ => return,
        };
        let Some(&call) = self.connections.by_sender.get(&id) else {
            return;
        };
        if let (Some(speaking), Some(connection)) =
            (speaking, self.connections.by_call.get_mut(&call))
        {
            connection.speaking = speaking;
            connection.keepalive.on_activity(Instant::now());
            let flags = if speaking {
                SpeakingFlags::MICROPHONE
            } else {
                SpeakingFlags::NONE
            };
            if let Some(gateway) = connection.gateway {
                let _ = self.control.set_speaking(gateway, flags);
            }
        }
        (self.emit)(CallEvent::Sender { call, event });
    }

    /// Feeds a bot's voice dispatches to the join flows of its calls.
    pub(crate) fn on_main_gateway_event(&mut self, bot: BotId, event: &MainGatewayEvent) {
        let dispatch = match event {
            MainGatewayEvent::VoiceStateUpdate(update) => Dispatch::State(update),
            MainGatewayEvent::VoiceServerUpdate(update) => Dispatch::Server(update),
            _ => return,
        };
        self.on_dispatch(
            |via| matches!(via, JoinVia::Bot(owner) if *owner == bot),
            dispatch,
        );
    }

    /// Feeds a voice dispatch to the join flows whose main gateway `owns` says it came from.
    pub(crate) fn on_dispatch(&mut self, owns: impl Fn(&JoinVia) -> bool, dispatch: Dispatch<'_>) {
        let calls: Vec<CallId> = self
            .connections
            .by_call
            .values_mut()
            .filter_map(|connection| {
                let (via, flow) = connection.join.as_mut()?;
                if !owns(via) {
                    return None;
                }
                match dispatch {
                    Dispatch::State(update) => flow.handle_voice_state_update(update),
                    Dispatch::Server(update) => flow.handle_voice_server_update(update),
                }
                Some(connection.call)
            })
            .collect();
        for call in calls {
            self.run_join_actions(call);
        }
    }

    /// Carries out what a call's join flow asks for: op 4 on the bot's socket, or a fresh
    /// voice connection in place of the current one.
    pub(crate) fn run_join_actions(&mut self, call: CallId) {
        loop {
            let Some(connection) = self.connections.by_call.get_mut(&call) else {
                return;
            };
            let Some((via, flow)) = connection.join.as_mut() else {
                return;
            };
            let via = via.clone();
            let Some(action) = flow.poll_action() else {
                return;
            };
            match action {
                JoinAction::SendVoiceStateUpdate(update) => via.send(self.control, &update),
                JoinAction::Connect(request) => {
                    self.close_voice(call);
                    match self.control.connect(request, self.voice.clone()) {
                        Ok(gateway) => {
                            self.connections.by_gateway.insert(gateway, call);
                            if let Some(connection) = self.connections.by_call.get_mut(&call) {
                                connection.gateway = Some(gateway);
                                connection.status = CallStatus::Connecting;
                            }
                        }
                        Err(error) => (self.emit)(CallEvent::Failed {
                            call,
                            error: error.to_string(),
                        }),
                    }
                }
                JoinAction::Disconnect => self.close_voice(call),
                JoinAction::Left => {
                    self.close_voice(call);
                    self.set_status(call, CallStatus::Ended);
                }
                _ => {}
            }
        }
    }

    /// Closes the call's current voice connection (if any) and stops its packets.
    fn close_voice(&mut self, call: CallId) {
        self.halt(call);
        let gateway = self
            .connections
            .by_call
            .get_mut(&call)
            .and_then(|c| c.gateway.take());
        if let Some(gateway) = gateway {
            self.connections.by_gateway.remove(&gateway);
            let _ = self.control.disconnect(gateway);
        }
    }

    /// Keeps NAT mappings alive on calls that are connected but silent.
    pub(crate) fn send_keepalives(&mut self, now: Instant) {
        for connection in self.connections.by_call.values_mut() {
            if connection.speaking {
                continue;
            }
            if let (Some(socket), Some(datagram)) =
                (&connection.socket, connection.keepalive.poll(now))
            {
                let _ = socket.send(&datagram);
            }
        }
    }

    fn set_status(&mut self, call: CallId, status: CallStatus) {
        if let Some(connection) = self.connections.by_call.get_mut(&call) {
            connection.status = status;
        }
    }

    /// Opens the call's UDP socket towards the voice server and runs IP discovery on a short-lived
    /// thread, so a slow or lossy server never holds up other calls.
    fn discover(&mut self, call: CallId, ssrc: u32, ip: &str, port: u16) {
        let Some(connection) = self.connections.by_call.get_mut(&call) else {
            return;
        };
        let opened = open_socket(ip, port);
        let (socket, server) = match opened {
            Ok(opened) => opened,
            Err(error) => {
                (self.emit)(CallEvent::Failed {
                    call,
                    error: error.to_string(),
                });
                return;
            }
        };
        connection.socket = Some(Arc::clone(&socket));
        let control = Arc::clone(self.control);
        let Some(gateway) = connection.gateway else {
            return;
        };
        let spawned = std::thread::Builder::new()
            .name("quaver-discovery".into())
            .spawn(move || {
                match quaver_net::discovery::discover(
                    &socket,
                    server,
                    ssrc,
                    DISCOVERY_TIMEOUT,
                    DISCOVERY_ATTEMPTS,
                ) {
                    Ok(address) => {
                        let _ = control.set_discovered_address(
                            gateway,
                            address.ip().to_string(),
                            address.port(),
                        );
                    }
                    Err(error) => tracing::warn!(%call, "IP discovery failed: {error}"),
                }
            });
        if let Err(error) = spawned {
            (self.emit)(CallEvent::Failed {
                call,
                error: format!("cannot start IP discovery: {error}"),
            });
        }
    }

    fn start_sending(&mut self, call: CallId, session: &VoiceSession) {
        let result = self.try_start_sending(call, session);
        match result {
            Ok(()) => self.set_status(call, CallStatus::Ready),
            Err(error) => (self.emit)(CallEvent::Failed {
                call,
                error: error.to_string(),
            }),
        }
    }

    fn try_start_sending(&mut self, call: CallId, session: &VoiceSession) -> Result<(), Error> {
        let connection = self
            .connections
            .by_call
            .get_mut(&call)
            .ok_or(Error::NoSuchCall(call))?;
        if let Some(id) = connection.sender_call.take() {
            self.connections.by_sender.remove(&id);
            let _ = self.sender.remove_call(id);
        }
        // A previous session took the frame queue: give the mixer a fresh one.
        let frames = match connection.frames.take() {
            Some(frames) => frames,
            None => self.engine.replace_frame_queue(call)?,
        };
        let socket = connection
            .socket
            .clone()
            .ok_or(Error::Session("no UDP socket (IP discovery never ran)"))?;
        let mode = session
            .mode
            .as_str()
            .parse::<quaver_net::crypto::EncryptionMode>()
            .map_err(|_| Error::Session("the server chose an encryption mode the sender lacks"))?;
        let key = quaver_net::crypto::SecretKey::from_slice(session.secret_key.expose())
            .map_err(|_| Error::Session("the session key is not 32 bytes"))?;
        let id = self.sender.add_call(CallConfig {
            ssrc: session.ssrc,
            socket,
            mode,
            key,
            frames,
        })?;
        // Speaking was sent with the session description; the sender's first audio frame
        // would otherwise say so again.
        connection.speaking = true;
        connection.sender_call = Some(id);
        self.connections.by_sender.insert(id, call);
        Ok(())
    }

    /// Stops sending for a call whose session is gone.
    fn halt(&mut self, call: CallId) {
        if let Some(mut connection) = self.connections.by_call.remove(&call) {
            self.connections.stop_sending(&mut connection, self.sender);
            connection.speaking = false;
            self.connections.by_call.insert(call, connection);
        }
    }
}

/// A UDP socket bound to the matching address family, connected to the voice server.
fn open_socket(ip: &str, port: u16) -> std::io::Result<(Arc<UdpSocket>, SocketAddr)> {
    let server: SocketAddr = (
        ip.parse::<std::net::IpAddr>()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
        port,
    )
        .into();
    let local: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local)?;
    socket.connect(server)?;
    Ok((Arc::new(socket), server))
}
