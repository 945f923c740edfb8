//! Per-source conversion to the mix format: FFT resampling for rates other than 48 kHz, and
//! mono-to-stereo upmixing.
//!
//! The resampler is rubato's `Fft` method (a windowed-sinc anti-aliasing filter applied in the
//! frequency domain, the spectrum cut or zero-extended to the output rate, overlap-add), with the
//! same filter, block sizes and delay, done here so that a tick costs less: both channels go
//! through one complex transform (left as the real part, right as the imaginary part; the
//! filter is real, so they do not mix). That is also the layout of interleaved stereo, so there
//! is no deinterleaving or interleaving copy, and none of the passes that real-input transforms
//! (realfft, under rubato) add around each channel's complex one. Measured with rubato, the
//! adapter copies and those passes were 30 % of a 44.1 kHz tick.

use std::sync::Arc;

use rustfft::num_complex::Complex;
use rustfft::{Fft, FftDirection, FftPlanner};

use crate::error::Result;
use crate::frame::FRAME_SAMPLES;
use crate::pcm::{MIX_RATE, MixFrame, PcmFormat};

/// Output frames wanted per FFT block: six blocks a tick. Measured here at 44.1 kHz stereo
/// (with rubato), 16.6 µs a tick and 80 frames of delay, against 23.5 µs and 160 frames for
/// three blocks. The block is rounded up to a whole multiple of what the rate ratio allows.
const BLOCK_OUT_WANTED: usize = FRAME_SAMPLES / 6;

const ZERO: Complex<f32> = Complex { re: 0.0, im: 0.0 };

/// Turns one source's interleaved PCM into 960-frame chunks of 48 kHz stereo.
///
/// All buffers are sized at construction, so [`SourceResampler::render`] never allocates.
pub(crate) struct SourceResampler {
    channels: usize,
    fft: Option<Box<FftResampler>>,
    /// Input for one chunk, interleaved at the source rate.
    input: Vec<f32>,
}

