//! Deterministic virtual-time tests of the voice state machine.

use super::*;
use crate::backoff::FixedJitter;
use crate::protocol::{
    ClientDisconnect, ClientsConnect, DavePrepareEpoch, DaveTransition, HeartbeatAck, Hello,
};
use std::sync::{Arc, Mutex};

const AES: &str = "aead_aes256_gcm_rtpsize";
const XCHACHA: &str = "aead_xchacha20_poly1305_rtpsize";

fn request() -> VoiceConnectRequest {
    VoiceConnectRequest {
        guild_id: 10,
        channel_id: 20,
        user_id: 30,
        session_id: "sess".into(),
        token: Token::new("voice-token"),
        endpoint: "ws://127.0.0.1:1".into(),
    }
}

struct Harness {
    gw: VoiceGateway,
    now: Instant,
    seq: i64,
}

impl Harness {
    fn new() -> Self {
        Self::with_config(VoiceConfig::default())
    }

    fn with_config(config: VoiceConfig) -> Self {
        let gw = VoiceGateway::new(request(), config, Box::new(FixedJitter(0.0)));
        Harness {
            gw,
            now: Instant::now(),
            seq: 0,
        }
    }

    fn drain(&mut self) -> Vec<Output> {
        std::iter::from_fn(|| self.gw.poll_output()).collect()
    }

    /// Outputs, with text frames decoded for easy matching.
    fn sent_and_events(&mut self) -> (Vec<VoicePayload>, Vec<VoiceEvent>, Vec<Output>) {
        let mut sent = Vec::new();
        let mut events = Vec::new();
        let mut other = Vec::new();
        for o in self.drain() {
            match o {
                Output::Send(OutgoingFrame::Text(t)) => sent.push(
                    VoicePayload::decode(&t, 1 << 20)
                        .expect("we send valid JSON")
                        .payload,
                ),
                Output::Event(e) => events.push(e),
                o => other.push(o),
            }
        }
        (sent, events, other)
    }

    fn server(&mut self, p: VoicePayload) -> Result<(), crate::Error> {
        self.seq += 1;
        let text = p.encode(Some(self.seq)).unwrap();
        self.gw.handle_text(&text, self.now)
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.gw.handle_timeout(self.now);
    }

    /// Run the timer loop up to `until`, returning what was sent.
    fn run_for(&mut self, d: Duration) -> Vec<Output> {
        let end = self.now + d;
        let mut out = Vec::new();
        while let Some(t) = self.gw.poll_timeout() {
            if t > end {
                break;
            }
            self.now = t.max(self.now);
            self.gw.handle_timeout(self.now);
            out.extend(self.drain());
        }
        self.now = end;
        out
    }

    fn hello(&mut self, ms: f64) {
        self.server(VoicePayload::Hello(Hello {
            heartbeat_interval: ms,
            v: Some(8),
        }))
        .unwrap();
    }

    fn ready(&mut self, modes: &[&str]) -> Result<(), crate::Error> {
        self.server(VoicePayload::Ready(Ready {
            ssrc: 77,
            ip: "127.0.0.1".into(),
            port: 5000,
            modes: modes.iter().map(|m| m.to_string()).collect(),
        }))
    }

    fn session_description(&mut self) {
        self.server(VoicePayload::SessionDescription(SessionDescription {
            mode: AES.into(),
            secret_key: SecretKey::new([9; 32]),
            dave_protocol_version: 0,
        }))
        .unwrap();
    }

    /// Start → Established with Hello first. Returns everything emitted along the way.
    fn establish(&mut self) -> (Vec<VoicePayload>, Vec<VoiceEvent>) {
        self.gw.start(self.now);
        let (_, _, other) = self.sent_and_events();
        assert!(matches!(&other[..], [Output::Connect { url }] if url == "ws://127.0.0.1:1/?v=8"));
        self.handshake();
        let (sent, events, _) = self.sent_and_events();
        (sent, events)
    }

    /// Once the socket is wanted: open it and run the whole handshake to Established.
    fn handshake(&mut self) {
        self.gw.handle_socket_open(self.now);
        self.hello(1000.0);
        self.ready(&[XCHACHA, AES]).unwrap();
        self.gw
            .set_discovered_address("1.2.3.4".into(), 4321, self.now)
            .unwrap();
        self.session_description();
        assert!(self.gw.is_established());
    }
}

