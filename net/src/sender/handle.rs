//! The control side's handle to the sender thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::call::Call;
use super::core::SenderCore;
use super::phase::PhaseGroups;
use super::spin::SpinWindow;
use super::thread::{MIN_BUILD_AHEAD, Pacing, Worker};
use super::{CallConfig, Command, Returned, SendSlot, SenderConfig, SenderError, SenderEvent};
use crate::crypto::{EncryptionMode, Sealer, SecretKey};
use crate::dave::{FrameEncryptor, SenderKey};
use crate::pacer::{self, Pacer, PacingMode};
use crate::stats::SenderStats;
use crate::transmit::BackendKind;

/// Handle to the running sender thread (control side). Dropping it stops the thread.
pub struct Sender {
    pub(super) commands: rtrb::Producer<Command>,
    pub(super) events: rtrb::Consumer<SenderEvent>,
    pub(super) garbage: rtrb::Consumer<Returned>,
    pub(super) stats_full: rtrb::Consumer<Box<SenderStats>>,
    pub(super) stats_free: rtrb::Producer<Box<SenderStats>>,
    pub(super) totals: SenderStats,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) thread: Option<JoinHandle<()>>,
    pub(super) backend: BackendKind,
    pub(super) pacing: PacingMode,
    pub(super) next_id: u64,
    /// Live calls and their phase groups.
    pub(super) live: std::collections::HashMap<SendSlot, u8>,
    /// The thread's placement of calls in phase groups, mirrored here so the control side
    /// knows each call's phase (the mixer builds calls in phase order).
    pub(super) phases: PhaseGroups,
    pub(super) max_calls: usize,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("backend", &self.backend)
            .field("pacing", &self.pacing)
            .field("calls", &self.live.len())
            .finish()
    }
}

/// Ticks between statistics hand-overs (one second).
pub(super) const STATS_EVERY_TICKS: u64 = 50;
/// Statistics buffers in circulation besides the one being recorded.
pub(super) const STATS_SPARES: usize = 3;

