//! The local server against Quaver's real gateway client, real UDP, real crypto and Opus, on
//! loopback only. No test asserts wall-clock timings.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use audiopus::coder::Encoder;
use audiopus::{Application, Channels, SampleRate};
use quaver_gateway::control::{CallId, ControlConfig, ControlEvent, ControlThread};
use quaver_gateway::main_gateway::{MainGatewayConfig, MainGatewayEvent};
use quaver_gateway::manager::{BotVoiceStateSender, VoiceManager};
use quaver_gateway::protocol::{SpeakingFlags, Token};
use quaver_gateway::voice::{EndReason, VoiceConfig, VoiceEvent, VoiceSession};
use quaver_net::crypto::{EncryptionMode, Sealer, SecretKey, TransportCipher};
use quaver_net::rtp::RtpStream;
use quaver_net::{discovery, receive};
use quaver_tools::server::{DaveMode, Faults, Server, ServerConfig, ServerStats};
use tungstenite::Message;

const WAIT: Duration = Duration::from_secs(20);

fn udp_socket() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind loopback udp");
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("set timeout");
    s
}

/// Handles IP discovery for a call with a real exchange over `udp`.
fn discover(
    control: &ControlThread,
    call: CallId,
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
    call: CallId,
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
    call: CallId,
    udp: UdpSocket,
    session: VoiceSession,
    /// Events that arrived before SessionReady (ops 11/5 may precede Session Description).
    early: Vec<VoiceEvent>,
}

/// A server on loopback with `faults` injected.
fn server_with(faults: Faults) -> Server {
    Server::start(ServerConfig {
        faults,
        // Quaver's client does not offer DAVE yet: accept it with version 0.
        dave: DaveMode::Optional,
        ..ServerConfig::default()
    })
    .expect("server starts")
}

/// Connects straight to the voice gateway with credentials from the server (no main gateway).
fn direct_client(
    server: &Server,
    guild: u64,
    user: u64,
    extra_roots: ControlConfig,
) -> DirectClient {
    let control = Arc::new(ControlThread::spawn(extra_roots).expect("control thread"));
    let udp = udp_socket();
    let request = server.voice_connect_request(guild, 7, user);
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
        // Quaver's client does not offer DAVE yet: accept it with version 0.
        dave: DaveMode::Optional,
        ..ServerConfig::default()
    })
    .expect("server starts");
    let control = Arc::new(ControlThread::spawn(ControlConfig::default()).expect("control"));
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
    let sender = BotVoiceStateSender::new(control.clone(), bot);
    let mut mgr = VoiceManager::new(control.clone(), sender, user_id, VoiceConfig::default());
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
    assert_eq!(session.dave_protocol_version, 0);
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
            .is_some_and(|x| x.decoded_samples >= 50 * 960)
    });
    let s = stats.stream(session.ssrc).expect("stream");
    assert_eq!(
        (s.packets, s.lost, s.reordered, s.duplicates),
        (50, 0, 0, 0)
    );
    assert_eq!((s.timestamp_step_errors, s.decode_errors), (0, 0));
    assert_eq!((s.user_id, s.guild_id), (user_id, 42));
    assert_eq!(s.lateness_us.count, 50);
    assert_eq!(s.lateness_us.min, 0);
    assert_eq!(s.jitter_us.count, 49);
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

/// Raw websocket client for bad-input tests.
fn raw_ws(
    server: &Server,
) -> tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>> {
    let (ws, _) = tungstenite::connect(server.voice_gateway_url()).expect("ws connect");
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
    }
    ws
}

