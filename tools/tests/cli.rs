//! The `quaver` command's measuring tools, run as a user would run them.

use std::process::Command;

fn quaver(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_quaver"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "quaver {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn jitter_reports_every_documented_key_as_json_and_draws_a_picture() {
    let svg = std::env::temp_dir().join(format!("quaver-jitter-{}.svg", std::process::id()));
    let json = quaver(&[
        "jitter",
        "--calls",
        "2",
        "--seconds",
        "1.5",
        "--baseline",
        "--json",
        "--out",
        svg.to_str().unwrap(),
    ]);
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    for key in [
        "calls",
        "seconds",
        "packets_sent",
        "packets_received",
        "lost",
        "resumes",
        "cpu_percent",
    ] {
        assert!(report[key].is_number(), "{key} missing in {json}");
    }
    for key in [
        "send_lateness_us",
        "recv_lateness_us",
        "interarrival_jitter_us",
        "latency_ms",
    ] {
        for quantile in ["p50", "p99", "p999", "max"] {
            assert!(
                report[key][quantile].is_number(),
                "{key}.{quantile} missing in {json}"
            );
        }
    }
    assert_eq!(report["calls"], 2);
    // Two calls for 1.5 s: 150 packets at least, none lost on loopback.
    assert!(
        report["packets_received"].as_u64().unwrap() >= 140,
        "{json}"
    );
    assert_eq!(report["lost"], 0);
    assert!(
        report["latency_ms"]["count"].as_u64().unwrap() > 0,
        "the listener measured nothing: {json}"
    );
    assert!(
        report["baseline"]["packets_received"].as_u64().unwrap() > 0,
        "{json}"
    );
    let picture = std::fs::read_to_string(&svg).unwrap();
    assert!(picture.starts_with("<svg") && picture.contains("<rect"));
    std::fs::remove_file(svg).ok();
}

#[test]
fn demo_plays_the_bundled_tracks_and_writes_a_recording() {
    let dir = std::env::temp_dir().join(format!("quaver-demo-{}", std::process::id()));
    let json = quaver(&[
        "demo",
        "--seconds",
        "1.5",
        "--json",
        "--record",
        dir.to_str().unwrap(),
    ]);
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(report["packets_received"].as_u64().unwrap() >= 70, "{json}");
    assert_eq!(report["lost"], 0);
    let recordings = report["recordings"].as_array().unwrap();
    assert_eq!(recordings.len(), 1, "{json}");
    let wav = std::fs::metadata(recordings[0].as_str().unwrap()).unwrap();
    // 48 kHz stereo 16-bit: 192,000 bytes a second.
    assert!(wav.len() > 192_000, "recording is only {} bytes", wav.len());
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn play_options_never_show_the_token_in_debug_output() {
    let options = quaver_tools::play::PlayOptions {
        token: Some("very-secret-bot-token".into()),
        ..Default::default()
    };
    let shown = format!("{options:?}");
    assert!(!shown.contains("very-secret"), "{shown}");
    assert!(shown.contains("redacted"));
}