#[test]
fn full_handshake() {
    let mut h = Harness::new();
    let (sent, events) = h.establish();
    assert!(matches!(&sent[0], VoicePayload::Identify(i)
        if i.server_id == Snowflake(10) && i.user_id == Snowflake(30)
            && i.session_id == "sess" && i.token.expose() == "voice-token"
            && i.max_dave_protocol_version == 1));
    assert!(matches!(&sent[1], VoicePayload::SelectProtocol(s)
        if s.protocol == "udp" && s.data.address == "1.2.3.4" && s.data.port == 4321 && s.data.mode == AES));
    // Speaking goes out before the owner learns the key, so audio can never precede it.
    assert!(matches!(&sent[2], VoicePayload::Speaking(s)
        if s.ssrc == 77 && s.speaking == SpeakingFlags::MICROPHONE && s.delay == Some(0)));
    assert_eq!(sent.len(), 3);
    assert_eq!(
        events[0],
        VoiceEvent::DiscoveryRequested {
            ssrc: 77,
            ip: "127.0.0.1".into(),
            port: 5000
        }
    );
    assert_eq!(
        events[1],
        VoiceEvent::SpeakingSent(SpeakingFlags::MICROPHONE)
    );
    let VoiceEvent::SessionReady(s) = &events[2] else {
        panic!("expected SessionReady, got {events:?}");
    };
    assert_eq!(
        (s.ssrc, s.mode, s.server_port),
        (77, EncryptionMode::Aes256GcmRtpSize, 5000)
    );
    assert_eq!(s.secret_key.expose(), &[9; 32]);
    assert!(!format!("{s:?}").contains("9, 9"));
}

#[test]
fn hello_after_ready() {
    let mut h = Harness::new();
    h.gw.start(h.now);
    h.gw.handle_socket_open(h.now);
    h.ready(&[XCHACHA]).unwrap();
    let (_, events, _) = h.sent_and_events();
    assert!(
        events.is_empty(),
        "discovery waits for hello too: {events:?}"
    );
    h.hello(500.0);
    let (_, events, _) = h.sent_and_events();
    assert!(matches!(
        &events[..],
        [VoiceEvent::DiscoveryRequested { ssrc: 77, .. }]
    ));
    h.gw.set_discovered_address("1.1.1.1".into(), 1, h.now)
        .unwrap();
    let (sent, _, _) = h.sent_and_events();
    assert!(matches!(&sent[..], [VoicePayload::SelectProtocol(s)] if s.data.mode == XCHACHA));
}

#[test]
fn no_supported_mode_is_a_clear_error() {
    let mut h = Harness::new();
    h.gw.start(h.now);
    h.gw.handle_socket_open(h.now);
    h.hello(500.0);
    h.drain();
    let err = h
        .ready(&["xsalsa20_poly1305", "aead_aes256_gcm"])
        .unwrap_err();
    assert!(
        matches!(err, crate::Error::Voice(VoiceError::NoSupportedMode { .. })),
        "{err}"
    );
    let (_, events, other) = h.sent_and_events();
    assert!(matches!(&other[..], [Output::Close { .. }]));
    assert!(matches!(
        &events[..],
        [VoiceEvent::Ended(EndReason::Failed(
            VoiceError::NoSupportedMode { .. }
        ))]
    ));
    assert!(h.gw.is_ended());
}

