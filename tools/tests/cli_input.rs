//! The `quaver` command at its edges: Ctrl-C in the middle of a run, numbers that make no
//! sense, more calls than the process can hold, and files that are not (whole) audio.
//!
//! Every test runs the built binary as a user would. Time bounds here are only upper bounds
//! after which a hung child is killed and the test fails; nothing asserts how fast anything is.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Far above anything these runs need; only a hung or runaway child reaches it.
const HANG: Duration = Duration::from_secs(60);

/// What a finished (or killed) run left behind.
struct Run {
    /// `None` when the child had to be killed or died of a signal.
    code: Option<i32>,
    stdout: String,
    stderr: String,
    killed: bool,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}{}\n--- stdout\n{}--- stderr\n{}",
            self.code,
            if self.killed { " (killed: hung)" } else { "" },
            self.stdout,
            self.stderr
        )
    }
}

fn command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_quaver"));
    command
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Drains a pipe on a thread, so a chatty child never blocks on a full pipe.
fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = pipe.read_to_end(&mut text);
        String::from_utf8_lossy(&text).into_owned()
    })
}

/// Waits for `child` to exit, killing it once `limit` has passed.
fn finish(mut child: Child, limit: Duration) -> (Option<i32>, bool) {
    let give_up = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status.code(), false);
        }
        if Instant::now() > give_up {
            let _ = child.kill();
            let _ = child.wait();
            return (None, true);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run_command(mut command: Command) -> Run {
    let mut child = command.spawn().unwrap();
    let stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());
    let (code, killed) = finish(child, HANG);
    Run {
        code,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
        killed,
    }
}

fn quaver(args: &[&str]) -> Run {
    run_command(command(args))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("quaver-cli-input-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn bundled(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tracks")
        .join(name)
}

