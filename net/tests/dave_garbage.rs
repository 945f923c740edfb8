//! DAVE frame parsing and opening on garbage (seeded, deterministic): `parse_frame` and
//! `FrameDecryptor::decrypt_into` return errors and never panic, and a real frame with any byte
//! changed never opens. `fuzz/fuzz_targets/dave_frame.rs` does the same under libFuzzer.

use std::time::Instant;

use quaver_net::dave::{
    FrameDecryptor, FrameEncryptor, MARKER, MAX_OVERHEAD, Passthrough, SenderKey, parse_frame,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[test]
fn random_and_dave_shaped_bytes_never_panic() {
    let mut rng = StdRng::seed_from_u64(0xDA7E);
    let now = Instant::now();
    let mut decryptor = FrameDecryptor::new();
    decryptor.install_key(SenderKey::new(1, [9; 16]), now);
    let mut out = [0u8; 512];
    for i in 0..50_000 {
        let len = rng.random_range(0..300);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        // Most inputs end like a DAVE frame, so the deeper checks run.
        if i % 4 != 0 && len >= 3 {
            bytes[len - 2..].copy_from_slice(&MARKER);
            bytes[len - 3] = rng.random_range(0..(len as u32 + 4).min(256)) as u8;
        }
        if let Ok(p) = parse_frame(&bytes) {
            assert!(p.body.len() + 11 <= bytes.len());
            assert_eq!(&bytes[..p.body.len()], p.body);
        }
        decryptor.set_passthrough(if i % 3 == 0 {
            Passthrough::On
        } else {
            Passthrough::Off
        });
        // Random bytes only come through as the silence frame or as passthrough.
        if let Ok(n) = decryptor.decrypt_into(&bytes, &mut out, now) {
            assert!(
                i % 3 == 0 || bytes == [0xF8, 0xFF, 0xFE],
                "input {i} opened"
            );
            assert_eq!(&out[..n], &bytes[..]);
        }
        let _ = decryptor.decrypt_into(&bytes, &mut out[..len / 3], now);
    }
}

#[test]
fn altered_frames_never_open() {
    let mut rng = StdRng::seed_from_u64(0xF1A9);
    let key = SenderKey::new(3, [0x77; 16]);
    let now = Instant::now();
    let mut encryptor = FrameEncryptor::new(key.clone());
    let mut decryptor = FrameDecryptor::new();
    decryptor.install_key(key, now);
    let mut out = [0u8; 1400];
    for i in 0..3_000 {
        let len = rng.random_range(1..300);
        let opus: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        let mut frame = vec![0u8; len + MAX_OVERHEAD];
        let n = encryptor.encrypt_into(&opus, &mut frame).expect("room");
        frame.truncate(n);
        let mut altered = frame.clone();
        match i % 3 {
            0 => {
                let at = rng.random_range(0..n);
                altered[at] ^= rng.random_range(1..=255u8);
            }
            1 => {
                altered.truncate(rng.random_range(0..n));
            }
            _ => {
                altered.insert(rng.random_range(0..n), rng.random());
            }
        }
        assert!(
            decryptor.decrypt_into(&altered, &mut out, now).is_err(),
            "altered frame {i} opened"
        );
        // The untouched frame still opens afterwards: a failed attempt uses up no nonce.
        let m = decryptor
            .decrypt_into(&frame, &mut out, now)
            .expect("original opens");
        assert_eq!(&out[..m], &opus[..]);
    }
}
