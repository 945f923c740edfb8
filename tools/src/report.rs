//! The measurement report of `quaver jitter` and `quaver demo`: a human table, JSON, and an SVG
//! picture of the histograms.

use std::fmt::Write as _;
use std::path::PathBuf;

use hdrhistogram::Histogram;
use serde::Serialize;

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

/// The percentiles a report shows.
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
    /// Number of values recorded (0: nothing measured, and every quantile is 0).
    pub count: u64,
}

impl Quantiles {
    fn of_scaled(h: &Histogram<u64>, divisor: f64) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            p50: h.value_at_quantile(0.5) as f64 / divisor,
            p99: h.value_at_quantile(0.99) as f64 / divisor,
            p999: h.value_at_quantile(0.999) as f64 / divisor,
            max: h.max() as f64 / divisor,
            count: h.len(),
        }
    }

    /// From a histogram in nanoseconds, in microseconds.
    pub fn of_ns(h: &Histogram<u64>) -> Self {
        Self::of_scaled(h, 1_000.0)
    }

    /// From a histogram in microseconds, unchanged.
    pub fn of_scaled_us(h: &Histogram<u64>) -> Self {
        Self::of_scaled(h, 1.0)
    }

    /// From a histogram in microseconds, in milliseconds.
    pub fn of_us_as_ms(h: &Histogram<u64>) -> Self {
        Self::of_scaled(h, 1_000.0)
    }

    /// Many streams' percentiles combined conservatively: the median of their medians, and the
    /// worst stream's p99, p99.9 and maximum.
    fn combine(parts: impl Iterator<Item = crate::server::stats::Percentiles>) -> Self {
        let parts: Vec<_> = parts.filter(|p| p.count > 0).collect();
        if parts.is_empty() {
            return Self::default();
        }
        let mut medians: Vec<u64> = parts.iter().map(|p| p.p50).collect();
        medians.sort_unstable();
        Self {
            p50: medians[medians.len() / 2] as f64,
            p99: parts.iter().map(|p| p.p99).max().unwrap_or(0) as f64,
            p999: parts.iter().map(|p| p.p999).max().unwrap_or(0) as f64,
            max: parts.iter().map(|p| p.max).max().unwrap_or(0) as f64,
            count: parts.iter().map(|p| p.count).sum(),
        }
    }
}

/// The baseline sender's numbers from the same run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BaselineReport {
    /// RTP packets the baseline sender handed to the kernel.
    pub packets_sent: u64,
    /// Distinct packets the server received from it (duplicates not counted).
    pub packets_received: u64,
    /// Sequence numbers missing inside the ranges the server received, over its streams.
    pub lost: u64,
    /// Arrival at the server (kernel timestamp) against each stream's ideal 20 ms grid, in µs;
    /// the median of the streams' medians and the worst stream's tail.
    pub recv_lateness_us: Quantiles,
    /// RFC 3550 inter-arrival jitter at the server, in µs, combined over streams the same way.
    pub interarrival_jitter_us: Quantiles,
}

impl BaselineReport {
    /// The baseline's figures from the `sent` count and the server's statistics of the
    /// baseline's streams.
    pub fn from_streams(sent: u64, streams: &[&StreamStats]) -> Self {
        Self {
            packets_sent: sent,
            packets_received: streams.iter().map(|s| s.unique_packets).sum(),
            lost: streams.iter().map(|s| s.lost).sum(),
            recv_lateness_us: Quantiles::combine(streams.iter().map(|s| s.lateness_us)),
            interarrival_jitter_us: Quantiles::combine(streams.iter().map(|s| s.jitter_us)),
        }
    }
}

