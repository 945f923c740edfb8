//! A second Quaver engine in the probe call's channel that hears it through `Engine::listen`,
//! as a receiving bot would: the jitter tool's end-to-end view through Quaver's own receive
//! path (transport and DAVE decryption, the playout buffer, libopus with FEC and concealment).
//! It can hear more calls than the probe (`jitter --hear N`), to load the receive path as a
//! bot listening to many channels would; those are reported together in [`AllStreams`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
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
use crate::probe::{ClickMatcher, Onsets, PushLog};
use crate::report::{Quantiles, new_histogram};
use crate::server::stats::StreamMeter;

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
struct Frame<'a> {
    at: Instant,
    sequence: u16,
    /// RTP timestamp.
    timestamp: u32,
    /// When its packet arrived, for frames decoded from a packet (not FEC or concealment).
    arrived: Option<Instant>,
    buffered: Option<Duration>,
    /// The packet's Opus payload, for frames decoded from a packet.
    opus: Option<&'a [u8]>,
    /// Whether a click starts in it (encode-mode probe).
    onset: bool,
}

/// The probe's frames, measured as they play: nothing is kept per frame, so a long run costs
/// no more memory than a short one.
struct ProbeFrames {
    log: Arc<PushLog>,
    tally: Tally,
    buffer_us: Histogram<u64>,
    mouth_us: Histogram<u64>,
    clicks: ClickMatcher,
    /// RFC 3550 jitter of the played packets' arrivals, by the local server's own meter.
    arrivals: StreamMeter,
    /// The first played packet's arrival, from which the meter's clock counts.
    origin: Option<Instant>,
}

impl ProbeFrames {
    fn new(log: Arc<PushLog>) -> Self {
        Self {
            log,
            tally: Tally::default(),
            buffer_us: new_histogram(),
            mouth_us: new_histogram(),
            clicks: ClickMatcher::default(),
            arrivals: StreamMeter::new(),
            origin: None,
        }
    }

    fn frame(&mut self, f: &Frame<'_>) {
        self.tally.frame(f.sequence);
        if let Some(b) = f.buffered {
            self.buffer_us.saturating_record(micros(b));
        }
        if let Some(pushed) = f.opus.and_then(|o| self.log.pushed(o)) {
            self.mouth_us
                .saturating_record(micros(f.at.saturating_duration_since(pushed)));
        }
        if f.onset
            && let Some(click) = self.clicks.matched(&self.log, f.at)
        {
            self.mouth_us
                .saturating_record(micros(f.at.saturating_duration_since(click)));
        }
        if let Some(arrived) = f.arrived {
            let origin = *self.origin.get_or_insert(arrived);
            // A reordered packet may have arrived before the first one played: signed.
            let ns = match arrived.checked_duration_since(origin) {
                Some(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
                None => {
                    -i64::try_from(origin.duration_since(arrived).as_nanos()).unwrap_or(i64::MAX)
                }
            };
            self.arrivals.on_packet(f.sequence, f.timestamp, 0, ns);
        }
    }
}

fn micros(d: Duration) -> u64 {
    d.as_micros().try_into().unwrap_or(u64::MAX)
}

/// The hearing engine and the thread reading its listener.
pub struct Hearing {
    engine: Engine,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Heard>>,
}

/// What the hearing thread collected: the probe's frames and statistics, and a tally of every
/// other call heard.
struct Heard {
    probe: ProbeFrames,
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
    /// first) and hears `speaker` there; the probe's frames are dated by its pushes in `log`.
    pub fn start(
        requests: Vec<VoiceConnectRequest>,
        control: ControlConfig,
        speaker: u64,
        log: Arc<PushLog>,
    ) -> Result<Self, Error> {
        let engine = hearing_engine(control, requests.len().max(1))?;
        let calls = requests
            .into_iter()
            .map(|request| engine.connect(request))
            .collect::<Result<Vec<_>, _>>()?;
        Self::hear(engine, &calls, Some(speaker), log)
    }

    /// Joins `guild`'s `channel` through the main gateway at `main_gateway_url` (a separate
    /// `quaver serve`) as a bot of its own, and hears the first member who speaks there: what
    /// that server forwards is all a client outside it can measure.
    pub fn join(
        main_gateway_url: &str,
        control: ControlConfig,
        guild: u64,
        channel: u64,
        log: Arc<PushLog>,
    ) -> Result<Self, Error> {
        let engine = hearing_engine(control, 1)?;
        let mut bot = MainGatewayConfig::new(Token::new("quaver-jitter-hearing"));
        bot.url = main_gateway_url.to_string();
        let bot = engine.connect_bot(bot)?;
        let call = engine.join(bot, guild, channel, JoinOptions::default())?;
        Self::hear(engine, &[call], None, log)
    }

