//! A call's frame queue, with the doorbell that lets its consumer stop looking at it while the
//! call is quiet.
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

use crate::frame::EncodedFrame;

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

/// Consumer end of a call's frame queue: the sender drains it; the mixer thread fills it.
///
/// Read it like the [`rtrb::Consumer`] it wraps (it dereferences to one). A queue built from a
/// bare consumer (`FrameReceiver::from`) has no doorbell: it never parks, so its consumer must
/// look at it every tick.
pub struct FrameReceiver {
    frames: rtrb::Consumer<EncodedFrame>,
    bell: Option<Arc<Bell>>,
}

impl std::fmt::Debug for FrameReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameReceiver")
            .field("queued", &self.frames.slots())
            .field("parked", &self.is_parked())
            .finish()
    }
}

impl From<rtrb::Consumer<EncodedFrame>> for FrameReceiver {
    fn from(frames: rtrb::Consumer<EncodedFrame>) -> Self {
        Self { frames, bell: None }
    }
}

impl std::ops::Deref for FrameReceiver {
    type Target = rtrb::Consumer<EncodedFrame>;
    fn deref(&self) -> &Self::Target {
        &self.frames
    }
}

impl std::ops::DerefMut for FrameReceiver {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.frames
    }
}

impl FrameReceiver {
    /// Parks the queue if it is empty: its producer's next push then bumps [`Self::signal`]
    /// and clears the park, so the consumer need not look at it until then. Returns whether it
    /// parked; never for a queue without a doorbell.
    pub fn try_park(&self) -> bool {
        let Some(bell) = &self.bell else {
            return false;
        };
        bell.parked.store(true, Ordering::Relaxed);
        // Pairs with the fence in `FrameSender::push`: either this side sees the frame or
        // that side sees the park.
        fence(Ordering::SeqCst);
        if self.frames.is_empty() {
            return true;
        }
        bell.parked.store(false, Ordering::Relaxed);
        false
    }

    /// Whether the queue is parked and no frame has come since.
    pub fn is_parked(&self) -> bool {
        self.bell
            .as_ref()
            .is_some_and(|bell| bell.parked.load(Ordering::Acquire))
    }

    /// Takes the queue out of parking without a frame (the consumer wants to look at it again).
    pub fn unpark(&self) {
        if let Some(bell) = &self.bell {
            bell.parked.store(false, Ordering::Relaxed);
        }
    }

    /// The counter a wake-up of this queue bumps (`None`: no doorbell).
    pub fn signal(&self) -> Option<&Arc<FrameSignal>> {
        self.bell.as_ref().map(|bell| &bell.signal)
    }
}

/// Producer end of a call's frame queue: the mixer fills it (or you, feeding a sender
/// yourself).
pub struct FrameSender {
    frames: rtrb::Producer<EncodedFrame>,
    bell: Arc<Bell>,
}

impl std::fmt::Debug for FrameSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameSender")
            .field("room", &self.frames.slots())
            .finish()
    }
}

impl FrameSender {
    /// Queues `frame`; hands it back when the queue is full. Wakes a parked consumer.
    // As `rtrb::Producer::push`: the frame comes back by value, to be retried; boxing it
    // would allocate on the mixer thread.
    #[allow(clippy::result_large_err)]
    pub fn push(&mut self, frame: EncodedFrame) -> Result<(), EncodedFrame> {
        self.frames
            .push(frame)
            .map_err(|rtrb::PushError::Full(frame)| frame)?;
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
/// for all its calls; a sender watches one).
pub fn frame_queue(capacity: usize, signal: &Arc<FrameSignal>) -> (FrameSender, FrameReceiver) {
    let (producer, consumer) = rtrb::RingBuffer::new(capacity);
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
            bell: Some(bell),
        },
    )
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::frame::FrameKind;

    fn frame(tick: u64) -> EncodedFrame {
        EncodedFrame::new(tick, FrameKind::Audio)
    }

    #[test]
    fn a_push_wakes_a_parked_queue_once() {
        let signal = Arc::new(FrameSignal::default());
        let (mut tx, mut rx) = frame_queue(4, &signal);
        assert!(rx.try_park());
        assert!(rx.is_parked());
        assert_eq!(signal.count(), 0);
        tx.push(frame(1)).unwrap();
        assert!(!rx.is_parked());
        assert_eq!(signal.count(), 1);
        // Not parked any more: further pushes do not bump the signal.
        tx.push(frame(2)).unwrap();
        assert_eq!(signal.count(), 1);
        // A queue with frames does not park.
        assert!(!rx.try_park());
        assert!(!rx.is_parked());
        assert_eq!(rx.pop().unwrap().tick, 1);
        assert_eq!(rx.pop().unwrap().tick, 2);
        assert!(rx.try_park());
        rx.unpark();
        assert!(!rx.is_parked());
        tx.push(frame(3)).unwrap();
        assert_eq!(signal.count(), 1, "unparked by its consumer: no wake-up");
    }

    #[test]
    fn a_full_queue_hands_the_frame_back() {
        let signal = Arc::new(FrameSignal::default());
        let (mut tx, _rx) = frame_queue(1, &signal);
        tx.push(frame(1)).unwrap();
        assert_eq!(tx.push(frame(2)).unwrap_err().tick, 2);
    }

    #[test]
    fn a_bare_consumer_never_parks() {
        let (_tx, rx) = rtrb::RingBuffer::<EncodedFrame>::new(2);
        let rx = FrameReceiver::from(rx);
        assert!(!rx.try_park());
        assert!(!rx.is_parked());
        assert!(rx.signal().is_none());
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
                let mut f = frame(tick);
                while let Err(back) = tx.push(f) {
                    f = back;
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
            while let Ok(f) = rx.pop() {
                assert_eq!(f.tick, got);
                got += 1;
            }
            parked = rx.try_park();
            parked_at = Instant::now();
        }
        producer.join().unwrap(); // invariant: the producer does not panic
    }
}
