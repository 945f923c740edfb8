//! The receiving side of DAVE for one remote sender: its keys per epoch and libdave's acceptance
//! rules, sans-IO (every call takes `now`).

use std::fmt;
use std::time::Instant;

use super::cipher::ShortTagOpener;
use super::frame::{ParsedFrame, parse_frame};
use super::ratchet::Ratchet;
use super::{
    DaveError, KEY_OVERLAP, MAX_FRAMES_PER_SECOND, MAX_GENERATION_GAP, MAX_MISSING_NONCES,
    SILENCE_FRAME, SenderKey,
};

/// Epochs kept at once. libdave keeps every epoch whose 10 s overlap has not run out; more than
/// two at a time needs several transitions within 10 s, and four covers that with room to spare.
const MAX_EPOCHS: usize = 4;
/// Generation ciphers kept per epoch. A generation lasts 2^24 frames (93 hours of audio), so a
/// sender ever has at most two in flight: the current one and, for 10 s, the one before.
const GENERATION_SLOTS: usize = 4;
/// Bits of the nonce below the generation byte.
const GENERATION_SHIFT: u32 = 24;

/// Whether frames that are not DAVE frames may pass through unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Passthrough {
    /// Refused (the normal state once E2EE is up).
    Off,
    /// Allowed (before the first key, or after a downgrade to protocol version 0).
    On,
    /// Allowed until this instant (a transition's grace period: 10 s, or 24 s while a downgrade
    /// is pending, in discord.js).
    Until(Instant),
}

/// Decrypts one remote sender's DAVE frames.
///
/// * Keys are installed per epoch with [`install_key`](Self::install_key); installing a newer
///   epoch keeps the older ones for [`KEY_OVERLAP`] (10 s) so frames sent before the switch
///   still open. Frames are tried against the newest epoch first. Re-installing a live key is
///   ignored (it must not get a fresh replay window).
/// * Per epoch: a repeated nonce is refused; a nonce below the newest one decrypts only if it is
///   among the last [`MAX_MISSING_NONCES`] skipped ones; a generation more than
///   [`MAX_GENERATION_GAP`] ahead of the newest seen, or beyond what
///   [`MAX_FRAMES_PER_SECOND`] could have reached since the key arrived, is refused.
/// * `F8 FF FE` always passes through; other non-DAVE frames only while [`Passthrough`] allows.
///
/// Keys of generations the ratchet jumped over are not kept: at 50 frames/s a generation lasts
/// 93 hours, so a frame from one is either that late or forged. Decrypting allocates and frees
/// nothing (expired epochs are skipped, not dropped); installing a key allocates its
/// missing-nonce window (8 KB). A real-time thread installs keys made elsewhere with
/// [`PreparedKey::new`] and [`install_prepared`](Self::install_prepared), which hands back the
/// epoch it displaced so that it is freed off that thread.
pub struct FrameDecryptor {
    // Boxed: an epoch crosses the receive thread's queues as one pointer (`PreparedKey`) and
    // must move in and out of this table without allocating.
    #[allow(clippy::vec_box)]
    epochs: Vec<Box<EpochKeys>>,
    passthrough: Passthrough,
}

impl fmt::Debug for FrameDecryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let epochs: Vec<u64> = self.epochs.iter().map(|e| e.key.epoch()).collect();
        f.debug_struct("FrameDecryptor")
            .field("epochs", &epochs)
            .field("passthrough", &self.passthrough)
            .finish()
    }
}

impl Default for FrameDecryptor {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecryptor {
    /// A decryptor with no key and passthrough off.
    pub fn new() -> Self {
        Self {
            epochs: Vec::with_capacity(MAX_EPOCHS),
            passthrough: Passthrough::Off,
        }
    }

    /// Installs a sender's key for a new epoch. Older epochs' keys now expire [`KEY_OVERLAP`]
    /// from `now` (or earlier, if they were due earlier). Returns `false`, changing nothing, when
    /// this key is already installed and live.
    pub fn install_key(&mut self, key: SenderKey, now: Instant) -> bool {
        matches!(
            self.install_prepared(PreparedKey::new(key, now), now),
            Installed::Fresh(_)
        )
    }

