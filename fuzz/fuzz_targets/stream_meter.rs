//! The local server's per-stream receive meter (loss, reorder, duplicates, jitter, lateness)
//! on arbitrary RTP sequence numbers, timestamps, sizes and arrival times: the values come
//! from the network (any client's packets), so no combination may panic or overflow.
//!
//! Input: 16-byte records `[seq u16][ts u32][len u16][arrival ns i64]`, little endian.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let arrivals = data.chunks_exact(16).map(|r| {
        (
            u16::from_le_bytes([r[0], r[1]]),
            u32::from_le_bytes([r[2], r[3], r[4], r[5]]),
            usize::from(u16::from_le_bytes([r[6], r[7]])),
            i64::from_le_bytes(r[8..16].try_into().expect("8 bytes")),
        )
    });
    quaver_tools::server::fuzzing::stream_meter(arrivals);
});
