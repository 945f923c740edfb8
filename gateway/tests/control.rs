//! Driver tests: the control thread against a real websocket server on loopback.

mod common;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{ScriptedServer, ServerOptions};
use quaver_gateway::control::{ConnectionId, ControlConfig, ControlEvent, ControlThread};
use quaver_gateway::protocol::{EncryptionMode, Token};
use quaver_gateway::voice::{VoiceConfig, VoiceConnectRequest, VoiceEvent};

fn request(endpoint: String, guild: u64) -> VoiceConnectRequest {
    VoiceConnectRequest {
        guild_id: guild,
        channel_id: 2,
        user_id: 3,
        session_id: format!("session-{guild}").into(),
        token: Token::new("voice-token"),
        endpoint,
    }
}

/// Pump events, answering discovery requests, until `done` says so (or the deadline passes).
fn pump(
    ctl: &ControlThread,
    limit: Duration,
    mut done: impl FnMut(ConnectionId, &VoiceEvent) -> bool,
) -> bool {
    let deadline = Instant::now() + limit;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Ok(ev) = ctl.events().recv_timeout(left) else {
            return false;
        };
        if let ControlEvent::Voice { call, event } = ev {
            if let VoiceEvent::DiscoveryRequested { .. } = event {
                ctl.set_discovered_address(call, "127.0.0.1".into(), 50_000)
                    .unwrap();
            }
            if done(call, &event) {
                return true;
            }
        }
    }
    false
}

#[test]
fn handshake_reaches_established_then_resumes_after_a_drop() {
    let server = ScriptedServer::start(ServerOptions {
        heartbeat_interval_ms: 50.0,
        drop_first_after_speaking: true,
        ..Default::default()
    });
    let ctl = ControlThread::spawn(ControlConfig::default()).unwrap();
    let call = ctl
        .connect(request(server.endpoint(), 1), VoiceConfig::default())
        .unwrap();
    let mut seen = Vec::new();
    let ok = pump(&ctl, Duration::from_secs(20), |c, e| {
        assert_eq!(c, call);
        seen.push(format!("{e:?}"));
        if let VoiceEvent::SessionReady(s) = e {
            assert_eq!(s.mode, EncryptionMode::Aes256GcmRtpSize);
            assert_eq!(s.secret_key.expose(), &[1; 32]);
            assert_eq!(s.ssrc, 1);
        }
        matches!(e, VoiceEvent::ClientsConnected(u) if u == &[42])
    });
    assert!(ok, "events: {seen:#?}");
    let order: Vec<&str> = seen
        .iter()
        .map(|s| s.split(['(', ' ', '{']).next().unwrap_or(""))
        .collect();
    let pos = |name: &str| order.iter().position(|n| *n == name).unwrap_or(usize::MAX);
    assert!(pos("DiscoveryRequested") < pos("SessionReady"));
    assert!(pos("SessionReady") < pos("Resuming"));
    assert!(pos("Resuming") < pos("Resumed"));
    assert!(
        !seen.iter().any(|s| s.starts_with("Reconnecting")),
        "{seen:#?}"
    );
    assert_eq!(server.stats.identifies.load(Ordering::Relaxed), 1);
    assert_eq!(server.stats.resumes.load(Ordering::Relaxed), 1);
    // Speaking went out on the first socket and again after the resume.
    let t = Instant::now();
    while server.stats.speaking.load(Ordering::Relaxed) < 2 && t.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(server.stats.speaking.load(Ordering::Relaxed), 2);
    // Heartbeats flow on the resumed socket.
    let before = server.stats.heartbeats.load(Ordering::Relaxed);
    let t = Instant::now();
    while server.stats.heartbeats.load(Ordering::Relaxed) < before + 3
        && t.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(server.stats.heartbeats.load(Ordering::Relaxed) >= before + 3);
    ctl.disconnect(call).unwrap();
    assert!(pump(&ctl, Duration::from_secs(5), |_, e| matches!(
        e,
        VoiceEvent::Ended(_)
    )));
}

#[test]
fn dead_endpoint_does_not_stall_others() {
    // A listener that accepts TCP but never speaks websocket: its call sits in the handshake.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_ep = format!("ws://{}", silent.local_addr().unwrap());
    let server = ScriptedServer::start(ServerOptions {
        heartbeat_interval_ms: 1000.0,
        drop_first_after_speaking: false,
        ..Default::default()
    });
    let ctl = ControlThread::spawn(ControlConfig::default()).unwrap();
    let stuck = ctl
        .connect(request(silent_ep, 1), VoiceConfig::default())
        .unwrap();
    let good = ctl
        .connect(request(server.endpoint(), 2), VoiceConfig::default())
        .unwrap();
    assert!(pump(&ctl, Duration::from_secs(20), |c, e| {
        assert_ne!(c, stuck, "the silent server produces nothing yet: {e:?}");
        c == good && matches!(e, VoiceEvent::SessionReady(_))
    }));
    drop(silent);
}

