//! The measurement report of `quaver jitter` and `quaver demo`: a human table, JSON, and an SVG
//! picture of the histograms.

use std::fmt::Write as _;
use std::path::PathBuf;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::baseline::BaselineKind;
use crate::server::StreamStats;

/// How a measuring run ended: interrupted, audio lost (said on stderr), or complete.
pub fn finished(report: &Report) -> crate::Finished {
    match report.audio_lost() {
        Some(lost) if report.finished() == crate::Finished::Completed => {
            eprintln!(
                "error: {lost} packet(s) never reached the server: audio was lost (see the report)"
            );
            crate::Finished::AudioLost
        }
        _ => report.finished(),
    }
}

/// A histogram for microsecond values up to a minute.
pub fn new_histogram() -> Histogram<u64> {
    // Invariant: constant, valid bounds.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// The percentiles a report shows. A figure that was not measured is no `Quantiles` at all
/// (`None`, `null` in JSON), never a row of zeros.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Quantiles {
    /// Median, in the unit the field holding these quantiles names (µs or ms).
    pub p50: f64,
    /// 99th percentile: one value in a hundred was higher.
    pub p99: f64,
    /// 99.9th percentile: one value in a thousand was higher.
    pub p999: f64,
    /// Largest value recorded.
    pub max: f64,
    /// Number of values recorded (at least 1).
    pub count: u64,
}

impl Quantiles {
    fn of_scaled(h: &Histogram<u64>, divisor: f64) -> Option<Self> {
        if h.is_empty() {
            return None;
        }
        Some(Self {
            p50: h.value_at_quantile(0.5) as f64 / divisor,
            p99: h.value_at_quantile(0.99) as f64 / divisor,
            p999: h.value_at_quantile(0.999) as f64 / divisor,
            max: h.max() as f64 / divisor,
            count: h.len(),
        })
    }

    /// From a histogram in nanoseconds, in microseconds; `None` when it is empty.
    pub fn of_ns(h: &Histogram<u64>) -> Option<Self> {
        Self::of_scaled(h, 1_000.0)
    }

    /// From a histogram in microseconds, unchanged; `None` when it is empty.
    pub fn of_scaled_us(h: &Histogram<u64>) -> Option<Self> {
        Self::of_scaled(h, 1.0)
    }

    /// From a histogram in microseconds, in milliseconds; `None` when it is empty.
    pub fn of_us_as_ms(h: &Histogram<u64>) -> Option<Self> {
        Self::of_scaled(h, 1_000.0)
    }

    /// Many streams' percentiles combined conservatively: the median of their medians, and the
    /// worst stream's p99, p99.9 and maximum; `None` when no stream measured anything.
    fn combine(
        parts: impl Iterator<Item = Option<crate::server::stats::Percentiles>>,
    ) -> Option<Self> {
        let parts: Vec<_> = parts.flatten().filter(|p| p.count > 0).collect();
        if parts.is_empty() {
            return None;
        }
        let mut medians: Vec<f64> = parts.iter().map(|p| p.p50).collect();
        medians.sort_unstable_by(f64::total_cmp);
        let worst = |of: fn(&crate::server::stats::Percentiles) -> f64| {
            parts.iter().map(of).fold(0.0, f64::max)
        };
        Some(Self {
            p50: medians[medians.len() / 2],
            p99: worst(|p| p.p99),
            p999: worst(|p| p.p999),
            max: worst(|p| p.max),
            count: parts.iter().map(|p| p.count).sum(),
        })
    }

    /// The same quantiles times `factor` (a change of unit).
    pub fn scaled(self, factor: f64) -> Self {
        Self {
            p50: self.p50 * factor,
            p99: self.p99 * factor,
            p999: self.p999 * factor,
            max: self.max * factor,
            count: self.count,
        }
    }
}

