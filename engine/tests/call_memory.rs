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
/// (8 frames of up to 1,275 bytes), the source's packet ring (200 ms: 10 packets), the two
/// packets kept to resynchronise the decoder, the one frame decoded ahead, and small state.
/// About 35 KB; it was 67 KB while every call and every Opus source carried its own per-tick
/// buffers.
const PASSTHROUGH_CALL_BUDGET: u64 = 40 * 1024;

#[test]
fn a_passthrough_call_allocates_no_per_tick_mixing_buffers() {
    let config = EngineConfig {
        max_calls: 64,
        ..EngineConfig::default()
    };
    assert_eq!(
        config.frame_queue, 8,
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
        per_call >= 20 * 1024,
        "a passthrough call allocates only {per_call} bytes: is the call still created?"
    );
    drop(kept);
}
