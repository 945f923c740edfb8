//! The baseline senders the jitter tool runs beside Quaver's, same machine, same run, measured by
//! the same server:
//!
//! - [`Pacing::Sleep`] is what other voice libraries do: one loop that sleeps until the next 20 ms
//!   deadline, then seals and sends each call's packet in turn.
//! - [`Pacing::Floor`] does as little as a sender can: packets sealed ahead, a `SCHED_FIFO`
//!   thread that sleeps and spins to each phase group's deadline (the groups Quaver's sender
//!   uses), then one `send(2)` per call and nothing else. It measures the machine, not a
//!   library: on the VM of 2026-12-07, 10 plain loopback sends from such a thread every 2 ms
//!   (a 60-line probe outside the project, 10,000 batches a run) took over 100 µs in 1.2–2 % of
//!   batches, p99 134–165 µs, whatever the spin before them and whichever CPU the reader ran on;
//!   a sender's p99 does not get below that there. Its fixed 200 µs spin per group costs ~10 %
//!   of a core at 100 calls, which the run's other threads feel: Quaver's own tail in a floor
//!   run is a little worse than in a run alone. With one call, where the timer's late wake-ups
//!   decide the tail, it shows what a 200 µs spin gets; Quaver's sender spins less (see
//!   `quaver::net::sender`'s spin window) and pays for it at p99.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use quaver::PhaseConfig;
use quaver::engine::Grid;
use quaver::engine::pacer::{Pacer, SchedulingRequest, configure_current_thread};
use quaver::net::crypto::Sealer;
use quaver::net::rtp::RtpStream;

use crate::session::RawSession;

/// The period.
const TICK: Duration = Duration::from_millis(20);
/// The floor sender's spin before each deadline: the most Quaver's sender spins by default
/// (`quaver::engine::pacer::DEFAULT_SPIN`), always, so that it never spins too short.
const FLOOR_SPIN: Duration = quaver::engine::pacer::DEFAULT_SPIN;

/// Which baseline sender runs beside Quaver's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BaselineKind {
    /// Sleep to each 20 ms deadline, then seal and send every call in turn.
    Sleep,
    /// The bare precise sender: the machine's floor (see the module's documentation).
    Floor,
}

impl BaselineKind {
    /// One line on what the sender does, for the report.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Sleep => "sleep to each deadline, one send after another",
            Self::Floor => {
                "a bare real-time sender: packets sealed ahead, a spin to each phase group's deadline, one send(2) per call"
            }
        }
    }

    /// Its name on charts.
    pub fn label(self) -> &'static str {
        match self {
            Self::Sleep => "baseline (sleep-paced sender)",
            Self::Floor => "floor (bare real-time sender)",
        }
    }
}

/// How a baseline sender paces its sends.
#[derive(Debug, Clone, Copy)]
pub enum Pacing {
    /// [`BaselineKind::Sleep`].
    Sleep,
    /// [`BaselineKind::Floor`]: calls in these phase groups, each group's packets sealed before
    /// its deadline and sent at it from a real-time thread. Its groups sit half a group's
    /// spacing after those of Quaver's sender on `grid`, so the two never spin for the same
    /// instant.
    Floor {
        /// The groups, as Quaver's sender is configured.
        phases: PhaseConfig,
        /// Quaver's grid.
        grid: Grid,
    },
}

/// Sends a loop of packets on every session until stopped.
pub struct BaselineSender {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u64>>,
}

/// One call of a baseline sender.
struct Call {
    session: RawSession,
    rtp: RtpStream,
    sealer: Sealer,
}

impl Call {
    fn new(session: RawSession) -> Self {
        Self {
            rtp: RtpStream::new(session.ssrc),
            sealer: Sealer::new(session.mode, &session.key),
            session,
        }
    }

    /// Writes the next packet carrying `payload` into `buffer`; its length, or `None` if it
    /// could not be built.
    fn seal(&mut self, payload: &[u8], buffer: &mut [u8]) -> Option<usize> {
        let header = self.rtp.write_next(buffer).ok()?;
        buffer
            .get_mut(header..header + payload.len())?
            .copy_from_slice(payload);
        self.sealer.seal(buffer, header, payload.len()).ok()
    }
}

