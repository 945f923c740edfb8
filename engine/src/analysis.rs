//! Signal measurements for checking audio that went through the engine: used by its tests, the
//! end-to-end tests, and the demo's report.

/// Power of the `freq` Hz component of `signal` sampled at `rate` Hz (Goertzel), normalised by
/// the length so signals of different lengths compare. A full-scale sine scores about 0.25.
pub fn tone_power(signal: &[f32], freq: f64, rate: u32) -> f64 {
    if signal.is_empty() {
        return 0.0;
    }
    let w = 2.0 * std::f64::consts::PI * freq / f64::from(rate);
    let coefficient = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0_f64, 0.0_f64);
    for &x in signal {
        let s0 = f64::from(x) + coefficient * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    (s1 * s1 + s2 * s2 - coefficient * s1 * s2) / (signal.len() as f64).powi(2)
}

/// Root-mean-square level of `signal`.
pub fn rms(signal: &[f32]) -> f64 {
    if signal.is_empty() {
        return 0.0;
    }
    (signal.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / signal.len() as f64).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sine_scores_at_its_frequency_only() {
        let sine: Vec<f32> = (0..48_000)
            .map(|i| (2.0 * std::f32::consts::PI * 1_000.0 * i as f32 / 48_000.0).sin())
            .collect();
        assert!((tone_power(&sine, 1_000.0, 48_000) - 0.25).abs() < 0.01);
        assert!(tone_power(&sine, 1_300.0, 48_000) < 1e-6);
        assert!((rms(&sine) - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-3);
        assert_eq!(tone_power(&[], 1_000.0, 48_000), 0.0);
    }
}
