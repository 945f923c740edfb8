//! The websocket upgrade response a gateway client reads from the network before the socket
//! opens (status line, headers, `Sec-WebSocket-Accept`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use quaver_gateway::control::{MAX_RESPONSE_HEAD, parse_upgrade_response};

/// RFC 6455 §1.3's example accept value, which the corpus's responses answer.
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(len)) = parse_upgrade_response(data, ACCEPT) {
        assert!(len <= data.len().min(MAX_RESPONSE_HEAD));
        // The head alone is the same complete response.
        assert_eq!(parse_upgrade_response(&data[..len], ACCEPT).ok(), Some(Some(len)));
    }
});
