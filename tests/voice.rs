//! The whole chain on loopback: `quaver::Engine` (mixer → sender, control thread) against the
//! local Discord-compatible server from `tools`, with real websockets, UDP, Opus and AEAD.

mod common;
use common::{decoded_left, sine, wait_for};

use std::time::{Duration, Instant};

use quaver::engine::PcmFormat;
use quaver::engine::analysis::tone_power;
use quaver::gateway::main_gateway::MainGatewayConfig;
use quaver::gateway::protocol::Token;
use quaver::gateway::voice::VoiceEvent;
use quaver::{CallEvent, CallStatus, Config, Engine, Event, JoinOptions};
use quaver_tools::server::{Faults, Server, ServerConfig};

fn server() -> Server {
    Server::start(ServerConfig {
        keep_decoded_audio: true,
        ..ServerConfig::default()
    })
    .unwrap()
}

fn server_with(faults: Faults) -> Server {
    Server::start(ServerConfig {
        faults,
        ..ServerConfig::default()
    })
    .unwrap()
}

/// An engine whose control thread trusts `server`'s certificate (the server speaks TLS).
fn engine(server: &Server) -> Engine {
    let mut config = Config::default();
    // Be gentle with the shared test machine: no real-time priority for the mixer.
    config.engine.realtime_priority = false;
    config.control = server.control_config();
    Engine::new(config).unwrap()
}

#[test]
fn two_tones_mixed_arrive_decoded_at_the_right_frequencies_without_loss() {
    let server = server();
    let engine = engine(&server);
    let request = server.voice_connect_request(1, 11, 501);
    let call = engine.connect(request).unwrap();
    wait_for("the session", Duration::from_secs(10), || {
        engine.call_status(call) == Some(CallStatus::Ready)
    });

    let (_a, mut low) = engine
        .push_source(call, PcmFormat::new(44_100, 2).unwrap())
        .unwrap();
    let (_b, mut high) = engine
        .push_source(call, PcmFormat::new(48_000, 1).unwrap())
        .unwrap();
    let low_tone = sine(44_100, 2, 440.0, 1.5);
    let high_tone = sine(48_000, 1, 1_000.0, 1.5);
    // One producer thread per source, as live producers would be.
    let low = std::thread::spawn(move || low.write_all_f32(&low_tone).unwrap());
    let high = std::thread::spawn(move || high.write_all_f32(&high_tone).unwrap());
    low.join().unwrap();
    high.join().unwrap();

    let ssrc = server.ssrc_of(1, 501).expect("the server knows our SSRC");
    wait_for("the audio to arrive", Duration::from_secs(10), || {
        server
            .stream_stats(ssrc)
            .is_some_and(|s| s.decoded_samples.is_some_and(|n| n >= 48_000))
    });
    // Both sources end; the stream stops after the silence frames.
    std::thread::sleep(Duration::from_millis(500));
    let stats = server.stream_stats(ssrc).unwrap();
    assert_eq!(stats.lost, 0, "{stats:?}");
    assert_eq!(stats.duplicates, 0);
    assert_eq!(stats.timestamp_step_errors, 0, "{stats:?}");
    assert_eq!(stats.decode_errors, Some(0));
    assert!(stats.packets >= 70, "{stats:?}");
    // The server requires DAVE (its default, as Discord): the engine negotiated it, and the
    // server's own group member decrypted the E2EE frames it decoded.
    let e2ee = engine.e2ee_status(call).expect("a live call");
    assert_eq!(e2ee.protocol_version, 1, "{e2ee:?}");
    assert!(e2ee.epoch >= 1, "{e2ee:?}");
    assert_eq!(stats.dave_undecryptable, 0, "{stats:?}");
    assert!(stats.dave_frames > 0, "{stats:?}");

    let left = decoded_left(&server, ssrc);
    let middle = &left[9_600..48_000];
    let off = tone_power(middle, 700.0, 48_000);
    assert!(
        tone_power(middle, 440.0, 48_000) > 100.0 * off,
        "440 Hz missing"
    );
    assert!(
        tone_power(middle, 1_000.0, 48_000) > 100.0 * off,
        "1 kHz missing"
    );
    engine.disconnect(call).unwrap();
    assert_eq!(engine.call_status(call), None);
}

