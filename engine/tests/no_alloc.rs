//! Proves the real-time rule: after start-up the mixer never allocates or frees heap memory,
//! at full source count, with sources added, stopped and finished, and calls added, removed and
//! given new frame queues during the run. The control side (the test thread) allocates freely;
//! only the mixer's side is counted.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use quaver_engine::{
    Engine, EngineConfig, Event, FrameReceiver, OpusWriter, PcmFormat, PcmWriter, SourceHandle,
    SourceOptions,
};

/// Counts allocations and frees made while the current thread is marked as real-time.
struct CountingAllocator;

/// Which test's real-time path the current thread is on (0: none). The tests run in parallel,
/// so each counts into its own slot.
const MANUAL: usize = 1;
const THREADED: usize = 2;
const CALL_CHURN: usize = 3;
const SEEK_AND_QUEUE: usize = 4;

static REALTIME_ALLOCATIONS: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];
static REALTIME_FREES: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];

thread_local! {
    static ON_REALTIME_PATH: Cell<usize> = const { Cell::new(0) };
}

fn realtime_path() -> usize {
    ON_REALTIME_PATH.try_with(Cell::get).unwrap_or(0)
}

// SAFETY: forwards every call unchanged to the system allocator; the counters are atomics.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        REALTIME_ALLOCATIONS[realtime_path()].fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        REALTIME_FREES[realtime_path()].fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        REALTIME_ALLOCATIONS[realtime_path()].fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn mark_mixer_thread() {
    ON_REALTIME_PATH.with(|path| path.set(THREADED));
}

const SOURCES_PER_CALL: usize = 12;
const CALLS: usize = 2;

/// The producers of one call, fed by the test thread.
enum Producer {
    Pcm(SourceHandle, PcmWriter, Vec<f32>),
    Opus(SourceHandle, OpusWriter, Vec<u8>),
}

fn opus_packet() -> Vec<u8> {
    let encoder = audiopus::coder::Encoder::new(
        audiopus::SampleRate::Hz48000,
        audiopus::Channels::Stereo,
        audiopus::Application::Audio,
    )
    .unwrap();
    let tone: Vec<f32> = (0..1920)
        .map(|i| ((i / 2) as f32 * 0.05).sin() * 0.3)
        .collect();
    let mut packet = vec![0; 1275];
    let len = encoder.encode_float(&tone, &mut packet).unwrap();
    packet.truncate(len);
    packet
}

/// Adds a source of a kind picked by `n`: 48 kHz stereo, 44.1 kHz stereo, 22.05 kHz mono, or
/// pre-encoded Opus — so resampling, upmixing and decoding are all exercised.
fn add_source(engine: &Engine, call: quaver_engine::CallId, n: usize, packet: &[u8]) -> Producer {
    let (rate, channels) = match n % 4 {
        0 => (48_000, 2),
        1 => (44_100, 2),
        2 => (22_050, 1),
        _ => {
            let (handle, writer) = engine.push_opus(call, SourceOptions::default()).unwrap();
            return Producer::Opus(handle, writer, packet.to_vec());
        }
    };
    let format = PcmFormat::new(rate, channels).unwrap();
    let (handle, writer) = engine.push_source(call, format).unwrap();
    handle.set_volume(0.3 + (n % 3) as f32 * 0.3);
    let frames = rate as usize / 50 + 1;
    let chunk = (0..frames * usize::from(channels))
        .map(|i| ((i + n) as f32 * 0.01).sin() * 0.5)
        .collect();
    Producer::Pcm(handle, writer, chunk)
}

fn feed(producers: &mut [Producer]) {
    for producer in producers {
        match producer {
            Producer::Pcm(_, writer, chunk) => {
                let _ = writer.write_f32(chunk);
            }
            Producer::Opus(_, writer, packet) => {
                let _ = writer.write_packet(packet);
            }
        }
    }
}

fn drain(frames: &mut [FrameReceiver]) -> usize {
    frames
        .iter_mut()
        .map(|queue| std::iter::from_fn(|| queue.pop()).count())
        .sum()
}

