//! Quaver: a real-time voice engine for Discord-compatible voice.
//!
//! [`Engine`] is the front door. It dereferences to the audio engine
//! ([`quaver_engine::Engine`]: calls, [`push_source`](quaver_engine::Engine::push_source),
//! [`play_file`](quaver_engine::Engine::play_file), events, stats) and adds the voice
//! connection: [`Engine::connect`] joins a voice server, and from then on the call's frames
//! are sealed and sent as RTP on the shared 20 ms grid by the sender thread, while the control
//! thread speaks the voice gateway.
//!
//! ```no_run
//! use quaver::{Config, Engine};
//! use quaver::engine::PcmFormat;
//! use quaver::gateway::protocol::Token;
//! use quaver::gateway::voice::VoiceConnectRequest;
//!
//! # fn main() -> Result<(), quaver::Error> {
//! let engine = Engine::new(Config::default())?;
//! // What the main gateway's VOICE_STATE_UPDATE and VOICE_SERVER_UPDATE said:
//! let call = engine.connect(VoiceConnectRequest {
//!     guild_id: 1, channel_id: 2, user_id: 3,
//!     session_id: "session".into(), token: Token::new("voice token"),
//!     endpoint: "ws://127.0.0.1:7879".into(),
//! })?;
//! let (source, mut writer) = engine.push_source(call, PcmFormat::new(44_100, 2)?)?;
//! writer.write_all_f32(&vec![0.0; 44_100 * 2])?; // one second of stereo audio
//! source.set_volume(0.8);
//! # Ok(()) }
//! ```
//!
//! The crates behind it: [`engine`] (audio, mixing, Opus, the mixer thread), [`net`] (RTP,
//! transport encryption, the sender), [`gateway`] (voice gateway v8, the join flow, the
//! control thread).

mod connection;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use quaver_engine as engine;
pub use quaver_gateway as gateway;
pub use quaver_net as net;

pub use quaver_engine::{CallId, EngineConfig, PcmFormat, SourceHandle};

use connection::{Connection, Connections, Dispatch, Driver, JoinVia};
use quaver_gateway::control::{BotId, ControlConfig, ControlEvent, ControlThread};
use quaver_gateway::join::{
    JoinAction, JoinFlow, VoiceServerUpdate, VoiceStateSender, VoiceStateUpdate,
};
use quaver_gateway::main_gateway::{MainGatewayConfig, MainGatewayEvent};
use quaver_gateway::voice::{VoiceConfig, VoiceConnectRequest, VoiceEvent};
use quaver_net::{BackendChoice, Sender, SenderConfig, SenderEvent, SenderStats};

/// Everything that can go wrong at the facade, wrapping the crates' own errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Engine(#[from] quaver_engine::Error),
    #[error(transparent)]
    Net(#[from] quaver_net::Error),
    #[error(transparent)]
    Sender(#[from] quaver_net::sender::SenderError),
    #[error(transparent)]
    Gateway(#[from] quaver_gateway::Error),
    #[error("no such call: {0}")]
    NoSuchCall(CallId),
    #[error("voice session: {0}")]
    Session(&'static str),
    #[error("could not start the {name} thread: {source}")]
    Thread {
        name: &'static str,
        source: std::io::Error,
    },
}

/// Settings of every part.
#[derive(Debug, Clone)]
pub struct Config {
    pub engine: EngineConfig,
    /// The voice gateway settings used for every call.
    pub voice: VoiceConfig,
    pub control: ControlConfig,
    /// Which UDP send path: io_uring, the portable fallback, or automatic.
    pub backend: BackendChoice,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            engine: EngineConfig::default(),
            voice: VoiceConfig::default(),
            control: ControlConfig::default(),
            backend: BackendChoice::Auto,
        }
    }
}

/// Where a call's voice connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallStatus {
    /// Handshaking (or re-identifying after a lost session); no packets are sent.
    Connecting,
    /// The session is up; frames are sent as RTP.
    Ready,
    /// The websocket is resuming; packets keep flowing with the same key.
    Resuming,
    /// The connection ended for good.
    Ended,
}

/// What happened to a call's connection, as values on [`Engine::call_events`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum CallEvent {
    /// The voice gateway reported something (session ready, resuming, users, ended …).
    Voice { call: CallId, event: VoiceEvent },
    /// The sender reported something (speaking started/stopped, send errors).
    Sender { call: CallId, event: SenderEvent },
    /// Setting up the call's UDP side failed.
    Failed { call: CallId, error: String },
}

/// How long [`Engine::connect_bot`] waits for READY.
const BOT_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the driver thread looks at the sender's events and keepalives.
const DRIVER_PERIOD: Duration = Duration::from_millis(5);

struct Shared {
    audio: quaver_engine::Engine,
    control: Arc<ControlThread>,
    sender: Mutex<Sender>,
    connections: Mutex<Connections>,
    /// Bots connected with `connect_bot`, with their user ID once READY arrived.
    bots: Mutex<std::collections::HashMap<BotId, u64>>,
    events_tx: crossbeam_channel::Sender<CallEvent>,
    voice: VoiceConfig,
}