fn raise_fd_limit(want: u64) {
    // SAFETY: getrlimit/setrlimit only read and write the struct we own.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

#[test]
fn thousand_connections_with_heartbeats() {
    const CALLS: u64 = 1000;
    raise_fd_limit(4 * CALLS + 256);
    let server = ScriptedServer::start(ServerOptions {
        heartbeat_interval_ms: 250.0,
        drop_first_after_speaking: false,
        ..Default::default()
    });
    let ctl = ControlThread::spawn(ControlConfig::default()).unwrap();
    let cpu0 = ctl.stats().unwrap().cpu_time;
    let t0 = Instant::now();
    for g in 0..CALLS {
        ctl.connect(request(server.endpoint(), g + 1), VoiceConfig::default())
            .unwrap();
    }
    let mut ready = HashSet::new();
    let ok = pump(&ctl, Duration::from_secs(40), |c, e| {
        if matches!(e, VoiceEvent::SessionReady(_)) {
            ready.insert(c);
        }
        ready.len() as u64 == CALLS
    });
    assert!(ok, "only {} of {CALLS} calls established", ready.len());
    let setup = t0.elapsed();
    let cpu_setup = ctl.stats().unwrap().cpu_time - cpu0;
    let hb0 = server.stats.heartbeats.load(Ordering::Relaxed);
    let s0 = ctl.stats().unwrap();
    let steady = Duration::from_secs(5);
    // Keep draining events meanwhile (nothing but heartbeats should happen, each ACK
    // reported with its round trip).
    let unexpected = std::sync::atomic::AtomicU64::new(0);
    let acked = std::sync::atomic::AtomicU64::new(0);
    pump(&ctl, steady, |_, e| {
        match e {
            VoiceEvent::HeartbeatAcked(_) => {
                acked.fetch_add(1, Ordering::Relaxed);
            }
            VoiceEvent::UserSpeaking { .. } => {}
            _ => {
                unexpected.fetch_add(1, Ordering::Relaxed);
            }
        }
        false
    });
    let s1 = ctl.stats().unwrap();
    let beats = server.stats.heartbeats.load(Ordering::Relaxed) - hb0;
    assert_eq!(s1.open_sockets as u64, CALLS);
    assert_eq!(unexpected.load(Ordering::Relaxed), 0);
    assert!(beats >= CALLS, "heartbeats must flow: {beats}");
    assert!(
        acked.load(Ordering::Relaxed) >= CALLS,
        "each ACK is reported: {}",
        acked.load(Ordering::Relaxed)
    );
    let cpu = s1.cpu_time - s0.cpu_time;
    println!(
        "control thread, {CALLS} voice-gateway connections: setup {setup:?} wall, {cpu_setup:?} CPU; \
         steady {steady:?} with a 250 ms heartbeat: {beats} heartbeats acked, {} frames in, {} frames out, \
         {cpu:?} CPU of which {:?} system ({:.2}% of one core, {:.1} µs per heartbeat round trip)",
        s1.frames_in - s0.frames_in,
        s1.frames_out - s0.frames_out,
        s1.cpu_system - s0.cpu_system,
        cpu.as_secs_f64() / steady.as_secs_f64() * 100.0,
        cpu.as_secs_f64() * 1e6 / beats.max(1) as f64,
    );
}

#[test]
fn tls_handshake_reaches_established_and_resumes() {
    let (server, cert) = ScriptedServer::start_tls(ServerOptions {
        heartbeat_interval_ms: 50.0,
        drop_first_after_speaking: true,
        ..Default::default()
    });
    let ctl = ControlThread::spawn(ControlConfig {
        extra_roots: vec![cert],
        ..ControlConfig::default()
    })
    .unwrap();
    let endpoint = format!("wss://{}", server.addr);
    let call = ctl
        .connect(request(endpoint, 1), VoiceConfig::default())
        .unwrap();
    let mut seen = Vec::new();
    let ok = pump(&ctl, Duration::from_secs(20), |c, e| {
        assert_eq!(c, call);
        seen.push(format!("{e:?}"));
        matches!(e, VoiceEvent::ClientsConnected(u) if u == &[42])
    });
    assert!(ok, "events: {seen:#?}");
    assert!(seen.iter().any(|s| s.starts_with("SessionReady")));
    assert!(seen.iter().any(|s| s.starts_with("Resumed")));
    // Heartbeats flow over TLS.
    let before = server.stats.heartbeats.load(Ordering::Relaxed);
    let t = Instant::now();
    while server.stats.heartbeats.load(Ordering::Relaxed) < before + 3
        && t.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(server.stats.heartbeats.load(Ordering::Relaxed) >= before + 3);
}

#[test]
fn untrusted_certificate_is_refused() {
    let (server, _cert) = ScriptedServer::start_tls(ServerOptions {
        heartbeat_interval_ms: 1000.0,
        drop_first_after_speaking: false,
        ..Default::default()
    });
    let ctl = ControlThread::spawn(ControlConfig::default()).unwrap();
    let endpoint = format!("wss://{}", server.addr);
    ctl.connect(request(endpoint, 1), VoiceConfig::default())
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .expect("no TLS error reported");
        match ctl
            .events()
            .recv_timeout(left)
            .expect("no TLS error reported")
        {
            ControlEvent::SocketError { error, .. } => {
                assert!(
                    error.to_string().to_lowercase().contains("certificate"),
                    "{error}"
                );
                break;
            }
            ControlEvent::Voice { event, .. } => {
                assert!(!matches!(event, VoiceEvent::SessionReady(_)));
            }
            _ => {}
        }
    }
}

