//! The engine's Ogg Opus reader on arbitrary bytes: OpusHead parsing and packet iteration must
//! give errors, never panic or loop forever.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use quaver_engine::ogg_opus::{OggOpusReader, parse_opus_head};

fuzz_target!(|data: &[u8]| {
    let _ = parse_opus_head(data);
    if let Ok(mut reader) = OggOpusReader::new(Cursor::new(data)) {
        let _ = reader.head();
        // Every packet consumes input, so this many is more than any input can hold.
        for _ in 0..data.len() + 2 {
            match reader.next_packet() {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
});
