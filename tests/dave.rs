//! DAVE end to end: Quaver engines as members of a real MLS group run by the local server (its
//! own davey member decrypts what they send, so the server can decode and measure it), on
//! loopback, with real Opus, AES-GCM and MLS.

mod common;
use common::{decoded_left, sine, wait_for};

use std::time::{Duration, Instant};

use quaver::engine::PcmFormat;
use quaver::engine::analysis::tone_power;
use quaver::gateway::voice::{EndReason, VoiceEvent};
use quaver::{CallEvent, CallId, Config, Engine, Event, SourceOptions};
use quaver_tools::server::{Server, ServerConfig};

const GUILD: u64 = 31;
const CHANNEL: u64 = 3100;

fn server() -> Server {
    // The default is Discord's: DAVE required, 4017 for a client that offers none.
    Server::start(ServerConfig {
        keep_decoded_audio: true,
        ..ServerConfig::default()
    })
    .expect("server")
}

fn engine(server: &Server, max_dave: u16) -> Engine {
    let mut config = Config::default();
    config.engine.realtime_priority = false;
    config.control = server.control_config();
    config.voice.max_dave_protocol_version = max_dave;
    Engine::new(config).expect("engine")
}

/// Streams a tone into `call` in real time from a producer thread.
fn stream(engine: &Engine, call: CallId, freq: f64, seconds: f64) -> std::thread::JoinHandle<()> {
    let (_source, mut writer) = engine.push_source(call, PcmFormat::STEREO_48K).unwrap();
    let tone = sine(48_000, 2, freq, seconds);
    std::thread::spawn(move || {
        for chunk in tone.chunks(1_920) {
            if writer.write_all_f32(chunk).is_err() {
                return; // the call was left
            }
        }
    })
}

fn e2ee_epoch(engine: &Engine, call: CallId) -> Option<u64> {
    engine
        .e2ee_status(call)
        .filter(|s| s.protocol_version == 1)
        .map(|s| s.epoch)
        .filter(|&e| e > 0)
}

#[test]
fn two_engines_encrypt_end_to_end_and_a_member_leaving_loses_no_frame() {
    let server = server();
    let a = engine(&server, 1);
    let b = engine(&server, 1);
    let call_a = a
        .connect(server.voice_connect_request(GUILD, CHANNEL, 1))
        .unwrap();
    let call_b = b
        .connect(server.voice_connect_request(GUILD, CHANNEL, 2))
        .unwrap();
    let tone_a = stream(&a, call_a, 440.0, 4.0);
    let _tone_b = stream(&b, call_b, 880.0, 4.0);
    wait_for("both engines under DAVE", Duration::from_secs(20), || {
        e2ee_epoch(&a, call_a).is_some() && e2ee_epoch(&b, call_b).is_some()
    });
    let ssrc_a = server.ssrc_of(GUILD, 1).expect("A's SSRC");
    wait_for("E2EE frames from A", Duration::from_secs(10), || {
        server
            .stream_stats(ssrc_a)
            .is_some_and(|s| s.dave_frames >= 25)
    });
    let epoch_before = e2ee_epoch(&a, call_a).unwrap();

    // B leaves mid-stream: the group removes it and moves to a new epoch while A keeps sending.
    b.disconnect(call_b).unwrap();
    wait_for("A in a later epoch", Duration::from_secs(20), || {
        e2ee_epoch(&a, call_a).is_some_and(|e| e > epoch_before)
    });
    let frames_at_switch = server.stream_stats(ssrc_a).unwrap().dave_frames;
    wait_for(
        "E2EE frames under the new key",
        Duration::from_secs(10),
        || server.stream_stats(ssrc_a).unwrap().dave_frames >= frames_at_switch + 25,
    );
    tone_a.join().unwrap();

    let s = server.stream_stats(ssrc_a).unwrap();
    assert_eq!(s.dave_undecryptable, 0, "every E2EE frame opened: {s:?}");
    assert_eq!(s.decode_errors, Some(0));
    assert!(s.dave_frames > frames_at_switch + 25, "{s:?}");
    let stats = a.stats().unwrap();
    assert!(stats.sender.dave_frames > 0 && stats.sender.dave_errors == 0);
    // What the server decrypted and decoded is A's tone.
    let left = decoded_left(&server, ssrc_a);
    let at = |f| tone_power(&left, f, 48_000);
    assert!(
        at(440.0) > 20.0 * at(880.0),
        "440 Hz {} vs 880 Hz {}",
        at(440.0),
        at(880.0)
    );
    let dave = server
        .stats()
        .calls
        .into_iter()
        .find(|c| c.channel_id == CHANNEL && c.guild_id == GUILD)
        .and_then(|c| c.dave)
        .expect("the channel's DAVE group");
    assert!(dave.epoch >= 2 && dave.transitions >= 2, "{dave:?}");
    a.disconnect(call_a).unwrap();
}

#[test]
fn pre_encoded_opus_passthrough_is_encrypted_too() {
    let server = server();
    let engine = engine(&server, 1);
    let call = engine
        .connect(server.voice_connect_request(GUILD, CHANNEL + 1, 5))
        .unwrap();
    let (_source, mut writer) = engine.push_opus(call, SourceOptions::default()).unwrap();
    // A lone Opus source at unity volume is sent as is (passthrough): encode a tone ourselves.
    let encoder = audiopus::coder::Encoder::new(
        audiopus::SampleRate::Hz48000,
        audiopus::Channels::Stereo,
        audiopus::Application::Audio,
    )
    .unwrap();
    let tone = sine(48_000, 2, 660.0, 3.0);
    let packets: Vec<Vec<u8>> = tone
        .chunks_exact(1_920)
        .map(|pcm| {
            let mut out = vec![0u8; 1_275];
            let n = encoder.encode_float(pcm, &mut out).unwrap();
            out.truncate(n);
            out
        })
        .collect();
    let feeder = std::thread::spawn(move || {
        for p in &packets {
            if writer.write_packet_blocking(p).is_err() {
                return;
            }
        }
    });
    wait_for("DAVE keys", Duration::from_secs(20), || {
        e2ee_epoch(&engine, call).is_some()
    });
    let ssrc = server.ssrc_of(GUILD, 5).expect("SSRC");
    wait_for("E2EE passthrough frames", Duration::from_secs(10), || {
        server
            .stream_stats(ssrc)
            .is_some_and(|s| s.dave_frames >= 25)
    });
    feeder.join().unwrap();
    let s = server.stream_stats(ssrc).unwrap();
    assert_eq!(
        (s.dave_undecryptable, s.decode_errors),
        (0, Some(0)),
        "{s:?}"
    );
    assert!(engine.stats().unwrap().audio.frames_passed_through > 0);
}

#[test]
fn a_client_offering_no_dave_is_told_4017_at_once() {
    let server = server();
    let engine = engine(&server, 0);
    let call = engine
        .connect(server.voice_connect_request(GUILD, CHANNEL + 2, 6))
        .unwrap();
    let give_up = Instant::now() + Duration::from_secs(20);
    let reason = loop {
        assert!(Instant::now() < give_up, "no end reported");
        match engine.events().recv_timeout(Duration::from_millis(100)) {
            Some(Event::Call(CallEvent::Ended { call: c, reason })) if c == call => break reason,
            Some(Event::Call(CallEvent::Voice {
                event: VoiceEvent::SessionReady(_),
                ..
            })) => panic!("a client without DAVE got a session"),
            _ => {}
        }
    };
    assert_eq!(reason, EndReason::GaveUp { code: Some(4017) });
    assert_eq!(engine.call_status(call), Some(quaver::CallStatus::Ended));
}
