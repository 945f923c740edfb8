//! Memory per call: what the Rust side of the engine allocates for a passthrough call (a call
//! and one pre-encoded Opus source), counted by a global allocator. Deterministic: the sizes
//! follow from the configuration, not from timing or the process's RSS. libopus's own C
//! allocations (the call's encoder, the source's decoder) go around this allocator and are not
//! counted.
//!
//! The per-tick mixing buffers (the mix, a source's rendered frame, the decoded tail of a source
//! leaving passthrough, the frame being built) live once per mixer thread; a change that put
//! one of them back into every call or every Opus source would cost each call 7.5 KB or more
//! and fails here.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use quaver_engine::{Engine, EngineConfig, SourceOptions};

/// Counts the bytes allocated and freed on threads that are marked as measured.
struct CountingAllocator;

static ALLOCATED: AtomicU64 = AtomicU64::new(0);
static FREED: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static MEASURED: Cell<bool> = const { Cell::new(false) };
}

fn measured() -> bool {
    MEASURED.try_with(Cell::get).unwrap_or(false)
}

// SAFETY: forwards every call unchanged to the system allocator; the counters are atomics.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if measured() {
            ALLOCATED.fetch_add(layout.size() as u64, Ordering::Relaxed);
        }
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if measured() {
            FREED.fetch_add(layout.size() as u64, Ordering::Relaxed);
        }
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if measured() {
            ALLOCATED.fetch_add(new_size as u64, Ordering::Relaxed);
            FREED.fetch_add(layout.size() as u64, Ordering::Relaxed);
        }
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Bytes still allocated after `f` ran on this thread.
fn live_bytes_of(f: impl FnOnce()) -> u64 {
    let allocated = ALLOCATED.load(Ordering::Relaxed);
    let freed = FREED.load(Ordering::Relaxed);
    MEASURED.with(|m| m.set(true));
    f();
    MEASURED.with(|m| m.set(false));
    let allocated = ALLOCATED.load(Ordering::Relaxed) - allocated;
    let freed = FREED.load(Ordering::Relaxed) - freed;
    allocated.saturating_sub(freed)
}

/// What a passthrough call needs on the Rust side with the default settings: its frame queue
/// (5 frames averaging up to 640 bytes), the source's packet ring (200 ms: 10 packets
/// averaging up to 640 bytes, which also keeps the two packets that resynchronise a decoder),
/// and small state. About 12.7 KB. It was 67 KB while every call and every Opus source carried
/// its own per-tick buffers, 35 KB while every Opus source carried the frame a mixed source
/// decodes ahead (now beside its decoder, which a passed-through source does not hold), 27 KB
/// while the packet ring had a 1,275-byte slot per packet, 21 KB with an 8-frame queue, 17.4 KB
/// while the frame queue had a 1,288-byte slot per frame, and 15.2 KB while every Opus source
/// kept a copy of its last two packets.
const PASSTHROUGH_CALL_BUDGET: u64 = 14 * 1024;

#[test]
fn a_passthrough_call_allocates_no_per_tick_mixing_buffers() {
    let config = EngineConfig {
        max_calls: 64,
        ..EngineConfig::default()
    };
    assert_eq!(
        config.frame_queue, 5,
        "the budget assumes the default frame queue"
    );
    let (engine, mut mixer) = Engine::manual(config).unwrap(); // invariant: valid config
    // A first call and tick, so the engine's own tables have grown past their first insert.
    let (first, _frames) = engine.create_call().unwrap(); // invariant: below max_calls
    let (_first_source, _first_writer) = engine.push_opus(first, SourceOptions::default()).unwrap(); // invariant: the call exists
    mixer.tick();

    const CALLS: u64 = 16;
    let mut kept = Vec::new();
    let bytes = live_bytes_of(|| {
        for _ in 0..CALLS {
            let (call, frames) = engine.create_call().unwrap(); // invariant: below max_calls
            let (source, writer) = engine.push_opus(call, SourceOptions::default()).unwrap(); // invariant: the call exists
            kept.push((frames, source, writer));
        }
    });
    // The slots reach the mixer, which takes them in without allocating.
    mixer.tick();
    let per_call = bytes / CALLS;
    eprintln!("a passthrough call allocates {per_call} bytes on the Rust side");
    assert!(
        per_call <= PASSTHROUGH_CALL_BUDGET,
        "a passthrough call allocates {per_call} bytes, over the budget of {PASSTHROUGH_CALL_BUDGET}"
    );
    // And the budget is not vacuous: the rings alone are most of it.
    assert!(
        per_call >= 9 * 1024,
        "a passthrough call allocates only {per_call} bytes: is the call still created?"
    );
    drop(kept);
}

