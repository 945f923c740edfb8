//! The sender's side of DAVE: one [`FrameEncryptor`] per call, owned by the sender thread.

use std::fmt;

use super::cipher::ShortTagSealer;
use super::frame::{self, MAX_OVERHEAD};
use super::ratchet::Ratchet;
use super::{DaveError, SILENCE_FRAME, SenderKey};

/// Generations per nonce cycle: the top byte of the 32-bit nonce.
const GENERATIONS_PER_WRAP: u32 = 256;

/// Encrypts one sender's Opus frames under its current [`SenderKey`].
///
/// The frame nonce restarts at 0 for each new key and is pre-incremented, so the first frame
/// carries nonce 1. The ratchet generation is `nonce >> 24` plus 256 for every time the 32-bit
/// nonce has wrapped. Re-installing the key in use (same epoch and secret) keeps the counter:
/// restarting it would reuse nonces under the same key.
///
/// [`encrypt_into`](Self::encrypt_into) allocates nothing, takes no lock and reads no clock. A
/// new generation (every 2^24 frames, ~93 hours at 50 frames/s) costs one AES key schedule and a
/// ratchet step (two HMAC-SHA256) on that frame.
pub struct FrameEncryptor {
    key: SenderKey,
    ratchet: Ratchet,
    sealer: ShortTagSealer,
    generation: u32,
    /// The last nonce used (0 before the first frame).
    nonce: u32,
    /// Times the nonce has wrapped past `u32::MAX`.
    wraps: u32,
    frames: u64,
}

impl fmt::Debug for FrameEncryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameEncryptor")
            .field("epoch", &self.key.epoch())
            .field("generation", &self.generation)
            .field("nonce", &self.nonce)
            .field("frames", &self.frames)
            .finish_non_exhaustive()
    }
}

impl FrameEncryptor {
    /// An encryptor for `key`, ready at generation 0. Derives the first frame key here (two
    /// HMAC-SHA256 and an AES key schedule), so build it off the real-time thread.
    pub fn new(key: SenderKey) -> Self {
        let mut ratchet = Ratchet::new(key.base_secret());
        let sealer = Self::generation_sealer(&mut ratchet, 0);
        Self {
            key,
            ratchet,
            sealer,
            generation: 0,
            nonce: 0,
            wraps: 0,
            frames: 0,
        }
    }

    fn generation_sealer(ratchet: &mut Ratchet, generation: u32) -> ShortTagSealer {
        match ratchet.key(generation) {
            Some(key) => ShortTagSealer::new(&key),
            // Generations only grow: callers never ask for one the ratchet has passed.
            None => unreachable!("ratchet asked for passed generation {generation}"),
        }
    }

    /// The epoch of the key in use.
    pub fn epoch(&self) -> u64 {
        self.key.epoch()
    }

    /// Whether `key` is the key in use (so installing it again keeps the counter).
    pub fn has_key(&self, key: &SenderKey) -> bool {
        self.key.same_key(key)
    }

    /// Whether `other` holds the same key as this one.
    pub fn same_key_as(&self, other: &FrameEncryptor) -> bool {
        self.key.same_key(&other.key)
    }

    /// The nonce of the last frame made (0 before the first).
    pub fn nonce(&self) -> u32 {
        self.nonce
    }

    /// The ratchet generation in use.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Frames encrypted (silence frames excluded).
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Installs `key`. The same key as the one in use changes nothing and returns `false`; a new
    /// key restarts the nonce counter and returns `true`. Derives a frame key like
    /// [`FrameEncryptor::new`]; the sender thread instead swaps whole encryptors built elsewhere.
    pub fn set_key(&mut self, key: SenderKey) -> bool {
        if self.has_key(&key) {
            return false;
        }
        *self = Self::new(key);
        true
    }

