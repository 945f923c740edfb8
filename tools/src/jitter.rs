//! `quaver jitter` (and the engine behind `quaver demo`): runs N calls against a voice server
//! and measures what a listener would notice — send lateness against the 20 ms grid at the
//! sender and at the receiver, inter-arrival jitter, loss, end-to-end latency, CPU.
//!
//! Every call streams through a real `quaver::Engine`: pre-encoded Opus (passthrough) by
//! default, or a mixed-and-encoded source with `encode`, or files. A listening participant
//! joins the first call's channel and timestamps what the server forwards, which gives the
//! end-to-end latency from the push into the engine to the arrival at another client.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use quaver::engine::{FileOptions, OpusWriter, PcmFormat, PcmWriter, SourceOptions};
use quaver::gateway::control::{ControlConfig, ControlThread};
use quaver::gateway::main_gateway::MainGatewayConfig;
use quaver::gateway::protocol::{SpeakingFlags, Token};
use quaver::gateway::voice::{VoiceConnectRequest, VoiceEvent};
use quaver::net::BackendChoice;
use quaver::{CallEvent, CallId, Config, Engine, Event, JoinOptions, PhaseConfig};

use crate::Error;
use crate::baseline::{BaselineKind, BaselineSender, Pacing};
use crate::listener::Listener;
use crate::probe::PushLog;
use crate::report::{BaselineReport, Quantiles, Report};
use crate::server::{Faults, Server, ServerConfig};
use crate::session::RawSession;

/// The guild every run's first call uses; the listener joins its channel.
const FIRST_GUILD: u64 = 1;
/// Guilds of baseline calls start here, apart from Quaver's.
const BASELINE_GUILD_OFFSET: u64 = 1_000_000;
const BOT_USER: u64 = 4_242;
const LISTENER_USER: u64 = 4_343;
/// The user of the engine that hears the probe call through Quaver's receive path.
const HEARING_USER: u64 = 4_545;
const BASELINE_USER: u64 = 4_444;
/// Wait after streaming before reading the statistics.
const SETTLE: Duration = Duration::from_millis(1_200);
/// How long all calls may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// What to run.
#[derive(Debug, Clone)]
pub struct JitterOptions {
    /// Calls to run at once (1 to [`crate::args::MAX_CALLS`]).
    pub calls: usize,
    /// How long to stream (one frame to [`crate::args::MAX_RUN_SECONDS`]).
    pub seconds: Duration,
    /// Mix and encode a PCM source per call instead of passing pre-encoded Opus through.
    pub encode: bool,
    /// Files to play in every call (mixed and encoded), instead of the synthetic sources.
    pub files: Vec<PathBuf>,
    /// The main gateway of a running `quaver serve` (`host:port` for its default TLS, or a
    /// `ws://` URL for `--plain`); `None` starts one in-process.
    pub server: Option<String>,
    /// The CA certificate (PEM) of that server, as `quaver serve --cert-out` wrote it.
    pub ca_cert: Option<PathBuf>,
    /// Also run a baseline sender with as many calls, in the same run: the sleep-paced one
    /// other libraries resemble, or the bare real-time one that shows the machine's floor.
    pub baseline: Option<BaselineKind>,
    /// The transmit backend of the engine's sender (io_uring or the portable path).
    pub backend: BackendChoice,
    /// Where the embedded server records each stream as WAV.
    pub record: Option<PathBuf>,
    /// Ask for real-time priority for the mixer thread.
    pub realtime: bool,
    /// A line for stderr once every call is connected and streaming starts.
    pub announce: Option<String>,
    /// Show how far the run is on a progress line (only when stderr is a terminal).
    pub progress: bool,
    /// Loss, reordering and duplication the embedded server applies to forwarded packets (what
    /// the listeners, Quaver's own receiver among them, get).
    pub faults: Faults,
    /// How many calls (the first ones, the probe included) Quaver's receiver hears, with the
    /// embedded server: 1 hears the probe alone; more load the receive path as a bot that
    /// listens to many channels would.
    pub hear: usize,
    /// How the engine's sender staggers the calls over the period.
    pub phases: PhaseConfig,
    /// Capacity of the engine's event queues (`EngineConfig::event_queue`); the run reads them as
    /// it goes, so even a small queue loses no resume.
    pub event_queue: usize,
}