#[test]
fn mixer_ticks_allocate_nothing_while_sources_come_and_go() {
    let config = EngineConfig {
        max_calls: CALLS,
        max_sources_per_call: SOURCES_PER_CALL,
        ..EngineConfig::default()
    };
    let (engine, mut mixer) = Engine::manual(config).unwrap();
    let packet = opus_packet();
    let mut calls = Vec::new();
    let mut queues = Vec::new();
    for _ in 0..CALLS {
        let (call, queue) = engine.create_call().unwrap();
        calls.push((call, Vec::new()));
        queues.push(queue);
    }
    let mut added = 0;
    for (call, producers) in calls.iter_mut() {
        for _ in 0..SOURCES_PER_CALL {
            producers.push(add_source(&engine, *call, added, &packet));
            added += 1;
        }
    }

    let mut frames_out = 0;
    let mut ended = 0;
    for tick in 0..2_000 {
        for (_, producers) in calls.iter_mut() {
            feed(producers);
        }
        ON_REALTIME_PATH.with(|path| path.set(MANUAL));
        mixer.tick();
        ON_REALTIME_PATH.with(|path| path.set(0));
        frames_out += drain(&mut queues);
        engine.housekeep();
        ended += engine
            .events()
            .try_iter()
            .filter(|e| matches!(e, Event::SourceEnded { .. }))
            .count();

        // Churn: every 50 ticks, stop one source and finish another in each call, and add
        // replacements once their slots are free again.
        if tick % 50 == 25 {
            for (_, producers) in calls.iter_mut() {
                if let Some(Producer::Pcm(handle, ..) | Producer::Opus(handle, ..)) =
                    producers.first()
                {
                    handle.stop();
                }
                producers.remove(0);
                let last = producers.len() - 1;
                producers.remove(last); // dropping the writer finishes the source
            }
        }
        if tick % 50 == 40 {
            for (call, producers) in calls.iter_mut() {
                while producers.len() < SOURCES_PER_CALL {
                    producers.push(add_source(&engine, *call, added, &packet));
                    added += 1;
                }
            }
        }
    }

    assert_eq!(
        REALTIME_ALLOCATIONS[MANUAL].load(Ordering::Relaxed),
        0,
        "the mixer allocated"
    );
    assert_eq!(
        REALTIME_FREES[MANUAL].load(Ordering::Relaxed),
        0,
        "the mixer freed memory"
    );
    // The run really did what it claims.
    assert!(
        frames_out >= CALLS * 1_900,
        "only {frames_out} frames came out"
    );
    assert!(ended >= 2 * CALLS * 35, "only {ended} sources ended");
    assert!(added >= CALLS * SOURCES_PER_CALL + 2 * CALLS * 35);
    let stats = engine.stats();
    assert!(stats.frames_encoded > 0);
    assert_eq!(stats.encode_errors, 0);
}

/// One call of the churn test: its id, producers and the queue its frames come out of.
struct LiveCall {
    id: quaver_engine::CallId,
    producers: Vec<Producer>,
    queue: FrameReceiver,
}

