//! `quaver serve`: a local Discord-compatible voice server (PROTOCOL.md, server side), usable as
//! a library so tests, `quaver demo` and `quaver jitter` can start it in-process.
//!
//! * A main-gateway subset ([`Server::main_gateway_url`]): Hello, Identify → READY, heartbeats,
//!   Resume, op 4 Update Voice State → VOICE_STATE_UPDATE + VOICE_SERVER_UPDATE.
//! * A voice gateway, v8 and v4–v7 each with its own framing ([`Server::voice_endpoint`]):
//!   Hello, Ready, Select Protocol → Session Description with a fresh key, heartbeat ACKs,
//!   numbered messages with a replay buffer for Resume (v8), Speaking relays, Clients Connect /
//!   Client Disconnect, close codes.
//! * A UDP voice server ([`Server::udp_addr`]): IP discovery, transport decryption, RTP checks,
//!   Opus decode, optional WAV recording per SSRC, forwarding to the other participants of the
//!   channel (re-sealed with each receiver's key), and receive measurements with kernel
//!   timestamps ([`Server::stats`]).
//!
//! Everything binds 127.0.0.1 by default. One thread per websocket, one UDP thread: this is a
//! test instrument, not a production SFU.
//!
//! # Details a client may notice
//!
//! * Both gateways speak TLS by default, with a certificate signed by a CA generated at start
//!   ([`Server::ca_certificate_pem`]; `quaver serve --cert-out FILE` writes it). The main
//!   gateway URL is `wss://host:port`, and VOICE_SERVER_UPDATE's `endpoint` is a bare
//!   `host:port` that clients dial as `wss://host:port/?v=8`, exactly as with Discord.
//!   [`Server::control_config`] hands Quaver's own client a configuration that trusts the CA.
//!   [`ServerConfig::tls`] `false` (`quaver serve --plain`) is a debugging mode Discord has no
//!   equivalent of: plain `ws://`, and the endpoint is sent as `ws://host:port` because a bare
//!   endpoint means TLS to every client.
//! * The voice gateway serves `?v=4` to `?v=8`; anything else (or no `v`) is refused with HTTP
//!   400. v8: every server message except Hello, Heartbeat ACK and Resumed carries `seq` and is
//!   kept for Resume ([`ServerConfig::replay_buffer`]); a `seq_ack` the buffer no longer covers,
//!   an unknown session or a wrong token close with 4006; heartbeats are `{t, seq_ack}`, ACKs
//!   `{t}`; server binary frames start with a u16 seq. v4–v7 (songbird 0.6 uses v4): no `seq`
//!   anywhere, heartbeat and ACK carry the bare nonce (`{"op":3,"d":n}` → `{"op":6,"d":n}`),
//!   binary frames start with the opcode, and Resume replays nothing (there is no `seq_ack`).
//!   Heartbeats are read in either form under every version.
//! * A call is a voice channel: sessions hear each other, get Clients Connect / Client
//!   Disconnect and Speaking, only within their (guild, channel). The channel comes from the
//!   credentials op 4 issued; a session that identifies with credentials the server did not
//!   issue is in channel 0 of its guild. Op 4 naming another channel ends the user's voice
//!   session in the old one (its socket closes with 4014, as Discord does on a move), and the
//!   client identifies again with the new VOICE_SERVER_UPDATE.
//! * Before a receiver gets any packet of an SSRC, the server has written an op 5 Speaking
//!   `{user_id, ssrc, speaking}` for it on that receiver's websocket: the relayed op 5 of the
//!   sender, the ones sent to a newcomer, or, for a sender that never sent op 5, one the
//!   server makes up at its first packet (flags as last sent, else microphone). Packets that
//!   arrive in between are held back, then forwarded in order.
//! * A session ends when its client closes with 1000/1001, leaves with op 4, Identifies again,
//!   or stays away longer than [`ServerConfig::resume_window`]; the last one to end reports the
//!   call ([`ServerEvent::CallEnded`], per channel).
//!
//! # Measurements ([`StreamStats`])
//!
//! Arrival times are kernel receive timestamps (SO_TIMESTAMPNS). Lateness compares each
//! in-order packet with its ideal arrival on the sender's 20 ms grid, `first_arrival +
//! (ts − first_ts) / 48 kHz`, with the grid re-anchored at the stretch's earliest packet so the
//! best packet has lateness 0 (a stretch ends after 500 ms without packets). Jitter is RFC 3550
//! §6.4.1. Loss is sequence numbers never seen inside the received range; late and duplicate
//! packets are counted apart. Fault injection ([`Faults`]) only touches forwarded packets, so
//! these numbers always describe what the sender sent.
//!
//! ```no_run
//! use quaver_tools::server::{Server, ServerConfig};
//! let server = Server::start(ServerConfig::default())?;
//! // Either point a main-gateway client at `server.main_gateway_url()`, or skip the main
//! // gateway and get voice credentials directly:
//! let request = server.voice_connect_request(1 /* guild */, 2 /* channel */, 3 /* user */);
//! // ... connect with a ControlThread spawned from `server.control_config()` (it trusts the
//! // server's certificate), send audio ...
//! for call in server.stats().calls {
//!     for s in call.streams {
//!         println!("ssrc {}: {} packets, {} lost, lateness p99 {} µs", s.ssrc, s.packets, s.lost, s.lateness_us.p99);
//!     }
//! }
//! # Ok::<(), quaver_tools::server::ServerError>(())
//! ```

