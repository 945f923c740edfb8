//! `quaver jitter` (and the engine behind `quaver demo`): runs N calls against a voice server
//! and measures what a listener would notice — send lateness against the 20 ms grid at the
//! sender and at the receiver, inter-arrival jitter, loss, end-to-end latency, CPU.
//!
//! Every call streams through a real `quaver::Engine`: pre-encoded Opus (passthrough) by
//! default, or a mixed-and-encoded source with `encode`, or files. A listening participant
//! joins the first call's channel and timestamps what the server forwards, which gives the
//! end-to-end latency from the push into the engine to the arrival at another client.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use quaver::engine::{FileOptions, OpusWriter, PcmFormat, PcmWriter, SourceOptions};
use quaver::gateway::control::{ControlConfig, ControlThread};
use quaver::gateway::main_gateway::MainGatewayConfig;
use quaver::gateway::protocol::{SpeakingFlags, Token};
use quaver::gateway::voice::{VoiceConnectRequest, VoiceEvent};
use quaver::net::BackendChoice;
use quaver::{CallEvent, CallId, CallStatus, Config, Engine};

use crate::Error;
use crate::baseline::BaselineSender;
use crate::listener::{Arrival, Listener};
use crate::report::{BaselineReport, Quantiles, Report};
use crate::server::{Server, ServerConfig};
use crate::session::RawSession;

/// The guild every run's first call uses; the listener joins its channel.
const FIRST_GUILD: u64 = 1;
/// Guilds of baseline calls start here, apart from Quaver's.
const BASELINE_GUILD_OFFSET: u64 = 1_000_000;
const BOT_USER: u64 = 4_242;
const LISTENER_USER: u64 = 4_343;
const BASELINE_USER: u64 = 4_444;
/// Wait after streaming before reading the statistics.
const SETTLE: Duration = Duration::from_millis(1_200);
/// How long all calls may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// What to run.
#[derive(Debug, Clone)]
pub struct JitterOptions {
    pub calls: usize,
    pub seconds: f64,
    /// Mix and encode a PCM source per call instead of passing pre-encoded Opus through.
    pub encode: bool,
    /// Files to play in every call (mixed and encoded), instead of the synthetic sources.
    pub files: Vec<PathBuf>,
    /// The main-gateway address of a running `quaver serve`; `None` starts one in-process.
    pub server: Option<SocketAddr>,
    /// Also run the sleep-paced baseline sender with as many calls, in the same run.
    pub baseline: bool,
    pub backend: BackendChoice,
    /// Where the embedded server records each stream as WAV.
    pub record: Option<PathBuf>,
    /// Ask for real-time priority for the mixer thread.
    pub realtime: bool,
}

impl Default for JitterOptions {
    fn default() -> Self {
        Self {
            calls: 1,
            seconds: 10.0,
            encode: false,
            files: Vec::new(),
            server: None,
            baseline: false,
            backend: BackendChoice::Auto,
            record: None,
            realtime: true,
        }
    }
}

/// Where the calls connect: the in-process server or a running one reached through its main
/// gateway.
enum Target {
    Embedded(Server),
    Remote { main_gateway: SocketAddr },
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
            (Target::Remote { .. }, Some(bot)) => Ok(engine.join(bot, guild, channel_of(guild))?),
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
    /// The latency probe: unique packets whose push times are recorded.
    Probe {
        writer: OpusWriter,
        packets: Vec<Vec<u8>>,
        next: usize,
        pushed: HashMap<Vec<u8>, Instant>,
    },
    /// The latency probe in encode mode: silence with a click every 10 frames.
    ClickProbe {
        writer: PcmWriter,
        frame: usize,
        clicks: Vec<Instant>,
    },
}