    /// Wraps `opus` into a DAVE frame in `out` and returns its length:
    /// `[ciphertext][8-byte tag][ULEB128 nonce][supp_size][FA FA]`, at most
    /// `opus.len() + MAX_OVERHEAD` bytes. The silence frame `F8 FF FE` is copied as it is. On an
    /// error no nonce is used up.
    pub fn encrypt_into(&mut self, opus: &[u8], out: &mut [u8]) -> Result<usize, DaveError> {
        let have = out.len();
        if opus == SILENCE_FRAME {
            let dst = out
                .get_mut(..SILENCE_FRAME.len())
                .ok_or(DaveError::BufferTooSmall {
                    needed: SILENCE_FRAME.len(),
                    have,
                })?;
            dst.copy_from_slice(&SILENCE_FRAME);
            return Ok(SILENCE_FRAME.len());
        }
        let nonce = self.nonce.wrapping_add(1);
        let wraps = if nonce == 0 {
            self.wraps.checked_add(1).ok_or(DaveError::NonceExhausted)?
        } else {
            self.wraps
        };
        let generation = wraps
            .checked_mul(GENERATIONS_PER_WRAP)
            .and_then(|g| g.checked_add(nonce >> 24))
            .ok_or(DaveError::NonceExhausted)?;
        let needed = opus.len() + frame::TAG_LEN + super::leb128::encoded_len(u64::from(nonce)) + 3;
        debug_assert!(needed <= opus.len() + MAX_OVERHEAD);
        if needed > have {
            return Err(DaveError::BufferTooSmall { needed, have });
        }
        if generation != self.generation {
            self.sealer = Self::generation_sealer(&mut self.ratchet, generation);
            self.generation = generation;
        }
        let body = &mut out[..opus.len()];
        body.copy_from_slice(opus);
        let tag = self
            .sealer
            .seal(nonce, body)
            .ok_or(DaveError::EncryptFailed)?;
        let len = frame::write_trailer(out, opus.len(), &tag, nonce)?;
        self.nonce = nonce;
        self.wraps = wraps;
        self.frames += 1;
        Ok(len)
    }

    /// Moves the counter so that the next frame uses nonce `last_nonce + 1` after `wraps` wraps
    /// (for tests of the generation arithmetic; a real sender never skips nonces). Only forward.
    #[doc(hidden)]
    pub fn skip_to_nonce_for_tests(&mut self, last_nonce: u32, wraps: u32) {
        let current = (u64::from(self.wraps) << 32) | u64::from(self.nonce);
        let target = (u64::from(wraps) << 32) | u64::from(last_nonce);
        assert!(target >= current, "the nonce counter only moves forward");
        self.nonce = last_nonce;
        self.wraps = wraps;
    }
}

#[cfg(test)]
mod tests {
    use super::super::cipher::ShortTagOpener;
    use super::super::parse_frame;
    use super::*;

    fn key(epoch: u64, byte: u8) -> SenderKey {
        SenderKey::new(epoch, [byte; 16])
    }

    /// Opens a frame with the ratchet key of `generation`, independently of any decryptor state.
    fn open_with_generation(base: u8, generation: u32, frame: &[u8]) -> Vec<u8> {
        let parsed = parse_frame(frame).expect("a DAVE frame");
        let mut ratchet = Ratchet::new(&[base; 16]);
        let k = ratchet.key(generation).expect("fresh ratchet");
        let opener = ShortTagOpener::new(&k);
        let mut body = parsed.body.to_vec();
        assert!(
            opener.open(parsed.nonce, b"", &mut body, &parsed.tag),
            "frame opens under generation {generation}"
        );
        body
    }

    #[test]
    fn first_frames_and_layout() {
        let mut enc = FrameEncryptor::new(key(1, 9));
        let mut out = [0u8; 64];
        for expected_nonce in 1..=3u32 {
            let n = enc.encrypt_into(b"hello opus", &mut out).expect("room");
            assert_eq!(n, 10 + 8 + 1 + 3);
            assert_eq!(&out[n - 3..n], &[12, 0xFA, 0xFA]);
            let p = parse_frame(&out[..n]).expect("valid");
            assert_eq!(p.nonce, expected_nonce);
            assert_eq!(open_with_generation(9, 0, &out[..n]), b"hello opus");
        }
        assert_eq!(enc.frames(), 3);
    }

    #[test]
    fn silence_is_not_wrapped_and_uses_no_nonce() {
        let mut enc = FrameEncryptor::new(key(1, 9));
        let mut out = [0u8; 16];
        assert_eq!(enc.encrypt_into(&SILENCE_FRAME, &mut out), Ok(3));
        assert_eq!(out[..3], SILENCE_FRAME);
        assert_eq!(enc.nonce(), 0);
        assert_eq!(enc.frames(), 0);
    }

