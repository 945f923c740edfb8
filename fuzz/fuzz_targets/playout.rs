//! The playout buffer and its decoder under arbitrary push/pull sequences: arbitrary sequence
//! numbers, timestamps, packet bytes and time steps must never panic, and every pull must
//! render 20 ms (or nothing) without complaint.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use quaver_net::playout::{PCM_SAMPLES, Playout, PlayoutConfig, StreamDecoder, opus_packet};

fuzz_target!(|data: &[u8]| {
    let Some((&config_byte, mut rest)) = data.split_first() else {
        return;
    };
    let config = PlayoutConfig {
        min_delay: config_byte & 3,
        max_delay: (config_byte >> 2) & 15,
        capacity: 16 << (config_byte >> 6),
        pause_after: (config_byte >> 4) & 7,
    };
    let mut playout = Playout::new(&config);
    // One decoder for the whole input: creating it costs more than a short input runs.
    let Ok(mut decoder) = StreamDecoder::new() else {
        return;
    };
    let mut out = [0i16; PCM_SAMPLES];
    let mut now = Instant::now();
    while let Some((&op, after)) = rest.split_first() {
        rest = after;
        match op % 4 {
            0 | 1 => {
                // push: sequence (2), timestamp (4), length (1), bytes.
                if rest.len() < 7 {
                    return;
                }
                let sequence = u16::from_le_bytes([rest[0], rest[1]]);
                let timestamp = u32::from_le_bytes([rest[2], rest[3], rest[4], rest[5]]);
                let len = usize::from(rest[6]).min(rest.len() - 7);
                let opus = &rest[7..7 + len];
                let _ = opus_packet::parse(opus);
                let _ = playout.push(now, sequence, timestamp, opus);
                rest = &rest[7 + len..];
            }
            2 => {
                let next = playout.pull(now);
                let rendered = decoder.render(&next, &mut out);
                playout.count(rendered);
                let _ = playout.take_edge();
            }
            _ => {
                // Time step: 0–255 ms, or a reset on 255.
                let Some((&step, after)) = rest.split_first() else {
                    return;
                };
                rest = after;
                if step == 255 {
                    playout.reset();
                    decoder.reset();
                } else {
                    now += Duration::from_millis(u64::from(step));
                }
            }
        }
    }
    let _ = playout.stats();
});
