//! The per-call track queue: tracks follow each other with no silent frame between them (or
//! crossfade), skip/clear/list work, and the track events arrive.

mod support;

use std::time::{Duration, Instant};

use quaver_engine::{EndReason, Engine, Event, FrameReceiver, InputName, Mixer, Track};
use support::{Output, dominant, manual, run, temp_dir, tones, write_wav};

/// Ticks one frame at a time, first waiting (bounded) until the queue's next track is opened
/// (loader threads open it in the background), so the test never depends on their speed.
fn tick_queue(
    engine: &Engine,
    mixer: &mut Mixer,
    call: quaver_engine::CallId,
    ticks: usize,
    frames: &mut FrameReceiver,
    out: &mut Output,
) {
    for _ in 0..ticks {
        let give_up = Instant::now() + Duration::from_secs(10);
        let waiting = || {
            let queue = engine.queue(call);
            let playing = queue
                .first()
                .and_then(|e| e.source.as_ref())
                .is_some_and(|h| h.stats().frames_mixed > 0);
            playing && queue.get(1).is_some_and(|e| e.source.is_none())
        };
        while waiting() {
            assert!(Instant::now() < give_up, "next track never opened");
            engine.housekeep();
            std::thread::sleep(Duration::from_millis(1));
        }
        run(engine, mixer, 1, frames, out);
    }
}

fn track_events(out: &Output) -> Vec<String> {
    out.events
        .iter()
        .filter_map(|event| match event {
            Event::TrackStarted { source, .. } => Some(format!("start {source}")),
            Event::TrackEnded { source, reason, .. } => Some(format!("end {source} {reason:?}")),
            _ => None,
        })
        .collect()
}

#[test]
fn queued_tracks_play_back_to_back_with_no_silent_frame() {
    let dir = temp_dir("queue-gapless");
    let parts = [(300.0, 48_000), (600.0, 44_100), (900.0, 48_000)];
    let (engine, mut mixer) = manual();
    let (call, mut frames) = engine.create_call().unwrap();
    for (freq, rate) in parts {
        let path = dir.join(format!("{freq}.wav"));
        write_wav(&path, rate, 2, &tones(rate, 2, &[(freq, 1.0)]));
        engine.enqueue(call, Track::file(&path)).unwrap();
    }
    let listed = engine.queue(call);
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[2].input, InputName::File(dir.join("900.wav")));

    let mut out = Output::default();
    tick_queue(&engine, &mut mixer, call, 160, &mut frames, &mut out);
    // From the first audio frame to the last: every one has sound.
    let first = out.frames.iter().position(Option::is_some).unwrap();
    let last = out.frames.iter().rposition(Option::is_some).unwrap();
    let audio = &out.frames[first..=last];
    for (index, frame) in audio.iter().enumerate() {
        let level = frame.as_deref().map_or(0.0, quaver_engine::analysis::rms);
        assert!(
            level > 0.1,
            "frame {index} between tracks is silent ({level})"
        );
    }
    // Three seconds (a partial last frame of the 44.1 kHz track may add one).
    assert!((150..=152).contains(&audio.len()), "{} frames", audio.len());
    for (at, freq) in [(25, 300.0), (75, 600.0), (125, 900.0)] {
        let frame = audio[at].as_deref().unwrap();
        let other = if freq == 600.0 { 300.0 } else { 600.0 };
        assert_eq!(dominant(frame, freq, other), Some(freq), "frame {at}");
    }
    let events = track_events(&out);
    assert_eq!(events.len(), 6, "{events:?}");
    assert!(events[0].starts_with("start"));
    // Each end is followed at once by the next start (the same tick).
    assert!(
        events[1].ends_with("Finished") && events[2].starts_with("start"),
        "{events:?}"
    );
    assert!(
        events[3].ends_with("Finished") && events[4].starts_with("start"),
        "{events:?}"
    );
    let positions: Vec<Duration> = out
        .events
        .iter()
        .filter_map(|e| match e {
            Event::TrackPosition { position, .. } => Some(*position),
            _ => None,
        })
        .collect();
    assert!(positions.len() >= 3, "{positions:?}");
    assert!(engine.queue(call).is_empty());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn skip_clear_and_list() {
    let dir = temp_dir("queue-skip");
    let (engine, mut mixer) = manual();
    let (call, mut frames) = engine.create_call().unwrap();
    for freq in [300, 600, 900, 1_200] {
        let path = dir.join(format!("{freq}.wav"));
        write_wav(
            &path,
            48_000,
            2,
            &tones(48_000, 2, &[(f64::from(freq), 2.0)]),
        );
        engine.enqueue(call, Track::file(&path)).unwrap();
    }
    let mut out = Output::default();
    tick_queue(&engine, &mut mixer, call, 10, &mut frames, &mut out);
    let playing = engine.queue(call)[0].source.clone().unwrap();
    assert!(engine.skip(call).unwrap());
    tick_queue(&engine, &mut mixer, call, 10, &mut frames, &mut out);
    assert!(out.events.contains(&Event::TrackEnded {
        call,
        source: playing.id(),
        reason: EndReason::Stopped
    }));
    let frame = out.frames.last().unwrap().as_deref().unwrap();
    assert_eq!(dominant(frame, 600.0, 300.0), Some(600.0));
    // Two after the playing one; clear drops them and the playing track plays on.
    assert_eq!(engine.queue(call).len(), 3);
    engine.clear_queue(call).unwrap();
    let left = engine.queue(call);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].input, InputName::File(dir.join("600.wav")));
    run(&engine, &mut mixer, 120, &mut frames, &mut out);
    let events = track_events(&out);
    assert_eq!(events.len(), 4, "nothing starts after a clear: {events:?}");
    assert!(engine.queue(call).is_empty());
    assert!(!engine.skip(call).unwrap());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_crossfade_overlaps_the_tracks() {
    let dir = temp_dir("queue-crossfade");
    let (engine, mut mixer) = manual();
    let (call, mut frames) = engine.create_call().unwrap();
    engine
        .set_crossfade(call, Duration::from_millis(500))
        .unwrap();
    for freq in [300, 900] {
        let path = dir.join(format!("{freq}.wav"));
        write_wav(
            &path,
            48_000,
            2,
            &tones(48_000, 2, &[(f64::from(freq), 2.0)]),
        );
        engine.enqueue(call, Track::file(&path)).unwrap();
    }
    let mut out = Output::default();
    tick_queue(&engine, &mut mixer, call, 200, &mut frames, &mut out);
    let audio: Vec<&[f32]> = out.frames.iter().flatten().map(Vec::as_slice).collect();
    // 2 s + 2 s − 0.5 s of overlap.
    assert!((174..=177).contains(&audio.len()), "{} frames", audio.len());
    let power = |frame: &[f32], freq| quaver_engine::analysis::tone_power(frame, freq, 48_000);
    // In the middle of the overlap both tracks are heard, neither at full level.
    let middle = audio[100 - 12];
    assert!(power(middle, 300.0) > 0.005 && power(middle, 900.0) > 0.005);
    assert_eq!(dominant(audio[70], 300.0, 900.0), Some(300.0));
    assert_eq!(dominant(audio[110], 300.0, 900.0), Some(900.0));
    std::fs::remove_dir_all(&dir).ok();
}