#[test]
fn heartbeat_schedule_and_seq_ack() {
    let mut h = Harness::new();
    h.establish();
    let seq = h.gw.seq_ack();
    assert_eq!(
        seq, 3,
        "hello, ready, session description were numbered 1..=3"
    );
    let t_established = h.now;
    // Hello arrived at the same virtual instant; heartbeats are due at +1 s, +2 s, +3 s.
    let mut beats = Vec::new();
    for _ in 0..3 {
        let due = h.gw.poll_timeout().unwrap();
        beats.push(due - t_established);
        h.now = due;
        h.gw.handle_timeout(h.now);
        let (sent, _, _) = h.sent_and_events();
        let [VoicePayload::Heartbeat(hb)] = &sent[..] else {
            panic!("expected one heartbeat, got {sent:?}");
        };
        assert_eq!(hb.seq_ack, h.gw.seq_ack());
        assert!(hb.t < 1 << 53);
        h.now += Duration::from_millis(7);
        h.server(VoicePayload::HeartbeatAck(HeartbeatAck { t: hb.t }))
            .unwrap();
        // The owner hears each round trip (the voice gateway's ping).
        let (_, events, _) = h.sent_and_events();
        assert_eq!(
            events,
            vec![VoiceEvent::HeartbeatAcked(Duration::from_millis(7))]
        );
        assert_eq!(h.gw.latency(), Some(Duration::from_millis(7)));
    }
    assert_eq!(
        beats,
        vec![
            Duration::from_secs(1),
            Duration::from_secs(2),
            Duration::from_secs(3)
        ]
    );
    // The acks carried seqs 4..=6, so the next heartbeat acknowledges 6.
    h.advance(Duration::from_secs(1));
    let (sent, _, _) = h.sent_and_events();
    assert!(matches!(&sent[..], [VoicePayload::Heartbeat(hb)] if hb.seq_ack == 6));
    assert!(h.gw.latency().is_some());
}

#[test]
fn fractional_heartbeat_interval() {
    let mut h = Harness::new();
    h.gw.start(h.now);
    h.gw.handle_socket_open(h.now);
    let t0 = h.now;
    h.hello(13750.25);
    let due = h.gw.poll_timeout().unwrap() - t0;
    let want = Duration::from_micros(13_750_250);
    assert!(due.abs_diff(want) < Duration::from_micros(1), "{due:?}");
}

#[test]
fn missed_acks_resume() {
    let mut h = Harness::new();
    h.establish();
    let out = h.run_for(Duration::from_millis(4500));
    let beats = out
        .iter()
        .filter(|o| matches!(o, Output::Send(OutgoingFrame::Text(t)) if t.contains("\"op\":3")))
        .count();
    assert_eq!(beats, 3, "the fourth tick finds three unanswered: {out:?}");
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Close {
            code: CLIENT_ABANDON_CLOSE_CODE
        }
    )));
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Event(VoiceEvent::Resuming { attempt: 1, .. })))
    );
    // After the backoff (250 ms with this jitter), a new socket is requested and Resume is sent
    // with our seq_ack.
    assert!(
        matches!(out.last(), Some(Output::Connect { .. })),
        "{out:?}"
    );
    h.gw.handle_socket_open(h.now);
    let (sent, _, _) = h.sent_and_events();
    assert!(matches!(&sent[..], [VoicePayload::Resume(r)]
        if r.seq_ack == 3 && r.session_id == "sess" && r.server_id == Snowflake(10)));
}

/// Drop the socket with `code` after establishing; return what the machine did.
fn close_after_established(code: Option<u16>) -> (Harness, Vec<VoiceEvent>) {
    let mut h = Harness::new();
    h.establish();
    h.gw.handle_socket_closed(code, h.now);
    let (_, events, _) = h.sent_and_events();
    (h, events)
}

