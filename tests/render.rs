//! `quaver render` checked by an independent decoder: ffmpeg generates two tones at different
//! rates, Quaver mixes them into Ogg Opus, ffmpeg decodes the result, and both tones must be
//! there, at the right length.

use std::path::Path;
use std::process::Command;

use quaver::engine::analysis::tone_power;

fn ffmpeg(args: &[&str]) -> Vec<u8> {
    let output = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .output()
        .expect("ffmpeg is needed for this test; `.ci/setup` installs it");
    assert!(
        output.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

fn tone(path: &Path, freq: u32, rate: u32, seconds: u32) {
    let source = format!("sine=frequency={freq}:sample_rate={rate}:duration={seconds}");
    // lavfi's sine has an amplitude of 1/8.
    ffmpeg(&["-f", "lavfi", "-i", &source, path.to_str().unwrap()]);
}

#[test]
fn render_of_two_tones_at_different_rates_decodes_to_both_tones_at_the_right_length() {
    let dir = std::env::temp_dir().join(format!("quaver-render-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let low = dir.join("low.wav");
    let high = dir.join("high.flac");
    tone(&low, 440, 44_100, 3);
    tone(&high, 2_000, 22_050, 3);
    let output = dir.join("mix.ogg");

    let report = quaver_tools::render::render(&[low, high], &output, 96_000).unwrap();
    assert!(
        (report.seconds - 3.0).abs() < 0.05,
        "rendered {} s",
        report.seconds
    );

    let raw = ffmpeg(&[
        "-i",
        output.to_str().unwrap(),
        "-f",
        "f32le",
        "-ac",
        "1",
        "-ar",
        "48000",
        "-",
    ]);
    let decoded: Vec<f32> = raw
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let seconds = decoded.len() as f64 / 48_000.0;
    assert!((seconds - 3.0).abs() < 0.05, "ffmpeg decoded {seconds} s");

    let middle = &decoded[24_000..120_000];
    let off = tone_power(middle, 1_000.0, 48_000);
    for freq in [440.0, 2_000.0] {
        let power = tone_power(middle, freq, 48_000);
        assert!(
            power > 1_000.0 * off.max(1e-12) && power > 1e-4,
            "{freq} Hz: power {power}, off-tone {off}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}
