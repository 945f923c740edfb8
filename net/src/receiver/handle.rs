//! The control side's handle to the receive thread.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use mio::unix::SourceFd;

use super::core::{ListenCall, ReceiverCore};
use super::socket::RecvBatch;
use super::stream::{Stream, UserAudio};
use super::thread::{WAKER, Worker};
use super::{
    CallCounters, CallReceiveStats, Command, ListenConfig, ListenSlot, ReceiveMode, ReceiverConfig,
    ReceiverError, ReceiverEvent, Returned, StreamConfig,
};
use crate::dave::{Passthrough, PreparedKey, SenderKey};

/// What the handle knows of a call it gave the thread.
struct Listened {
    fd: RawFd,
    mode: ReceiveMode,
    counters: Arc<CallCounters>,
}

/// Handle to the running receive thread (control side). Dropping it stops the thread.
pub struct Receiver {
    commands: rtrb::Producer<Command>,
    garbage: rtrb::Consumer<Returned>,
    events: rtrb::Consumer<ReceiverEvent>,
    registry: mio::Registry,
    waker: mio::Waker,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    config: ReceiverConfig,
    free: Vec<u32>,
    generation: u32,
    live: HashMap<ListenSlot, Listened>,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("calls", &self.live.len())
            .finish()
    }
}

impl Receiver {
    /// Starts the receive thread; everything it needs is allocated before it runs.
    pub fn spawn(config: ReceiverConfig) -> Result<Self, ReceiverError> {
        let poll = mio::Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let waker = mio::Waker::new(poll.registry(), WAKER)?;
        let (commands, commands_rx) = rtrb::RingBuffer::new(config.command_capacity.max(1));
        let (garbage_tx, garbage) = rtrb::RingBuffer::new(config.command_capacity.max(1));
        let (core, events) = ReceiverCore::new(config.max_calls, config.event_capacity);
        let stop = Arc::new(AtomicBool::new(false));
        let mut worker = Worker {
            core,
            grid: config.grid,
            poll,
            events: mio::Events::with_capacity(config.max_calls.clamp(16, 1024)),
            batch: RecvBatch::new(),
            backlog: Vec::with_capacity(config.max_calls),
            leftover: Vec::with_capacity(config.max_calls),
            commands: commands_rx,
            garbage: garbage_tx,
            stop: Arc::clone(&stop),
            notify: config.notify.clone(),
            notified: 0,
        };
        let (on_start, on_exit) = (config.on_thread_start, config.on_thread_exit);
        let thread = std::thread::Builder::new()
            .name("quaver-receive".into())
            .spawn(move || {
                if let Some(hook) = on_start {
                    hook();
                }
                worker.run();
                if let Some(hook) = on_exit {
                    hook();
                }
            })?;
        Ok(Self {
            commands,
            garbage,
            events,
            registry,
            waker,
            stop,
            thread: Some(thread),
            free: (0..config.max_calls as u32).rev().collect(),
            generation: 0,
            live: HashMap::new(),
            config,
        })
    }

    /// Starts reading a call's socket. Packets are counted from now; user streams follow with
    /// [`add_stream`](Self::add_stream) as op 5 maps their SSRCs.
    pub fn add_call(&mut self, config: ListenConfig) -> Result<ListenSlot, ReceiverError> {
        self.collect_garbage();
        if self.commands.slots() == 0 {
            return Err(ReceiverError::QueueFull);
        }
        let Some(&index) = self.free.last() else {
            return Err(ReceiverError::TooManyCalls(self.config.max_calls));
        };
        self.generation = self.generation.wrapping_add(1);
        let slot = ListenSlot(u64::from(self.generation) << 32 | u64::from(index));
        config.socket.set_nonblocking(true)?;
        let fd = config.socket.as_raw_fd();
        let mode = config.receive;
        let call = ListenCall::build(
            slot,
            config,
            self.config.max_streams,
            self.config.held_packets,
            self.config.hold_for,
            Instant::now(),
        );
        let counters = Arc::clone(&call.counters);
        self.registry.register(
            &mut SourceFd(&fd),
            mio::Token(index as usize),
            mio::Interest::READABLE,
        )?;
        self.push(Command::Add(call))?;
        self.free.pop();
        self.live.insert(slot, Listened { fd, mode, counters });
        Ok(slot)
    }