pub mod dave;
mod framing;
mod main_ws;
pub mod stats;
mod tls;
mod udp;
mod voice_ws;
pub mod wav;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use quaver_gateway::control::ControlConfig;
use quaver_gateway::protocol::{Speaking, Token, VoicePayload};
use quaver_gateway::voice::VoiceConnectRequest;
use quaver_net::crypto::{EncryptionMode, Sealer, TransportCipher};

pub use dave::{DaveCallStats, DaveMode, OBSERVER_USER_ID};
pub use stats::Percentiles;

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A socket could not be bound or configured.
    #[error("{what}: {source}")]
    Io {
        /// Which socket.
        what: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// TLS set-up failed.
    #[error("tls: {0}")]
    Tls(String),
    /// A configuration value is out of range.
    #[error("config: {0}")]
    Config(String),
}

/// A websocket read that only hit its poll timeout (the sockets are read with a short timeout
/// so each connection thread can also serve its outgoing queue).
pub(crate) fn read_timed_out(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> ServerError {
    move |source| ServerError::Io { what, source }
}

/// Faults the server injects on purpose, for testing clients.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    /// Drop every voice websocket once (TCP shutdown, no close frame) this long after its
    /// session was established, so clients resume.
    pub drop_ws_after: Option<Duration>,
    /// Close the voice session of every (guild, user) once with this code right after the
    /// handshake (Session Description sent); later sessions of the same user are left alone.
    pub close_code: Option<u16>,
    /// Percentage (0–100) of forwarded packets dropped. Applies to forwarding only: the
    /// server's own receive statistics always count what the sender actually sent.
    pub udp_loss_pct: f64,
    /// Percentage of forwarded packets held back and sent after the next one.
    pub udp_reorder_pct: f64,
    /// Percentage of forwarded packets sent twice.
    pub udp_duplicate_pct: f64,
}

