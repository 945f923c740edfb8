//! A call's frame queue, with the doorbell that lets its consumer stop looking at it while the
//! call is quiet.
//!
//! Frames are queued at their own length (a [`crate::packets`] ring), not in 1,288-byte
//! [`EncodedFrame`] slots: the five slots of the default queue were 6.4 KB of every call's
//! memory, the largest single share of a passthrough call's 65 KB, for packets that are
//! mostly 100–400 bytes.
//!
//! DESIGN.md's target is 1,000 idle joined calls within 2 % of one core: idle calls must not
//! tick. The sender used to look into every call's queue on every tick to see whether a frame
//! had come; with 1,000 quiet calls that walk was two cache misses a call (the call, then the
//! queue's shared indices), twice a tick: ~1 % of a core for the sender thread alone (perf:
//! 80 % of its samples on those two loads). Now a consumer *parks* an empty queue
//! ([`FrameReceiver::try_park`]) and forgets it; the producer's next push clears the park and
//! bumps a counter shared by every queue of the engine ([`FrameSignal`]); the consumer checks
//! that one counter each tick and looks only at its parked queues when it moved.
//!
//! Parking races with pushing, and neither side may lose the other's move: the consumer stores
//! the park and then looks at the queue, the producer stores the frame and then looks at the
//! park, each with a full fence in between, so at least one of them sees the other (the
//! store-load pattern of an event count). A queue both sides saw ends up unparked with its
//! counter bumped, which costs one needless look.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};

use crate::frame::{EncodedFrame, FrameKind};
use crate::packets::{PacketConsumer, PacketProducer, packet_ring};

/// Counts wake-ups of parked queues; one per engine, shared by all its calls' queues.
#[derive(Debug, Default)]
pub struct FrameSignal {
    rung: AtomicU64,
}

impl FrameSignal {
    /// How many parked queues have been woken so far: when it differs from the last value
    /// read, at least one parked queue has a frame.
    pub fn count(&self) -> u64 {
        self.rung.load(Ordering::Acquire)
    }
}

/// The park flag of one queue, and the signal its wake-up bumps.
#[derive(Debug)]
struct Bell {
    parked: AtomicBool,
    signal: Arc<FrameSignal>,
}

/// What the queue keeps of a frame besides its Opus bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    /// Grid index the frame is due at (see [`EncodedFrame::tick`]).
    pub tick: u64,
    /// Audio, or the end of a stretch of audio.
    pub kind: FrameKind,
}

/// The frame queue is full: the frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

impl std::fmt::Display for QueueFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the frame queue is full")
    }
}

impl std::error::Error for QueueFull {}

/// Consumer end of a call's frame queue: the sender drains it; the mixer thread fills it.
pub struct FrameReceiver {
    frames: PacketConsumer<FrameHead>,
    bell: Arc<Bell>,
}

impl std::fmt::Debug for FrameReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameReceiver")
            .field("queued", &self.frames.len())
            .field("parked", &self.is_parked())
            .finish()
    }
}

impl FrameReceiver {
    /// Frames queued.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether no frame is queued.
    pub fn is_empty(&self) -> bool {
        self.frames.len() == 0
    }

    /// The oldest frame's tick and kind, without taking it.
    pub fn peek(&self) -> Option<FrameHead> {
        self.frames.peek().map(|(head, _)| head)
    }

    /// Takes the oldest frame and hands its head and Opus bytes (empty for
    /// [`FrameKind::EndOfStream`]) to `read`, straight from the queue: nothing is copied.
    pub fn pop_with<R>(&mut self, read: impl FnOnce(FrameHead, &[u8]) -> R) -> Option<R> {
        self.frames.read(true, read)
    }

    /// Takes the oldest frame, copied out whole.
    pub fn pop(&mut self) -> Option<EncodedFrame> {
        self.pop_with(|head, opus| {
            let mut frame = EncodedFrame::new(head.tick, head.kind);
            frame.buffer_mut()[..opus.len()].copy_from_slice(opus);
            frame.set_len(opus.len());
            frame
        })
    }

    /// Drops the oldest frame; false when none was queued.
    pub fn discard(&mut self) -> bool {
        self.frames.discard(1) == 1
    }