impl BaselineSender {
    /// Starts the sending thread: every 20 ms, the next of `packets` (cycling through them) on
    /// every session, paced as `pacing` says.
    pub fn start(
        sessions: Vec<RawSession>,
        packets: Arc<Vec<Vec<u8>>>,
        pacing: Pacing,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("jitter-baseline".into())
                .spawn(move || {
                    let calls = sessions.into_iter().map(Call::new).collect();
                    match pacing {
                        Pacing::Sleep => run_sleep(calls, &packets, &stop),
                        Pacing::Floor { phases, grid } => {
                            run_floor(calls, &packets, phases, grid, &stop)
                        }
                    }
                })?
        };
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops and returns the packets sent.
    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or(0)
    }
}

impl Drop for BaselineSender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// [`Pacing::Sleep`]; returns the packets sent.
fn run_sleep(mut calls: Vec<Call>, packets: &[Vec<u8>], stop: &AtomicBool) -> u64 {
    let start = Instant::now();
    let mut buffer = [0_u8; 1500];
    let mut sent = 0_u64;
    for tick in 0_u32.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let deadline = start + TICK * tick;
        std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
        let payload = &packets[tick as usize % packets.len()];
        for call in &mut calls {
            if let Some(len) = call.seal(payload, &mut buffer) {
                sent += u64::from(call.session.socket.send(&buffer[..len]).is_ok());
            }
        }
    }
    sent
}

/// [`Pacing::Floor`]; returns the packets sent.
fn run_floor(
    mut calls: Vec<Call>,
    packets: &[Vec<u8>],
    phases: PhaseConfig,
    grid: Grid,
    stop: &AtomicBool,
) -> u64 {
    // The priority Quaver's sender asks for by default, so the two compete on equal terms.
    configure_current_thread(SchedulingRequest::default());
    let pacer = Pacer::new(FLOOR_SPIN);
    let groups = phases
        .groups
        .clamp(1, quaver::net::sender::MAX_PHASE_GROUPS);
    let spacing = TICK / groups as u32;
    let members = floor_groups(calls.len(), groups, phases.calls_per_group);
    let mut sealed = vec![([0_u8; 1500], 0_usize); calls.len()];
    let start = grid.deadline(grid.tick_at_or_after(Instant::now()) + 1) + spacing / 2;
    let mut sent = 0_u64;
    for tick in 0_u32.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let payload = &packets[tick as usize % packets.len()];
        for (group, members) in members.iter().enumerate() {
            if members.is_empty() {
                continue;
            }
            for &i in members {
                let (buffer, len) = &mut sealed[i];
                *len = calls[i].seal(payload, buffer).unwrap_or(0);
            }
            pacer.wait_until(start + TICK * tick + spacing * group as u32);
            for &i in members {
                let (buffer, len) = &sealed[i];
                if *len > 0 {
                    sent += u64::from(calls[i].session.socket.send(&buffer[..*len]).is_ok());
                }
            }
        }
    }
    sent
}

/// The calls of each of `groups` phase groups, placed as Quaver's sender places them: a group
/// takes `per_group` calls before the next opens, and beyond that each call joins the emptiest.
fn floor_groups(calls: usize, groups: usize, per_group: usize) -> Vec<Vec<usize>> {
    let per_group = per_group.max(1);
    let mut members = vec![Vec::new(); groups.max(1)];
    for call in 0..calls {
        let open = members.iter().position(|m| m.len() < per_group);
        let group = open.unwrap_or_else(|| {
            (0..members.len())
                .min_by_key(|&g| members[g].len())
                .unwrap_or(0)
        });
        members[group].push(call);
    }
    members
}

#[cfg(test)]
mod tests {
    use super::floor_groups;

    #[test]
    fn floor_groups_fill_like_the_sender() {
        let sizes = |calls, groups, per| -> Vec<usize> {
            floor_groups(calls, groups, per)
                .iter()
                .map(Vec::len)
                .collect()
        };
        assert_eq!(sizes(1, 10, 10), [1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(sizes(25, 10, 10), [10, 10, 5, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(sizes(103, 10, 10), [11, 11, 11, 10, 10, 10, 10, 10, 10, 10]);
        assert_eq!(floor_groups(3, 2, 1), [vec![0, 2], vec![1]]);
    }
}
