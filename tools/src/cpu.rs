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
        let Ok(name) = std::fs::read_to_string(path.join("comm")) else { continue };
        let name = name.trim();
        if !name.starts_with("quaver-") || name.starts_with("quaver-serve") {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else { continue };
        // Fields after the parenthesised name: utime and stime are the 12th and 13th.
        let Some(after_name) = stat.rsplit_once(')').map(|(_, rest)| rest) else { continue };
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        ticks += field(11) + field(12);
    }
    Duration::from_nanos(ticks.saturating_mul(1_000_000_000 / ticks_per_second))
}
