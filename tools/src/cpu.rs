//! CPU time of Quaver's own threads, read from `/proc/self/task`, so a report can leave out
//! the in-process server and the measuring threads.

use std::time::Duration;

/// User plus system time of every thread whose name starts with `quaver-` (the mixer, engine
/// worker, sender, driver, control and discovery threads), except the embedded server's
/// `quaver-serve…` threads. Zero where `/proc` is unavailable.
pub fn quaver_thread_time() -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let mut ticks = 0_u64;
    for task in tasks.flatten() {
        let path = task.path();
        let Ok(name) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        let name = name.trim();
        if !name.starts_with("quaver-") || name.starts_with("quaver-serve") {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue;
        };
        // Fields after the parenthesised name: utime and stime are the 12th and 13th.
        let Some(after_name) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
            continue;
        };
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let field = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        ticks += field(11) + field(12);
    }
    Duration::from_nanos(ticks.saturating_mul(1_000_000_000 / ticks_per_second))
}

/// Jiffies the whole machine spent in each state, from the first line of `/proc/stat`.
#[derive(Debug, Clone, Copy, Default)]
pub struct MachineTimes {
    total: u64,
    steal: u64,
}

impl MachineTimes {
    /// Now (zero where `/proc/stat` is unavailable).
    pub fn now() -> Self {
        let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
            return Self::default();
        };
        let Some(line) = stat.lines().next() else {
            return Self::default();
        };
        let values: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        Self {
            total: values.iter().take(8).sum(),
            steal: values.get(7).copied().unwrap_or(0),
        }
    }

    /// Percent of the machine's time since `earlier` that the hypervisor gave to other guests.
    /// On a shared VM this explains timing noise no program can avoid.
    pub fn steal_percent_since(&self, earlier: &Self) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            0.0
        } else {
            self.steal.saturating_sub(earlier.steal) as f64 * 100.0 / total as f64
        }
    }
}
