//! Transport encryption of RTP packets (PROTOCOL.md §5), "rtpsize" layout:
//!
//! ```text
//! packet = header | ciphertext | tag(16) | N0 N1 N2 N3
//! AAD    = header (12 + 4·CC bytes, + the 4-byte extension preamble when X=1)
//! ciphertext covers the extension body (if any) and the payload
//! AES-256-GCM nonce        = N0 N1 N2 N3 ‖ 00×8
//! XChaCha20-Poly1305 nonce = N0 N1 N2 N3 ‖ 00×20   (IETF XChaCha, not secretbox)
//! ```
//! `N` is a big-endian per-packet counter. [`Sealer`] owns the counter and refuses to seal once all
//! 2^32 values have been used under its key, so a nonce can never repeat: the gateway must deliver a
//! new key (a new Session Description) before that, which at 50 packets/s is after 2.7 years.
//!
//! Sealing and opening work in caller-owned buffers and never allocate.

use std::fmt;
use std::str::FromStr;

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::XChaCha20Poly1305;
use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Bytes of the authentication tag.
pub const TAG_LEN: usize = 16;
/// Bytes of the nonce counter appended to every packet.
pub const NONCE_SUFFIX_LEN: usize = 4;
/// Bytes a sealed packet adds after the plaintext.
pub const SEAL_OVERHEAD: usize = TAG_LEN + NONCE_SUFFIX_LEN;
/// Bytes of a secret key.
pub const KEY_LEN: usize = 32;
/// Number of distinct nonces under one key.
pub const NONCE_SPACE: u64 = 1 << 32;

/// Why sealing or opening failed.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CryptoError {
    /// The mode string is not one this crate implements.
    #[error("unsupported encryption mode")]
    UnsupportedMode,
    /// The key is not 32 bytes.
    #[error("secret key must be 32 bytes, got {0}")]
    KeyLength(usize),
    /// All 2^32 nonces of this key have been used; a new key is needed.
    #[error("nonce space exhausted: rekey required")]
    NonceExhausted,
    /// The buffer cannot hold the sealed packet, or the packet is shorter than header + tag + nonce.
    #[error("buffer too small: need {needed} bytes, have {have}")]
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        have: usize,
    },
    /// Authentication failed: wrong key, or the packet was altered.
    #[error("authentication failed")]
    Authentication,
}

/// A transport-encryption mode, named by Discord's strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EncryptionMode {
    /// `aead_aes256_gcm_rtpsize` (preferred when the server offers it).
    Aes256GcmRtpSize,
    /// `aead_xchacha20_poly1305_rtpsize` (every server must offer it).
    XChaCha20Poly1305RtpSize,
    /// Legacy `xsalsa20_poly1305_lite_rtpsize`: secretbox (tag before ciphertext), 4-byte counter
    /// suffix, rtpsize cleartext header. Rejected by Discord since 2024-11-18.
    #[cfg(feature = "legacy-xsalsa")]
    XSalsa20Poly1305LiteRtpSize,
    /// Legacy `xsalsa20_poly1305_lite`: like the rtpsize variant, but only the fixed 12-byte header
    /// stays in the clear.
    #[cfg(feature = "legacy-xsalsa")]
    XSalsa20Poly1305Lite,
    /// Legacy `xsalsa20_poly1305`: the nonce is the 12-byte RTP header padded with zeros; nothing
    /// is appended.
    #[cfg(feature = "legacy-xsalsa")]
    XSalsa20Poly1305,
}

impl EncryptionMode {
    /// Modes this crate implements, best first.
    #[cfg(not(feature = "legacy-xsalsa"))]
    pub const PREFERENCE: [EncryptionMode; 2] = [
        EncryptionMode::Aes256GcmRtpSize,
        EncryptionMode::XChaCha20Poly1305RtpSize,
    ];

    /// Modes this crate implements, best first (legacy modes last).
    #[cfg(feature = "legacy-xsalsa")]
    pub const PREFERENCE: [EncryptionMode; 5] = [
        EncryptionMode::Aes256GcmRtpSize,
        EncryptionMode::XChaCha20Poly1305RtpSize,
        EncryptionMode::XSalsa20Poly1305LiteRtpSize,
        EncryptionMode::XSalsa20Poly1305Lite,
        EncryptionMode::XSalsa20Poly1305,
    ];

