//! The sans-thread core: builds, seals and flushes each tick's packets; applies commands.

use std::sync::Arc;
use std::time::{Duration, Instant};

use quaver_engine::{FrameKind, FrameSignal, Grid};

use super::call::{Call, SealError};
use super::phase::{PhaseConfig, PhaseGroups};
use super::{CallConfig, Command, Returned, SendSlot, SenderError, SenderEvent};
use crate::dave::{FrameEncryptor, SenderKey};
use crate::rtp::SILENCE_FRAMES_AT_STOP;
use crate::stats::SenderStats;
use crate::transmit::{BackendChoice, BackendKind, Datagram, Transmitter};

/// Where [`SenderCore::tick`] waits: the sender thread sleeps and spins to each deadline;
/// tests and benches use [`NoWait`] and run the same order back to back.
pub(super) trait Pace {
    /// Whether the waits are real (so the wake-up lateness means something).
    fn waits(&self) -> bool;
    /// Before the frames of a phase group due at `deadline` are built.
    fn until_build(&mut self, deadline: Instant);
    /// The frames are built (which took `build`): wait for `deadline`; returns when sending
    /// starts.
    fn until_send(&mut self, deadline: Instant, build: Duration) -> Instant;
    /// The tick whose first deadline is `deadline` has nothing to send.
    fn idle(&mut self, deadline: Instant);
}

/// No waiting at all.
pub(super) struct NoWait;

impl Pace for NoWait {
    fn waits(&self) -> bool {
        false
    }
    fn until_build(&mut self, _deadline: Instant) {}
    fn until_send(&mut self, _deadline: Instant, _build: Duration) -> Instant {
        Instant::now()
    }
    fn idle(&mut self, _deadline: Instant) {}
}

/// [`SenderCore::build`] over every call, whatever its phase group.
const ANY_GROUP: u8 = u8::MAX;

/// What [`SenderCore::scan`] found.
struct Scan {
    late: bool,
    group: Option<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pass {
    /// Only frames whose tick is before `n` (late ones).
    Late,
    /// One frame due at or before `n`, or a silence frame.
    OnTime,
}

/// The sender's per-tick work without the thread and the clock: build, seal and send one batch.
/// The thread drives it; benches drive it directly.
pub struct SenderCore {
    pub(super) grid: Grid,
    // Boxed: a call's packet buffer must keep its address while io_uring reads it even when the
    // table is reordered, and calls cross the command queues as one pointer.
    //
    // `calls[..awake]` are looked at every tick; the rest are quiet calls whose frame queues
    // are parked and wake `signal` when a frame comes (see `quaver_engine::FrameReceiver`).
    #[allow(clippy::vec_box)]
    pub(super) calls: Vec<Box<Call>>,
    awake: usize,
    /// The wake-up counter of the parked calls' queues: the first call's that has one (one
    /// engine feeds a sender). A call whose queue rings another never parks.
    signal: Option<Arc<FrameSignal>>,
    /// `signal`'s count when the parked calls were last looked at.
    signal_seen: u64,
    pub(super) max_calls: usize,
    pub(super) tx: Transmitter,
    pub(super) batch: Vec<Datagram>,
    pub(super) batch_calls: Vec<u32>,
    pub(super) batch_due: Vec<u64>,
    pub(super) results: Vec<i32>,
    pub(super) sent_at: Vec<Instant>,
    pub(super) stats: Box<SenderStats>,
    pub(super) events: EventQueue,
    pub(super) next_id: u64,
    pub(super) phases: PhaseGroups,
}

impl std::fmt::Debug for SenderCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SenderCore")
            .field("calls", &self.calls.len())
            .field("backend", &self.tx.kind())
            .finish()
    }
}

impl SenderCore {
    /// A core for up to `max_calls` calls on `grid`, with its event queue.
    pub fn new(
        grid: Grid,
        backend: BackendChoice,
        max_calls: usize,
        event_capacity: usize,
    ) -> Result<(Self, rtrb::Consumer<SenderEvent>), SenderError> {
        let tx = Transmitter::new(backend, max_calls).map_err(SenderError::Backend)?;
        let (events, events_rx) = rtrb::RingBuffer::new(event_capacity.max(1));
        let now = Instant::now();
        Ok((
            Self {
                grid,
                calls: Vec::with_capacity(max_calls),
                awake: 0,
                signal: None,
                signal_seen: 0,
                max_calls,
                tx,
                batch: Vec::with_capacity(max_calls),
                batch_calls: Vec::with_capacity(max_calls),
                batch_due: Vec::with_capacity(max_calls),
                results: vec![0; max_calls],
                sent_at: vec![now; max_calls],
                stats: Box::new(SenderStats::new()),
                events: EventQueue {
                    producer: events,
                    pushed: 0,
                },
                next_id: 0,
                phases: PhaseGroups::new(PhaseConfig::default()),
            },
            events_rx,
        ))
    }

