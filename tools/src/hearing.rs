//! A second Quaver engine in the probe call's channel that hears it through `Engine::listen`,
//! as a receiving bot would: the jitter tool's end-to-end view through Quaver's own receive
//! path (transport and DAVE decryption, the playout buffer, libopus with FEC and concealment).
//! It can hear more calls than the probe (`jitter --hear N`), to load the receive path as a
//! bot listening to many channels would; those are reported together in [`AllStreams`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use quaver::gateway::control::ControlConfig;
use quaver::gateway::main_gateway::MainGatewayConfig;
use quaver::gateway::protocol::Token;
use quaver::gateway::voice::VoiceConnectRequest;
use quaver::{
    CallId, Config, Engine, FrameOrigin, JoinOptions, ListenEvent, ReceiveOptions, ReceivedFrame,
    StreamStats, UserAudio,
};
use serde::Serialize;

use crate::Error;
use crate::report::{Quantiles, new_histogram};

/// What Quaver's receiver heard of the probe call.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HeardReport {
    /// Frames played out (decoded, FEC-recovered or concealed).
    pub frames_played: u64,
    /// Frames between the first and the last sequence number played (what a perfect network
    /// would have delivered in that span).
    pub frames_expected: u64,
    /// `frames_played` of `frames_expected`, in percent: every frame delivered as audio
    /// (`None` when nothing was heard).
    pub delivered_percent: Option<f64>,
    /// Packets that never arrived.
    pub lost: u64,
    /// Frames libopus concealed (lost without FEC).
    pub concealed: u64,
    /// Frames recovered from in-band FEC.
    pub fec_recovered: u64,
    /// Packets that came after their turn (dropped).
    pub late: u64,
    /// Packets that came twice.
    pub duplicates: u64,
    /// DAVE frames that would not decrypt (during a key change, before the keys arrive).
    pub undecryptable: u64,
    /// RFC 3550 inter-arrival jitter of the packets that reached the receiver, in µs (to the
    /// ns): what the network and the server added on top of the sender's own timing.
    pub interarrival_jitter_us: Option<Quantiles>,
    /// From a packet's arrival to its play-out, in ms.
    pub buffer_delay_ms: Option<Quantiles>,
    /// From the push into the sending engine to the play-out at the receiving engine, in ms
    /// (`None` when the call played no probe whose pushes are dated, such as music files).
    pub mouth_to_ear_ms: Option<Quantiles>,
    /// CPU of the receiving engine's threads while the calls streamed, in percent of one core
    /// (not included in the report's own CPU figure).
    pub cpu_percent: f64,
    /// Every call heard, the probe included (`None` when only the probe was heard).
    pub all_streams: Option<AllStreams>,
}

/// What Quaver's receiver heard over every call it listened to, added up.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AllStreams {
    /// Calls heard.
    pub streams: usize,
    /// Calls from which at least one frame played.
    pub streams_playing: usize,
    /// Frames played out (decoded, FEC-recovered or concealed), over all streams.
    pub frames_played: u64,
    /// Frames between each stream's first and last sequence number played.
    pub frames_expected: u64,
    /// `frames_played` of `frames_expected`, in percent.
    pub delivered_percent: Option<f64>,
    /// Packets that never arrived.
    pub lost: u64,
    /// Frames libopus concealed.
    pub concealed: u64,
    /// Frames recovered from in-band FEC.
    pub fec_recovered: u64,
    /// Packets that came after their turn.
    pub late: u64,
    /// DAVE frames that would not decrypt.
    pub undecryptable: u64,
    /// Frames the receive thread dropped because this tool read a ring too late.
    pub ring_overflows: u64,
    /// Each stream's average playout buffer delay at the end of the run, in ms, over the
    /// streams.
    pub buffer_delay_avg_ms: Option<Quantiles>,
}

/// One frame as the hearing thread saw it.
struct Frame {
    at: Instant,
    sequence: u16,
    /// RTP timestamp.
    timestamp: u32,
    /// When its packet arrived, for frames decoded from a packet (not FEC or concealment).
    arrived: Option<Instant>,
    buffered: Option<Duration>,
    opus: Option<Vec<u8>>,
    /// Whether a click starts in it (encode-mode probe).
    onset: bool,
}