    /// As [`install_key`](Self::install_key) with a key made beforehand, without allocating or
    /// freeing: what the key replaced (an expired or the oldest epoch), or the key itself when
    /// it was already live, comes back to be dropped by the caller — elsewhere, on a real-time
    /// thread.
    pub fn install_prepared(&mut self, key: PreparedKey, now: Instant) -> Installed {
        if self
            .epochs
            .iter()
            .any(|e| !e.expired(now) && e.key.same_key(&key.0.key))
        {
            return Installed::AlreadyLive(key);
        }
        self.expire_keys(now);
        let displaced = match self.epochs.iter().position(|e| e.expired(now)) {
            Some(i) => Some(self.epochs.remove(i)),
            None if self.epochs.len() == MAX_EPOCHS => Some(self.epochs.remove(0)),
            None => None,
        };
        // Capacity is MAX_EPOCHS and one slot is free now: no allocation.
        self.epochs.push(key.0);
        Installed::Fresh(displaced.map(PreparedKey))
    }

    /// Lets every installed key expire [`KEY_OVERLAP`] from `now` (a downgrade to protocol
    /// version 0: libdave's `TransitionToKeyRatchet(nullptr)`).
    pub fn expire_keys(&mut self, now: Instant) {
        let deadline = now + KEY_OVERLAP;
        for e in &mut self.epochs {
            e.expiry = Some(e.expiry.map_or(deadline, |t| t.min(deadline)));
        }
    }

    /// Sets whether non-DAVE frames pass through.
    pub fn set_passthrough(&mut self, passthrough: Passthrough) {
        self.passthrough = passthrough;
    }

    /// Whether a non-DAVE frame would pass through at `now`.
    pub fn passthrough_allowed(&self, now: Instant) -> bool {
        match self.passthrough {
            Passthrough::Off => false,
            Passthrough::On => true,
            Passthrough::Until(t) => now < t,
        }
    }

    /// The epochs whose keys are installed and not expired at `now`, oldest first.
    pub fn live_epochs(&self, now: Instant) -> impl Iterator<Item = u64> + '_ {
        self.epochs
            .iter()
            .filter(move |e| !e.expired(now))
            .map(|e| e.key.epoch())
    }

    /// Decrypts `frame` into `out` and returns the plaintext length (the silence frame and
    /// allowed plaintext are copied as they are). Errors: a frame that fails the protocol-frame
    /// check while passthrough is off gets that check's error; otherwise [`DaveError::NoKey`],
    /// [`DaveError::Replayed`], [`DaveError::GenerationOutOfRange`] or
    /// [`DaveError::AuthenticationFailed`] from the newest epoch tried. Never panics.
    pub fn decrypt_into(
        &mut self,
        frame: &[u8],
        out: &mut [u8],
        now: Instant,
    ) -> Result<usize, DaveError> {
        if frame == SILENCE_FRAME {
            return copy_through(frame, out);
        }
        let parsed = match parse_frame(frame) {
            Ok(p) => p,
            Err(_) if self.passthrough_allowed(now) => return copy_through(frame, out),
            Err(e) => return Err(e),
        };
        if parsed.has_unencrypted_ranges() {
            return Err(DaveError::UnencryptedRanges);
        }
        let len = parsed.body.len();
        let have = out.len();
        let body = out
            .get_mut(..len)
            .ok_or(DaveError::BufferTooSmall { needed: len, have })?;
        let mut first_error = None;
        for epoch in self.epochs.iter_mut().rev().filter(|e| !e.expired(now)) {
            match epoch.decrypt(&parsed, body, now) {
                Ok(()) => return Ok(len),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.unwrap_or(DaveError::NoKey))
    }
}

/// A sender's key for one epoch with its receive state allocated, ready for
/// [`FrameDecryptor::install_prepared`]. `Debug` shows the epoch only.
pub struct PreparedKey(Box<EpochKeys>);

impl PreparedKey {
    /// Allocates the receive state of `key` (its missing-nonce window); `now` starts the clock
    /// of libdave's reachable-generation check.
    pub fn new(key: SenderKey, now: Instant) -> Self {
        Self(Box::new(EpochKeys::new(key, now)))
    }