impl SourceResampler {
    pub(crate) fn new(format: PcmFormat) -> Result<Self> {
        let channels = usize::from(format.channels());
        let fft = (format.sample_rate() != MIX_RATE).then(|| {
            Box::new(FftResampler::new(
                format.sample_rate() as usize,
                MIX_RATE as usize,
            ))
        });
        let max_input = fft
            .as_ref()
            .map_or(FRAME_SAMPLES, |fft| fft.input_frames_max());
        Ok(Self {
            channels,
            input: vec![0.0; max_input * channels],
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
        if self.fft.is_none() && self.channels == 2 {
            // 48 kHz stereo is the mix format already: straight from the ring.
            let (read, _) = ring.pop_partial_slice(&mut out[..taken]);
            let read = read.len();
            out[read..].fill(0.0);
            return read;
        }
        let input = &mut self.input[..wanted];
        let (read, _) = ring.pop_partial_slice(&mut input[..taken]);
        let read = read.len();
        input[read..].fill(0.0);
        match self.fft.as_mut() {
            None => upmix_to_stereo(input, out),
            Some(fft) => fft.process(input, self.channels, out),
        }
        read
    }
}

/// Copies a 960-frame mono chunk into an interleaved stereo frame.
fn upmix_to_stereo(chunk: &[f32], out: &mut MixFrame) {
    for (pair, &sample) in out.chunks_exact_mut(2).zip(chunk) {
        pair[0] = sample;
        pair[1] = sample;
    }
}

/// Synchronous FFT resampling to a fixed 960 output frames per call (rubato's `Fft` with
/// `FixedSync::Output`, see the module documentation), on complex samples: left and right,
/// or mono and zero.
///
/// Each block of `block_in` input frames is zero-padded to twice its length, transformed,
/// multiplied by the filter's spectrum, cut (or zero-extended) to `2 × block_out` bins and
/// transformed back; the second half of the result overlaps the next block. Blocks produce
/// `block_out` frames, so a call may make a few frames more than 960: they are kept for the
/// next call, which then needs fewer blocks.
struct FftResampler {
    block_in: usize,
    block_out: usize,
    /// Positive-frequency bins carried over, the DC bin included.
    kept: usize,
    forward: Arc<dyn Fft<f32>>,
    inverse: Arc<dyn Fft<f32>>,
    /// The anti-aliasing filter's spectrum, all `2 × block_in` bins, scaled so that the
    /// unnormalised transform pair has unity gain.
    filter: Box<[Complex<f32>]>,
    spectrum_in: Box<[Complex<f32>]>,
    spectrum_out: Box<[Complex<f32>]>,
    scratch: Box<[Complex<f32>]>,
    /// The tail of the last block, added to the start of the next one.
    overlap: Box<[Complex<f32>]>,
    /// Output frames made so far in this call, then the ones kept for the next.
    output: Box<[Complex<f32>]>,
    /// Frames at the start of `output` kept from the last call.
    saved: usize,
}

impl FftResampler {
    fn new(rate_in: usize, rate_out: usize) -> Self {
        let gcd = gcd(rate_in, rate_out);
        let (min_in, min_out) = (rate_in / gcd, rate_out / gcd);
        let blocks = BLOCK_OUT_WANTED.div_ceil(min_out).max(1);
        let (block_in, block_out) = (blocks * min_in, blocks * min_out);
        let kept = if block_in < block_out {
            block_in + 1
        } else {
            block_out
        };
        let forward = plan(2 * block_in, FftDirection::Forward);
        let inverse = plan(2 * block_out, FftDirection::Inverse);
        let scratch_len = forward
            .get_inplace_scratch_len()
            .max(inverse.get_inplace_scratch_len());
        let mut scratch = vec![ZERO; scratch_len].into_boxed_slice();

        let mut filter = vec![ZERO; 2 * block_in].into_boxed_slice();
        let scale = 1.0 / (2 * block_in) as f64;
        for (bin, tap) in filter
            .iter_mut()
            .zip(windowed_sinc(block_in, cutoff(block_in, block_out)))
        {
            *bin = Complex::new((tap * scale) as f32, 0.0);
        }
        forward.process_with_scratch(&mut filter, &mut scratch);

        Self {
            block_in,
            block_out,
            kept,
            forward,
            inverse,
            filter,
            spectrum_in: vec![ZERO; 2 * block_in].into_boxed_slice(),
            spectrum_out: vec![ZERO; 2 * block_out].into_boxed_slice(),
            scratch,
            overlap: vec![ZERO; block_out].into_boxed_slice(),
            output: vec![ZERO; FRAME_SAMPLES + block_out].into_boxed_slice(),
            saved: 0,
        }
    }

    /// Blocks the next call runs.
    fn blocks_next(&self) -> usize {
        (FRAME_SAMPLES - self.saved).div_ceil(self.block_out)
    }

    fn input_frames_next(&self) -> usize {
        self.blocks_next() * self.block_in
    }

    fn input_frames_max(&self) -> usize {
        FRAME_SAMPLES.div_ceil(self.block_out) * self.block_in
    }

    /// Output frames by which the resampler delays its input.
    fn output_delay(&self) -> usize {
        self.block_out / 2
    }

    fn reset(&mut self) {
        self.overlap.fill(ZERO);
        self.output.fill(ZERO);
        self.saved = 0;
    }

    /// Resamples `input` (exactly [`FftResampler::input_frames_next`] frames, interleaved with
    /// `channels` channels) into 960 frames of interleaved stereo.
    fn process(&mut self, input: &[f32], channels: usize, out: &mut MixFrame) {
        let (block_in, block_out) = (self.block_in, self.block_out);
        let (len_in, len_out) = (2 * block_in, 2 * block_out);
        let blocks = self.blocks_next();
        for block in 0..blocks {
            let frames = &input[block * block_in * channels..][..block_in * channels];
            let (head, padding) = self.spectrum_in.split_at_mut(block_in);
            if channels == 2 {
                for (bin, pair) in head.iter_mut().zip(frames.chunks_exact(2)) {
                    *bin = Complex::new(pair[0], pair[1]);
                }
            } else {
                for (bin, &sample) in head.iter_mut().zip(frames) {
                    *bin = Complex::new(sample, 0.0);
                }
            }
            padding.fill(ZERO);
            self.forward
                .process_with_scratch(&mut self.spectrum_in, &mut self.scratch);

            // Filter, keeping the lowest `kept` frequencies of both signs; the rest is zero.
            let (spectrum, filter, kept) = (&self.spectrum_in, &self.filter, self.kept);
            let out_bins = &mut self.spectrum_out;
            let positive = out_bins[..kept].iter_mut();
            for ((bin, &s), &f) in positive.zip(&spectrum[..kept]).zip(&filter[..kept]) {
                *bin = s * f;
            }
            out_bins[kept..=len_out - kept].fill(ZERO);
            // Bin −k is bin `len − k`; with upsampling, the input's Nyquist bin lands on both
            // +`block_in` and −`block_in`, as rubato's real inverse transform places it.
            let (from_in, from_out) = (len_in + 1 - kept, len_out + 1 - kept);
            let negative = out_bins[from_out..].iter_mut();
            for ((bin, &s), &f) in negative.zip(&spectrum[from_in..]).zip(&filter[from_in..]) {
                *bin = s * f;
            }
            self.inverse
                .process_with_scratch(&mut self.spectrum_out, &mut self.scratch);

            let (head, tail) = self.spectrum_out.split_at(block_out);
            let made = &mut self.output[self.saved + block * block_out..][..block_out];
            for ((made, &new), &old) in made.iter_mut().zip(head).zip(self.overlap.iter()) {
                *made = new + old;
            }
            self.overlap.copy_from_slice(tail);
        }

        let frames = &self.output[..FRAME_SAMPLES];
        if channels == 2 {
            for (pair, frame) in out.chunks_exact_mut(2).zip(frames) {
                pair[0] = frame.re;
                pair[1] = frame.im;
            }
        } else {
            for (pair, frame) in out.chunks_exact_mut(2).zip(frames) {
                pair[0] = frame.re;
                pair[1] = frame.re;
            }
        }
        let produced = self.saved + blocks * block_out;
        self.output.copy_within(FRAME_SAMPLES..produced, 0);
        self.saved = produced - FRAME_SAMPLES;
    }
}

/// Plans a transform of `len` points (rustfft picks AVX or SSE at run time; 44.1 kHz's blocks of
/// 2·3·7² points are radix passes it has butterflies for).
fn plan(len: usize, direction: FftDirection) -> Arc<dyn Fft<f32>> {
    FftPlanner::new().plan_fft(len, direction)
}

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The anti-aliasing filter's relative cutoff for blocks of `block_in` input and `block_out`
/// output frames (rubato's fit for its squared Blackman-Harris window, below the lower of the
/// two Nyquist frequencies).
fn cutoff(block_in: usize, block_out: usize) -> f64 {
    let fit = |points: usize| {
        let n = points as f64;
        let (k1, k2, k3) = (
            13.745_202_940_783_823,
            121.735_325_863_749_34,
            5_964.163_279_612_051,
        );
        1.0 / (k1 / n + k2 / (n * n) + k3 / (n * n * n) + 1.0)
    };
    if block_in > block_out {
        fit(block_out) * block_out as f64 / block_in as f64
    } else {
        fit(block_in)
    }
}

/// `points` taps of a sinc with relative cutoff `cutoff`, windowed by a squared periodic
/// Blackman-Harris window and normalised to unity gain at DC.
fn windowed_sinc(points: usize, cutoff: f64) -> Vec<f64> {
    use std::f64::consts::PI;
    let n = points as f64;
    let taps: Vec<f64> = (0..points)
        .map(|i| {
            let phase = 2.0 * PI * i as f64 / n;
            let window = 0.35875 - 0.48829 * phase.cos() + 0.14128 * (2.0 * phase).cos()
                - 0.01168 * (3.0 * phase).cos();
            let x = (i as f64 - (points / 2) as f64) * cutoff * PI;
            let sinc = if x == 0.0 { 1.0 } else { x.sin() / x };
            window * window * sinc
        })
        .collect();
    let sum: f64 = taps.iter().sum();
    taps.into_iter().map(|tap| tap / sum).collect()
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

    /// Rubato's `Fft`, set up as this module's resampler was before it did the work itself.
    fn rubato_reference(rate: u32, channels: usize) -> rubato::Fft<f32> {
        rubato::Fft::<f32>::new_custom(
            rate as usize,
            MIX_RATE as usize,
            FRAME_SAMPLES,
            6,
            channels,
            rubato::WindowFunction::BlackmanHarris2,
            rubato::FixedSync::Output,
        )
        .unwrap()
    }

    #[test]
    fn output_matches_rubato() {
        use rubato::Resampler;
        use rubato::audioadapter_buffers::direct::InterleavedSlice;

        for (rate, channels) in [
            (44_100, 2),
            (22_050, 1),
            (11_025, 2),
            (8_000, 1),
            (32_000, 2),
            (96_000, 2),
            (192_000, 1),
        ] {
            let format = PcmFormat::new(rate, channels as u8).unwrap();
            let mut ours = SourceResampler::new(format).unwrap();
            let mut reference = rubato_reference(rate, channels);
            assert_eq!(ours.input_frames_max(), reference.input_frames_max());
            assert_eq!(
                ours.tail_ticks() as usize,
                reference.output_delay().div_ceil(960)
            );
            // A tone plus noise from a fixed generator, different in each channel.
            let mut state = 0x2545_f491_u32;
            let mut noise = move || {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                state as f32 / u32::MAX as f32 - 0.5
            };
            let (mut producer, mut consumer) = rtrb::RingBuffer::new(rate as usize * 2);
            let mut written = 0;
            let mut frame = [0.0; MIX_FRAME_LEN];
            let mut expected = vec![0.0; FRAME_SAMPLES * channels];
            let mut largest: f32 = 0.0;
            for tick in 0..25 {
                let needed = ours.input_frames_next();
                assert_eq!(
                    needed,
                    reference.input_frames_next(),
                    "{rate} Hz tick {tick}"
                );
                let input: Vec<f32> = (0..needed * channels)
                    .map(|i| {
                        let t = (written + i / channels) as f32 / rate as f32;
                        (t * 1_000.0 * std::f32::consts::TAU).sin() * 0.4 + noise() * 0.2
                    })
                    .collect();
                written += needed;
                // The last ticks get no input: both flush their delay lines with silence.
                if tick < 22 {
                    assert_eq!(producer.push_partial_slice(&input).0.len(), input.len());
                }
                let fed = if tick < 22 {
                    input
                } else {
                    vec![0.0; needed * channels]
                };
                ours.render(&mut consumer, &mut frame);
                let input = InterleavedSlice::new(&fed[..], channels, needed).unwrap();
                let mut output =
                    InterleavedSlice::new_mut(&mut expected[..], channels, FRAME_SAMPLES).unwrap();
                reference
                    .process_into_buffer(&input, &mut output, None)
                    .unwrap();
                for (i, pair) in frame.chunks_exact(2).enumerate() {
                    for (c, &sample) in pair.iter().enumerate() {
                        let want = expected[i * channels + c.min(channels - 1)];
                        largest = largest.max((sample - want).abs());
                    }
                }
            }
            assert!(
                largest < 1e-5,
                "{rate} Hz x{channels}: differs by {largest}"
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
