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

/// `quaver jitter --calls <calls> --seconds 1.5 <baseline> --json --out <svg>`: the report,
/// its JSON text and the picture.
fn jitter_with_baseline(calls: &str, baseline: &str) -> (serde_json::Value, String, String) {
    let svg = std::env::temp_dir().join(format!(
        "quaver-jitter{baseline}-{}.svg",
        std::process::id()
    ));
    let json = quaver(&[
        "jitter",
        "--calls",
        calls,
        "--seconds",
        "1.5",
        baseline,
        "--json",
        "--out",
        svg.to_str().unwrap(),
    ]);
    let report = serde_json::from_str(&json).unwrap();
    let picture = std::fs::read_to_string(&svg).unwrap();
    std::fs::remove_file(svg).ok();
    (report, json, picture)
}

#[test]
fn jitter_reports_every_documented_key_as_json_and_draws_a_picture() {
    let (report, json, picture) = jitter_with_baseline("2", "--baseline");
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
    assert_eq!(report["dave_protocol_version"], 1, "{json}");
    assert_eq!(report["dave_undecryptable"], 0, "{json}");
    // Two calls for 1.5 s: 150 packets at least, none lost on loopback.
    assert!(
        report["packets_received"].as_u64().unwrap() >= 140,
        "{json}"
    );
    assert_eq!(report["lost"], 0);
    // The typical stream's tail is no worse than the worst stream's.
    let median_stream_p99 = report["recv_lateness_p99_median_stream_us"]
        .as_f64()
        .unwrap();
    assert!(
        median_stream_p99 <= report["recv_lateness_us"]["p99"].as_f64().unwrap(),
        "{json}"
    );
    assert!(
        report["latency_ms"]["count"].as_u64().unwrap() > 0,
        "the listener measured nothing: {json}"
    );
    assert!(
        report["baseline"]["packets_received"].as_u64().unwrap() > 0,
        "{json}"
    );
    // RFC 3550 jitter to the ns: kept in whole 48 kHz ticks (20.8 µs), a good loopback run
    // printed 0.0 at every percentile.
    let jitter = &report["interarrival_jitter_us"];
    assert!(jitter["p50"].as_f64().unwrap() > 0.0, "{json}");
    assert!(jitter["max"].as_f64().unwrap() > 0.0, "{json}");
    check_chart(&picture, Some("baseline"));
}

/// The chart is well-formed SVG with what a reader needs: a title, labelled log-scale time
/// axes with units, the four percentiles named on every panel, and the baseline's bars beside
/// Quaver's when a baseline ran (`baseline` is a word of its legend).
fn check_chart(picture: &str, baseline: Option<&str>) {
    let document = roxmltree::Document::parse(picture)
        .unwrap_or_else(|e| panic!("not well-formed XML: {e}\n{picture}"));
    let root = document.root_element();
    assert_eq!(root.tag_name().name(), "svg");
    assert_eq!(
        root.tag_name().namespace(),
        Some("http://www.w3.org/2000/svg")
    );
    for size in ["width", "height"] {
        let value: f64 = root.attribute(size).unwrap().parse().unwrap();
        assert!(value > 100.0, "{size} {value}");
    }
    let texts: Vec<String> = root
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .map(|n| n.text().unwrap_or_default().to_string())
        .collect();
    let has = |needle: &str| texts.iter().filter(|t| t.contains(needle)).count();
    for panel in [
        "Send lateness at the sender",
        "Send lateness at the receiver",
        "Inter-arrival jitter",
        "Latency, push to listener",
    ] {
        assert_eq!(has(panel), 1, "no panel {panel:?}: {texts:?}");
    }
    let panels = has("time (log scale)");
    assert!(panels >= 4, "every panel has a labelled axis: {texts:?}");
    for percentile in ["p50", "p99", "p99.9", "max"] {
        assert!(
            texts.iter().filter(|t| t.starts_with(percentile)).count() >= panels,
            "{percentile} missing on a panel: {texts:?}"
        );
    }
    // Axis labels and bar labels carry their unit.
    assert!(has(" µs") > 0 && has(" ms") > 0, "{texts:?}");
    if let Some(name) = baseline {
        assert!(has(name) > 0, "no {name:?} in {texts:?}");
    }
    assert_eq!(
        has("baseline") + has("floor") > 0,
        baseline.is_some(),
        "{texts:?}"
    );
    let bars = root
        .descendants()
        .filter(|n| n.has_tag_name("rect") && n.attribute("fill") == Some("#e07b1a"))
        .count();
    // Two panels (lateness and jitter at the receiver) of four percentiles, and the legend.
    assert_eq!(
        bars,
        if baseline.is_some() { 2 * 4 + 1 } else { 0 },
        "{picture}"
    );
}

