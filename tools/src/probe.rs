//! The latency probe's record of what it pushed, shared with whoever hears it (the raw listener
//! and the hearing engine), so each arrival is matched to its push as it comes and nothing is
//! kept for the end of the run. Keeping every packet for an end-of-run match grew the jitter
//! process by ~80 KB/s in a 10-minute soak, whatever the call count.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a push is remembered: far beyond any latency the tool reports (a packet that
/// takes longer is not matched), short enough that the record stays small (500 packets).
const KEEP: Duration = Duration::from_secs(10);

/// When each probe packet (passthrough probe) or click (encode probe) was pushed.
#[derive(Default)]
pub struct PushLog {
    inner: Mutex<Pushes>,
}

#[derive(Default)]
struct Pushes {
    /// Push time by payload hash: the sweep makes every packet unique.
    packets: HashMap<u64, Instant>,
    /// The same entries in push order, to forget the oldest.
    order: VecDeque<(u64, Instant)>,
    clicks: VecDeque<Instant>,
    /// Whether the probe pushes clicks (a PCM probe) rather than packets.
    clicking: bool,
}

fn payload_key(payload: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    payload.hash(&mut hasher);
    hasher.finish()
}

impl PushLog {
    /// An empty record, to share between the probe's producer and its listeners.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> MutexGuard<'_, Pushes> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that `payload` was pushed at `at`.
    pub fn packet(&self, payload: &[u8], at: Instant) {
        let key = payload_key(payload);
        let mut pushes = self.lock();
        while let Some(&(old, when)) = pushes.order.front() {
            if at.saturating_duration_since(when) <= KEEP {
                break;
            }
            pushes.order.pop_front();
            if pushes.packets.get(&old) == Some(&when) {
                pushes.packets.remove(&old);
            }
        }
        pushes.packets.insert(key, at);
        pushes.order.push_back((key, at));
    }

    /// Records a click pushed at `at`.
    pub fn click(&self, at: Instant) {
        let mut pushes = self.lock();
        pushes.clicking = true;
        while pushes
            .clicks
            .front()
            .is_some_and(|&when| at.saturating_duration_since(when) > KEEP)
        {
            pushes.clicks.pop_front();
        }
        pushes.clicks.push_back(at);
    }

    /// When `payload` was pushed, if it was within the last [`KEEP`].
    pub fn pushed(&self, payload: &[u8]) -> Option<Instant> {
        let key = payload_key(payload);
        self.lock().packets.get(&key).copied()
    }

    /// Whether the probe is a clicking one (its arrivals need decoding to be matched).
    pub fn clicking(&self) -> bool {
        self.lock().clicking
    }

    /// Packets and clicks remembered now.
    pub fn len(&self) -> usize {
        let pushes = self.lock();
        pushes.packets.len() + pushes.clicks.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Matches each click onset a listener hears to the click that made it. Clicks are 200 ms
/// apart and latency far below that, so an onset belongs to the newest click pushed by then
/// that no earlier onset took (or, if it came impossibly early, to the next one).
#[derive(Default)]
pub struct ClickMatcher {
    last: Option<Instant>,
}

impl ClickMatcher {
    /// The push time of the click heard at `onset`.
    pub fn matched(&mut self, log: &PushLog, onset: Instant) -> Option<Instant> {
        let pushes = log.lock();
        let mut untaken = pushes
            .clicks
            .iter()
            .copied()
            .filter(|&c| self.last.is_none_or(|last| c > last));
        let first = untaken.next()?;
        let click = std::iter::once(first)
            .chain(untaken)
            .take_while(|&c| c <= onset)
            .last()
            .unwrap_or(first);
        self.last = Some(click);
        Some(click)
    }
}

/// Finds click onsets in decoded audio: loud after 100 ms of quiet.
#[derive(Default)]
pub struct Onsets {
    quiet: usize,
}

impl Onsets {
    /// Feeds one frame's left-channel samples (full scale 1.0); whether a click starts in it.
    pub fn frame(&mut self, left: impl Iterator<Item = f32>) -> bool {
        let mut onset = false;
        for s in left {
            if s.abs() > 0.25 {
                if self.quiet > 4_800 {
                    onset = true;
                }
                self.quiet = 0;
            } else {
                self.quiet += 1;
            }
        }
        onset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_are_matched_and_old_ones_forgotten() {
        let log = PushLog::new();
        let t0 = Instant::now();
        for i in 0..2_000u32 {
            log.packet(&i.to_le_bytes(), t0 + Duration::from_millis(20) * i);
        }
        // 10 s of packets at 50 a second are kept, not all 2,000.
        assert_eq!(log.len(), 501);
        assert_eq!(
            log.pushed(&1_999u32.to_le_bytes()),
            Some(t0 + Duration::from_millis(20) * 1_999)
        );
        assert_eq!(log.pushed(&0u32.to_le_bytes()), None);
        assert!(!log.clicking());
    }

    #[test]
    fn each_onset_takes_the_newest_click_before_it_once() {
        let log = PushLog::new();
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        for n in [0, 200, 400, 600] {
            log.click(ms(n));
        }
        assert!(log.clicking());
        let mut matcher = ClickMatcher::default();
        assert_eq!(matcher.matched(&log, ms(230)), Some(ms(200)));
        // Early against its click (clock noise): the next untaken one.
        assert_eq!(matcher.matched(&log, ms(390)), Some(ms(400)));
        assert_eq!(matcher.matched(&log, ms(630)), Some(ms(600)));
        assert_eq!(matcher.matched(&log, ms(830)), None);
    }

    #[test]
    fn an_onset_is_loud_after_a_tenth_of_a_second_of_quiet() {
        let mut onsets = Onsets::default();
        let quiet = [0.0_f32; 960];
        let mut loud = [0.0_f32; 960];
        loud[10] = 0.8;
        assert!(!onsets.frame(loud.iter().copied()));
        for _ in 0..5 {
            assert!(!onsets.frame(quiet.iter().copied()));
        }
        assert!(onsets.frame(loud.iter().copied()));
        assert!(!onsets.frame(loud.iter().copied()));
    }
}
