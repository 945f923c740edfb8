//! Value parsers for the `quaver` command line: every number a user types is checked here
//! (finite, in range) so the rest of the program never sees NaN, infinity, a negative length or
//! a value that overflows a `Duration`, and a bad value is a usage error naming its flag.

use std::time::Duration;

/// Longest `--seconds` of a `demo` or `jitter` run: an hour. Longer runs measure nothing new,
/// and the latency probe keeps a record per packet sent.
pub const MAX_RUN_SECONDS: f64 = 3_600.0;

/// Most calls one `demo` or `jitter` run may open. Each call is a websocket, a UDP socket and
/// (against the in-process server) the server's side of both, plus threads on that server.
pub const MAX_CALLS: usize = 5_000;

/// Longest delay or interval any flag accepts: a day. Anything longer is a typo.
pub const MAX_SECONDS: f64 = 86_400.0;

/// Largest per-file volume of `play` (linear gain; 1.0 leaves a file unchanged).
pub const MAX_VOLUME: f32 = 16.0;

/// Opus bitrates `render` accepts, in bits per second (the encoder's own range).
pub const BITRATES: std::ops::RangeInclusive<u32> = 6_000..=510_000;

/// Most heartbeat intervals `serve --heartbeat-timeout` may wait.
const MAX_TIMEOUT_INTERVALS: f64 = 1_000.0;

fn finite(s: &str, unit: &str) -> Result<f64, String> {
    let value: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number{unit}"))?;
    if !value.is_finite() {
        return Err(format!("{s} is not a finite number{unit}"));
    }
    Ok(value)
}

fn within(value: f64, min: f64, max: f64, what: &str) -> Result<f64, String> {
    if value < min || value > max {
        return Err(format!("{what} must be between {min} and {max}"));
    }
    Ok(value)
}

/// A delay in seconds, zero to a day: `serve --drop-ws-after`.
pub fn seconds(s: &str) -> Result<Duration, String> {
    let value = within(finite(s, " of seconds")?, 0.0, MAX_SECONDS, "seconds")?;
    Duration::try_from_secs_f64(value).map_err(|e| format!("{s}: {e}"))
}

/// How long a `demo` or `jitter` run lasts: above zero, at most [`MAX_RUN_SECONDS`].
pub fn run_length(s: &str) -> Result<Duration, String> {
    let value = finite(s, " of seconds")?;
    if value <= 0.0 {
        return Err("the run must last longer than 0 seconds".into());
    }
    let value = within(value, 0.0, MAX_RUN_SECONDS, "seconds")?;
    let length = Duration::try_from_secs_f64(value).map_err(|e| format!("{s}: {e}"))?;
    // Shorter than one 20 ms frame would send nothing at all.
    if length < Duration::from_millis(20) {
        return Err("the run must last at least 0.02 seconds (one frame)".into());
    }
    Ok(length)
}

/// An interval in milliseconds, above zero and at most a day: `serve --heartbeat-interval`.
pub fn interval_ms(s: &str) -> Result<f64, String> {
    let value = finite(s, " of milliseconds")?;
    if value <= 0.0 {
        return Err("the interval must be longer than 0 ms".into());
    }
    within(value, 0.0, MAX_SECONDS * 1_000.0, "milliseconds")
}

/// A number of heartbeat intervals, 0 (never) to 1,000: `serve --heartbeat-timeout`.
pub fn intervals(s: &str) -> Result<f64, String> {
    within(
        finite(s, "")?,
        0.0,
        MAX_TIMEOUT_INTERVALS,
        "the number of intervals",
    )
}

/// A percentage, 0 to 100.
pub fn percent(s: &str) -> Result<f64, String> {
    within(finite(s, "")?, 0.0, 100.0, "a percentage")
}

/// A linear volume, 0 (silent) to [`MAX_VOLUME`].
pub fn volume(s: &str) -> Result<f32, String> {
    let value = within(finite(s, "")?, 0.0, f64::from(MAX_VOLUME), "the volume")?;
    Ok(value as f32)
}

/// A number of calls, 1 to [`MAX_CALLS`].
pub fn calls(s: &str) -> Result<usize, String> {
    count(s, "calls", MAX_CALLS)
}

/// A number of phase groups, 1 to [`quaver::net::sender::MAX_PHASE_GROUPS`].
pub fn phase_groups(s: &str) -> Result<usize, String> {
    count(s, "phase groups", quaver::net::sender::MAX_PHASE_GROUPS)
}

/// Calls a phase group takes, 1 to [`MAX_CALLS`].
pub fn calls_per_group(s: &str) -> Result<usize, String> {
    count(s, "calls per group", MAX_CALLS)
}

/// A whole number of `what`, 1 to `max`.
fn count(s: &str, what: &str, max: usize) -> Result<usize, String> {
    let value: u128 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number of {what}"))?;
    match usize::try_from(value) {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("the number of {what} must be between 1 and {max}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_from_outside_never_reach_duration_unchecked() {
        for bad in ["inf", "-inf", "NaN", "-1", "1e300", "86400.5", "", "ten"] {
            assert!(seconds(bad).is_err(), "{bad}");
        }
        assert_eq!(seconds("0"), Ok(Duration::ZERO));
        assert_eq!(seconds("1.5"), Ok(Duration::from_millis(1_500)));
        for bad in ["0", "-0", "0.001", "nan", "inf", "3600.1", "1e9"] {
            assert!(run_length(bad).is_err(), "{bad}");
        }
        assert_eq!(run_length("3600"), Ok(Duration::from_secs(3_600)));
        for bad in ["0", "-5", "nan", "1e300", "inf"] {
            assert!(interval_ms(bad).is_err(), "{bad}");
        }
        assert_eq!(interval_ms("13750"), Ok(13_750.0));
    }

    #[test]
    fn counts_volumes_and_percentages_stay_in_range() {
        for bad in [
            "0",
            "-1",
            "5001",
            "18446744073709551615",
            "18446744073709551616",
            "x",
        ] {
            assert!(calls(bad).is_err(), "{bad}");
        }
        assert_eq!(calls("5000"), Ok(5_000));
        for bad in ["0", "21", "-1", "2.5"] {
            assert!(phase_groups(bad).is_err(), "{bad}");
        }
        assert_eq!(phase_groups("20"), Ok(20));
        assert!(calls_per_group("0").is_err());
        assert_eq!(calls_per_group(" 8 "), Ok(8));
        for bad in ["nan", "-0.1", "inf", "16.01"] {
            assert!(volume(bad).is_err(), "{bad}");
        }
        assert_eq!(volume("0.5"), Ok(0.5));
        for bad in ["nan", "-1", "100.1"] {
            assert!(percent(bad).is_err(), "{bad}");
        }
        assert_eq!(intervals("0"), Ok(0.0));
        assert!(intervals("inf").is_err());
    }
}