    /// Discord's name of the mode.
    pub const fn as_str(self) -> &'static str {
        match self {
            EncryptionMode::Aes256GcmRtpSize => "aead_aes256_gcm_rtpsize",
            EncryptionMode::XChaCha20Poly1305RtpSize => "aead_xchacha20_poly1305_rtpsize",
            #[cfg(feature = "legacy-xsalsa")]
            EncryptionMode::XSalsa20Poly1305LiteRtpSize => "xsalsa20_poly1305_lite_rtpsize",
            #[cfg(feature = "legacy-xsalsa")]
            EncryptionMode::XSalsa20Poly1305Lite => "xsalsa20_poly1305_lite",
            #[cfg(feature = "legacy-xsalsa")]
            EncryptionMode::XSalsa20Poly1305 => "xsalsa20_poly1305",
        }
    }

    /// Whether the cleartext header follows the "rtpsize" rule (CSRCs and extension preamble in
    /// the clear). When false only the fixed 12-byte header is.
    pub const fn is_rtpsize(self) -> bool {
        match self {
            EncryptionMode::Aes256GcmRtpSize | EncryptionMode::XChaCha20Poly1305RtpSize => true,
            #[cfg(feature = "legacy-xsalsa")]
            EncryptionMode::XSalsa20Poly1305LiteRtpSize => true,
            #[cfg(feature = "legacy-xsalsa")]
            EncryptionMode::XSalsa20Poly1305Lite | EncryptionMode::XSalsa20Poly1305 => false,
        }
    }

    /// Whether Discord still accepts the mode (the two AEAD "rtpsize" ones). Legacy modes exist
    /// only behind the `legacy-xsalsa` feature, for test vectors; a client never picks them.
    pub const fn is_current(self) -> bool {
        matches!(
            self,
            EncryptionMode::Aes256GcmRtpSize | EncryptionMode::XChaCha20Poly1305RtpSize
        )
    }

    /// The best current mode among those a server offers (Ready's `modes`), if any.
    pub fn choose_current<'a>(offered: impl IntoIterator<Item = &'a str> + Clone) -> Option<Self> {
        Self::PREFERENCE
            .into_iter()
            .filter(|mode| mode.is_current())
            .find(|mode| offered.clone().into_iter().any(|s| s == mode.as_str()))
    }

    /// The best mode among those the server offers (Ready's `modes`), if any is supported.
    pub fn choose<'a>(offered: impl IntoIterator<Item = &'a str> + Clone) -> Option<Self> {
        Self::PREFERENCE
            .into_iter()
            .find(|mode| offered.clone().into_iter().any(|s| s == mode.as_str()))
    }
}

impl fmt::Display for EncryptionMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EncryptionMode {
    type Err = CryptoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::PREFERENCE
            .into_iter()
            .find(|mode| mode.as_str() == s)
            .ok_or(CryptoError::UnsupportedMode)
    }
}

/// The 32-byte `secret_key` of a Session Description. Zeroized on drop; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct SecretKey([u8; KEY_LEN]);

impl SecretKey {
    /// Wraps a key.
    pub fn new(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// Copies a key from a slice (the gateway's JSON array), which must be 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, CryptoError> {
        let array: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|_| CryptoError::KeyLength(bytes.len()))?;
        Ok(Self(array))
    }

    /// The key bytes.
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

enum Aead {
    // Boxed so the two variants (and every call holding one) stay small; both zeroize their key
    // schedule on drop.
    Aes(Box<Aes256Gcm>),
    XChaCha(Box<XChaCha20Poly1305>),
    #[cfg(feature = "legacy-xsalsa")]
    XSalsa(Box<crypto_secretbox::XSalsa20Poly1305>),
}

/// A keyed cipher for one mode: seals and opens packets with explicit nonces.
///
/// Use [`Sealer`] on the send side; it owns the nonce counter.
pub struct TransportCipher {
    mode: EncryptionMode,
    aead: Aead,
}

