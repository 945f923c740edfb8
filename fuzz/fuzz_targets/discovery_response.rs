//! IP discovery response parsing on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = quaver_net::discovery::parse_response(data) {
        // A parsed response re-encodes to a response that parses to the same value.
        let again = quaver_net::discovery::encode_response(r.ssrc, r.address);
        assert_eq!(quaver_net::discovery::parse_response(&again).ok(), Some(r));
    }
});