/// Server configuration. `Default` is loopback on ephemeral ports, TLS, no recording.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Main-gateway listen address.
    pub main_listen: SocketAddr,
    /// Voice-gateway listen address (port 0: ephemeral).
    pub voice_listen: SocketAddr,
    /// UDP voice-server address.
    pub udp_listen: SocketAddr,
    /// Heartbeat interval announced in both Hellos, in ms.
    pub heartbeat_interval_ms: f64,
    /// Close a voice websocket with 4009 (session timeout) when no heartbeat arrived for this
    /// many heartbeat intervals (the session stays resumable). `None` never times out.
    pub heartbeat_timeout_intervals: Option<f64>,
    /// Encryption modes offered in Ready, in this order.
    pub modes: Vec<EncryptionMode>,
    /// Serve `wss://` on both gateways with a certificate from a CA generated at start, and
    /// send the voice endpoint bare, as Discord does. `false` is a debugging mode: plain
    /// `ws://`, and the endpoint goes out as `ws://host:port` (no Discord client expects that).
    pub tls: bool,
    /// Write one WAV per SSRC into this directory.
    pub record_dir: Option<PathBuf>,
    /// Opus-decode every packet (counting decode errors). Turn off for many-call benchmarks:
    /// decoding costs tens of µs per packet. Recording or keeping audio decodes regardless.
    pub decode_audio: bool,
    /// Keep decoded audio in memory per SSRC (read with [`Server::decoded_audio`]).
    pub keep_decoded_audio: bool,
    /// Append `SSRC <ssrc> MODE <mode> KEY <hex>` per voice session (SSLKEYLOGFILE-style).
    pub keylog: Option<PathBuf>,
    /// Forward each sender's packets to the other participants of its channel.
    pub forward: bool,
    /// Reject voice Identify/Resume whose token was not issued by the main gateway (or by
    /// [`Server::voice_connect_request`]) with 4004. Off by default so tests may connect with any
    /// token.
    pub require_issued_tokens: bool,
    /// A dropped voice session stays resumable this long.
    pub resume_window: Duration,
    /// Server messages kept per session for Resume.
    pub replay_buffer: usize,
    /// Largest websocket message accepted; larger ones close with 4002 and are counted.
    pub max_message_size: usize,
    /// How often an idle websocket thread checks for messages queued by other threads
    /// (relayed Speaking, Clients Connect, faults). Raise it for thousands of calls: every
    /// connection wakes this often.
    pub ws_poll_interval: Duration,
    /// Injected faults.
    pub faults: Faults,
    /// First bot user ID handed out by the main gateway (each Identify gets the next one).
    pub first_user_id: u64,
    /// DAVE negotiation (default [`DaveMode::Required`], as Discord; see [`dave`]).
    pub dave: DaveMode,
    /// A DAVE transition executes (op 22) when every member of the new roster sent op 23, or
    /// after this long.
    pub dave_transition_timeout: Duration,
    /// Proposals nobody committed for this long are committed by the server's observer, or
    /// the group restarts (op 24).
    pub dave_commit_timeout: Duration,
    /// Keep a member of the server's own (user [`OBSERVER_USER_ID`]) in every DAVE group, so
    /// E2EE audio is decrypted, decoded, recorded and measured. Off, E2EE frames are only
    /// counted ([`StreamStats::dave_undecryptable`]) and forwarded; the MLS work per channel
    /// and the decryption per packet go away.
    pub dave_observer: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        let lo = |port| SocketAddr::from(([127, 0, 0, 1], port));
        ServerConfig {
            main_listen: lo(0),
            voice_listen: lo(0),
            udp_listen: lo(0),
            heartbeat_interval_ms: 13_750.0,
            heartbeat_timeout_intervals: Some(3.0),
            modes: EncryptionMode::PREFERENCE.to_vec(),
            tls: true,
            record_dir: None,
            decode_audio: true,
            keep_decoded_audio: false,
            keylog: None,
            forward: true,
            require_issued_tokens: false,
            resume_window: Duration::from_secs(10),
            replay_buffer: 512,
            max_message_size: 64 * 1024,
            ws_poll_interval: Duration::from_millis(25),
            faults: Faults::default(),
            first_user_id: 100_000_000_000_000_001,
            dave: DaveMode::default(),
            dave_transition_timeout: Duration::from_secs(2),
            dave_commit_timeout: Duration::from_secs(1),
            dave_observer: true,
        }
    }
}

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
    /// Opus packets that failed to decode.
    pub decode_errors: u64,
    /// Samples per channel decoded (48 kHz).
    pub decoded_samples: u64,
    /// Arrival minus ideal arrival on the sender's 20 ms grid, anchored at its best packet (µs).
    pub lateness_us: Percentiles,
    /// RFC 3550 inter-arrival jitter after each packet (µs).
    pub jitter_us: Percentiles,
    /// The WAV recording, when recording.
    pub recording: Option<PathBuf>,
    /// DAVE (E2EE) frames the server's observer decrypted before decoding.
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

/// Events for the server's owner.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum ServerEvent {
    /// A voice session was established (Session Description sent).
    SessionEstablished {
        /// Guild.
        guild_id: u64,
        /// Voice channel.
        channel_id: u64,
        /// User.
        user_id: u64,
        /// Its SSRC.
        ssrc: u32,
    },
    /// Every session of a call ended; its final statistics.
    CallEnded(CallStats),
}

/// Something the voice websocket thread of a session is asked to do. No `Debug`: a queued
/// Session Description carries the key.
#[derive(Clone)]
pub(crate) enum Outgoing {
    Text(String),
    /// A binary frame, already framed for the connection's version.
    Binary(Vec<u8>),
    Close(u16),
    /// Shut the TCP connection down without a close frame.
    Drop,
    /// Everything queued before this (an op 5 naming the SSRC) has been written: packets of
    /// this SSRC may now be forwarded to the session, starting with the held ones.
    Mapped(u32),
}

/// One voice channel of one guild: the unit that hears itself (and, with DAVE, one group).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct CallKey {
    pub guild_id: u64,
    pub channel_id: u64,
}

/// Forwarded packets held per (receiver, SSRC) while the op 5 naming the SSRC is on its way;
/// beyond this the oldest are dropped (a receiver whose websocket is away for long).
const MAX_HELD_PER_SSRC: usize = 50;

/// One voice session (one user in one voice channel), living across resumes.
pub(crate) struct Session {
    pub guild_id: u64,
    /// The voice channel (from the issued credentials; 0 when none were issued).
    pub channel_id: u64,
    /// Negotiated DAVE protocol version (0: none).
    pub dave_version: u16,
    pub user_id: u64,
    /// How the attached (last) websocket frames messages.
    pub framing: framing::Framing,
    pub session_id: String,
    pub token: Token,
    pub ssrc: u32,
    pub mode: Option<EncryptionMode>,
    pub cipher: Option<TransportCipher>,
    /// Seals packets forwarded *to* this session.
    pub sealer: Option<Sealer>,
    pub udp_peer: Option<SocketAddr>,
    pub seq: i64,
    /// Numbered messages for Resume (v8 only).
    pub replay: VecDeque<(i64, Outgoing)>,
    /// The attached websocket thread, if any: its generation and queue.
    pub outbox: Option<(u64, crossbeam_channel::Sender<Outgoing>)>,
    pub detached_at: Option<Instant>,
    pub speaking: u32,
    pub established_at: Option<Instant>,
    pub dropped_once: bool,
    /// A forwarded packet held back by reorder injection.
    pub held: Option<Vec<u8>>,
    /// SSRCs whose op 5 this session's websocket has written: their packets flow.
    pub mapped: HashSet<u32>,
    /// SSRCs whose op 5 is queued but not yet written.
    pub announced: HashSet<u32>,
    /// Sealed packets per SSRC waiting for its op 5 to be written.
    pub pending: HashMap<u32, VecDeque<Vec<u8>>>,
}

