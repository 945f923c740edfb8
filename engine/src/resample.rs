//! Per-source conversion to the mix format: rubato's FFT resampler (fixed 960-frame output) for
//! rates other than 48 kHz, and mono-to-stereo upmixing.

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler, WindowFunction};

use crate::error::{Error, Result};
use crate::frame::FRAME_SAMPLES;
use crate::pcm::{MIX_FRAME_LEN, MIX_RATE, MixFrame, PcmFormat};

/// FFT sub-chunks per 960-frame tick (see [`SourceResampler::new`]).
const SUB_CHUNKS: usize = 6;

/// Turns one source's interleaved PCM into 960-frame chunks of 48 kHz stereo.
///
/// All buffers are sized at construction, so [`SourceResampler::render`] never allocates.
pub(crate) struct SourceResampler {
    channels: usize,
    fft: Option<Box<Fft<f32>>>,
    /// Input for one chunk, interleaved at the source rate.
    input: Vec<f32>,
    /// The resampler's output for one chunk, interleaved at 48 kHz with the source's channels.
    resampled: Vec<f32>,
}

impl SourceResampler {
    pub(crate) fn new(format: PcmFormat) -> Result<Self> {
        let channels = usize::from(format.channels());
        let fft = if format.sample_rate() == MIX_RATE {
            None
        } else {
            // Six FFT sub-chunks of 160 output frames: measured here at 44.1 kHz stereo, 16.6 µs
            // a tick and 80 frames of delay, against 23.5 µs and 160 frames for rubato's default
            // of three. Rates whose ratio does not split six ways fall back to the default.
            let (rate_in, rate_out) = (format.sample_rate() as usize, MIX_RATE as usize);
            let fft = Fft::<f32>::new_custom(
                rate_in,
                rate_out,
                FRAME_SAMPLES,
                SUB_CHUNKS,
                channels,
                WindowFunction::BlackmanHarris2,
                FixedSync::Output,
            )
            .or_else(|_| {
                Fft::<f32>::new(
                    rate_in,
                    rate_out,
                    FRAME_SAMPLES,
                    channels,
                    FixedSync::Output,
                )
            })
            .map_err(|error| Error::Resampler(error.to_string()))?;
            Some(Box::new(fft))
        };
        let max_input = fft
            .as_ref()
            .map_or(FRAME_SAMPLES, |fft| fft.input_frames_max());
        Ok(Self {
            channels,
            input: vec![0.0; max_input * channels],
            resampled: vec![
                0.0;
                if fft.is_some() {
                    FRAME_SAMPLES * channels
                } else {
                    0
                }
            ],
            fft,
        })
    }

    pub(crate) fn channels(&self) -> usize {
        self.channels
    }

    /// Source frames the next chunk consumes.
    pub(crate) fn input_frames_next(&self) -> usize {
        self.fft
            .as_ref()
            .map_or(FRAME_SAMPLES, |fft| fft.input_frames_next())
    }

    /// The most source frames any chunk can consume.
    pub(crate) fn input_frames_max(&self) -> usize {
        self.input.len() / self.channels
    }

    /// Zero-input chunks needed after the last real input to flush the resampler's delay.
    pub(crate) fn tail_ticks(&self) -> u32 {
        self.fft
            .as_ref()
            .map_or(0, |fft| fft.output_delay().div_ceil(FRAME_SAMPLES) as u32)
    }

    /// Forgets the input seen so far (after a seek), without allocating.
    pub(crate) fn reset(&mut self) {
        if let Some(fft) = self.fft.as_mut() {
            fft.reset();
        }
    }

    /// Reads up to one chunk of input from `ring` (padding a shortfall with silence) and writes
    /// 960 frames of 48 kHz stereo to `out`. Returns how many samples it read.
    pub(crate) fn render(&mut self, ring: &mut rtrb::Consumer<f32>, out: &mut MixFrame) -> usize {
        let needed = self.input_frames_next();
        let wanted = needed * self.channels;
        let available = ring.slots() / self.channels * self.channels;
        let taken = wanted.min(available);
        let input = &mut self.input[..wanted];
        let (read, _) = ring.pop_partial_slice(&mut input[..taken]);
        let read = read.len();
        input[read..].fill(0.0);

        let chunk: &[f32] = match self.fft.as_mut() {
            None => input,
            Some(fft) => {
                let resampled = InterleavedSlice::new(&*input, self.channels, needed)
                    .ok()
                    .zip(
                        InterleavedSlice::new_mut(
                            &mut self.resampled[..],
                            self.channels,
                            FRAME_SAMPLES,
                        )
                        .ok(),
                    )
                    .map(|(input, mut output)| fft.process_into_buffer(&input, &mut output, None));
                if !matches!(resampled, Some(Ok(_))) {
                    // Sizes are fixed at construction, so this does not happen; if it ever
                    // did, a silent frame is the harmless answer on the real-time thread.
                    self.resampled.fill(0.0);
                }
                &self.resampled
            }
        };
        upmix_to_stereo(chunk, self.channels, out);
        read
    }
}