/// Everything a run measured. Lateness and jitter in µs, latency in ms.
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
    /// Distinct packets the server received from the engine (duplicates not counted).
    pub packets_received: u64,
    /// Sequence numbers the server never saw inside the ranges it received.
    pub lost: u64,
    /// Packets the server received more than once.
    pub duplicates: u64,
    /// Packets that reached the server after a later-numbered one.
    pub reordered: u64,
    /// Packets the server's Opus decoder rejected.
    pub decode_errors: u64,
    /// The DAVE (E2EE) protocol version every call negotiated (the lowest among them; 0 when
    /// some call runs without E2EE), from the engine.
    pub dave_protocol_version: u16,
    /// The MLS epoch of the first call's key in use, from the engine (0 without DAVE).
    pub dave_epoch: u64,
    /// DAVE frames the server's own group member decrypted before decoding.
    pub dave_frames: u64,
    /// DAVE frames the server could not decrypt (with working E2EE: none).
    pub dave_undecryptable: u64,
    /// When each packet's send returned, against its deadline, at the sender.
    pub send_lateness_us: Quantiles,
    /// Frames that reached the sender after their tick had passed.
    pub late_frames: u64,
    /// How late the mixer thread woke against its plan, and how long its ticks took.
    pub mixer_wake_lateness_us: Quantiles,
    /// Time the mixer spent on one tick (mixing and encoding every call's frame), in µs.
    pub mixer_tick_us: Quantiles,
    /// Ticks the mixer skipped because it could not run for over a frame.
    pub skipped_ticks: u64,
    /// Percent of the run's machine time the hypervisor gave to other guests (VM steal).
    pub steal_percent: f64,
    /// Arrival (kernel timestamp) against the stream's ideal 20 ms grid, at the server.
    pub recv_lateness_us: Quantiles,
    /// RFC 3550 inter-arrival jitter, at the server.
    pub interarrival_jitter_us: Quantiles,
    /// From the push into the engine to the arrival at a listening client (first call).
    pub latency_ms: Quantiles,
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
    /// Why the receiving side's figures are missing (set when the server is not in-process;
    /// the receive fields are then zero).
    pub receiver_note: Option<String>,
    /// What a second Quaver engine in the probe's channel heard through its receive path
    /// (in-process server only).
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
        let lost = self.lost + self.packets_sent.saturating_sub(self.packets_received);
        (lost > 0).then_some(lost)
    }

    /// Fills the receiving side's figures from the server's statistics of the engine's streams.
    pub fn fill_receiver(&mut self, streams: &[&StreamStats]) {
        self.packets_received = streams.iter().map(|s| s.unique_packets).sum();
        self.lost = streams.iter().map(|s| s.lost).sum();
        self.duplicates = streams.iter().map(|s| s.duplicates).sum();
        self.reordered = streams.iter().map(|s| s.reordered).sum();
        self.decode_errors = streams.iter().map(|s| s.decode_errors).sum();
        self.dave_frames = streams.iter().map(|s| s.dave_frames).sum();
        self.dave_undecryptable = streams.iter().map(|s| s.dave_undecryptable).sum();
        self.recv_lateness_us = Quantiles::combine(streams.iter().map(|s| s.lateness_us));
        self.interarrival_jitter_us = Quantiles::combine(streams.iter().map(|s| s.jitter_us));
    }

    /// What the run says about end-to-end encryption: the engine's side (version, epoch) and,
    /// when the server is in-process, whether it could decrypt what arrived.
    fn e2ee_line(&self, measured_at_receiver: bool) -> String {
        if self.dave_protocol_version == 0 {
            return "E2EE: none (DAVE not negotiated; transport encryption only)".into();
        }
        let mut line = format!(
            "E2EE: DAVE v{}, epoch {}",
            self.dave_protocol_version, self.dave_epoch
        );
        if measured_at_receiver {
            let _ = write!(
                line,
                ", {} frames decrypted by the server, {} undecryptable",
                self.dave_frames, self.dave_undecryptable
            );
        }
        line
    }

    /// The report as pretty-printed JSON (every field, units as the field names say).
    pub fn to_json(&self) -> String {
        // Invariant: the report is plain data (numbers, strings, paths) and always serialises.
        serde_json::to_string_pretty(self).expect("reports serialise")
    }

    /// A short table for people.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let row = |out: &mut String, name: &str, q: &Quantiles, unit: &str| {
            let _ = writeln!(
                out,
                "  {name:<28} p50 {:>8.1}  p99 {:>8.1}  p99.9 {:>8.1}  max {:>8.1} {unit}",
                q.p50, q.p99, q.p999, q.max
            );
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
        // Against a separate server, that server reports the receiving side itself.
        let measured_at_receiver = self.receiver_note.is_none();
        if measured_at_receiver {
            let _ = writeln!(
                out,
                "  packets sent {}, received {}, lost {}, duplicates {}, reordered {}, decode errors {}",
                self.packets_sent,
                self.packets_received,
                self.lost,
                self.duplicates,
                self.reordered,
                self.decode_errors
            );
        } else {
            let _ = writeln!(out, "  packets sent {}", self.packets_sent);
        }
        let _ = writeln!(out, "  {}", self.e2ee_line(measured_at_receiver));
        row(
            &mut out,
            "send lateness (sender)",
            &self.send_lateness_us,
            "µs",
        );
        row(
            &mut out,
            "mixer wake-up lateness",
            &self.mixer_wake_lateness_us,
            "µs",
        );
        row(&mut out, "mixer tick duration", &self.mixer_tick_us, "µs");
        if measured_at_receiver {
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
        }
        if let Some(heard) = &self.heard {
            let _ = writeln!(
                out,
                "  Quaver receiver: {} of {} frames played as audio ({:.2} %): lost {}, concealed {}, FEC {}, late {}, duplicates {}, undecryptable {}; its CPU {:.2} % (not in the figure below)",
                heard.frames_played,
                heard.frames_expected,
                heard.delivered_percent,
                heard.lost,
                heard.concealed,
                heard.fec_recovered,
                heard.late,
                heard.duplicates,
                heard.undecryptable,
                heard.cpu_percent
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
        if self.steal_percent >= 1.0 {
            let _ = writeln!(
                out,
                "  note: the hypervisor took {:.0} % of this VM's time during the run (steal); timing suffers for every program",
                self.steal_percent
            );
        }
        if let Some(baseline) = &self.baseline {
            let _ = writeln!(
                out,
                "baseline sender (sleep to each deadline, one send after another), same run: sent {}, received {}, lost {}",
                baseline.packets_sent, baseline.packets_received, baseline.lost
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
            if self.recv_lateness_us.p99 > 0.0 {
                let _ = writeln!(
                    out,
                    "  Quaver's receiver lateness: p50 {:.1}× and p99 {:.1}× lower than the baseline's",
                    baseline.recv_lateness_us.p50 / self.recv_lateness_us.p50.max(1.0),
                    baseline.recv_lateness_us.p99 / self.recv_lateness_us.p99.max(1.0)
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

    /// Bars of p50 / p99 / p99.9 / max per metric, on a log scale, as SVG.
    pub fn to_svg(&self) -> String {
        let mut metrics: Vec<(&str, Quantiles, &str)> = vec![
            ("send lateness, sender", self.send_lateness_us, "µs"),
            ("send lateness, receiver", self.recv_lateness_us, "µs"),
            ("inter-arrival jitter", self.interarrival_jitter_us, "µs"),
            (
                "latency push → listener",
                scale(self.latency_ms, 1_000.0),
                "µs",
            ),
        ];
        if let Some(baseline) = &self.baseline {
            metrics.push((
                "baseline lateness, receiver",
                baseline.recv_lateness_us,
                "µs",
            ));
            metrics.push(("baseline jitter", baseline.interarrival_jitter_us, "µs"));
        }
        let (width, row_height, left) = (900.0, 90.0, 230.0);
        let height = 60.0 + row_height * metrics.len() as f64;
        let max_log = 7.0; // 10 s in µs
        let x = |value: f64| left + (value.max(1.0).log10() / max_log) * (width - left - 40.0);
        let mut svg = String::new();
        let _ = writeln!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            svg,
            r#"<text x="10" y="20" font-size="15">quaver jitter — {} call(s), {:.0} s, {}</text>"#,
            self.calls,
            self.seconds,
            escape(&self.mode)
        );
        for decade in 0..=7 {
            let gx = x(10_f64.powi(decade));
            let label = [
                "1 µs", "10 µs", "100 µs", "1 ms", "10 ms", "100 ms", "1 s", "10 s",
            ][decade as usize];
            let _ = writeln!(
                svg,
                r##"<line x1="{gx:.1}" y1="35" x2="{gx:.1}" y2="{:.1}" stroke="#ddd"/>"##,
                height - 15.0
            );
            let _ = writeln!(
                svg,
                r##"<text x="{gx:.1}" y="{:.1}" fill="#666" text-anchor="middle">{label}</text>"##,
                height - 3.0
            );
        }
        let colours = [
            ("p50", "#4c78a8"),
            ("p99", "#f58518"),
            ("p99.9", "#e45756"),
            ("max", "#9d755d"),
        ];
        for (row, (name, q, _)) in metrics.iter().enumerate() {
            let top = 45.0 + row_height * row as f64;
            let _ = writeln!(
                svg,
                r#"<text x="10" y="{:.1}">{}</text>"#,
                top + 40.0,
                escape(name)
            );
            for (i, (label, colour)) in colours.iter().enumerate() {
                let value = [q.p50, q.p99, q.p999, q.max][i];
                let y = top + 8.0 + 18.0 * i as f64;
                let _ = writeln!(
                    svg,
                    r#"<rect x="{left}" y="{y:.1}" width="{:.1}" height="14" fill="{colour}"/>"#,
                    (x(value) - left).max(0.0)
                );
                let _ = writeln!(
                    svg,
                    r#"<text x="{:.1}" y="{:.1}">{label} {value:.0} µs</text>"#,
                    x(value) + 4.0,
                    y + 11.0
                );
            }
        }
        svg.push_str("</svg>\n");
        svg
    }
}

fn scale(q: Quantiles, factor: f64) -> Quantiles {
    Quantiles {
        p50: q.p50 * factor,
        p99: q.p99 * factor,
        p999: q.p999 * factor,
        max: q.max * factor,
        count: q.count,
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_that_lost_audio_says_so_and_only_when_it_was_measured() {
        let mut report = Report {
            packets_sent: 500,
            packets_received: 500,
            ..Report::default()
        };
        assert_eq!(report.audio_lost(), None);
        assert_eq!(finished(&report), crate::Finished::Completed);
        report.packets_received = 497;
        report.lost = 2;
        assert_eq!(report.audio_lost(), Some(5));
        assert_eq!(finished(&report), crate::Finished::AudioLost);
        // Interrupted runs and runs against another server's receiver report what they can.
        report.interrupted = true;
        assert_eq!(finished(&report), crate::Finished::Interrupted);
        report.interrupted = false;
        report.receiver_note = Some("remote".into());
        assert_eq!(report.audio_lost(), None);
    }
}
