//! The client side of DAVE: arbitrary binary ops (25, 27, 29, 30 and unknown ones) and JSON
//! transitions, in any order, into a `DaveClient` that has negotiated version 1. Errors are
//! fine; a panic is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quaver_gateway::dave::{DaveClient, DaveContext, DaveExtension, DaveOutbox};
use quaver_gateway::protocol::VoicePayload;

fuzz_target!(|data: &[u8]| {
    let mut client = DaveClient::new(1);
    let mut out = DaveOutbox::default();
    client.on_clients_connect(&[2, 3]);
    client.on_session_description(
        DaveContext {
            user_id: 1,
            channel_id: 42,
        },
        1,
        &mut out,
    );
    // Each record: [kind u8][len u16 LE][bytes]; kind < 32 is a binary op, otherwise the bytes
    // are tried as a JSON text frame.
    let mut rest = data;
    while let [kind, l0, l1, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*l0, *l1])).min(tail.len());
        let (body, next) = tail.split_at(len);
        if *kind < 32 {
            client.on_binary(*kind, body, &mut out);
        } else if let Ok(text) = std::str::from_utf8(body)
            && let Ok(frame) = VoicePayload::decode(text, 1 << 20)
        {
            client.on_json(&frame.payload, &mut out);
        }
        rest = next;
    }
});