/// Run one call against a server with `options` until `done`; returns the events seen.
fn run_call(
    options: ServerOptions,
    mut done: impl FnMut(&VoiceEvent) -> bool,
) -> (ScriptedServer, Vec<VoiceEvent>) {
    let server = ScriptedServer::start(options);
    let ctl = ControlThread::spawn(ControlConfig::default()).unwrap();
    ctl.connect(request(server.endpoint(), 1), VoiceConfig::default())
        .unwrap();
    let mut seen = Vec::new();
    let ok = pump(&ctl, Duration::from_secs(20), |_, e| {
        seen.push(e.clone());
        done(e)
    });
    assert!(ok, "events: {seen:#?}");
    (server, seen)
}

#[test]
fn server_close_codes_reach_the_state_machine() {
    use quaver_gateway::voice::EndReason;
    for (code, want) in [
        (4014, EndReason::AwaitServerUpdate { code: 4014 }),
        (4006, EndReason::NeedsNewVoiceState { code: 4006 }),
        (4021, EndReason::GaveUp { code: Some(4021) }),
    ] {
        let (_, seen) = run_call(
            ServerOptions {
                heartbeat_interval_ms: 1000.0,
                close_first_after_speaking: Some(code),
                ..Default::default()
            },
            |e| matches!(e, VoiceEvent::Ended(_)),
        );
        assert_eq!(
            seen.last(),
            Some(&VoiceEvent::Ended(want)),
            "{code}: {seen:#?}"
        );
    }
    // 4015 (voice server crashed) resumes.
    let (server, seen) = run_call(
        ServerOptions {
            heartbeat_interval_ms: 1000.0,
            close_first_after_speaking: Some(4015),
            ..Default::default()
        },
        |e| matches!(e, VoiceEvent::Resumed),
    );
    assert!(
        seen.iter()
            .any(|e| matches!(e, VoiceEvent::Resuming { .. }))
    );
    assert_eq!(server.stats.resumes.load(Ordering::Relaxed), 1);
}

#[test]
fn missed_heartbeat_acks_resume() {
    let (server, seen) = run_call(
        ServerOptions {
            heartbeat_interval_ms: 30.0,
            ignore_first_heartbeats: true,
            ..Default::default()
        },
        |e| matches!(e, VoiceEvent::Resumed),
    );
    assert!(
        seen.iter()
            .any(|e| matches!(e, VoiceEvent::Resuming { .. })),
        "{seen:#?}"
    );
    assert_eq!(server.stats.identifies.load(Ordering::Relaxed), 1);
    assert_eq!(server.stats.resumes.load(Ordering::Relaxed), 1);
}

/// Records what the control thread routes to it and answers op 25 with a key package (op 26).
struct ProbeDave(crossbeam_channel::Sender<String>);

impl quaver_gateway::dave::DaveExtension for ProbeDave {
    fn on_session_description(
        &mut self,
        ctx: quaver_gateway::dave::DaveContext,
        version: u16,
        _out: &mut quaver_gateway::dave::DaveOutbox,
    ) {
        let _ = self
            .0
            .send(format!("session v{version} channel {}", ctx.channel_id));
    }
    fn on_binary(&mut self, op: u8, payload: &[u8], out: &mut quaver_gateway::dave::DaveOutbox) {
        let _ = self.0.send(format!("binary {op} {payload:02x?}"));
        out.send_binary(
            quaver_gateway::protocol::op::DAVE_MLS_KEY_PACKAGE,
            &[1, 2, 3],
        );
    }
}

