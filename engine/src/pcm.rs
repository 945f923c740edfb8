//! PCM formats accepted from producers, and the 48 kHz stereo format the mixer works in.

use crate::error::{Error, Result};
use crate::frame::FRAME_SAMPLES;

/// Sample rate of everything after resampling (Opus's native rate, and Discord's).
pub const MIX_RATE: u32 = 48_000;

/// Interleaved stereo samples in one 20 ms mix frame.
pub const MIX_FRAME_LEN: usize = FRAME_SAMPLES * 2;

/// One 20 ms frame of 48 kHz interleaved stereo f32.
pub type MixFrame = [f32; MIX_FRAME_LEN];

/// Lowest and highest sample rates a source may have.
pub const RATE_RANGE: std::ops::RangeInclusive<u32> = 8_000..=192_000;

/// The shape of the interleaved PCM a producer writes: its sample rate and channel count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PcmFormat {
    sample_rate: u32,
    channels: u8,
}

impl PcmFormat {
    /// Checks the format: rates 8–192 kHz, mono or stereo.
    pub fn new(sample_rate: u32, channels: u8) -> Result<Self> {
        if !RATE_RANGE.contains(&sample_rate) {
            return Err(Error::UnsupportedFormat(format!(
                "sample rate {sample_rate} Hz is outside 8000–192000 Hz"
            )));
        }
        if !(1..=2).contains(&channels) {
            return Err(Error::UnsupportedFormat(format!(
                "{channels} channels; only mono and stereo are supported"
            )));
        }
        Ok(Self {
            sample_rate,
            channels,
        })
    }

    /// 48 kHz stereo, the mixer's own format (no resampling needed).
    pub const STEREO_48K: Self = Self {
        sample_rate: MIX_RATE,
        channels: 2,
    };

    /// Frames per second.
    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// 1 (mono) or 2 (interleaved stereo).
    pub fn channels(&self) -> u8 {
        self.channels
    }

    /// Interleaved samples in `duration` of audio, rounded up to whole frames.
    pub fn samples_in(&self, duration: std::time::Duration) -> usize {
        let frames = (duration.as_secs_f64() * f64::from(self.sample_rate)).ceil() as usize;
        frames * usize::from(self.channels)
    }
}

/// Converts a 16-bit sample to the f32 range −1.0..1.0.
#[inline]
pub fn i16_to_f32(sample: i16) -> f32 {
    f32::from(sample) / 32_768.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_limits_are_enforced() {
        assert!(PcmFormat::new(8_000, 1).is_ok());
        assert!(PcmFormat::new(192_000, 2).is_ok());
        assert!(PcmFormat::new(7_999, 1).is_err());
        assert!(PcmFormat::new(192_001, 2).is_err());
        assert!(PcmFormat::new(48_000, 0).is_err());
        assert!(PcmFormat::new(48_000, 3).is_err());
    }

    #[test]
    fn i16_conversion_spans_the_unit_range() {
        assert_eq!(i16_to_f32(0), 0.0);
        assert_eq!(i16_to_f32(i16::MIN), -1.0);
        assert!(i16_to_f32(i16::MAX) < 1.0);
    }
}