#[test]
fn mixer_ticks_allocate_nothing_while_calls_come_and_go() {
    const MAX_CALLS: usize = 4;
    let config = EngineConfig {
        max_calls: MAX_CALLS,
        max_sources_per_call: 4,
        ..EngineConfig::default()
    };
    let (engine, mut mixer) = Engine::manual(config).unwrap();
    let packet = opus_packet();
    let mut live: Vec<LiveCall> = Vec::new();
    let (mut created, mut removed, mut replaced) = (0, 0, 0);
    let (mut removed_events, mut frames_after_replacement) = (0, 0);
    let mut kinds = 0;
    for tick in 0..1_500 {
        // Control side, between ticks: a new call every 20 ticks (when a slot is free), alternately
        // a lone Opus source (passthrough) and a mix of PCM and Opus sources.
        if tick % 20 == 0
            && live.len() < MAX_CALLS
            && let Ok((id, queue)) = engine.create_call()
        {
            let producers = if created % 2 == 0 {
                vec![add_source(&engine, id, 3, &packet)]
            } else {
                (0..4)
                    .map(|n| {
                        kinds += 1;
                        add_source(&engine, id, kinds + n, &packet)
                    })
                    .collect()
            };
            live.push(LiveCall {
                id,
                producers,
                queue,
            });
            created += 1;
        }
        // A voice reconnect: the oldest call's frames move to a new queue.
        if tick % 20 == 7 && !live.is_empty() {
            let call = &mut live[0];
            call.queue = engine.replace_frame_queue(call.id).unwrap();
            replaced += 1;
        }
        // Calls leave while others keep playing.
        if tick % 20 == 13 && live.len() >= 3 {
            let call = live.remove(0);
            engine.remove_call(call.id).unwrap();
            removed += 1;
        }
        // Lone Opus sources leave and rejoin passthrough (the encoder is primed, the next
        // packet decoded ahead) as their volume changes.
        if tick % 10 == 3 {
            let volume = if tick % 20 == 3 { 0.5 } else { 1.0 };
            for call in &live {
                if let [Producer::Opus(handle, ..)] = &call.producers[..] {
                    handle.set_volume(volume);
                }
            }
        }
        for call in live.iter_mut() {
            feed(&mut call.producers);
        }

        ON_REALTIME_PATH.with(|path| path.set(CALL_CHURN));
        mixer.tick();
        ON_REALTIME_PATH.with(|path| path.set(0));

        for call in live.iter_mut() {
            let got = std::iter::from_fn(|| call.queue.pop()).count();
            if tick % 20 > 7 {
                frames_after_replacement += got;
            }
        }
        engine.housekeep();
        removed_events += engine
            .events()
            .try_iter()
            .filter(|e| matches!(e, Event::CallRemoved { .. }))
            .count();
    }

    assert_eq!(
        REALTIME_ALLOCATIONS[CALL_CHURN].load(Ordering::Relaxed),
        0,
        "the mixer allocated"
    );
    assert_eq!(
        REALTIME_FREES[CALL_CHURN].load(Ordering::Relaxed),
        0,
        "the mixer freed memory"
    );
    // The run really did what it claims.
    assert!(created >= 40, "only {created} calls were created");
    assert!(removed >= 35, "only {removed} calls were removed");
    assert!(replaced >= 70, "only {replaced} frame queues were replaced");
    assert_eq!(removed_events, removed, "every removal reached the mixer");
    assert!(
        frames_after_replacement > replaced * 5,
        "replaced queues got only {frames_after_replacement} frames"
    );
    let stats = engine.stats();
    assert!(stats.frames_encoded > 0 && stats.frames_passed_through > 0);
    assert_eq!(stats.encode_errors, 0);
}

#[test]
fn the_mixer_thread_allocates_nothing_either() {
    let config = EngineConfig {
        max_calls: 2,
        max_sources_per_call: 4,
        on_mixer_thread_start: Some(mark_mixer_thread),
        ..EngineConfig::default()
    };
    let engine = Engine::new(config).unwrap();
    let packet = opus_packet();
    let (call, mut queue) = engine.create_call().unwrap();
    let mut producers: Vec<Producer> = (0..4)
        .map(|n| add_source(&engine, call, n, &packet))
        .collect();
    let mut received = 0;
    let mut second: Option<(quaver_engine::CallId, FrameReceiver, Vec<Producer>)> = None;
    let mut second_frames = 0;
    for round in 0..60 {
        // A second call comes and goes, and the first call's queue is replaced, while the
        // mixer thread runs.
        match round {
            10 | 40 => {
                let (id, queue) = engine.create_call().unwrap();
                let producers = vec![add_source(&engine, id, 0, &packet)];
                second = Some((id, queue, producers));
            }
            25 | 55 => {
                let (id, ..) = second.take().unwrap();
                engine.remove_call(id).unwrap();
            }
            30 => queue = engine.replace_frame_queue(call).unwrap(),
            _ => {}
        }
        if let Some((_, queue, producers)) = second.as_mut() {
            feed(producers);
            second_frames += std::iter::from_fn(|| queue.pop()).count();
        }
        feed(&mut producers);
        std::thread::sleep(Duration::from_millis(10));
        received += std::iter::from_fn(|| queue.pop()).count();
        if round % 15 == 14 {
            match producers.remove(0) {
                Producer::Pcm(handle, ..) | Producer::Opus(handle, ..) => handle.stop(),
            }
            // The stopped source's slot is free once the worker has collected it.
            let replacement = (0..100).find_map(|_| {
                std::thread::sleep(Duration::from_millis(10));
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    add_source(&engine, call, round, &packet)
                }))
                .ok()
            });
            producers.push(replacement.expect("the stopped source's slot was never freed"));
        }
    }
    drop(producers);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        REALTIME_ALLOCATIONS[THREADED].load(Ordering::Relaxed),
        0,
        "the mixer thread allocated"
    );
    assert_eq!(
        REALTIME_FREES[THREADED].load(Ordering::Relaxed),
        0,
        "the mixer thread freed memory"
    );
    assert!(received > 0, "the mixer thread produced no frames");
    assert!(
        second_frames > 0,
        "the calls added mid-run produced no frames"
    );
    assert!(engine.stats().ticks > 0);
}