/// Runs the measurement and returns the report.
pub fn run(options: &JitterOptions) -> Result<Report, Error> {
    if options.calls == 0 {
        return Err(Error::Usage("--calls must be at least 1".into()));
    }
    let target = match options.server {
        Some(main_gateway) => Target::Remote { main_gateway },
        None => Target::Embedded(Server::start(ServerConfig {
            record_dir: options.record.clone(),
            // Decoding every packet of 1,000 calls would measure the server, not Quaver.
            decode_audio: options.record.is_some() || options.calls <= 16,
            // Optional: a client offering DAVE gets version 1, one without still connects.
            dave: crate::server::DaveMode::Optional,
            ..ServerConfig::default()
        })?),
    };
    let mut config = Config::default();
    config.engine.max_calls = options.calls + 2;
    config.engine.realtime_priority = options.realtime;
    config.backend = options.backend;
    let engine = Engine::new(config)?;

    let bot = match &target {
        Target::Remote { main_gateway } => {
            let mut bot = MainGatewayConfig::new(Token::new("quaver-jitter"));
            bot.url = format!("ws://{main_gateway}/?v=10&encoding=json");
            Some(engine.connect_bot(bot)?)
        }
        Target::Embedded(_) => None,
    };
    // Files are music, not a measuring signal: an extra call carries the latency probe.
    let extra_probe = !options.files.is_empty() && matches!(target, Target::Embedded(_));
    let total_calls = options.calls + usize::from(extra_probe);
    let calls: Vec<CallId> = (0..total_calls as u64)
        .map(|i| target.connect(&engine, bot, FIRST_GUILD + i))
        .collect::<Result<_, _>>()?;
    let give_up = Instant::now() + CONNECT_TIMEOUT;
    while !calls
        .iter()
        .all(|&call| engine.call_status(call) == Some(CallStatus::Ready))
    {
        if Instant::now() > give_up {
            let ready = calls
                .iter()
                .filter(|&&c| engine.call_status(c) == Some(CallStatus::Ready))
                .count();
            return Err(Error::Usage(format!(
                "only {ready} of {} calls connected",
                calls.len()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    // The listener (and the baseline) speak the gateway on a control thread of their own.
    let side_control = ControlThread::spawn(ControlConfig {
        thread_name: "jitter-control".into(),
        ..ControlConfig::default()
    })
    .map_err(quaver::Error::from)?;
    let listener = match target.participant_request(FIRST_GUILD, LISTENER_USER) {
        Ok(request) => {
            let session = RawSession::open(
                &side_control,
                request,
                SpeakingFlags::NONE,
                Duration::from_secs(10),
            )?;
            Some((
                Listener::start(&session).map_err(|e| Error::Usage(format!("listener: {e}")))?,
                session,
            ))
        }
        Err(_) => None,
    };

    let loop_packets = Arc::new(encode_tone_packets(50, 440.0));
    let baseline = if options.baseline {
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
        Some(
            BaselineSender::start(sessions, Arc::clone(&loop_packets))
                .map_err(|e| Error::Usage(e.to_string()))?,
        )
    } else {
        None
    };

    let frames = (options.seconds * 50.0).ceil() as usize;
    let mut feeds = Vec::new();
    for (index, &call) in calls.iter().enumerate() {
        let probe = index == 0 && listener.is_some();
        let is_extra_probe = extra_probe && index == 0;
        let plays_files = !options.files.is_empty() && !is_extra_probe;
        if plays_files {
            for file in &options.files {
                engine.play_file(call, file, FileOptions::default())?;
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
                    packets: encode_sweep_packets(frames),
                    next: 0,
                    pushed: HashMap::new(),
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
                    clicks: Vec::new(),
                }
            }
        };
        feeds.push(feed);
    }

    let cpu_before = crate::cpu::quaver_thread_time();
    let machine_before = crate::cpu::MachineTimes::now();
    let started = Instant::now();
    let first_push = Instant::now();
    for tick in 0..frames as u32 {
        // The producers write 20 ms per 20 ms, as a live source would, at an arbitrary phase
        // to the engine's grid.
        let due = started + Duration::from_millis(20) * tick;
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        for feed in feeds.iter_mut() {
            push(feed);
        }
    }
    let wall = started.elapsed();
    let cpu = crate::cpu::quaver_thread_time().saturating_sub(cpu_before);
    let steal_percent = crate::cpu::MachineTimes::now().steal_percent_since(&machine_before);
    // The producers are done: dropping the writers lets every stream end (five silence frames,
    // Speaking off) instead of underrunning into silence.
    let (probe_pushes, probe_clicks) = probe_records(&mut feeds);
    drop(feeds);
    // Let the last frames and the forwarding settle. The sender hands its statistics over
    // about once a second, and only while the previous hand-over has been collected.
    let _ = engine.sender_stats();
    std::thread::sleep(SETTLE);
    let baseline_sent = baseline.map(BaselineSender::stop);

    let mut resumes = 0;
    for event in engine.call_events().try_iter() {
        if let CallEvent::Voice {
            event: VoiceEvent::Resuming { .. },
            ..
        } = event
        {
            resumes += 1;
        }
    }
    let sender = engine.sender_stats();
    let mixer = engine.stats();
    let probe_arrivals = listener.as_ref().map(|(l, _)| l.take()).unwrap_or_default();
    let probe_ssrc = match &target {
        Target::Embedded(server) => server.ssrc_of(FIRST_GUILD, BOT_USER),
        Target::Remote { .. } => None,
    };
    let probe: Vec<Arrival> = probe_arrivals
        .into_iter()
        .filter(|a| Some(a.ssrc) == probe_ssrc)
        .collect();
    let (latency, first_packet_ms) = latency_of(&probe_pushes, &probe_clicks, &probe, first_push);

    let mut report = Report {
        calls: options.calls,
        seconds: wall.as_secs_f64(),
        mode: if !options.files.is_empty() {
            "files, mixed and encoded".into()
        } else if options.encode {
            "PCM source, mixed and encoded".into()
        } else {
            "pre-encoded Opus, passthrough".into()
        },
        sender: engine.sender_mode(),
        packets_sent: sender.packets_sent,
        send_lateness_us: Quantiles::of_ns(&sender.lateness_ns),
        late_frames: sender.late_frames,
        mixer_wake_lateness_us: Quantiles::of_scaled_us(&mixer.histograms.lateness_us),
        mixer_tick_us: Quantiles::of_scaled_us(&mixer.histograms.tick_us),
        skipped_ticks: mixer.skipped_ticks,
        steal_percent,
        latency_ms: latency,
        first_packet_ms,
        resumes,
        cpu_percent: cpu.as_secs_f64() / wall.as_secs_f64() * 100.0,
        ..Report::default()
    };
    report.cpu_percent_per_call = report.cpu_percent / options.calls as f64;

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
                report.baseline = Some(BaselineReport::from_streams(sent, &theirs));
            }
        }
        Target::Remote { .. } => {
            report.receiver_note =
                Some("receiver statistics come from the server's own report".into());
        }
    }
    for call in calls {
        let _ = engine.disconnect(call);
    }
    if let Some((_, session)) = listener {
        let _ = side_control.disconnect(session.gateway);
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
            next,
            pushed,
        } => {
            if let Some(packet) = packets.get(*next) {
                let at = Instant::now();
                if writer.write_packet(packet).unwrap_or(false) {
                    pushed.insert(packet.clone(), at);
                    *next += 1;
                }
            }
        }
        Feed::ClickProbe {
            writer,
            frame,
            clicks,
        } => {
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
                clicks.push(at);
            }
            *frame += 1;
        }
    }
}