    /// Sets how calls are staggered over the period ([`crate::sender::PhaseConfig`]); only
    /// before the first call is added (calls keep their group for life).
    pub fn set_phases(&mut self, config: PhaseConfig) -> Result<(), SenderError> {
        if !self.calls.is_empty() {
            return Err(SenderError::PhasesFixed);
        }
        self.phases = PhaseGroups::new(config);
        Ok(())
    }

    /// The backend in use.
    pub fn backend(&self) -> BackendKind {
        self.tx.kind()
    }

    /// Number of calls.
    pub fn call_count(&self) -> usize {
        self.calls.len()
    }

    /// Number of calls looked at every tick; the others are quiet, their queues parked.
    pub fn awake_count(&self) -> usize {
        self.awake
    }

    /// Adds a call, awake. Within capacity (checked by the callers): no allocation.
    fn insert(&mut self, call: Box<Call>) {
        if self.signal.is_none() {
            let signal = call.frames.signal();
            // An atomic increment, no allocation; the last reference is dropped with the core.
            self.signal = Some(Arc::clone(signal));
            self.signal_seen = signal.count();
        }
        self.calls.push(call);
        self.move_awake(self.calls.len() - 1);
    }

    /// Takes call `id` out of the table.
    fn take(&mut self, id: SendSlot) -> Option<Box<Call>> {
        let mut pos = self.calls.iter().position(|c| c.id == id)?;
        if pos < self.awake {
            // Keep the awake ones together: it leaves from the end of their run.
            self.awake -= 1;
            self.calls.swap(pos, self.awake);
            pos = self.awake;
        }
        Some(self.calls.swap_remove(pos))
    }

    /// Moves the call at `index`, not awake, among the awake ones.
    fn move_awake(&mut self, index: usize) {
        self.calls[index].frames.unpark();
        self.calls.swap(index, self.awake);
        self.awake += 1;
    }

    /// Wakes the parked calls whose queues got a frame, if any did since the last look.
    fn wake_rung(&mut self) {
        let Some(signal) = &self.signal else {
            return;
        };
        let count = signal.count();
        if count == self.signal_seen {
            return;
        }
        self.signal_seen = count;
        let mut index = self.awake;
        while index < self.calls.len() {
            if !self.calls[index].frames.is_parked() {
                self.move_awake(index);
                self.stats.calls_woken += 1;
            }
            index += 1;
        }
    }

    /// Parks the awake calls that have nothing to send and nothing coming: they are not
    /// looked at again until their queue rings.
    fn park_quiet(&mut self) {
        for index in (0..self.awake).rev() {
            let call = &self.calls[index];
            let quiet = !call.speaking && call.silence_left == 0 && !call.stop_after_send;
            let ours = self
                .signal
                .as_ref()
                .is_some_and(|ours| Arc::ptr_eq(call.frames.signal(), ours));
            if quiet && ours && call.frames.try_park() {
                self.awake -= 1;
                self.calls.swap(index, self.awake);
                self.stats.calls_parked += 1;
            }
        }
    }

    /// Adds a call directly (for benches and custom drivers; the thread uses commands).
    pub fn add_call(&mut self, config: CallConfig) -> Result<SendSlot, SenderError> {
        if self.calls.len() >= self.max_calls {
            return Err(SenderError::TooManyCalls(self.max_calls));
        }
        let id = SendSlot(self.next_id);
        self.next_id += 1;
        let mut call = Call::build(config, id)?;
        call.group = self.phases.assign();
        self.insert(call);
        Ok(id)
    }

    /// Statistics recorded so far.
    pub fn stats(&self) -> &SenderStats {
        &self.stats
    }

    /// Runs tick `n` in the sender thread's order, without its waiting: late
    /// frames, late frames again, the tick's frames built, then sent at once. Returns the packets
    /// sent.
    pub fn run_tick(&mut self, n: u64) -> usize {
        self.tick(n, &mut NoWait)
    }

