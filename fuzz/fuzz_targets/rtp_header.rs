//! RTP header parsing, extension skipping and padding stripping on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quaver_net::receive::classify;
use quaver_net::rtp::{RtpHeader, strip_padding};

fuzz_target!(|data: &[u8]| {
    let _ = classify(data);
    if let Ok(h) = RtpHeader::parse(data) {
        assert!(h.cleartext_len <= data.len());
        let _ = h.split_extension(&data[h.cleartext_len..]);
    }
    let _ = strip_padding(data, true);
});