    /// The epoch the key belongs to.
    pub fn epoch(&self) -> u64 {
        self.0.key.epoch()
    }
}

impl fmt::Debug for PreparedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreparedKey")
            .field("epoch", &self.epoch())
            .finish()
    }
}

/// What [`FrameDecryptor::install_prepared`] did.
#[derive(Debug)]
#[must_use = "what comes back must be dropped, off a real-time thread"]
pub enum Installed {
    /// Installed; holds the epoch it displaced, if any.
    Fresh(Option<PreparedKey>),
    /// The same key was live already (it keeps its replay window); the new one comes back.
    AlreadyLive(PreparedKey),
}

fn copy_through(frame: &[u8], out: &mut [u8]) -> Result<usize, DaveError> {
    let have = out.len();
    out.get_mut(..frame.len())
        .ok_or(DaveError::BufferTooSmall {
            needed: frame.len(),
            have,
        })?
        .copy_from_slice(frame);
    Ok(frame.len())
}

/// One epoch's key for this sender and its receive state (libdave's `CipherManager`).
struct EpochKeys {
    key: SenderKey,
    created: Instant,
    expiry: Option<Instant>,
    ratchet: Ratchet,
    ciphers: [Option<GenerationCipher>; GENERATION_SLOTS],
    oldest_generation: u32,
    newest_generation: u32,
    /// The newest nonce decrypted, with the generation's wraps folded in (generation << 24 |
    /// low 24 bits).
    newest_nonce: Option<u64>,
    missing: MissingNonces,
}

struct GenerationCipher {
    generation: u32,
    opener: ShortTagOpener,
    expiry: Option<Instant>,
}

impl EpochKeys {
    fn new(key: SenderKey, now: Instant) -> Self {
        let ratchet = Ratchet::new(key.base_secret());
        Self {
            key,
            created: now,
            expiry: None,
            ratchet,
            ciphers: std::array::from_fn(|_| None),
            oldest_generation: 0,
            newest_generation: 0,
            newest_nonce: None,
            missing: MissingNonces::new(),
        }
    }

    fn expired(&self, now: Instant) -> bool {
        self.expiry.is_some_and(|t| now > t)
    }

    fn decrypt(
        &mut self,
        frame: &ParsedFrame<'_>,
        body: &mut [u8],
        now: Instant,
    ) -> Result<(), DaveError> {
        let generation = self.unwrap_generation(frame.generation_byte())?;
        let big_nonce =
            (u64::from(generation) << GENERATION_SHIFT) | u64::from(frame.nonce & 0x00FF_FFFF);
        if !self.can_process(big_nonce) {
            return Err(DaveError::Replayed { nonce: frame.nonce });
        }
        let slot = self.cipher_slot(generation, now)?;
        body.copy_from_slice(frame.body);
        let opened = self.ciphers[slot]
            .as_ref()
            .is_some_and(|c| c.opener.open(frame.nonce, b"", body, &frame.tag));
        if !opened {
            return Err(DaveError::AuthenticationFailed);
        }
        self.report_success(generation, big_nonce, now);
        Ok(())
    }

    /// The full generation of a frame from its low byte, assuming it is not older than the oldest
    /// generation still kept (libdave's `computeWrappedGeneration`; the gap check catches the
    /// rest).
    fn unwrap_generation(&self, low: u8) -> Result<u32, DaveError> {
        let low = u32::from(low);
        let oldest = self.oldest_generation;
        let wraps = oldest / 256 + u32::from(low < oldest % 256);
        wraps
            .checked_mul(256)
            .and_then(|g| g.checked_add(low))
            .ok_or(DaveError::GenerationOutOfRange { generation: low })
    }