/// The probe's push records, taken out before its writer is dropped.
fn probe_records(feeds: &mut [Feed]) -> (HashMap<Vec<u8>, Instant>, Vec<Instant>) {
    let mut pushes = HashMap::new();
    let mut clicks = Vec::new();
    for feed in feeds {
        match feed {
            Feed::Probe { pushed, .. } => pushes = std::mem::take(pushed),
            Feed::ClickProbe {
                clicks: recorded, ..
            } => clicks = std::mem::take(recorded),
            _ => {}
        }
    }
    (pushes, clicks)
}

/// Latency of every probe packet, and of the first one.
fn latency_of(
    pushes: &HashMap<Vec<u8>, Instant>,
    clicks: &[Instant],
    arrivals: &[Arrival],
    first_push: Instant,
) -> (Quantiles, Option<f64>) {
    let mut histogram = crate::report::new_histogram();
    for arrival in arrivals {
        if let Some(at) = pushes.get(&arrival.payload) {
            histogram
                .saturating_record(arrival.at.saturating_duration_since(*at).as_micros() as u64);
        }
    }
    if !clicks.is_empty() {
        record_click_latency(&mut histogram, clicks, arrivals);
    }
    let first = arrivals.iter().map(|a| a.at).min();
    let first_ms = first.map(|at| at.saturating_duration_since(first_push).as_secs_f64() * 1_000.0);
    (Quantiles::of_us_as_ms(&histogram), first_ms)
}

