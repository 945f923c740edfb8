//! CPU time of Quaver's own threads, read from `/proc/self/task`, so a report can leave out
//! the in-process server and the measuring threads.

use std::time::Duration;

/// User plus system time of every thread whose name starts with `quaver-` (the mixer, engine
/// worker, sender, receive, driver, control and discovery threads), except the embedded
/// server's `quaver-serve…` threads. Zero where `/proc` is unavailable.
pub fn quaver_thread_time() -> Duration {
    quaver_thread_time_where(|_| true)
}

/// As [`quaver_thread_time`], for the threads whose IDs `include` accepts.
pub fn quaver_thread_time_where(include: impl Fn(u32) -> bool) -> Duration {
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let ticks: u64 = quaver_threads()
        .into_iter()
        .filter(|(tid, _)| include(*tid))
        .map(|(_, ticks)| ticks)
        .sum();
    Duration::from_nanos(ticks.saturating_mul(1_000_000_000 / ticks_per_second))
}

/// The IDs of the process's `quaver-` threads (the embedded server's excepted) now: what a
/// second engine started afterwards adds can be told apart.
pub fn quaver_thread_ids() -> Vec<u32> {
    quaver_threads().into_iter().map(|(tid, _)| tid).collect()
}

/// Each `quaver-` thread's ID and CPU time in clock ticks.
fn quaver_threads() -> Vec<(u32, u64)> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    let mut threads = Vec::new();
    for task in tasks.flatten() {
        let path = task.path();
        let Some(tid) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
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
        threads.push((tid, field(11) + field(12)));
    }
    threads
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

    /// Percent of the machine's time since `earlier` that the hypervisor gave to other guests;
    /// `None` when `/proc/stat` did not say. On a shared VM this explains timing noise no
    /// program can avoid.
    pub fn steal_percent_since(&self, earlier: &Self) -> Option<f64> {
        let total = self.total.saturating_sub(earlier.total);
        (total > 0).then(|| self.steal.saturating_sub(earlier.steal) as f64 * 100.0 / total as f64)
    }
}