impl Default for JitterOptions {
    fn default() -> Self {
        Self {
            calls: 1,
            seconds: Duration::from_secs(10),
            encode: false,
            files: Vec::new(),
            server: None,
            ca_cert: None,
            baseline: None,
            backend: BackendChoice::Auto,
            record: None,
            realtime: true,
            announce: None,
            progress: false,
            faults: Faults::default(),
            hear: 1,
            phases: PhaseConfig::default(),
            event_queue: Config::default().engine.event_queue,
        }
    }
}

/// Where the calls connect: the in-process server or a running one reached through its main
/// gateway.
enum Target {
    Embedded(Server),
    Remote { main_gateway: String },
}

impl Target {
    fn connect(
        &self,
        engine: &Engine,
        bot: Option<quaver::gateway::control::BotId>,
        guild: u64,
    ) -> Result<CallId, Error> {
        match (self, bot) {
            (Target::Embedded(server), _) => Ok(engine.connect(server.voice_connect_request(
                guild,
                channel_of(guild),
                BOT_USER,
            ))?),
            (Target::Remote { .. }, Some(bot)) => {
                Ok(engine.join(bot, guild, channel_of(guild), JoinOptions::default())?)
            }
            (Target::Remote { .. }, None) => Err(Error::Usage("no bot connection".into())),
        }
    }

    /// A voice connect request for a participant other than the engine's bot.
    fn participant_request(&self, guild: u64, user: u64) -> Result<VoiceConnectRequest, Error> {
        match self {
            Target::Embedded(server) => {
                Ok(server.voice_connect_request(guild, channel_of(guild), user))
            }
            Target::Remote { .. } => Err(Error::Usage(
                "the listener and the baseline need the embedded server".into(),
            )),
        }
    }
}

fn channel_of(guild: u64) -> u64 {
    guild + 500_000
}

/// A producer feeding one call in real time.
enum Feed {
    Opus {
        writer: OpusWriter,
        packets: Arc<Vec<Vec<u8>>>,
        next: usize,
    },
    Pcm {
        writer: PcmWriter,
        chunk: Vec<f32>,
    },
    /// The latency probe: unique packets, made as they are sent, whose push times are
    /// recorded.
    Probe {
        writer: OpusWriter,
        packets: SweepPackets,
        /// The packet the engine had no room for yet.
        pending: Option<Vec<u8>>,
        log: Arc<PushLog>,
    },
    /// The latency probe in encode mode: silence with a click every 10 frames.
    ClickProbe {
        writer: PcmWriter,
        frame: usize,
        log: Arc<PushLog>,
    },
}

/// Descriptors every process needs besides the calls: stdio, the server's listeners, the
/// engine's and the listener's sockets, io_uring, files being read.
const RESERVED_DESCRIPTORS: u64 = 64;

/// Checks the options a caller may have filled in by hand as the command line is checked.
fn validate(options: &JitterOptions) -> Result<(), Error> {
    if !(1..=crate::args::MAX_CALLS).contains(&options.calls) {
        return Err(Error::Usage(format!(
            "--calls must be between 1 and {}",
            crate::args::MAX_CALLS
        )));
    }
    if options.hear == 0 || options.hear > options.calls {
        return Err(Error::Usage(format!(
            "--hear must be between 1 and --calls ({})",
            options.calls
        )));
    }
    if options.hear > 1 && options.server.is_some() {
        return Err(Error::Usage(
            "--hear above 1 needs the embedded server (without --server)".into(),
        ));
    }
    let max = Duration::from_secs_f64(crate::args::MAX_RUN_SECONDS);
    if options.seconds < Duration::from_millis(20) || options.seconds > max {
        return Err(Error::Usage(format!(
            "--seconds must be between 0.02 and {}",
            crate::args::MAX_RUN_SECONDS
        )));
    }
    Ok(())
}

/// Open files a run needs: every call holds a UDP socket and a voice websocket, and against
/// the in-process server that server holds the other end of the websocket; every file played
/// is open in every call.
fn descriptors_needed(options: &JitterOptions) -> u64 {
    let calls = options.calls as u64;
    let per_call = if options.server.is_some() { 2 } else { 3 } + options.files.len() as u64;
    let baseline = if options.baseline.is_some() { 3 } else { 0 };
    // Each call the receiver hears past the probe: its socket and websocket, and the server's
    // end of that websocket.
    let heard = (options.hear.saturating_sub(1) as u64).saturating_mul(3);
    calls
        .saturating_add(1)
        .saturating_mul(per_call + baseline)
        .saturating_add(heard)
        .saturating_add(RESERVED_DESCRIPTORS)
}

