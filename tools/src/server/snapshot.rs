//! The public measurement snapshots ([`ServerStats`] and what it holds) and their human report.

use std::path::PathBuf;

use super::dave::DaveCallStats;
use super::stats::Percentiles;

/// Server-wide counters of bad input and notable events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    /// Websocket connections accepted (both gateways).
    pub ws_connections: u64,
    /// Voice Identify handled.
    pub identifies: u64,
    /// Voice Resume handled successfully.
    pub resumes: u64,
    /// Voice Resume rejected (4006).
    pub failed_resumes: u64,
    /// Text frames that were not valid JSON payloads (closed with 4002).
    pub bad_json: u64,
    /// Unknown or misdirected opcodes (closed with 4001).
    pub unknown_opcodes: u64,
    /// Frames over the size limit.
    pub oversized_frames: u64,
    /// Binary frames from clients (DAVE ops 26 and 28, or garbage).
    pub binary_frames: u64,
    /// Closes sent by the server, any code.
    pub closes_sent: u64,
    /// Voice websockets closed with 4009 for missing heartbeats.
    pub heartbeat_timeouts: u64,
    /// Websockets dropped on purpose (fault injection).
    pub injected_drops: u64,
    /// IP discovery requests answered.
    pub discovery_requests: u64,
    /// Datagrams that were neither discovery, RTP, RTCP nor keepalive.
    pub garbage_datagrams: u64,
    /// RTP for an SSRC no session owns (or whose session has no key yet).
    pub unknown_ssrc: u64,
    /// RTP that failed authentication or decryption.
    pub auth_failures: u64,
    /// RTP with a broken header or non-Opus payload type.
    pub malformed_rtp: u64,
    /// RTCP packets (ignored).
    pub rtcp: u64,
    /// Keepalive datagrams.
    pub keepalives: u64,
    /// Packets forwarded to receivers (after fault injection).
    pub forwarded: u64,
    /// Forwarded packets dropped / duplicated / reordered by fault injection.
    pub injected_udp_loss: u64,
    /// See `injected_udp_loss`.
    pub injected_udp_duplicates: u64,
    /// See `injected_udp_loss`.
    pub injected_udp_reorders: u64,
    /// RTP packets whose arrival time is a kernel receive timestamp (SO_TIMESTAMPNS); the rest
    /// fell back to reading CLOCK_REALTIME on receipt.
    pub kernel_timestamps: u64,
    /// DAVE key packages (op 26) accepted.
    pub dave_key_packages: u64,
    /// DAVE commits (op 28) accepted.
    pub dave_commits: u64,
    /// DAVE commits ignored: stale, beaten by another member's, or not the expected proposals.
    pub dave_ignored_commits: u64,
    /// Undecodable DAVE binary frames (closed with 4002).
    pub dave_bad_frames: u64,
    /// Datagrams the kernel dropped at the UDP socket because this server did not read them in
    /// time (SO_RXQ_OVFL): the server, not the network, lost them. Decoding costs tens of µs
    /// per packet; `--no-decode` (or fewer streams) keeps up.
    pub kernel_drops: u64,
    /// Websocket connections refused because [`crate::server::ServerConfig::max_connections`]
    /// were open.
    pub refused_connections: u64,
}

impl Counters {
    /// One line telling what the server itself lost, if anything, and what to do about it.
    pub fn overload_note(&self) -> Option<String> {
        let mut notes = Vec::new();
        if self.kernel_drops > 0 {
            notes.push(format!(
                "the kernel dropped {} datagrams at the server's UDP socket: the server could not \
                 keep up (loss counted against the streams is the server's, not the network's); \
                 run it with --no-decode or fewer streams",
                self.kernel_drops
            ));
        }
        if self.refused_connections > 0 {
            notes.push(format!(
                "{} websocket connections were refused: the connection limit was reached",
                self.refused_connections
            ));
        }
        (!notes.is_empty()).then(|| notes.join("; "))
    }
}

/// Receive statistics of one SSRC.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct StreamStats {
    /// The sender's SSRC.
    pub ssrc: u32,
    /// Its user ID.
    pub user_id: u64,
    /// Its guild.
    pub guild_id: u64,
    /// Its voice channel.
    pub channel_id: u64,
    /// Packets accepted (decrypted), duplicates included.
    pub packets: u64,
    /// Distinct packets.
    pub unique_packets: u64,
    /// Payload bytes (after decryption).
    pub bytes: u64,
    /// Sequence numbers never seen within the range received.
    pub lost: u64,
    /// Packets that arrived after a later one.
    pub reordered: u64,
    /// Packets seen twice.
    pub duplicates: u64,
    /// Consecutive packets whose timestamps did not differ by 960.
    pub timestamp_step_errors: u64,
    /// Opus packets that failed to decode (`None`: the server did not decode, as with
    /// `--no-decode`).
    pub decode_errors: Option<u64>,
    /// Samples per channel decoded (48 kHz).
    pub decoded_samples: Option<u64>,
    /// Arrival minus ideal arrival on the sender's 20 ms grid, anchored at its best packet (µs);
    /// `None` before an in-order packet arrived.
    pub lateness_us: Option<Percentiles>,
    /// RFC 3550 inter-arrival jitter after each packet (µs, measured to the ns).
    /// `None` before two in-order packets arrived.
    pub jitter_us: Option<Percentiles>,
    /// The WAV recording, when recording.
    pub recording: Option<PathBuf>,
    /// DAVE (E2EE) frames the server's observer decrypted: every frame when the server
    /// decodes, one in 50 per stream when it does not.
    pub dave_frames: u64,
    /// DAVE frames it could not decrypt (not decoded, not counted as decode errors).
    pub dave_undecryptable: u64,
}

