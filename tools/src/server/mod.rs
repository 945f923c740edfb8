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
//!         let p99 = s.lateness_us.map(|l| l.p99); // None when the stream was not measured
//!         println!("ssrc {}: {} packets, {} lost, lateness p99 {p99:?} µs", s.ssrc, s.packets, s.lost);
//!     }
//! }
//! # Ok::<(), quaver_tools::server::ServerError>(())
//! ```

mod accept;
mod config;
pub mod dave;
mod error;
mod events;
mod framing;
mod main_ws;
mod registry;
mod session;
mod snapshot;
pub mod stats;
mod tls;
mod udp;
mod voice_ws;
mod wake;
pub mod wav;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use quaver_gateway::control::ControlConfig;
use quaver_gateway::voice::VoiceConnectRequest;

use accept::{Gateway, accept_loop};
use error::io_err;

pub use config::{DEFAULT_MAX_CONNECTIONS, Faults, ServerConfig};
pub use dave::{DaveCallStats, DaveMode, OBSERVER_USER_ID};
pub use error::ServerError;
pub use events::ServerEvent;
pub use snapshot::{CallStats, Counters, ServerStats, StreamStats};
pub use stats::Percentiles;
pub use tls::TlsIdentity;

/// Entry points for the fuzz targets in `fuzz/` (not a stable interface).
#[doc(hidden)]
pub mod fuzzing {
    /// Feeds `(seq, timestamp, payload length, arrival ns)` arrivals to a stream meter, as the
    /// UDP thread does for each packet, and computes every figure a report reads.
    pub fn stream_meter(arrivals: impl Iterator<Item = (u16, u32, usize, i64)>) {
        let mut meter = super::stats::StreamMeter::new();
        for (seq, ts, len, at) in arrivals {
            let _ = meter.on_packet(seq, ts, len, at);
        }
        let _ = (meter.lost(), meter.unique());
        let _ = super::Percentiles::of(&meter.lateness());
        let _ = super::Percentiles::of_ns(&meter.jitter_ns);
    }
}

pub(crate) use error::read_timed_out;
pub(crate) use registry::{CallKey, Registry, Shared, StreamRecord, random_hex};
pub(crate) use session::{Outgoing, Session};

/// A running server. Dropping it stops it.
pub struct Server {
    shared: Arc<Shared>,
    events: crossbeam_channel::Receiver<ServerEvent>,
    threads: Vec<JoinHandle<()>>,
    /// The CA that signed the server's certificate (DER, PEM), under TLS.
    identity: Option<TlsIdentity>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("main", &self.shared.main_addr)
            .field("voice", &self.shared.voice_addr)
            .field("udp", &self.shared.udp_addr)
            .field("tls", &self.identity.is_some())
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
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            // Created now, readable by this user only (an existing file is tightened too):
            // the keys decrypt every call.
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .and_then(|_| {
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                })
                .map_err(io_err("keylog"))?;
            tracing::warn!(
                path = %path.display(),
                "keylog is on: voice transport keys are written to this file"
            );
        }
        let identity = match (config.tls, &config.tls_identity) {
            (false, _) => None,
            (true, Some(kept)) => Some(kept.clone()),
            (true, None) => Some(tls::generate(
                config.voice_listen.ip(),
                config.main_listen.ip(),
            )?),
        };
        let tls = identity.as_ref().map(|id| id.config.clone());
        let main = TcpListener::bind(config.main_listen).map_err(io_err("main gateway"))?;
        let voice = TcpListener::bind(config.voice_listen).map_err(io_err("voice gateway"))?;
        let udp = UdpSocket::bind(config.udp_listen).map_err(io_err("udp"))?;
        let main_addr = main.local_addr().map_err(io_err("main gateway"))?;
        let voice_addr = voice.local_addr().map_err(io_err("voice gateway"))?;
        let udp_addr = udp.local_addr().map_err(io_err("udp"))?;
        udp::configure(&udp).map_err(io_err("udp options"))?;
        let (events_tx, events) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared {
            registry: Mutex::new(Registry::new(config.first_user_id)),
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
            live_connections: std::sync::atomic::AtomicUsize::new(0),
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
        tracing::info!(%main_addr, %voice_addr, %udp_addr, tls = identity.is_some(), "server listening");
        Ok(Server {
            shared,
            events,
            threads,
            identity,
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
        self.identity.as_ref().map(|id| id.ca_der.clone())
    }

    /// The TLS identity in use (`None` in plain mode), to start a replacement server that
    /// clients still trust ([`ServerConfig::tls_identity`]).
    pub fn tls_identity(&self) -> Option<TlsIdentity> {
        self.identity.clone()
    }

    /// The same CA certificate as PEM (what `quaver serve --cert-out` writes), for clients that
    /// take a CA file.
    pub fn ca_certificate_pem(&self) -> Option<&str> {
        self.identity.as_ref().map(|id| id.ca_pem.as_str())
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
            session_id: session_id.into(),
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
            .chain(reg.ended_streams.iter().map(|s| CallKey {
                guild_id: s.guild_id,
                channel_id: s.channel_id,
            }))
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
        reg.streams
            .get(&ssrc)
            .map(|r| r.snapshot(ssrc))
            .or_else(|| {
                reg.ended_streams
                    .iter()
                    .rev()
                    .find(|s| s.ssrc == ssrc)
                    .cloned()
            })
    }

    /// Per-stream receive meters the server holds: one per stream of a live call. An ended
    /// call's meters are freed (its final figures stay in [`Server::stats`]), so this does not
    /// grow run after run; only [`ServerConfig::keep_decoded_audio`] keeps them.
    pub fn held_stream_meters(&self) -> usize {
        self.shared.lock().held_meters()
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