#[test]
fn joining_through_the_main_gateway_reaches_the_voice_server() {
    let server = server();
    let engine = engine(&server);
    let mut bot = MainGatewayConfig::new(Token::new("local-bot-token"));
    bot.url = server.main_gateway_url();
    let bot = engine.connect_bot(bot).unwrap();
    let call = engine.join(bot, 7, 77, JoinOptions::default()).unwrap();
    wait_for("the session", Duration::from_secs(10), || {
        engine.call_status(call) == Some(CallStatus::Ready)
    });
    let (_source, mut writer) = engine.push_source(call, PcmFormat::STEREO_48K).unwrap();
    writer.write_all_f32(&sine(48_000, 2, 600.0, 0.5)).unwrap();
    drop(writer);
    let stats = server.stats();
    wait_for(
        "packets from the joined call",
        Duration::from_secs(10),
        || {
            server
                .stats()
                .calls
                .iter()
                .any(|c| c.guild_id == 7 && c.streams.iter().any(|s| s.packets >= 20))
        },
    );
    engine.disconnect(call).unwrap();
    assert!(stats.counters.identifies >= 1);
}

/// Streams `seconds` of a tone into `call` from a producer thread.
fn stream_tone(engine: &Engine, call: quaver::CallId, seconds: f64) -> std::thread::JoinHandle<()> {
    let (_source, mut writer) = engine.push_source(call, PcmFormat::STEREO_48K).unwrap();
    let tone = sine(48_000, 2, 500.0, seconds);
    std::thread::spawn(move || {
        // 20 ms at a time, in real time, so the stream spans the fault.
        for chunk in tone.chunks(1_920) {
            writer.write_all_f32(chunk).unwrap();
        }
    })
}

fn voice_events(engine: &Engine) -> Vec<VoiceEvent> {
    engine
        .events()
        .try_iter()
        .filter_map(|event| match event {
            Event::Call(CallEvent::Voice { event, .. }) => Some(event),
            _ => None,
        })
        .collect()
}

#[test]
fn a_websocket_dropped_mid_stream_resumes_while_audio_keeps_flowing() {
    let faults = Faults {
        drop_ws_after: Some(Duration::from_millis(800)),
        ..Faults::default()
    };
    let server = server_with(faults);
    let engine = engine(&server);
    let call = engine
        .connect(server.voice_connect_request(3, 33, 503))
        .unwrap();
    wait_for("the session", Duration::from_secs(10), || {
        engine.call_status(call) == Some(CallStatus::Ready)
    });
    let ssrc = server.ssrc_of(3, 503).unwrap();
    stream_tone(&engine, call, 2.5).join().unwrap();
    wait_for("the stream to finish", Duration::from_secs(10), || {
        server
            .stream_stats(ssrc)
            .is_some_and(|s| s.unique_packets >= 120)
    });
    let events = voice_events(&engine);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, VoiceEvent::Resuming { .. })),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| matches!(e, VoiceEvent::Resumed)),
        "{events:?}"
    );
    assert!(server.stats().counters.resumes >= 1);
    let stats = server.stream_stats(ssrc).unwrap();
    assert_eq!(
        stats.lost, 0,
        "audio must keep flowing through the resume: {stats:?}"
    );
    // A resume keeps the DAVE session: frames stay end-to-end encrypted and all open.
    assert!(stats.dave_frames > 0, "{stats:?}");
    assert_eq!(stats.dave_undecryptable, 0, "{stats:?}");
    assert_eq!(
        engine.e2ee_status(call).map(|s| s.protocol_version),
        Some(1)
    );
    assert_eq!(engine.call_status(call), Some(CallStatus::Ready));
}

#[test]
fn close_codes_resume_or_end_the_call_as_the_protocol_says() {
    // (code, whether the call must come back to Ready)
    for (code, recovers) in [(4015, true), (4014, false), (4017, false), (4006, false)] {
        let faults = Faults {
            close_code: Some(code),
            ..Faults::default()
        };
        let server = server_with(faults);
        let engine = engine(&server);
        let call = engine
            .connect(server.voice_connect_request(4, 44, 504))
            .unwrap();
        if recovers {
            wait_for("the resume", Duration::from_secs(10), || {
                server.stats().counters.resumes >= 1
                    && engine.call_status(call) == Some(CallStatus::Ready)
            });
        } else {
            wait_for(
                &format!("the call to end after {code}"),
                Duration::from_secs(10),
                || engine.call_status(call) == Some(CallStatus::Ended),
            );
            let events = voice_events(&engine);
            assert!(
                events.iter().any(|e| matches!(e, VoiceEvent::Ended(_))),
                "{code}: {events:?}"
            );
        }
    }
}

