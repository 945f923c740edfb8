//! The receive path without the thread and the clock: datagrams in, play-out ticks, commands.

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::held::Held;
use super::stream::{Stream, UserAudio};
use super::{
    CallCounters, Command, ListenConfig, ListenSlot, MAX_DATAGRAM, ReceiveMode, ReceiverConfig,
    ReceiverError, ReceiverEvent, Returned, StreamConfig,
};
use crate::crypto::TransportCipher;
use crate::receive::{PacketKind, ReceiveError, classify, open_rtp};

/// One listened call on the receive thread.
pub(crate) struct ListenCall {
    pub(super) slot: ListenSlot,
    pub(super) socket: Arc<UdpSocket>,
    cipher: TransportCipher,
    own_ssrc: u32,
    // Boxed: streams cross the command queues as one pointer.
    #[allow(clippy::vec_box)]
    streams: Vec<Box<Stream>>,
    held: Held,
    pub(super) counters: Arc<CallCounters>,
}

impl ListenCall {
    /// Builds the call's receive state (control side: allocates).
    pub(super) fn build(
        slot: ListenSlot,
        config: ListenConfig,
        max_streams: usize,
        held_packets: usize,
        hold_for: Duration,
        now: Instant,
    ) -> Box<Self> {
        Box::new(Self {
            slot,
            socket: config.socket,
            cipher: TransportCipher::new(config.mode, &config.key),
            own_ssrc: config.own_ssrc,
            streams: Vec::with_capacity(max_streams),
            held: Held::new(held_packets, hold_for, now),
            counters: config.counters,
        })
    }

    fn stream_mut(&mut self, user_id: u64) -> Option<&mut Box<Stream>> {
        self.streams.iter_mut().find(|s| s.user_id == user_id)
    }
}

/// The receive thread's work, driven by the thread (or by tests and benches directly, in
/// virtual time).
pub struct ReceiverCore {
    calls: Box<[Option<Box<ListenCall>>]>,
    /// The transport-opened packet.
    open: Box<[u8; MAX_DATAGRAM]>,
    /// The DAVE-opened frame.
    plain: Box<[u8; MAX_DATAGRAM]>,
    events: rtrb::Producer<ReceiverEvent>,
    /// Events queued so far (the thread wakes the reader when this moves).
    pub(super) events_pushed: u64,
    events_dropped: u64,
    live: usize,
}

impl std::fmt::Debug for ReceiverCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiverCore")
            .field("calls", &self.calls.iter().flatten().count())
            .finish()
    }
}

impl ReceiverCore {
    /// A core with room for `max_calls` calls, and its event queue.
    pub fn new(max_calls: usize, event_capacity: usize) -> (Self, rtrb::Consumer<ReceiverEvent>) {
        let (events, events_rx) = rtrb::RingBuffer::new(event_capacity.max(1));
        (
            Self {
                calls: (0..max_calls).map(|_| None).collect(),
                open: Box::new([0; MAX_DATAGRAM]),
                plain: Box::new([0; MAX_DATAGRAM]),
                events,
                events_pushed: 0,
                events_dropped: 0,
                live: 0,
            },
            events_rx,
        )
    }

    /// Events that found the queue full.
    pub fn events_dropped(&self) -> u64 {
        self.events_dropped
    }

    /// Adds a call directly (for benches, fuzzing and custom drivers; the thread takes calls
    /// as commands from [`Receiver`](super::Receiver)). Allocates.
    pub fn add_call(
        &mut self,
        config: ListenConfig,
        limits: &ReceiverConfig,
        now: Instant,
    ) -> Result<ListenSlot, ReceiverError> {
        let index = self
            .calls
            .iter()
            .position(Option::is_none)
            .ok_or(ReceiverError::TooManyCalls(self.calls.len()))?;
        let slot = ListenSlot(index as u64);
        let call = ListenCall::build(
            slot,
            config,
            limits.max_streams,
            limits.held_packets,
            limits.hold_for,
            now,
        );
        self.calls[index] = Some(call);
        self.live += 1;
        Ok(slot)
    }

    /// Opens a user stream directly (see [`add_call`](Self::add_call)). Allocates.
    pub fn add_stream(
        &mut self,
        slot: ListenSlot,
        mode: ReceiveMode,
        config: StreamConfig,
        now: Instant,
    ) -> Result<UserAudio, ReceiverError> {
        if self.call_mut(slot).is_none() {
            return Err(ReceiverError::UnknownCall);
        }
        let (stream, audio) = Stream::build(config, mode, now)?;
        let built: *const Stream = &*stream;
        match self.add_stream_boxed(slot, stream, now) {
            // Refused: the stream that comes back is the one just built.
            Some(Returned::Stream(s)) if std::ptr::eq(&*s, built) => Err(
                ReceiverError::TooManyStreams(self.call_mut(slot).map_or(0, |c| c.streams.len())),
            ),
            // Accepted, possibly replacing the user's previous stream (dropped here).
            _ => Ok(audio),
        }
    }

    /// Calls being read.
    pub fn call_count(&self) -> usize {
        self.live
    }

    pub(super) fn socket(&self, index: usize) -> Option<&UdpSocket> {
        self.calls.get(index)?.as_ref().map(|c| &*c.socket)
    }

