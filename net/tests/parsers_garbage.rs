//! Property-style tests: every parser of network input returns an error for garbage and never
//! panics, over many random and truncated byte strings (seeded, so the run is deterministic).

use quaver_net::crypto::{EncryptionMode, Sealer, SecretKey, TransportCipher};
use quaver_net::discovery;
use quaver_net::receive::{self, classify};
use quaver_net::rtp::{RtpHeader, strip_padding};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn exercise(cipher: &TransportCipher, bytes: &[u8]) {
    let mut out = [0u8; 2048];
    let _ = classify(bytes);
    if let Ok(h) = RtpHeader::parse(bytes) {
        assert!(h.cleartext_len <= bytes.len());
        let _ = h.split_extension(&bytes[h.cleartext_len..]);
    }
    let _ = strip_padding(bytes, true);
    let _ = discovery::parse_response(bytes);
    let _ = receive::open_rtp(cipher, bytes, &mut out);
    let _ = receive::open_rtcp(cipher, bytes, &mut out);
    let mut copy = bytes.to_vec();
    let _ = cipher.open_in_place(&mut copy, 12);
    let _ = cipher.open_into(bytes, 40, &mut out[..3]);
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = StdRng::seed_from_u64(0x5155_4156);
    for mode in EncryptionMode::PREFERENCE {
        let cipher = TransportCipher::new(mode, &SecretKey::new([1; 32]));
        for i in 0..20_000 {
            let len = rng.random_range(0..200);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            // Bias half of them towards plausible RTP so deeper paths run.
            if i % 2 == 0 && len >= 2 {
                bytes[0] = 0x80 | (bytes[0] & 0x3F);
                bytes[1] = if i % 4 == 0 { 0x78 } else { 200 };
            }
            if i % 7 == 0 && len >= 4 {
                bytes[..4].copy_from_slice(&[0, 2, 0, 70]);
            }
            exercise(&cipher, &bytes);
        }
    }
}

#[test]
fn every_truncation_of_a_valid_packet_is_an_error() {
    let key = SecretKey::new([9; 32]);
    for mode in EncryptionMode::PREFERENCE {
        let cipher = TransportCipher::new(mode, &key);
        let mut sealer = Sealer::new(mode, &key);
        let mut buf = [0u8; 256];
        // P=1 X=1 CC=1 header, extension of 2 words, payload + padding.
        let clear = [
            0xB1, 0x78, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0xBE, 0xDE, 0, 2,
        ];
        buf[..20].copy_from_slice(&clear);
        let body_len = 8 + 30 + 4;
        buf[20 + body_len - 1] = 4;
        // Legacy non-rtpsize modes keep only the fixed 12 bytes in the clear.
        let aad = if mode.is_rtpsize() { 20 } else { 12 };
        let n = sealer
            .seal(&mut buf, aad, 20 + body_len - aad)
            .expect("buffer is large enough");
        let mut out = [0u8; 256];
        let full = receive::open_rtp(&cipher, &buf[..n], &mut out)
            .unwrap_or_else(|e| panic!("valid packet opens under {mode}: {e}"));
        assert_eq!(full.payload.len(), 30);
        for cut in 0..n {
            exercise(&cipher, &buf[..cut]);
            assert!(receive::open_rtp(&cipher, &buf[..cut], &mut out).is_err());
        }
        let mut small = [0u8; 8];
        assert!(receive::open_rtp(&cipher, &buf[..n], &mut small).is_err());
    }
}

#[test]
fn decrypted_garbage_lengths_are_rejected() {
    // An authentic packet whose decrypted extension length or padding count is absurd.
    let key = SecretKey::new([2; 32]);
    let cipher = TransportCipher::new(EncryptionMode::Aes256GcmRtpSize, &key);
    let mut sealer = Sealer::new(EncryptionMode::Aes256GcmRtpSize, &key);
    let mut out = [0u8; 256];
    // Extension claims 100 words but only 4 bytes follow.
    let mut buf = [0u8; 128];
    buf[..16].copy_from_slice(&[0x90, 0x78, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0xBE, 0xDE, 0, 100]);
    let n = sealer.seal(&mut buf, 16, 4).expect("fits");
    assert!(receive::open_rtp(&cipher, &buf[..n], &mut out).is_err());
    // Padding count larger than the payload.
    let mut buf = [0u8; 128];
    buf[..12].copy_from_slice(&[0xA0, 0x78, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3]);
    buf[12..15].copy_from_slice(&[1, 2, 200]);
    let n = sealer.seal(&mut buf, 12, 3).expect("fits");
    assert!(receive::open_rtp(&cipher, &buf[..n], &mut out).is_err());
}
