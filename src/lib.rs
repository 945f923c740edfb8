//! Quaver: a real-time voice engine for Discord-compatible voice.
//!
//! [`Engine`] is the one front door. Join a call one of three ways — [`Engine::connect`] with
//! raw voice credentials, [`Engine::join`] through the built-in main-gateway client
//! ([`Engine::connect_bot`]), or [`Engine::join_with`] through the main-gateway library your bot
//! already runs — then push audio into it ([`Engine::push_source`], [`Engine::push_opus`],
//! [`Engine::play_file`]). Frames are mixed, Opus-encoded, end-to-end encrypted with DAVE when
//! the call negotiated it, sealed and sent as RTP on each call's 20 ms grid by the sender
//! thread; the control thread speaks the voice gateway and runs every call's connection. Events
//! (sources ending, calls connecting, encryption changing, calls ending and why) arrive on one
//! stream, [`Engine::events`]; figures come from one call, [`Engine::stats`].
//!
//! ```no_run
//! use quaver::{Config, Engine, Event, CallEvent};
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
//!     endpoint: "c-xyz.discord.media:8443".into(),
//! })?;
//! let (source, mut writer) = engine.push_source(call, PcmFormat::new(44_100, 2)?)?;
//! writer.write_all_f32(&vec![0.0; 44_100 * 2])?; // one second of stereo audio
//! source.set_volume(0.8);
//! while let Some(event) = engine.events().recv() {
//!     if let Event::Call(CallEvent::Ended { reason, .. }) = event {
//!         eprintln!("the call ended: {reason:?}");
//!         break;
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! Bots on serenity or twilight join through `serenity::VoiceManager` (feature `serenity`) or
//! `twilight::VoiceManager` (feature `twilight`), which send op 4 on the guild's shard and take
//! the library's voice events; what they share is in [`host_gateway`].
//!
//! Hear a call with [`Engine::listen`]: each other member's audio arrives per user, decrypted,
//! reordered by a playout buffer, decoded with loss concealment ([`UserAudio`]).
//!
//! Threads after start-up: the mixer thread(s), the sender, the receive thread, the control
//! thread (with its host name resolver) and the file decoder — never one per call. Child-process
//! and HTTP sources have one input thread each for now (their reads block).
//!
//! The crates behind it: [`engine`] (audio, mixing, Opus, the mixer thread), [`net`] (RTP,
//! transport and DAVE frame encryption, the sender), [`gateway`] (voice gateway v8, DAVE's MLS
//! side, the join flow, the control thread).

mod driver;
mod error;
mod event;
pub mod host_gateway;
mod host_voice;
mod inputs;
mod listen;
#[cfg(feature = "serenity")]
pub mod serenity;
#[cfg(feature = "twilight")]
pub mod twilight;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

pub use quaver_engine as engine;
pub use quaver_gateway as gateway;
pub use quaver_net as net;

pub use error::Error;
pub use event::{CallEvent, CallStatus, E2eeStatus, Event, Events};
pub use listen::{ListenEvent, Listener, ReceiveOptions};
pub use quaver_engine::{
    CallId, EngineConfig, FileOptions, OpusWriter, PcmFormat, PcmWriter, SourceHandle,
    SourceOptions,
};
pub use quaver_gateway::control::BotId;
pub use quaver_gateway::join::JoinOptions;
pub use quaver_net::receiver::{
    CallReceiveStats, FrameOrigin, ReceiveMode, ReceivedFrame, StreamOptions, StreamStats,
    UserAudio,
};

use driver::{Driver, JoinVia, Outbox, Request};
use quaver_engine::EngineStats;
use quaver_gateway::control::{ControlConfig, ControlStats, ControlThread, ControlWaker};
use quaver_gateway::join::{VoiceServerUpdate, VoiceStateSender, VoiceStateUpdate};
use quaver_gateway::main_gateway::MainGatewayConfig;
use quaver_gateway::voice::{VoiceConfig, VoiceConnectRequest};
use quaver_net::receiver::ReceiverConfig;
pub use quaver_net::sender::PhaseConfig;
use quaver_net::{BackendChoice, EventNotifier, Receiver, Sender, SenderConfig, SenderStats};

