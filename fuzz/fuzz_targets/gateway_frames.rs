//! Voice gateway frames from the network: text (JSON) frames in both directions, binary DAVE
//! frames as a client and as a server receive them, and the two main-gateway voice dispatches.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quaver_gateway::join::{VoiceServerUpdate, VoiceStateUpdate};
use quaver_gateway::protocol::{BinaryFrame, DEFAULT_MAX_FRAME_LEN, VoicePayload};

fuzz_target!(|data: &[u8]| {
    let _ = BinaryFrame::parse_server(data, DEFAULT_MAX_FRAME_LEN);
    let _ = BinaryFrame::parse_client(data, DEFAULT_MAX_FRAME_LEN);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = VoicePayload::decode(text, DEFAULT_MAX_FRAME_LEN);
        let _ = VoiceStateUpdate::from_json(text);
        let _ = VoiceServerUpdate::from_json(text);
    }
});