impl Session {
    pub fn key(&self) -> CallKey {
        CallKey {
            guild_id: self.guild_id,
            channel_id: self.channel_id,
        }
    }

    /// Numbers `payload` (v8), keeps it for replay and queues it to the attached websocket.
    pub fn push(&mut self, payload: &VoicePayload, replay_cap: usize) {
        self.seq += 1;
        let frame = Outgoing::Text(self.framing.text(payload, self.seq));
        self.queue_numbered(frame, replay_cap);
    }

    /// A server binary frame (DAVE ops 25, 27, 29, 30), framed for the session's version and
    /// numbered like the text messages.
    pub fn push_binary(&mut self, op: u8, payload: &[u8], replay_cap: usize) {
        self.seq += 1;
        let frame = Outgoing::Binary(self.framing.binary(self.seq, op, payload));
        self.queue_numbered(frame, replay_cap);
    }

    fn queue_numbered(&mut self, frame: Outgoing, replay_cap: usize) {
        if self.framing.numbered() {
            self.replay.push_back((self.seq, frame.clone()));
            while self.replay.len() > replay_cap {
                self.replay.pop_front();
            }
        }
        if let Some((_, tx)) = &self.outbox {
            let _ = tx.send(frame);
        }
    }

    /// Sends op 5 for another member's SSRC, and makes sure this session's websocket writes it
    /// before any packet of that SSRC is forwarded here.
    pub fn tell_speaking(&mut self, speaking: Speaking, replay_cap: usize) {
        self.push(&VoicePayload::Speaking(speaking), replay_cap);
        if !self.mapped.contains(&speaking.ssrc) {
            self.announced.insert(speaking.ssrc);
            self.send(Outgoing::Mapped(speaking.ssrc));
        }
    }

    /// The op 5 that tells others who sends this session's SSRC: its flags as last sent, or
    /// microphone for a sender that sent audio without op 5.
    pub fn speaking_announcement(&self) -> Speaking {
        let flags = if self.speaking == 0 {
            quaver_gateway::protocol::SpeakingFlags::MICROPHONE
        } else {
            quaver_gateway::protocol::SpeakingFlags(self.speaking)
        };
        Speaking {
            speaking: flags,
            ssrc: self.ssrc,
            delay: None,
            user_id: Some(self.user_id.into()),
        }
    }

    /// Keeps a sealed packet of `ssrc` until its op 5 has been written.
    pub fn hold(&mut self, ssrc: u32, packet: Vec<u8>) {
        let held = self.pending.entry(ssrc).or_default();
        if held.len() >= MAX_HELD_PER_SSRC {
            held.pop_front();
        }
        held.push_back(packet);
    }

    /// Forgets a member that left (its SSRC is never reused while the server runs).
    pub fn forget(&mut self, ssrc: u32) {
        self.mapped.remove(&ssrc);
        self.announced.remove(&ssrc);
        self.pending.remove(&ssrc);
    }

    fn send(&self, out: Outgoing) -> bool {
        match &self.outbox {
            Some((_, tx)) => tx.send(out).is_ok(),
            None => false,
        }
    }
}

/// Credentials handed out by op 4 (or [`Server::voice_connect_request`]), for one channel.
pub(crate) struct Issued {
    pub channel_id: u64,
    pub session_id: String,
    pub token: Token,
}

/// Everything shared between the server's threads.
pub(crate) struct Registry {
    pub sessions: HashMap<u64, Session>,
    pub by_ssrc: HashMap<u32, u64>,
    /// Session keys per voice channel, so forwarding a packet touches only its call.
    pub by_call: HashMap<CallKey, Vec<u64>>,
    pub issued: HashMap<(u64, u64), Issued>,
    /// Main-gateway sessions, for Resume: session ID → user ID.
    pub main_sessions: HashMap<String, u64>,
    pub next_session: u64,
    pub next_ssrc: u32,
    pub next_user: u64,
    pub counters: Counters,
    /// Receive statistics per SSRC (kept after sessions end, until their call is reported).
    pub streams: HashMap<u32, StreamRecord>,
    /// (guild, user) pairs already closed by the `close_code` fault.
    pub close_faulted: std::collections::HashSet<(u64, u64)>,
    /// The last report of each (guild, channel) DAVE group.
    pub dave_calls: HashMap<(u64, u64), DaveCallStats>,
}