impl Shared {
    /// Runs `work` with the driver's state (both locks, always in this order).
    fn with_driver(&self, work: impl FnOnce(&mut Driver<'_>)) {
        let mut connections = lock(&self.connections);
        let mut sender = lock(&self.sender);
        let emit = |event: CallEvent| {
            let _ = self.events_tx.try_send(event);
        };
        let mut driver = Driver {
            engine: &self.audio,
            control: &self.control,
            voice: &self.voice,
            sender: &mut sender,
            connections: &mut connections,
            emit: &emit,
        };
        work(&mut driver);
    }
}

/// The whole engine: audio, sender, gateway. Dereferences to [`quaver_engine::Engine`] for
/// calls, sources, files, events and mixer stats.
pub struct Engine {
    shared: Arc<Shared>,
    events: crossbeam_channel::Receiver<CallEvent>,
    shutdown: Arc<AtomicBool>,
    driver: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("audio", &self.shared.audio)
            .finish_non_exhaustive()
    }
}

impl std::ops::Deref for Engine {
    type Target = quaver_engine::Engine;

    fn deref(&self) -> &Self::Target {
        &self.shared.audio
    }
}

impl Engine {
    /// Starts the mixer, sender and control threads, and the driver that connects them.
    pub fn new(config: Config) -> Result<Self, Error> {
        let audio = quaver_engine::Engine::new(config.engine.clone())?;
        let mut sender_config = SenderConfig::new(audio.grid());
        sender_config.backend = config.backend;
        sender_config.max_calls = config.engine.max_calls;
        let sender = Sender::spawn(sender_config)?;
        tracing::info!(backend = ?sender.backend(), pacing = ?sender.pacing(), "sender started");
        let control = Arc::new(ControlThread::spawn(config.control.clone())?);
        let (events_tx, events) = crossbeam_channel::bounded(config.engine.event_queue.max(16));
        let shared = Arc::new(Shared {
            audio,
            control,
            sender: Mutex::new(sender),
            connections: Mutex::new(Connections::new()),
            bots: Mutex::new(std::collections::HashMap::new()),
            events_tx,
            voice: config.voice,
        });
        let shutdown = Arc::new(AtomicBool::new(false));
        let driver = {
            let shared = Arc::clone(&shared);
            let shutdown = Arc::clone(&shutdown);
            std::thread::Builder::new()
                .name("quaver-driver".into())
                .spawn(move || drive(&shared, &shutdown))
                .map_err(|source| Error::Thread {
                    name: "driver",
                    source,
                })?
        };
        Ok(Self {
            shared,
            events,
            shutdown,
            driver: Some(driver),
        })
    }

    /// Joins a voice server: creates a call in the mixer and opens its voice connection. Push
    /// sources into the returned call right away; they are heard once the session is ready.
    pub fn connect(&self, request: VoiceConnectRequest) -> Result<CallId, Error> {
        let (call, frames) = self.shared.audio.create_call()?;
        let mut connections = lock(&self.shared.connections);
        let gateway = match self
            .shared
            .control
            .connect(request, self.shared.voice.clone())
        {
            Ok(gateway) => gateway,
            Err(error) => {
                let _ = self.shared.audio.remove_call(call);
                return Err(error.into());
            }
        };
        connections.insert(Connection::new(call, Some(gateway), None, frames));
        Ok(call)
    }