#[test]
fn every_close_code_policy() {
    for code in [None, Some(1000), Some(1001), Some(1006), Some(4015)] {
        let (_, ev) = close_after_established(code);
        assert!(
            matches!(&ev[..], [VoiceEvent::Resuming { .. }]),
            "{code:?}: {ev:?}"
        );
    }
    for code in [4001, 4002, 4003, 4005, 4012, 4016, 4020] {
        let (mut h, ev) = close_after_established(Some(code));
        assert!(
            matches!(&ev[..], [VoiceEvent::Reconnecting { .. }]),
            "{code}: {ev:?}"
        );
        // Reconnect once; the same client bug again gives up instead of looping.
        h.run_for(Duration::from_secs(1));
        h.gw.handle_socket_open(h.now);
        h.gw.handle_socket_closed(Some(code), h.now);
        let (_, ev, _) = h.sent_and_events();
        assert!(
            matches!(&ev[..], [VoiceEvent::Ended(EndReason::GaveUp { code: Some(c) })] if *c == code),
            "{code}: {ev:?}"
        );
    }
    // A server that rejects every session right after its handshake: the retry after a full
    // handshake still counts, so the client gives up instead of reconnecting forever; after
    // the window has passed, one more retry is allowed.
    for code in [4001, 4002] {
        let (mut h, _) = close_after_established(Some(code));
        h.run_for(Duration::from_secs(1));
        h.handshake();
        h.gw.handle_socket_closed(Some(code), h.now);
        let (_, ev, _) = h.sent_and_events();
        assert!(
            matches!(&ev[..], [.., VoiceEvent::Ended(EndReason::GaveUp { code: Some(c) })] if *c == code),
            "{code}: {ev:?}"
        );
    }
    let (mut h, _) = close_after_established(Some(4001));
    h.run_for(CLIENT_BUG_WINDOW + Duration::from_secs(1));
    h.handshake();
    h.gw.handle_socket_closed(Some(4001), h.now);
    let (_, ev, _) = h.sent_and_events();
    assert!(
        matches!(&ev[..], [.., VoiceEvent::Reconnecting { .. }]),
        "{ev:?}"
    );
    for code in [4004, 4006] {
        let (h, ev) = close_after_established(Some(code));
        assert_eq!(
            ev,
            vec![VoiceEvent::Ended(EndReason::NeedsNewVoiceState { code })]
        );
        assert!(h.gw.is_ended());
    }
    for code in [4011, 4014, 4022] {
        let (_, ev) = close_after_established(Some(code));
        assert_eq!(
            ev,
            vec![VoiceEvent::Ended(EndReason::AwaitServerUpdate { code })]
        );
    }
    for code in [4017, 4021] {
        let (_, ev) = close_after_established(Some(code));
        assert_eq!(
            ev,
            vec![VoiceEvent::Ended(EndReason::GaveUp { code: Some(code) })]
        );
    }
}

#[test]
fn session_timeout_resumes_once_then_reconnects() {
    let (mut h, ev) = close_after_established(Some(4009));
    assert!(matches!(&ev[..], [VoiceEvent::Resuming { .. }]));
    h.run_for(Duration::from_secs(1));
    h.gw.handle_socket_open(h.now);
    h.server(VoicePayload::Resumed).unwrap();
    h.drain();
    h.gw.handle_socket_closed(Some(4009), h.now);
    let (_, ev, _) = h.sent_and_events();
    assert!(
        matches!(&ev[..], [VoiceEvent::Reconnecting { .. }]),
        "{ev:?}"
    );
}

#[test]
fn failed_resume_falls_back_to_identify() {
    let (mut h, _) = close_after_established(None);
    h.run_for(Duration::from_secs(1));
    h.gw.handle_socket_open(h.now);
    h.drain();
    // The server no longer has our messages buffered: it closes the socket.
    h.gw.handle_socket_closed(Some(1000), h.now);
    let (_, ev, _) = h.sent_and_events();
    assert!(
        matches!(&ev[..], [VoiceEvent::Reconnecting { .. }]),
        "{ev:?}"
    );
    h.run_for(Duration::from_secs(2));
    h.gw.handle_socket_open(h.now);
    let (sent, _, _) = h.sent_and_events();
    assert!(matches!(&sent[..], [VoicePayload::Identify(_)]), "{sent:?}");
}

#[test]
fn resume_replays_and_resends_speaking() {
    let (mut h, _) = close_after_established(Some(4015));
    h.run_for(Duration::from_secs(1));
    h.gw.handle_socket_open(h.now);
    let (sent, _, _) = h.sent_and_events();
    assert!(matches!(&sent[..], [VoicePayload::Resume(r)] if r.seq_ack == 3));
    // Hello, Resumed, then the replay of what we missed (seq > 3).
    h.hello(1000.0);
    h.server(VoicePayload::Resumed).unwrap();
    h.server(VoicePayload::ClientsConnect(ClientsConnect {
        user_ids: vec![Snowflake(5)],
    }))
    .unwrap();
    h.server(VoicePayload::Speaking(Speaking {
        speaking: SpeakingFlags::MICROPHONE,
        ssrc: 555,
        delay: None,
        user_id: Some(Snowflake(5)),
    }))
    .unwrap();
    let (sent, ev, _) = h.sent_and_events();
    assert!(matches!(&sent[..], [VoicePayload::Speaking(s)] if s.ssrc == 77));
    assert_eq!(ev[0], VoiceEvent::SpeakingSent(SpeakingFlags::MICROPHONE));
    assert_eq!(ev[1], VoiceEvent::Resumed);
    assert_eq!(ev[2], VoiceEvent::ClientsConnected(vec![5]));
    assert!(matches!(
        ev[3],
        VoiceEvent::UserSpeaking {
            user_id: 5,
            ssrc: 555,
            ..
        }
    ));
    assert_eq!(h.gw.user_for_ssrc(555), Some(5));
    assert_eq!(h.gw.seq_ack(), h.seq);
    assert!(h.gw.is_established());
}