impl fmt::Debug for TransportCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransportCipher")
            .field("mode", &self.mode)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl TransportCipher {
    /// A cipher for `mode` under `key`.
    pub fn new(mode: EncryptionMode, key: &SecretKey) -> Self {
        let aead = match mode {
            EncryptionMode::Aes256GcmRtpSize => {
                Aead::Aes(Box::new(Aes256Gcm::new(key.expose().into())))
            }
            EncryptionMode::XChaCha20Poly1305RtpSize => {
                Aead::XChaCha(Box::new(XChaCha20Poly1305::new(key.expose().into())))
            }
            #[cfg(feature = "legacy-xsalsa")]
            EncryptionMode::XSalsa20Poly1305LiteRtpSize
            | EncryptionMode::XSalsa20Poly1305Lite
            | EncryptionMode::XSalsa20Poly1305 => Aead::XSalsa(Box::new(
                <crypto_secretbox::XSalsa20Poly1305 as KeyInit>::new(key.expose().into()),
            )),
        };
        Self { mode, aead }
    }

    /// The mode of this cipher.
    pub fn mode(&self) -> EncryptionMode {
        self.mode
    }

    fn encrypt(
        &self,
        nonce: &[u8],
        aad: &[u8],
        data: &mut [u8],
    ) -> Result<[u8; TAG_LEN], CryptoError> {
        let tag = match &self.aead {
            Aead::Aes(c) => {
                let mut n = [0u8; 12];
                n[..nonce.len()].copy_from_slice(nonce);
                c.encrypt_in_place_detached(&n.into(), aad, data)
            }
            Aead::XChaCha(c) => {
                let mut n = [0u8; 24];
                n[..nonce.len()].copy_from_slice(nonce);
                c.encrypt_in_place_detached(&n.into(), aad, data)
            }
            #[cfg(feature = "legacy-xsalsa")]
            Aead::XSalsa(c) => {
                // secretbox authenticates no associated data.
                let _ = aad;
                let mut n = [0u8; 24];
                n[..nonce.len()].copy_from_slice(nonce);
                c.encrypt_in_place_detached(&n.into(), b"", data)
            }
        }
        // Only fails for plaintexts beyond the AEAD's limits (GiB), far above any datagram.
        .map_err(|_| CryptoError::BufferTooSmall {
            needed: data.len(),
            have: 0,
        })?;
        Ok(tag.into())
    }

    fn decrypt(
        &self,
        nonce: &[u8],
        aad: &[u8],
        data: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), CryptoError> {
        match &self.aead {
            Aead::Aes(c) => {
                let mut n = [0u8; 12];
                n[..nonce.len()].copy_from_slice(nonce);
                c.decrypt_in_place_detached(&n.into(), aad, data, tag.into())
            }
            Aead::XChaCha(c) => {
                let mut n = [0u8; 24];
                n[..nonce.len()].copy_from_slice(nonce);
                c.decrypt_in_place_detached(&n.into(), aad, data, tag.into())
            }
            #[cfg(feature = "legacy-xsalsa")]
            Aead::XSalsa(c) => {
                let _ = aad;
                let mut n = [0u8; 24];
                n[..nonce.len()].copy_from_slice(nonce);
                c.decrypt_in_place_detached(&n.into(), b"", data, tag.into())
            }
        }
        .map_err(|_| CryptoError::Authentication)
    }

    /// Bytes a sealed packet adds to header + plaintext: tag and nonce suffix
    /// ([`SEAL_OVERHEAD`] for every mode except legacy `xsalsa20_poly1305`, which adds 16).
    pub fn overhead(&self) -> usize {
        match self.layout() {
            Layout::CiphertextTagNonce | Layout::TagCiphertextNonce => SEAL_OVERHEAD,
            Layout::TagCiphertext => TAG_LEN,
        }
    }

    fn layout(&self) -> Layout {
        match self.mode {
            EncryptionMode::Aes256GcmRtpSize | EncryptionMode::XChaCha20Poly1305RtpSize => {
                Layout::CiphertextTagNonce
            }
            #[cfg(feature = "legacy-xsalsa")]
            EncryptionMode::XSalsa20Poly1305LiteRtpSize | EncryptionMode::XSalsa20Poly1305Lite => {
                Layout::TagCiphertextNonce
            }
            #[cfg(feature = "legacy-xsalsa")]
            EncryptionMode::XSalsa20Poly1305 => Layout::TagCiphertext,
        }
    }

    /// Seals in place with an explicit nonce counter value. `buf[..aad_len]` is the cleartext
    /// header, `buf[aad_len..aad_len + plaintext_len]` the plaintext; tag and nonce are appended.
    /// Returns the packet length. Never reuse a nonce under one key: prefer [`Sealer`].
    pub fn seal_with_nonce(
        &self,
        buf: &mut [u8],
        aad_len: usize,
        plaintext_len: usize,
        nonce: u32,
    ) -> Result<usize, CryptoError> {
        let total = aad_len + plaintext_len + self.overhead();
        if buf.len() < total {
            return Err(CryptoError::BufferTooSmall {
                needed: total,
                have: buf.len(),
            });
        }
        let nonce_bytes = nonce.to_be_bytes();
        match self.layout() {
            Layout::CiphertextTagNonce => {
                let (aad, rest) = buf.split_at_mut(aad_len);
                let (body, trailer) = rest.split_at_mut(plaintext_len);
                let tag = self.encrypt(&nonce_bytes, aad, body)?;
                trailer[..TAG_LEN].copy_from_slice(&tag);
                trailer[TAG_LEN..SEAL_OVERHEAD].copy_from_slice(&nonce_bytes);
            }
            Layout::TagCiphertextNonce | Layout::TagCiphertext => {
                // secretbox puts the tag first: shift the plaintext to make room.
                buf.copy_within(aad_len..aad_len + plaintext_len, aad_len + TAG_LEN);
                let mut header_nonce = [0u8; HEADER_NONCE_LEN];
                let nonce: &[u8] = if self.layout() == Layout::TagCiphertext {
                    let k = HEADER_NONCE_LEN.min(aad_len);
                    header_nonce[..k].copy_from_slice(&buf[..k]);
                    &header_nonce
                } else {
                    &nonce_bytes
                };
                let (aad, rest) = buf.split_at_mut(aad_len);
                let (tag_slot, rest) = rest.split_at_mut(TAG_LEN);
                let (body, trailer) = rest.split_at_mut(plaintext_len);
                let tag = self.encrypt(nonce, aad, body)?;
                tag_slot.copy_from_slice(&tag);
                if self.layout() == Layout::TagCiphertextNonce {
                    trailer[..NONCE_SUFFIX_LEN].copy_from_slice(&nonce_bytes);
                }
            }
        }
        Ok(total)
    }

    /// Where tag, ciphertext and nonce sit in a sealed packet of `len` bytes.
    fn split(&self, len: usize, aad_len: usize) -> Result<Parts, CryptoError> {
        let needed = aad_len + self.overhead();
        if len < needed {
            return Err(CryptoError::BufferTooSmall { needed, have: len });
        }
        let body_len = len - needed;
        Ok(match self.layout() {
            Layout::CiphertextTagNonce => Parts {
                body: aad_len..aad_len + body_len,
                tag: aad_len + body_len,
                nonce: Some(len - NONCE_SUFFIX_LEN),
            },
            Layout::TagCiphertextNonce => Parts {
                body: aad_len + TAG_LEN..aad_len + TAG_LEN + body_len,
                tag: aad_len,
                nonce: Some(len - NONCE_SUFFIX_LEN),
            },
            Layout::TagCiphertext => Parts {
                body: aad_len + TAG_LEN..len,
                tag: aad_len,
                nonce: None,
            },
        })
    }

    fn nonce_of<'p>(&self, packet: &'p [u8], parts: &Parts) -> &'p [u8] {
        match parts.nonce {
            Some(at) => &packet[at..at + NONCE_SUFFIX_LEN],
            // Legacy `xsalsa20_poly1305`: the fixed header is the nonce.
            None => &packet[..HEADER_NONCE_LEN.min(packet.len())],
        }
    }

    /// Opens a sealed packet in place: authenticates `packet[..aad_len]` and decrypts the
    /// ciphertext, returning the plaintext (extension body + payload + padding) as a sub-slice.
    pub fn open_in_place<'a>(
        &self,
        packet: &'a mut [u8],
        aad_len: usize,
    ) -> Result<&'a mut [u8], CryptoError> {
        let parts = self.split(packet.len(), aad_len)?;
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&packet[parts.tag..parts.tag + TAG_LEN]);
        let mut nonce = [0u8; HEADER_NONCE_LEN];
        let n = self.nonce_of(packet, &parts);
        let nonce_len = n.len();
        nonce[..nonce_len].copy_from_slice(n);
        let (aad, rest) = packet.split_at_mut(aad_len);
        let body = &mut rest[parts.body.start - aad_len..parts.body.end - aad_len];
        self.decrypt(&nonce[..nonce_len], aad, body, &tag)?;
        Ok(body)
    }

    /// Opens a sealed packet into `out`, leaving the packet untouched. Returns the plaintext length.
    pub fn open_into(
        &self,
        packet: &[u8],
        aad_len: usize,
        out: &mut [u8],
    ) -> Result<usize, CryptoError> {
        let parts = self.split(packet.len(), aad_len)?;
        let body_len = parts.body.len();
        let out_len = out.len();
        let body_out = out.get_mut(..body_len).ok_or(CryptoError::BufferTooSmall {
            needed: body_len,
            have: out_len,
        })?;
        body_out.copy_from_slice(&packet[parts.body.clone()]);
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&packet[parts.tag..parts.tag + TAG_LEN]);
        let nonce = self.nonce_of(packet, &parts);
        self.decrypt(nonce, &packet[..aad_len], body_out, &tag)?;
        Ok(body_len)
    }
}

