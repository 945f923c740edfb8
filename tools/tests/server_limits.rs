//! The local server's bounds: what a long-running `quaver serve` must not let grow or crash —
//! per-stream meters after calls end, connection threads, main-gateway Resume sequence numbers,
//! the keylog's permissions. Loopback only; no test asserts wall-clock timings.

use std::net::{TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use quaver_gateway::control::{ControlEvent, ControlThread};
use quaver_gateway::voice::{VoiceConfig, VoiceEvent};
use quaver_net::crypto::{EncryptionMode, Sealer, SecretKey};
use quaver_net::discovery;
use quaver_net::rtp::RtpStream;
use quaver_tools::server::{Server, ServerConfig, ServerEvent};
use tungstenite::Message;

/// Only a hung server reaches it.
const WAIT: Duration = Duration::from_secs(20);

type Ws = tungstenite::WebSocket<TcpStream>;

fn plain_server(config: ServerConfig) -> Server {
    Server::start(ServerConfig {
        tls: false,
        ..config
    })
    .expect("server starts")
}

fn main_ws(server: &Server) -> Result<Ws, tungstenite::Error> {
    let tcp = TcpStream::connect(server.main_gateway_addr()).expect("tcp connect");
    tcp.set_read_timeout(Some(WAIT)).expect("timeout");
    let url = format!("ws://{}/?v=10&encoding=json", server.main_gateway_addr());
    match tungstenite::client::client(url, tcp) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(e)) => Err(e),
        Err(tungstenite::HandshakeError::Interrupted(_)) => unreachable!("blocking socket"),
    }
}

fn next_json(ws: &mut Ws) -> serde_json::Value {
    loop {
        match ws.read().expect("a frame") {
            Message::Text(t) => return serde_json::from_str(t.as_str()).expect("json"),
            _ => continue,
        }
    }
}