/// `--floor` runs the bare real-time sender on calls of its own beside Quaver's, measured by
/// the same server, and reports it beside Quaver's figures.
#[test]
fn jitter_runs_the_machines_floor_beside_quaver() {
    let (report, json, picture) = jitter_with_baseline("3", "--floor");
    let floor = &report["baseline"];
    assert_eq!(floor["sender"], "floor", "{json}");
    // Three calls for 1.5 s, from the tick after it starts: 200 packets at least.
    assert!(floor["packets_sent"].as_u64().unwrap() >= 200, "{json}");
    assert_eq!(floor["packets_received"], floor["packets_sent"], "{json}");
    assert_eq!(floor["lost"], 0, "{json}");
    let median_stream_p99 = floor["recv_lateness_p99_median_stream_us"]
        .as_f64()
        .unwrap();
    assert!(
        median_stream_p99 <= floor["recv_lateness_us"]["p99"].as_f64().unwrap(),
        "{json}"
    );
    // Quaver's own calls ran as usual.
    assert!(
        report["packets_received"].as_u64().unwrap() >= 200,
        "{json}"
    );
    check_chart(&picture, Some("floor"));

    let both = Command::new(env!("CARGO_BIN_EXE_quaver"))
        .args(["jitter", "--floor", "--baseline"])
        .output()
        .unwrap();
    assert!(!both.status.success(), "one baseline sender at a time");
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
    // Every figure is final: the sender's count covers the last packet the server got (the
    // files once played on past the run, after the sender's last hand-over).
    assert_eq!(report["packets_sent"], report["packets_received"], "{json}");
    // Quaver's own receiver heard the probe call.
    assert!(
        report["heard"]["frames_played"].as_u64().unwrap() > 0,
        "{json}"
    );
    let recordings = report["recordings"].as_array().unwrap();
    assert_eq!(recordings.len(), 1, "{json}");
    let wav = std::fs::metadata(recordings[0].as_str().unwrap()).unwrap();
    // 48 kHz stereo 16-bit: 192,000 bytes a second.
    assert!(wav.len() > 192_000, "recording is only {} bytes", wav.len());
    std::fs::remove_dir_all(dir).ok();
}

/// The local server requires DAVE, as Discord does: the engine negotiates it, and the server's
/// own group member decrypts every E2EE frame the engine sends.
#[test]
fn demo_negotiates_dave_and_the_server_decrypts_every_frame() {
    let dir = std::env::temp_dir().join(format!("quaver-demo-dave-{}", std::process::id()));
    let json = quaver(&[
        "demo",
        "--seconds",
        "1",
        "--json",
        "--record",
        dir.to_str().unwrap(),
    ]);
    std::fs::remove_dir_all(dir).ok();
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["dave_protocol_version"], 1, "{json}");
    assert!(report["dave_epoch"].as_u64().unwrap() >= 1, "{json}");
    assert_eq!(report["dave_undecryptable"], 0, "{json}");
    // Frames sent before the group formed go out as plain Opus; the rest are E2EE.
    assert!(report["dave_frames"].as_u64().unwrap() > 0, "{json}");
    assert_eq!(report["decode_errors"], 0, "{json}");
}