    /// Parks the queue if it is empty: its producer's next push then bumps [`Self::signal`]
    /// and clears the park, so the consumer need not look at it until then. Returns whether it
    /// parked.
    pub fn try_park(&self) -> bool {
        let bell = &*self.bell;
        bell.parked.store(true, Ordering::Relaxed);
        // Pairs with the fence in `FrameSender::push`: either this side sees the frame or
        // that side sees the park.
        fence(Ordering::SeqCst);
        if self.is_empty() {
            return true;
        }
        bell.parked.store(false, Ordering::Relaxed);
        false
    }

    /// Whether the queue is parked and no frame has come since.
    pub fn is_parked(&self) -> bool {
        self.bell.parked.load(Ordering::Acquire)
    }

    /// Takes the queue out of parking without a frame (the consumer wants to look at it again).
    pub fn unpark(&self) {
        self.bell.parked.store(false, Ordering::Relaxed);
    }

    /// The counter a wake-up of this queue bumps.
    pub fn signal(&self) -> &Arc<FrameSignal> {
        &self.bell.signal
    }
}

/// Producer end of a call's frame queue: the mixer fills it (or you, feeding a sender
/// yourself).
pub struct FrameSender {
    frames: PacketProducer<FrameHead>,
    bell: Arc<Bell>,
}

impl std::fmt::Debug for FrameSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameSender")
            .field("room", &self.frames.free_packets())
            .finish()
    }
}

impl FrameSender {
    /// Queues a copy of `frame` (its Opus bytes only, not the whole slot); fails when the
    /// queue is full. Wakes a parked consumer.
    pub fn push(&mut self, frame: &EncodedFrame) -> Result<(), QueueFull> {
        let head = FrameHead {
            tick: frame.tick,
            kind: frame.kind,
        };
        if !self.frames.push(head, frame.opus()) {
            return Err(QueueFull);
        }
        // Pairs with the fence in `FrameReceiver::try_park`.
        fence(Ordering::SeqCst);
        let bell = &*self.bell;
        if bell.parked.load(Ordering::Relaxed) && bell.parked.swap(false, Ordering::AcqRel) {
            bell.signal.rung.fetch_add(1, Ordering::Release);
        }
        Ok(())
    }
}