    /// Stops reading a call (its streams close; readers see [`UserAudio::is_closed`]).
    pub fn remove_call(&mut self, slot: ListenSlot) -> Result<(), ReceiverError> {
        let listened = self.live.get(&slot).ok_or(ReceiverError::UnknownCall)?;
        let fd = listened.fd;
        self.push(Command::Remove(slot))?;
        self.live.remove(&slot);
        // The socket may be closed already (the call's session ended): nothing to undo then.
        let _ = self.registry.deregister(&mut SourceFd(&fd));
        self.free.push(slot.index() as u32);
        Ok(())
    }

    /// Opens a user's stream on a call (op 5 mapped their SSRC); packets of that SSRC held so far
    /// are played first. Replaces the user's previous stream, if any.
    pub fn add_stream(
        &mut self,
        slot: ListenSlot,
        config: StreamConfig,
    ) -> Result<UserAudio, ReceiverError> {
        let mode = self.live.get(&slot).ok_or(ReceiverError::UnknownCall)?.mode;
        if self.commands.slots() == 0 {
            return Err(ReceiverError::QueueFull);
        }
        let (stream, audio) = Stream::build(config, mode, Instant::now())?;
        self.push(Command::AddStream(slot, stream))?;
        Ok(audio)
    }

    /// Closes a user's stream (op 13: they left).
    pub fn remove_stream(&mut self, slot: ListenSlot, user_id: u64) -> Result<(), ReceiverError> {
        self.known(slot)?;
        self.push(Command::RemoveStream(slot, user_id))
    }

    /// Gives a user's stream their key for a new DAVE epoch (older epochs stay for 10 s).
    pub fn install_key(
        &mut self,
        slot: ListenSlot,
        user_id: u64,
        key: SenderKey,
    ) -> Result<(), ReceiverError> {
        self.known(slot)?;
        self.push(Command::Key(
            slot,
            user_id,
            PreparedKey::new(key, Instant::now()),
        ))
    }

    /// Sets whether a user's non-DAVE frames pass (before E2EE, during a transition, after a
    /// downgrade).
    pub fn set_passthrough(
        &mut self,
        slot: ListenSlot,
        user_id: u64,
        passthrough: Passthrough,
    ) -> Result<(), ReceiverError> {
        self.known(slot)?;
        self.push(Command::Passthrough(slot, user_id, passthrough))
    }

    /// The next event from the thread.
    pub fn poll_event(&mut self) -> Option<ReceiverEvent> {
        self.collect_garbage();
        self.events.pop().ok()
    }

    /// A call's receive counters.
    pub fn call_stats(&self, slot: ListenSlot) -> Option<CallReceiveStats> {
        self.live.get(&slot).map(|l| l.counters.snapshot())
    }

    /// Number of calls read.
    pub fn call_count(&self) -> usize {
        self.live.len()
    }

    /// Drops what the thread is done with (streams, calls, keys).
    pub fn collect_garbage(&mut self) {
        while self.garbage.pop().is_ok() {}
    }

    fn known(&self, slot: ListenSlot) -> Result<(), ReceiverError> {
        if self.live.contains_key(&slot) {
            Ok(())
        } else {
            Err(ReceiverError::UnknownCall)
        }
    }

    fn push(&mut self, command: Command) -> Result<(), ReceiverError> {
        self.collect_garbage();
        if self.thread.as_ref().is_none_or(|t| t.is_finished()) {
            return Err(ReceiverError::Stopped);
        }
        self.commands
            .push(command)
            .map_err(|_| ReceiverError::QueueFull)?;
        // Commands apply at the thread's next wake-up; wake it now rather than at the next tick.
        let _ = self.waker.wake();
        Ok(())
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