#[test]
fn dave_traffic_is_routed_through_the_driver() {
    let server = ScriptedServer::start(ServerOptions {
        heartbeat_interval_ms: 1000.0,
        dave_probe: true,
        ..Default::default()
    });
    let ctl = ControlThread::spawn(ControlConfig::default()).unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    let config = VoiceConfig {
        max_dave_protocol_version: 1,
        ..VoiceConfig::default()
    };
    ctl.connect_with_dave(
        request(server.endpoint(), 1),
        config,
        Box::new(ProbeDave(tx)),
    )
    .unwrap();
    assert!(pump(
        &ctl,
        Duration::from_secs(20),
        |_, e| matches!(e, VoiceEvent::SessionReady(s) if s.dave_protocol_version == 1)
    ));
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        "session v1 channel 2"
    );
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        "binary 25 [aa, bb]"
    );
    let t = Instant::now();
    while server.stats.client_binary_ops.lock().unwrap().is_empty()
        && t.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(*server.stats.client_binary_ops.lock().unwrap(), vec![26]);
}

#[test]
fn host_names_are_resolved_off_the_control_thread() {
    let server = ScriptedServer::start(ServerOptions {
        heartbeat_interval_ms: 1000.0,
        ..Default::default()
    });
    let ctl = ControlThread::spawn(ControlConfig::default()).unwrap();
    // `localhost` may resolve to ::1 first; the driver falls through to 127.0.0.1.
    let endpoint = format!("ws://localhost:{}", server.addr.port());
    ctl.connect(request(endpoint, 1), VoiceConfig::default())
        .unwrap();
    assert!(pump(&ctl, Duration::from_secs(20), |_, e| matches!(
        e,
        VoiceEvent::SessionReady(_)
    )));
}

/// A main gateway whose READY is followed by a 2 MiB GUILD_CREATE (a big guild), then a
/// VOICE_STATE_UPDATE. Counts connections.
fn big_dispatch_server() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    use std::sync::atomic::AtomicU64;
    use tungstenite::Message;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = std::sync::Arc::new(AtomicU64::new(0));
    let counted = connections.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            counted.fetch_add(1, Ordering::Relaxed);
            std::thread::spawn(move || {
                let Ok(mut ws) = tungstenite::accept(stream) else {
                    return;
                };
                let hello = r#"{"op":10,"d":{"heartbeat_interval":40000}}"#;
                if ws.send(Message::text(hello)).is_err() {
                    return;
                }
                let members = "x".repeat(2 << 20);
                let guild_create = serde_json::json!({"op":0,"t":"GUILD_CREATE","s":2,
                    "d":{"id":"1","members_blob":members}})
                .to_string();
                let vsu = serde_json::json!({"op":0,"t":"VOICE_STATE_UPDATE","s":3,"d":{
                    "guild_id":"1","channel_id":"2","user_id":"99","session_id":"s"}})
                .to_string();
                while let Ok(msg) = ws.read() {
                    let Message::Text(t) = msg else { continue };
                    let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                    let sent = match v["op"].as_u64() {
                        Some(2) | Some(6) => ws
                            .send(Message::text(
                                r#"{"op":0,"t":"READY","s":1,"d":{"session_id":"m","user":{"id":"99"}}}"#,
                            ))
                            .and_then(|_| ws.send(Message::text(guild_create.clone())))
                            .and_then(|_| ws.send(Message::text(vsu.clone()))),
                        Some(1) => ws.send(Message::text(r#"{"op":11}"#)),
                        _ => Ok(()),
                    };
                    if sent.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, connections)
}

#[test]
fn a_dispatch_of_several_mebibytes_does_not_break_the_bot_socket() {
    use quaver_gateway::main_gateway::{MainGatewayConfig, MainGatewayEvent};
    let (addr, connections) = big_dispatch_server();
    let ctl = ControlThread::spawn(ControlConfig::default()).unwrap();
    let mut config = MainGatewayConfig::new(Token::new("bot-token"));
    config.url = format!("ws://{addr}/?v=10&encoding=json");
    ctl.connect_bot(config).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got = false;
    let mut errors = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match ctl.events().recv_timeout(left) {
            Ok(ControlEvent::MainGateway {
                event: MainGatewayEvent::VoiceStateUpdate(_),
                ..
            }) => {
                got = true;
                break;
            }
            Ok(ControlEvent::SocketError { error, .. }) => errors.push(error.to_string()),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert!(
        got,
        "the dispatch after the big one never arrived: {errors:?}"
    );
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(connections.load(Ordering::Relaxed), 1);
}