/// Decodes the probe stream in sequence order and matches each click's onset to its push.
fn record_click_latency(histogram: &mut Histogram<u64>, clicks: &[Instant], arrivals: &[Arrival]) {
    let Ok(mut decoder) =
        audiopus::coder::Decoder::new(audiopus::SampleRate::Hz48000, audiopus::Channels::Stereo)
    else {
        return;
    };
    let mut ordered: Vec<&Arrival> = arrivals.iter().collect();
    ordered.sort_by_key(|a| a.at);
    let mut pcm = vec![0.0_f32; 1_920];
    let mut quiet = 0_usize;
    let mut onsets = Vec::new();
    for arrival in ordered {
        let Ok(packet) = audiopus::packet::Packet::try_from(arrival.payload.as_slice()) else {
            continue;
        };
        let Ok(signals) = audiopus::MutSignals::try_from(&mut pcm[..]) else {
            continue;
        };
        let Ok(samples) = decoder.decode_float(Some(packet), signals, false) else {
            continue;
        };
        for pair in pcm[..samples * 2].chunks_exact(2) {
            if pair[0].abs() > 0.25 {
                if quiet > 4_800 {
                    onsets.push(arrival.at);
                }
                quiet = 0;
            } else {
                quiet += 1;
            }
        }
    }
    // Clicks are 200 ms apart and latency is far below that, so the n-th onset belongs to the
    // n-th click that could have arrived by then.
    let mut next_click = 0;
    for onset in onsets {
        while next_click + 1 < clicks.len() && clicks[next_click + 1] <= onset {
            next_click += 1;
        }
        if let Some(click) = clicks.get(next_click) {
            histogram.saturating_record(onset.saturating_duration_since(*click).as_micros() as u64);
            next_click += 1;
        }
    }
}

/// 20 ms Opus packets of a steady tone, for calls that loop them.
fn encode_tone_packets(count: usize, freq: f32) -> Vec<Vec<u8>> {
    encode_packets(count, |i| {
        (i as f32 * freq / 48_000.0 * std::f32::consts::TAU).sin() * 0.3
    })
}

/// `count` packets of a slow frequency sweep: no two alike, so each arrival can be matched to
/// its push.
fn encode_sweep_packets(count: usize) -> Vec<Vec<u8>> {
    encode_packets(count, |i| {
        let t = i as f32 / 48_000.0;
        (t * (300.0 + 20.0 * t) * std::f32::consts::TAU).sin() * 0.3
    })
}

fn encode_packets(count: usize, signal: impl Fn(usize) -> f32) -> Vec<Vec<u8>> {
    let Ok(encoder) = audiopus::coder::Encoder::new(
        audiopus::SampleRate::Hz48000,
        audiopus::Channels::Stereo,
        audiopus::Application::Audio,
    ) else {
        return Vec::new();
    };
    let mut frame = [0.0_f32; 1_920];
    (0..count)
        .filter_map(|n| {
            for (i, pair) in frame.chunks_exact_mut(2).enumerate() {
                let s = signal(n * 960 + i);
                pair[0] = s;
                pair[1] = s;
            }
            let mut packet = vec![0_u8; 1_275];
            let len = encoder.encode_float(&frame, &mut packet).ok()?;
            packet.truncate(len);
            Some(packet)
        })
        .collect()
}

/// 20 ms of a stereo tone at `rate`.
fn tone_chunk(rate: u32, freq: f32) -> Vec<f32> {
    let frames = rate as usize / 50;
    (0..frames * 2)
        .map(|i| ((i / 2) as f32 * freq / rate as f32 * std::f32::consts::TAU).sin() * 0.3)
        .collect()
}