pub(crate) struct StreamRecord {
    pub guild_id: u64,
    pub channel_id: u64,
    pub user_id: u64,
    pub meter: stats::StreamMeter,
    pub decode_errors: u64,
    pub decoded_samples: u64,
    pub recording: Option<PathBuf>,
    pub decoded: Vec<i16>,
    pub dave_frames: u64,
    pub dave_undecryptable: u64,
}

impl StreamRecord {
    fn snapshot(&self, ssrc: u32) -> StreamStats {
        StreamStats {
            ssrc,
            user_id: self.user_id,
            guild_id: self.guild_id,
            channel_id: self.channel_id,
            packets: self.meter.packets,
            unique_packets: self.meter.unique(),
            bytes: self.meter.bytes,
            lost: self.meter.lost(),
            reordered: self.meter.reordered,
            duplicates: self.meter.duplicates,
            timestamp_step_errors: self.meter.timestamp_step_errors,
            decode_errors: self.decode_errors,
            decoded_samples: self.decoded_samples,
            lateness_us: Percentiles::of(&self.meter.lateness()),
            jitter_us: Percentiles::of(&self.meter.jitter_us),
            recording: self.recording.clone(),
            dave_frames: self.dave_frames,
            dave_undecryptable: self.dave_undecryptable,
        }
    }
}

impl Registry {
    /// Adds a session to the indexes.
    pub fn insert_session(&mut self, key: u64, session: Session) {
        self.by_ssrc.insert(session.ssrc, key);
        self.by_call.entry(session.key()).or_default().push(key);
        self.sessions.insert(key, session);
    }

    /// The sessions of one call (voice channel).
    pub fn call_members(&self, call: CallKey) -> &[u64] {
        self.by_call.get(&call).map_or(&[], Vec::as_slice)
    }

    pub fn session_by_ssrc(&mut self, ssrc: u32) -> Option<&mut Session> {
        let id = *self.by_ssrc.get(&ssrc)?;
        self.sessions.get_mut(&id)
    }

    pub fn call_stats(&self, call: CallKey) -> CallStats {
        let mut streams: Vec<StreamStats> = self
            .streams
            .iter()
            .filter(|(_, r)| r.guild_id == call.guild_id && r.channel_id == call.channel_id)
            .map(|(ssrc, r)| r.snapshot(*ssrc))
            .collect();
        streams.sort_by_key(|s| (s.user_id, s.ssrc));
        let dave = self
            .dave_calls
            .get(&(call.guild_id, call.channel_id))
            .cloned();
        CallStats {
            guild_id: call.guild_id,
            channel_id: call.channel_id,
            ended: !self.by_call.contains_key(&call),
            streams,
            dave,
        }
    }

    /// Ends every session of `user_id` in `guild_id` (a user is in one channel per guild).
    pub fn end_sessions_of(&mut self, guild_id: u64, user_id: u64, shared: &Shared) {
        let ids: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.guild_id == guild_id && s.user_id == user_id)
            .map(|(k, _)| *k)
            .collect();
        for id in ids {
            self.end_session(id, shared);
        }
    }

    /// Removes a session; tells the rest of its call and reports the call when it was the last.
    pub fn end_session(&mut self, id: u64, shared: &Shared) {
        let Some(s) = self.sessions.remove(&id) else {
            return;
        };
        self.by_ssrc.remove(&s.ssrc);
        let call = s.key();
        if s.dave_version > 0 {
            dave::session_ended(shared, id, s.guild_id, s.channel_id);
        }
        if let Some(members) = self.by_call.get_mut(&call) {
            members.retain(|k| *k != id);
            if members.is_empty() {
                self.by_call.remove(&call);
            }
        }
        if let Some((_, tx)) = &s.outbox {
            let _ = tx.send(Outgoing::Close(
                quaver_gateway::protocol::close_code::DISCONNECTED,
            ));
        }
        let gone = VoicePayload::ClientDisconnect(quaver_gateway::protocol::ClientDisconnect {
            user_id: s.user_id.into(),
        });
        let cap = shared.config.replay_buffer;
        for key in self.by_call.get(&call).into_iter().flatten() {
            if let Some(other) = self.sessions.get_mut(key) {
                other.push(&gone, cap);
                other.forget(s.ssrc);
            }
        }
        tracing::info!(
            guild = s.guild_id,
            channel = s.channel_id,
            user = s.user_id,
            ssrc = s.ssrc,
            "voice session ended"
        );
        if !self.by_call.contains_key(&call) {
            let stats = self.call_stats(call);
            let _ = shared.events_tx.send(ServerEvent::CallEnded(stats));
        }
    }

    fn fresh_ssrc(&mut self) -> u32 {
        loop {
            self.next_ssrc = self.next_ssrc.wrapping_add(1);
            if self.next_ssrc != 0 && !self.by_ssrc.contains_key(&self.next_ssrc) {
                return self.next_ssrc;
            }
        }
    }
}