    fn expected_nonce(&self) -> u64 {
        self.newest_nonce.map_or(0, |n| n + 1)
    }

    fn can_process(&self, big_nonce: u64) -> bool {
        big_nonce >= self.expected_nonce() || self.missing.contains(big_nonce)
    }

    /// The slot of `generation`'s cipher, made if needed.
    fn cipher_slot(&mut self, generation: u32, now: Instant) -> Result<usize, DaveError> {
        self.drop_expired_ciphers(now);
        let out_of_range = DaveError::GenerationOutOfRange { generation };
        if generation < self.oldest_generation
            || generation > self.newest_generation.saturating_add(MAX_GENERATION_GAP)
        {
            return Err(out_of_range);
        }
        let lifetime = now.saturating_duration_since(self.created).as_secs();
        let reachable = MAX_FRAMES_PER_SECOND.saturating_mul(lifetime) >> GENERATION_SHIFT;
        if u64::from(generation) > reachable {
            return Err(out_of_range);
        }
        if let Some(i) = self
            .ciphers
            .iter()
            .position(|c| c.as_ref().is_some_and(|c| c.generation == generation))
        {
            return Ok(i);
        }
        let key = self.ratchet.key(generation).ok_or(out_of_range)?;
        // A cipher for a generation older than the newest decrypted is only for late frames.
        let expiry = (generation < self.newest_generation).then(|| now + KEY_OVERLAP);
        let slot = match self.ciphers.iter().position(Option::is_none) {
            Some(i) => i,
            None => self
                .ciphers
                .iter()
                .enumerate()
                .min_by_key(|(_, c)| c.as_ref().map_or(0, |c| c.generation))
                .map_or(0, |(i, _)| i),
        };
        self.ciphers[slot] = Some(GenerationCipher {
            generation,
            opener: ShortTagOpener::new(&key),
            expiry,
        });
        Ok(slot)
    }

    fn drop_expired_ciphers(&mut self, now: Instant) {
        for c in &mut self.ciphers {
            if c.as_ref()
                .is_some_and(|c| c.expiry.is_some_and(|t| t < now))
            {
                *c = None;
            }
        }
        if self.oldest_generation < self.newest_generation {
            let kept = self
                .ciphers
                .iter()
                .flatten()
                .map(|c| c.generation)
                .filter(|&g| g >= self.oldest_generation)
                .min()
                .unwrap_or(self.newest_generation);
            self.oldest_generation = kept.min(self.newest_generation);
        }
    }

    fn report_success(&mut self, generation: u32, big_nonce: u64, now: Instant) {
        let expected = self.expected_nonce();
        if big_nonce >= expected {
            let skipped = (big_nonce - expected).min(MAX_MISSING_NONCES as u64);
            while !self.missing.is_empty()
                && self.missing.len() as u64 + skipped > MAX_MISSING_NONCES as u64
            {
                self.missing.pop_front();
            }
            for n in big_nonce - skipped..big_nonce {
                self.missing.push_back(n);
            }
            self.newest_nonce = Some(big_nonce);
        } else {
            self.missing.remove(big_nonce);
        }
        let have_cipher = self
            .ciphers
            .iter()
            .flatten()
            .any(|c| c.generation == generation);
        if generation <= self.newest_generation || !have_cipher {
            return;
        }
        self.newest_generation = generation;
        let deadline = now + KEY_OVERLAP;
        for c in self.ciphers.iter_mut().flatten() {
            if c.generation < generation {
                c.expiry = Some(c.expiry.map_or(deadline, |t| t.min(deadline)));
            }
        }
    }
}

/// The last [`MAX_MISSING_NONCES`] skipped nonces, oldest first, in a fixed ring.
struct MissingNonces {
    ring: Box<[u64; MAX_MISSING_NONCES]>,
    head: usize,
    len: usize,
}

