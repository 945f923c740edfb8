//! The voice gateway state machine as a whole: arbitrary text and binary frames, timers, socket
//! events and discovery results, in any order, into a `VoiceGateway` with real DAVE. Errors are
//! fine, a panic is a bug.
//!
//! Input: records `[kind u8][len u16 LE][bytes]` (the format of `fuzz/corpus/voice_machine`).
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use quaver_gateway::backoff::FixedJitter;
use quaver_gateway::protocol::Token;
use quaver_gateway::voice::{VoiceConfig, VoiceConnectRequest, VoiceGateway};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let request = VoiceConnectRequest {
        guild_id: 1,
        channel_id: 2,
        user_id: 3,
        session_id: "session".into(),
        token: Token::new("voice-token"),
        endpoint: "127.0.0.1:1".into(),
    };
    let config = VoiceConfig {
        max_dave_protocol_version: u16::from(flags & 1),
        ..VoiceConfig::default()
    };
    let mut gw = VoiceGateway::new(request, config, Box::new(FixedJitter(0.5)));
    let mut now = Instant::now();
    gw.start(now);
    gw.handle_socket_open(now);
    while let [kind, l0, l1, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*l0, *l1])).min(tail.len());
        let (body, next) = tail.split_at(len);
        rest = next;
        match kind % 8 {
            0..=2 => {
                if let Ok(text) = std::str::from_utf8(body) {
                    let _ = gw.handle_text(text, now);
                }
            }
            3 => {
                let _ = gw.handle_binary(body, now);
            }
            4 => {
                let ms = body
                    .iter()
                    .fold(0u64, |a, b| a.wrapping_mul(256) ^ u64::from(*b));
                now += Duration::from_millis(ms % 120_000);
                gw.handle_timeout(now);
            }
            5 => {
                let code = match body {
                    [a, b, ..] => Some(u16::from_le_bytes([*a, *b])),
                    _ => None,
                };
                gw.handle_socket_closed(code, now);
            }
            6 => gw.handle_socket_open(now),
            _ => {
                let _ = gw.set_discovered_address("127.0.0.1".into(), 5000, now);
            }
        }
        while gw.poll_output().is_some() {}
        let _ = gw.poll_timeout();
    }
});