    /// Tick `n` in the one order every driver uses: frames already late go out first; then,
    /// group by group (see [`super::phase`]): for the first group `pace` waits until its
    /// build time and frames that became late meanwhile go out; each group's frames are built
    /// and sealed (later groups' right after the previous send), `pace` waits for the group's
    /// deadline and the batch is sent.
    ///
    /// Only groups with something to send are woken for: a group is due when one of its calls
    /// is speaking (its frame is coming) or has a frame already. A quiet call whose first
    /// frame arrives after its group's turn goes out with the next group woken (a few ms late)
    /// instead of a tick later; with nothing due the thread sleeps once, to the grid's deadline,
    /// and looks again.
    pub(super) fn tick(&mut self, n: u64, pace: &mut impl Pace) -> usize {
        // One walk over the awake calls says both whether a frame is late and which group is
        // due first (parked calls are not walked at all; see `park_quiet`).
        let first = self.scan(n, 0);
        let mut sent = if first.late { self.send_late(n) } else { 0 };
        // Sending a late frame can leave the call's next frame due: look again then.
        let mut known = (!first.late).then_some(first.group);
        let grid_deadline = self.grid.deadline(n);
        let mut first_wake = true;
        let mut from = 0;
        let mut slept_idle = false;
        loop {
            let due = match known.take() {
                Some(group) => group,
                None => self.scan(n, from).group,
            };
            let Some(group) = due else {
                if first_wake && !slept_idle {
                    pace.idle(grid_deadline);
                    slept_idle = true;
                    continue;
                }
                break;
            };
            from = usize::from(group) + 1;
            let deadline = grid_deadline + self.phases.offset(group);
            if std::mem::take(&mut first_wake) {
                pace.until_build(deadline);
                sent += self.send_late(n);
            }
            // Later groups build straight after the previous group's send: the mixer built
            // the whole tick before the first group's deadline, and a wake-up saved per group
            // is ten fewer a tick at 100 calls. (A frame that still comes after its group's
            // turn goes out with the next group woken, as below.)
            let started = Instant::now();
            if self.build(n, Pass::OnTime, group) == 0 {
                continue;
            }
            let build = started.elapsed();
            let send_start = pace.until_send(deadline, build);
            if pace.waits() {
                self.stats.wake_ns.saturating_record(
                    send_start.saturating_duration_since(deadline).as_nanos() as u64,
                );
            }
            // Booked time is build + send, without the wait in between.
            sent += self.flush(send_start.checked_sub(build).unwrap_or(send_start));
        }
        self.park_quiet();
        self.stats.ticks += 1;
        sent
    }

    /// One walk over the awake calls for tick `n` (after waking those whose queue rang):
    /// whether any frame is late (its tick is before `n`), and the first phase group from
    /// `from` on with something to send.
    fn scan(&mut self, n: u64, from: usize) -> Scan {
        self.wake_rung();
        let mut scan = Scan {
            late: false,
            group: None,
        };
        for call in &self.calls[..self.awake] {
            let queued = call.frames.peek().map(|frame| frame.tick);
            scan.late |= queued.is_some_and(|tick| tick < n);
            let due = call.speaking || call.silence_left > 0 || queued.is_some_and(|t| t <= n);
            if due && usize::from(call.group) >= from {
                scan.group = Some(scan.group.map_or(call.group, |g| g.min(call.group)));
            }
        }
        scan
    }

    /// Sends frames whose tick is before `n`, in rounds of at most one per call, bounded so a
    /// huge backlog cannot hold up tick `n` for long.
    fn send_late(&mut self, n: u64) -> usize {
        let mut sent = 0;
        for _ in 0..4 {
            let started = Instant::now();
            if self.build(n, Pass::Late, ANY_GROUP) == 0 {
                break;
            }
            self.stats.late_frames += self.batch.len() as u64;
            sent += self.flush(started);
        }
        sent
    }