    fn hear(
        engine: Engine,
        calls: &[CallId],
        speaker: Option<u64>,
        log: Arc<PushLog>,
    ) -> Result<Self, Error> {
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
                    probe: ProbeFrames::new(log),
                    stats: StreamStats::default(),
                    others: (1..listeners.len()).map(|_| Tally::default()).collect(),
                };
                let mut audio: Vec<Option<UserAudio>> = listeners.iter().map(|_| None).collect();
                let mut speaker_heard = None;
                let mut onsets = Onsets::default();
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
                                    heard.probe.frame(&observe(&f, &mut onsets));
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

    /// Stops hearing and reports (an empty report if the hearing thread panicked).
    pub fn finish(mut self) -> HeardReport {
        self.stop.store(true, Ordering::Relaxed);
        let heard = self.thread.take().and_then(|t| t.join().ok());
        drop(self.engine);
        let Some(heard) = heard else {
            return HeardReport::default();
        };
        let mut report = summarise(&heard.probe, &heard.stats);
        if !heard.others.is_empty() {
            report.all_streams = Some(add_up(&report, &heard.stats, &heard.others));
        }
        report
    }
}

fn observe<'a>(f: &'a ReceivedFrame, onsets: &mut Onsets) -> Frame<'a> {
    let onset = f.pcm().is_some_and(|pcm| {
        onsets.frame(
            pcm.chunks_exact(2)
                .map(|pair| f32::from(pair[0]) / 32_768.0),
        )
    });
    let from_packet = f.origin == FrameOrigin::Packet;
    Frame {
        at: f.at,
        sequence: f.sequence,
        timestamp: f.timestamp,
        arrived: f.arrived.filter(|_| from_packet),
        buffered: f.arrived.map(|a| f.at.saturating_duration_since(a)),
        opus: f.opus().filter(|_| from_packet),
        onset,
    }
}

fn summarise(probe: &ProbeFrames, stats: &StreamStats) -> HeardReport {
    let played = probe.tally.played;
    let expected = played + probe.tally.skipped;
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
        interarrival_jitter_us: probe
            .origin
            .and_then(|_| Quantiles::of_ns(&probe.arrivals.jitter_ns)),
        buffer_delay_ms: Quantiles::of_us_as_ms(&probe.buffer_us),
        mouth_to_ear_ms: Quantiles::of_us_as_ms(&probe.mouth_us),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(origin: Instant, i: u16, late_us: u64, opus: Option<&[u8]>) -> Frame<'_> {
        let arrived =
            origin + Duration::from_millis(20 * u64::from(i)) + Duration::from_micros(late_us);
        Frame {
            at: arrived + Duration::from_millis(40),
            sequence: i,
            timestamp: u32::from(i) * 960,
            arrived: opus.map(|_| arrived),
            buffered: Some(Duration::from_millis(40)),
            opus,
            onset: false,
        }
    }

    /// Packets that arrive alternately on time and 10 µs late jitter by 10 µs, and concealed
    /// frames (no packet) do not count; each packet pushed 5 ms before it arrived is heard
    /// 45 ms after its push; a sequence number never played is a frame missing.
    #[test]
    fn the_probe_is_measured_as_it_plays() {
        let origin = Instant::now();
        let log = PushLog::new();
        let payloads: Vec<[u8; 2]> = (0..300u16).map(u16::to_le_bytes).collect();
        let mut probe = ProbeFrames::new(Arc::clone(&log));
        for i in (0..300u16).filter(|&i| i != 100) {
            let from_packet = i % 50 != 7;
            let late_us = if i % 2 == 1 { 10 } else { 0 };
            let opus = from_packet.then_some(&payloads[usize::from(i)][..]);
            if let Some(o) = opus {
                let arrived = origin + Duration::from_millis(20 * u64::from(i));
                log.packet(
                    o,
                    arrived + Duration::from_micros(late_us) - Duration::from_millis(5),
                );
            }
            probe.frame(&frame(origin, i, late_us, opus));
        }
        let report = summarise(&probe, &StreamStats::default());
        let jitter = report.interarrival_jitter_us.unwrap();
        assert!((9.0..=11.0).contains(&jitter.p50), "{jitter:?}");
        let mouth = report.mouth_to_ear_ms.unwrap();
        assert!((44.9..=45.1).contains(&mouth.p50), "{mouth:?}");
        assert_eq!((report.frames_played, report.frames_expected), (299, 300));

        let silent = summarise(&ProbeFrames::new(PushLog::new()), &StreamStats::default());
        assert!(silent.interarrival_jitter_us.is_none());
        assert!(silent.mouth_to_ear_ms.is_none());
    }
}