/// Copies a 960-frame chunk with 1 or 2 channels into an interleaved stereo frame.
fn upmix_to_stereo(chunk: &[f32], channels: usize, out: &mut MixFrame) {
    if channels == 2 {
        out.copy_from_slice(&chunk[..MIX_FRAME_LEN]);
    } else {
        for (pair, &sample) in out.chunks_exact_mut(2).zip(chunk) {
            pair[0] = sample;
            pair[1] = sample;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pcm::MIX_FRAME_LEN;

    fn sine(rate: u32, channels: usize, freq: f64, frames: usize) -> Vec<f32> {
        (0..frames)
            .flat_map(|i| {
                let value = (2.0 * std::f64::consts::PI * freq * i as f64 / f64::from(rate)).sin()
                    as f32
                    * 0.5;
                std::iter::repeat_n(value, channels)
            })
            .collect()
    }

    /// Frequency estimate from zero crossings of the left channel.
    fn frequency(stereo: &[f32]) -> f64 {
        let left: Vec<f32> = stereo.chunks_exact(2).map(|pair| pair[0]).collect();
        let crossings = left
            .windows(2)
            .filter(|w| w[0] < 0.0 && w[1] >= 0.0)
            .count();
        crossings as f64 * f64::from(MIX_RATE) / left.len() as f64
    }

    fn resample_seconds(rate: u32, channels: u8, freq: f64, seconds: usize) -> Vec<f32> {
        let format = PcmFormat::new(rate, channels).unwrap();
        let mut resampler = SourceResampler::new(format).unwrap();
        let input = sine(rate, usize::from(channels), freq, rate as usize * seconds);
        let (mut producer, mut consumer) = rtrb::RingBuffer::new(input.len());
        let (written, _) = producer.push_partial_slice(&input);
        assert_eq!(written.len(), input.len());
        let mut output = Vec::new();
        let mut frame = [0.0; MIX_FRAME_LEN];
        for _ in 0..(50 * seconds) {
            resampler.render(&mut consumer, &mut frame);
            output.extend_from_slice(&frame);
        }
        output
    }

    #[test]
    fn resampling_keeps_pitch_and_duration() {
        for (rate, channels) in [
            (44_100, 2),
            (22_050, 1),
            (8_000, 1),
            (96_000, 2),
            (192_000, 2),
            (48_000, 2),
        ] {
            let output = resample_seconds(rate, channels, 1_000.0, 2);
            assert_eq!(output.len(), 2 * 48_000 * 2, "{rate} Hz output length");
            // Skip the resampler's start-up delay before measuring.
            let measured = frequency(&output[9_600..]);
            assert!(
                (measured - 1_000.0).abs() < 5.0,
                "{rate} Hz x{channels}: measured {measured} Hz"
            );
        }
    }

    #[test]
    fn mono_is_duplicated_to_both_channels() {
        let output = resample_seconds(48_000, 1, 440.0, 1);
        assert!(output.chunks_exact(2).all(|pair| pair[0] == pair[1]));
        assert!(output.iter().any(|&s| s.abs() > 0.4));
    }

    #[test]
    fn a_short_input_is_padded_with_silence() {
        let format = PcmFormat::new(48_000, 2).unwrap();
        let mut resampler = SourceResampler::new(format).unwrap();
        let (mut producer, mut consumer) = rtrb::RingBuffer::new(4_000);
        let (written, _) = producer.push_partial_slice(&[0.25; 200]);
        assert_eq!(written.len(), 200);
        let mut frame = [1.0; MIX_FRAME_LEN];
        resampler.render(&mut consumer, &mut frame);
        assert!(frame[..200].iter().all(|&s| s == 0.25));
        assert!(frame[200..].iter().all(|&s| s == 0.0));
    }
}
