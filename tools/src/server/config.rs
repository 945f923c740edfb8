//! What a server is started with: listen addresses, gateway behaviour, DAVE, injected faults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use quaver_net::crypto::EncryptionMode;

use super::dave::DaveMode;
use super::tls::TlsIdentity;
#[cfg(doc)]
use super::{OBSERVER_USER_ID, Server, StreamStats, dave};

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

/// Default of [`ServerConfig::max_connections`]: two websockets per call for the largest
/// `jitter --calls` run, plus room for listeners, baselines and reconnects.
pub const DEFAULT_MAX_CONNECTIONS: usize = 12_288;

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
    /// The certificate to serve with `tls`: `None` generates a fresh CA at start; a server's
    /// own ([`crate::server::Server::tls_identity`]) makes a restarted server that clients
    /// still trust.
    pub tls_identity: Option<TlsIdentity>,
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
    /// The UDP thread drains its socket this often instead of sleeping in `recv` (`None`:
    /// it sleeps in `recv`, woken by each datagram). A thread asleep in `recv` is woken by the
    /// first packet of every burst, and on these 2-vCPU VMs that wake-up of the other CPU is
    /// paid inside the *sender's* `send`: at 100 passthrough calls it was most of the sender's
    /// per-packet cost and of its lateness tail (send lateness p50 42 µs, worst stream's p99
    /// 171–187 µs; with the whole process on one CPU, so that no wake-up crossed CPUs, 18 µs
    /// and 88 µs). A remote Discord server costs the sender no such wake-up, so by default the
    /// server does not either; arrival times come from kernel timestamps, so reading a little
    /// later changes no lateness figure, and forwarded packets leave at most this much later.
    pub udp_read_interval: Option<Duration>,
    /// Websocket connections (both gateways together) served at once; each is a thread. More
    /// are refused (the TCP connection is closed at once, counted in
    /// [`crate::server::Counters::refused_connections`]) instead of growing threads without
    /// bound: a 100,000-call run reached 3,736 threads and load 153.
    pub max_connections: usize,
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

impl ServerConfig {
    /// Whether the server Opus-decodes what it receives (to measure it, record it or keep it).
    pub(crate) fn decodes(&self) -> bool {
        self.decode_audio || self.record_dir.is_some() || self.keep_decoded_audio
    }
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
            tls_identity: None,
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
            udp_read_interval: Some(Duration::from_millis(1)),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            faults: Faults::default(),
            first_user_id: 100_000_000_000_000_001,
            dave: DaveMode::default(),
            dave_transition_timeout: Duration::from_secs(2),
            dave_commit_timeout: Duration::from_secs(1),
            dave_observer: true,
        }
    }
}
