//! The local server against Quaver's real gateway client, real UDP, real crypto and Opus, on
//! loopback only. No test asserts wall-clock timings.

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use audiopus::coder::Encoder;
use audiopus::{Application, Channels, SampleRate};
use quaver_gateway::control::{ConnectionId, ControlConfig, ControlEvent, ControlThread};
use quaver_gateway::main_gateway::{MainGatewayConfig, MainGatewayEvent};
use quaver_gateway::protocol::{SpeakingFlags, Token};
use quaver_gateway::voice::{EndReason, VoiceConfig, VoiceEvent, VoiceSession};
use quaver_net::crypto::{EncryptionMode, Sealer, SecretKey, TransportCipher};
use quaver_net::rtp::RtpStream;
use quaver_net::{discovery, receive};
use quaver_tools::server::{DaveMode, Faults, OBSERVER_USER_ID, Server, ServerConfig, ServerStats};
use tungstenite::Message;

const WAIT: Duration = Duration::from_secs(20);

/// A bot's join flows over a bare control thread: just enough of a client for these tests to
/// hold raw sessions (keys, SSRCs) and send hand-made packets. Programs use `quaver::Engine`.
struct BotJoin {
    control: Arc<ControlThread>,
    bot: quaver_gateway::control::BotId,
    user_id: u64,
    flows: std::collections::HashMap<u64, (quaver_gateway::join::JoinFlow, Option<ConnectionId>)>,
    calls: std::collections::HashMap<ConnectionId, u64>,
}

/// A voice event with its call.
struct BotCallEvent {
    call: ConnectionId,
    event: VoiceEvent,
}

impl BotJoin {
    fn new(control: Arc<ControlThread>, bot: quaver_gateway::control::BotId, user_id: u64) -> Self {
        Self {
            control,
            bot,
            user_id,
            flows: Default::default(),
            calls: Default::default(),
        }
    }

    fn call(&self, guild: u64) -> Option<ConnectionId> {
        self.flows.get(&guild).and_then(|(_, call)| *call)
    }

    fn join(&mut self, guild: u64, channel: u64) -> Result<(), quaver_gateway::Error> {
        let user_id = self.user_id;
        let (flow, _) = self
            .flows
            .entry(guild)
            .or_insert_with(|| (quaver_gateway::join::JoinFlow::new(guild, user_id), None));
        flow.join(channel, Default::default());
        self.run(guild)
    }

    fn leave(&mut self, guild: u64) -> Result<(), quaver_gateway::Error> {
        if let Some((flow, _)) = self.flows.get_mut(&guild) {
            flow.leave();
        }
        self.run(guild)
    }

