//! Websocket URLs as the control thread parses them before connecting (they arrive from the
//! network: READY's `resume_gateway_url`, VOICE_SERVER_UPDATE's `endpoint`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use quaver_gateway::control::check_url;
use quaver_gateway::protocol::Token;
use quaver_gateway::voice::VoiceConnectRequest;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok((host, _port, _tls)) = check_url(text) {
        assert!(!host.starts_with('['), "{text:?}");
    }
    // An endpoint becomes a URL the same way the voice machine builds it.
    let request = VoiceConnectRequest {
        guild_id: 1,
        channel_id: 2,
        user_id: 3,
        session_id: "s".into(),
        token: Token::new("t"),
        endpoint: text.into(),
    };
    let _ = check_url(&request.url());
});
