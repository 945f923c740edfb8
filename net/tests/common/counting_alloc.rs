//! A counting global allocator for the no-allocation tests: it counts heap operations made on
//! the threads that turned watching on (the real-time thread under test, between its start and
//! exit hooks, or the test thread itself) and forwards everything to the system allocator.
//! Each test binary that includes this module gets it as its global allocator.

#![allow(dead_code)] // each test binary uses its own subset

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);
static FREES: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    // const-initialised and without Drop: reading it never allocates.
    static WATCHED: Cell<bool> = const { Cell::new(false) };
}

fn watched() -> bool {
    WATCHED.try_with(Cell::get).unwrap_or(false)
}

// SAFETY: forwards every request to the system allocator unchanged; only counts on the side.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if watched() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if watched() {
            FREES.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if watched() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Starts counting on the calling thread.
pub fn start_watching() {
    WATCHED.with(|w| w.set(true));
}

/// Stops counting on the calling thread.
pub fn stop_watching() {
    WATCHED.with(|w| w.set(false));
}

/// Allocations (and reallocations) counted so far.
pub fn allocations() -> usize {
    ALLOCS.load(Ordering::Relaxed)
}

/// Frees counted so far.
pub fn frees() -> usize {
    FREES.load(Ordering::Relaxed)
}

/// Sets both counts back to zero.
pub fn reset() {
    ALLOCS.store(0, Ordering::Relaxed);
    FREES.store(0, Ordering::Relaxed);
}