    fn run(&mut self, guild: u64) -> Result<(), quaver_gateway::Error> {
        use quaver_gateway::join::JoinAction;
        let Some((flow, current)) = self.flows.get_mut(&guild) else {
            return Ok(());
        };
        while let Some(action) = flow.poll_action() {
            match action {
                JoinAction::SendVoiceStateUpdate(u) => {
                    self.control.bot_send(self.bot, u.to_gateway_json())?
                }
                JoinAction::Connect(request) => {
                    if let Some(old) = current.take() {
                        self.control.disconnect(old)?;
                    }
                    let call = self.control.connect(request, VoiceConfig::default())?;
                    self.calls.insert(call, guild);
                    *current = Some(call);
                }
                JoinAction::Disconnect => {
                    if let Some(old) = current.take() {
                        self.control.disconnect(old)?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn handle_control_event(
        &mut self,
        event: ControlEvent,
    ) -> Result<Option<BotCallEvent>, Box<ControlEvent>> {
        match event {
            ControlEvent::Voice { call, event } => {
                let Some(&guild) = self.calls.get(&call) else {
                    return Ok(None);
                };
                if let VoiceEvent::Ended(reason) = &event
                    && let Some((flow, current)) = self.flows.get_mut(&guild)
                    && *current == Some(call)
                {
                    *current = None;
                    flow.handle_voice_ended(reason);
                    let _ = self.run(guild);
                }
                Ok(Some(BotCallEvent { call, event }))
            }
            ControlEvent::MainGateway {
                event: MainGatewayEvent::VoiceStateUpdate(u),
                ..
            } => {
                if let Some(guild) = u.guild_id.map(|g| g.0)
                    && let Some((flow, _)) = self.flows.get_mut(&guild)
                {
                    flow.handle_voice_state_update(&u);
                    let _ = self.run(guild);
                }
                Ok(None)
            }
            ControlEvent::MainGateway {
                event: MainGatewayEvent::VoiceServerUpdate(u),
                ..
            } => {
                if let Some((flow, _)) = self.flows.get_mut(&u.guild_id.0) {
                    flow.handle_voice_server_update(&u);
                    let _ = self.run(u.guild_id.0);
                }
                Ok(None)
            }
            other => Err(Box::new(other)),
        }
    }
}

fn udp_socket() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind loopback udp");
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("set timeout");
    s
}

/// Handles IP discovery for a call with a real exchange over `udp`.
fn discover(
    control: &ControlThread,
    call: ConnectionId,
    udp: &UdpSocket,
    ssrc: u32,
    ip: &str,
    port: u16,
) {
    let server: SocketAddr = format!("{ip}:{port}").parse().expect("server address");
    let me = discovery::discover(udp, server, ssrc, Duration::from_millis(500), 20)
        .expect("ip discovery answered");
    assert_eq!(
        me,
        udp.local_addr().expect("bound"),
        "discovery returns our own address"
    );
    control
        .set_discovered_address(call, me.ip().to_string(), me.port())
        .expect("control thread alive");
}

/// Waits for an event of `call` matching `done`, doing IP discovery on the way.
fn wait_for(
    control: &ControlThread,
    call: ConnectionId,
    udp: &UdpSocket,
    mut done: impl FnMut(&VoiceEvent) -> bool,
) -> VoiceEvent {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .expect("timed out waiting for a voice event");
        let ev = control.events().recv_timeout(left).expect("voice event");
        if std::env::var_os("SERVER_TEST_DEBUG").is_some() {
            eprintln!("event: {ev:?}");
        }
        let ControlEvent::Voice { call: c, event } = ev else {
            continue;
        };
        if c != call {
            continue;
        }
        if let VoiceEvent::DiscoveryRequested { ssrc, ip, port } = &event {
            discover(control, call, udp, *ssrc, ip, *port);
        }
        if done(&event) {
            return event;
        }
    }
}

fn session_of(ev: VoiceEvent) -> VoiceSession {
    match ev {
        VoiceEvent::SessionReady(s) => s,
        other => panic!("expected SessionReady, got {other:?}"),
    }
}

struct DirectClient {
    control: Arc<ControlThread>,
    call: ConnectionId,
    udp: UdpSocket,
    session: VoiceSession,
    /// Events that arrived before SessionReady (ops 11/5 may precede Session Description).
    early: Vec<VoiceEvent>,
}

/// A server on loopback with `faults` injected.
fn server_with(faults: Faults) -> Server {
    Server::start(ServerConfig {
        faults,
        ..ServerConfig::default()
    })
    .expect("server starts")
}

/// Connects straight to the voice gateway with credentials from the server (no main gateway),
/// in channel 7 of `guild`, trusting the server's certificate.
fn direct_client(server: &Server, guild: u64, user: u64) -> DirectClient {
    direct_client_in(server, guild, 7, user, server.control_config())
}

fn direct_client_in(
    server: &Server,
    guild: u64,
    channel: u64,
    user: u64,
    config: ControlConfig,
) -> DirectClient {
    let control = Arc::new(ControlThread::spawn(config).expect("control thread"));
    let udp = udp_socket();
    let request = server.voice_connect_request(guild, channel, user);
    let call = control
        .connect(request, VoiceConfig::default())
        .expect("connect");
    let mut early = Vec::new();
    let session = session_of(wait_for(&control, call, &udp, |e| {
        early.push(e.clone());
        matches!(e, VoiceEvent::SessionReady(_))
    }));
    DirectClient {
        control,
        call,
        udp,
        session,
        early,
    }
}

/// Sends `frames` packets of a `freq` Hz tone as the session's SSRC, paced at about 20 ms.
fn send_tone(
    udp: &UdpSocket,
    session: &VoiceSession,
    freq: f64,
    frames: usize,
    start_frame: usize,
    rtp: &mut RtpStream,
    sealer: &mut Sealer,
) {
    let enc = Encoder::new(SampleRate::Hz48000, Channels::Stereo, Application::Audio)
        .expect("opus encoder");
    let server: SocketAddr = format!("{}:{}", session.server_ip, session.server_port)
        .parse()
        .expect("server address");
    let mut pcm = [0i16; 960 * 2];
    let mut buf = [0u8; 1500];
    let mut next = Instant::now();
    for f in start_frame..start_frame + frames {
        for i in 0..960 {
            let t = (f * 960 + i) as f64 / 48_000.0;
            let v = (0.5 * (2.0 * std::f64::consts::PI * freq * t).sin() * 32767.0) as i16;
            pcm[2 * i] = v;
            pcm[2 * i + 1] = v;
        }
        let h = rtp.write_next(&mut buf).expect("header fits");
        let n = enc.encode(&pcm, &mut buf[h..1400]).expect("opus encode");
        let len = sealer.seal(&mut buf, h, n).expect("seal");
        udp.send_to(&buf[..len], server).expect("send");
        next += Duration::from_millis(20);
        if let Some(d) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
}

fn net_mode(s: &VoiceSession) -> EncryptionMode {
    s.mode
        .as_str()
        .parse()
        .expect("same mode names in both crates")
}

fn wait_stats(
    server: &Server,
    what: &str,
    mut ok: impl FnMut(&ServerStats) -> bool,
) -> ServerStats {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = server.stats();
        if ok(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {s:#?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Frequency of the left channel by zero crossings, skipping the first 100 ms.
fn frequency(samples: &[i16]) -> f64 {
    let left: Vec<i16> = samples.chunks_exact(2).map(|c| c[0]).skip(4800).collect();
    let crossings = left.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
    crossings as f64 / 2.0 / (left.len() as f64 / 48_000.0)
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("quaver-serve-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

#[test]
fn built_in_main_gateway_joins_and_audio_decodes_into_a_recording() {
    let dir = temp_dir("record");
    let keylog = dir.join("keys.log");
    let server = Server::start(ServerConfig {
        record_dir: Some(dir.clone()),
        keylog: Some(keylog.clone()),
        require_issued_tokens: true,
        ..ServerConfig::default()
    })
    .expect("server starts");
    assert!(server.main_gateway_url().starts_with("wss://"));
    let control = Arc::new(ControlThread::spawn(server.control_config()).expect("control"));
    let mut cfg = MainGatewayConfig::new(Token::new("local-bot-token"));
    cfg.url = server.main_gateway_url();
    let bot = control.connect_bot(cfg).expect("connect bot");
    let user_id = loop {
        match control.events().recv_timeout(WAIT).expect("READY") {
            ControlEvent::MainGateway {
                event: MainGatewayEvent::Ready { user_id },
                ..
            } => break user_id,
            _ => continue,
        }
    };
    let mut mgr = BotJoin::new(control.clone(), bot, user_id);
    mgr.join(42, 43).expect("join");
    let udp = udp_socket();
    let deadline = Instant::now() + WAIT;
    let (call, session) = loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .expect("SessionReady in time");
        let ev = control.events().recv_timeout(left).expect("event");
        let Ok(Some(ce)) = mgr.handle_control_event(ev) else {
            continue;
        };
        match ce.event {
            VoiceEvent::DiscoveryRequested { ssrc, ip, port } => {
                discover(&control, ce.call, &udp, ssrc, &ip, port)
            }
            VoiceEvent::SessionReady(s) => break (ce.call, s),
            _ => {}
        }
    };
    // DAVE is required by default, and Quaver's client offers it.
    assert_eq!(session.dave_protocol_version, 1);
    assert_eq!(session.mode.as_str(), "aead_aes256_gcm_rtpsize");
    assert_eq!(server.ssrc_of(42, user_id), Some(session.ssrc));

    // The keylog holds exactly this session's key.
    let log = std::fs::read_to_string(&keylog).expect("keylog written");
    let hex: String = session
        .secret_key
        .expose()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        log.trim(),
        format!(
            "SSRC {} MODE aead_aes256_gcm_rtpsize KEY {hex}",
            session.ssrc
        )
    );

    let mut rtp = RtpStream::new(session.ssrc);
    let mut sealer = Sealer::new(
        net_mode(&session),
        &SecretKey::new(*session.secret_key.expose()),
    );
    send_tone(&udp, &session, 1000.0, 50, 0, &mut rtp, &mut sealer);
    let stats = wait_stats(&server, "50 packets", |s| {
        s.stream(session.ssrc)
            .is_some_and(|x| x.decoded_samples.unwrap_or(0) >= 50 * 960)
    });
    let s = stats.stream(session.ssrc).expect("stream");
    assert_eq!(
        (s.packets, s.lost, s.reordered, s.duplicates),
        (50, 0, 0, 0)
    );
    assert_eq!((s.timestamp_step_errors, s.decode_errors), (0, Some(0)));
    assert_eq!((s.user_id, s.guild_id), (user_id, 42));
    let (lateness, jitter) = (s.lateness_us.unwrap(), s.jitter_us.unwrap());
    assert_eq!(lateness.count, 50);
    assert_eq!(lateness.min, 0.0);
    assert_eq!(jitter.count, 49);
    assert_eq!(stats.counters.auth_failures, 0);
    assert_eq!(
        stats.counters.kernel_timestamps, 50,
        "SO_TIMESTAMPNS on every packet"
    );

    // Leaving over the main gateway ends the call and reports it.
    mgr.leave(42).expect("leave");
    let ended = loop {
        match server
            .events()
            .recv_timeout(WAIT)
            .expect("call ended event")
        {
            quaver_tools::server::ServerEvent::CallEnded(c) => break c,
            _ => continue,
        }
    };
    assert!(ended.ended);
    assert_eq!(ended.streams.len(), 1);
    let _ = call;
    let path = s.recording.clone().expect("recording path");
    server.stop();
    let (channels, rate, samples) = quaver_tools::server::wav::read_wav_i16(&path).expect("wav");
    assert_eq!((channels, rate), (2, 48_000));
    assert_eq!(samples.len(), 50 * 960 * 2);
    let f = frequency(&samples);
    assert!((950.0..1050.0).contains(&f), "recorded tone at {f} Hz");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A raw websocket over TLS (trusting the server's CA), for protocol-level tests.
type RawWs = tungstenite::WebSocket<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>;

/// Opens a TLS websocket to `addr` with `path_and_query`, trusting `server`'s CA.
fn raw_connect(
    server: &Server,
    addr: SocketAddr,
    path_and_query: &str,
) -> Result<RawWs, tungstenite::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(server.certificate_der().expect("tls is the default"))
        .expect("the CA parses");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("tls versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(addr).expect("tcp connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let name = rustls::pki_types::ServerName::try_from(addr.ip().to_string()).expect("ip name");
    let tls = rustls::ClientConnection::new(Arc::new(config), name).expect("tls client");
    let stream = rustls::StreamOwned::new(tls, tcp);
    let url = format!("wss://{addr}{path_and_query}");
    match tungstenite::client::client(url, stream) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(e)) => Err(e),
        Err(tungstenite::HandshakeError::Interrupted(_)) => {
            panic!("a blocking handshake is never interrupted")
        }
    }
}

/// Raw voice websocket (v8) for bad-input tests.
fn raw_ws(server: &Server) -> RawWs {
    raw_voice(server, 8)
}

/// Raw voice websocket of gateway version `v`.
fn raw_voice(server: &Server, v: u32) -> RawWs {
    raw_connect(server, server.voice_gateway_addr(), &format!("/?v={v}")).expect("ws connect")
}

/// Reads until the server closes; returns its close code.
fn close_code_of(ws: &mut RawWs) -> Option<u16> {
    loop {
        match ws.read() {
            Ok(Message::Close(f)) => return f.map(|f| u16::from(f.code)),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

fn identify_json(guild: u64, user: u64) -> String {
    format!(
        r#"{{"op":0,"d":{{"server_id":"{guild}","user_id":"{user}","session_id":"s{user}","token":"t","max_dave_protocol_version":0}}}}"#
    )
}

#[test]
fn garbage_from_clients_is_counted_and_a_good_client_keeps_streaming() {
    let server = Server::start(ServerConfig {
        max_message_size: 16 * 1024,
        // Hand-crafted raw clients identify without DAVE (version 0): Optional admits them.
        dave: DaveMode::Optional,
        ..ServerConfig::default()
    })
    .expect("server starts");
    let good = direct_client(&server, 1, 10);
    let mut rtp = RtpStream::new(good.session.ssrc);
    let mode = net_mode(&good.session);
    let mut sealer = Sealer::new(mode, &SecretKey::new(*good.session.secret_key.expose()));
    send_tone(
        &good.udp,
        &good.session,
        440.0,
        10,
        0,
        &mut rtp,
        &mut sealer,
    );

    // Websocket garbage, each on its own connection.
    // No gateway version, or one outside 4–8: rejected at the HTTP upgrade.
    for path in ["/", "/?v=3", "/?v=9", "/?v=x"] {
        match raw_connect(&server, server.voice_gateway_addr(), path) {
            Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 400, "{path}"),
            other => panic!("{path}: expected HTTP 400, got {:?}", other.map(|_| ())),
        }
    }
    let mut ws = raw_ws(&server);
    ws.send(Message::text("{not json")).expect("send");
    assert_eq!(close_code_of(&mut ws), Some(4002));
    let mut ws = raw_ws(&server);
    ws.send(Message::text(r#"{"op":1,"d":{"protocol":"udp","data":{"address":"1.2.3.4","port":1,"mode":"aead_aes256_gcm_rtpsize"}}}"#)).expect("send");
    assert_eq!(
        close_code_of(&mut ws),
        Some(4003),
        "select protocol before identify"
    );
    let mut ws = raw_ws(&server);
    ws.send(Message::text(identify_json(2, 20))).expect("send");
    ws.send(Message::binary(vec![26u8, 1, 2, 3])).expect("send");
    ws.send(Message::text(r#"{"op":2,"d":{}}"#)).expect("send");
    assert_eq!(
        close_code_of(&mut ws),
        Some(4001),
        "a server-only opcode from a client"
    );
    let mut ws = raw_ws(&server);
    ws.send(Message::text(identify_json(2, 21))).expect("send");
    ws.send(Message::text(r#"{"op":1,"d":{"protocol":"udp","data":{"address":"127.0.0.1","port":1,"mode":"xsalsa20_poly1305"}}}"#)).expect("send");
    assert_eq!(close_code_of(&mut ws), Some(4016), "a discontinued mode");
    let mut ws = raw_ws(&server);
    ws.send(Message::text(
        r#"{"op":7,"d":{"server_id":"2","session_id":"nope","token":"t","seq_ack":0}}"#,
    ))
    .expect("send");
    assert_eq!(
        close_code_of(&mut ws),
        Some(4006),
        "resume of an unknown session"
    );
    let mut ws = raw_ws(&server);
    let _ = ws.send(Message::text(format!("\"{}\"", "x".repeat(64 * 1024))));
    assert!(
        matches!(close_code_of(&mut ws), Some(4002) | None),
        "oversized frame"
    );

    // UDP garbage: random bytes, truncated RTP, an unknown SSRC, and a bad auth tag.
    let bad = udp_socket();
    let server_udp = server.udp_addr();
    for i in 0..50u8 {
        let junk: Vec<u8> = (0..(i as usize * 7 % 300))
            .map(|j| (j as u8).wrapping_mul(31).wrapping_add(i))
            .collect();
        bad.send_to(&junk, server_udp).expect("send");
    }
    bad.send_to(&[0x80, 0x78, 0, 1, 0, 0], server_udp)
        .expect("send");
    let mut buf = [0u8; 200];
    let mut other_rtp = RtpStream::new(0xDEAD_BEEF);
    let h = other_rtp.write_next(&mut buf).expect("header");
    let mut wrong = Sealer::new(mode, &SecretKey::new([9; 32]));
    let n = wrong.seal(&mut buf, h, 20).expect("seal");
    bad.send_to(&buf[..n], server_udp).expect("send");
    let mut forged = RtpStream::new(good.session.ssrc);
    let h = forged.write_next(&mut buf).expect("header");
    let n = wrong.seal(&mut buf, h, 20).expect("seal");
    bad.send_to(&buf[..n], server_udp).expect("send");

    // The good client is still served.
    send_tone(
        &good.udp,
        &good.session,
        440.0,
        20,
        10,
        &mut rtp,
        &mut sealer,
    );
    let stats = wait_stats(&server, "good packets and garbage counted", |s| {
        s.stream(good.session.ssrc).is_some_and(|x| x.packets == 30)
            && s.counters.auth_failures >= 1
            && s.counters.garbage_datagrams + s.counters.malformed_rtp + s.counters.keepalives >= 40
    });
    let s = stats.stream(good.session.ssrc).expect("stream");
    assert_eq!(
        (s.lost, s.decode_errors, s.timestamp_step_errors),
        (0, Some(0), 0)
    );
    let c = stats.counters;
    assert!(c.bad_json >= 1 && c.oversized_frames >= 1, "{c:?}");
    assert!(c.unknown_opcodes >= 1, "{c:?}");
    assert!(c.unknown_ssrc >= 1, "{c:?}");
    assert!(c.binary_frames >= 1, "{c:?}");
    assert_eq!(c.failed_resumes, 1);
    // The good client's websocket never noticed.
    good.control
        .set_speaking(good.call, SpeakingFlags::NONE)
        .expect("alive");
    wait_for(&good.control, good.call, &good.udp, |e| {
        matches!(e, VoiceEvent::SpeakingSent(_))
    });
}

#[test]
fn forwarding_reseals_for_each_receiver_and_relays_speaking() {
    let server = Server::start(ServerConfig::default()).expect("server starts");
    let a = direct_client(&server, 5, 50);
    let b = direct_client(&server, 5, 51);
    assert_ne!(a.session.secret_key.expose(), b.session.secret_key.expose());
    // B learns A's SSRC from the relayed Speaking (A sent Speaking before B joined), possibly
    // before its own Session Description.
    let speaking = VoiceEvent::UserSpeaking {
        user_id: 50,
        ssrc: a.session.ssrc,
        flags: SpeakingFlags::MICROPHONE,
    };
    if !b.early.contains(&speaking) {
        let ev = wait_for(&b.control, b.call, &b.udp, |e| {
            matches!(e, VoiceEvent::UserSpeaking { .. })
        });
        assert_eq!(ev, speaking);
    }
    assert!(b.early.contains(&VoiceEvent::ClientsConnected(vec![50])));
    // And A hears that B connected.
    wait_for(
        &a.control,
        a.call,
        &a.udp,
        |e| matches!(e, VoiceEvent::ClientsConnected(u) if u == &vec![51]),
    );

    let mut rtp = RtpStream::new(a.session.ssrc);
    let mut sealer = Sealer::new(
        net_mode(&a.session),
        &SecretKey::new(*a.session.secret_key.expose()),
    );
    send_tone(&a.udp, &a.session, 1000.0, 20, 0, &mut rtp, &mut sealer);
    let cipher = TransportCipher::new(
        net_mode(&b.session),
        &SecretKey::new(*b.session.secret_key.expose()),
    );
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    let mut out = [0u8; 2048];
    while got.len() < 20 {
        let (n, _) = b.udp.recv_from(&mut buf).expect("forwarded packet");
        let r = receive::open_rtp(&cipher, &buf[..n], &mut out).expect("sealed with B's key");
        assert_eq!(r.ssrc, a.session.ssrc);
        got.push(r.sequence);
    }
    let first = got[0];
    assert!(
        got.iter()
            .enumerate()
            .all(|(i, s)| *s == first.wrapping_add(i as u16))
    );
    assert_eq!(server.stats().counters.forwarded, 20);

    // B leaves cleanly: A is told (op 13).
    b.control.disconnect(b.call).expect("disconnect");
    wait_for(&a.control, a.call, &a.udp, |e| {
        matches!(e, VoiceEvent::ClientDisconnected(51))
    });
}

#[test]
fn forwarding_reorder_swaps_neighbours() {
    let server = server_with(Faults {
        udp_reorder_pct: 100.0,
        ..Faults::default()
    });
    let a = direct_client(&server, 2, 20);
    let b = direct_client(&server, 2, 21);
    let mut rtp = RtpStream::new(a.session.ssrc);
    let mut sealer = Sealer::new(
        net_mode(&a.session),
        &SecretKey::new(*a.session.secret_key.expose()),
    );
    send_tone(&a.udp, &a.session, 1000.0, 10, 0, &mut rtp, &mut sealer);
    let cipher = TransportCipher::new(
        net_mode(&b.session),
        &SecretKey::new(*b.session.secret_key.expose()),
    );
    let (mut buf, mut out) = ([0u8; 2048], [0u8; 2048]);
    let mut got = Vec::new();
    while got.len() < 10 {
        let (n, _) = b.udp.recv_from(&mut buf).expect("forwarded packet");
        let r = receive::open_rtp(&cipher, &buf[..n], &mut out).expect("sealed for B");
        got.push(r.sequence.wrapping_sub(rtp.sequence.wrapping_sub(10)));
    }
    // Every packet is held back behind the next one.
    assert_eq!(got, vec![1, 0, 3, 2, 5, 4, 7, 6, 9, 8]);
    assert_eq!(server.stats().counters.injected_udp_reorders, 5);
}

#[test]
fn dropped_voice_websocket_resumes() {
    let server = server_with(Faults {
        drop_ws_after: Some(Duration::from_millis(200)),
        ..Faults::default()
    });
    let c = direct_client(&server, 3, 30);
    wait_for(&c.control, c.call, &c.udp, |e| {
        matches!(e, VoiceEvent::Resuming { .. })
    });
    wait_for(&c.control, c.call, &c.udp, |e| {
        matches!(e, VoiceEvent::Resumed)
    });
    let stats = server.stats();
    assert_eq!(stats.counters.injected_drops, 1);
    assert_eq!(stats.counters.resumes, 1);
    assert_eq!(
        server.ssrc_of(3, 30),
        Some(c.session.ssrc),
        "same session after the resume"
    );
}

#[test]
fn close_codes_produce_the_documented_client_behaviour() {
    // 4015: the client resumes the same session.
    let server = server_with(Faults {
        close_code: Some(4015),
        ..Faults::default()
    });
    let c = direct_client(&server, 1, 1);
    wait_for(&c.control, c.call, &c.udp, |e| {
        matches!(e, VoiceEvent::Resumed)
    });
    assert_eq!(server.stats().counters.resumes, 1);

    // 4006: the session is gone; the client needs a new voice state.
    let server = server_with(Faults {
        close_code: Some(4006),
        ..Faults::default()
    });
    let c = direct_client(&server, 1, 1);
    let ev = wait_for(&c.control, c.call, &c.udp, |e| {
        matches!(e, VoiceEvent::Ended(_))
    });
    assert_eq!(
        ev,
        VoiceEvent::Ended(EndReason::NeedsNewVoiceState { code: 4006 })
    );

    // 4001 (a client bug): the client reconnects with a fresh Identify (new SSRC) once.
    let server = server_with(Faults {
        close_code: Some(4001),
        ..Faults::default()
    });
    let c = direct_client(&server, 1, 1);
    wait_for(&c.control, c.call, &c.udp, |e| {
        matches!(e, VoiceEvent::Reconnecting { .. })
    });
    let again = session_of(wait_for(&c.control, c.call, &c.udp, |e| {
        matches!(e, VoiceEvent::SessionReady(_))
    }));
    assert_ne!(again.ssrc, c.session.ssrc);
    let counters = server.stats().counters;
    assert_eq!((counters.identifies, counters.resumes), (2, 0));
}

#[test]
fn tls_is_the_default_and_clients_trust_the_generated_ca() {
    let server = Server::start(ServerConfig::default()).expect("server starts");
    assert!(server.voice_gateway_url().starts_with("wss://"));
    assert!(server.main_gateway_url().starts_with("wss://"));
    // A bare host:port, as Discord sends: clients dial wss://host:port/?v=8.
    let request = server.voice_connect_request(9, 1, 90);
    assert_eq!(request.endpoint, server.voice_gateway_addr().to_string());
    assert_eq!(
        request.url(),
        format!("wss://{}/?v=8", server.voice_gateway_addr())
    );

    // Without the CA, the handshake fails and no session is made.
    let control = ControlThread::spawn(ControlConfig::default()).expect("control");
    let call = control
        .connect(request, VoiceConfig::default())
        .expect("connect");
    let refused = loop {
        match control.events().recv_timeout(WAIT).expect("an event") {
            ControlEvent::SocketError { id, error } if id == call.0 => break error,
            _ => continue,
        }
    };
    assert!(
        refused.to_string().to_lowercase().contains("certificate"),
        "{refused}"
    );
    assert_eq!(server.ssrc_of(9, 90), None);

    // With the CA as PEM (what `--cert-out` writes), the real client gets a session.
    let mut config = ControlConfig::default();
    let pem = server.ca_certificate_pem().expect("tls");
    assert_eq!(config.trust_pem(pem.as_bytes()).expect("pem"), 1);
    let c = direct_client_in(&server, 9, 1, 90, config);
    assert_eq!(server.ssrc_of(9, 90), Some(c.session.ssrc));
}

#[test]
fn plain_mode_sends_a_ws_endpoint() {
    let server = Server::start(ServerConfig {
        tls: false,
        ..ServerConfig::default()
    })
    .expect("server starts");
    assert!(server.certificate_der().is_none());
    assert!(server.main_gateway_url().starts_with("ws://"));
    let request = server.voice_connect_request(9, 1, 91);
    assert_eq!(
        request.endpoint,
        format!("ws://{}", server.voice_gateway_addr())
    );
    let c = direct_client_in(&server, 9, 1, 91, ControlConfig::default());
    assert_eq!(server.ssrc_of(9, 91), Some(c.session.ssrc));
}

#[test]
fn forwarding_faults_and_garbage_towards_a_client() {
    let server = server_with(Faults {
        udp_duplicate_pct: 100.0,
        ..Faults::default()
    });
    let a = direct_client(&server, 8, 80);
    let b = direct_client(&server, 8, 81);
    // Garbage towards B first: its control thread and socket must shrug it off.
    assert!(server.send_garbage_json(8, 81));
    assert!(server.send_garbage_datagrams(8, 81, 10) >= 10);
    let mut rtp = RtpStream::new(a.session.ssrc);
    let mut sealer = Sealer::new(
        net_mode(&a.session),
        &SecretKey::new(*a.session.secret_key.expose()),
    );
    send_tone(&a.udp, &a.session, 1000.0, 10, 0, &mut rtp, &mut sealer);
    let cipher = TransportCipher::new(
        net_mode(&b.session),
        &SecretKey::new(*b.session.secret_key.expose()),
    );
    let (mut buf, mut out) = ([0u8; 2048], [0u8; 2048]);
    let mut opened = 0;
    while opened < 20 {
        let (n, _) = b.udp.recv_from(&mut buf).expect("forwarded packet");
        if receive::open_rtp(&cipher, &buf[..n], &mut out).is_ok() {
            opened += 1;
        }
    }
    let c = server.stats().counters;
    assert_eq!((c.forwarded, c.injected_udp_duplicates), (20, 10));
    // The server's own receive statistics are not affected by forwarding faults.
    let s = server.stream_stats(a.session.ssrc).expect("stream");
    assert_eq!((s.packets, s.duplicates, s.lost), (10, 0, 0));
    // B's websocket survived the garbage.
    b.control
        .set_speaking(b.call, SpeakingFlags::NONE)
        .expect("alive");
    wait_for(&b.control, b.call, &b.udp, |e| {
        matches!(e, VoiceEvent::SpeakingSent(_))
    });
}

/// Reads text frames until one with opcode `op`; returns it as JSON.
fn read_op(ws: &mut RawWs, op: u64) -> serde_json::Value {
    loop {
        match ws.read().expect("frame") {
            Message::Text(t) => {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).expect("server JSON");
                if v["op"].as_u64() == Some(op) {
                    return v;
                }
            }
            _ => continue,
        }
    }
}

fn select_json() -> &'static str {
    r#"{"op":1,"d":{"protocol":"udp","data":{"address":"127.0.0.1","port":9,"mode":"aead_aes256_gcm_rtpsize"}}}"#
}

fn resume_json(guild: u64, user: u64, seq_ack: i64) -> String {
    format!(
        r#"{{"op":7,"d":{{"server_id":"{guild}","session_id":"s{user}","token":"t","seq_ack":{seq_ack}}}}}"#
    )
}

#[test]
fn resume_replays_what_the_client_missed_or_closes_4006() {
    let server = Server::start(ServerConfig {
        // Hand-crafted raw clients identify without DAVE (version 0): Optional admits them.
        dave: DaveMode::Optional,
        ..ServerConfig::default()
    })
    .expect("server starts");
    let mut ws = raw_ws(&server);
    ws.send(Message::text(identify_json(4, 40))).expect("send");
    assert_eq!(read_op(&mut ws, 2)["seq"], 1);
    ws.send(Message::text(select_json())).expect("send");
    let desc = read_op(&mut ws, 4);
    assert_eq!(desc["seq"], 2);
    assert_eq!(desc["d"]["secret_key"].as_array().map(Vec::len), Some(32));
    assert_eq!(desc["d"]["dave_protocol_version"], 0);
    drop(ws); // no close frame: the session stays resumable
    // Someone joins while user 40 is away: that op 11 gets seq 3.
    let mut other = raw_ws(&server);
    other
        .send(Message::text(identify_json(4, 41)))
        .expect("send");
    read_op(&mut other, 2);
    let mut ws = raw_ws(&server);
    ws.send(Message::text(resume_json(4, 40, 2))).expect("send");
    read_op(&mut ws, 9);
    let replayed = read_op(&mut ws, 11);
    assert_eq!(replayed["seq"], 3);
    assert_eq!(replayed["d"]["user_ids"][0], "41");
    assert_eq!(server.stats().counters.resumes, 1);

    // A replay buffer that no longer covers seq_ack: 4006.
    let server = Server::start(ServerConfig {
        replay_buffer: 1,
        // Hand-crafted raw clients identify without DAVE (version 0): Optional admits them.
        dave: DaveMode::Optional,
        ..ServerConfig::default()
    })
    .expect("server starts");
    let mut ws = raw_ws(&server);
    ws.send(Message::text(identify_json(4, 40))).expect("send");
    read_op(&mut ws, 2);
    ws.send(Message::text(select_json())).expect("send");
    read_op(&mut ws, 4);
    drop(ws);
    let mut ws = raw_ws(&server);
    ws.send(Message::text(resume_json(4, 40, 0))).expect("send");
    assert_eq!(close_code_of(&mut ws), Some(4006));
}

#[test]
fn a_silent_client_is_closed_with_4009() {
    let server = Server::start(ServerConfig {
        heartbeat_interval_ms: 50.0,
        heartbeat_timeout_intervals: Some(2.0),
        // Hand-crafted raw clients identify without DAVE (version 0): Optional admits them.
        dave: DaveMode::Optional,
        ..ServerConfig::default()
    })
    .expect("server starts");
    let mut ws = raw_ws(&server);
    let hello = read_op(&mut ws, 8);
    assert_eq!(hello["d"]["heartbeat_interval"], 50.0);
    ws.send(Message::text(identify_json(6, 60))).expect("send");
    assert_eq!(close_code_of(&mut ws), Some(4009));
    assert_eq!(server.stats().counters.heartbeat_timeouts, 1);
}

#[test]
fn quaver_serve_command_reports_a_call_and_stops_on_sigint() {
    use std::io::BufRead;
    let dir = temp_dir("cli");
    let ca = dir.join("ca.pem");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_quaver"))
        .args(["serve", "--listen", "127.0.0.1:0", "--record"])
        .arg(&dir)
        .arg("--cert-out")
        .arg(&ca)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn quaver serve");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, lines) = crossbeam_channel::unbounded();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let next_line = || lines.recv_timeout(WAIT).expect("a line from quaver serve");
    let first = next_line();
    let url = first
        .strip_prefix("quaver serve: main gateway ")
        .expect("first line names the main gateway")
        .to_string();
    assert!(url.starts_with("wss://"), "{url}");

    // The CA file is written before the first line.
    let mut config = ControlConfig::default();
    config
        .trust_pem(&std::fs::read(&ca).expect("--cert-out wrote the CA"))
        .expect("a PEM certificate");
    let control = Arc::new(ControlThread::spawn(config).expect("control"));
    let mut cfg = MainGatewayConfig::new(Token::new("cli-bot"));
    cfg.url = url;
    let bot = control.connect_bot(cfg).expect("connect bot");
    let user_id = loop {
        if let ControlEvent::MainGateway {
            event: MainGatewayEvent::Ready { user_id },
            ..
        } = control.events().recv_timeout(WAIT).expect("READY")
        {
            break user_id;
        }
    };
    let mut mgr = BotJoin::new(control.clone(), bot, user_id);
    mgr.join(1, 2).expect("join");
    let udp = udp_socket();
    let session = loop {
        let ev = control.events().recv_timeout(WAIT).expect("event");
        let Ok(Some(ce)) = mgr.handle_control_event(ev) else {
            continue;
        };
        match ce.event {
            VoiceEvent::DiscoveryRequested { ssrc, ip, port } => {
                discover(&control, ce.call, &udp, ssrc, &ip, port)
            }
            VoiceEvent::SessionReady(s) => break s,
            _ => {}
        }
    };
    let mut rtp = RtpStream::new(session.ssrc);
    let mut sealer = Sealer::new(
        net_mode(&session),
        &SecretKey::new(*session.secret_key.expose()),
    );
    send_tone(&udp, &session, 1000.0, 10, 0, &mut rtp, &mut sealer);
    // The report is printed when the session ends; give the UDP thread a moment to account
    // the last packets first. Only "0 lost" is asserted: a packet still queued at the end
    // would be unaccounted, never lost.
    std::thread::sleep(Duration::from_millis(200));
    mgr.leave(1).expect("leave");
    let report = loop {
        let line = next_line();
        if line.contains(&format!("ssrc {} (user {user_id})", session.ssrc)) {
            break line;
        }
    };
    assert!(report.contains(" packets, 0 lost,"), "{report}");
    // SAFETY: kill(2) on the child this test spawned.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let status = child.wait().expect("quaver serve exits");
    assert!(status.success(), "{status:?}");
    let wavs = std::fs::read_dir(&dir)
        .expect("record dir")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "wav"))
        })
        .count();
    assert_eq!(wavs, 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tokens_the_server_did_not_issue_close_4004_when_required() {
    let server = Server::start(ServerConfig {
        require_issued_tokens: true,
        ..ServerConfig::default()
    })
    .expect("server starts");
    let mut ws = raw_ws(&server);
    ws.send(Message::text(identify_json(3, 33))).expect("send");
    assert_eq!(close_code_of(&mut ws), Some(4004));
    // Issued credentials work, and the real client reaches SessionReady with them.
    let c = direct_client(&server, 3, 33);
    assert_eq!(server.ssrc_of(3, 33), Some(c.session.ssrc));
}

/// Receives forwarded packets on `udp` until `count` opened with `cipher`; returns their SSRCs.
fn receive_forwarded(udp: &UdpSocket, cipher: &TransportCipher, count: usize) -> Vec<u32> {
    let (mut buf, mut out) = ([0u8; 2048], [0u8; 2048]);
    let mut ssrcs = Vec::new();
    while ssrcs.len() < count {
        let (n, _) = udp.recv_from(&mut buf).expect("forwarded packet");
        if let Ok(r) = receive::open_rtp(cipher, &buf[..n], &mut out) {
            ssrcs.push(r.ssrc);
        }
    }
    ssrcs
}

fn cipher_of(s: &VoiceSession) -> TransportCipher {
    TransportCipher::new(net_mode(s), &SecretKey::new(*s.secret_key.expose()))
}

#[test]
fn two_channels_of_a_guild_do_not_hear_each_other() {
    let server = Server::start(ServerConfig::default()).expect("server starts");
    let a = direct_client_in(&server, 10, 1, 101, server.control_config());
    let b = direct_client_in(&server, 10, 1, 102, server.control_config());
    let c = direct_client_in(&server, 10, 2, 103, server.control_config());
    let d = direct_client_in(&server, 10, 2, 104, server.control_config());
    // B hears that A is there; C and D only hear each other.
    assert!(b.early.contains(&VoiceEvent::ClientsConnected(vec![101])));
    assert!(d.early.contains(&VoiceEvent::ClientsConnected(vec![103])));
    // (The server's own DAVE group member is announced to every DAVE session.)
    assert!(
        !c.early.iter().any(|e| matches!(
            e,
            VoiceEvent::ClientsConnected(u) if u.iter().any(|u| *u != OBSERVER_USER_ID)
        )),
        "{:?}",
        c.early
    );

    // A talks in channel 1, C in channel 2.
    for (sender, freq) in [(&a, 500.0), (&c, 700.0)] {
        let mut rtp = RtpStream::new(sender.session.ssrc);
        let mut sealer = Sealer::new(
            net_mode(&sender.session),
            &SecretKey::new(*sender.session.secret_key.expose()),
        );
        send_tone(
            &sender.udp,
            &sender.session,
            freq,
            10,
            0,
            &mut rtp,
            &mut sealer,
        );
    }
    let heard_by_b = receive_forwarded(&b.udp, &cipher_of(&b.session), 10);
    assert!(
        heard_by_b.iter().all(|s| *s == a.session.ssrc),
        "{heard_by_b:?}"
    );
    let heard_by_d = receive_forwarded(&d.udp, &cipher_of(&d.session), 10);
    assert!(
        heard_by_d.iter().all(|s| *s == c.session.ssrc),
        "{heard_by_d:?}"
    );
    // 20 forwarded in all: nothing crossed to the other channel (A and C hear nobody).
    let stats = wait_stats(&server, "both streams", |s| {
        s.stream(a.session.ssrc).is_some_and(|x| x.packets == 10)
            && s.stream(c.session.ssrc).is_some_and(|x| x.packets == 10)
    });
    assert_eq!(stats.counters.forwarded, 20);
    let calls: Vec<(u64, u64, usize)> = stats
        .calls
        .iter()
        .map(|call| (call.guild_id, call.channel_id, call.streams.len()))
        .collect();
    assert_eq!(calls, vec![(10, 1, 1), (10, 2, 1)]);
    assert_eq!(stats.stream(c.session.ssrc).map(|s| s.channel_id), Some(2));

    // Channel 2 empties: its call ends and is reported on its own, channel 1 lives on.
    for client in [&c, &d] {
        client.control.disconnect(client.call).expect("disconnect");
    }
    let ended = loop {
        match server.events().recv_timeout(WAIT).expect("call ended") {
            quaver_tools::server::ServerEvent::CallEnded(call) => break call,
            _ => continue,
        }
    };
    assert_eq!(
        (ended.guild_id, ended.channel_id, ended.ended),
        (10, 2, true)
    );
    assert!(
        server
            .stats()
            .calls
            .iter()
            .any(|c| c.channel_id == 1 && !c.ended)
    );
    // B never heard C or D come and go.
    b.control
        .set_speaking(b.call, SpeakingFlags::NONE)
        .expect("alive");
    let mut seen = Vec::new();
    wait_for(&b.control, b.call, &b.udp, |e| {
        seen.push(e.clone());
        matches!(e, VoiceEvent::SpeakingSent(_))
    });
    assert!(
        !seen.iter().any(|e| matches!(
            e,
            VoiceEvent::ClientsConnected(_) | VoiceEvent::ClientDisconnected(_)
        )),
        "{seen:?}"
    );
}

/// Reads the next text frame as JSON.
fn next_json(ws: &mut RawWs) -> serde_json::Value {
    loop {
        if let Message::Text(t) = ws.read().expect("frame") {
            return serde_json::from_str(t.as_str()).expect("server JSON");
        }
    }
}

#[test]
fn voice_gateway_v4_is_served_with_its_own_framing() {
    let server = Server::start(ServerConfig {
        // Hand-crafted raw clients identify without DAVE (version 0): Optional admits them.
        dave: DaveMode::Optional,
        ..ServerConfig::default()
    })
    .expect("server starts");
    let mut ws = raw_voice(&server, 4);
    let hello = next_json(&mut ws);
    assert_eq!(hello["op"], 8);
    assert_eq!(hello["d"]["v"], 4);
    ws.send(Message::text(identify_json(4, 40))).expect("send");
    let ready = read_op(&mut ws, 2);
    assert!(ready.get("seq").is_none(), "no seq under v4: {ready}");
    // songbird's heartbeat: the bare nonce, answered with the bare nonce.
    ws.send(Message::text(r#"{"op":3,"d":1234567}"#))
        .expect("send");
    let ack = read_op(&mut ws, 6);
    assert_eq!(ack, serde_json::json!({"op": 6, "d": 1234567}));
    ws.send(Message::text(select_json())).expect("send");
    let desc = read_op(&mut ws, 4);
    assert!(desc.get("seq").is_none(), "{desc}");
    assert_eq!(desc["d"]["secret_key"].as_array().map(Vec::len), Some(32));
    // Someone joins: op 11 without seq either.
    let mut other = raw_voice(&server, 4);
    other
        .send(Message::text(identify_json(4, 41)))
        .expect("send");
    let joined = read_op(&mut ws, 11);
    assert!(joined.get("seq").is_none(), "{joined}");
    drop(ws); // no close frame: resumable

    // Resume under v4 has no seq_ack and replays nothing: Resumed, then live traffic only.
    other
        .send(Message::text(
            r#"{"op":5,"d":{"speaking":1,"delay":0,"ssrc":1}}"#,
        ))
        .expect("send");
    let mut ws = raw_voice(&server, 4);
    ws.send(Message::text(
        r#"{"op":7,"d":{"server_id":"4","session_id":"s40","token":"t"}}"#,
    ))
    .expect("send");
    let resumed = read_op(&mut ws, 9);
    assert!(resumed.get("seq").is_none(), "{resumed}");
    ws.send(Message::text(r#"{"op":3,"d":7}"#)).expect("send");
    let mut after = Vec::new();
    loop {
        let v = next_json(&mut ws);
        if v["op"] == 6 {
            assert_eq!(v["d"], 7);
            break;
        }
        after.push(v);
    }
    // Only the op 5 of user 41 (told again because it never reached this client), no replay
    // of op 11.
    assert!(
        after.iter().all(|v| v["op"] == 5 && v.get("seq").is_none()),
        "{after:?}"
    );
    assert_eq!(server.stats().counters.resumes, 1);

    // v8 is unchanged: object heartbeat and ACK, seq on numbered messages; a bare nonce is
    // read too and answered in v8 form.
    let mut v8 = raw_voice(&server, 8);
    assert_eq!(next_json(&mut v8)["d"]["v"], 8);
    v8.send(Message::text(identify_json(5, 50))).expect("send");
    assert_eq!(read_op(&mut v8, 2)["seq"], 1);
    v8.send(Message::text(r#"{"op":3,"d":{"t":99,"seq_ack":1}}"#))
        .expect("send");
    assert_eq!(
        read_op(&mut v8, 6),
        serde_json::json!({"op": 6, "d": {"t": 99}})
    );
    v8.send(Message::text(r#"{"op":3,"d":98}"#)).expect("send");
    assert_eq!(
        read_op(&mut v8, 6),
        serde_json::json!({"op": 6, "d": {"t": 98}})
    );
    // v5–v7 get the v4 framing.
    let mut v7 = raw_voice(&server, 7);
    assert_eq!(next_json(&mut v7)["d"]["v"], 7);
    v7.send(Message::text(identify_json(6, 60))).expect("send");
    assert!(read_op(&mut v7, 2).get("seq").is_none());
}

/// A raw voice participant: websocket, UDP socket and key, for ordering checks.
struct RawMember {
    ws: RawWs,
    udp: UdpSocket,
    ssrc: u32,
    cipher: TransportCipher,
    sealer: Sealer,
    /// SSRC → user ID from every op 5 read so far.
    speakers: std::collections::HashMap<u32, u64>,
}

impl RawMember {
    fn join(server: &Server, guild: u64, user: u64) -> RawMember {
        let mut ws = raw_ws(server);
        let udp = udp_socket();
        ws.send(Message::text(identify_json(guild, user)))
            .expect("send");
        let mut speakers = std::collections::HashMap::new();
        let mut ssrc = None;
        let mut key = None;
        while key.is_none() {
            let v = next_json(&mut ws);
            match v["op"].as_u64() {
                Some(2) => {
                    ssrc = v["d"]["ssrc"].as_u64();
                    let port = udp.local_addr().expect("bound").port();
                    ws.send(Message::text(format!(
                        r#"{{"op":1,"d":{{"protocol":"udp","data":{{"address":"127.0.0.1","port":{port},"mode":"aead_aes256_gcm_rtpsize"}}}}}}"#
                    )))
                    .expect("send");
                }
                Some(4) => {
                    let bytes: Vec<u8> = v["d"]["secret_key"]
                        .as_array()
                        .expect("key")
                        .iter()
                        .map(|b| b.as_u64().expect("byte") as u8)
                        .collect();
                    key = Some(SecretKey::from_slice(&bytes).expect("32 bytes"));
                }
                Some(5) => note_speaker(&mut speakers, &v),
                _ => {}
            }
        }
        let key = key.expect("key");
        let mode = EncryptionMode::Aes256GcmRtpSize;
        RawMember {
            ws,
            udp,
            ssrc: ssrc.expect("ready before session description") as u32,
            cipher: TransportCipher::new(mode, &key),
            sealer: Sealer::new(mode, &key),
            speakers,
        }
    }

    /// Reads every frame already received, without waiting for more.
    fn drain(&mut self) {
        let tcp = &self.ws.get_ref().sock;
        tcp.set_read_timeout(Some(Duration::from_millis(2)))
            .expect("timeout");
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => {
                    let v: serde_json::Value = serde_json::from_str(t.as_str()).expect("json");
                    if v["op"] == 5 {
                        note_speaker(&mut self.speakers, &v);
                    }
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break;
                }
                Err(e) => panic!("websocket failed: {e}"),
            }
        }
        let tcp = &self.ws.get_ref().sock;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
    }

    fn send_audio(&mut self, server: &Server, rtp: &mut RtpStream, frames: usize) {
        let mut buf = [0u8; 256];
        for _ in 0..frames {
            let h = rtp.write_next(&mut buf).expect("header");
            // An Opus silence frame.
            buf[h..h + 3].copy_from_slice(&[0xF8, 0xFF, 0xFE]);
            let n = self.sealer.seal(&mut buf, h, 3).expect("seal");
            self.udp
                .send_to(&buf[..n], server.udp_addr())
                .expect("send");
        }
    }

    /// Receives `count` forwarded packets; for each, every op 5 already on the wire is read
    /// first, and the packet's SSRC must be mapped by one of them.
    fn receive_mapped(&mut self, count: usize) -> Vec<u32> {
        let (mut buf, mut out) = ([0u8; 2048], [0u8; 2048]);
        let mut ssrcs = Vec::new();
        while ssrcs.len() < count {
            let (n, _) = self.udp.recv_from(&mut buf).expect("forwarded packet");
            let Ok(r) = receive::open_rtp(&self.cipher, &buf[..n], &mut out) else {
                continue;
            };
            self.drain();
            assert!(
                self.speakers.contains_key(&r.ssrc),
                "packet of ssrc {} before any op 5 for it (known: {:?})",
                r.ssrc,
                self.speakers
            );
            ssrcs.push(r.ssrc);
        }
        ssrcs
    }
}

fn note_speaker(speakers: &mut std::collections::HashMap<u32, u64>, v: &serde_json::Value) {
    let ssrc = v["d"]["ssrc"].as_u64().expect("op 5 ssrc") as u32;
    let user = v["d"]["user_id"]
        .as_str()
        .and_then(|u| u.parse().ok())
        .expect("op 5 from the server names the user");
    speakers.insert(ssrc, user);
}

#[test]
fn op_5_reaches_a_receiver_before_any_packet_of_its_ssrc() {
    let server = Server::start(ServerConfig {
        // Hand-crafted raw clients identify without DAVE (version 0): Optional admits them.
        dave: DaveMode::Optional,
        ..ServerConfig::default()
    })
    .expect("server starts");
    let mut receiver = RawMember::join(&server, 12, 120);
    // A sender that never sends op 5: the server makes one up at its first packet.
    let mut silent = RawMember::join(&server, 12, 121);
    let mut rtp = RtpStream::new(silent.ssrc);
    silent.send_audio(&server, &mut rtp, 10);
    let got = receiver.receive_mapped(10);
    assert!(got.iter().all(|s| *s == silent.ssrc));
    assert_eq!(receiver.speakers.get(&silent.ssrc), Some(&121));

    // A sender whose op 5 and first packet leave back to back.
    let mut talker = RawMember::join(&server, 12, 122);
    let speaking = format!(
        r#"{{"op":5,"d":{{"speaking":1,"delay":0,"ssrc":{}}}}}"#,
        talker.ssrc
    );
    talker.ws.send(Message::text(speaking)).expect("send");
    let mut rtp = RtpStream::new(talker.ssrc);
    talker.send_audio(&server, &mut rtp, 10);
    let got = receiver.receive_mapped(10);
    assert!(got.iter().all(|s| *s == talker.ssrc));
    assert_eq!(receiver.speakers.get(&talker.ssrc), Some(&122));

    // A newcomer after both: it is told about the talker on joining and about the silent
    // sender before its packets; it receives every packet, none unmapped.
    let mut late = RawMember::join(&server, 12, 123);
    let mut rtp = RtpStream::new(silent.ssrc);
    rtp.sequence = rtp.sequence.wrapping_add(100);
    silent.send_audio(&server, &mut rtp, 5);
    let got = late.receive_mapped(5);
    assert!(got.iter().all(|s| *s == silent.ssrc));
    assert_eq!(late.speakers.get(&silent.ssrc), Some(&121));
}

#[test]
fn moving_to_another_channel_leaves_the_old_call() {
    let server = Server::start(ServerConfig::default()).expect("server starts");
    // Someone stays in channel 1 and watches the bot come and go.
    let watcher = direct_client_in(&server, 20, 1, 201, server.control_config());
    let control = Arc::new(ControlThread::spawn(server.control_config()).expect("control"));
    let mut cfg = MainGatewayConfig::new(Token::new("mover"));
    cfg.url = server.main_gateway_url();
    let bot = control.connect_bot(cfg).expect("connect bot");
    let user_id = loop {
        if let ControlEvent::MainGateway {
            event: MainGatewayEvent::Ready { user_id },
            ..
        } = control.events().recv_timeout(WAIT).expect("READY")
        {
            break user_id;
        }
    };
    let mut mgr = BotJoin::new(control.clone(), bot, user_id);
    let udp = udp_socket();
    let ready_in = |mgr: &mut BotJoin, channel: u64| -> u32 {
        mgr.join(20, channel).expect("join");
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline
                .checked_duration_since(Instant::now())
                .expect("SessionReady in time");
            let ev = control.events().recv_timeout(left).expect("event");
            let Ok(Some(ce)) = mgr.handle_control_event(ev) else {
                continue;
            };
            match ce.event {
                VoiceEvent::DiscoveryRequested { ssrc, ip, port } => {
                    discover(&control, ce.call, &udp, ssrc, &ip, port)
                }
                VoiceEvent::SessionReady(s) if mgr.call(20) == Some(ce.call) => break s.ssrc,
                _ => {}
            }
        }
    };
    let first = ready_in(&mut mgr, 1);
    wait_for(
        &watcher.control,
        watcher.call,
        &watcher.udp,
        |e| matches!(e, VoiceEvent::ClientsConnected(u) if u == &vec![user_id]),
    );
    let second = ready_in(&mut mgr, 2);
    assert_ne!(first, second, "a fresh session in the new channel");
    // The watcher in channel 1 sees the bot leave; the bot's new session is in channel 2.
    wait_for(
        &watcher.control,
        watcher.call,
        &watcher.udp,
        |e| matches!(e, VoiceEvent::ClientDisconnected(u) if *u == user_id),
    );
    assert_eq!(server.ssrc_of(20, user_id), Some(second));
    let established: Vec<(u64, u32)> = server
        .events()
        .try_iter()
        .filter_map(|e| match e {
            quaver_tools::server::ServerEvent::SessionEstablished {
                channel_id,
                user_id: u,
                ssrc,
                ..
            } if u == user_id => Some((channel_id, ssrc)),
            _ => None,
        })
        .collect();
    assert_eq!(established, vec![(1, first), (2, second)]);
}
