//! AES-128-GCM with the tag cut to 8 bytes, as DAVE frames carry it.
//!
//! Sealing uses `aes-gcm`'s [`Aes128Gcm`] and keeps the first 8 bytes of its 16-byte tag (a NIST
//! SP 800-38D short tag is exactly that prefix). Opening cannot go through `aes-gcm`: it only
//! verifies tags of 12–16 bytes. So [`ShortTagOpener`] recomputes the tag from the same parts
//! `aes-gcm` builds it from — GHASH (`ghash`) over the AAD and the ciphertext, masked with
//! `E_K(J0)` (`ctr`'s 32-bit big-endian counter mode over `aes`) — compares the first 8 bytes in
//! constant time and only then decrypts. The tests check both halves against each other and
//! against davey.

use aes::Aes128;
use aes::cipher::{BlockEncrypt, InnerIvInit, KeyInit, StreamCipherCore};
use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes128Gcm, Nonce};
use ctr::flavors::Ctr32BE;
use ghash::GHash;
use ghash::universal_hash::UniversalHash;
use zeroize::Zeroize;

use super::frame::TAG_LEN;
use super::ratchet::KEY_LEN;

/// The 12-byte GCM IV of a frame: eight zero bytes, then the 32-bit nonce little-endian (libdave
/// copies the integer's memory on little-endian hosts; davey writes `to_le_bytes`).
pub(crate) fn frame_iv(nonce: u32) -> [u8; 12] {
    let mut iv = [0u8; 12];
    iv[8..].copy_from_slice(&nonce.to_le_bytes());
    iv
}

/// The sealing half: a frame key's `Aes128Gcm`.
pub(crate) struct ShortTagSealer(Aes128Gcm);

impl ShortTagSealer {
    pub(crate) fn new(key: &[u8; KEY_LEN]) -> Self {
        Self(Aes128Gcm::new(key.into()))
    }

    /// Encrypts `buf` in place (no AAD: Opus frames have no unencrypted ranges) and returns the
    /// 8-byte tag, or `None` if `aes-gcm` refuses (only for inputs beyond 64 GiB).
    pub(crate) fn seal(&self, nonce: u32, buf: &mut [u8]) -> Option<[u8; TAG_LEN]> {
        let iv = frame_iv(nonce);
        let mut full = self
            .0
            .encrypt_in_place_detached(Nonce::from_slice(&iv), b"", buf)
            .ok()?;
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full[..TAG_LEN]);
        full.as_mut_slice().zeroize();
        Some(tag)
    }
}

/// The opening half: AES-128 and the GHASH key `H = E_K(0^128)`.
pub(crate) struct ShortTagOpener {
    aes: Aes128,
    ghash: GHash,
}

impl ShortTagOpener {
    pub(crate) fn new(key: &[u8; KEY_LEN]) -> Self {
        let aes = Aes128::new(key.into());
        let mut h = ghash::Block::default();
        aes.encrypt_block(&mut h);
        let ghash = GHash::new(&h);
        h.as_mut_slice().zeroize();
        Self { aes, ghash }
    }

    /// Checks `tag` over `aad` and the ciphertext in `buf`, then decrypts `buf` in place. On a
    /// mismatch `buf` is left as it was and `false` comes back.
    pub(crate) fn open(&self, nonce: u32, aad: &[u8], buf: &mut [u8], tag: &[u8; TAG_LEN]) -> bool {
        let mut j0 = ghash::Block::default();
        j0[..12].copy_from_slice(&frame_iv(nonce));
        j0[15] = 1;
        let mut ctr = ctr::CtrCore::<&Aes128, Ctr32BE>::inner_iv_init(&self.aes, &j0);
        let mut mask = ghash::Block::default();
        ctr.write_keystream_block(&mut mask);

        let mut ghash = self.ghash.clone();
        ghash.update_padded(aad);
        ghash.update_padded(buf);
        let mut lengths = ghash::Block::default();
        lengths[..8].copy_from_slice(&((aad.len() as u64) * 8).to_be_bytes());
        lengths[8..].copy_from_slice(&((buf.len() as u64) * 8).to_be_bytes());
        ghash.update(&[lengths]);
        let mut expected = ghash.finalize();
        // Constant-time comparison of the 8 bytes carried in the frame.
        let mut diff = 0u8;
        for i in 0..TAG_LEN {
            diff |= expected[i] ^ mask[i] ^ tag[i];
        }
        expected.as_mut_slice().zeroize();
        mask.as_mut_slice().zeroize();
        if diff != 0 {
            return false;
        }
        // The counter continues at J0 + 1, where GCM's keystream for the data starts.
        ctr.apply_keystream_partial(buf.into());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opener_accepts_what_the_sealer_made_and_nothing_else() {
        let key = [0x3Cu8; KEY_LEN];
        let sealer = ShortTagSealer::new(&key);
        let opener = ShortTagOpener::new(&key);
        for len in [0usize, 1, 15, 16, 17, 200, 1275] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let mut buf = plain.clone();
            let tag = sealer.seal(0x0100_0002, &mut buf).expect("small input");
            if len > 0 {
                assert_ne!(buf, plain, "encrypted");
            }
            let sealed = buf.clone();
            assert!(
                !opener.open(0x0100_0003, b"", &mut buf, &tag),
                "wrong nonce"
            );
            assert_eq!(buf, sealed, "left alone on failure");
            let mut bad_tag = tag;
            bad_tag[7] ^= 1;
            assert!(
                !opener.open(0x0100_0002, b"", &mut buf, &bad_tag),
                "bad tag"
            );
            assert!(!opener.open(0x0100_0002, b"x", &mut buf, &tag), "other AAD");
            if len > 0 {
                buf[len / 2] ^= 0x80;
                assert!(
                    !opener.open(0x0100_0002, b"", &mut buf, &tag),
                    "flipped bit"
                );
                buf[len / 2] ^= 0x80;
            }
            assert!(opener.open(0x0100_0002, b"", &mut buf, &tag));
            assert_eq!(buf, plain);
            let other = ShortTagOpener::new(&[0x3Du8; KEY_LEN]);
            let mut copy = sealed.clone();
            assert!(!other.open(0x0100_0002, b"", &mut copy, &tag), "other key");
        }
    }

    #[test]
    fn iv_layout() {
        assert_eq!(frame_iv(0x0403_0201), [0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4]);
    }
}