impl MissingNonces {
    fn new() -> Self {
        Self {
            ring: Box::new([0; MAX_MISSING_NONCES]),
            head: 0,
            len: 0,
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn at(&self, i: usize) -> usize {
        (self.head + i) % MAX_MISSING_NONCES
    }

    fn pop_front(&mut self) {
        if self.len > 0 {
            self.head = self.at(1);
            self.len -= 1;
        }
    }

    fn push_back(&mut self, nonce: u64) {
        if self.len == MAX_MISSING_NONCES {
            self.pop_front();
        }
        let i = self.at(self.len);
        self.ring[i] = nonce;
        self.len += 1;
    }

    /// Newest first: a late frame is most likely a recent one.
    fn position(&self, nonce: u64) -> Option<usize> {
        (0..self.len)
            .rev()
            .find(|&i| self.ring[self.at(i)] == nonce)
    }

    fn contains(&self, nonce: u64) -> bool {
        self.position(nonce).is_some()
    }

    fn remove(&mut self, nonce: u64) {
        let Some(index) = self.position(nonce) else {
            return;
        };
        for i in index..self.len - 1 {
            let (to, from) = (self.at(i), self.at(i + 1));
            self.ring[to] = self.ring[from];
        }
        self.len -= 1;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::FrameEncryptor;
    use super::*;

    fn key(epoch: u64, byte: u8) -> SenderKey {
        SenderKey::new(epoch, [byte; 16])
    }

    fn frames(enc: &mut FrameEncryptor, count: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        (0..count)
            .map(|i| {
                let opus: Vec<u8> = (0..(10 + i % 50)).map(|k| (k ^ i) as u8).collect();
                let mut out = vec![0u8; opus.len() + super::super::MAX_OVERHEAD];
                let n = enc.encrypt_into(&opus, &mut out).expect("room");
                out.truncate(n);
                (opus, out)
            })
            .collect()
    }

    fn open(dec: &mut FrameDecryptor, frame: &[u8], now: Instant) -> Result<Vec<u8>, DaveError> {
        let mut out = vec![0u8; frame.len()];
        let n = dec.decrypt_into(frame, &mut out, now)?;
        out.truncate(n);
        Ok(out)
    }

    #[test]
    fn decrypts_in_order_and_refuses_replays() {
        let now = Instant::now();
        let mut enc = FrameEncryptor::new(key(1, 1));
        let mut dec = FrameDecryptor::new();
        assert!(dec.install_key(key(1, 1), now));
        for (opus, frame) in frames(&mut enc, 20) {
            assert_eq!(open(&mut dec, &frame, now), Ok(opus));
            assert_eq!(
                open(&mut dec, &frame, now),
                Err(DaveError::Replayed {
                    nonce: parse_frame(&frame).expect("valid").nonce
                })
            );
        }
    }

    #[test]
    fn late_frames_within_the_window_decrypt_once() {
        let now = Instant::now();
        let mut enc = FrameEncryptor::new(key(1, 1));
        let mut dec = FrameDecryptor::new();
        dec.install_key(key(1, 1), now);
        let all = frames(&mut enc, 1200);
        // Frame 0 (nonce 1) arrives last of all, after 1,199 later ones with a gap of 1,100.
        assert!(open(&mut dec, &all[1100].1, now).is_ok());
        for (opus, frame) in &all[1101..] {
            assert_eq!(open(&mut dec, frame, now).as_ref(), Ok(opus));
        }
        // Only the last 1,000 skipped nonces are remembered: frames 100..1100 (nonces 101..1100).
        assert_eq!(
            open(&mut dec, &all[99].1, now),
            Err(DaveError::Replayed { nonce: 100 })
        );
        assert_eq!(open(&mut dec, &all[100].1, now).as_ref(), Ok(&all[100].0));
        assert_eq!(open(&mut dec, &all[500].1, now).as_ref(), Ok(&all[500].0));
        assert_eq!(
            open(&mut dec, &all[500].1, now),
            Err(DaveError::Replayed { nonce: 501 }),
            "a late frame is accepted once"
        );
        assert_eq!(open(&mut dec, &all[1099].1, now).as_ref(), Ok(&all[1099].0));
    }

    #[test]
    fn forged_and_garbage_frames_are_errors() {
        let now = Instant::now();
        let mut enc = FrameEncryptor::new(key(1, 1));
        let mut dec = FrameDecryptor::new();
        let (_, frame) = frames(&mut enc, 1).remove(0);
        assert_eq!(open(&mut dec, &frame, now), Err(DaveError::NoKey));
        dec.install_key(key(1, 2), now);
        assert_eq!(
            open(&mut dec, &frame, now),
            Err(DaveError::AuthenticationFailed),
            "other key"
        );
        dec.install_key(key(1, 1), now);
        let mut bad = frame.clone();
        bad[0] ^= 1;
        assert_eq!(
            open(&mut dec, &bad, now),
            Err(DaveError::AuthenticationFailed)
        );
        // The failed attempt did not burn the nonce.
        assert!(open(&mut dec, &frame, now).is_ok());
        assert_eq!(
            open(&mut dec, b"plain opus frame", now),
            Err(DaveError::NoMarker)
        );
        assert_eq!(
            open(&mut dec, &[], now),
            Err(DaveError::FrameTooShort { len: 0 })
        );
        let mut small = [0u8; 4];
        let (_, next) = frames(&mut enc, 1).remove(0);
        assert!(matches!(
            dec.decrypt_into(&next, &mut small, now),
            Err(DaveError::BufferTooSmall { .. })
        ));
    }

    #[test]
    fn silence_always_and_plaintext_only_with_passthrough() {
        let now = Instant::now();
        let mut dec = FrameDecryptor::new();
        assert_eq!(
            open(&mut dec, &SILENCE_FRAME, now),
            Ok(SILENCE_FRAME.to_vec())
        );
        assert_eq!(
            open(&mut dec, b"plain opus frame", now),
            Err(DaveError::NoMarker)
        );
        dec.set_passthrough(Passthrough::On);
        assert_eq!(
            open(&mut dec, b"plain opus frame", now),
            Ok(b"plain opus frame".to_vec())
        );
        dec.set_passthrough(Passthrough::Until(now + Duration::from_secs(10)));
        assert!(open(&mut dec, b"plain opus frame", now + Duration::from_secs(9)).is_ok());
        assert!(open(&mut dec, b"plain opus frame", now + Duration::from_secs(10)).is_err());
        // A well-formed DAVE frame is never passed through, even with passthrough on.
        dec.set_passthrough(Passthrough::On);
        let mut enc = FrameEncryptor::new(key(1, 1));
        let (_, frame) = frames(&mut enc, 1).remove(0);
        assert_eq!(open(&mut dec, &frame, now), Err(DaveError::NoKey));
    }

    #[test]
    fn previous_epoch_lives_ten_seconds_after_the_next() {
        let t0 = Instant::now();
        let mut old = FrameEncryptor::new(key(1, 1));
        let mut new = FrameEncryptor::new(key(2, 2));
        let old_frames = frames(&mut old, 4);
        let new_frames = frames(&mut new, 4);
        let mut dec = FrameDecryptor::new();
        dec.install_key(key(1, 1), t0);
        assert!(open(&mut dec, &old_frames[0].1, t0).is_ok());
        let t1 = t0 + Duration::from_secs(30);
        assert!(dec.install_key(key(2, 2), t1));
        assert!(
            !dec.install_key(key(2, 2), t1),
            "a live key is not reinstalled"
        );
        assert_eq!(dec.live_epochs(t1).collect::<Vec<_>>(), [1, 2]);
        assert!(open(&mut dec, &new_frames[0].1, t1).is_ok());
        assert!(open(&mut dec, &old_frames[1].1, t1 + Duration::from_secs(5)).is_ok());
        assert!(open(&mut dec, &old_frames[2].1, t1 + KEY_OVERLAP).is_ok());
        let later = t1 + KEY_OVERLAP + Duration::from_millis(1);
        assert_eq!(
            open(&mut dec, &old_frames[3].1, later),
            Err(DaveError::AuthenticationFailed),
            "epoch 1 is gone; epoch 2's key does not open it"
        );
        assert_eq!(dec.live_epochs(later).collect::<Vec<_>>(), [2]);
        assert!(open(&mut dec, &new_frames[1].1, later).is_ok());
        // Re-installing the same key keeps its replay window.
        assert!(!dec.install_key(key(2, 2), later));
        assert!(open(&mut dec, &new_frames[1].1, later).is_err());
        // A downgrade lets every key run out.
        dec.expire_keys(later);
        let end = later + KEY_OVERLAP + Duration::from_millis(1);
        assert_eq!(open(&mut dec, &new_frames[2].1, end), Err(DaveError::NoKey));
    }

    #[test]
    fn generations_must_be_reachable_and_within_the_gap() {
        let t0 = Instant::now();
        let mut enc = FrameEncryptor::new(key(1, 3));
        let mut dec = FrameDecryptor::new();
        dec.install_key(key(1, 3), t0);
        assert!(open(&mut dec, &frames(&mut enc, 1)[0].1, t0).is_ok());
        // Generation 1 starts at frame 2^24: at 170 frames/s that takes 98,689 s.
        enc.skip_to_nonce_for_tests(0x00FF_FFFF, 0);
        let (opus, gen1) = frames(&mut enc, 1).remove(0);
        assert_eq!(
            open(&mut dec, &gen1, t0 + Duration::from_secs(60)),
            Err(DaveError::GenerationOutOfRange { generation: 1 })
        );
        let day = t0 + Duration::from_secs(100_000);
        assert_eq!(open(&mut dec, &gen1, day), Ok(opus));
        // More than 250 generations ahead of the newest one seen.
        enc.skip_to_nonce_for_tests(0xFC00_0000, 0); // next frame: generation 252
        let (_, far) = frames(&mut enc, 1).remove(0);
        let much_later = t0 + Duration::from_secs(100_000_000);
        assert_eq!(
            open(&mut dec, &far, much_later),
            Err(DaveError::GenerationOutOfRange { generation: 252 })
        );
    }

    #[test]
    fn generation_wrap_is_followed() {
        let t0 = Instant::now();
        let base = key(1, 4);
        let mut enc = FrameEncryptor::new(base.clone());
        let mut dec = FrameDecryptor::new();
        dec.install_key(base, t0);
        let far = t0 + Duration::from_secs(u64::from(u32::MAX));
        // Walk the receiver up through generations 0..=255 one frame each (gap ≤ 250 each time),
        // then across the wrap into 256.
        for generation in 0..=255u32 {
            enc.skip_to_nonce_for_tests((generation << 24).max(enc.nonce()), 0);
            let (opus, frame) = frames(&mut enc, 1).remove(0);
            assert_eq!(
                open(&mut dec, &frame, far),
                Ok(opus),
                "generation {generation}"
            );
        }
        enc.skip_to_nonce_for_tests(u32::MAX, 0);
        let (opus, frame) = frames(&mut enc, 1).remove(0);
        assert_eq!(enc.generation(), 256);
        assert_eq!(parse_frame(&frame).expect("valid").nonce, 0);
        assert_eq!(open(&mut dec, &frame, far), Ok(opus));
        let (opus, frame) = frames(&mut enc, 1).remove(0);
        assert_eq!(open(&mut dec, &frame, far), Ok(opus));
    }

    #[test]
    fn missing_nonce_ring() {
        let mut m = MissingNonces::new();
        for n in 0..1500u64 {
            m.push_back(n);
        }
        assert_eq!(m.len(), MAX_MISSING_NONCES);
        assert!(!m.contains(499));
        assert!(m.contains(500) && m.contains(1499));
        m.remove(700);
        assert!(!m.contains(700));
        assert_eq!(m.len(), MAX_MISSING_NONCES - 1);
        assert!(m.contains(699) && m.contains(701) && m.contains(1499));
        m.pop_front();
        assert!(!m.contains(500));
    }
}