    /// Applies one command; at most one object comes back, into `garbage` (then `true`).
    pub(super) fn apply(
        &mut self,
        command: Command,
        now: Instant,
        garbage: &mut rtrb::Producer<Returned>,
    ) -> bool {
        let returned = match command {
            Command::Add(call) => {
                let index = call.slot.index();
                match self.calls.get_mut(index) {
                    Some(entry) => {
                        let old = entry.replace(call);
                        if old.is_none() {
                            self.live += 1;
                        }
                        old.map(Returned::Call)
                    }
                    None => Some(Returned::Call(call)),
                }
            }
            Command::Remove(slot) => {
                let taken = self.take_call(slot);
                if taken.is_some() {
                    self.live -= 1;
                }
                taken.map(Returned::Call)
            }
            Command::AddStream(slot, stream) => self.add_stream_boxed(slot, stream, now),
            Command::RemoveStream(slot, user_id) => self.call_mut(slot).and_then(|call| {
                let i = call.streams.iter().position(|s| s.user_id == user_id)?;
                Some(Returned::Stream(call.streams.swap_remove(i)))
            }),
            Command::Key(slot, user_id, key) => match self
                .call_mut(slot)
                .and_then(|call| call.stream_mut(user_id))
            {
                Some(stream) => stream.install_key(key, now).map(Returned::Key),
                None => Some(Returned::Key(key)),
            },
            Command::Passthrough(slot, user_id, passthrough) => {
                if let Some(stream) = self
                    .call_mut(slot)
                    .and_then(|call| call.stream_mut(user_id))
                {
                    stream.set_passthrough(passthrough);
                }
                None
            }
        };
        match returned {
            // The thread only takes a command when the return queue has room for its result.
            Some(r) => garbage.push(r).is_ok(),
            None => false,
        }
    }

    fn call_mut(&mut self, slot: ListenSlot) -> Option<&mut ListenCall> {
        self.calls
            .get_mut(slot.index())?
            .as_deref_mut()
            .filter(|c| c.slot == slot)
    }

    fn take_call(&mut self, slot: ListenSlot) -> Option<Box<ListenCall>> {
        let entry = self.calls.get_mut(slot.index())?;
        if entry.as_ref().is_some_and(|c| c.slot == slot) {
            entry.take()
        } else {
            None
        }
    }

    fn add_stream_boxed(
        &mut self,
        slot: ListenSlot,
        mut stream: Box<Stream>,
        now: Instant,
    ) -> Option<Returned> {
        let plain = &mut self.plain;
        let Some(call) = self
            .calls
            .get_mut(slot.index())
            .and_then(|c| c.as_deref_mut())
            .filter(|c| c.slot == slot)
        else {
            return Some(Returned::Stream(stream));
        };
        let existing = call
            .streams
            .iter()
            .position(|s| s.user_id == stream.user_id);
        if existing.is_none() && call.streams.len() == call.streams.capacity() {
            return Some(Returned::Stream(stream));
        }
        // Packets that overtook the op 5 that mapped them.
        call.held
            .release(stream.ssrc, now, |sequence, timestamp, payload, at| {
                stream.receive(at, sequence, timestamp, payload, &mut plain[..]);
            });
        match existing {
            // A user has one stream; a new SSRC for them (a fresh session) replaces it.
            Some(i) => Some(Returned::Stream(std::mem::replace(
                &mut call.streams[i],
                stream,
            ))),
            None => {
                // Capacity checked above: no allocation.
                call.streams.push(stream);
                None
            }
        }
    }

    /// Handles one datagram read from call `index`'s socket at `now`.
    pub fn handle_datagram(&mut self, index: usize, datagram: &[u8], now: Instant) {
        let Some(call) = self.calls.get_mut(index).and_then(|c| c.as_deref_mut()) else {
            return;
        };
        CallCounters::add(&call.counters.datagrams);
        match classify(datagram) {
            PacketKind::Rtp => {}
            PacketKind::Rtcp => {
                CallCounters::add(&call.counters.rtcp);
                return;
            }
            PacketKind::Unknown => {
                CallCounters::add(&call.counters.not_opus);
                return;
            }
        }
        let rtp = match open_rtp(&call.cipher, datagram, &mut self.open[..]) {
            Ok(rtp) => rtp,
            Err(ReceiveError::PayloadType(_) | ReceiveError::NotRtp) => {
                CallCounters::add(&call.counters.not_opus);
                return;
            }
            Err(_) => {
                CallCounters::add(&call.counters.transport_failures);
                return;
            }
        };
        if rtp.ssrc == call.own_ssrc {
            CallCounters::add(&call.counters.own_ssrc);
            return;
        }
        match call.streams.iter_mut().find(|s| s.ssrc == rtp.ssrc) {
            Some(stream) => stream.receive(
                now,
                rtp.sequence,
                rtp.timestamp,
                rtp.payload,
                &mut self.plain[..],
            ),
            None => {
                CallCounters::add(&call.counters.held);
                if call
                    .held
                    .hold(rtp.ssrc, rtp.sequence, rtp.timestamp, rtp.payload, now)
                {
                    CallCounters::add(&call.counters.held_expired);
                }
            }
        }
    }

    /// Plays tick `tick` out on every stream of every call.
    pub fn tick(&mut self, tick: u64, now: Instant) {
        let events = &mut self.events;
        let pushed = &mut self.events_pushed;
        let dropped = &mut self.events_dropped;
        let mut emit = |e: ReceiverEvent| {
            if events.push(e).is_ok() {
                *pushed += 1;
            } else {
                *dropped += 1;
            }
        };
        for call in self.calls.iter_mut().flatten() {
            let expired = call.held.expire(now);
            if expired > 0 {
                call.counters
                    .held_expired
                    .fetch_add(expired, std::sync::atomic::Ordering::Relaxed);
            }
            for stream in call.streams.iter_mut() {
                stream.play(call.slot, tick, now, &mut emit);
            }
        }
    }
}