#[test]
fn play_options_never_show_the_token_in_debug_output() {
    let options = quaver_tools::play::PlayOptions {
        at: quaver_tools::channel::ChannelArgs {
            token: Some("very-secret-bot-token".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let shown = format!("{options:?}");
    assert!(!shown.contains("very-secret"), "{shown}");
    assert!(shown.contains("redacted"));
}

/// `quaver serve` in the background; killed (SIGINT) and reaped on drop.
struct Serve {
    child: std::process::Child,
    main_gateway: String,
}

impl Serve {
    fn start(extra: &[&str]) -> Serve {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_quaver"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut first = String::new();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        stdout.read_line(&mut first).unwrap();
        // Keep reading: the server prints a line per session and dies on a closed pipe.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        let url = first
            .trim()
            .strip_prefix("quaver serve: main gateway ")
            .unwrap()
            .to_string();
        // `--server` takes host:port (TLS) or a ws:// URL (plain).
        let main_gateway = match url.strip_prefix("wss://") {
            Some(rest) => rest.split('/').next().unwrap().to_string(),
            None => url.split("/?").next().unwrap().to_string(),
        };
        Serve {
            child,
            main_gateway,
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the child this test spawned.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let _ = self.child.wait();
    }
}

#[test]
fn jitter_reaches_a_separate_tls_server_with_its_ca_and_a_plain_one_by_url() {
    let ca = std::env::temp_dir().join(format!("quaver-cli-ca-{}.pem", std::process::id()));
    let serve = Serve::start(&["--cert-out", ca.to_str().unwrap()]);
    let json = quaver(&[
        "jitter",
        "--server",
        &serve.main_gateway,
        "--ca-cert",
        ca.to_str().unwrap(),
        "--calls",
        "1",
        "--seconds",
        "1",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(report["packets_sent"].as_u64().unwrap() >= 45, "{json}");
    assert_unmeasured_is_null_and_heard_is_measured(&report, &json);
    // Without the CA the bot cannot even reach the main gateway.
    let untrusted = Command::new(env!("CARGO_BIN_EXE_quaver"))
        .args(["jitter", "--server", &serve.main_gateway, "--seconds", "1"])
        .output()
        .unwrap();
    assert!(!untrusted.status.success());
    drop(serve);
    std::fs::remove_file(&ca).ok();

    let plain = Serve::start(&["--plain"]);
    assert!(
        plain.main_gateway.starts_with("ws://"),
        "{}",
        plain.main_gateway
    );
    let json = quaver(&[
        "jitter",
        "--server",
        &plain.main_gateway,
        "--calls",
        "1",
        "--seconds",
        "1",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(report["packets_sent"].as_u64().unwrap() >= 45, "{json}");
    assert_unmeasured_is_null_and_heard_is_measured(&report, &json);
    // The table shows no row of what was not measured (it printed `received 0` and rows of
    // zeros), and what the tool's own listener heard.
    let table = quaver(&[
        "jitter",
        "--server",
        &plain.main_gateway,
        "--calls",
        "1",
        "--seconds",
        "1",
    ]);
    let packets = table
        .lines()
        .find(|l| l.trim_start().starts_with("packets sent"))
        .unwrap_or_else(|| panic!("no packet counts: {table}"));
    assert!(
        !packets.contains(','),
        "counts the server would have measured: {table}"
    );
    assert!(!table.contains("received 0"), "{table}");
    assert!(!table.contains("decrypted by the server"), "{table}");
    for absent in [
        "send lateness (receiver)",
        "inter-arrival jitter",
        "latency push",
    ] {
        assert!(
            !table.lines().any(|l| l.trim_start().starts_with(absent)),
            "{absent:?} shown: {table}"
        );
    }
    assert!(table.contains("Quaver receiver: "), "{table}");
}

/// Against a separate server the server's side is not seen from here: `null`, never 0. The
/// tool's own listener (a Quaver receiver in the first call) measures what arrived instead.
fn assert_unmeasured_is_null_and_heard_is_measured(report: &serde_json::Value, json: &str) {
    for key in [
        "packets_received",
        "lost",
        "duplicates",
        "reordered",
        "decode_errors",
        "dave_frames",
        "dave_undecryptable",
        "recv_lateness_us",
        "recv_lateness_p99_median_stream_us",
        "interarrival_jitter_us",
        "latency_ms",
    ] {
        assert!(report[key].is_null(), "{key} is not null: {json}");
    }
    assert!(report["send_lateness_us"]["p50"].is_number(), "{json}");
    let heard = &report["heard"];
    assert!(heard["frames_played"].as_u64().unwrap() > 0, "{json}");
    assert!(heard["delivered_percent"].as_f64().unwrap() > 0.0, "{json}");
    assert!(
        heard["interarrival_jitter_us"]["count"].as_u64().unwrap() > 0,
        "{json}"
    );
    // The probe's pushes are dated, so the mouth-to-ear figure is measured too.
    assert!(
        heard["mouth_to_ear_ms"]["count"].as_u64().unwrap() > 0,
        "{json}"
    );
}

#[test]
fn jitter_ramp_reports_each_step_and_the_last_clean_one_as_capacity() {
    let output = Command::new(env!("CARGO_BIN_EXE_quaver"))
        .args([
            "jitter",
            "--ramp",
            "--calls",
            "2",
            "--ramp-to",
            "3",
            "--seconds",
            "1",
            "--json",
        ])
        .output()
        .expect("run quaver");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("the ramp report is JSON");
    let steps = report["steps"].as_array().expect("steps");
    assert_eq!(steps[0]["calls"], 2);
    // The ramp stops at the first step that is not clean; every step before it was.
    let first_failing = steps.iter().position(|s| s["clean"] == false);
    let ran = first_failing.map_or(steps.len(), |i| i + 1);
    assert_eq!(steps.len(), ran, "nothing runs after a failing step");
    let clean: Vec<u64> = steps
        .iter()
        .filter(|s| s["clean"] == true)
        .map(|s| s["calls"].as_u64().expect("calls"))
        .collect();
    assert_eq!(report["capacity"].as_u64(), clean.iter().copied().max());
    if first_failing.is_none() {
        assert_eq!(clean, [2, 3]);
        assert_eq!(report["reached_limit"], true);
        let cores = report["cores"].as_f64().expect("cores");
        assert_eq!(report["calls_per_core"].as_f64(), Some(3.0 / cores));
    }
}

#[test]
fn jitter_hears_every_call_it_is_asked_to_and_adds_them_up() {
    let json = quaver(&[
        "jitter",
        "--calls",
        "3",
        "--hear",
        "3",
        "--seconds",
        "2",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    let all = &report["heard"]["all_streams"];
    assert_eq!(all["streams"], 3, "{json}");
    assert_eq!(all["streams_playing"], 3, "every call was heard: {json}");
    // Three calls for 2 s are 300 frames; the playout buffer holds the last few back.
    let played = all["frames_played"].as_u64().unwrap();
    assert!(played >= 240, "{json}");
    assert!(played <= all["frames_expected"].as_u64().unwrap(), "{json}");
    assert!(
        played > report["heard"]["frames_played"].as_u64().unwrap(),
        "more than the probe: {json}"
    );
    assert_eq!(all["lost"], 0, "nothing is lost on loopback: {json}");

    let refused = Command::new(env!("CARGO_BIN_EXE_quaver"))
        .args(["jitter", "--calls", "2", "--hear", "3", "--seconds", "1"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("--hear must be between 1 and --calls"),
        "{stderr}"
    );
}
