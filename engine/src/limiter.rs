//! Keeps the mix inside full scale without wrap-around or hard-clipping artefacts: a look-ahead
//! peak limiter (the whole 20 ms frame is known before it is encoded) followed by a soft clipper
//! that rounds off whatever the limiter's short attack ramp lets through.

use crate::pcm::MixFrame;

/// Peak level the limiter aims for (about −1 dBFS).
const CEILING: f32 = 0.89;
/// Where the soft clipper's curve starts; below it samples pass unchanged.
const KNEE: f32 = 0.9;
/// Samples over which a gain reduction is applied (1 ms at 48 kHz stereo), short enough to catch
/// the frame's peak in most cases and long enough not to click.
const ATTACK_SAMPLES: usize = 96;
/// Largest gain increase per frame while recovering (about 0.4 dB per 20 ms, 20 dB/s), slow
/// enough that the recovery is not heard as pumping.
const RELEASE_PER_FRAME: f32 = 1.05;

/// Per-call limiter state: the gain applied at the end of the last frame.
#[derive(Debug, Clone)]
pub(crate) struct Limiter {
    gain: f32,
}

impl Default for Limiter {
    fn default() -> Self {
        Self { gain: 1.0 }
    }
}

impl Limiter {
    /// Limits and soft-clips `frame` in place. Afterwards every sample is strictly inside −1..1.
    pub(crate) fn process(&mut self, frame: &mut MixFrame) {
        let (peak, within_knee) = scan(frame);
        let wanted = if peak > CEILING { CEILING / peak } else { 1.0 };
        let start = self.gain;
        if wanted < start {
            // Attack: reach the new gain quickly, then hold it for the rest of the frame.
            for (i, sample) in frame.iter_mut().enumerate() {
                let t = (i as f32 / ATTACK_SAMPLES as f32).min(1.0);
                *sample *= start + (wanted - start) * t;
            }
            self.gain = wanted;
        } else {
            // Release: recover gradually, ramped across the frame.
            let end = wanted.min(start * RELEASE_PER_FRAME);
            if start != 1.0 || end != 1.0 {
                let step = (end - start) / frame.len() as f32;
                for (i, sample) in frame.iter_mut().enumerate() {
                    *sample *= start + step * i as f32;
                }
            }
            self.gain = end;
        }
        // The gain never exceeds 1, so samples within the knee stayed there, and the clipper
        // passes them unchanged: with none outside it (the usual case), it has nothing to do.
        if !within_knee {
            for sample in frame.iter_mut() {
                *sample = soft_clip(*sample);
            }
        }
    }
}

/// The frame's largest magnitude (NaN ignored, as `f32::max` does) and whether every sample is
/// within the clipper's knee (NaN is not). Kept in independent lanes so that it vectorises: a
/// single running maximum is a chain the compiler may not reorder.
fn scan(frame: &MixFrame) -> (f32, bool) {
    const LANES: usize = 16;
    let mut peaks = [0.0_f32; LANES];
    let mut within = [true; LANES];
    for chunk in frame.chunks_exact(LANES) {
        for ((peak, within), sample) in peaks.iter_mut().zip(&mut within).zip(chunk) {
            let magnitude = sample.abs();
            // False for NaN, which therefore never becomes the peak.
            if magnitude > *peak {
                *peak = magnitude;
            }
            *within &= magnitude <= KNEE;
        }
    }
    (
        peaks.iter().fold(0.0_f32, |peak, &lane| peak.max(lane)),
        within.iter().all(|&within| within),
    )
}

/// Identity below the knee, then a tanh curve that approaches but never reaches full scale.
/// NaN (from a misbehaving producer) becomes silence rather than noise.
#[inline]
pub(crate) fn soft_clip(sample: f32) -> f32 {
    let magnitude = sample.abs();
    if magnitude <= KNEE {
        return sample;
    }
    if magnitude.is_nan() {
        return 0.0;
    }
    let headroom = 1.0 - KNEE;
    let clipped = KNEE + headroom * ((magnitude - KNEE) / headroom).tanh();
    clipped.min(0.999_99).copysign(sample)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pcm::MIX_FRAME_LEN;

    #[test]
    fn quiet_audio_passes_unchanged() {
        let mut limiter = Limiter::default();
        let mut frame = [0.0; MIX_FRAME_LEN];
        for (i, s) in frame.iter_mut().enumerate() {
            *s = (i as f32 * 0.01).sin() * 0.5;
        }
        let original = frame;
        limiter.process(&mut frame);
        assert_eq!(frame, original);
    }

    #[test]
    fn soft_clip_is_monotonic_bounded_and_odd() {
        let mut last = -f32::INFINITY;
        for i in -10_000..=10_000 {
            let x = i as f32 / 100.0;
            let y = soft_clip(x);
            assert!(y.abs() < 1.0, "soft_clip({x}) = {y}");
            assert!(y >= last, "not monotonic at {x}");
            assert_eq!(soft_clip(-x), -y);
            last = y;
        }
        assert_eq!(soft_clip(f32::NAN), 0.0);
        assert!(soft_clip(f32::INFINITY) < 1.0);
    }

    #[test]
    fn loud_frames_are_brought_under_the_ceiling_after_the_attack() {
        let mut limiter = Limiter::default();
        let mut frame = [0.0; MIX_FRAME_LEN];
        for (i, s) in frame.iter_mut().enumerate() {
            *s = ((i / 2) as f32 * 0.2).sin() * 40.0;
        }
        limiter.process(&mut frame);
        assert!(frame.iter().all(|s| s.abs() < 1.0));
        assert!(
            frame[ATTACK_SAMPLES..]
                .iter()
                .all(|s| s.abs() <= CEILING + 1e-4)
        );
    }

    #[test]
    fn nan_becomes_silence_and_does_not_move_the_gain() {
        let mut limiter = Limiter::default();
        let mut frame = [0.25; MIX_FRAME_LEN];
        frame[17] = f32::NAN;
        frame[1_900] = -f32::NAN;
        limiter.process(&mut frame);
        assert_eq!(limiter.gain, 1.0);
        assert_eq!((frame[17], frame[1_900]), (0.0, 0.0));
        assert!(
            frame
                .iter()
                .enumerate()
                .all(|(i, &s)| i == 17 || i == 1_900 || s == 0.25)
        );
    }

    #[test]
    fn a_peak_inside_the_attack_is_clipped() {
        let mut limiter = Limiter::default();
        let mut frame = [0.1; MIX_FRAME_LEN];
        // Early in the attack ramp the gain is still close to 1: the clipper rounds it off.
        frame[10] = -3.0;
        limiter.process(&mut frame);
        assert!(frame.iter().all(|s| s.abs() < 1.0));
        assert!(frame[10] < -KNEE);
        assert!(limiter.gain < 1.0);
    }

    #[test]
    fn gain_recovers_slowly_after_a_loud_frame() {
        let mut limiter = Limiter::default();
        let mut loud = [4.0; MIX_FRAME_LEN];
        limiter.process(&mut loud);
        let reduced = limiter.gain;
        let mut quiet = [0.1; MIX_FRAME_LEN];
        limiter.process(&mut quiet);
        assert!(limiter.gain > reduced && limiter.gain <= reduced * RELEASE_PER_FRAME + 1e-6);
        // The release ramp is continuous: no step between neighbouring samples.
        assert!(quiet.windows(2).all(|w| (w[1] - w[0]).abs() < 1e-4));
    }
}
