//! The per-sender hash ratchet of RFC 9420 §9.1 over HKDF-SHA256, as DAVE uses it:
//! `key_g = DeriveTreeSecret(s_g, "key", g, 16)` and `s_{g+1} = DeriveTreeSecret(s_g, "secret", g,
//! 32)`, starting from the 16-byte exported base secret `s_0`.
//!
//! HKDF-Expand is written out over HMAC rather than taken from the `hkdf` crate: `Hkdf::from_prk`
//! refuses a PRK shorter than the hash (the base secret has 16 bytes), while MLS++ (libdave) and
//! davey key HMAC with whatever length they get. Every output here is at most one SHA-256 block,
//! so the expansion is a single HMAC over `info ‖ 0x01`, fed piecewise: nothing is allocated.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

/// The MLS 1.0 label prefix of `ExpandWithLabel`.
const LABEL_PREFIX: &[u8] = b"MLS 1.0 ";
/// SHA-256 output, the longest derivation here.
const HASH_LEN: usize = 32;
/// AES-128 key length.
pub(crate) const KEY_LEN: usize = 16;

/// `ExpandWithLabel(secret, label, context, out.len())` (RFC 9420 §8) with HKDF-SHA256; `out` is
/// at most 32 bytes.
pub(crate) fn expand_with_label(secret: &[u8], label: &[u8], context: &[u8], out: &mut [u8]) {
    debug_assert!(out.len() <= HASH_LEN);
    // KDFLabel { uint16 length; opaque label<V>; opaque context<V>; } with the MLS varint length
    // prefixes; labels and contexts here are far below 64 bytes, so one length byte each.
    let full_label_len = LABEL_PREFIX.len() + label.len();
    debug_assert!(full_label_len < 64 && context.len() < 64);
    // HMAC takes keys of any length, so `new_from_slice` cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
    mac.update(&(out.len() as u16).to_be_bytes());
    mac.update(&[full_label_len as u8]);
    mac.update(LABEL_PREFIX);
    mac.update(label);
    mac.update(&[context.len() as u8]);
    mac.update(context);
    // HKDF-Expand's block counter: one block suffices.
    mac.update(&[1]);
    let mut block = mac.finalize().into_bytes();
    out.copy_from_slice(&block[..out.len()]);
    block.as_mut_slice().zeroize();
}

/// `DeriveTreeSecret(secret, label, generation, out.len())` (RFC 9420 §9.1).
pub(crate) fn derive_tree_secret(secret: &[u8], label: &[u8], generation: u32, out: &mut [u8]) {
    expand_with_label(secret, label, &generation.to_be_bytes(), out);
}

/// A forward-only ratchet: it holds the secret of the next generation it can produce; keys of
/// generations it has passed cannot be derived again.
pub(crate) struct Ratchet {
    secret: [u8; HASH_LEN],
    secret_len: usize,
    next_generation: u64,
}

impl Drop for Ratchet {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

impl Ratchet {
    /// A ratchet whose generation-0 secret is `secret` (16 bytes for DAVE, up to 32).
    pub(crate) fn new(secret: &[u8]) -> Self {
        let secret_len = secret.len().min(HASH_LEN);
        let mut buf = [0u8; HASH_LEN];
        buf[..secret_len].copy_from_slice(&secret[..secret_len]);
        Self {
            secret: buf,
            secret_len,
            next_generation: 0,
        }
    }

    /// The lowest generation whose key can still be derived.
    #[cfg(test)]
    pub(crate) fn next_generation(&self) -> u64 {
        self.next_generation
    }

    /// The key of `generation`, stepping the ratchet past it (skipping the keys of any generations
    /// in between). `None` when the ratchet has already passed `generation`.
    pub(crate) fn key(&mut self, generation: u32) -> Option<Zeroizing<[u8; KEY_LEN]>> {
        if u64::from(generation) < self.next_generation {
            return None;
        }
        while self.next_generation < u64::from(generation) {
            self.step(self.next_generation as u32);
        }
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        derive_tree_secret(
            &self.secret[..self.secret_len],
            b"key",
            generation,
            key.as_mut(),
        );
        self.step(generation);
        Some(key)
    }

    fn step(&mut self, generation: u32) {
        let mut next = [0u8; HASH_LEN];
        derive_tree_secret(
            &self.secret[..self.secret_len],
            b"secret",
            generation,
            &mut next,
        );
        self.secret = next;
        next.zeroize();
        self.secret_len = HASH_LEN;
        self.next_generation = u64::from(generation) + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    /// RFC 9420 secret-tree test vector (mls-implementations `secret-tree.json`, first entry:
    /// cipher suite 1, whose KDF (HKDF-SHA256) and AEAD key length (16) are those of suite 2 and
    /// of DAVE). A one-leaf tree, so the leaf secret is the encryption secret; the application
    /// and handshake ratchets start from `ExpandWithLabel(leaf, "application"/"handshake", "",
    /// 32)` and the vector gives their keys at generations 0 and 15.
    #[test]
    fn rfc9420_secret_tree_vector() {
        let leaf = hex("d69fcc35969e94680461974bd26c7cda7594cbf45985c4bf668c3b3118b765ab");
        let cases = [
            (
                &b"application"[..],
                "442e691710646617a21e41482d868a4e",
                "0f2d1b9e1d5c09abefb0edabd8349e9f",
            ),
            (
                &b"handshake"[..],
                "a2d6b8a9255478e9b79a076872ae3563",
                "6121c93d8e92e76320087e5d646a3bf2",
            ),
        ];
        for (label, key0, key15) in cases {
            let mut start = [0u8; 32];
            expand_with_label(&leaf, label, b"", &mut start);
            let mut ratchet = Ratchet::new(&start);
            assert_eq!(&ratchet.key(0).expect("fresh")[..], &hex(key0)[..]);
            assert_eq!(&ratchet.key(15).expect("ahead")[..], &hex(key15)[..]);
            // Stepping one generation at a time gives the same key as jumping.
            let mut stepwise = Ratchet::new(&start);
            for g in 0..15 {
                stepwise.key(g).expect("ahead");
            }
            assert_eq!(&stepwise.key(15).expect("ahead")[..], &hex(key15)[..]);
        }
    }

    #[test]
    fn passed_generations_are_gone() {
        let mut ratchet = Ratchet::new(&[7u8; 16]);
        let k3 = ratchet.key(3).expect("ahead");
        assert_eq!(ratchet.next_generation(), 4);
        assert!(ratchet.key(3).is_none(), "forward only");
        assert!(ratchet.key(0).is_none());
        let mut again = Ratchet::new(&[7u8; 16]);
        assert_eq!(again.key(3).expect("ahead")[..], k3[..], "deterministic");
        let other = Ratchet::new(&[8u8; 16]).key(3).expect("ahead");
        assert_ne!(other[..], k3[..], "depends on the base secret");
    }

    #[test]
    fn info_encoding_matches_rfc_kdf_label() {
        // The 16-byte base secret keys HMAC directly (no HKDF-Extract); the info string is
        // 00 10 | 0b "MLS 1.0 key" | 04 00 00 00 00 | 01.
        let secret = [0x42u8; 16];
        let mut ours = [0u8; 16];
        derive_tree_secret(&secret, b"key", 0, &mut ours);
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&secret).expect("any length");
        let mut info = vec![0x00, 0x10, 11];
        info.extend_from_slice(b"MLS 1.0 key");
        info.extend_from_slice(&[4, 0, 0, 0, 0, 1]);
        mac.update(&info);
        assert_eq!(ours[..], mac.finalize().into_bytes()[..16]);
    }
}
