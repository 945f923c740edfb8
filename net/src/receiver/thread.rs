//! The receive thread's loop: wait on every call's socket until the next play-out tick, read
//! what arrived, play out on the tick.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use quaver_engine::Grid;

use super::core::ReceiverCore;
use super::socket::{BATCH, RecvBatch};
use super::{Command, Returned};
use crate::sender::EventNotifier;

/// The token of the waker that the control side uses to hand over commands and stop the thread.
pub(super) const WAKER: mio::Token = mio::Token(usize::MAX);
/// Batches read from one socket per wake-up before the others get their turn; the rest is read
/// on the next round, without waiting (`backlog`).
const BATCHES_PER_TURN: usize = 8;
/// Consecutive errors (e.g. ICMP port unreachable reported on the connected socket while the
/// server restarts) after which a socket's turn ends.
const ERRORS_PER_TURN: usize = 4;

pub(super) struct Worker {
    pub(super) core: ReceiverCore,
    pub(super) grid: Grid,
    pub(super) poll: mio::Poll,
    pub(super) events: mio::Events,
    pub(super) batch: RecvBatch,
    /// Sockets that may hold datagrams beyond their last turn (capacity: the call table).
    pub(super) backlog: Vec<usize>,
    /// The previous round's backlog while it is read.
    pub(super) leftover: Vec<usize>,
    pub(super) commands: rtrb::Consumer<Command>,
    pub(super) garbage: rtrb::Producer<Returned>,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) notify: Option<EventNotifier>,
    pub(super) notified: u64,
}

impl Worker {
    pub(super) fn run(&mut self) {
        let mut n = self.grid.tick_at_or_after(Instant::now());
        while !self.stop.load(Ordering::Acquire) {
            let now = Instant::now();
            let mut returned = false;
            while self.garbage.slots() > 0 {
                match self.commands.pop() {
                    Ok(c) => returned |= self.core.apply(c, now, &mut self.garbage),
                    Err(_) => break,
                }
            }
            if returned {
                // What came back (a closed stream, a key) is dropped when the reader runs: wake
                // it, so a closed stream's reader learns of it now.
                self.wake_reader(true);
            }
            if self.core.call_count() == 0 {
                // Nothing to read or play: sleep until a command (or the stop) wakes us.
                // An error (EINTR) just means another round.
                let _ = self.poll.poll(&mut self.events, None);
                n = self.grid.tick_at_or_after(Instant::now());
                continue;
            }
            let deadline = self.grid.deadline(n);
            if now >= deadline {
                self.core.tick(n, now);
                self.wake_reader(false);
                n += 1;
                // Far behind (a stalled thread, a suspended VM): skip ahead rather than play the
                // missed ticks back to back; the buffers absorb the gap as they would a pause.
                let current = self.grid.tick_at_or_after(now);
                if current > n + 1 {
                    n = current - 1;
                }
                continue;
            }
            let timeout = if self.backlog.is_empty() {
                deadline - now
            } else {
                Duration::ZERO
            };
            if self.poll.poll(&mut self.events, Some(timeout)).is_err() {
                // EINTR, or nothing sensible to do on this thread: the next round retries.
                continue;
            }
            let now = Instant::now();
            // Sockets left over from the last round first, then the ones that became readable.
            std::mem::swap(&mut self.backlog, &mut self.leftover);
            self.backlog.clear();
            for k in 0..self.leftover.len() {
                let index = self.leftover[k];
                read_socket(
                    &mut self.core,
                    &mut self.batch,
                    &mut self.backlog,
                    index,
                    now,
                );
            }
            self.leftover.clear();
            for event in self.events.iter() {
                if event.token() != WAKER {
                    let index = event.token().0;
                    read_socket(
                        &mut self.core,
                        &mut self.batch,
                        &mut self.backlog,
                        index,
                        now,
                    );
                }
            }
        }
    }

    fn wake_reader(&mut self, anyway: bool) {
        if (anyway || self.core.events_pushed != self.notified)
            && let Some(notify) = &self.notify
        {
            self.notified = self.core.events_pushed;
            (notify.0)();
        }
    }
}

/// Reads up to [`BATCHES_PER_TURN`] batches from call `index`'s socket; puts the socket in
/// `backlog` when it may hold more.
fn read_socket(
    core: &mut ReceiverCore,
    batch: &mut RecvBatch,
    backlog: &mut Vec<usize>,
    index: usize,
    now: Instant,
) {
    let mut errors = 0;
    for _ in 0..BATCHES_PER_TURN {
        let Some(socket) = core.socket(index) else {
            return;
        };
        match batch.read(socket) {
            Ok(0) => return,
            Ok(n) => {
                for i in 0..n {
                    core.handle_datagram(index, batch.datagram(i), now);
                }
                if n < BATCH {
                    return;
                }
            }
            Err(_) => {
                errors += 1;
                if errors >= ERRORS_PER_TURN {
                    return;
                }
            }
        }
    }
    // Capacity is the call table's size, and each socket is in it once: no allocation.
    if !backlog.contains(&index) && backlog.len() < backlog.capacity() {
        backlog.push(index);
    }
}