    #[test]
    fn small_buffer_is_an_error_and_keeps_the_nonce() {
        let mut enc = FrameEncryptor::new(key(1, 9));
        let mut out = [0u8; 21];
        assert_eq!(
            enc.encrypt_into(b"hello opus", &mut out),
            Err(DaveError::BufferTooSmall {
                needed: 22,
                have: 21
            })
        );
        assert_eq!(enc.nonce(), 0);
        let mut out = [0u8; 22];
        assert_eq!(enc.encrypt_into(b"hello opus", &mut out), Ok(22));
        assert_eq!(parse_frame(&out).expect("valid").nonce, 1);
    }

    #[test]
    fn same_key_keeps_the_counter_and_a_new_key_restarts_it() {
        let mut enc = FrameEncryptor::new(key(4, 1));
        let mut out = [0u8; 64];
        for _ in 0..5 {
            enc.encrypt_into(b"abc", &mut out).expect("room");
        }
        assert!(!enc.set_key(key(4, 1)), "same epoch and secret");
        let n = enc.encrypt_into(b"abc", &mut out).expect("room");
        assert_eq!(
            parse_frame(&out[..n]).expect("valid").nonce,
            6,
            "no nonce reuse"
        );

        // Same epoch number but another secret (a reset group): a different key domain.
        assert!(enc.set_key(key(4, 2)));
        let n = enc.encrypt_into(b"abc", &mut out).expect("room");
        assert_eq!(parse_frame(&out[..n]).expect("valid").nonce, 1);
        assert_eq!(open_with_generation(2, 0, &out[..n]), b"abc");

        assert!(enc.set_key(key(5, 2)), "next epoch");
        assert_eq!(enc.epoch(), 5);
        let n = enc.encrypt_into(b"abc", &mut out).expect("room");
        assert_eq!(parse_frame(&out[..n]).expect("valid").nonce, 1);
    }

    #[test]
    fn generation_follows_the_top_byte_and_keeps_counting_past_255() {
        let mut enc = FrameEncryptor::new(key(1, 7));
        let mut out = [0u8; 64];

        // Crossing into generation 1.
        enc.skip_to_nonce_for_tests(0x00FF_FFFE, 0);
        for (nonce, generation) in [(0x00FF_FFFFu32, 0u32), (0x0100_0000, 1)] {
            let n = enc.encrypt_into(b"frame", &mut out).expect("room");
            let p = parse_frame(&out[..n]).expect("valid");
            assert_eq!((p.nonce, enc.generation()), (nonce, generation));
            assert_eq!(open_with_generation(7, generation, &out[..n]), b"frame");
        }

        // The 32-bit nonce wraps: nonce 0 of generation 256, then 1, and so on.
        enc.skip_to_nonce_for_tests(u32::MAX - 1, 0);
        let mut seen = Vec::new();
        for _ in 0..3 {
            let n = enc.encrypt_into(b"frame", &mut out).expect("room");
            let p = parse_frame(&out[..n]).expect("valid");
            seen.push((p.nonce, enc.generation()));
            assert_eq!(
                open_with_generation(7, enc.generation(), &out[..n]),
                b"frame"
            );
        }
        assert_eq!(seen, [(u32::MAX, 255), (0, 256), (1, 256)]);
        // Generation 256 is a different key from generation 0, so nonce 1 is not reused.
        assert_ne!(
            Ratchet::new(&[7; 16]).key(0).map(|k| *k),
            Ratchet::new(&[7; 16]).key(256).map(|k| *k)
        );

        // Second wrap, top byte 2: generation 2·256 + 2.
        enc.skip_to_nonce_for_tests(0x0200_0000, 2);
        let n = enc.encrypt_into(b"frame", &mut out).expect("room");
        assert_eq!(enc.generation(), 514);
        assert_eq!(open_with_generation(7, 514, &out[..n]), b"frame");
    }

    #[test]
    fn debug_hides_the_key() {
        let enc = FrameEncryptor::new(key(3, 0xAA));
        let text = format!("{enc:?} {:?}", key(3, 0xAA));
        assert!(text.contains("epoch: 3"));
        assert!(
            !text.contains("170"),
            "no secret bytes (0xAA = 170) in {text}"
        );
        assert!(!text.to_lowercase().contains("aa, aa"));
    }
}