impl Sender {
    /// Starts the sender thread. Fails when the requested backend is unavailable; with
    /// [`crate::transmit::BackendChoice::Auto`] it falls back to the portable path instead.
    pub fn spawn(config: SenderConfig) -> Result<Self, SenderError> {
        let (commands, commands_rx) = rtrb::RingBuffer::new(config.command_capacity.max(1));
        let (garbage_tx, garbage) = rtrb::RingBuffer::new(config.command_capacity.max(1));
        let (stats_full_tx, stats_full) = rtrb::RingBuffer::new(STATS_SPARES + 1);
        let (mut stats_free, stats_free_rx) = rtrb::RingBuffer::new(STATS_SPARES + 1);
        for _ in 0..STATS_SPARES {
            // The ring was just created with room for STATS_SPARES + 1 boxes.
            let _ = stats_free.push(Box::new(SenderStats::new()));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let thread_stop = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("quaver-sender".into())
            .spawn(move || {
                // Start-up: everything allocated here, before the first tick.
                let core = SenderCore::new(
                    config.grid,
                    config.backend,
                    config.max_calls,
                    config.event_capacity,
                );
                let (mut core, events_rx) = match core {
                    Ok(pair) => pair,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                // No calls yet, so this cannot fail.
                let _ = core.set_phases(config.phases);
                let pacing = pacer::configure_current_thread(config.scheduling);
                let pacer = Pacer::new(config.spin);
                let _ = ready_tx.send(Ok((events_rx, core.backend(), pacing)));
                let mut worker = Worker {
                    core,
                    pacing: Pacing {
                        pacer,
                        spin: SpinWindow::new(config.spin),
                        build_ahead: MIN_BUILD_AHEAD,
                        recent_build: Duration::ZERO,
                    },
                    commands: commands_rx,
                    garbage: garbage_tx,
                    stats_full: stats_full_tx,
                    stats_free: stats_free_rx,
                    stop: thread_stop,
                    notify: config.notify.clone(),
                    notified: 0,
                };
                if let Some(hook) = config.on_thread_start {
                    hook();
                }
                worker.run();
                if let Some(hook) = config.on_thread_exit {
                    hook();
                }
            })
            .map_err(SenderError::Backend)?;
        let (events, backend, pacing) = ready_rx.recv().map_err(|_| SenderError::Stopped)??;
        Ok(Self {
            commands,
            events,
            garbage,
            stats_full,
            stats_free,
            totals: SenderStats::new(),
            stop,
            thread: Some(thread),
            backend,
            pacing,
            next_id: 0,
            live: std::collections::HashMap::new(),
            phases: PhaseGroups::new(config.phases),
            max_calls: config.max_calls,
        })
    }

    /// The transmit backend in use.
    pub fn backend(&self) -> BackendKind {
        self.backend
    }

    /// The scheduling mode of the sender thread.
    pub fn pacing(&self) -> PacingMode {
        self.pacing
    }

    fn collect_garbage(&mut self) {
        while self.garbage.pop().is_ok() {}
    }

    fn command(&mut self, command: Command) -> Result<(), SenderError> {
        self.collect_garbage();
        if self.thread.as_ref().is_none_or(|t| t.is_finished()) {
            return Err(SenderError::Stopped);
        }
        self.commands
            .push(command)
            .map_err(|_| SenderError::QueueFull)
    }

    /// Adds a call; its frames are sent from the next tick on. The socket must be connected.
    pub fn add_call(&mut self, config: CallConfig) -> Result<SendSlot, SenderError> {
        if self.live.len() >= self.max_calls {
            return Err(SenderError::TooManyCalls(self.max_calls));
        }
        let id = SendSlot(self.next_id);
        let mut call = Call::build(config, id)?;
        call.group = self.phases.assign();
        let group = call.group;
        if let Err(e) = self.command(Command::Add(call)) {
            self.phases.release(group);
            return Err(e);
        }
        self.next_id += 1;
        self.live.insert(id, group);
        Ok(id)
    }

    /// How long after the grid's deadline `call`'s packets are due: its phase in the
    /// staggered grid, fixed for its life (`None` for a call that is not live). A mixer that
    /// builds calls in this order has the most slack for the last calls it builds.
    pub fn phase_offset(&self, call: SendSlot) -> Option<Duration> {
        self.live.get(&call).map(|&g| self.phases.offset(g))
    }

    /// Removes a call (after the tick in progress); [`SenderEvent::CallRemoved`] confirms it.
    pub fn remove_call(&mut self, call: SendSlot) -> Result<(), SenderError> {
        let Some(&group) = self.live.get(&call) else {
            return Err(SenderError::UnknownCall(call));
        };
        self.command(Command::Remove(call))?;
        self.live.remove(&call);
        self.phases.release(group);
        Ok(())
    }

    /// Switches a call to a new mode and key (a new Session Description) at the next frame
    /// boundary; [`SenderEvent::Rekeyed`] confirms it. The nonce counter starts afresh under the
    /// new key.
    pub fn rekey(
        &mut self,
        call: SendSlot,
        mode: EncryptionMode,
        key: &SecretKey,
    ) -> Result<(), SenderError> {
        if !self.live.contains_key(&call) {
            return Err(SenderError::UnknownCall(call));
        }
        let sealer = Box::new(Sealer::new(mode, key));
        self.command(Command::Rekey(call, sealer))
    }

    /// Sets the call's DAVE sender key at the next frame boundary ([`SenderEvent::DaveKeyInstalled`]
    /// confirms it), or with `None` goes back to plain Opus ([`SenderEvent::DaveKeyRemoved`]).
    /// The encryptor and its first frame key are made here, on the caller's thread; the one it
    /// replaces comes back here to be dropped. Installing the key already in use keeps its frame
    /// counter (a new epoch's key starts at nonce 1).
    pub fn set_dave_key(
        &mut self,
        call: SendSlot,
        key: Option<SenderKey>,
    ) -> Result<(), SenderError> {
        if !self.live.contains_key(&call) {
            return Err(SenderError::UnknownCall(call));
        }
        let encryptor = key.map(|key| Box::new(FrameEncryptor::new(key)));
        self.command(Command::DaveKey(call, encryptor))
    }

    /// Calls currently added.
    pub fn call_count(&self) -> usize {
        self.live.len()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<SenderEvent> {
        self.events.pop().ok()
    }

    /// Statistics since start (merged from what the thread has handed over, about once a
    /// second).
    pub fn stats(&mut self) -> &SenderStats {
        while let Ok(mut s) = self.stats_full.pop() {
            self.totals.merge(&s);
            s.reset();
            // Boxes circulate between exactly these two rings, so there is always room.
            let _ = self.stats_free.push(s);
        }
        &self.totals
    }

    /// Stops the thread, waits for it and returns the final statistics.
    pub fn shutdown(mut self) -> SenderStats {
        self.stop_thread();
        self.stats().clone()
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.collect_garbage();
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.stop_thread();
    }
}