/// Makes sure the process may open `needed` files, raising its soft limit up to the hard one
/// if it must; refuses with the limit and how to raise it otherwise.
fn ensure_descriptors(calls: usize, needed: u64) -> Result<(), Error> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        // Unknown: let the run find out.
        return Ok(());
    }
    let needed_rlim = libc::rlim_t::try_from(needed).unwrap_or(libc::rlim_t::MAX);
    if limit.rlim_cur == libc::RLIM_INFINITY || limit.rlim_cur >= needed_rlim {
        return Ok(());
    }
    if limit.rlim_max == libc::RLIM_INFINITY || limit.rlim_max >= needed_rlim {
        let raised = libc::rlimit {
            rlim_cur: needed_rlim,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit(2) reads the struct we own; raising the soft limit up to the
        // hard one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Ok(());
        }
    }
    Err(Error::Usage(format!(
        "--calls {calls} needs about {needed} open files, but the limit is {} (RLIMIT_NOFILE, \
         hard limit {}); raise it with `ulimit -n {needed}` (above the hard limit: as root, or \
         in /etc/security/limits.conf), or run fewer calls",
        limit.rlim_cur,
        if limit.rlim_max == libc::RLIM_INFINITY {
            "unlimited".to_string()
        } else {
            limit.rlim_max.to_string()
        }
    )))
}