/// Starts `args`, waits for a stderr line starting with `ready` (the run is streaming), sends
/// SIGINT, and returns what the run printed.
fn interrupt_once_running(args: &[&str], ready: &str) -> Run {
    let mut child = command(args).spawn().unwrap();
    let stdout = drain(child.stdout.take().unwrap());
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        while stderr.read_line(&mut line).is_ok_and(|n| n > 0) {
            if lines_tx.send(std::mem::take(&mut line)).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    let give_up = Instant::now() + HANG;
    let running = loop {
        match lines.recv_timeout(give_up.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                seen.push_str(&line);
                if line.starts_with(ready) {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    if running {
        // SAFETY: kill(2) on the child this test spawned and has not reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    }
    let (code, killed) = finish(child, if running { HANG } else { Duration::ZERO });
    seen.extend(lines.try_iter());
    let run = Run {
        code,
        stdout: stdout.join().unwrap(),
        stderr: seen,
        killed,
    };
    assert!(running, "never said it was running ({ready:?}): {run:?}");
    run
}

fn assert_interrupted_report(run: &Run, planned: &str) {
    assert!(!run.killed, "Ctrl-C did not stop it: {run:?}");
    assert_eq!(run.code, Some(130), "{run:?}");
    // The report of what ran, saying it was cut short.
    assert!(run.stdout.contains("call(s),"), "no report: {run:?}");
    let note = run
        .stdout
        .lines()
        .find(|l| l.contains("interrupted after"))
        .unwrap_or_else(|| panic!("the report does not say it was interrupted: {run:?}"));
    assert!(note.contains(&format!("of {planned} s")), "{note}");
}

#[test]
fn ctrl_c_stops_a_demo_and_prints_the_report_of_what_ran() {
    let record = scratch("demo-record");
    let run = interrupt_once_running(
        &[
            "demo",
            "--seconds",
            "60",
            "--record",
            record.to_str().unwrap(),
        ],
        "quaver demo:",
    );
    assert_interrupted_report(&run, "60");
    let _ = std::fs::remove_dir_all(record);
}

#[test]
fn ctrl_c_stops_jitter_and_prints_the_report_of_what_ran() {
    // An hour of probe packets: they are made as they are sent, so the run starts streaming
    // right away instead of encoding 180,000 packets first.
    let run = interrupt_once_running(
        &["jitter", "--seconds", "3600", "--calls", "1"],
        "quaver jitter:",
    );
    assert_interrupted_report(&run, "3600");
}

/// Refused by the argument parser: usage error (2), one message naming the flag, no panic.
fn assert_refused(args: &[&str], flag: &str) {
    let run = quaver(args);
    assert_eq!(
        run.code,
        Some(2),
        "quaver {args:?} was not refused: {run:?}"
    );
    assert!(
        run.stderr.contains(flag) && run.stderr.starts_with("error:"),
        "quaver {args:?}: the message does not name {flag}: {run:?}"
    );
    assert!(!run.stderr.contains("panicked"), "{run:?}");
}

#[test]
fn serve_refuses_durations_and_percentages_that_are_not_finite_or_in_range() {
    for (flag, value) in [
        ("--drop-ws-after", "inf"),
        ("--drop-ws-after", "NaN"),
        ("--drop-ws-after", "-1"),
        ("--drop-ws-after", "1e300"),
        ("--heartbeat-interval", "1e300"),
        ("--heartbeat-interval", "nan"),
        ("--heartbeat-interval", "0"),
        ("--heartbeat-interval", "-5"),
        ("--heartbeat-timeout", "inf"),
        ("--heartbeat-timeout", "-1"),
        ("--udp-loss", "150"),
        ("--udp-reorder", "nan"),
        ("--udp-duplicate", "-3"),
    ] {
        assert_refused(
            &["serve", "--listen", "127.0.0.1:0", "--plain", flag, value],
            flag,
        );
    }
}

#[test]
fn run_lengths_volumes_and_bitrates_that_make_no_sense_are_refused() {
    let track = bundled("beat.flac");
    let track = track.to_str().unwrap();
    for seconds in ["0", "-1", "NaN", "inf", "1e9", "abc"] {
        assert_refused(&["demo", "--seconds", seconds], "--seconds");
        assert_refused(&["jitter", "--seconds", seconds], "--seconds");
    }
    for volume in ["nan", "-1", "inf", "1e30"] {
        assert_refused(&["play", "--volume", volume, track], "--volume");
    }
    assert_refused(&["play", "--volume", "1,nan", track, track], "--volume");
    let out = scratch("bitrate.ogg");
    for bitrate in ["0", "5999", "510001"] {
        assert_refused(
            &[
                "render",
                "-o",
                out.to_str().unwrap(),
                "--bitrate",
                bitrate,
                track,
            ],
            "--bitrate",
        );
    }
}

#[test]
fn call_counts_beyond_what_a_process_can_hold_are_refused() {
    for calls in [
        "0",
        "100000",
        "18446744073709551615",
        "18446744073709551616",
    ] {
        assert_refused(&["jitter", "--calls", calls], "--calls");
        assert_refused(&["demo", "--calls", calls], "--calls");
    }
}

#[test]
fn more_calls_than_the_file_descriptor_limit_allows_are_refused_up_front() {
    use std::os::unix::process::CommandExt;
    let mut command = command(&["jitter", "--calls", "200", "--seconds", "1"]);
    // SAFETY: only setrlimit(2), async-signal-safe, between fork and exec.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 128,
                rlim_max: 128,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let run = run_command(command);
    assert_eq!(run.code, Some(1), "{run:?}");
    let message = run.stderr.trim();
    assert_eq!(message.lines().count(), 1, "{run:?}");
    assert!(
        message.contains("--calls 200") && message.contains("128") && message.contains("ulimit -n"),
        "the refusal must name the limit and how to raise it: {run:?}"
    );
    assert!(
        run.stdout.is_empty(),
        "nothing ran, so nothing is reported: {run:?}"
    );
}

/// One line on stderr, `error: FILE: ...`, with no library log lines and no colour codes.
fn assert_one_clean_line(run: &Run, file: &Path, reason: &str) {
    assert_eq!(run.code, Some(1), "{run:?}");
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected exactly one line: {run:?}");
    let expected = format!("error: {}: ", file.display());
    assert!(lines[0].starts_with(&expected), "{run:?}");
    assert!(lines[0].contains(reason), "expected {reason:?}: {run:?}");
    assert!(
        !run.stderr.contains('\u{1b}'),
        "colour codes in a pipe: {run:?}"
    );
}

fn bad_files() -> Vec<(PathBuf, &'static str)> {
    let empty = scratch("empty.wav");
    std::fs::write(&empty, b"").unwrap();
    let text = scratch("notes.mp3");
    std::fs::write(&text, "these are my notes, not music\n".repeat(20)).unwrap();
    let cut = |name: &str, keep: usize| {
        let whole = std::fs::read(bundled(name)).unwrap();
        let path = scratch(&format!("truncated-{name}"));
        std::fs::write(&path, &whole[..keep.min(whole.len() / 2)]).unwrap();
        path
    };
    vec![
        (empty, "empty"),
        (text, "not an audio file"),
        (cut("beat.flac", 20_000), "truncated"),
        (cut("chords.ogg", 20_000), "truncated"),
        (cut("bass.mp3", 30_000), "truncated: it ends after"),
        (scratch("missing.wav"), "cannot open"),
    ]
}

#[test]
fn render_names_an_empty_text_or_truncated_file_in_one_line() {
    let out = scratch("render-out.ogg");
    for (file, reason) in bad_files() {
        let run = quaver(&[
            "render",
            "-o",
            out.to_str().unwrap(),
            file.to_str().unwrap(),
        ]);
        assert_one_clean_line(&run, &file, reason);
    }
}

#[test]
fn play_and_demo_check_their_files_before_joining() {
    for (file, reason) in bad_files() {
        let file_arg = file.to_str().unwrap();
        // A good file first: the bad one must still be caught before anything starts.
        let good = bundled("bass.mp3");
        let run = quaver(&["play", good.to_str().unwrap(), file_arg]);
        assert_one_clean_line(&run, &file, reason);
        let record = scratch("demo-bad-record");
        let run = quaver(&[
            "demo",
            "--seconds",
            "1",
            "--record",
            record.to_str().unwrap(),
            file_arg,
        ]);
        assert_one_clean_line(&run, &file, reason);
    }
}

#[test]
fn rust_log_still_brings_back_library_logs() {
    let empty = scratch("text-logged.wav");
    std::fs::write(&empty, "not audio at all\n".repeat(20)).unwrap();
    let out = scratch("logged-out.ogg");
    let mut command = command(&[
        "render",
        "-o",
        out.to_str().unwrap(),
        empty.to_str().unwrap(),
    ]);
    command.env(
        "RUST_LOG",
        "quaver=debug,quaver_tools=debug,symphonia=trace",
    );
    let run = run_command(command);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.lines().count() > 1, "{run:?}");
    assert!(
        !run.stderr.contains('\u{1b}'),
        "colour codes in a pipe: {run:?}"
    );
}

/// A line a `tracing` formatter wrote: a timestamp, then a level.
fn is_log_line(line: &str) -> bool {
    let mut words = line.split_whitespace();
    let _timestamp = words.next();
    matches!(
        words.next(),
        Some("TRACE" | "DEBUG" | "INFO" | "WARN" | "ERROR")
    )
}

/// Library log lines (`WARN symphonia_core…`, the engine's and the gateway's) reach the user
/// only when RUST_LOG asks, and nothing is coloured into a pipe.
#[test]
fn a_demo_prints_no_library_log_lines_and_no_colour_into_a_pipe() {
    let record = scratch("demo-quiet-record");
    let run = quaver(&[
        "demo",
        "--seconds",
        "1",
        "--record",
        record.to_str().unwrap(),
    ]);
    let _ = std::fs::remove_dir_all(record);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(!run.stderr.contains('\u{1b}'), "colour codes: {run:?}");
    for line in run.stderr.lines() {
        assert!(!is_log_line(line), "a log line nobody asked for: {run:?}");
        assert!(!line.contains("symphonia"), "{run:?}");
        assert!(!line.contains("quaver_"), "a log target: {run:?}");
    }
    // What the demo says itself is there.
    assert!(run.stderr.starts_with("quaver demo:"), "{run:?}");
}

/// 0.6 s of a 440 Hz tone, 48 kHz stereo 16-bit WAV.
fn short_wav(name: &str) -> PathBuf {
    let frames = 48_000 * 6 / 10;
    let mut pcm = Vec::with_capacity(frames * 4);
    for i in 0..frames {
        let s = ((i as f32 * 440.0 / 48_000.0 * std::f32::consts::TAU).sin() * 8_000.0) as i16;
        pcm.extend_from_slice(&s.to_le_bytes());
        pcm.extend_from_slice(&s.to_le_bytes());
    }
    let mut wav = Vec::new();
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + pcm.len() as u32).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16_u32.to_le_bytes());
    wav.extend_from_slice(&1_u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&2_u16.to_le_bytes()); // channels
    wav.extend_from_slice(&48_000_u32.to_le_bytes());
    wav.extend_from_slice(&(48_000_u32 * 4).to_le_bytes());
    wav.extend_from_slice(&4_u16.to_le_bytes());
    wav.extend_from_slice(&16_u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&(pcm.len() as u32).to_le_bytes());
    wav.extend_from_slice(&pcm);
    let path = scratch(name);
    std::fs::write(&path, wav).unwrap();
    path
}

/// The progress lines of `play`, `jitter` and `record` are for a terminal: into a pipe they
/// write nothing (no carriage returns, no counters), only the lines that say something.
#[test]
fn progress_lines_stay_out_of_a_pipe() {
    let tone = short_wav("progress-tone.wav");
    let play = quaver(&["play", tone.to_str().unwrap()]);
    assert_eq!(play.code, Some(0), "{play:?}");
    let jitter = quaver(&["jitter", "--seconds", "1"]);
    assert_eq!(jitter.code, Some(0), "{jitter:?}");
    let out = scratch("progress-record");
    let record = quaver(&[
        "record",
        "--seconds",
        "1",
        "--output",
        out.to_str().unwrap(),
    ]);
    let _ = std::fs::remove_dir_all(out);
    assert_eq!(record.code, Some(0), "{record:?}");
    for run in [&play, &jitter, &record] {
        assert!(!run.stderr.contains('\r'), "a progress line: {run:?}");
        assert!(!run.stderr.contains('\u{1b}'), "{run:?}");
    }
    // What play says is whole lines: where it joined, what the server got.
    assert!(
        play.stderr.lines().any(|l| l.starts_with("joined guild")),
        "{play:?}"
    );
    assert!(
        !play.stderr.contains("progress-tone.wav 0:"),
        "the track's position is progress: {play:?}"
    );
}

/// A `quaver` binary copied anywhere (as `cargo install` does) plays the demo's tracks from
/// any directory: they are inside the binary, not found through the source tree's path.
#[test]
fn a_copied_binary_runs_the_demo_from_another_directory() {
    let installed = scratch("installed");
    std::fs::create_dir_all(&installed).unwrap();
    let binary = installed.join("quaver");
    std::fs::copy(env!("CARGO_BIN_EXE_quaver"), &binary).unwrap();
    // The tracks' bytes are in the binary itself.
    let bytes = std::fs::read(&binary).unwrap();
    for name in ["bass.mp3", "beat.flac", "chords.ogg"] {
        let track = std::fs::read(bundled(name)).unwrap();
        let needle = &track[track.len() / 2..track.len() / 2 + 256];
        assert!(
            bytes
                .windows(needle.len())
                .any(|window| window[0] == needle[0] && window == needle),
            "{name} is not built into the binary"
        );
    }
    let elsewhere = scratch("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    // Its own temporary directory, to see that it cleans up after itself.
    let tmp = scratch("installed-tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let mut command = Command::new(&binary);
    command
        .args(["demo", "--seconds", "1", "--json", "--record", "recording"])
        .current_dir(&elsewhere)
        .env_remove("RUST_LOG")
        .env("TMPDIR", &tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let run = run_command(command);
    assert_eq!(run.code, Some(0), "{run:?}");
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert!(report["packets_received"].as_u64().unwrap() > 0, "{run:?}");
    // The recording went where the user stands; the written-out tracks are gone again.
    assert!(elsewhere.join("recording").is_dir(), "{run:?}");
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    let _ = std::fs::remove_dir_all(installed);
    let _ = std::fs::remove_dir_all(elsewhere);
    let _ = std::fs::remove_dir_all(tmp);
}

/// `play` checks its files before it connects anywhere: a bad one fails at once, in one line
/// naming it, and the server never sees a connection.
#[test]
fn play_refuses_a_bad_file_before_connecting_to_the_server() {
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    server.set_nonblocking(true).unwrap();
    let url = format!("ws://{}", server.local_addr().unwrap());
    let bad = scratch("play-first-bad.flac");
    std::fs::write(&bad, "not a flac file at all\n".repeat(10)).unwrap();
    let good = bundled("beat.flac");
    let run = quaver(&[
        "play",
        "--server",
        &url,
        good.to_str().unwrap(),
        bad.to_str().unwrap(),
    ]);
    assert_one_clean_line(&run, &bad, "not an audio file");
    match server.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("play connected before checking its files: {other:?}"),
    }
}
