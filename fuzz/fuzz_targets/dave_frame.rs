//! DAVE frame parsing and decryption on arbitrary bytes: `parse_frame` and
//! `FrameDecryptor::decrypt_into` must return errors, never panic. The first byte picks the
//! decryptor's state (passthrough, a key, a clock offset) and whether the rest is first wrapped
//! by a real `FrameEncryptor` (optionally with a byte flipped), so the paths after a successful
//! parse — replay window, generation checks, authentication, decryption — are reached too.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use quaver_net::dave::{
    FrameDecryptor, FrameEncryptor, MAX_OVERHEAD, Passthrough, SenderKey, parse_frame,
};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    if let Ok(p) = parse_frame(rest) {
        assert!(p.body.len() + 11 <= rest.len());
    }
    let now = Instant::now();
    let key = SenderKey::new(1, [0x3A; 16]);
    let mut decryptor = FrameDecryptor::new();
    if selector & 1 != 0 {
        decryptor.set_passthrough(Passthrough::On);
    }
    if selector & 2 != 0 {
        decryptor.install_key(key.clone(), now);
    }
    let later = now + Duration::from_secs(u64::from(selector >> 4) * 1_000);
    let mut out = [0u8; 2048];
    let _ = decryptor.decrypt_into(rest, &mut out, later);
    let _ = decryptor.decrypt_into(rest, &mut out[..rest.len() / 2], later);

    if selector & 4 != 0 && rest.len() <= 1275 {
        // Wrap the input as a sender would, then open it (twice: the second is a replay).
        let mut encryptor = FrameEncryptor::new(key);
        if selector & 8 != 0 {
            encryptor.skip_to_nonce_for_tests(u32::from(selector) << 24, 0);
        }
        let mut frame = [0u8; 1275 + MAX_OVERHEAD];
        if let Ok(n) = encryptor.encrypt_into(rest, &mut frame) {
            if let Some(&b) = rest.first() {
                frame[usize::from(b) % n] ^= b;
            }
            let _ = parse_frame(&frame[..n]);
            let _ = decryptor.decrypt_into(&frame[..n], &mut out, later);
            let _ = decryptor.decrypt_into(&frame[..n], &mut out, later);
        }
    }
});