/// Runs the measurement and returns the report. Setting `stop` ends the streaming early; the
/// report then covers what ran and says it was interrupted.
pub fn run(options: &JitterOptions, stop: &AtomicBool) -> Result<Report, Error> {
    validate(options)?;
    ensure_descriptors(options.calls, descriptors_needed(options))?;
    let target = match &options.server {
        Some(server) => Target::Remote {
            main_gateway: crate::remote::main_gateway_url(server),
        },
        None => Target::Embedded(Server::start(ServerConfig {
            record_dir: options.record.clone(),
            // Decoding every packet of 1,000 calls would measure the server, not Quaver.
            decode_audio: options.record.is_some() || options.calls <= 16,
            faults: options.faults.clone(),
            ..ServerConfig::default()
        })?),
    };
    let mut config = Config::default();
    config.engine.max_calls = options.calls.saturating_add(2);
    config.engine.realtime_priority = options.realtime;
    config.backend = options.backend;
    config.phases = options.phases;
    config.engine.event_queue = options.event_queue;
    // The engine's control thread must trust whichever server it dials.
    config.control = match &target {
        Target::Embedded(server) => server.trusted(config.control),
        Target::Remote { .. } => crate::remote::control_config(options.ca_cert.as_deref())?,
    };
    let engine = Engine::new(config)?;

    let bot = match &target {
        Target::Remote { main_gateway } => {
            let mut bot = MainGatewayConfig::new(Token::new("quaver-jitter"));
            bot.url = main_gateway.clone();
            Some(engine.connect_bot(bot)?)
        }
        Target::Embedded(_) => None,
    };
    // Files are music, not a measuring signal: an extra call carries the latency probe.
    let extra_probe = !options.files.is_empty() && matches!(target, Target::Embedded(_));
    let total_calls = options.calls.saturating_add(usize::from(extra_probe));
    let calls: Vec<CallId> = (0..total_calls as u64)
        .map(|i| target.connect(&engine, bot, FIRST_GUILD + i))
        .collect::<Result<_, _>>()?;
    crate::connect::until_ready(&engine, &calls, stop, CONNECT_TIMEOUT)?;

    // The listener (and the baseline) speak the gateway on a control thread of their own.
    let side_config = ControlConfig {
        thread_name: "jitter-control".into(),
        ..ControlConfig::default()
    };
    let side_config = match &target {
        Target::Embedded(server) => server.trusted(side_config),
        Target::Remote { .. } => side_config,
    };
    // The listener has a control thread to itself: its events (DAVE keys) are read by it alone.
    let listener_control = ControlThread::spawn(ControlConfig {
        thread_name: "jitter-listener-control".into(),
        ..side_config.clone()
    })
    .map_err(quaver::Error::from)?;
    let side_control = ControlThread::spawn(side_config).map_err(quaver::Error::from)?;
    // The probe's pushes, matched by both listeners as its packets arrive.
    let probe_log = PushLog::new();
    let listener = match target.participant_request(FIRST_GUILD, LISTENER_USER) {
        Ok(request) => {
            let session = RawSession::open(
                &listener_control,
                request,
                SpeakingFlags::NONE,
                Duration::from_secs(10),
            )?;
            Some((
                Listener::start(
                    &session,
                    listener_control.events().clone(),
                    BOT_USER,
                    Arc::clone(&probe_log),
                )
                .map_err(|e| Error::Usage(format!("listener: {e}")))?,
                session,
            ))
        }
        Err(_) => None,
    };
    // Quaver's own receiver, a second engine in the probe's channel. Its threads are told
    // apart from the measured engine's so that each one's CPU is reported on its own.
    let threads_before = crate::cpu::quaver_thread_ids();
    // Against a separate server, this is the only view of what arrived: that server's own
    // figures stay in its process.
    let hearing = match &target {
        Target::Embedded(server) => Some(crate::hearing::Hearing::start(
            (0..options.hear as u64)
                .map(|i| target.participant_request(FIRST_GUILD + i, HEARING_USER))
                .collect::<Result<_, _>>()?,
            server.control_config(),
            BOT_USER,
            Arc::clone(&probe_log),
        )?),
        Target::Remote { main_gateway } => Some(crate::hearing::Hearing::join(
            main_gateway,
            crate::remote::control_config(options.ca_cert.as_deref())?,
            FIRST_GUILD,
            channel_of(FIRST_GUILD),
            Arc::clone(&probe_log),
        )?),
    };

    let hearing_threads: Vec<u32> = crate::cpu::quaver_thread_ids()
        .into_iter()
        .filter(|tid| !threads_before.contains(tid))
        .collect();
    let measured = |tid: u32| !hearing_threads.contains(&tid);
    let heard_by = |tid: u32| hearing_threads.contains(&tid);

    let loop_packets = Arc::new(encode_tone_packets(50, 440.0));
    let baseline = if let Some(kind) = options.baseline {
        let sessions = (0..options.calls as u64)
            .map(|i| {
                let request =
                    target.participant_request(BASELINE_GUILD_OFFSET + i, BASELINE_USER)?;
                RawSession::open(
                    &side_control,
                    request,
                    SpeakingFlags::MICROPHONE,
                    Duration::from_secs(10),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let pacing = match kind {
            BaselineKind::Sleep => Pacing::Sleep,
            BaselineKind::Floor => Pacing::Floor {
                phases: options.phases,
                grid: engine.audio_engine().grid(),
            },
        };
        Some(
            BaselineSender::start(sessions, Arc::clone(&loop_packets), pacing)
                .map_err(|e| Error::Usage(e.to_string()))?,
        )
    } else {
        None
    };

    // Validated: at most an hour, so this is at most 180,000.
    let frames = (options.seconds.as_secs_f64() * 50.0).ceil() as u32;
    let mut feeds = Vec::new();
    let mut files = Vec::new();
    for (index, &call) in calls.iter().enumerate() {
        let probe = index == 0 && (listener.is_some() || hearing.is_some());
        let is_extra_probe = extra_probe && index == 0;
        let plays_files = !options.files.is_empty() && !is_extra_probe;
        if plays_files {
            for file in &options.files {
                files.push(engine.play_file(call, file, FileOptions::default())?);
            }
            continue;
        }
        let encode = options.encode || extra_probe;
        let feed = match (encode, probe) {
            (false, false) => {
                let (_, writer) = engine.push_opus(call, SourceOptions::default())?;
                Feed::Opus {
                    writer,
                    packets: Arc::clone(&loop_packets),
                    next: index,
                }
            }
            (false, true) => {
                let (_, writer) = engine.push_opus(call, SourceOptions::default())?;
                Feed::Probe {
                    writer,
                    packets: SweepPackets::new(),
                    pending: None,
                    log: Arc::clone(&probe_log),
                }
            }
            (true, false) => {
                let (_, writer) = engine.push_source(call, PcmFormat::new(44_100, 2)?)?;
                Feed::Pcm {
                    writer,
                    chunk: tone_chunk(44_100, 330.0 + index as f32),
                }
            }
            (true, true) => {
                let (_, writer) = engine.push_source(call, PcmFormat::STEREO_48K)?;
                Feed::ClickProbe {
                    writer,
                    frame: 0,
                    log: Arc::clone(&probe_log),
                }
            }
        };
        feeds.push(feed);
    }

    let cpu_before = crate::cpu::quaver_thread_time_where(measured);
    let hearing_cpu_before = crate::cpu::quaver_thread_time_where(heard_by);
    let machine_before = crate::cpu::MachineTimes::now();
    if let Some(line) = &options.announce {
        eprintln!("{line}");
    }
    let mut progress = crate::progress::Progress::new(
        options.progress && std::io::IsTerminal::is_terminal(&std::io::stderr()),
    );
    let started = Instant::now();
    let first_push = Instant::now();
    let mut interrupted = false;
    let mut outages = Outages::default();
    for tick in 0..frames {
        if stop.load(Ordering::Relaxed) {
            interrupted = true;
            break;
        }
        progress.update(|| {
            format!(
                "streaming {:.1} of {:.1} s (Ctrl-C stops early and reports)",
                started.elapsed().as_secs_f64(),
                options.seconds.as_secs_f64()
            )
        });
        // The producers write 20 ms per 20 ms, as a live source would, at an arbitrary phase
        // to the engine's grid.
        let due = started + Duration::from_millis(20) * tick;
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        for feed in feeds.iter_mut() {
            push(feed);
        }
        outages.count(engine.events());
    }
    let wall = started.elapsed();
    progress.clear();
    let cpu = crate::cpu::quaver_thread_time_where(measured).saturating_sub(cpu_before);
    let hearing_cpu =
        crate::cpu::quaver_thread_time_where(heard_by).saturating_sub(hearing_cpu_before);
    let steal_percent = crate::cpu::MachineTimes::now().steal_percent_since(&machine_before);
    // The producers are done: dropping the writers lets every stream end (five silence frames,
    // Speaking off) instead of underrunning into silence.
    drop(feeds);
    // Files would play on through the settling time below and keep the sender's counts
    // moving after the last hand-over that the report reads: they stop with the run too.
    for file in &files {
        file.stop();
    }
    // Let the last frames and the forwarding settle. The sender hands its statistics over
    // about once a second, and only while the previous hand-over has been collected.
    let _ = engine.stats();
    std::thread::sleep(SETTLE);
    let baseline_sent = baseline.map(BaselineSender::stop);

    outages.count(engine.events());
    let Outages {
        resumes,
        resume_attempts,
        reconnects,
    } = outages;
    let stats = engine.stats()?;
    let (sender, mixer) = (stats.sender, stats.audio);
    let probe_ssrc = match &target {
        Target::Embedded(server) => server.ssrc_of(FIRST_GUILD, BOT_USER),
        Target::Remote { .. } => None,
    };
    let (listener, listener_session) = listener.unzip();
    let probe = listener
        .map(Listener::finish)
        .and_then(|mut senders| senders.remove(&probe_ssrc?));
    let latency = probe
        .as_ref()
        .and_then(|p| Quantiles::of_us_as_ms(&p.latency_us));
    let first_packet_ms = probe
        .as_ref()
        .map(|p| p.first.saturating_duration_since(first_push).as_secs_f64() * 1_000.0);
    let heard = hearing.map(|h| {
        let mut heard = h.finish();
        heard.cpu_percent = hearing_cpu.as_secs_f64() / wall.as_secs_f64() * 100.0;
        heard
    });

    let mut report = Report {
        calls: options.calls,
        seconds: wall.as_secs_f64(),
        planned_seconds: options.seconds.as_secs_f64(),
        interrupted,
        mode: if !options.files.is_empty() {
            "files, mixed and encoded".into()
        } else if options.encode {
            "PCM source, mixed and encoded".into()
        } else {
            "pre-encoded Opus, passthrough".into()
        },
        sender: engine.sender_mode().to_string(),
        packets_sent: sender.packets_sent,
        send_lateness_us: Quantiles::of_ns(&sender.lateness_ns),
        send_wake_us: Quantiles::of_ns(&sender.wake_ns),
        mixer_wake_lateness_us: Quantiles::of_scaled_us(&mixer.histograms.lateness_us),
        mixer_tick_us: Quantiles::of_scaled_us(&mixer.histograms.tick_us),
        late_frames: sender.late_frames,
        skipped_ticks: mixer.skipped_ticks,
        complexity_steps_down: mixer.complexity_steps_down,
        complexity_steps_up: mixer.complexity_steps_up,
        calls_lowered: mixer.calls_lowered,
        frames_rushed: mixer.frames_rushed,
        steal_percent,
        latency_ms: latency,
        first_packet_ms,
        resumes,
        resume_attempts,
        reconnects,
        cpu_percent: cpu.as_secs_f64() / wall.as_secs_f64() * 100.0,
        heard,
        ..Report::default()
    };
    report.cpu_percent_per_call = report.cpu_percent / options.calls as f64;
    let e2ee: Vec<_> = calls.iter().map(|&c| engine.e2ee_status(c)).collect();
    report.dave_protocol_version = e2ee
        .iter()
        .map(|s| s.map(|s| s.protocol_version))
        .collect::<Option<Vec<_>>>()
        .and_then(|versions| versions.into_iter().min());
    report.dave_epoch = e2ee
        .first()
        .copied()
        .flatten()
        .filter(|s| s.protocol_version > 0)
        .map(|s| s.epoch);

    match &target {
        Target::Embedded(server) => {
            let stats = server.stats();
            let ours: Vec<_> = stats
                .calls
                .iter()
                .filter(|c| c.guild_id < BASELINE_GUILD_OFFSET)
                .flat_map(|c| c.streams.iter())
                .filter(|s| s.user_id == BOT_USER)
                .collect();
            report.fill_receiver(&ours);
            // Loss the server caused itself (it could not read its socket in time) is not the
            // sender's: say so, with what to do about it.
            if let Some(note) = stats.counters.overload_note() {
                report.receiver_note = Some(note);
            }
            report.recordings = ours
                .iter()
                .filter(|s| !(extra_probe && Some(s.ssrc) == probe_ssrc))
                .filter_map(|s| s.recording.clone())
                .collect();
            if let Some(sent) = baseline_sent {
                let theirs: Vec<_> = stats
                    .calls
                    .iter()
                    .filter(|c| c.guild_id >= BASELINE_GUILD_OFFSET)
                    .flat_map(|c| c.streams.iter())
                    .collect();
                report.baseline = options
                    .baseline
                    .map(|kind| BaselineReport::from_streams(kind, sent, &theirs));
            }
        }
        Target::Remote { .. } => {
            report.receiver_note = Some(
                "the server is another process: what it received is in its own report; \
                 the Quaver receiver line is what this tool heard in the first call"
                    .into(),
            );
        }
    }
    for call in calls {
        let _ = engine.disconnect(call);
    }
    if let Some(session) = listener_session {
        let _ = listener_control.disconnect(session.gateway);
    }
    Ok(report)
}

fn push(feed: &mut Feed) {
    match feed {
        Feed::Opus {
            writer,
            packets,
            next,
        } => {
            if writer
                .write_packet(&packets[*next % packets.len()])
                .unwrap_or(false)
            {
                *next += 1;
            }
        }
        Feed::Pcm { writer, chunk } => {
            let _ = writer.write_f32(chunk);
        }
        Feed::Probe {
            writer,
            packets,
            pending,
            log,
        } => {
            let packet = match pending.take() {
                Some(packet) => Some(packet),
                None => packets.next(),
            };
            if let Some(packet) = packet {
                let at = Instant::now();
                if writer.write_packet(&packet).unwrap_or(false) {
                    log.packet(&packet, at);
                } else {
                    *pending = Some(packet);
                }
            }
        }
        Feed::ClickProbe { writer, frame, log } => {
            let mut chunk = [0.0_f32; 1_920];
            let click = *frame % 10 == 0;
            if click {
                // A 1 ms burst at the start of the frame.
                for (i, s) in chunk[..96].iter_mut().enumerate() {
                    *s = if i % 8 < 4 { 0.8 } else { -0.8 };
                }
            }
            let at = Instant::now();
            if writer.write_f32(&chunk).unwrap_or(0) > 0 && click {
                log.click(at);
            }
            *frame += 1;
        }
    }
}

/// 20 ms Opus packets of a steady tone, for calls that loop them.
fn encode_tone_packets(count: usize, freq: f32) -> Vec<Vec<u8>> {
    encode_packets(count, |i| {
        (i as f32 * freq / 48_000.0 * std::f32::consts::TAU).sin() * 0.3
    })
}

/// The latency probe's packets: a slow frequency sweep, so no two are alike and each arrival
/// can be matched to its push. Encoded one at a time as they are sent, so a long run costs no
/// memory up front (an hour is 180,000 packets).
pub struct SweepPackets {
    encoder: Option<audiopus::coder::Encoder>,
    /// On the heap: the feeds of a thousand calls move around in one enum.
    frame: Box<[f32; 1_920]>,
    next: usize,
}

impl SweepPackets {
    /// The sweep from its start; empty if no Opus encoder can be made.
    pub fn new() -> Self {
        Self {
            encoder: new_encoder(),
            frame: Box::new([0.0; 1_920]),
            next: 0,
        }
    }
}

impl Default for SweepPackets {
    fn default() -> Self {
        Self::new()
    }
}

impl Iterator for SweepPackets {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        let n = self.next;
        self.next = self.next.wrapping_add(1);
        encode_frame(self.encoder.as_ref()?, &mut self.frame, n, sweep)
    }
}

fn sweep(i: usize) -> f32 {
    // In f64: an f32 sample index stops counting single samples after six minutes.
    let t = i as f64 / 48_000.0;
    ((t * (300.0 + 20.0 * t) * std::f64::consts::TAU).sin() * 0.3) as f32
}

fn new_encoder() -> Option<audiopus::coder::Encoder> {
    audiopus::coder::Encoder::new(
        audiopus::SampleRate::Hz48000,
        audiopus::Channels::Stereo,
        audiopus::Application::Audio,
    )
    .ok()
}

/// Encodes frame `n` (20 ms, stereo) of `signal`, a function of the sample index.
fn encode_frame(
    encoder: &audiopus::coder::Encoder,
    frame: &mut [f32; 1_920],
    n: usize,
    signal: impl Fn(usize) -> f32,
) -> Option<Vec<u8>> {
    for (i, pair) in frame.chunks_exact_mut(2).enumerate() {
        let s = signal(n.wrapping_mul(960).wrapping_add(i));
        pair[0] = s;
        pair[1] = s;
    }
    let mut packet = vec![0_u8; 1_275];
    let len = encoder.encode_float(&frame[..], &mut packet).ok()?;
    packet.truncate(len);
    Some(packet)
}

fn encode_packets(count: usize, signal: impl Fn(usize) -> f32) -> Vec<Vec<u8>> {
    let Some(encoder) = new_encoder() else {
        return Vec::new();
    };
    let mut frame = [0.0_f32; 1_920];
    (0..count)
        .filter_map(|n| encode_frame(&encoder, &mut frame, n, &signal))
        .collect()
}

/// 20 ms of a stereo tone at `rate`.
fn tone_chunk(rate: u32, freq: f32) -> Vec<f32> {
    let frames = rate as usize / 50;
    (0..frames * 2)
        .map(|i| ((i / 2) as f32 * freq / rate as f32 * std::f32::consts::TAU).sin() * 0.3)
        .collect()
}

/// A run's resumes and reconnects, counted from the engine's events as they come. The queue is
/// bounded (4,096 by default): read only at the end, a 10-minute soak of 1,000 calls counted 995
/// resumes of 1,000 attempts while the server had resumed all 1,000. Attempts and successes are
/// counted apart: a voice server that never comes back shows attempts and no resumes.
#[derive(Debug, Default)]
struct Outages {
    resumes: u64,
    resume_attempts: u64,
    reconnects: u64,
}

impl Outages {
    /// Counts the events waiting now (the rest of what is waiting is not needed by the run).
    fn count(&mut self, events: &quaver::Events) {
        for event in events.try_iter() {
            if let Event::Call(CallEvent::Voice { event, .. }) = event {
                match event {
                    VoiceEvent::Resumed => self.resumes += 1,
                    VoiceEvent::Resuming { .. } => self.resume_attempts += 1,
                    VoiceEvent::Reconnecting { .. } => self.reconnects += 1,
                    _ => {}
                }
            }
        }
    }
}