/// How long [`Engine::connect_bot`] waits for READY.
const BOT_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a request that needs the control thread's answer waits for it.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of every part.
#[derive(Debug, Clone)]
pub struct Config {
    /// The audio engine: limits, queues, mixer threads, Opus.
    pub engine: EngineConfig,
    /// The voice gateway settings used for every call (DAVE version, heartbeats, backoff).
    pub voice: VoiceConfig,
    /// The control thread: websocket limits, extra trusted certificates.
    pub control: ControlConfig,
    /// Which UDP send path: io_uring, the portable fallback, or automatic.
    pub backend: BackendChoice,
    /// How the sender staggers calls over the 20 ms period: more groups spread a tick's
    /// packets wider (smaller bursts at the receiver), fewer cost fewer wake-ups.
    pub phases: PhaseConfig,
    /// Commands (add, remove, re-key) queued to the sender thread between two ticks. A full
    /// queue never loses a call: the driver tries again a moment later.
    pub sender_commands: usize,
    /// Use a voice endpoint with an explicit `ws://` scheme from [`Engine::join_with`]'s
    /// dispatches as it is (a local test server run without TLS). Off by default: such an
    /// endpoint is dialled with `wss://`, so the voice token never crosses the network in
    /// clear text because a dispatch asked for it. (The built-in bot client allows plain
    /// endpoints only when its own gateway URL is plain.)
    pub allow_plain_endpoints: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            engine: EngineConfig::default(),
            voice: VoiceConfig::default(),
            control: ControlConfig::default(),
            backend: BackendChoice::Auto,
            phases: PhaseConfig::default(),
            sender_commands: 256,
            allow_plain_endpoints: false,
        }
    }
}

/// Every figure the engine keeps, from one call ([`Engine::stats`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Stats {
    /// The mixer: ticks, encodes, passthrough, underruns, tick work.
    pub audio: EngineStats,
    /// The sender: lateness at the sender, packets, DAVE frames, send errors.
    pub sender: SenderStats,
    /// The control thread: connections, frames, its own CPU time.
    pub control: ControlStats,
    /// Connection events dropped because nobody read [`Engine::events`].
    pub events_dropped: u64,
}