    /// Connects a bot to a main gateway with the built-in client (one shard, JSON; see
    /// [`quaver_gateway::main_gateway`] for its limits) and waits for its READY. Calls are
    /// then joined with [`Engine::join`].
    pub fn connect_bot(&self, config: MainGatewayConfig) -> Result<BotId, Error> {
        let bot = self.shared.control.connect_bot(config)?;
        let give_up = Instant::now() + BOT_READY_TIMEOUT;
        while Instant::now() < give_up {
            if let Some(user_id) = lock(&self.shared.bots).get(&bot) {
                tracing::info!(user_id, "bot ready");
                return Ok(bot);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.shared.control.disconnect_bot(bot);
        Err(Error::Session("the main gateway never sent READY"))
    }

    /// Joins a voice channel through a bot connected with [`Engine::connect_bot`]: sends op 4,
    /// waits for the two dispatches, and connects. Channel moves, endpoint changes and null
    /// endpoints are followed on their own; [`Engine::disconnect`] leaves.
    pub fn join(&self, bot: BotId, guild_id: u64, channel_id: u64) -> Result<CallId, Error> {
        let user_id = *lock(&self.shared.bots)
            .get(&bot)
            .ok_or(Error::Session("unknown or unready bot"))?;
        self.start_join(JoinVia::Bot(bot), user_id, guild_id, channel_id)
    }

    /// Joins a voice channel through the main-gateway library your bot already runs (twilight,
    /// serenity …): `host` sends op 4 on your shard, and you hand every `VOICE_STATE_UPDATE`
    /// and `VOICE_SERVER_UPDATE` dispatch to [`Engine::handle_voice_state_update`] and
    /// [`Engine::handle_voice_server_update`]. Moves, endpoint changes and null endpoints are
    /// followed on their own; [`Engine::disconnect`] leaves.
    pub fn join_with(
        &self,
        host: Arc<dyn VoiceStateSender + Sync>,
        bot_user_id: u64,
        guild_id: u64,
        channel_id: u64,
    ) -> Result<CallId, Error> {
        self.start_join(JoinVia::Host(host), bot_user_id, guild_id, channel_id)
    }

    /// A `VOICE_STATE_UPDATE` dispatch from your main-gateway library (see [`Engine::join_with`]).
    pub fn handle_voice_state_update(&self, update: &VoiceStateUpdate) {
        self.with_driver(|driver| {
            driver.on_dispatch(
                |via| matches!(via, JoinVia::Host(_)),
                Dispatch::State(update),
            )
        });
    }

    /// A `VOICE_SERVER_UPDATE` dispatch from your main-gateway library (see [`Engine::join_with`]).
    pub fn handle_voice_server_update(&self, update: &VoiceServerUpdate) {
        self.with_driver(|driver| {
            driver.on_dispatch(
                |via| matches!(via, JoinVia::Host(_)),
                Dispatch::Server(update),
            )
        });
    }

    fn start_join(
        &self,
        via: JoinVia,
        user_id: u64,
        guild_id: u64,
        channel_id: u64,
    ) -> Result<CallId, Error> {
        let (call, frames) = self.shared.audio.create_call()?;
        let mut flow = JoinFlow::new(guild_id, user_id);
        flow.join(channel_id, false, false);
        self.with_driver(|driver| {
            driver
                .connections
                .insert(Connection::new(call, None, Some((via, flow)), frames));
            driver.run_join_actions(call);
        });
        Ok(call)
    }

    fn with_driver(&self, work: impl FnOnce(&mut Driver<'_>)) {
        self.shared.with_driver(work);
    }

    /// Leaves: closes the voice connection, stops sending, and removes the call and its sources.
    pub fn disconnect(&self, call: CallId) -> Result<(), Error> {
        let connection = {
            let mut connections = lock(&self.shared.connections);
            let mut sender = lock(&self.shared.sender);
            connections
                .remove(call, &mut sender)
                .ok_or(Error::NoSuchCall(call))?
        };
        if let Some((via, mut flow)) = connection.join {
            flow.leave();
            while let Some(action) = flow.poll_action() {
                if let JoinAction::SendVoiceStateUpdate(update) = action {
                    via.send(&self.shared.control, &update);
                }
            }
        }
        if let Some(gateway) = connection.gateway {
            let _ = self.shared.control.disconnect(gateway);
        }
        self.shared.audio.remove_call(call)?;
        Ok(())
    }

    /// Where the call's connection stands, or `None` for an unknown call.
    pub fn call_status(&self, call: CallId) -> Option<CallStatus> {
        lock(&self.shared.connections)
            .by_call
            .get(&call)
            .map(|c| c.status)
    }

    /// Connection events of every call.
    pub fn call_events(&self) -> &crossbeam_channel::Receiver<CallEvent> {
        &self.events
    }

    /// The sender's statistics: per-packet lateness at the sender, tick work, batch sizes.
    pub fn sender_stats(&self) -> SenderStats {
        lock(&self.shared.sender).stats().clone()
    }

    /// Which send path and pacing mode the sender uses, for reports.
    pub fn sender_mode(&self) -> String {
        let sender = lock(&self.shared.sender);
        format!(
            "{:?} backend, {:?} pacing",
            sender.backend(),
            sender.pacing()
        )
    }

    /// The control thread, e.g. for [`quaver_gateway::manager::VoiceManager`] or bot connections.
    pub fn control(&self) -> &Arc<ControlThread> {
        &self.shared.control
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown.store(true, Ordering::Relaxed);
        if let Some(driver) = self.driver.take() {
            let _ = driver.join();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The driver thread: turns gateway events into discovery and sender sessions, and sender
/// events into Speaking.
fn drive(shared: &Shared, shutdown: &AtomicBool) {
    while !shutdown.load(Ordering::Relaxed) {
        let control_event = shared.control.events().recv_timeout(DRIVER_PERIOD).ok();
        if let Some(ControlEvent::MainGateway {
            bot,
            event: MainGatewayEvent::Ready { user_id },
        }) = &control_event
        {
            lock(&shared.bots).insert(*bot, *user_id);
        }
        shared.with_driver(|driver| {
            match control_event {
                Some(ControlEvent::Voice { call, event }) => driver.on_voice_event(call, event),
                Some(ControlEvent::MainGateway { bot, event }) => {
                    driver.on_main_gateway_event(bot, &event)
                }
                Some(ControlEvent::SocketError { id, error }) => {
                    tracing::debug!(id, "voice socket: {error}")
                }
                _ => {}
            }
            while let Some(event) = driver.sender.poll_event() {
                driver.on_sender_event(event);
            }
            driver.send_keepalives(Instant::now());
        });
    }
}

/// The README's examples, compiled as doctests so the front door stays true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