/// The baseline sender's numbers from the same run (the baseline needs the in-process
/// server, so its receiving side is always measured).
#[derive(Debug, Clone, Serialize)]
pub struct BaselineReport {
    /// Which baseline sender ran.
    pub sender: BaselineKind,
    /// RTP packets the baseline sender handed to the kernel.
    pub packets_sent: u64,
    /// Distinct packets the server received from it (duplicates not counted).
    pub packets_received: u64,
    /// Sequence numbers missing inside the ranges the server received, over its streams.
    pub lost: u64,
    /// Arrival at the server (kernel timestamp) against each stream's ideal 20 ms grid, in µs;
    /// the median of the streams' medians and the worst stream's tail.
    pub recv_lateness_us: Option<Quantiles>,
    /// The p99 receiver lateness of the median stream, in µs.
    pub recv_lateness_p99_median_stream_us: Option<f64>,
    /// RFC 3550 inter-arrival jitter at the server, in µs, combined over streams the same way.
    pub interarrival_jitter_us: Option<Quantiles>,
}

impl BaselineReport {
    /// The baseline's figures from the `sent` count and the server's statistics of the
    /// baseline's streams.
    pub fn from_streams(sender: BaselineKind, sent: u64, streams: &[&StreamStats]) -> Self {
        Self {
            sender,
            packets_sent: sent,
            packets_received: streams.iter().map(|s| s.unique_packets).sum(),
            lost: streams.iter().map(|s| s.lost).sum(),
            recv_lateness_us: Quantiles::combine(streams.iter().map(|s| s.lateness_us)),
            recv_lateness_p99_median_stream_us: median_stream_p99(streams),
            interarrival_jitter_us: Quantiles::combine(streams.iter().map(|s| s.jitter_us)),
        }
    }
}

/// The p99 lateness of the median stream among those that measured any.
fn median_stream_p99(streams: &[&StreamStats]) -> Option<f64> {
    let mut p99s: Vec<f64> = streams
        .iter()
        .filter_map(|s| s.lateness_us)
        .filter(|l| l.count > 0)
        .map(|l| l.p99)
        .collect();
    p99s.sort_unstable_by(f64::total_cmp);
    p99s.get(p99s.len() / 2).copied()
}

