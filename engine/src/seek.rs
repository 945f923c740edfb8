//! Seeking a playing source without stopping its call: the handle asks, the decoder (worker
//! side) repositions and publishes a *mark*, and the mixer discards everything the decoder
//! wrote before the mark, so the first audio after the seek is from the new position.
//!
//! The mark is a count of items (samples or packets) written to the source's ring before the
//! seek. The mixer counts what it has read, so it knows exactly how much of what is buffered is
//! stale, without a round trip to the decoder and without locks: the mixer only ever reads
//! atomics and skips ring slots (`rtrb`'s `read_chunk(n).commit_all()`, no copy, no allocation).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// No seek is waiting in [`SeekShared::request_us`].
const NO_REQUEST: u64 = u64::MAX;

/// Seek state shared by a source's handle, its decoder and its mixer slot. Atomics only.
#[derive(Debug)]
pub(crate) struct SeekShared {
    /// The position asked for, in microseconds ([`NO_REQUEST`] when none).
    request_us: AtomicU64,
    /// Bumped (Release) after `mark_*` are written; the mixer compares it with the last it saw.
    mark_seq: AtomicU64,
    /// Items written to the ring before the seek: the mixer discards up to here.
    mark_discard_until: AtomicU64,
    /// The media position of the first item after the mark, in microseconds.
    mark_position_us: AtomicU64,
    /// The media position of the next audio the mixer plays, in microseconds (mixer-written).
    position_us: AtomicU64,
}

impl SeekShared {
    pub(crate) fn new(start: Duration) -> Self {
        Self {
            request_us: AtomicU64::new(NO_REQUEST),
            mark_seq: AtomicU64::new(0),
            mark_discard_until: AtomicU64::new(0),
            mark_position_us: AtomicU64::new(0),
            position_us: AtomicU64::new(micros(start)),
        }
    }

    /// Handle side: asks the decoder to move to `to` (a later request replaces an earlier one).
    pub(crate) fn request(&self, to: Duration) {
        self.request_us
            .store(micros(to).min(NO_REQUEST - 1), Ordering::Release);
    }

    /// Decoder side: the position asked for since the last call, if any.
    pub(crate) fn take_request(&self) -> Option<Duration> {
        match self.request_us.swap(NO_REQUEST, Ordering::Acquire) {
            NO_REQUEST => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// Decoder side: everything written before `written` items is stale; what follows starts
    /// at `position`.
    pub(crate) fn publish(&self, written: u64, position: Duration) {
        self.mark_discard_until.store(written, Ordering::Relaxed);
        self.mark_position_us
            .store(micros(position), Ordering::Relaxed);
        self.mark_seq.fetch_add(1, Ordering::Release);
    }

    /// Before the source plays: where its input starts.
    pub(crate) fn reset_position(&self, start: Duration) {
        self.position_us.store(micros(start), Ordering::Relaxed);
    }

    /// The media position of the next audio the mixer plays.
    pub(crate) fn position(&self) -> Duration {
        Duration::from_micros(self.position_us.load(Ordering::Relaxed))
    }

    /// Mixer side: one frame of `frame` played.
    pub(crate) fn advance(&self, frame: Duration) {
        self.position_us.fetch_add(micros(frame), Ordering::Relaxed);
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(NO_REQUEST - 1)
}

/// The mixer's side of a source's seek state: what it has read and which mark it applied.
#[derive(Debug, Default)]
pub(crate) struct SeekCursor {
    seen_seq: u64,
    /// Items read from the ring so far (played or discarded).
    consumed: u64,
}

impl SeekCursor {
    /// Counts `items` read from the ring.
    pub(crate) fn consumed(&mut self, items: usize) {
        self.consumed += items as u64;
    }

    /// A new mark, if one was published since the last call: how many buffered items are stale.
    /// Moves the shared position to the mark's. A mark overwritten while being read is picked
    /// up at the next tick.
    pub(crate) fn poll(&mut self, shared: &SeekShared) -> Option<u64> {
        let seq = shared.mark_seq.load(Ordering::Acquire);
        if seq == self.seen_seq {
            return None;
        }
        let discard_until = shared.mark_discard_until.load(Ordering::Relaxed);
        let position = shared.mark_position_us.load(Ordering::Relaxed);
        if shared.mark_seq.load(Ordering::Acquire) != seq {
            return None;
        }
        self.seen_seq = seq;
        shared.position_us.store(position, Ordering::Relaxed);
        Some(discard_until.saturating_sub(self.consumed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_discards_only_what_was_written_before_it() {
        let shared = SeekShared::new(Duration::ZERO);
        let mut cursor = SeekCursor::default();
        assert_eq!(cursor.poll(&shared), None);
        cursor.consumed(100);
        shared.publish(250, Duration::from_secs(3));
        assert_eq!(cursor.poll(&shared), Some(150));
        assert_eq!(shared.position(), Duration::from_secs(3));
        // Applied once only.
        assert_eq!(cursor.poll(&shared), None);
        shared.advance(Duration::from_millis(20));
        assert_eq!(shared.position(), Duration::from_millis(3020));
    }

    #[test]
    fn the_latest_request_wins_and_is_taken_once() {
        let shared = SeekShared::new(Duration::ZERO);
        assert_eq!(shared.take_request(), None);
        shared.request(Duration::from_secs(1));
        shared.request(Duration::from_secs(2));
        assert_eq!(shared.take_request(), Some(Duration::from_secs(2)));
        assert_eq!(shared.take_request(), None);
    }
}
