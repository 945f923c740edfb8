//! `FrameEncryptor` and `FrameDecryptor` allocate nothing per frame: a counting global allocator
//! watches this thread while frames are encrypted (across a new key, a same-key re-install and a
//! generation change) and decrypted (in order, late, replayed, forged, across epochs).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use quaver_net::dave::{FrameDecryptor, FrameEncryptor, MAX_OVERHEAD, SenderKey};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static WATCHED: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: forwards every request to the system allocator unchanged; only counts on the side.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if WATCHED.try_with(Cell::get).unwrap_or(false) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if WATCHED.try_with(Cell::get).unwrap_or(false) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if WATCHED.try_with(Cell::get).unwrap_or(false) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Heap operations on this thread while `f` runs.
fn heap_ops(f: impl FnOnce()) -> usize {
    ALLOCS.store(0, Ordering::Relaxed);
    WATCHED.with(|w| w.set(true));
    f();
    WATCHED.with(|w| w.set(false));
    ALLOCS.load(Ordering::Relaxed)
}

#[test]
fn frames_are_encrypted_and_decrypted_without_the_heap() {
    let key1 = SenderKey::new(1, [1; 16]);
    let key2 = SenderKey::new(2, [2; 16]);
    let now = Instant::now();
    let mut encryptor = FrameEncryptor::new(key1.clone());
    let mut decryptor = FrameDecryptor::new();
    decryptor.install_key(key1.clone(), now);
    decryptor.install_key(key2.clone(), now);
    let opus = [0x33u8; 400];
    // Frames kept for the receive side: fixed arrays, made before watching.
    let mut frames = vec![[0u8; 400 + MAX_OVERHEAD]; 64];
    let mut lens = vec![0usize; 64];
    let mut out = [0u8; 512];

    let ops = heap_ops(|| {
        for i in 0..32 {
            lens[i] = encryptor.encrypt_into(&opus, &mut frames[i]).expect("room");
        }
        // The same key again, then a new epoch's: both on this thread, still no heap.
        assert!(!encryptor.set_key(key1.clone()));
        assert!(encryptor.set_key(key2.clone()));
        for i in 32..64 {
            lens[i] = encryptor.encrypt_into(&opus, &mut frames[i]).expect("room");
        }
        encryptor.skip_to_nonce_for_tests(0x00FF_FFFF, 0);
        let mut scratch = [0u8; 400 + MAX_OVERHEAD];
        encryptor
            .encrypt_into(&opus, &mut scratch)
            .expect("first frame of generation 1");
        assert_eq!(encryptor.generation(), 1);
    });
    assert_eq!(ops, 0, "encrypting touched the heap");

    let ops = heap_ops(|| {
        // Epoch 2 in order but with a gap, then the late ones, a replay and a forgery; then
        // epoch 1's frames (tried against epoch 2 first).
        for i in (32..64).step_by(2).chain((33..64).step_by(2)) {
            let n = decryptor
                .decrypt_into(&frames[i][..lens[i]], &mut out, now)
                .expect("opens");
            assert_eq!(out[..n], opus);
        }
        assert!(
            decryptor
                .decrypt_into(&frames[40][..lens[40]], &mut out, now)
                .is_err()
        );
        frames[41][0] ^= 1;
        assert!(
            decryptor
                .decrypt_into(&frames[41][..lens[41]], &mut out, now)
                .is_err()
        );
        for i in 0..32 {
            decryptor
                .decrypt_into(
                    &frames[i][..lens[i]],
                    &mut out,
                    now + Duration::from_secs(1),
                )
                .expect("epoch 1 within the overlap");
        }
        assert!(
            decryptor
                .decrypt_into(b"not a dave frame at all", &mut out, now)
                .is_err()
        );
    });
    assert_eq!(ops, 0, "decrypting touched the heap");
}