#[test]
fn retry_limit_gives_up() {
    let mut cfg = VoiceConfig::default();
    cfg.backoff.max_retries = 2;
    let mut h = Harness::with_config(cfg);
    h.establish();
    let mut ended = None;
    for _ in 0..5 {
        h.gw.handle_socket_closed(Some(1006), h.now);
        for o in h.run_for(Duration::from_secs(60)) {
            if let Output::Event(VoiceEvent::Ended(r)) = o {
                ended = Some(r);
            }
        }
        for o in h.drain() {
            if let Output::Event(VoiceEvent::Ended(r)) = o {
                ended = Some(r);
            }
        }
        if ended.is_some() {
            break;
        }
        h.gw.handle_socket_open(h.now);
    }
    assert_eq!(ended, Some(EndReason::RetriesExhausted));
}

#[test]
fn handshake_timeout_retries() {
    let mut h = Harness::new();
    h.gw.start(h.now);
    h.drain();
    h.gw.handle_socket_open(h.now);
    h.drain();
    // A dead server never answers Identify.
    let out = h.run_for(Duration::from_secs(16));
    assert!(
        out.iter().any(|o| matches!(o, Output::Close { .. })),
        "{out:?}"
    );
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Event(VoiceEvent::Reconnecting { .. })))
    );
}

#[test]
fn ssrc_map_before_session_description() {
    let mut h = Harness::new();
    h.gw.start(h.now);
    h.gw.handle_socket_open(h.now);
    h.server(VoicePayload::ClientsConnect(ClientsConnect {
        user_ids: vec![Snowflake(1), Snowflake(2)],
    }))
    .unwrap();
    h.server(VoicePayload::Speaking(Speaking {
        speaking: SpeakingFlags::MICROPHONE,
        ssrc: 11,
        delay: None,
        user_id: Some(Snowflake(1)),
    }))
    .unwrap();
    assert_eq!(h.gw.users().collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(h.gw.user_for_ssrc(11), Some(1));
    h.server(VoicePayload::ClientDisconnect(ClientDisconnect {
        user_id: Snowflake(1),
    }))
    .unwrap();
    assert_eq!(h.gw.users().collect::<Vec<_>>(), vec![2]);
    assert_eq!(h.gw.user_for_ssrc(11), None);
}

#[test]
fn set_speaking_sends_and_is_remembered() {
    let cfg = VoiceConfig {
        initial_speaking: SpeakingFlags::NONE,
        ..VoiceConfig::default()
    };
    let mut h = Harness::with_config(cfg);
    let (sent, _) = h.establish();
    assert!(!sent.iter().any(|p| matches!(p, VoicePayload::Speaking(_))));
    h.gw.set_speaking(SpeakingFlags::MICROPHONE);
    let (sent, ev, _) = h.sent_and_events();
    assert!(
        matches!(&sent[..], [VoicePayload::Speaking(s)] if s.speaking == SpeakingFlags::MICROPHONE)
    );
    assert_eq!(
        ev,
        vec![VoiceEvent::SpeakingSent(SpeakingFlags::MICROPHONE)]
    );
    h.gw.set_speaking(SpeakingFlags::MICROPHONE);
    assert!(h.drain().is_empty(), "unchanged flags are not re-sent");
    h.gw.set_speaking(SpeakingFlags::NONE);
    let (sent, _, _) = h.sent_and_events();
    assert!(matches!(&sent[..], [VoicePayload::Speaking(s)] if s.speaking == SpeakingFlags::NONE));
}

#[test]
fn garbage_and_unknown_input_is_not_fatal() {
    let mut h = Harness::new();
    h.establish();
    for bad in [
        "",
        "{",
        "[1,2]",
        r#"{"op":2,"d":7}"#,
        r#"{"op":4,"d":{"mode":1}}"#,
    ] {
        assert!(h.gw.handle_text(bad, h.now).is_err(), "{bad}");
    }
    for unknown in [
        r#"{"op":10,"d":{}}"#,
        r#"{"op":12,"d":{"audio_ssrc":1}}"#,
        r#"{"op":14,"d":null}"#,
        r#"{"op":15,"d":{"voice":"1"}}"#,
        r#"{"op":18,"d":{"flags":2}}"#,
        r#"{"op":20,"d":{}}"#,
        r#"{"op":200}"#,
    ] {
        h.gw.handle_text(unknown, h.now).unwrap();
    }
    // Out-of-order messages are refused without changing state.
    assert!(h.ready(&[AES]).is_err());
    assert!(h.server(VoicePayload::Resumed).is_err());
    assert!(h.gw.set_discovered_address("x".into(), 1, h.now).is_err());
    assert!(h.gw.handle_binary(&[1], h.now).is_err());
    assert!(h.gw.handle_binary(&vec![0; 2 << 20], h.now).is_err());
    assert!(h.gw.is_established());
    // A deterministic flood of random bytes never panics and never ends the session.
    let mut x: u64 = 42;
    for _ in 0..5000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let bytes: Vec<u8> = (0..(x % 40)).map(|i| (x >> (i % 8 * 8)) as u8).collect();
        let _ = h.gw.handle_binary(&bytes, h.now);
        let _ = h.gw.handle_text(&String::from_utf8_lossy(&bytes), h.now);
    }
    assert!(h.gw.is_established());
}