/// Everything a run measured. Lateness and jitter in µs, latency in ms.
///
/// A figure the run did not measure is `None` (`null` in JSON, no row in the table), never 0:
/// against a separate `quaver serve` nothing here sees what that server received, so the
/// server-side fields are `None` and [`Report::heard`] (the tool's own listener in the call)
/// tells what arrived.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Concurrent calls the engine streamed to (the listening probe and the baseline not
    /// counted).
    pub calls: usize,
    /// How long the calls streamed.
    pub seconds: f64,
    /// How long they were to stream.
    pub planned_seconds: f64,
    /// Ctrl-C (or SIGTERM) stopped the run before `planned_seconds`.
    pub interrupted: bool,
    /// What fed the engine: pre-encoded Opus passed through, a PCM source mixed and encoded,
    /// or media files.
    pub mode: String,
    /// The engine's send path and pacing mode, as it describes them.
    pub sender: String,
    /// RTP packets the engine's sender sent, over all calls.
    pub packets_sent: u64,
    /// Distinct packets the server received from the engine (duplicates not counted); `None`
    /// when the server is another process.
    pub packets_received: Option<u64>,
    /// Sequence numbers the server never saw inside the ranges it received.
    pub lost: Option<u64>,
    /// Packets the server received more than once.
    pub duplicates: Option<u64>,
    /// Packets that reached the server after a later-numbered one.
    pub reordered: Option<u64>,
    /// Packets the server's Opus decoder rejected (`None` when it did not decode: over 16
    /// calls without a recording, or another process).
    pub decode_errors: Option<u64>,
    /// The DAVE (E2EE) protocol version every call negotiated (the lowest among them; 0 when
    /// some call runs without E2EE), from the engine; `None` if a call never said.
    pub dave_protocol_version: Option<u16>,
    /// The MLS epoch of the first call's key in use, from the engine (`None` without DAVE).
    pub dave_epoch: Option<u64>,
    /// DAVE frames the server's own group member decrypted before decoding.
    pub dave_frames: Option<u64>,
    /// DAVE frames the server could not decrypt (with working E2EE: none).
    pub dave_undecryptable: Option<u64>,
    /// When each packet's send returned, against its deadline, at the sender.
    pub send_lateness_us: Option<Quantiles>,
    /// When the sender's pacer returned (sleep, then spin) against the deadline of the group it
    /// woke for, before any send: the pacing alone, once per wake-up with packets.
    pub send_wake_us: Option<Quantiles>,
    /// Frames that reached the sender after their tick had passed.
    pub late_frames: u64,
    /// How late the mixer thread woke against its plan, and how long its ticks took.
    pub mixer_wake_lateness_us: Option<Quantiles>,
    /// Time the mixer spent on one tick (mixing and encoding every call's frame), in µs.
    pub mixer_tick_us: Option<Quantiles>,
    /// Ticks the mixer skipped because it could not run for over a frame.
    pub skipped_ticks: u64,
    /// Opus complexity steps the mixer took down under overload (one per call per step;
    /// `EngineConfig::adaptive_complexity`), and back up.
    pub complexity_steps_down: u64,
    /// See `complexity_steps_down`.
    pub complexity_steps_up: u64,
    /// Calls encoding below their configured complexity at the end of the run.
    pub calls_lowered: u64,
    /// Frames encoded at the lowest complexity because they would otherwise have been late
    /// (many calls starting in one tick, a tick that started late).
    pub frames_rushed: u64,
    /// Percent of the run's machine time the hypervisor gave to other guests (VM steal);
    /// `None` where `/proc/stat` does not say.
    pub steal_percent: Option<f64>,
    /// Arrival (kernel timestamp) against the stream's ideal 20 ms grid, at the server: the
    /// median of the streams' medians, and the worst stream's tail.
    pub recv_lateness_us: Option<Quantiles>,
    /// The median over the streams of each stream's p99 arrival lateness, in µs: the tail a
    /// typical call sees, beside `recv_lateness_us.p99`, the worst call's.
    pub recv_lateness_p99_median_stream_us: Option<f64>,
    /// RFC 3550 inter-arrival jitter, at the server (to the ns: a good run jitters by µs).
    pub interarrival_jitter_us: Option<Quantiles>,
    /// From the push into the engine to the arrival at a listening client (first call).
    pub latency_ms: Option<Quantiles>,
    /// From the first push to the first packet at the listening client.
    pub first_packet_ms: Option<f64>,
    /// Voice connections the engine resumed during the run (each a dropped voice websocket).
    pub resumes: u64,
    /// Resume attempts (each dropped voice websocket makes at least one; more while the
    /// server stays away).
    pub resume_attempts: u64,
    /// Voice sessions lost and identified afresh (a new SSRC and key; packets in between are
    /// lost).
    pub reconnects: u64,
    /// CPU of Quaver's threads, in percent of one core.
    pub cpu_percent: f64,
    /// `cpu_percent` divided by the number of calls.
    pub cpu_percent_per_call: f64,
    /// The naive sender run alongside for comparison, when it was.
    pub baseline: Option<BaselineReport>,
    /// WAV files the in-process server recorded of the engine's streams.
    pub recordings: Vec<PathBuf>,
    /// Why the server's figures are missing or cannot be trusted (another process; the
    /// in-process server could not keep up).
    pub receiver_note: Option<String>,
    /// What a second Quaver engine in the probe's channel heard through its receive path
    /// (against the in-process server and a separate one alike).
    pub heard: Option<crate::hearing::HeardReport>,
}

impl Report {
    /// Whether the run did all it set out to do.
    pub fn finished(&self) -> crate::Finished {
        if self.interrupted {
            crate::Finished::Interrupted
        } else {
            crate::Finished::Completed
        }
    }

