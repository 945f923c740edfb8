//! What an HTTP server sends a stream: the response head, the body in every framing (length,
//! chunked, until close) and a `Location` to follow. Errors are fine; a panic or a hang is a bug.
#![no_main]

use std::io::{Cursor, Read};

use libfuzzer_sys::fuzz_target;
use quaver_engine::http::{Body, Head, Url, read_head};

fuzz_target!(|data: &[u8]| {
    let mut reader = Cursor::new(data);
    if let Ok(head) = read_head(&mut reader) {
        if let Some(location) = &head.location
            && let Ok(base) = Url::parse("http://127.0.0.1:8080/a/b.mp3")
        {
            let _ = base.join(location);
        }
        let mut body = Body::new(&mut reader, &head);
        let mut sink = [0_u8; 4096];
        while let Ok(1..) = body.read(&mut sink) {}
    }
    // The same bytes as a chunked body with no head in front.
    let chunked = Head {
        chunked: true,
        ..Head::default()
    };
    let mut body = Body::new(Cursor::new(data), &chunked);
    let mut sink = [0_u8; 4096];
    while let Ok(1..) = body.read(&mut sink) {}
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Url::parse(text);
    }
});