#[derive(Default)]
struct Recording(Arc<Mutex<Vec<String>>>);

impl DaveExtension for Recording {
    fn on_session_description(&mut self, ctx: DaveContext, v: u16, out: &mut DaveOutbox) {
        self.0
            .lock()
            .unwrap()
            .push(format!("session {} {} v{v}", ctx.user_id, ctx.channel_id));
        out.send_binary(crate::protocol::op::DAVE_MLS_KEY_PACKAGE, &[1, 2, 3]);
    }
    fn on_clients_connect(&mut self, ids: &[u64]) {
        self.0.lock().unwrap().push(format!("connect {ids:?}"));
    }
    fn on_json(&mut self, p: &VoicePayload, out: &mut DaveOutbox) {
        self.0.lock().unwrap().push(format!("json {}", p.op()));
        if let VoicePayload::DavePrepareEpoch(e) = p {
            out.send_json(&VoicePayload::DaveTransitionReady(DaveTransition {
                transition_id: e.transition_id,
            }));
        }
    }
    fn on_binary(&mut self, op: u8, payload: &[u8], _out: &mut DaveOutbox) {
        self.0.lock().unwrap().push(format!("bin {op} {payload:?}"));
    }
    fn on_reset(&mut self) {
        self.0.lock().unwrap().push("reset".into());
    }
}

#[test]
fn dave_traffic_reaches_the_extension() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let gw = VoiceGateway::with_dave(
        request(),
        VoiceConfig::default(),
        Box::new(FixedJitter(0.5)),
        Box::new(Recording(log.clone())),
    );
    let mut h = Harness {
        gw,
        now: Instant::now(),
        seq: 0,
    };
    h.gw.start(h.now);
    h.gw.handle_socket_open(h.now);
    h.server(VoicePayload::ClientsConnect(ClientsConnect {
        user_ids: vec![Snowflake(8)],
    }))
    .unwrap();
    h.hello(1000.0);
    h.ready(&[AES]).unwrap();
    h.gw.set_discovered_address("1.2.3.4".into(), 1, h.now)
        .unwrap();
    h.drain();
    h.server(VoicePayload::SessionDescription(SessionDescription {
        mode: AES.into(),
        secret_key: SecretKey::new([1; 32]),
        dave_protocol_version: 1,
    }))
    .unwrap();
    let out = h.drain();
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Send(OutgoingFrame::Binary(b)) if b == &[26, 1, 2, 3]))
    );
    h.gw.handle_binary(&[0x01, 0x00, 25, 0xAA], h.now).unwrap();
    assert_eq!(h.gw.seq_ack(), 256, "binary seq counts too");
    h.server(VoicePayload::DavePrepareEpoch(DavePrepareEpoch {
        protocol_version: 1,
        epoch: 1,
        transition_id: 4,
    }))
    .unwrap();
    let (sent, _, _) = h.sent_and_events();
    assert!(matches!(&sent[..], [VoicePayload::DaveTransitionReady(t)] if t.transition_id == 4));
    h.gw.handle_socket_closed(Some(4006), h.now);
    assert_eq!(
        *log.lock().unwrap(),
        vec![
            "connect [8]".to_string(),
            "session 30 20 v1".into(),
            "bin 25 [170]".into(),
            "json 24".into(),
            "reset".into(),
        ]
    );
}

