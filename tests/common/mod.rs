//! Helpers shared by the end-to-end tests (each test file includes this module).

#![allow(dead_code)] // each test binary uses its own subset

use std::time::{Duration, Instant};

use quaver_tools::server::Server;

/// Polls `check` until it holds; fails the test after `timeout` (never asserts a timing).
pub fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let give_up = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < give_up, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `seconds` of a sine at `freq`, amplitude 0.3, interleaved over `channels`.
pub fn sine(rate: u32, channels: usize, freq: f64, seconds: f64) -> Vec<f32> {
    let frames = (f64::from(rate) * seconds) as usize;
    (0..frames)
        .flat_map(|i| {
            let v =
                (2.0 * std::f64::consts::PI * freq * i as f64 / f64::from(rate)).sin() as f32 * 0.3;
            std::iter::repeat_n(v, channels)
        })
        .collect()
}

/// Left channel of the server's decoded audio for `ssrc`, as f32.
pub fn decoded_left(server: &Server, ssrc: u32) -> Vec<f32> {
    server
        .decoded_audio(ssrc)
        .chunks_exact(2)
        .map(|pair| f32::from(pair[0]) / 32_768.0)
        .collect()
}
