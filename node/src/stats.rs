//! The `stats` object of `/v4/stats` and the websocket's `stats` op: players, uptime, memory
//! and CPU of this process (from /proc), and — on the websocket — `frameStats`.
//!
//! `frameStats` (per playing player, averaged over the interval since the previous `stats`
//! message, as Lavalink reports them) comes from the engine's real counters:
//! * `sent`: packets the sender handed to the kernel in the interval (`SenderStats::
//!   packets_sent`, all calls), divided by the players playing at the end of the interval;
//! * `nulled`: 20 ms frames the playing tracks could not supply in time (the sum of their
//!   sources' `SourceStats::underruns` growth; the engine sends silence in their place, so
//!   these frames are also in `sent`);
//! * `deficit`: the frames the playing players should have sent in the interval (one per
//!   20 ms each) minus `sent`, never below 0.
//!
//! A player counts as playing when its call's connection is up and its track runs unpaused.
//! `frameStats` is `null` when no player plays, as in Lavalink.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Process and system CPU time at the previous sample, for loads over an interval.
#[derive(Debug, Default)]
pub(crate) struct Sampler {
    cpu: Option<(Instant, u64, u64, u64)>,
    frames: Option<(Instant, u64)>,
}

/// Clock ticks of this process (utime + stime) from /proc/self/stat.
fn process_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which may contain spaces, closed by the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// (busy, total) clock ticks of the whole system from /proc/stat.
fn system_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let values: Vec<u64> = line
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = values.iter().sum();
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    Some((total - idle.min(total), total))
}

fn meminfo_bytes(key: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

impl Sampler {
    /// (systemLoad, lavalinkLoad) since the previous call, each 0–1 of all cores.
    fn loads(&mut self) -> (f64, f64) {
        let now = Instant::now();
        let (Some(process), Some((busy, total))) = (process_ticks(), system_ticks()) else {
            return (0.0, 0.0);
        };
        let previous = self.cpu.replace((now, process, busy, total));
        let Some((_, p0, b0, t0)) = previous else {
            return (0.0, 0.0);
        };
        let dt = total.saturating_sub(t0);
        if dt == 0 {
            return (0.0, 0.0);
        }
        let system = busy.saturating_sub(b0) as f64 / dt as f64;
        // /proc/stat's total counts every core's ticks; the process's ticks are per core too.
        let process = process.saturating_sub(p0) as f64 / dt as f64;
        (system.clamp(0.0, 1.0), process.clamp(0.0, 1.0))
    }

    /// `frameStats` for `playing` players whose sources underran `nulled` frames since the
    /// previous call, with the sender's running packet count `packets_sent`.
    pub(crate) fn frame_stats(&mut self, packets_sent: u64, playing: u64, nulled: u64) -> Value {
        let now = Instant::now();
        let previous = self.frames.replace((now, packets_sent));
        let Some((then, sent0)) = previous else {
            return Value::Null;
        };
        if playing == 0 {
            return Value::Null;
        }
        let elapsed = now.duration_since(then);
        let expected = (elapsed.as_millis() / 20) as u64;
        let sent = packets_sent.saturating_sub(sent0) / playing;
        json!({
            "sent": sent,
            "nulled": nulled / playing,
            "deficit": expected.saturating_sub(sent),
        })
    }
}

/// The stats object (without `frameStats`, which the caller adds).
pub(crate) fn stats_json(
    sampler: &mut Sampler,
    uptime: Duration,
    players: usize,
    playing: usize,
) -> Value {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let (system_load, lavalink_load) = sampler.loads();
    let used = rss_bytes();
    json!({
        "players": players,
        "playingPlayers": playing,
        "uptime": uptime.as_millis() as u64,
        "memory": {
            "free": meminfo_bytes("MemAvailable:"),
            "used": used,
            "allocated": used,
            "reservable": meminfo_bytes("MemTotal:"),
        },
        "cpu": {
            "cores": cores,
            "systemLoad": system_load,
            "lavalinkLoad": lavalink_load,
        },
        "frameStats": Value::Null,
    })
}
