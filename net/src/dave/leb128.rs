//! Unsigned LEB128, as DAVE writes the frame nonce and the unencrypted ranges: seven bits per
//! byte, least significant group first, high bit set on every byte but the last.

/// Longest encoding of a `u64`.
pub const MAX_LEN: usize = 10;

/// Bytes needed to encode `value`.
pub const fn encoded_len(value: u64) -> usize {
    let mut len = 1;
    let mut rest = value >> 7;
    while rest != 0 {
        len += 1;
        rest >>= 7;
    }
    len
}

/// Writes `value` at the start of `out`; `None` when `out` is too short.
pub fn write(value: u64, out: &mut [u8]) -> Option<usize> {
    let len = encoded_len(value);
    let dst = out.get_mut(..len)?;
    let mut rest = value;
    for (i, byte) in dst.iter_mut().enumerate() {
        let low = (rest & 0x7F) as u8;
        rest >>= 7;
        *byte = if i + 1 < len { low | 0x80 } else { low };
    }
    Some(len)
}

/// Reads one value from the start of `input`: the value and the bytes it took. `None` when the
/// input ends inside the value or the value does not fit 64 bits. Like libdave, a non-minimal
/// encoding (`80 00`) is accepted.
pub fn read(input: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, &byte) in input.iter().take(MAX_LEN).enumerate() {
        let low = u64::from(byte & 0x7F);
        let shift = 7 * i as u32;
        // The tenth byte may only carry the 64th bit.
        if i == MAX_LEN - 1 && byte > 1 {
            return None;
        }
        value |= low << shift;
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_encodings() {
        let cases: [(u64, &[u8]); 7] = [
            (0, &[0x00]),
            (1, &[0x01]),
            (127, &[0x7F]),
            (128, &[0x80, 0x01]),
            (300, &[0xAC, 0x02]),
            (u64::from(u32::MAX), &[0xFF, 0xFF, 0xFF, 0xFF, 0x0F]),
            (
                u64::MAX,
                &[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
            ),
        ];
        for (value, bytes) in cases {
            let mut buf = [0u8; MAX_LEN];
            assert_eq!(write(value, &mut buf), Some(bytes.len()), "{value}");
            assert_eq!(&buf[..bytes.len()], bytes, "{value}");
            assert_eq!(encoded_len(value), bytes.len());
            assert_eq!(read(bytes), Some((value, bytes.len())), "{value}");
        }
    }

    #[test]
    fn round_trip_and_trailing_bytes() {
        for shift in 0..64 {
            for delta in [0u64, 1, 0x55] {
                let value = (1u64 << shift).wrapping_add(delta);
                let mut buf = [0xEEu8; MAX_LEN + 2];
                let n = write(value, &mut buf).expect("fits");
                assert_eq!(
                    read(&buf),
                    Some((value, n)),
                    "trailing bytes are left alone"
                );
            }
        }
    }

    #[test]
    fn garbage_is_refused() {
        assert_eq!(read(&[]), None, "empty");
        assert_eq!(read(&[0x80]), None, "ends inside the value");
        assert_eq!(read(&[0xFF; 9]), None, "ends inside the value");
        let mut too_big = [0xFF; MAX_LEN];
        too_big[9] = 0x02;
        assert_eq!(read(&too_big), None, "65th bit");
        assert_eq!(read(&[0xFF; 11]), None, "no terminator within ten bytes");
        assert_eq!(read(&[0x80, 0x00]), Some((0, 2)), "non-minimal accepted");
        let mut short = [0u8; 1];
        assert_eq!(write(128, &mut short), None);
    }
}