    /// Fills the batch for tick `n` with the calls of phase group `group` (or every call, for
    /// [`ANY_GROUP`]); returns its size.
    fn build(&mut self, n: u64, pass: Pass, group: u8) -> usize {
        // A frame may have come for a parked call since the last scan (during the wait).
        self.wake_rung();
        self.batch.clear();
        self.batch_calls.clear();
        self.batch_due.clear();
        for (index, call) in self.calls[..self.awake].iter_mut().enumerate() {
            // An earlier group's call whose frame came after its turn (a quiet call starting,
            // a late mixer) catches this group's send; silence keeps to its own group.
            let own_turn = group == ANY_GROUP || call.group == group;
            if !own_turn && call.group > group {
                continue;
            }
            let mut due = n;
            let mut payload_ready = false;
            let mut has_packet = false;
            if let Some(frame) = call.frames.peek() {
                let take = match pass {
                    Pass::Late => frame.tick < n,
                    Pass::OnTime => frame.tick <= n,
                };
                if take {
                    due = frame.tick;
                    match frame.kind {
                        FrameKind::Audio => payload_ready = true,
                        FrameKind::EndOfStream => {
                            if call.speaking {
                                call.silence_left = SILENCE_FRAMES_AT_STOP;
                            }
                            call.frames.discard();
                        }
                    }
                }
            }
            if call.refusal.holds(n) {
                // The far end refuses packets: frames keep moving so the call does not back up,
                // but nothing is sent until the next probe.
                if payload_ready && call.frames.discard() {
                    self.stats.refused_frames += 1;
                }
                continue;
            }
            if payload_ready {
                // Sealing copies the Opus bytes straight out of the queue: no frame copy.
                let out = &mut call.out;
                let Some(sealed) = call.frames.pop_with(|_, opus| out.seal(Some(opus), due)) else {
                    continue;
                };
                if !book_seal(sealed, call.id, &mut self.events, &mut self.stats) {
                    continue;
                }
                call.silence_left = 0;
                call.stop_after_send = false;
                if !call.speaking {
                    call.speaking = true;
                    push_event(
                        &mut self.events,
                        &mut self.stats,
                        SenderEvent::SpeakingStarted { call: call.id },
                    );
                }
                has_packet = true;
            } else if pass == Pass::OnTime && own_turn && call.silence_left > 0 {
                let sealed = call.out.seal(None, n);
                if book_seal(sealed, call.id, &mut self.events, &mut self.stats) {
                    call.silence_left -= 1;
                    if call.silence_left == 0 {
                        call.speaking = false;
                        call.stop_after_send = true;
                    }
                    has_packet = true;
                } else {
                    call.silence_left = 0;
                }
            }
            if has_packet {
                self.batch.push(Datagram {
                    fd: call.fd,
                    ptr: call.out.buf.as_ptr(),
                    len: call.out.len as u32,
                });
                self.batch_calls.push(index as u32);
                self.batch_due.push(due);
            }
        }
        self.batch.len()
    }

    /// Sends the batch now and books the results; `started` is when building began.
    fn flush(&mut self, started: Instant) -> usize {
        let count = self.batch.len();
        if count == 0 {
            return 0;
        }
        self.tx
            .send(&self.batch, &mut self.results, &mut self.sent_at);
        let mut sent = 0;
        for i in 0..count {
            let call = &mut self.calls[self.batch_calls[i] as usize];
            let deadline = self.grid.deadline(self.batch_due[i]) + self.phases.offset(call.group);
            let lateness = self.sent_at[i].saturating_duration_since(deadline);
            self.stats
                .lateness_ns
                .saturating_record(lateness.as_nanos() as u64);
            let r = self.results[i];
            if r >= 0 {
                call.packets += 1;
                call.refusal.accepted();
                sent += 1;
            } else {
                if -r == libc::ECONNREFUSED {
                    call.refusal.refused(self.batch_due[i]);
                }
                call.send_errors += 1;
                self.stats.send_errors += 1;
                let event = SenderEvent::SendFailed {
                    call: call.id,
                    errno: -r,
                    total: call.send_errors,
                };
                push_event(&mut self.events, &mut self.stats, event);
            }
            if call.stop_after_send {
                call.stop_after_send = false;
                push_event(
                    &mut self.events,
                    &mut self.stats,
                    SenderEvent::SpeakingStopped { call: call.id },
                );
            }
        }
        self.stats.packets_sent += sent as u64;
        self.stats.batch_size.saturating_record(count as u64);
        self.stats
            .tick_work_ns
            .saturating_record(started.elapsed().as_nanos() as u64);
        sent
    }

