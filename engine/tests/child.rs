//! Child-process inputs with a real ffmpeg (installed by `.ci/setup`): its output plays in
//! every format, its failures carry its standard error, and it is killed and reaped (never
//! left a zombie) whenever the source ends.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use quaver_engine::{
    CommandOptions, EndReason, Error, Event, InputError, InputFormat, PcmFormat, SampleEncoding,
};
use support::{Output, dominant, ended, manual, run, run_until};

fn ffmpeg_tone(frequency: u32, seconds: Option<u32>, output: &[&str]) -> Command {
    let source = match seconds {
        Some(seconds) => format!("sine=frequency={frequency}:sample_rate=48000:duration={seconds}"),
        None => format!("sine=frequency={frequency}:sample_rate=48000"),
    };
    let mut command = Command::new("ffmpeg");
    command.args([
        "-nostdin",
        "-hide_banner",
        "-loglevel",
        "error",
        "-f",
        "lavfi",
        "-i",
    ]);
    command.arg(source).args(["-ac", "2"]).args(output).arg("-");
    command
}

fn raw_s16() -> InputFormat {
    InputFormat::Raw {
        format: PcmFormat::STEREO_48K,
        encoding: SampleEncoding::S16Le,
    }
}

/// Whether the process is gone for good: exited *and* reaped (a zombie still has its entry).
fn is_reaped(pid: u32) -> bool {
    !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn an_ffmpeg_tone_plays_in_each_format_and_the_child_is_reaped_at_its_end() {
    let formats = [
        ("raw s16le", vec!["-f", "s16le", "-ar", "48000"], raw_s16()),
        (
            "wav",
            vec!["-f", "wav"],
            InputFormat::Probe {
                extension: Some("wav".into()),
            },
        ),
        (
            "ogg opus",
            vec!["-c:a", "libopus", "-frame_duration", "20", "-f", "ogg"],
            InputFormat::OggOpus,
        ),
    ];
    for (name, output, format) in formats {
        let (engine, mut mixer) = manual();
        let (call, mut frames) = engine.create_call().unwrap();
        let handle = engine
            .play_command(
                call,
                &mut ffmpeg_tone(1_000, Some(1), &output),
                CommandOptions::new(format),
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let pid = handle.process_id().expect("a child");
        assert!(!handle.is_seekable());
        let mut out = Output::default();
        run_until(&engine, &mut mixer, &mut frames, &mut out, |out| {
            ended(out, handle.id()).is_some()
        });
        assert_eq!(
            ended(&out, handle.id()),
            Some(EndReason::Finished),
            "{name}"
        );
        let audio: Vec<_> = out.frames.iter().flatten().collect();
        // One second of tone, give or take the codec's edges.
        assert!(
            (45..=56).contains(&audio.len()),
            "{name}: {} frames",
            audio.len()
        );
        assert_eq!(dominant(audio[25], 1_000.0, 440.0), Some(1_000.0), "{name}");
        let give_up = Instant::now() + Duration::from_secs(5);
        while !is_reaped(pid) {
            assert!(Instant::now() < give_up, "{name}: child {pid} not reaped");
            engine.housekeep();
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

#[test]
fn stopping_or_removing_the_call_kills_and_reaps_an_endless_child() {
    for remove_call in [false, true] {
        let (engine, mut mixer) = manual();
        let (call, mut frames) = engine.create_call().unwrap();
        // An endless tone: ffmpeg blocks on the pipe once the read-ahead is full.
        let handle = engine
            .play_command(
                call,
                &mut ffmpeg_tone(440, None, &["-f", "s16le", "-ar", "48000"]),
                CommandOptions::new(raw_s16()),
            )
            .unwrap();
        let pid = handle.process_id().unwrap();
        let mut out = Output::default();
        run_until(&engine, &mut mixer, &mut frames, &mut out, |_| {
            handle.stats().frames_mixed >= 20
        });
        // Pause and volume act on it as on any source.
        handle.pause();
        run(&engine, &mut mixer, 3, &mut frames, &mut out);
        let paused_at = out.frames.len();
        run(&engine, &mut mixer, 5, &mut frames, &mut out);
        assert!(
            out.frames[paused_at..].iter().all(Option::is_none),
            "paused"
        );
        handle.resume();
        handle.set_volume(0.5);
        run(&engine, &mut mixer, 5, &mut frames, &mut out);
        assert!(out.frames.last().unwrap().is_some(), "resumed");
        assert!(!is_reaped(pid));

        if remove_call {
            engine.remove_call(call).unwrap();
        } else {
            handle.stop();
        }
        run_until(&engine, &mut mixer, &mut frames, &mut out, |out| {
            ended(out, handle.id()).is_some()
        });
        let expected = if remove_call {
            EndReason::CallRemoved
        } else {
            EndReason::Stopped
        };
        assert_eq!(ended(&out, handle.id()), Some(expected));
        let give_up = Instant::now() + Duration::from_secs(5);
        while !is_reaped(pid) {
            assert!(
                Instant::now() < give_up,
                "child {pid} left running or a zombie"
            );
            engine.housekeep();
            std::thread::sleep(Duration::from_millis(5));
        }
        // A stopped child is not a failure.
        assert!(
            !out.events
                .iter()
                .any(|e| matches!(e, Event::SourceError { .. }))
        );
    }
}

#[test]
fn a_failing_command_is_an_error_with_its_standard_error() {
    let (engine, mut mixer) = manual();
    let (call, mut frames) = engine.create_call().unwrap();
    // Fails at once: the error comes back from play_command.
    let mut missing = Command::new("ffmpeg");
    missing.args([
        "-nostdin",
        "-hide_banner",
        "-i",
        "/nonexistent/quaver-input.mp3",
        "-f",
        "s16le",
        "-",
    ]);
    let error = engine
        .play_command(call, &mut missing, CommandOptions::new(raw_s16()))
        .unwrap_err();
    match &error {
        Error::Input {
            error: InputError::ChildFailed { status, stderr },
            ..
        } => {
            assert_eq!(*status, Some(1));
            assert!(stderr.contains("/nonexistent/quaver-input.mp3"), "{stderr}");
        }
        other => panic!("{other:?}"),
    }
    assert!(error.to_string().contains("command ffmpeg"), "{error}");

    // Fails after some audio: an event carries the status and the standard error.
    let mut late = Command::new("sh");
    late.args([
        "-c",
        "head -c 38400 /dev/zero; echo 'stream went away' >&2; exit 3",
    ]);
    let handle = engine
        .play_command(call, &mut late, CommandOptions::new(raw_s16()))
        .unwrap();
    let mut out = Output::default();
    run_until(&engine, &mut mixer, &mut frames, &mut out, |out| {
        ended(out, handle.id()).is_some()
    });
    assert_eq!(ended(&out, handle.id()), Some(EndReason::Failed));
    let reported = out.events.iter().find_map(|event| match event {
        Event::SourceError { source, error, .. } if *source == handle.id() => Some(error.clone()),
        _ => None,
    });
    match reported.as_deref() {
        Some(Error::Input {
            error: InputError::ChildFailed { status, stderr },
            ..
        }) => {
            assert_eq!(*status, Some(3));
            assert_eq!(stderr, "stream went away");
        }
        other => panic!("{other:?}"),
    }

    let error = engine
        .play_command(
            call,
            &mut Command::new("/nonexistent/quaver-no-such-program"),
            CommandOptions::new(raw_s16()),
        )
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::Input {
                error: InputError::Spawn(_),
                ..
            }
        ),
        "{error:?}"
    );
}