fn close_code_of(ws: &mut Ws) -> Option<u16> {
    loop {
        match ws.read() {
            Ok(Message::Close(f)) => return f.map(|f| u16::from(f.code)),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

/// Identify on the main gateway; returns the session ID from READY and its seq.
fn identify(ws: &mut Ws) -> (String, u64) {
    assert_eq!(next_json(ws)["op"], 10);
    ws.send(Message::text(
        r#"{"op":2,"d":{"token":"bot","intents":129,"properties":{}}}"#,
    ))
    .expect("send identify");
    let ready = next_json(ws);
    assert_eq!(ready["t"], "READY");
    (
        ready["d"]["session_id"]
            .as_str()
            .expect("session")
            .to_string(),
        ready["s"].as_u64().expect("seq"),
    )
}

#[test]
fn a_resume_with_a_seq_the_session_never_reached_is_refused_with_4007() {
    let server = plain_server(ServerConfig::default());
    let mut first = main_ws(&server).expect("connect");
    let (session, seq) = identify(&mut first);
    drop(first);
    for bad in [u64::MAX, seq + 1] {
        let mut ws = main_ws(&server).expect("connect");
        assert_eq!(next_json(&mut ws)["op"], 10);
        let resume = serde_json::json!({"op":6,"d":{"token":"bot","session_id":session,"seq":bad}});
        ws.send(Message::text(resume.to_string())).expect("send");
        // Before, the server took the seq as given and overflowed on the next dispatch (a
        // panic in a debug build: the connection died without a close frame).
        assert_eq!(close_code_of(&mut ws), Some(4007), "seq {bad}");
    }
    let mut ws = main_ws(&server).expect("connect");
    assert_eq!(next_json(&mut ws)["op"], 10);
    let resume = serde_json::json!({"op":6,"d":{"token":"bot","session_id":session,"seq":seq}});
    ws.send(Message::text(resume.to_string())).expect("send");
    let resumed = next_json(&mut ws);
    assert_eq!(
        (resumed["t"].as_str(), resumed["s"].as_u64()),
        (Some("RESUMED"), Some(seq + 1))
    );
}

#[test]
fn connections_beyond_the_limit_are_refused_and_counted() {
    let server = plain_server(ServerConfig {
        max_connections: 2,
        ..ServerConfig::default()
    });
    let mut held: Vec<Ws> = (0..2).map(|_| main_ws(&server).expect("connect")).collect();
    for ws in &mut held {
        identify(ws);
    }
    assert!(
        main_ws(&server).is_err(),
        "a third connection must be refused"
    );
    assert_eq!(server.stats().counters.refused_connections, 1);
    assert!(server.stats().counters.overload_note().is_some());
    // A closed connection frees its place.
    let mut gone = held.pop().expect("two held");
    gone.close(None).expect("close");
    let _ = close_code_of(&mut gone);
    drop(gone);
    let deadline = Instant::now() + WAIT;
    let mut again = loop {
        match main_ws(&server) {
            Ok(ws) => break ws,
            Err(_) => {
                assert!(Instant::now() < deadline, "the freed place never came back");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    identify(&mut again);
}

#[test]
fn a_keylog_is_created_readable_by_its_owner_only() {
    let dir = std::env::temp_dir().join(format!("quaver-keylog-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let fresh = dir.join("fresh.keys");
    let _ = std::fs::remove_file(&fresh);
    let loose = dir.join("loose.keys");
    std::fs::write(&loose, "").expect("write");
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    for path in [&fresh, &loose] {
        let server = plain_server(ServerConfig {
            keylog: Some(path.clone()),
            ..ServerConfig::default()
        });
        let mode = std::fs::metadata(path)
            .expect("keylog exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{}", path.display());
        server.stop();
    }
}

#[test]
fn an_ended_call_frees_its_stream_meters_and_keeps_its_figures() {
    let server = plain_server(ServerConfig {
        decode_audio: false,
        ..ServerConfig::default()
    });
    let control = ControlThread::spawn(server.control_config()).expect("control thread");
    let udp = UdpSocket::bind("127.0.0.1:0").expect("udp");
    for round in 0..3u64 {
        let request = server.voice_connect_request(5, 6, 70 + round);
        let call = control
            .connect(request, VoiceConfig::default())
            .expect("connect");
        let deadline = Instant::now() + WAIT;
        let session = loop {
            let left = deadline
                .checked_duration_since(Instant::now())
                .expect("session in time");
            match control.events().recv_timeout(left).expect("event") {
                ControlEvent::Voice {
                    call: c,
                    event: VoiceEvent::DiscoveryRequested { ssrc, ip, port },
                } if c == call => {
                    let to = format!("{ip}:{port}").parse().expect("address");
                    let me = discovery::discover(&udp, to, ssrc, Duration::from_millis(500), 20)
                        .expect("discovery");
                    control
                        .set_discovered_address(call, me.ip().to_string(), me.port())
                        .expect("control alive");
                }
                ControlEvent::Voice {
                    call: c,
                    event: VoiceEvent::SessionReady(s),
                } if c == call => break s,
                _ => {}
            }
        };
        let mode: EncryptionMode = session.mode.as_str().parse().expect("mode");
        let mut sealer = Sealer::new(mode, &SecretKey::new(*session.secret_key.expose()));
        let mut rtp = RtpStream::new(session.ssrc);
        let to = format!("{}:{}", session.server_ip, session.server_port);
        let mut buf = [0u8; 256];
        for _ in 0..20 {
            let h = rtp.write_next(&mut buf).expect("header");
            buf[h..h + 3].copy_from_slice(&[0xF8, 0xFF, 0xFE]);
            let len = sealer.seal(&mut buf, h, 3).expect("seal");
            udp.send_to(&buf[..len], &to).expect("send");
        }
        let deadline = Instant::now() + WAIT;
        while server
            .stream_stats(session.ssrc)
            .is_none_or(|s| s.packets < 20)
        {
            assert!(Instant::now() < deadline, "packets never counted");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(server.held_stream_meters(), 1);
        control.disconnect(call).expect("control alive");
        let ended = loop {
            match server.events().recv_timeout(WAIT).expect("call ends") {
                ServerEvent::CallEnded(c) => break c,
                _ => continue,
            }
        };
        // The channel's earlier calls' final figures are still reported with it.
        assert_eq!(ended.streams.len() as u64, round + 1);
        // Before, every stream's meters (histograms, hundreds of KB) stayed for good: RSS grew
        // 74 → 130 → 190 MB over three 200-call runs.
        assert_eq!(server.held_stream_meters(), 0, "round {round}");
        let kept = server
            .stream_stats(session.ssrc)
            .expect("final figures kept");
        assert_eq!(kept.packets, 20);
    }
    let calls = server.stats().calls;
    assert_eq!(calls.len(), 1, "{calls:#?}");
    assert_eq!(calls[0].streams.len(), 3);
}