/// The whole engine: audio, sender, gateway; see the crate docs.
///
/// The control thread's own event queue is not reachable from here: the connection driver reads
/// it, and a second reader would steal its events and stall calls.
///
/// ```compile_fail
/// # fn f(engine: &quaver::Engine) {
/// let _ = engine.control();
/// # }
/// ```
pub struct Engine {
    audio: Arc<quaver_engine::Engine>,
    requests: crossbeam_channel::Sender<Request>,
    waker: ControlWaker,
    events: Events,
    board: Arc<driver::Board>,
    dropped: Arc<AtomicU64>,
    sender_mode: String,
    /// Held for its `Drop`, which stops the control thread and with it the driver and the
    /// sender the driver owns.
    _control: ControlThread,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("audio", &self.audio)
            .field("sender", &self.sender_mode)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Starts the mixer, sender and control threads.
    pub fn new(config: Config) -> Result<Self, Error> {
        let audio = Arc::new(quaver_engine::Engine::new(config.engine.clone())?);
        // The control thread's waker exists only once it runs; the sender asks for it late.
        let waker_slot: Arc<OnceLock<ControlWaker>> = Arc::new(OnceLock::new());
        let mut sender_config = SenderConfig::new(audio.grid());
        sender_config.backend = config.backend;
        sender_config.phases = config.phases;
        sender_config.max_calls = config.engine.max_calls;
        sender_config.command_capacity = config.sender_commands.max(1);
        let notify = EventNotifier(Arc::new({
            let slot = Arc::clone(&waker_slot);
            move || {
                // An eventfd write that fails would mean the control thread is gone; the
                // driver then cannot act on the event anyway.
                if let Some(waker) = slot.get() {
                    let _ = waker.wake();
                }
            }
        }));
        sender_config.notify = Some(notify.clone());
        let sender = Sender::spawn(sender_config)?;
        let mut receiver_config = ReceiverConfig::new(audio.grid());
        receiver_config.max_calls = config.engine.max_calls;
        receiver_config.notify = Some(notify);
        let receiver = Receiver::spawn(receiver_config).map_err(Error::Receive)?;
        let sender_mode = format!(
            "{:?} backend, {:?} pacing",
            sender.backend(),
            sender.pacing()
        );
        tracing::info!(mode = %sender_mode, "sender started");
        let queue = config.engine.event_queue.max(16);
        let (requests_tx, requests_rx) = crossbeam_channel::bounded(queue);
        let (events_tx, events_rx) = crossbeam_channel::bounded(queue);
        let dropped = Arc::new(AtomicU64::new(0));
        let board = Arc::new(RwLock::new(HashMap::new()));
        let driver = Driver::new(
            Arc::clone(&audio),
            sender,
            receiver,
            requests_rx,
            Outbox {
                tx: events_tx,
                dropped: Arc::clone(&dropped),
            },
            Arc::clone(&board),
            driver::Settings {
                voice: config.voice,
                plain_endpoints: config.allow_plain_endpoints,
            },
        );
        let control = ControlThread::spawn_with_handler(config.control, Box::new(driver))?;
        let waker = control.waker();
        let _ = waker_slot.set(waker.clone());
        let events = Events::new(audio.events().clone(), events_rx);
        Ok(Self {
            audio,
            requests: requests_tx,
            waker,
            events,
            board,
            dropped,
            sender_mode,
            _control: control,
        })
    }

    fn request(&self, request: Request) -> Result<(), Error> {
        self.requests.send(request).map_err(|_| Error::Stopped)?;
        self.waker.wake().map_err(|_| Error::Stopped)
    }

