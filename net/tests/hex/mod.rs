//! Shared by the known-answer tests: the vector files write bytes as hex, `-` for none.

pub fn hex(s: &str) -> Vec<u8> {
    if s == "-" {
        return Vec::new();
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("vector file holds valid hex"))
        .collect()
}