#[test]
fn garbage_from_the_server_does_not_crash_the_client() {
    let server = server();
    let engine = engine(&server);
    let call = engine
        .connect(server.voice_connect_request(5, 55, 505))
        .unwrap();
    wait_for("the session", Duration::from_secs(10), || {
        engine.call_status(call) == Some(CallStatus::Ready)
    });
    let ssrc = server.ssrc_of(5, 505).unwrap();
    let producer = stream_tone(&engine, call, 1.5);
    std::thread::sleep(Duration::from_millis(300));
    assert!(server.send_garbage_datagrams(5, 505, 200) > 0);
    server.send_garbage_json(5, 505);
    producer.join().unwrap();
    wait_for("the rest of the stream", Duration::from_secs(10), || {
        server
            .stream_stats(ssrc)
            .is_some_and(|s| s.unique_packets >= 70)
    });
    // Malformed JSON is a protocol error the gateway recovers from; either way the engine is
    // still here and the audio got through.
    assert!(engine.call_status(call).is_some());
    assert_eq!(server.stream_stats(ssrc).unwrap().lost, 0);
}

#[test]
fn joining_through_the_host_programs_own_main_gateway_library() {
    use quaver::gateway::control::BotId;
    use quaver::gateway::control::{ControlConfig, ControlEvent, ControlThread};
    use quaver::gateway::join::{SendVoiceStateError, UpdateVoiceState, VoiceStateSender};
    use quaver::gateway::main_gateway::MainGatewayEvent;

    /// The host library's shard: op 4 goes out on its own main-gateway connection.
    struct HostShard(std::sync::Arc<ControlThread>, BotId);
    impl VoiceStateSender for HostShard {
        fn send_voice_state_update(
            &self,
            update: &UpdateVoiceState,
        ) -> Result<(), SendVoiceStateError> {
            Ok(self.0.bot_send(self.1, update.to_gateway_json())?)
        }
    }

    let server = server();
    let engine = engine(&server);
    // The "host library": a main-gateway client the host program runs on its own.
    let host = std::sync::Arc::new(
        ControlThread::spawn(server.trusted(ControlConfig {
            thread_name: "host-library".into(),
            ..ControlConfig::default()
        }))
        .unwrap(),
    );
    let mut config = MainGatewayConfig::new(Token::new("host-bot"));
    config.url = server.main_gateway_url();
    let bot = host.connect_bot(config).unwrap();
    let user_id = loop {
        if let Ok(ControlEvent::MainGateway {
            event: MainGatewayEvent::Ready { user_id },
            ..
        }) = host.events().recv_timeout(Duration::from_secs(10))
        {
            break user_id;
        }
    };
    let sender = std::sync::Arc::new(HostShard(host.clone(), bot));
    let call = engine
        .join_with(sender, user_id, 9, 99, JoinOptions::default())
        .unwrap();
    // The host's event handler forwards the two voice dispatches.
    let give_up = Instant::now() + Duration::from_secs(10);
    while engine.call_status(call) != Some(CallStatus::Ready) {
        assert!(Instant::now() < give_up, "never joined");
        match host.events().recv_timeout(Duration::from_millis(20)) {
            Ok(ControlEvent::MainGateway {
                event: MainGatewayEvent::VoiceStateUpdate(u),
                ..
            }) => engine.handle_voice_state_update(&u).unwrap(),
            Ok(ControlEvent::MainGateway {
                event: MainGatewayEvent::VoiceServerUpdate(u),
                ..
            }) => engine.handle_voice_server_update(&u).unwrap(),
            _ => {}
        }
    }
    let (_source, mut writer) = engine.push_source(call, PcmFormat::STEREO_48K).unwrap();
    writer.write_all_f32(&sine(48_000, 2, 600.0, 0.5)).unwrap();
    wait_for("packets from the call", Duration::from_secs(10), || {
        server
            .stats()
            .calls
            .iter()
            .any(|c| c.guild_id == 9 && c.streams.iter().any(|s| s.packets >= 20))
    });
    engine.disconnect(call).unwrap();
}

#[test]
fn connection_events_nobody_reads_are_bounded_and_counted() {
    let server = server();
    let mut config = Config::default();
    config.engine.realtime_priority = false;
    config.engine.event_queue = 16;
    config.control = server.control_config();
    let engine = Engine::new(config).unwrap();
    // Each call reports discovery, its session, Speaking and the roster: far more than 16.
    let calls: Vec<_> = (1..=10)
        .map(|i| {
            engine
                .connect(server.voice_connect_request(i, 50 + i, 7))
                .unwrap()
        })
        .collect();
    wait_for("ten sessions", Duration::from_secs(20), || {
        calls
            .iter()
            .all(|&c| engine.call_status(c) == Some(CallStatus::Ready))
    });
    let dropped = engine.stats().unwrap().events_dropped;
    assert!(
        dropped > 0,
        "the queue overflowed, and the drops were counted"
    );
    let queued = engine
        .events()
        .try_iter()
        .filter(|e| matches!(e, Event::Call(_)))
        .count();
    assert_eq!(
        queued, 16,
        "connection events stay bounded by the configured queue"
    );
}

