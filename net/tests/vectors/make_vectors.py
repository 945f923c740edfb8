#!/usr/bin/env python3
"""Known-answer vectors for Quaver's transport encryption, computed independently of the Rust code.

AES-256-GCM comes from `cryptography` (OpenSSL); IETF XChaCha20-Poly1305 from PyNaCl (libsodium).
Layout per PROTOCOL.md section 5 ("rtpsize"): packet = header | ciphertext | tag(16) | nonce(4, BE);
AAD = header (incl. the 4-byte extension preamble when X=1); nonce = N0..N3 followed by zeros.

Output: one vector per line, space-separated:
    mode key_hex nonce header_hex plaintext_hex packet_hex
Run:  python3 make_vectors.py > transport.txt
      python3 make_vectors.py legacy > legacy.txt

The legacy secretbox modes (PyNaCl crypto_secretbox: tag first, then ciphertext) go to legacy.txt:
  xsalsa20_poly1305_lite_rtpsize  header(rtpsize) | tag | ct | nonce(4)   nonce = N0..N3 + 20 zeros
  xsalsa20_poly1305_lite          header(12)      | tag | ct | nonce(4)   (CSRCs/extension encrypted)
  xsalsa20_poly1305               header(12)      | tag | ct             nonce = header(12) + 12 zeros
"""
import sys
import hashlib
import struct

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_encrypt, crypto_secretbox


def det(label, n):
    """Deterministic pseudo-random bytes, so the file is reproducible."""
    out = b""
    i = 0
    while len(out) < n:
        out += hashlib.sha256(f"{label}/{i}".encode()).digest()
        i += 1
    return out[:n]


def seal(mode, key, nonce, header, plaintext):
    suffix = struct.pack(">I", nonce)
    if mode == "aead_aes256_gcm_rtpsize":
        ct_tag = AESGCM(key).encrypt(suffix + bytes(8), plaintext, header)
    elif mode == "aead_xchacha20_poly1305_rtpsize":
        ct_tag = crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, header, suffix + bytes(20), key)
    else:
        raise ValueError(mode)
    return header + ct_tag + suffix


def rtp_header(seq, ts, ssrc, csrcs=(), ext_words=None, padding=False, profile=0xBEDE):
    b0 = 0x80 | (0x20 if padding else 0) | (0x10 if ext_words is not None else 0) | len(csrcs)
    h = struct.pack(">BBHII", b0, 0x78, seq, ts, ssrc)
    for c in csrcs:
        h += struct.pack(">I", c)
    if ext_words is not None:
        h += struct.pack(">HH", profile, ext_words)
    return h


CASES = [
    # name, header, plaintext (ext body + payload + padding), nonce
    ("opus", rtp_header(1, 960, 0x11223344), det("opus", 120), 1),
    ("silence", rtp_header(65535, 0xFFFFFC40, 42), bytes([0xF8, 0xFF, 0xFE]), 0xFFFFFFFF),
    ("empty", rtp_header(0, 0, 0), b"", 0),
    ("extension", rtp_header(7, 7 * 960, 5, ext_words=2), det("ext", 8) + det("ext-payload", 60), 0x01020304),
    ("csrc-ext-padding", rtp_header(9, 1, 2, csrcs=(0xA, 0xB), ext_words=1, padding=True),
     det("cep", 4) + det("cep-payload", 33) + bytes([0, 0, 3]), 0x80000000),
    ("large", rtp_header(1234, 5678, 9), det("large", 1275), 77),
]

MODES = ["aead_aes256_gcm_rtpsize", "aead_xchacha20_poly1305_rtpsize"]


def seal_legacy(mode, key, nonce, header, plaintext):
    suffix = struct.pack(">I", nonce)
    if mode in ("xsalsa20_poly1305_lite_rtpsize", "xsalsa20_poly1305_lite"):
        return header + crypto_secretbox(plaintext, suffix + bytes(20), key) + suffix
    if mode == "xsalsa20_poly1305":
        return header + crypto_secretbox(plaintext, header[:12] + bytes(12), key)
    raise ValueError(mode)


def legacy():
    for mode in ["xsalsa20_poly1305_lite_rtpsize", "xsalsa20_poly1305_lite", "xsalsa20_poly1305"]:
        for name, header, plaintext, nonce in CASES:
            if mode != "xsalsa20_poly1305_lite_rtpsize" and len(header) > 12:
                # Non-rtpsize modes keep only the fixed header in the clear.
                header, plaintext = header[:12], header[12:] + plaintext
            if mode == "xsalsa20_poly1305":
                nonce = 0
            key = det(f"key/{mode}/{name}", 32)
            packet = seal_legacy(mode, key, nonce, header, plaintext)
            print(mode, key.hex(), nonce, header.hex(), plaintext.hex() or "-", packet.hex())


def main():
    if sys.argv[1:] == ["legacy"]:
        legacy()
        return
    for mode in MODES:
        for name, header, plaintext, nonce in CASES:
            key = det(f"key/{mode}/{name}", 32)
            packet = seal(mode, key, nonce, header, plaintext)
            print(mode, key.hex(), nonce, header.hex(), plaintext.hex() or "-", packet.hex())


if __name__ == "__main__":
    main()