/// Seeks (stale audio dropped, resampler and Opus decoder reset) and queue hand-overs (gapless
/// and crossfaded) on the mixer side allocate and free nothing either.
#[test]
fn seeks_and_queue_hand_overs_allocate_nothing_on_the_mixer() {
    use quaver_engine::{FileOptions, Track};
    let dir = support::temp_dir("no-alloc-seek-queue");
    let resampled = dir.join("resampled.wav");
    let plain = dir.join("plain.wav");
    let opus = dir.join("tone.opus");
    support::write_wav(
        &resampled,
        44_100,
        2,
        &support::tones(44_100, 2, &[(300.0, 0.6)]),
    );
    support::write_wav(
        &plain,
        48_000,
        2,
        &support::tones(48_000, 2, &[(500.0, 0.6)]),
    );
    std::fs::write(
        &opus,
        support::ogg_opus_bytes(&support::tones(48_000, 2, &[(700.0, 0.6)])),
    )
    .unwrap();
    let (engine, mut mixer) = support::manual();
    let (call, mut frames) = engine.create_call().unwrap();
    let looping = FileOptions {
        looping: true,
        ..FileOptions::default()
    };
    let seeked = [
        engine.play_file(call, &resampled, looping).unwrap(),
        engine.play_file(call, &opus, looping).unwrap(),
    ];
    engine
        .set_crossfade(call, Duration::from_millis(100))
        .unwrap();
    for round in 0..4 {
        for path in [&resampled, &opus, &plain] {
            engine.enqueue(call, Track::file(path)).unwrap();
        }
        if round == 2 {
            engine.set_crossfade(call, Duration::ZERO).unwrap();
        }
    }
    let mut started = 0;
    let mut seeks = 0;
    for tick in 0..600 {
        if tick % 15 == 7 {
            for handle in &seeked {
                handle
                    .seek(Duration::from_millis((tick % 6) as u64 * 100))
                    .unwrap();
                seeks += 1;
            }
        }
        // The queue's next track is opened by a loader thread: let it catch up (control side).
        for _ in 0..1_000 {
            let queue = engine.queue(call);
            let playing = queue
                .first()
                .and_then(|e| e.source.as_ref())
                .is_some_and(|h| h.stats().frames_mixed > 0);
            if !(playing && queue.get(1).is_some_and(|e| e.source.is_none())) {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
            engine.housekeep();
        }
        ON_REALTIME_PATH.with(|path| path.set(SEEK_AND_QUEUE));
        mixer.tick();
        ON_REALTIME_PATH.with(|path| path.set(0));
        while frames.discard() {}
        engine.housekeep();
        started += engine
            .events()
            .try_iter()
            .filter(|e| matches!(e, Event::TrackStarted { .. }))
            .count();
    }
    assert_eq!(
        REALTIME_ALLOCATIONS[SEEK_AND_QUEUE].load(Ordering::Relaxed),
        0,
        "the mixer allocated"
    );
    assert_eq!(
        REALTIME_FREES[SEEK_AND_QUEUE].load(Ordering::Relaxed),
        0,
        "the mixer freed memory"
    );
    // The run really did what it claims: every queued track played, the seeks landed.
    assert_eq!(started, 12);
    assert!(seeks >= 70);
    assert!(seeked.iter().all(|h| !h.is_ended()));
    std::fs::remove_dir_all(&dir).ok();
}