/// Byte order of a sealed packet after the cleartext header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// The AEAD "rtpsize" modes: ciphertext, tag, 4-byte nonce.
    CiphertextTagNonce,
    /// secretbox "lite" modes: tag, ciphertext, 4-byte nonce.
    #[cfg_attr(not(feature = "legacy-xsalsa"), allow(dead_code))]
    TagCiphertextNonce,
    /// Plain secretbox with the header as nonce: tag, ciphertext.
    #[cfg_attr(not(feature = "legacy-xsalsa"), allow(dead_code))]
    TagCiphertext,
}

/// Offsets of the sealed parts within a packet.
struct Parts {
    body: std::ops::Range<usize>,
    tag: usize,
    nonce: Option<usize>,
}

/// The legacy `xsalsa20_poly1305` nonce is the fixed 12-byte RTP header.
const HEADER_NONCE_LEN: usize = 12;

/// The per-packet nonce counter of one key: counts up (wrapping at 2^32) from its start value and
/// refuses once every value has been handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NonceCounter {
    next: u32,
    remaining: u64,
}

impl NonceCounter {
    /// A counter whose first nonce is `start`.
    pub fn new(start: u32) -> Self {
        Self {
            next: start,
            remaining: NONCE_SPACE,
        }
    }

    /// The next nonce, or [`CryptoError::NonceExhausted`] once all 2^32 have been used.
    pub fn take(&mut self) -> Result<u32, CryptoError> {
        if self.remaining == 0 {
            return Err(CryptoError::NonceExhausted);
        }
        self.remaining -= 1;
        let nonce = self.next;
        self.next = self.next.wrapping_add(1);
        Ok(nonce)
    }

