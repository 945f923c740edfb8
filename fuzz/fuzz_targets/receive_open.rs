//! Opening received RTP/RTCP under both modes. With a fixed key almost every input fails
//! authentication; the target checks that nothing before or after that panics. The first byte
//! picks the mode and whether the rest is sealed first, so the post-decryption parsing (extension
//! body, padding) is reached too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quaver_net::crypto::{EncryptionMode, SecretKey, TransportCipher};
use quaver_net::receive::{open_rtcp, open_rtp};
use quaver_net::rtp::RtpHeader;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let mode = EncryptionMode::PREFERENCE[usize::from(selector & 1)];
    let cipher = TransportCipher::new(mode, &SecretKey::new([0x5A; 32]));
    let mut out = [0u8; 2048];
    let _ = open_rtp(&cipher, rest, &mut out);
    let _ = open_rtcp(&cipher, rest, &mut out);
    if selector & 2 != 0 && rest.len() < 1400 {
        // Seal the input as if it were a well-formed packet, then open it.
        if let Ok(h) = RtpHeader::parse(rest) {
            let mut buf = [0u8; 1500];
            buf[..rest.len()].copy_from_slice(rest);
            if let Ok(n) =
                cipher.seal_with_nonce(&mut buf, h.cleartext_len, rest.len() - h.cleartext_len, 1)
            {
                let _ = open_rtp(&cipher, &buf[..n], &mut out);
            }
        }
    }
});