    /// Packets the server never got from the engine (sequence gaps, and sent packets that never
    /// arrived), when the server is in-process to say so; `None` when nothing was lost or the
    /// receiving side was not measured. A run that lost audio is a failed run.
    pub fn audio_lost(&self) -> Option<u64> {
        if self.receiver_note.is_some() || self.interrupted {
            return None;
        }
        let received = self.packets_received?;
        let lost = self.lost.unwrap_or(0) + self.packets_sent.saturating_sub(received);
        (lost > 0).then_some(lost)
    }

    /// Fills the receiving side's figures from the server's statistics of the engine's streams.
    pub fn fill_receiver(&mut self, streams: &[&StreamStats]) {
        self.packets_received = Some(streams.iter().map(|s| s.unique_packets).sum());
        self.lost = Some(streams.iter().map(|s| s.lost).sum());
        self.duplicates = Some(streams.iter().map(|s| s.duplicates).sum());
        self.reordered = Some(streams.iter().map(|s| s.reordered).sum());
        // Unknown if the server decoded none of them, or only some.
        self.decode_errors = streams.iter().map(|s| s.decode_errors).sum();
        self.dave_frames = Some(streams.iter().map(|s| s.dave_frames).sum());
        self.dave_undecryptable = Some(streams.iter().map(|s| s.dave_undecryptable).sum());
        self.recv_lateness_us = Quantiles::combine(streams.iter().map(|s| s.lateness_us));
        self.recv_lateness_p99_median_stream_us = median_stream_p99(streams);
        self.interarrival_jitter_us = Quantiles::combine(streams.iter().map(|s| s.jitter_us));
    }

    /// What the run says about end-to-end encryption: the engine's side (version, epoch) and,
    /// when the server is in-process, whether it could decrypt what arrived.
    fn e2ee_line(&self) -> String {
        let version = match self.dave_protocol_version {
            None => return "E2EE: unknown (a call never reported its state)".into(),
            Some(0) => {
                return "E2EE: none (DAVE not negotiated; transport encryption only)".into();
            }
            Some(version) => version,
        };
        let mut line = format!("E2EE: DAVE v{version}");
        if let Some(epoch) = self.dave_epoch {
            let _ = write!(line, ", epoch {epoch}");
        }
        if let (Some(frames), Some(undecryptable)) = (self.dave_frames, self.dave_undecryptable) {
            let _ = write!(
                line,
                ", {frames} frames decrypted by the server, {undecryptable} undecryptable"
            );
        }
        line
    }

    /// The report as pretty-printed JSON (every field, units as the field names say; `null`
    /// for what was not measured).
    pub fn to_json(&self) -> String {
        // Invariant: the report is plain data (numbers, strings, paths) and always serialises.
        serde_json::to_string_pretty(self).expect("reports serialise")
    }