#[test]
fn disconnect_closes_and_ends() {
    let mut h = Harness::new();
    h.establish();
    h.gw.disconnect();
    let out = h.drain();
    assert!(matches!(
        &out[..],
        [
            Output::Close { code: 1000 },
            Output::Event(VoiceEvent::Ended(EndReason::Left))
        ]
    ));
    assert_eq!(h.gw.poll_timeout(), None);
    h.gw.handle_socket_closed(None, h.now);
    h.server(VoicePayload::ClientsConnect(ClientsConnect {
        user_ids: vec![Snowflake(1)],
    }))
    .unwrap();
    assert!(h.drain().is_empty(), "nothing follows Ended");
}

#[test]
fn a_server_that_drops_every_session_at_once_sees_the_backoff_grow() {
    // Resumed, then dropped at once, again and again: before, every RESUMED reset the backoff,
    // so the retries never slowed down.
    let mut h = Harness::new();
    h.establish();
    let mut attempts = Vec::new();
    for _ in 0..4 {
        h.gw.handle_socket_closed(Some(1006), h.now);
        for o in h.drain() {
            if let Output::Event(VoiceEvent::Resuming { attempt, .. }) = o {
                attempts.push(attempt);
            }
        }
        let at = h.gw.poll_timeout().expect("the retry timer");
        h.advance(at - h.now);
        assert!(matches!(&h.drain()[..], [Output::Connect { .. }]));
        h.gw.handle_socket_open(h.now);
        h.server(VoicePayload::Resumed).unwrap();
        assert!(h.gw.is_established());
        h.drain();
    }
    assert_eq!(attempts, vec![1, 2, 3, 4]);
    // A connection that stayed up past `stable_after` starts again from attempt 1.
    h.advance(BackoffConfig::default().stable_after);
    h.gw.handle_socket_closed(Some(1006), h.now);
    let (_, events, _) = h.sent_and_events();
    assert!(
        matches!(&events[..], [VoiceEvent::Resuming { attempt: 1, .. }]),
        "{events:?}"
    );
}

#[test]
fn peers_beyond_the_cap_are_refused_and_counted() {
    let mut h = Harness::new();
    h.establish();
    let ids: Vec<Snowflake> = (0..MAX_PEERS as u64 + 5).map(Snowflake).collect();
    h.server(VoicePayload::ClientsConnect(ClientsConnect {
        user_ids: ids,
    }))
    .unwrap();
    let (_, events, _) = h.sent_and_events();
    assert!(matches!(&events[..], [VoiceEvent::ClientsConnected(v)] if v.len() == MAX_PEERS));
    assert_eq!(h.gw.users().count(), MAX_PEERS);
    assert_eq!(h.gw.refused_peers(), 5);
    // Already-known users are not refused.
    h.server(VoicePayload::ClientsConnect(ClientsConnect {
        user_ids: vec![Snowflake(3)],
    }))
    .unwrap();
    assert_eq!(h.gw.refused_peers(), 5);
    for ssrc in 0..MAX_PEERS as u32 + 3 {
        h.server(VoicePayload::Speaking(Speaking {
            speaking: SpeakingFlags::MICROPHONE,
            ssrc,
            delay: None,
            user_id: Some(Snowflake(1)),
        }))
        .unwrap();
    }
    assert_eq!(h.gw.refused_peers(), 8);
    assert_eq!(h.gw.user_for_ssrc(MAX_PEERS as u32 - 1), Some(1));
    assert_eq!(h.gw.user_for_ssrc(MAX_PEERS as u32), None);
}

#[test]
fn session_ids_stay_out_of_debug_output() {
    let mut h = Harness::new();
    let (sent, _) = h.establish();
    let text = format!("{:?} {:?} {sent:?}", h.gw.request(), h.gw);
    assert!(!text.contains("\"sess\""), "{text}");
    assert!(!text.contains("voice-token"), "{text}");
}
