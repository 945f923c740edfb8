//! Lavalink's encoded tracks as the node decodes them: clients send them in player updates,
//! mix layers and `/v4/decodetrack(s)`. Any input must decode or fail, never panic, and what
//! decodes must survive re-encoding unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quaver_node::codec;

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = codec::decode_message(data) {
        let encoded = codec::encode(&info).expect("a decoded track re-encodes");
        assert_eq!(codec::decode(&encoded).as_ref(), Ok(&info));
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = codec::decode(text);
    }
});