/// The streams of one call (the sessions of one voice channel).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CallStats {
    /// Guild ID.
    pub guild_id: u64,
    /// Voice channel ID.
    pub channel_id: u64,
    /// Whether every session of the call has ended.
    pub ended: bool,
    /// One entry per SSRC that sent audio.
    pub streams: Vec<StreamStats>,
    /// The call's DAVE group, when DAVE was negotiated.
    pub dave: Option<DaveCallStats>,
}

/// A snapshot of everything the server measured.
#[derive(Clone, Debug, PartialEq, Default, serde::Serialize)]
pub struct ServerStats {
    /// Per call, ordered by guild and channel ID.
    pub calls: Vec<CallStats>,
    /// Counters.
    pub counters: Counters,
}

impl ServerStats {
    /// The stream of `ssrc`, if it sent anything.
    pub fn stream(&self, ssrc: u32) -> Option<&StreamStats> {
        self.calls
            .iter()
            .flat_map(|c| c.streams.iter())
            .find(|s| s.ssrc == ssrc)
    }
}

impl std::fmt::Display for CallStats {
    /// A short human report: one line for the call, one per stream.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "call in guild {} channel {}{}: {} stream(s)",
            self.guild_id,
            self.channel_id,
            if self.ended { " ended" } else { "" },
            self.streams.len()
        )?;
        if let Some(d) = &self.dave {
            writeln!(
                f,
                "  E2EE: DAVE v{}, epoch {}, {} members (observer at epoch {}), {} commits, \
                 {} ignored, {} transitions, {} resets, {} undecryptable",
                d.protocol_version,
                d.epoch,
                d.members,
                d.observer_epoch,
                d.commits,
                d.ignored_commits,
                d.transitions,
                d.resets,
                self.streams
                    .iter()
                    .map(|s| s.dave_undecryptable)
                    .sum::<u64>()
            )?;
        }
        for s in &self.streams {
            // What was not measured (not decoded, too few packets) is left out, not shown as 0.
            let decoding = match (s.decode_errors, s.decoded_samples) {
                (Some(errors), Some(samples)) => format!(
                    ", {errors} decode errors, {:.2} s decoded",
                    samples as f64 / 48_000.0
                ),
                _ => String::new(),
            };
            writeln!(
                f,
                "  ssrc {} (user {}): {} packets, {} lost, {} reordered, {} duplicates, \
                 {} timestamp-step errors{decoding}",
                s.ssrc,
                s.user_id,
                s.packets,
                s.lost,
                s.reordered,
                s.duplicates,
                s.timestamp_step_errors,
            )?;
            let mut timing = Vec::new();
            if let Some(l) = s.lateness_us {
                timing.push(format!(
                    "lateness µs p50 {:.0} p99 {:.0} p99.9 {:.0} max {:.0}",
                    l.p50, l.p99, l.p999, l.max
                ));
            }
            if let Some(j) = s.jitter_us {
                timing.push(format!(
                    "jitter µs p50 {:.1} p99 {:.1} max {:.1}",
                    j.p50, j.p99, j.max
                ));
            }
            if !timing.is_empty() {
                writeln!(f, "    {}", timing.join("; "))?;
            }
            if s.dave_frames + s.dave_undecryptable > 0 {
                writeln!(
                    f,
                    "    E2EE: {} DAVE frames decrypted, {} undecryptable",
                    s.dave_frames, s.dave_undecryptable
                )?;
            }
            if let Some(p) = &s.recording {
                writeln!(f, "    recording: {}", p.display())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `serve --no-decode` decodes nothing, and one packet has no jitter: those figures are
    /// left out of the report (`null` in JSON), not shown as 0.
    #[test]
    fn a_stream_report_leaves_out_what_was_not_measured() {
        let stream = StreamStats {
            ssrc: 7,
            user_id: 1,
            guild_id: 2,
            channel_id: 3,
            packets: 1,
            unique_packets: 1,
            bytes: 100,
            lost: 0,
            reordered: 0,
            duplicates: 0,
            timestamp_step_errors: 0,
            decode_errors: None,
            decoded_samples: None,
            lateness_us: Some(Percentiles {
                count: 1,
                ..Percentiles::default()
            }),
            jitter_us: None,
            recording: None,
            dave_frames: 0,
            dave_undecryptable: 0,
        };
        let call = CallStats {
            guild_id: 2,
            channel_id: 3,
            ended: true,
            streams: vec![stream],
            dave: None,
        };
        let shown = call.to_string();
        assert!(shown.contains("1 packets, 0 lost"), "{shown}");
        assert!(shown.contains("lateness µs p50 0"), "{shown}");
        for absent in ["decode", "jitter"] {
            assert!(!shown.contains(absent), "{absent:?} shown: {shown}");
        }
        let json: serde_json::Value = serde_json::to_value(&call).unwrap();
        let s = &json["streams"][0];
        for key in ["decode_errors", "decoded_samples", "jitter_us"] {
            assert!(s[key].is_null(), "{key}: {json}");
        }
    }
}
