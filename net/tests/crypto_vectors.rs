//! Known-answer tests against vectors computed by an independent implementation
//! (`vectors/make_vectors.py`: OpenSSL AES-GCM and libsodium XChaCha20-Poly1305), plus
//! round-trip and tamper tests.

mod hex;
use hex::hex;
use quaver_net::crypto::{
    CryptoError, EncryptionMode, SEAL_OVERHEAD, Sealer, SecretKey, TransportCipher,
};
use quaver_net::rtp::RtpHeader;

struct Vector {
    mode: EncryptionMode,
    key: SecretKey,
    nonce: u32,
    header: Vec<u8>,
    plaintext: Vec<u8>,
    packet: Vec<u8>,
}

fn vectors() -> Vec<Vector> {
    include_str!("vectors/transport.txt")
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            assert_eq!(f.len(), 6, "vector line has six fields");
            Vector {
                mode: f[0].parse().expect("vector names a supported mode"),
                key: SecretKey::from_slice(&hex(f[1])).expect("vector key is 32 bytes"),
                nonce: f[2].parse().expect("vector nonce is a u32"),
                header: hex(f[3]),
                plaintext: hex(f[4]),
                packet: hex(f[5]),
            }
        })
        .collect()
}

#[test]
fn seal_matches_independent_vectors() {
    let vs = vectors();
    assert_eq!(vs.len(), 12);
    for v in &vs {
        let mut buf = [0u8; 1500];
        buf[..v.header.len()].copy_from_slice(&v.header);
        buf[v.header.len()..v.header.len() + v.plaintext.len()].copy_from_slice(&v.plaintext);
        // Through the Sealer, which owns the counter, starting at the vector's nonce.
        let mut sealer = Sealer::with_nonce_start(v.mode, &v.key, v.nonce);
        let len = sealer
            .seal(&mut buf, v.header.len(), v.plaintext.len())
            .expect("buffer is large enough");
        assert_eq!(&buf[..len], &v.packet[..], "{} {:?}", v.mode, v.header);
        // The header parser computes the same AAD length as the vector's header.
        let h = RtpHeader::parse(&v.packet).expect("vector packet has a valid header");
        assert_eq!(h.cleartext_len, v.header.len());
    }
}

#[test]
fn open_matches_independent_vectors() {
    for v in vectors() {
        let cipher = TransportCipher::new(v.mode, &v.key);
        let mut out = [0u8; 1500];
        let n = cipher
            .open_into(&v.packet, v.header.len(), &mut out)
            .expect("vector opens");
        assert_eq!(&out[..n], &v.plaintext[..]);
        let mut packet = v.packet.clone();
        let body = cipher
            .open_in_place(&mut packet, v.header.len())
            .expect("vector opens in place");
        assert_eq!(&body[..], &v.plaintext[..]);
    }
}

#[test]
fn any_flipped_bit_is_rejected() {
    for v in vectors() {
        let cipher = TransportCipher::new(v.mode, &v.key);
        let mut out = [0u8; 1500];
        // Every bit of header, ciphertext, tag and nonce suffix (bounded for the large vector).
        for byte in (0..v.packet.len()).filter(|i| *i < 200 || *i + 24 > v.packet.len()) {
            for bit in 0..8 {
                let mut p = v.packet.clone();
                p[byte] ^= 1 << bit;
                assert_eq!(
                    cipher.open_into(&p, v.header.len(), &mut out),
                    Err(CryptoError::Authentication),
                    "{} byte {byte} bit {bit}",
                    v.mode
                );
            }
        }
        // Wrong key.
        let other = TransportCipher::new(v.mode, &SecretKey::new([0xA5; 32]));
        assert!(
            other
                .open_into(&v.packet, v.header.len(), &mut out)
                .is_err()
        );
        // Truncated packets are errors, never panics.
        for cut in 0..v.packet.len() {
            let _ = cipher.open_into(&v.packet[..cut], v.header.len(), &mut out);
        }
        assert!(
            cipher
                .open_into(
                    &v.packet[..v.header.len() + SEAL_OVERHEAD - 1],
                    v.header.len(),
                    &mut out
                )
                .is_err()
        );
    }
}

#[test]
fn round_trips_and_modes_do_not_cross() {
    let key = SecretKey::new([7; 32]);
    for mode in EncryptionMode::PREFERENCE {
        let mut sealer = Sealer::new(mode, &key);
        let cipher = TransportCipher::new(mode, &key);
        for len in [0usize, 1, 3, 100, 1275] {
            let mut buf = [0u8; 1460];
            quaver_net::rtp::write_header(&mut buf, 1, 2, 3).expect("buffer holds a header");
            for (i, b) in buf[12..12 + len].iter_mut().enumerate() {
                *b = i as u8;
            }
            let n = sealer
                .seal(&mut buf, 12, len)
                .expect("buffer is large enough");
            assert_eq!(n, 12 + len + cipher.overhead());
            let mut out = [0u8; 1460];
            let m = cipher
                .open_into(&buf[..n], 12, &mut out)
                .expect("round trip");
            assert!(out[..m].iter().enumerate().all(|(i, b)| *b == i as u8));
        }
    }
    // A packet sealed under one mode does not open under the other.
    let mut buf = [0u8; 64];
    let n = Sealer::new(EncryptionMode::Aes256GcmRtpSize, &key)
        .seal(&mut buf, 12, 10)
        .expect("buffer is large enough");
    let x = TransportCipher::new(EncryptionMode::XChaCha20Poly1305RtpSize, &key);
    assert!(x.open_into(&buf[..n], 12, &mut [0u8; 64]).is_err());
}