    /// A short table for people: only what was measured.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let row = |out: &mut String, name: &str, q: &Option<Quantiles>, unit: &str| {
            if let Some(q) = q {
                let _ = writeln!(
                    out,
                    "  {name:<28} p50 {:>8.1}  p99 {:>8.1}  p99.9 {:>8.1}  max {:>8.1} {unit}",
                    q.p50, q.p99, q.p999, q.max
                );
            }
        };
        let _ = writeln!(
            out,
            "{} call(s), {:.1} s, {} — sender: {}",
            self.calls, self.seconds, self.mode, self.sender
        );
        if self.interrupted {
            let _ = writeln!(
                out,
                "  interrupted after {:.1} s of {} s: the numbers cover what ran",
                self.seconds, self.planned_seconds
            );
        }
        let mut packets = format!("  packets sent {}", self.packets_sent);
        for (name, value) in [
            ("received", self.packets_received),
            ("lost", self.lost),
            ("duplicates", self.duplicates),
            ("reordered", self.reordered),
            ("decode errors", self.decode_errors),
        ] {
            if let Some(value) = value {
                let _ = write!(packets, ", {name} {value}");
            }
        }
        let _ = writeln!(out, "{packets}");
        let _ = writeln!(out, "  {}", self.e2ee_line());
        row(
            &mut out,
            "send lateness (sender)",
            &self.send_lateness_us,
            "µs",
        );
        row(
            &mut out,
            "sender wake-up lateness",
            &self.send_wake_us,
            "µs",
        );
        row(
            &mut out,
            "mixer wake-up lateness",
            &self.mixer_wake_lateness_us,
            "µs",
        );
        row(&mut out, "mixer tick duration", &self.mixer_tick_us, "µs");
        row(
            &mut out,
            "send lateness (receiver)",
            &self.recv_lateness_us,
            "µs",
        );
        row(
            &mut out,
            "inter-arrival jitter",
            &self.interarrival_jitter_us,
            "µs",
        );
        row(&mut out, "latency push → listener", &self.latency_ms, "ms");
        if let Some(heard) = &self.heard {
            let delivered = heard
                .delivered_percent
                .map_or_else(String::new, |p| format!(" ({p:.2} %)"));
            let _ = writeln!(
                out,
                "  Quaver receiver: {} of {} frames played as audio{delivered}: lost {}, concealed {}, FEC {}, late {}, duplicates {}, undecryptable {}; its CPU {:.2} % (not in the figure below)",
                heard.frames_played,
                heard.frames_expected,
                heard.lost,
                heard.concealed,
                heard.fec_recovered,
                heard.late,
                heard.duplicates,
                heard.undecryptable,
                heard.cpu_percent
            );
            if let Some(all) = &heard.all_streams {
                let delivered = all
                    .delivered_percent
                    .map_or_else(String::new, |p| format!(" ({p:.2} %)"));
                let _ = writeln!(
                    out,
                    "  Quaver receiver, all {} calls heard ({} playing): {} of {} frames played as audio{delivered}: lost {}, concealed {}, FEC {}, late {}, undecryptable {}, ring overflows {}",
                    all.streams,
                    all.streams_playing,
                    all.frames_played,
                    all.frames_expected,
                    all.lost,
                    all.concealed,
                    all.fec_recovered,
                    all.late,
                    all.undecryptable,
                    all.ring_overflows
                );
                row(
                    &mut out,
                    "Quaver rx buffer delay, avg per call",
                    &all.buffer_delay_avg_ms,
                    "ms",
                );
            }
            row(
                &mut out,
                "Quaver rx jitter (RFC 3550)",
                &heard.interarrival_jitter_us,
                "µs",
            );
            row(
                &mut out,
                "Quaver rx buffer delay",
                &heard.buffer_delay_ms,
                "ms",
            );
            row(
                &mut out,
                "Quaver rx mouth to ear",
                &heard.mouth_to_ear_ms,
                "ms",
            );
        }
        if let Some(first) = self.first_packet_ms {
            let _ = writeln!(
                out,
                "  first packet at the listener {first:.1} ms after the first push"
            );
        }
        let _ = writeln!(
            out,
            "  CPU {:.2} % of one core ({:.3} % per call); resumes {} of {} attempts, reconnects {}; late frames {}; skipped ticks {}",
            self.cpu_percent,
            self.cpu_percent_per_call,
            self.resumes,
            self.resume_attempts,
            self.reconnects,
            self.late_frames,
            self.skipped_ticks
        );
        if self.complexity_steps_down > 0 || self.frames_rushed > 0 {
            let _ = writeln!(
                out,
                "  overload: Opus complexity stepped down {} time(s) and up {}; {} call(s) below full complexity at the end; {} frame(s) rushed at the lowest complexity to be on time",
                self.complexity_steps_down,
                self.complexity_steps_up,
                self.calls_lowered,
                self.frames_rushed
            );
        }
        if let Some(steal) = self.steal_percent.filter(|&s| s >= 1.0) {
            let _ = writeln!(
                out,
                "  note: the hypervisor took {steal:.0} % of this VM's time during the run (steal); timing suffers for every program"
            );
        }
        if let Some(baseline) = &self.baseline {
            let _ = writeln!(
                out,
                "{} ({}), same run: sent {}, received {}, lost {}",
                if baseline.sender == BaselineKind::Floor {
                    "the machine's floor"
                } else {
                    "baseline sender"
                },
                baseline.sender.describe(),
                baseline.packets_sent,
                baseline.packets_received,
                baseline.lost
            );
            row(
                &mut out,
                "send lateness (receiver)",
                &baseline.recv_lateness_us,
                "µs",
            );
            row(
                &mut out,
                "inter-arrival jitter",
                &baseline.interarrival_jitter_us,
                "µs",
            );
            if baseline.sender == BaselineKind::Floor {
                if let (Some(ours), Some(floor)) =
                    (self.recv_lateness_us, baseline.recv_lateness_us)
                {
                    let median =
                        |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.0}"));
                    let _ = writeln!(
                        out,
                        "  receiver lateness p50, p99 of the median stream / worst: Quaver {:.0}, {} / {:.0} µs; the floor {:.0}, {} / {:.0} µs",
                        ours.p50,
                        median(self.recv_lateness_p99_median_stream_us),
                        ours.p99,
                        floor.p50,
                        median(baseline.recv_lateness_p99_median_stream_us),
                        floor.p99
                    );
                }
            } else if let (Some(ours), Some(theirs)) =
                (self.recv_lateness_us, baseline.recv_lateness_us)
                && ours.p99 > 0.0
            {
                let _ = writeln!(
                    out,
                    "  Quaver's receiver lateness: p50 {:.1}× and p99 {:.1}× lower than the baseline's",
                    theirs.p50 / ours.p50.max(1.0),
                    theirs.p99 / ours.p99.max(1.0)
                );
            }
        }
        if let Some(note) = &self.receiver_note {
            let _ = writeln!(out, "  ({note})");
        }
        for path in &self.recordings {
            let _ = writeln!(out, "  recording: {}", path.display());
        }
        out
    }

    /// The percentiles of every timing figure, Quaver's beside the baseline's, as SVG.
    pub fn to_svg(&self) -> String {
        crate::chart::svg(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_that_lost_audio_says_so_and_only_when_it_was_measured() {
        let mut report = Report {
            packets_sent: 500,
            packets_received: Some(500),
            ..Report::default()
        };
        assert_eq!(report.audio_lost(), None);
        assert_eq!(finished(&report), crate::Finished::Completed);
        report.packets_received = Some(497);
        report.lost = Some(2);
        assert_eq!(report.audio_lost(), Some(5));
        assert_eq!(finished(&report), crate::Finished::AudioLost);
        // Interrupted runs and runs against another server's receiver report what they can.
        report.interrupted = true;
        assert_eq!(finished(&report), crate::Finished::Interrupted);
        report.interrupted = false;
        report.receiver_note = Some("overloaded".into());
        assert_eq!(report.audio_lost(), None);
        // Not measured (another process's server) is not "nothing lost" either.
        report.receiver_note = None;
        report.packets_received = None;
        report.lost = None;
        assert_eq!(report.audio_lost(), None);
    }

    /// Against a separate server nothing sees what it received: those figures are absent, not
    /// zero, in the table and in JSON.
    #[test]
    fn figures_that_were_not_measured_are_null_and_not_shown() {
        let report = Report {
            calls: 1,
            packets_sent: 250,
            dave_protocol_version: Some(1),
            dave_epoch: Some(1),
            ..Report::default()
        };
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        for key in [
            "packets_received",
            "lost",
            "duplicates",
            "reordered",
            "decode_errors",
            "dave_frames",
            "recv_lateness_us",
            "interarrival_jitter_us",
            "latency_ms",
            "send_lateness_us",
            "send_wake_us",
            "steal_percent",
        ] {
            assert!(json[key].is_null(), "{key} is {}", json[key]);
        }
        assert_eq!(json["packets_sent"], 250);
        let table = report.to_table();
        for absent in [
            "received",
            "lost",
            "jitter",
            "latency",
            "send lateness",
            "decrypted",
        ] {
            assert!(!table.contains(absent), "{absent:?} shown: {table}");
        }
        assert!(table.contains("packets sent 250"), "{table}");
    }
}