    /// Nonces still available under this key.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }
}

/// Send side of transport encryption: a cipher plus its nonce counter.
#[derive(Debug)]
pub struct Sealer {
    cipher: TransportCipher,
    nonces: NonceCounter,
}

impl Sealer {
    /// A sealer for a fresh key whose nonce counter starts at a random value (as songbird does).
    pub fn new(mode: EncryptionMode, key: &SecretKey) -> Self {
        Self::with_nonce_start(mode, key, rand::random())
    }

    /// A sealer whose first nonce is `start`.
    pub fn with_nonce_start(mode: EncryptionMode, key: &SecretKey, start: u32) -> Self {
        Self {
            cipher: TransportCipher::new(mode, key),
            nonces: NonceCounter::new(start),
        }
    }

    /// The mode in use.
    pub fn mode(&self) -> EncryptionMode {
        self.cipher.mode()
    }

    /// The nonce counter (for inspection).
    pub fn nonces(&self) -> &NonceCounter {
        &self.nonces
    }

    /// Seals `buf[..aad_len + plaintext_len]` in place with the next nonce and appends tag and
    /// nonce; returns the packet length. The nonce is consumed only when sealing succeeds.
    pub fn seal(
        &mut self,
        buf: &mut [u8],
        aad_len: usize,
        plaintext_len: usize,
    ) -> Result<usize, CryptoError> {
        let mut next = self.nonces;
        let nonce = next.take()?;
        let len = self
            .cipher
            .seal_with_nonce(buf, aad_len, plaintext_len, nonce)?;
        self.nonces = next;
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretKey {
        SecretKey::new(core::array::from_fn(|i| i as u8))
    }

    #[test]
    fn mode_names_round_trip_and_preference() {
        for mode in EncryptionMode::PREFERENCE {
            assert_eq!(mode.as_str().parse::<EncryptionMode>(), Ok(mode));
            assert_eq!(mode.to_string(), mode.as_str());
        }
        assert!(
            "xsalsa20_poly1305_suffix"
                .parse::<EncryptionMode>()
                .is_err()
        );
        assert!("aead_aes256_gcm".parse::<EncryptionMode>().is_err());
        let offered = [
            "aead_xchacha20_poly1305_rtpsize",
            "xsalsa20_poly1305_lite_rtpsize",
            "aead_aes256_gcm_rtpsize",
        ];
        assert_eq!(
            EncryptionMode::choose(offered.iter().copied()),
            Some(EncryptionMode::Aes256GcmRtpSize)
        );
        assert_eq!(
            EncryptionMode::choose(["aead_xchacha20_poly1305_rtpsize"]),
            Some(EncryptionMode::XChaCha20Poly1305RtpSize)
        );
        assert_eq!(EncryptionMode::choose(["aead_aes256_gcm"]), None);
    }

    #[test]
    fn key_debug_is_redacted() {
        let k = key();
        assert_eq!(format!("{k:?}"), "SecretKey(<redacted>)");
        let c = TransportCipher::new(EncryptionMode::Aes256GcmRtpSize, &k);
        assert!(!format!("{c:?}").contains("0, 1, 2"));
        assert_eq!(
            SecretKey::from_slice(&[0; 31]).unwrap_err(),
            CryptoError::KeyLength(31)
        );
    }

    #[test]
    fn nonce_counter_crosses_wrap_then_refuses() {
        let mut sealer =
            Sealer::with_nonce_start(EncryptionMode::Aes256GcmRtpSize, &key(), u32::MAX - 1);
        let mut buf = [0u8; 12 + 3 + SEAL_OVERHEAD];
        let mut seen = Vec::new();
        for _ in 0..4 {
            let len = sealer.seal(&mut buf, 12, 3).unwrap(); // invariant: buffer sized for it
            seen.push(u32::from_be_bytes(
                buf[len - 4..len].try_into().expect("a 4-byte slice"),
            ));
        }
        assert_eq!(seen, [u32::MAX - 1, u32::MAX, 0, 1]);
        // Pretend all but two nonces of the key are used: the counter must stop, not wrap into
        // values already sent.
        sealer.nonces.remaining = 2;
        assert!(sealer.seal(&mut buf, 12, 3).is_ok());
        assert!(sealer.seal(&mut buf, 12, 3).is_ok());
        assert_eq!(
            sealer.seal(&mut buf, 12, 3),
            Err(CryptoError::NonceExhausted)
        );
        assert_eq!(
            sealer.seal(&mut buf, 12, 3),
            Err(CryptoError::NonceExhausted)
        );
    }

    #[test]
    fn full_nonce_space_is_exactly_two_to_the_32() {
        let mut counter = NonceCounter::new(5);
        counter.remaining = 1;
        assert_eq!(counter.take(), Ok(5));
        assert_eq!(counter.take(), Err(CryptoError::NonceExhausted));
        assert_eq!(NonceCounter::new(0).remaining(), 1 << 32);
    }

    #[test]
    fn failed_seal_does_not_consume_a_nonce() {
        let mut sealer = Sealer::with_nonce_start(EncryptionMode::Aes256GcmRtpSize, &key(), 9);
        assert!(sealer.seal(&mut [0u8; 10], 12, 3).is_err());
        assert_eq!(sealer.nonces().remaining(), NONCE_SPACE);
    }
}