#[test]
fn a_full_sender_queue_delays_calls_but_never_strands_them() {
    let server = server();
    let mut config = Config::default();
    config.engine.realtime_priority = false;
    config.control = server.control_config();
    // One command per tick: calls whose sessions arrive together find the queue full.
    config.sender_commands = 1;
    let engine = Engine::new(config).unwrap();
    let calls: Vec<_> = (1..=8)
        .map(|i| {
            engine
                .connect(server.voice_connect_request(60 + i, 600 + i, 8))
                .unwrap()
        })
        .collect();
    wait_for("every call ready", Duration::from_secs(20), || {
        calls
            .iter()
            .all(|&c| engine.call_status(c) == Some(CallStatus::Ready))
    });
    // And each of them sends: a tone from every call reaches the server.
    let feeds: Vec<_> = calls
        .iter()
        .map(|&c| stream_tone(&engine, c, 0.4))
        .collect();
    for f in feeds {
        f.join().unwrap();
    }
    wait_for("packets from all eight", Duration::from_secs(10), || {
        (1..=8).all(|i| {
            server
                .ssrc_of(60 + i, 8)
                .and_then(|ssrc| server.stream_stats(ssrc))
                .is_some_and(|s| s.packets >= 10)
        })
    });
}

#[test]
fn a_whole_server_restart_on_the_same_address_is_survived() {
    // The outage of issue 13: main gateway, voice gateway and UDP all die, and the server comes
    // back on the same main-gateway address (same certificate) with new voice ports. The bot must
    // reconnect, identify afresh, ask for the channel again and stream to the new voice server.
    let first = Server::start(ServerConfig {
        keep_decoded_audio: true,
        ..ServerConfig::default()
    })
    .unwrap();
    let engine = engine(&first);
    let mut bot = MainGatewayConfig::new(Token::new("local-bot-token"));
    bot.url = first.main_gateway_url();
    let bot = engine.connect_bot(bot).unwrap();
    let call = engine.join(bot, 5, 55, JoinOptions::default()).unwrap();
    wait_for("the session", Duration::from_secs(10), || {
        engine.call_status(call) == Some(CallStatus::Ready)
    });
    let _music = engine
        .play_file(
            call,
            concat!(env!("CARGO_MANIFEST_DIR"), "/tools/tracks/chords.ogg"),
            quaver::FileOptions {
                looping: true,
                ..Default::default()
            },
        )
        .unwrap();
    let streaming_to = |server: &Server| {
        server
            .stats()
            .calls
            .iter()
            .filter(|c| c.guild_id == 5)
            .flat_map(|c| c.streams.iter())
            .map(|s| s.packets)
            .max()
            .unwrap_or(0)
    };
    wait_for("packets before the outage", Duration::from_secs(10), || {
        streaming_to(&first) >= 25
    });
    let main_listen = first.main_gateway_addr();
    let old_voice = first.voice_gateway_addr();
    let identity = first.tls_identity();
    first.stop();
    // Long enough for the client to see every connection fail at least once.
    std::thread::sleep(Duration::from_secs(1));

    let second = Server::start(ServerConfig {
        main_listen,
        tls_identity: identity,
        ..ServerConfig::default()
    })
    .unwrap();
    assert_ne!(second.voice_gateway_addr(), old_voice, "new voice ports");
    wait_for(
        "audio at the restarted server",
        Duration::from_secs(60),
        || streaming_to(&second) >= 50,
    );
    assert_eq!(engine.call_status(call), Some(CallStatus::Ready));
    let counters = second.stats().counters;
    assert!(counters.identifies >= 1, "a fresh Identify: {counters:?}");
    engine.disconnect(call).unwrap();
}

/// The voice gateway's ping: unknown before the first heartbeat ACK, then the round trip of
/// the last one; ACKs are posted for [`Engine::gateway_latency`], not sent as events.
#[test]
fn the_gateway_latency_is_measured_from_heartbeat_acks() {
    // Short heartbeats, so ACKs come within the test.
    let server = Server::start(ServerConfig {
        heartbeat_interval_ms: 100.0,
        heartbeat_timeout_intervals: None,
        ..ServerConfig::default()
    })
    .unwrap();
    let engine = engine(&server);
    let call = engine
        .connect(server.voice_connect_request(1, 11, 501))
        .unwrap();
    wait_for("a heartbeat round trip", Duration::from_secs(10), || {
        engine.call_status(call) == Some(CallStatus::Ready)
            && engine.gateway_latency(call).is_some()
    });
    // Several heartbeats have been acknowledged by now: none of them reached the event queue.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !voice_events(&engine)
            .iter()
            .any(|e| matches!(e, VoiceEvent::HeartbeatAcked(_)))
    );
    engine.disconnect(call).unwrap();
    assert_eq!(engine.gateway_latency(call), None);
}