/// The hearing engine and the thread reading its listener.
pub struct Hearing {
    engine: Engine,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Heard>>,
}

/// What the hearing thread collected: the probe's frames and statistics, and a tally of every
/// other call heard.
#[derive(Default)]
struct Heard {
    frames: Vec<Frame>,
    stats: StreamStats,
    others: Vec<Tally>,
}

/// One non-probe stream, counted as it plays.
#[derive(Default)]
struct Tally {
    played: u64,
    skipped: u64,
    last_sequence: Option<u16>,
    stats: StreamStats,
}

impl Tally {
    fn frame(&mut self, sequence: u16) {
        self.played += 1;
        if let Some(last) = self.last_sequence {
            self.skipped += skipped_between(last, sequence);
        }
        self.last_sequence = Some(sequence);
    }
}

/// Sequence numbers run on through a sender's pauses, so the frames never played are the gaps
/// between consecutive played ones (counted this way, wrap-around is harmless; a jump of 1,000
/// or more is a restart, not loss).
fn skipped_between(previous: u16, next: u16) -> u64 {
    let gap = u64::from(next.wrapping_sub(previous).saturating_sub(1));
    if gap < 1_000 { gap } else { 0 }
}

fn hearing_engine(control: ControlConfig, calls: usize) -> Result<Engine, Error> {
    let mut config = Config::default();
    config.engine.realtime_priority = false;
    config.engine.max_calls = calls;
    config.control = control;
    Ok(Engine::new(config)?)
}

impl Hearing {
    /// Joins with each of `requests` (another user in each heard call's channel, the probe's
    /// first) and hears `speaker` there.
    pub fn start(
        requests: Vec<VoiceConnectRequest>,
        control: ControlConfig,
        speaker: u64,
    ) -> Result<Self, Error> {
        let engine = hearing_engine(control, requests.len().max(1))?;
        let calls = requests
            .into_iter()
            .map(|request| engine.connect(request))
            .collect::<Result<Vec<_>, _>>()?;
        Self::hear(engine, &calls, Some(speaker))
    }

    /// Joins `guild`'s `channel` through the main gateway at `main_gateway_url` (a separate
    /// `quaver serve`) as a bot of its own, and hears the first member who speaks there: what
    /// that server forwards is all a client outside it can measure.
    pub fn join(
        main_gateway_url: &str,
        control: ControlConfig,
        guild: u64,
        channel: u64,
    ) -> Result<Self, Error> {
        let engine = hearing_engine(control, 1)?;
        let mut bot = MainGatewayConfig::new(Token::new("quaver-jitter-hearing"));
        bot.url = main_gateway_url.to_string();
        let bot = engine.connect_bot(bot)?;
        let call = engine.join(bot, guild, channel, JoinOptions::default())?;
        Self::hear(engine, &[call], None)
    }

