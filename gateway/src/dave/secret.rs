//! One member's sender base secret for one epoch.

use zeroize::Zeroize;

/// `MLS-Exporter("Discord Secure Frames v0", u64_le(user_id), 16)` for one member and epoch
/// (PROTOCOL.md §6): the root of that member's frame-key ratchet. Zeroized on drop; `Debug`
/// never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct EpochSecret([u8; 16]);

impl EpochSecret {
    /// Wraps exported bytes.
    pub fn new(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// The secret bytes, for building the media threads' keys.
    pub fn expose(&self) -> &[u8; 16] {
        &self.0
    }
}

impl Drop for EpochSecret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl std::fmt::Debug for EpochSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EpochSecret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_secret() {
        let s = EpochSecret::new([0x5A; 16]);
        let shown = format!("{s:?}");
        assert!(!shown.to_lowercase().contains("5a"), "{shown}");
        assert!(!shown.contains("90"), "{shown}");
    }
}
