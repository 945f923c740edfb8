//! The built-in main-gateway client as a whole: arbitrary frames, timers and socket events, in
//! any order, into a `MainGateway`. Dispatches of every kind (READY, RESUMED, the voice ones,
//! Reconnect, Invalid Session, Hello …) are parsed from the network here; errors are fine, a
//! panic is a bug.
//!
//! Input: records `[kind u8][len u16 LE][bytes]` (the format of `fuzz/corpus/main_gateway`).
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use quaver_gateway::backoff::FixedJitter;
use quaver_gateway::join::UpdateVoiceState;
use quaver_gateway::main_gateway::{MainGateway, MainGatewayConfig, Output};
use quaver_gateway::protocol::{Snowflake, Token};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let mut config = MainGatewayConfig::new(Token::new("bot-token"));
    if flags & 1 == 1 {
        config.url = "ws://127.0.0.1:1/?v=10&encoding=json".into();
    }
    let mut m = MainGateway::new(config, Box::new(FixedJitter(0.5)));
    let mut now = Instant::now();
    m.start(now);
    m.handle_socket_open(now);
    while let [kind, l0, l1, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*l0, *l1])).min(tail.len());
        let (body, next) = tail.split_at(len);
        rest = next;
        match kind % 8 {
            0..=3 => {
                if let Ok(text) = std::str::from_utf8(body) {
                    let _ = m.handle_text(text, now);
                }
            }
            4 => {
                let ms = body
                    .iter()
                    .fold(0u64, |a, b| a.wrapping_mul(256) ^ u64::from(*b));
                now += Duration::from_millis(ms % 120_000);
                m.handle_timeout(now);
            }
            5 => {
                let code = match body {
                    [a, b, ..] => Some(u16::from_le_bytes([*a, *b])),
                    _ => None,
                };
                m.handle_socket_closed(code, now);
            }
            6 => m.handle_socket_open(now),
            _ => m.update_voice_state(&UpdateVoiceState {
                guild_id: Snowflake(1),
                channel_id: body.first().map(|c| Snowflake(u64::from(*c))),
                self_mute: false,
                self_deaf: true,
            }),
        }
        while let Some(out) = m.poll_output() {
            if let Output::Send(text) = out {
                // What we send is always JSON.
                assert!(serde_json::from_str::<serde_json::Value>(&text).is_ok());
            }
        }
        if let Some(t) = m.poll_timeout() {
            // A deadline is never before the time that set it by more than a heartbeat.
            let _ = t;
        }
    }
});