    fn hear(engine: Engine, calls: &[CallId], speaker: Option<u64>) -> Result<Self, Error> {
        let listeners = calls
            .iter()
            .map(|&call| engine.listen(call, ReceiveOptions::default()))
            .collect::<Result<Vec<_>, _>>()?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("jitter-hearing".into())
            .spawn(move || {
                let mut heard = Heard {
                    others: (1..listeners.len()).map(|_| Tally::default()).collect(),
                    ..Heard::default()
                };
                let mut audio: Vec<Option<UserAudio>> = listeners.iter().map(|_| None).collect();
                let mut speaker_heard = None;
                let mut quiet = 0usize;
                loop {
                    let stopping = thread_stop.load(Ordering::Relaxed);
                    for (index, listener) in listeners.iter().enumerate() {
                        while let Some(event) = listener.try_event() {
                            // Without a speaker named, the first member heard is the one.
                            if let ListenEvent::User(a) = event
                                && speaker.or(speaker_heard).is_none_or(|s| a.user_id() == s)
                            {
                                speaker_heard = Some(a.user_id());
                                audio[index] = Some(a);
                            }
                        }
                        let Some(a) = audio[index].as_mut() else {
                            continue;
                        };
                        match index.checked_sub(1) {
                            None => {
                                while let Some(f) = a.pop() {
                                    heard.frames.push(observe(&f, &mut quiet));
                                }
                            }
                            Some(other) => {
                                while let Some(f) = a.pop() {
                                    heard.others[other].frame(f.sequence);
                                }
                            }
                        }
                    }
                    if stopping {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                for (index, a) in audio.iter().enumerate() {
                    let stats = a.as_ref().map(UserAudio::stats).unwrap_or_default();
                    match index.checked_sub(1) {
                        None => heard.stats = stats,
                        Some(other) => heard.others[other].stats = stats,
                    }
                }
                heard
            })
            .map_err(|e| Error::Usage(format!("hearing thread: {e}")))?;
        Ok(Self {
            engine,
            stop,
            thread: Some(thread),
        })
    }

    /// Stops hearing and reports; `pushes` (passthrough probe payloads) and `clicks` (encode
    /// probe) date each frame's push, for the mouth-to-ear figure.
    pub fn finish(mut self, pushes: &HashMap<Vec<u8>, Instant>, clicks: &[Instant]) -> HeardReport {
        self.stop.store(true, Ordering::Relaxed);
        let heard = self
            .thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        drop(self.engine);
        let mut report = summarise(&heard.frames, &heard.stats, pushes, clicks);
        if !heard.others.is_empty() {
            report.all_streams = Some(add_up(&report, &heard.stats, &heard.others));
        }
        report
    }
}

fn observe(f: &ReceivedFrame, quiet: &mut usize) -> Frame {
    let mut onset = false;
    if let Some(pcm) = f.pcm() {
        for pair in pcm.chunks_exact(2) {
            // The same rule as the raw listener's: loud after 100 ms of quiet.
            if f32::from(pair[0]).abs() / 32_768.0 > 0.25 {
                if *quiet > 4_800 {
                    onset = true;
                }
                *quiet = 0;
            } else {
                *quiet += 1;
            }
        }
    }
    Frame {
        at: f.at,
        sequence: f.sequence,
        timestamp: f.timestamp,
        arrived: f.arrived.filter(|_| f.origin == FrameOrigin::Packet),
        buffered: f.arrived.map(|a| f.at.saturating_duration_since(a)),
        opus: (f.origin == FrameOrigin::Packet)
            .then(|| f.opus().map(<[u8]>::to_vec))
            .flatten(),
        onset,
    }
}

fn summarise(
    frames: &[Frame],
    stats: &StreamStats,
    pushes: &HashMap<Vec<u8>, Instant>,
    clicks: &[Instant],
) -> HeardReport {
    let mut buffer = new_histogram();
    let mut mouth = new_histogram();
    for f in frames {
        if let Some(b) = f.buffered {
            buffer.saturating_record(b.as_micros() as u64);
        }
        if let Some(at) = f.opus.as_ref().and_then(|o| pushes.get(o)) {
            mouth.saturating_record(f.at.saturating_duration_since(*at).as_micros() as u64);
        }
    }
    // Clicks are 200 ms apart and latency far below that: the n-th onset is the n-th click
    // that could have been pushed by then.
    let mut next_click = 0;
    for f in frames.iter().filter(|f| f.onset) {
        while next_click + 1 < clicks.len() && clicks[next_click + 1] <= f.at {
            next_click += 1;
        }
        if let Some(click) = clicks.get(next_click) {
            mouth.saturating_record(f.at.saturating_duration_since(*click).as_micros() as u64);
            next_click += 1;
        }
    }
    // Sequence numbers run on through a sender's pauses, so the frames never played are the
    // gaps between consecutive played ones (counted this way, wrap-around is harmless).
    let played = frames.len() as u64;
    let skipped: u64 = frames
        .windows(2)
        .map(|w| skipped_between(w[0].sequence, w[1].sequence))
        .sum();
    let expected = played + skipped;
    HeardReport {
        frames_played: played,
        frames_expected: expected,
        delivered_percent: (expected > 0)
            .then(|| played.min(expected) as f64 / expected as f64 * 100.0),
        lost: stats.lost,
        concealed: stats.concealed,
        fec_recovered: stats.fec_recovered,
        late: stats.late,
        duplicates: stats.duplicates,
        undecryptable: stats.undecryptable,
        interarrival_jitter_us: interarrival_jitter(frames),
        buffer_delay_ms: Quantiles::of_us_as_ms(&buffer),
        mouth_to_ear_ms: Quantiles::of_us_as_ms(&mouth),
        cpu_percent: 0.0,
        all_streams: None,
    }
}

/// The probe's figures and every other stream's, added up.
fn add_up(probe: &HeardReport, probe_stats: &StreamStats, others: &[Tally]) -> AllStreams {
    let mut delays = new_histogram();
    let mut all = AllStreams {
        streams: others.len() + 1,
        streams_playing: usize::from(probe.frames_played > 0),
        frames_played: probe.frames_played,
        frames_expected: probe.frames_expected,
        lost: probe.lost,
        concealed: probe.concealed,
        fec_recovered: probe.fec_recovered,
        late: probe.late,
        undecryptable: probe.undecryptable,
        ring_overflows: probe_stats.ring_overflows,
        ..AllStreams::default()
    };
    if probe.frames_played > 0 {
        delays.saturating_record(probe_stats.buffer_delay_avg_us);
    }
    for t in others {
        all.streams_playing += usize::from(t.played > 0);
        all.frames_played += t.played;
        all.frames_expected += t.played + t.skipped;
        all.lost += t.stats.lost;
        all.concealed += t.stats.concealed;
        all.fec_recovered += t.stats.fec_recovered;
        all.late += t.stats.late;
        all.undecryptable += t.stats.undecryptable;
        all.ring_overflows += t.stats.ring_overflows;
        if t.played > 0 {
            delays.saturating_record(t.stats.buffer_delay_avg_us);
        }
    }
    all.delivered_percent = (all.frames_expected > 0).then(|| {
        all.frames_played.min(all.frames_expected) as f64 / all.frames_expected as f64 * 100.0
    });
    all.buffer_delay_avg_ms = Quantiles::of_us_as_ms(&delays);
    all
}

/// The RFC 3550 jitter of the played packets' arrivals, computed as the local server computes
/// it (the same meter), from the receive thread's arrival times.
fn interarrival_jitter(frames: &[Frame]) -> Option<Quantiles> {
    let origin = frames.iter().filter_map(|f| f.arrived).min()?;
    let mut meter = crate::server::stats::StreamMeter::new();
    for f in frames {
        if let Some(arrived) = f.arrived {
            let ns = i64::try_from(arrived.duration_since(origin).as_nanos()).unwrap_or(i64::MAX);
            meter.on_packet(f.sequence, f.timestamp, 0, ns);
        }
    }
    Quantiles::of_ns(&meter.jitter_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(origin: Instant, i: u16, late_us: u64, from_packet: bool) -> Frame {
        let arrived =
            origin + Duration::from_millis(20 * u64::from(i)) + Duration::from_micros(late_us);
        Frame {
            at: arrived + Duration::from_millis(40),
            sequence: i,
            timestamp: u32::from(i) * 960,
            arrived: from_packet.then_some(arrived),
            buffered: Some(Duration::from_millis(40)),
            opus: None,
            onset: false,
        }
    }

    /// Packets that arrive alternately on time and 10 µs late jitter by 10 µs; concealed
    /// frames (no packet) do not count.
    #[test]
    fn the_receiver_measures_the_jitter_of_what_arrived() {
        let origin = Instant::now();
        let frames: Vec<Frame> = (0..300u16)
            .map(|i| frame(origin, i, if i % 2 == 1 { 10 } else { 0 }, i % 50 != 7))
            .collect();
        let jitter = interarrival_jitter(&frames).unwrap();
        assert!((9.0..=11.0).contains(&jitter.p50), "{jitter:?}");
        assert!(interarrival_jitter(&[]).is_none());
    }
}