/// A few 20 ms Opus packets of a tone, encoded by the test (not by the engine).
fn tone_packets(count: usize) -> Vec<Vec<u8>> {
    let encoder = audiopus::coder::Encoder::new(
        audiopus::SampleRate::Hz48000,
        audiopus::Channels::Stereo,
        audiopus::Application::Audio,
    )
    .unwrap(); // invariant: valid constant settings
    (0..count)
        .map(|n| {
            let frame: Vec<f32> = (0..960)
                .flat_map(|i| {
                    let t = (n * 960 + i) as f32 / 48_000.0;
                    let v = (t * 440.0 * std::f32::consts::TAU).sin() * 0.3;
                    [v, v]
                })
                .collect();
            let mut packet = vec![0; 1_275];
            let len = encoder.encode_float(&frame, &mut packet).unwrap(); // invariant: valid frame
            packet.truncate(len);
            packet
        })
        .collect()
}

/// libopus allocates around the Rust allocator, so its state is counted by the engine itself:
/// a passthrough call must create no encoder (~48 KB) and its source no decoder (~27 KB); they
/// exist only while the call mixes, taken from the mixer's spares and handed back after.
#[test]
fn a_passthrough_call_holds_no_opus_encoder_or_decoder() {
    let config = EngineConfig {
        max_calls: 64,
        ..EngineConfig::default()
    };
    let spares = config.spare_codecs as u64;
    let (engine, mut mixer) = Engine::manual(config).unwrap(); // invariant: valid config
    let before = engine.stats();
    assert_eq!(
        (before.opus_encoders, before.opus_decoders),
        (spares, spares),
        "only the mixer's spares exist before any call"
    );

    const CALLS: usize = 16;
    const TICKS: usize = 20;
    let packets = tone_packets(TICKS * 2);
    let mut calls = Vec::new();
    for _ in 0..CALLS {
        let (call, frames) = engine.create_call().unwrap(); // invariant: below max_calls
        let (source, writer) = engine.push_opus(call, SourceOptions::default()).unwrap(); // invariant: the call exists
        calls.push((call, frames, source, writer));
    }
    // One packet in per call and tick; returns how many calls sent an audio frame in the
    // previous tick.
    let mut tick = |calls: &mut Vec<_>| {
        let mut sent = 0;
        for (_, frames, _, writer) in calls.iter_mut() {
            let writer: &mut quaver_engine::OpusWriter = writer;
            let frames: &mut quaver_engine::FrameReceiver = frames;
            let _ = writer.write_packet(&packets[0]);
            while let Some(frame) = frames.pop() {
                sent += usize::from(frame.kind == quaver_engine::frame::FrameKind::Audio);
            }
        }
        engine.housekeep();
        mixer.tick();
        sent
    };
    for _ in 0..TICKS {
        tick(&mut calls);
    }
    let passing = engine.stats();
    assert!(
        passing.frames_passed_through >= (CALLS * (TICKS - 2)) as u64,
        "the calls pass through: {passing:?}"
    );
    assert_eq!(passing.frames_encoded, 0);
    assert_eq!(
        (passing.opus_encoders, passing.opus_decoders),
        (spares, spares),
        "a passthrough call created an Opus encoder or decoder"
    );
    assert_eq!(
        (passing.opus_encoders_in_use, passing.opus_decoders_in_use),
        (0, 0)
    );

    // One call's volume ramps: it takes a spare encoder and decoder (no allocation on the
    // mixer; the spares are refilled by the housekeeping), mixes, and hands them back once it
    // passes through again.
    calls[0].2.set_volume(0.5);
    tick(&mut calls);
    let mixing = engine.stats();
    assert_eq!(
        (mixing.opus_encoders_in_use, mixing.opus_decoders_in_use),
        (1, 1)
    );
    assert!(mixing.frames_encoded >= 1);
    assert_eq!(mixing.codec_shortages, 0);
    calls[0].2.set_volume(1.0);
    for _ in 0..6 {
        tick(&mut calls);
    }
    let back = engine.stats();
    assert_eq!(
        (back.opus_encoders_in_use, back.opus_decoders_in_use),
        (0, 0),
        "the call passes through again and gave its codecs back: {back:?}"
    );
    assert!(back.frames_passed_through > mixing.frames_passed_through + CALLS as u64);
    assert!(
        back.opus_encoders <= 2 * spares && back.opus_decoders <= 2 * spares,
        "handed-back codecs are kept as spares or freed, not piled up: {back:?}"
    );

    // More calls leave passthrough in one tick than there are spares: the ones left over
    // keep passing through (counted) and follow once the spares are refilled.
    for (_, _, source, _) in &calls {
        source.set_volume(0.5);
    }
    tick(&mut calls);
    let short = engine.stats();
    assert!(short.codec_shortages > 0, "{short:?}");
    assert!(short.opus_encoders_in_use <= 2 * spares);
    for _ in 0..CALLS {
        // Waiting or not, every call keeps sending a frame every tick.
        assert_eq!(tick(&mut calls), CALLS);
    }
    let all = engine.stats();
    assert_eq!(
        (all.opus_encoders_in_use, all.opus_decoders_in_use),
        (CALLS as u64, CALLS as u64),
        "every call mixes once spares were refilled: {all:?}"
    );
    drop(calls);
}
