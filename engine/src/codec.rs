//! Opus encoder settings and construction (always off the real-time thread: libopus allocates).

use std::sync::OnceLock;

use audiopus::coder::Encoder;
use audiopus::{Application, Bitrate, Channels, SampleRate, Signal};

use crate::error::Result;

/// What the encoder optimises for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpusApplication {
    /// Speech intelligibility (VoIP).
    Voice,
    /// Fidelity for music and general audio.
    Music,
    /// Lowest algorithmic delay, at some cost in quality.
    LowDelay,
}

/// Encoder settings for a call. The defaults fit music bots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpusConfig {
    /// Target bitrate in bits per second (6,000–510,000). Default 96 kb/s, Discord's
    /// highest bitrate for a channel without boosts.
    pub bitrate: u32,
    /// 0 (fastest) to 10 (best). Default 10: ~110–130 µs per stereo frame here.
    pub complexity: u8,
    /// What the encoder optimises for. Default [`OpusApplication::Music`].
    pub application: OpusApplication,
    /// In-band forward error correction (only used by the SILK/voice modes).
    pub inband_fec: bool,
    /// Expected packet loss in percent, which tunes FEC.
    pub expected_loss_percent: u8,
}

impl Default for OpusConfig {
    fn default() -> Self {
        Self {
            bitrate: 96_000,
            complexity: 10,
            application: OpusApplication::Music,
            inband_fec: false,
            expected_loss_percent: 0,
        }
    }
}

impl OpusConfig {
    /// Samples (at 48 kHz) the encoder delays its output by: the `pre_skip` of an Ogg Opus file.
    pub fn encoder_lookahead(&self) -> Result<u16> {
        Ok(self.build_encoder()?.lookahead()?.min(u32::from(u16::MAX)) as u16)
    }

    /// The encoder's delay in 48 kHz samples (312 for libopus at 48 kHz, 120 in low-delay
    /// mode), measured once per application on a throwaway encoder (off the real-time thread:
    /// libopus allocates), so calls know it before they hold an encoder.
    pub(crate) fn lookahead_samples(&self) -> Result<usize> {
        static MEASURED: [OnceLock<usize>; 3] = [const { OnceLock::new() }; 3];
        let slot = &MEASURED[match self.application {
            OpusApplication::Voice => 0,
            OpusApplication::Music => 1,
            OpusApplication::LowDelay => 2,
        }];
        if let Some(samples) = slot.get() {
            return Ok(*samples);
        }
        let samples = self.build_encoder()?.lookahead()? as usize;
        Ok(*slot.get_or_init(|| samples))
    }

    /// Builds a 48 kHz stereo encoder with these settings.
    pub(crate) fn build_encoder(&self) -> Result<Encoder> {
        let application = match self.application {
            OpusApplication::Voice => Application::Voip,
            OpusApplication::Music => Application::Audio,
            OpusApplication::LowDelay => Application::LowDelay,
        };
        let mut encoder = Encoder::new(SampleRate::Hz48000, Channels::Stereo, application)?;
        encoder.set_bitrate(Bitrate::BitsPerSecond(
            self.bitrate.clamp(6_000, 510_000) as i32
        ))?;
        encoder.set_complexity(self.complexity.min(10))?;
        encoder.set_signal(match self.application {
            OpusApplication::Voice => Signal::Voice,
            _ => Signal::Music,
        })?;
        encoder.set_inband_fec(self.inband_fec)?;
        encoder.set_packet_loss_perc(self.expected_loss_percent.min(100))?;
        Ok(encoder)
    }
}