/// Reads until the server closes; returns its close code.
fn close_code_of(
    ws: &mut tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>,
) -> Option<u16> {
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
        // Quaver's client does not offer DAVE yet: accept it with version 0.
        dave: DaveMode::Optional,
        ..ServerConfig::default()
    })
    .expect("server starts");
    let good = direct_client(&server, 1, 10, ControlConfig::default());
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
    // No gateway version: rejected at the HTTP upgrade.
    let plain = format!("ws://{}/", server.voice_gateway_addr());
    match tungstenite::connect(plain) {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 400),
        other => panic!("expected HTTP 400, got {:?}", other.map(|_| ())),
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
        (0, 0, 0)
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
    let server = Server::start(ServerConfig {
        dave: DaveMode::Optional,
        ..ServerConfig::default()
    })
    .expect("server starts");
    let a = direct_client(&server, 5, 50, ControlConfig::default());
    let b = direct_client(&server, 5, 51, ControlConfig::default());
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
    let a = direct_client(&server, 2, 20, ControlConfig::default());
    let b = direct_client(&server, 2, 21, ControlConfig::default());
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
    let c = direct_client(&server, 3, 30, ControlConfig::default());
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
    let c = direct_client(&server, 1, 1, ControlConfig::default());
    wait_for(&c.control, c.call, &c.udp, |e| {
        matches!(e, VoiceEvent::Resumed)
    });
    assert_eq!(server.stats().counters.resumes, 1);

    // 4006: the session is gone; the client needs a new voice state.
    let server = server_with(Faults {
        close_code: Some(4006),
        ..Faults::default()
    });
    let c = direct_client(&server, 1, 1, ControlConfig::default());
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
    let c = direct_client(&server, 1, 1, ControlConfig::default());
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
fn tls_clients_connect_with_the_generated_certificate() {
    let server = Server::start(ServerConfig {
        tls: true,
        // Quaver's client does not offer DAVE yet: accept it with version 0.
        dave: DaveMode::Optional,
        ..ServerConfig::default()
    })
    .expect("server starts");
    assert!(server.voice_gateway_url().starts_with("wss://"));
    let cert = server.certificate_der().expect("certificate under tls");
    let config = ControlConfig {
        extra_roots: vec![cert],
        ..ControlConfig::default()
    };
    let c = direct_client(&server, 9, 90, config);
    assert_eq!(server.ssrc_of(9, 90), Some(c.session.ssrc));
}

#[test]
fn forwarding_faults_and_garbage_towards_a_client() {
    let server = server_with(Faults {
        udp_duplicate_pct: 100.0,
        ..Faults::default()
    });
    let a = direct_client(&server, 8, 80, ControlConfig::default());
    let b = direct_client(&server, 8, 81, ControlConfig::default());
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
fn read_op(
    ws: &mut tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>,
    op: u64,
) -> serde_json::Value {
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
        // Quaver's client does not offer DAVE yet: accept it with version 0.
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
        // Quaver's client does not offer DAVE yet: accept it with version 0.
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
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_quaver"))
        .args([
            "serve",
            "--dave",
            "optional",
            "--listen",
            "127.0.0.1:0",
            "--record",
        ])
        .arg(&dir)
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

    let control = Arc::new(ControlThread::spawn(ControlConfig::default()).expect("control"));
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
    let sender = BotVoiceStateSender::new(control.clone(), bot);
    let mut mgr = VoiceManager::new(control.clone(), sender, user_id, VoiceConfig::default());
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
    let wavs = std::fs::read_dir(&dir).expect("record dir").count();
    assert_eq!(wavs, 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tokens_the_server_did_not_issue_close_4004_when_required() {
    let server = Server::start(ServerConfig {
        require_issued_tokens: true,
        // Quaver's client does not offer DAVE yet: accept it with version 0.
        dave: DaveMode::Optional,
        ..ServerConfig::default()
    })
    .expect("server starts");
    let mut ws = raw_ws(&server);
    ws.send(Message::text(identify_json(3, 33))).expect("send");
    assert_eq!(close_code_of(&mut ws), Some(4004));
    // Issued credentials work, and the real client reaches SessionReady with them.
    let c = direct_client(&server, 3, 33, ControlConfig::default());
    assert_eq!(server.ssrc_of(3, 33), Some(c.session.ssrc));
}