    fn ask<T>(
        &self,
        make: impl FnOnce(crossbeam_channel::Sender<T>) -> Request,
    ) -> Result<T, Error> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.request(make(tx))?;
        rx.recv_timeout(REPLY_TIMEOUT).map_err(|_| Error::Stopped)
    }

    /// Joins a voice server with the credentials the main gateway gave you (its
    /// VOICE_STATE_UPDATE and VOICE_SERVER_UPDATE). Push sources into the returned call right
    /// away; they are heard once the session is ready. Endpoints are dialled as the gateway
    /// gives them: a bare `host:port` means `wss://`.
    pub fn connect(&self, request: VoiceConnectRequest) -> Result<CallId, Error> {
        let (call, frames) = self.audio.create_call()?;
        let sent = self.request(Request::Connect {
            call,
            frames,
            request: Box::new(request),
        });
        if let Err(e) = sent {
            let _ = self.audio.remove_call(call);
            return Err(e);
        }
        Ok(call)
    }

    /// Connects a bot to a main gateway with the built-in client (one shard, JSON; see
    /// [`quaver_gateway::main_gateway`] for its limits) and waits for its READY. Calls are
    /// then joined with [`Engine::join`].
    pub fn connect_bot(&self, config: MainGatewayConfig) -> Result<BotId, Error> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.request(Request::ConnectBot {
            config: Box::new(config),
            reply: tx,
        })?;
        match rx.recv_timeout(BOT_READY_TIMEOUT) {
            Ok((bot, user_id)) => {
                tracing::info!(user_id, "bot ready");
                Ok(bot)
            }
            Err(_) => Err(Error::BotNotReady(BOT_READY_TIMEOUT)),
        }
    }

    /// Closes a bot's main-gateway connection (its calls stay until you disconnect them).
    pub fn disconnect_bot(&self, bot: BotId) -> Result<(), Error> {
        self.request(Request::DisconnectBot(bot))
    }

    /// Joins a voice channel through a bot connected with [`Engine::connect_bot`]: sends op 4,
    /// waits for the two dispatches, and connects. Channel moves, endpoint changes and null
    /// endpoints are followed on their own; [`Engine::disconnect`] leaves.
    pub fn join(
        &self,
        bot: BotId,
        guild_id: u64,
        channel_id: u64,
        options: JoinOptions,
    ) -> Result<CallId, Error> {
        self.start_join(JoinVia::Bot(bot), guild_id, channel_id, options)
    }

    /// Joins a voice channel through the main-gateway library your bot already runs (twilight,
    /// serenity …): `host` sends op 4 on your shard (an error from it fails the join at once),
    /// and you hand every `VOICE_STATE_UPDATE` and `VOICE_SERVER_UPDATE` dispatch to
    /// [`Engine::handle_voice_state_update`] and [`Engine::handle_voice_server_update`].
    pub fn join_with(
        &self,
        host: Arc<dyn VoiceStateSender + Sync>,
        bot_user_id: u64,
        guild_id: u64,
        channel_id: u64,
        options: JoinOptions,
    ) -> Result<CallId, Error> {
        let via = JoinVia::Host {
            shard: host,
            user_id: bot_user_id,
        };
        self.start_join(via, guild_id, channel_id, options)
    }

    fn start_join(
        &self,
        via: JoinVia,
        guild_id: u64,
        channel_id: u64,
        options: JoinOptions,
    ) -> Result<CallId, Error> {
        let (call, frames) = self.audio.create_call()?;
        let result = self.ask(|reply| Request::Join {
            call,
            frames,
            via,
            guild_id,
            channel_id,
            options,
            reply,
        });
        match result {
            Ok(Ok(())) => Ok(call),
            Ok(Err(e)) | Err(e) => {
                let _ = self.audio.remove_call(call);
                Err(e)
            }
        }
    }

    /// A `VOICE_STATE_UPDATE` dispatch from your main-gateway library (see [`Engine::join_with`]).
    pub fn handle_voice_state_update(&self, update: &VoiceStateUpdate) -> Result<(), Error> {
        self.request(Request::VoiceStateUpdate(Box::new(update.clone())))
    }

    /// A `VOICE_SERVER_UPDATE` dispatch from your main-gateway library (see [`Engine::join_with`]).
    pub fn handle_voice_server_update(&self, update: &VoiceServerUpdate) -> Result<(), Error> {
        self.request(Request::VoiceServerUpdate(Box::new(update.clone())))
    }

    /// Leaves: op 4 with no channel for joined calls, closes the voice connection, stops sending,
    /// and removes the call and its sources.
    pub fn disconnect(&self, call: CallId) -> Result<(), Error> {
        self.ask(|reply| Request::Disconnect { call, reply })?
    }

    /// Where the call's connection stands, or `None` for an unknown call.
    pub fn call_status(&self, call: CallId) -> Option<CallStatus> {
        self.read_board(call).map(|posted| posted.status)
    }

    /// The end-to-end encryption in force on the call's outgoing audio.
    pub fn e2ee_status(&self, call: CallId) -> Option<E2eeStatus> {
        self.read_board(call).map(|posted| posted.e2ee)
    }

    /// The voice gateway's ping: the round trip of the call's last acknowledged heartbeat on
    /// its current connection. `None` for an unknown call, and until the first ACK after each
    /// (re)connect. Read from what the control thread posts at each ACK (once per heartbeat
    /// interval, ~13.75 s on Discord), so it never waits for the control thread.
    pub fn gateway_latency(&self, call: CallId) -> Option<Duration> {
        self.read_board(call).and_then(|posted| posted.latency)
    }

    fn read_board(&self, call: CallId) -> Option<driver::Posted> {
        self.board
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&call)
            .copied()
    }

    /// Adds a live PCM source to a call: a handle (volume, pause, stop, stats) and the writer,
    /// the producer end of a lock-free ring (f32 or i16, 8–192 kHz, mono or stereo).
    pub fn push_source(
        &self,
        call: CallId,
        format: PcmFormat,
    ) -> Result<(SourceHandle, PcmWriter), Error> {
        Ok(self.audio.push_source(call, format)?)
    }

    /// As [`Engine::push_source`], with options (ring size, start paused, volume …).
    pub fn push_source_with(
        &self,
        call: CallId,
        format: PcmFormat,
        options: SourceOptions,
    ) -> Result<(SourceHandle, PcmWriter), Error> {
        Ok(self.audio.push_source_with(call, format, options)?)
    }

    /// Adds a pre-encoded Opus source (48 kHz, 20 ms frames): sent without re-encoding while it
    /// plays alone at unity volume, decoded and mixed otherwise.
    pub fn push_opus(
        &self,
        call: CallId,
        options: SourceOptions,
    ) -> Result<(SourceHandle, OpusWriter), Error> {
        Ok(self.audio.push_opus(call, options)?)
    }

    /// Plays a file (wav, flac, mp3, Ogg Vorbis, Ogg Opus), decoded on the engine's worker thread.
    pub fn play_file(
        &self,
        call: CallId,
        path: impl AsRef<Path>,
        options: FileOptions,
    ) -> Result<SourceHandle, Error> {
        Ok(self.audio.play_file(call, path, options)?)
    }

    /// Hears a call: every other member's audio, per user, decrypted (transport and DAVE),
    /// reordered and de-duplicated by a playout buffer, and — with [`ReceiveMode::Decode`], the
    /// default — decoded to 48 kHz stereo with loss concealed (in-band FEC, else PLC). Users
    /// arrive as [`ListenEvent::User`] once their SSRC is announced; packets that overtake
    /// the announcement are held and played. Calls nobody listens to cost the receive thread
    /// nothing. One listener per call; dropping it stops receiving.
    pub fn listen(&self, call: CallId, options: ReceiveOptions) -> Result<Listener, Error> {
        let (events, counters) = self.ask(|reply| Request::Listen {
            call,
            options,
            reply,
        })??;
        Ok(Listener {
            call,
            events,
            counters,
            requests: self.requests.clone(),
            waker: self.waker.clone(),
        })
    }

    /// Sets a call's master volume (ramped over one frame).
    pub fn set_call_volume(&self, call: CallId, volume: f32) -> Result<(), Error> {
        Ok(self.audio.set_call_volume(call, volume)?)
    }

    /// The one event stream: audio and connection events.
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// Every figure at once: mixer, sender, control thread.
    pub fn stats(&self) -> Result<Stats, Error> {
        let (sender, control) = self.ask(Request::Stats)?;
        Ok(Stats {
            audio: self.audio.stats(),
            sender,
            control,
            events_dropped: self.dropped.load(Ordering::Relaxed),
        })
    }

    /// Which send path and pacing mode the sender uses, for reports.
    pub fn sender_mode(&self) -> &str {
        &self.sender_mode
    }

    /// The audio engine underneath, for what the front door does not offer (its grid, its
    /// config). Calls made or removed here are invisible to the voice side: a call created
    /// with it has no connection, and removing a connected call through it leaves the
    /// connection sending nothing until [`Engine::disconnect`].
    pub fn audio_engine(&self) -> &quaver_engine::Engine {
        &self.audio
    }
}

/// The README's examples, compiled as doctests so the front door stays true. The serenity and
/// twilight examples are inside `#[cfg(feature = …)]`: they compile when their feature is on (as
/// in the README's test command) and are empty otherwise.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