    pub(super) fn apply(&mut self, command: Command, garbage: &mut rtrb::Producer<Returned>) {
        match command {
            Command::Add(mut call) => {
                let id = call.id;
                if self.calls.len() < self.max_calls {
                    // Placed by the handle, which tells the mixer the call's phase.
                    call.group = self.phases.occupy(call.group);
                    self.insert(call);
                    push_event(
                        &mut self.events,
                        &mut self.stats,
                        SenderEvent::CallAdded { call: id },
                    );
                } else {
                    // The control side checks the limit first; this only guards a race.
                    let _ = garbage.push(Returned::Call(call));
                }
            }
            Command::Remove(id) => {
                if let Some(call) = self.take(id) {
                    self.phases.release(call.group);
                    let event = SenderEvent::CallRemoved {
                        call: id,
                        packets: call.packets,
                        send_errors: call.send_errors,
                    };
                    let _ = garbage.push(Returned::Call(call));
                    push_event(&mut self.events, &mut self.stats, event);
                }
            }
            Command::Rekey(id, sealer) => {
                if let Some(call) = self.calls.iter_mut().find(|c| c.id == id) {
                    let old = std::mem::replace(&mut call.out.sealer, sealer);
                    let _ = garbage.push(Returned::Sealer(old));
                    push_event(
                        &mut self.events,
                        &mut self.stats,
                        SenderEvent::Rekeyed { call: id },
                    );
                } else {
                    let _ = garbage.push(Returned::Sealer(sealer));
                }
            }
            Command::DaveKey(id, encryptor) => {
                let discard = match self.install_dave(id, encryptor) {
                    Ok(old) => old,
                    Err(unused) => unused,
                };
                if let Some(encryptor) = discard {
                    let _ = garbage.push(Returned::Encryptor(encryptor));
                }
            }
        }
    }

    /// Sets a call's DAVE key directly (for benches and custom drivers; the thread uses
    /// [`super::Sender::set_dave_key`]). `None` turns end-to-end encryption off. The same key as the one
    /// in use keeps its frame counter; a new one starts at nonce 1.
    pub fn set_dave_key(
        &mut self,
        call: SendSlot,
        key: Option<SenderKey>,
    ) -> Result<(), SenderError> {
        let encryptor = key.map(|key| Box::new(FrameEncryptor::new(key)));
        self.install_dave(call, encryptor)
            .map(drop)
            .map_err(|_| SenderError::UnknownCall(call))
    }

    /// Puts `encryptor` into call `id` and returns what is to be dropped (the old encryptor, or
    /// the new one when it holds the key already in use); `Err` hands `encryptor` back when
    /// there is no such call.
    #[allow(clippy::type_complexity)]
    fn install_dave(
        &mut self,
        id: SendSlot,
        encryptor: Option<Box<FrameEncryptor>>,
    ) -> Result<Option<Box<FrameEncryptor>>, Option<Box<FrameEncryptor>>> {
        let Some(call) = self.calls.iter_mut().find(|c| c.id == id) else {
            return Err(encryptor);
        };
        let (discard, event) = match encryptor {
            None => (
                call.out.dave.take(),
                SenderEvent::DaveKeyRemoved { call: id },
            ),
            Some(new) => {
                let event = SenderEvent::DaveKeyInstalled {
                    call: id,
                    epoch: new.epoch(),
                };
                match call.out.dave.as_deref() {
                    // Restarting the counter under the same key would reuse nonces.
                    Some(current) if current.same_key_as(&new) => (Some(new), event),
                    _ => (call.out.dave.replace(new), event),
                }
            }
        };
        push_event(&mut self.events, &mut self.stats, event);
        Ok(discard)
    }
}

/// Books the outcome of building a packet; true when there is a packet to send.
pub(super) fn book_seal(
    sealed: Result<bool, SealError>,
    call: SendSlot,
    events: &mut EventQueue,
    stats: &mut SenderStats,
) -> bool {
    match sealed {
        Ok(wrapped) => {
            stats.dave_frames += u64::from(wrapped);
            true
        }
        Err(SealError::TransportExhausted) => {
            push_event(events, stats, SenderEvent::NonceExhausted { call });
            false
        }
        Err(SealError::Dave) => {
            stats.dave_errors += 1;
            false
        }
    }
}

/// The sender thread's end of the event queue, counting what it queued so the thread can wake
/// the control side once per tick that produced events.
pub(super) struct EventQueue {
    pub(super) producer: rtrb::Producer<SenderEvent>,
    pub(super) pushed: u64,
}

pub(super) fn push_event(events: &mut EventQueue, stats: &mut SenderStats, event: SenderEvent) {
    if events.producer.push(event).is_err() {
        stats.events_dropped += 1;
    } else {
        events.pushed += 1;
    }
}