/// Immutable configuration plus the shared state, one per server.
pub(crate) struct Shared {
    pub config: ServerConfig,
    pub stop: AtomicBool,
    pub registry: Mutex<Registry>,
    pub events_tx: crossbeam_channel::Sender<ServerEvent>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub voice_addr: SocketAddr,
    pub main_addr: SocketAddr,
    pub udp_addr: SocketAddr,
    pub udp: UdpSocket,
    pub ws_generation: AtomicU64,
    pub dave: dave::Hub,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, Registry> {
        // A panicking server thread must not take the whole server down with a poisoned lock;
        // the registry holds plain data that stays consistent between statements.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// The `endpoint` of VOICE_SERVER_UPDATE: a bare `host:port` under TLS (clients add
    /// `wss://`), an explicit `ws://host:port` otherwise, since a bare endpoint means TLS.
    pub fn voice_endpoint(&self) -> String {
        if self.tls.is_some() {
            self.voice_addr.to_string()
        } else {
            format!("ws://{}", self.voice_addr)
        }
    }

    /// Issues voice credentials for a user in a channel (replacing any earlier ones: a user is
    /// in one channel per guild).
    pub fn issue(
        &self,
        reg: &mut Registry,
        guild_id: u64,
        channel_id: u64,
        user_id: u64,
    ) -> (String, Token) {
        let session_id = random_hex(16);
        let token = Token::new(random_hex(16));
        reg.issued.insert(
            (guild_id, user_id),
            Issued {
                channel_id,
                session_id: session_id.clone(),
                token: token.clone(),
            },
        );
        (session_id, token)
    }
}

pub(crate) fn random_hex(bytes: usize) -> String {
    let mut out = String::with_capacity(bytes * 2);
    for _ in 0..bytes {
        out.push_str(&format!("{:02x}", rand::random::<u8>()));
    }
    out
}

/// A running server. Dropping it stops it.
pub struct Server {
    shared: Arc<Shared>,
    events: crossbeam_channel::Receiver<ServerEvent>,
    threads: Vec<JoinHandle<()>>,
    /// The CA that signed the server's certificate (DER, PEM), under TLS.
    ca: Option<(rustls::pki_types::CertificateDer<'static>, String)>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("main", &self.shared.main_addr)
            .field("voice", &self.shared.voice_addr)
            .field("udp", &self.shared.udp_addr)
            .field("tls", &self.ca.is_some())
            .finish()
    }
}

impl Server {
    /// Binds every socket and starts the server's threads.
    pub fn start(config: ServerConfig) -> Result<Server, ServerError> {
        for (name, pct) in [
            ("udp loss", config.faults.udp_loss_pct),
            ("udp reorder", config.faults.udp_reorder_pct),
            ("udp duplicate", config.faults.udp_duplicate_pct),
        ] {
            if !(0.0..=100.0).contains(&pct) {
                return Err(ServerError::Config(format!(
                    "{name} must be 0–100, got {pct}"
                )));
            }
        }
        if config.modes.is_empty() {
            return Err(ServerError::Config("no encryption modes offered".into()));
        }
        if let Some(dir) = &config.record_dir {
            std::fs::create_dir_all(dir).map_err(io_err("record directory"))?;
        }
        if let Some(path) = &config.keylog {
            tracing::warn!(
                path = %path.display(),
                "keylog is on: voice transport keys are written to this file"
            );
        }
        let (tls, ca) = if config.tls {
            let id = tls::generate(config.voice_listen.ip(), config.main_listen.ip())?;
            (Some(id.config), Some((id.ca_der, id.ca_pem)))
        } else {
            (None, None)
        };
        let main = TcpListener::bind(config.main_listen).map_err(io_err("main gateway"))?;
        let voice = TcpListener::bind(config.voice_listen).map_err(io_err("voice gateway"))?;
        let udp = UdpSocket::bind(config.udp_listen).map_err(io_err("udp"))?;
        let main_addr = main.local_addr().map_err(io_err("main gateway"))?;
        let voice_addr = voice.local_addr().map_err(io_err("voice gateway"))?;
        let udp_addr = udp.local_addr().map_err(io_err("udp"))?;
        udp::configure(&udp).map_err(io_err("udp options"))?;
        let (events_tx, events) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared {
            registry: Mutex::new(Registry {
                sessions: HashMap::new(),
                by_ssrc: HashMap::new(),
                by_call: HashMap::new(),
                issued: HashMap::new(),
                main_sessions: HashMap::new(),
                next_session: 0,
                next_ssrc: rand::random::<u32>() >> 1,
                next_user: config.first_user_id,
                counters: Counters::default(),
                streams: HashMap::new(),
                close_faulted: Default::default(),
                dave_calls: HashMap::new(),
            }),
            config,
            stop: AtomicBool::new(false),
            events_tx,
            tls,
            voice_addr,
            main_addr,
            udp_addr,
            udp,
            ws_generation: AtomicU64::new(0),
            dave: dave::Hub::default(),
        });
        let mut threads = Vec::new();
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(io_err("spawn"))
        };
        let s = shared.clone();
        threads.push(spawn(
            "quaver-serve-main",
            Box::new(move || accept_loop(main, s, Gateway::Main)),
        )?);
        let s = shared.clone();
        threads.push(spawn(
            "quaver-serve-voice",
            Box::new(move || accept_loop(voice, s, Gateway::Voice)),
        )?);
        let s = shared.clone();
        threads.push(spawn("quaver-serve-udp", Box::new(move || udp::run(s)))?);
        tracing::info!(%main_addr, %voice_addr, %udp_addr, tls = ca.is_some(), "server listening");
        Ok(Server {
            shared,
            events,
            threads,
            ca,
        })
    }

    /// The main gateway's socket address.
    pub fn main_gateway_addr(&self) -> SocketAddr {
        self.shared.main_addr
    }

    /// The URL for a main-gateway client: `wss://host:port/?v=10&encoding=json` (`ws://` in
    /// plain mode).
    pub fn main_gateway_url(&self) -> String {
        let scheme = if self.shared.tls.is_some() {
            "wss"
        } else {
            "ws"
        };
        format!("{scheme}://{}/?v=10&encoding=json", self.shared.main_addr)
    }

    /// The voice gateway's socket address.
    pub fn voice_gateway_addr(&self) -> SocketAddr {
        self.shared.voice_addr
    }

    /// The endpoint sent in VOICE_SERVER_UPDATE (bare `host:port` under TLS, `ws://host:port`
    /// without), ready for [`VoiceConnectRequest::endpoint`].
    pub fn voice_endpoint(&self) -> String {
        self.shared.voice_endpoint()
    }

    /// The full voice gateway URL, `ws(s)://host:port/?v=8`.
    pub fn voice_gateway_url(&self) -> String {
        let scheme = if self.shared.tls.is_some() {
            "wss"
        } else {
            "ws"
        };
        format!("{scheme}://{}/?v=8", self.shared.voice_addr)
    }

    /// The UDP voice server's address (what Ready announces).
    pub fn udp_addr(&self) -> SocketAddr {
        self.shared.udp_addr
    }

    /// The CA certificate (DER) that signed the server's certificate, when TLS is on; trust it
    /// through `ControlConfig::extra_roots` (or use [`Server::control_config`]).
    pub fn certificate_der(&self) -> Option<rustls::pki_types::CertificateDer<'static>> {
        self.ca.as_ref().map(|(der, _)| der.clone())
    }

    /// The same CA certificate as PEM (what `quaver serve --cert-out` writes), for clients that
    /// take a CA file.
    pub fn ca_certificate_pem(&self) -> Option<&str> {
        self.ca.as_ref().map(|(_, pem)| pem.as_str())
    }

    /// A default control-thread configuration that trusts this server's certificate (unchanged
    /// in plain mode).
    pub fn control_config(&self) -> ControlConfig {
        self.trusted(ControlConfig::default())
    }

    /// `config` with this server's CA added to its extra roots.
    pub fn trusted(&self, mut config: ControlConfig) -> ControlConfig {
        if let Some(der) = self.certificate_der() {
            config.extra_roots.push(der);
        }
        config
    }

    /// Issues voice credentials as op 4 would (no main gateway needed) and returns the request
    /// a voice client connects with.
    pub fn voice_connect_request(
        &self,
        guild_id: u64,
        channel_id: u64,
        user_id: u64,
    ) -> VoiceConnectRequest {
        let mut reg = self.shared.lock();
        let (session_id, token) = self.shared.issue(&mut reg, guild_id, channel_id, user_id);
        VoiceConnectRequest {
            guild_id,
            channel_id,
            user_id,
            session_id,
            token,
            endpoint: self.shared.voice_endpoint(),
        }
    }

    /// A snapshot of every call's statistics and the counters.
    pub fn stats(&self) -> ServerStats {
        let reg = self.shared.lock();
        let mut calls: Vec<CallKey> = reg
            .streams
            .values()
            .map(|r| CallKey {
                guild_id: r.guild_id,
                channel_id: r.channel_id,
            })
            .collect();
        calls.extend(reg.sessions.values().map(Session::key));
        calls.sort_unstable();
        calls.dedup();
        ServerStats {
            calls: calls.into_iter().map(|c| reg.call_stats(c)).collect(),
            counters: reg.counters,
        }
    }

    /// Statistics of one SSRC.
    pub fn stream_stats(&self, ssrc: u32) -> Option<StreamStats> {
        let reg = self.shared.lock();
        reg.streams.get(&ssrc).map(|r| r.snapshot(ssrc))
    }

    /// Decoded audio of one SSRC so far (interleaved stereo i16 at 48 kHz), when
    /// [`ServerConfig::keep_decoded_audio`] is on.
    pub fn decoded_audio(&self, ssrc: u32) -> Vec<i16> {
        let reg = self.shared.lock();
        reg.streams
            .get(&ssrc)
            .map(|r| r.decoded.clone())
            .unwrap_or_default()
    }

    /// The SSRC the server assigned to `user_id` in `guild_id`, while the session lives.
    pub fn ssrc_of(&self, guild_id: u64, user_id: u64) -> Option<u32> {
        let reg = self.shared.lock();
        reg.sessions
            .values()
            .find(|s| s.guild_id == guild_id && s.user_id == user_id)
            .map(|s| s.ssrc)
    }

    /// Server events (session established, call ended with its statistics).
    pub fn events(&self) -> &crossbeam_channel::Receiver<ServerEvent> {
        &self.events
    }

    /// Sends malformed JSON on the voice websocket of `user_id` in `guild_id` (to test the
    /// client). Returns whether a websocket was attached.
    pub fn send_garbage_json(&self, guild_id: u64, user_id: u64) -> bool {
        let reg = self.shared.lock();
        reg.sessions
            .values()
            .filter(|s| s.guild_id == guild_id && s.user_id == user_id)
            .any(|s| {
                s.send(Outgoing::Text(
                    "{\"op\": 2, \"d\": {\"ssrc\": \"not a number\"".into(),
                )) && s.send(Outgoing::Text("\u{0}garbage".into()))
            })
    }

    /// Sends `count` random datagrams (plus a truncated RTP header and a fake discovery
    /// response) to the UDP address of `user_id` in `guild_id`. Returns how many were sent.
    pub fn send_garbage_datagrams(&self, guild_id: u64, user_id: u64, count: usize) -> usize {
        let peer = {
            let reg = self.shared.lock();
            reg.sessions
                .values()
                .find(|s| s.guild_id == guild_id && s.user_id == user_id)
                .and_then(|s| s.udp_peer)
        };
        let Some(peer) = peer else { return 0 };
        let mut sent = 0;
        let mut send = |b: &[u8]| {
            if self.shared.udp.send_to(b, peer).is_ok() {
                sent += 1;
            }
        };
        for _ in 0..count {
            let len = rand::random_range(0..200usize);
            let bytes: Vec<u8> = (0..len).map(|_| rand::random()).collect();
            send(&bytes);
        }
        send(&[0x80, 0x78, 0, 1]);
        let mut fake = [0u8; 74];
        fake[1] = 2;
        fake[3] = 70;
        send(&fake);
        sent
    }

    /// Stops every thread and ends every session (recordings are finalised).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if self.shared.stop.swap(true, Ordering::Relaxed) {
            return;
        }
        {
            let mut reg = self.shared.lock();
            let ids: Vec<u64> = reg.sessions.keys().copied().collect();
            for id in ids {
                reg.end_session(id, &self.shared);
            }
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gateway {
    Main,
    Voice,
}

/// Accepts connections until stopped; one thread per connection.
fn accept_loop(listener: TcpListener, shared: Arc<Shared>, which: Gateway) {
    if let Err(e) = listener.set_nonblocking(true) {
        tracing::error!(error = %e, "cannot poll the listener; accepting nothing");
        return;
    }
    while !shared.stopped() {
        let (stream, peer) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "accept failed");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        shared.lock().counters.ws_connections += 1;
        let s = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(match which {
                Gateway::Main => "quaver-serve-main-conn".into(),
                Gateway::Voice => "quaver-serve-voice-conn".into(),
            })
            .stack_size(512 * 1024)
            .spawn(move || {
                let (ws, framing) = match tls::accept(stream, &s, which == Gateway::Voice) {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "websocket handshake failed");
                        return;
                    }
                };
                match (which, framing) {
                    (Gateway::Voice, Some(framing)) => voice_ws::serve(ws, framing, &s),
                    (Gateway::Main, _) => main_ws::serve(ws, &s),
                    // The handshake refuses a voice request without a supported version.
                    (Gateway::Voice, None) => {}
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot spawn a connection thread");
        }
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
            writeln!(
                f,
                "  ssrc {} (user {}): {} packets, {} lost, {} reordered, {} duplicates, \
                 {} timestamp-step errors, {} decode errors, {:.2} s decoded",
                s.ssrc,
                s.user_id,
                s.packets,
                s.lost,
                s.reordered,
                s.duplicates,
                s.timestamp_step_errors,
                s.decode_errors,
                s.decoded_samples as f64 / 48_000.0
            )?;
            writeln!(
                f,
                "    lateness µs p50 {} p99 {} p99.9 {} max {}; jitter µs p50 {} p99 {} max {}",
                s.lateness_us.p50,
                s.lateness_us.p99,
                s.lateness_us.p999,
                s.lateness_us.max,
                s.jitter_us.p50,
                s.jitter_us.p99,
                s.jitter_us.max
            )?;
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