/// A frame queue of `capacity` frames whose wake-ups bump `signal` (the engine uses one signal
/// for all its calls; a sender watches the first it is given).
///
/// It holds `capacity` frames of up to 640 bytes (a 256 kb/s stream), and at least two of the
/// largest (1,275 bytes); larger frames fill it sooner.
pub fn frame_queue(capacity: usize, signal: &Arc<FrameSignal>) -> (FrameSender, FrameReceiver) {
    let (producer, consumer) = packet_ring(capacity.max(1));
    let bell = Arc::new(Bell {
        parked: AtomicBool::new(false),
        signal: Arc::clone(signal),
    });
    (
        FrameSender {
            frames: producer,
            bell: Arc::clone(&bell),
        },
        FrameReceiver {
            frames: consumer,
            bell,
        },
    )
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::frame::FrameKind;

    fn frame(tick: u64) -> EncodedFrame {
        EncodedFrame::from_packet(tick, &[0xF8, tick as u8, 0xFE]).unwrap()
    }

    #[test]
    fn a_push_wakes_a_parked_queue_once() {
        let signal = Arc::new(FrameSignal::default());
        let (mut tx, mut rx) = frame_queue(4, &signal);
        assert!(rx.try_park());
        assert!(rx.is_parked());
        assert_eq!(signal.count(), 0);
        tx.push(&frame(1)).unwrap();
        assert!(!rx.is_parked());
        assert_eq!(signal.count(), 1);
        // Not parked any more: further pushes do not bump the signal.
        tx.push(&frame(2)).unwrap();
        assert_eq!(signal.count(), 1);
        // A queue with frames does not park.
        assert!(!rx.try_park());
        assert!(!rx.is_parked());
        assert_eq!(rx.pop().unwrap().tick, 1);
        assert_eq!(rx.pop().unwrap().tick, 2);
        assert!(rx.try_park());
        rx.unpark();
        assert!(!rx.is_parked());
        tx.push(&frame(3)).unwrap();
        assert_eq!(signal.count(), 1, "unparked by its consumer: no wake-up");
    }

    #[test]
    fn a_full_queue_refuses_the_frame() {
        let signal = Arc::new(FrameSignal::default());
        let (mut tx, mut rx) = frame_queue(2, &signal);
        tx.push(&frame(1)).unwrap();
        tx.push(&frame(2)).unwrap();
        assert_eq!(tx.push(&frame(3)), Err(QueueFull));
        assert_eq!(rx.pop().unwrap().tick, 1);
        tx.push(&frame(3)).unwrap();
    }

    #[test]
    fn frames_come_out_as_they_went_in() {
        let signal = Arc::new(FrameSignal::default());
        let (mut tx, mut rx) = frame_queue(5, &signal);
        let mut next = 0_u64;
        for round in 0..300_u64 {
            let len = (round as usize * 211) % (crate::frame::MAX_OPUS_PACKET + 1);
            let opus: Vec<u8> = (0..len).map(|i| (i as u64 + round) as u8).collect();
            let mut queued = EncodedFrame::from_packet(round, &opus).unwrap();
            if round % 7 == 0 {
                queued = EncodedFrame::new(round, FrameKind::EndOfStream);
            }
            if tx.push(&queued).is_err() {
                // Full: drain what is there, then it fits.
                while let Some(out) = rx.pop() {
                    assert_eq!(out.tick, next);
                    next += 1;
                }
                tx.push(&queued).unwrap();
            }
            if round % 3 == 0 {
                let head = rx.peek().unwrap();
                assert_eq!(head.tick, next);
                let (tick, kind, opus_len) = rx
                    .pop_with(|head, opus| (head.tick, head.kind, opus.len()))
                    .unwrap();
                assert_eq!((tick, kind), (head.tick, head.kind));
                if kind == FrameKind::EndOfStream {
                    assert_eq!(opus_len, 0);
                }
                next += 1;
            }
        }
        while let Some(out) = rx.pop() {
            let expected_len = if out.tick % 7 == 0 {
                0
            } else {
                (out.tick as usize * 211) % (crate::frame::MAX_OPUS_PACKET + 1)
            };
            assert_eq!(out.opus().len(), expected_len);
            assert!(
                out.opus()
                    .iter()
                    .enumerate()
                    .all(|(i, &b)| b == (i as u64 + out.tick) as u8)
            );
            assert_eq!(out.tick, next);
            next += 1;
        }
        assert_eq!(next, 300);
        assert!(!rx.discard());
    }

    /// Producer and consumer race on two threads: every frame pushed is either seen by a
    /// consumer that did not park, or wakes it; none is stranded in a parked queue.
    #[test]
    fn no_frame_is_stranded_by_a_racing_park() {
        const FRAMES: u64 = 20_000;
        let signal = Arc::new(FrameSignal::default());
        let (mut tx, mut rx) = frame_queue(8, &signal);
        let producer = std::thread::spawn(move || {
            for tick in 0..FRAMES {
                let f = frame(tick);
                while tx.push(&f).is_err() {
                    std::hint::spin_loop();
                }
            }
        });
        let mut got = 0;
        let mut seen = signal.count();
        let mut parked = false;
        let mut parked_at = Instant::now();
        while got < FRAMES {
            let now = signal.count();
            let moved = now != seen;
            seen = now;
            if parked {
                // Only the signal may bring a parked queue back.
                if !moved {
                    // A frame left in a parked queue that never rang blocks the producer
                    // (the queue fills) and this loop for good; ten seconds is far beyond any
                    // scheduling delay, and turns that hang into a failure.
                    assert!(
                        parked_at.elapsed() < Duration::from_secs(10) || rx.is_empty(),
                        "a frame was stranded in a parked queue"
                    );
                    std::hint::spin_loop();
                    continue;
                }
                // A race both sides saw bumps the signal for a queue that did not park.
                if rx.is_parked() {
                    continue;
                }
            }
            while let Some(f) = rx.pop() {
                assert_eq!(f.tick, got);
                got += 1;
            }
            parked = rx.try_park();
            parked_at = Instant::now();
        }
        producer.join().unwrap(); // invariant: the producer does not panic
    }
}
