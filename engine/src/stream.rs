//! Inputs whose bytes arrive through blocking reads (a child's pipe, an HTTP socket): each is
//! decoded on a thread of its own, because a read that waits for the network or a slow child
//! would stall every file on the shared worker. The thread sleeps in those reads (or parks
//! while the ring is full) and never polls; the engine's worker aborts the read (kills the
//! child, shuts the socket) once the source has ended, so the thread always exits.

use std::io::{Read, Seek, SeekFrom};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::decode::Decoder;
use crate::event::Event;
use crate::input::InputError;
use crate::source::SourceShared;

/// How long an input thread parks when its ring is full: the mixer drains 20 ms per tick, so
/// this keeps a read-ahead of seconds topped up at a few wake-ups per tick at most.
const FULL_RING_PARK: Duration = Duration::from_millis(10);
/// How long an input thread at the end of a seekable input parks between checks that its
/// source is still playing (a seek wakes it at once).
const AT_END_PARK: Duration = Duration::from_millis(100);

/// What an input thread does besides decoding: reports how its input ended.
pub(crate) trait Feed: Send {
    /// After decoding stopped (`outcome`), with `stopped` when the source ended first (stop,
    /// call removed, engine dropped): the error to report, if any. Releases the input (kills
    /// and reaps a child).
    fn finish(
        &mut self,
        outcome: std::result::Result<(), InputError>,
        stopped: bool,
    ) -> Option<InputError>;
}

/// One running input thread, as the engine's worker sees it.
pub(crate) struct Running {
    shared: Arc<SourceShared>,
    /// Unblocks the thread's read (kills the child, shuts the socket down).
    abort: Box<dyn Fn() + Send>,
    aborted: bool,
    thread: Option<JoinHandle<()>>,
}

impl Running {
    /// Called by the worker every few milliseconds: aborts the read of an ended source, and
    /// returns `false` once the thread has exited (and was joined).
    pub(crate) fn check(&mut self) -> bool {
        if self.shared.is_ended() && !self.aborted {
            (self.abort)();
            self.aborted = true;
        }
        match &self.thread {
            Some(thread) if thread.is_finished() => {
                if let Some(thread) = self.thread.take() {
                    let _ = thread.join();
                }
                false
            }
            Some(_) => true,
            None => false,
        }
    }

    /// The engine is going away: end the source, unblock the thread and wait for it.
    pub(crate) fn shut_down(&mut self) {
        self.shared.mark_ended();
        (self.abort)();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts the thread that decodes `decoder`'s input; events go to `report`.
pub(crate) fn spawn(
    mut decoder: Decoder,
    mut feed: Box<dyn Feed>,
    abort: Box<dyn Fn() + Send>,
    report: Box<dyn Fn(Event) + Send>,
) -> std::io::Result<Running> {
    let shared = Arc::clone(decoder.shared());
    let name = format!("quaver-input-{}", decoder.source());
    let thread = std::thread::Builder::new().name(name).spawn(move || {
        let outcome = loop {
            if decoder.shared().is_ended() {
                break Ok(());
            }
            // A decoder bug ends this source only (see the worker's catch_unwind).
            let pumped = std::panic::catch_unwind(AssertUnwindSafe(|| decoder.pump()))
                .unwrap_or(Err(InputError::DecoderPanicked));
            match pumped {
                // At the end of a seekable input: wait for a seek (which unparks) or the end.
                Ok(true) if decoder.at_end() => std::thread::park_timeout(AT_END_PARK),
                Ok(true) => std::thread::park_timeout(FULL_RING_PARK),
                Ok(false) => break Ok(()),
                Err(error) => break Err(error),
            }
        };
        let stopped = decoder.shared().is_ended() || decoder.shared().stop_requested();
        if let Some(error) = feed.finish(outcome, stopped) {
            decoder.fail();
            report(crate::engine::source_error(&decoder, error));
        }
        // Dropping the decoder drops its writer: the source plays out what is buffered.
        drop(decoder);
    })?;
    shared.set_decoder_thread(thread.thread().clone());
    Ok(Running {
        shared,
        abort,
        aborted: false,
        thread: Some(thread),
    })
}

/// The last bytes read from a forward-only source, so that a short step back reads them again
/// instead of asking the source (a pipe cannot; an HTTP server would need a new request).
pub(crate) struct Rewind {
    history: Vec<u8>,
    /// How many of `history`'s last bytes are to be read again.
    replay: usize,
    /// Bytes kept (up to twice as many are held between trims).
    keep: usize,
}

impl Rewind {
    pub(crate) fn new(keep: usize) -> Self {
        Self {
            history: Vec::with_capacity(keep * 2),
            replay: 0,
            keep,
        }
    }

    /// Copies bytes due to be replayed into `buf`; `None` when there are none (read from the
    /// source and [`remember`](Self::remember) what it gave).
    pub(crate) fn replay_into(&mut self, buf: &mut [u8]) -> Option<usize> {
        if self.replay == 0 {
            return None;
        }
        let start = self.history.len() - self.replay;
        let count = self.replay.min(buf.len());
        buf[..count].copy_from_slice(&self.history[start..start + count]);
        self.replay -= count;
        Some(count)
    }

    /// Keeps bytes just read from the source.
    pub(crate) fn remember(&mut self, bytes: &[u8]) {
        self.history.extend_from_slice(bytes);
        if self.history.len() > self.keep * 2 {
            let excess = self.history.len() - self.keep;
            self.history.drain(..excess);
        }
    }

    /// Bytes behind the read position that can be read again.
    pub(crate) fn behind(&self) -> u64 {
        (self.history.len() - self.replay) as u64
    }

    /// Bytes ahead of the read position that will be replayed.
    pub(crate) fn ahead(&self) -> u64 {
        self.replay as u64
    }

    /// Moves the read position by `delta` bytes within the history (checked by the caller
    /// against [`behind`](Self::behind) and [`ahead`](Self::ahead)).
    pub(crate) fn step(&mut self, delta: i64) {
        self.replay = (self.replay as i64 - delta).clamp(0, self.history.len() as i64) as usize;
    }

    /// Forgets everything (the source moved elsewhere).
    pub(crate) fn clear(&mut self) {
        self.history.clear();
        self.replay = 0;
    }
}

/// Bytes kept for re-reading by [`ForwardOnly`]: the Ogg reader steps back at most the 1 KiB
/// it read while looking for a page's capture pattern.
const HISTORY: usize = 8192;

/// A forward-only byte stream (a pipe) with just enough `Seek` for the Ogg reader: telling the
/// position, and stepping back over bytes it read recently.
pub(crate) struct ForwardOnly<R> {
    inner: R,
    rewind: Rewind,
    position: u64,
}

impl<R: Read> ForwardOnly<R> {
    pub(crate) fn new(inner: R) -> Self {
        Self {
            inner,
            rewind: Rewind::new(HISTORY),
            position: 0,
        }
    }
}

impl<R: Read> Read for ForwardOnly<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let count = match self.rewind.replay_into(buf) {
            Some(count) => count,
            None => {
                let count = self.inner.read(buf)?;
                self.rewind.remember(&buf[..count]);
                count
            }
        };
        self.position += count as u64;
        Ok(count)
    }
}

impl<R: Read> Seek for ForwardOnly<R> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        let back = match pos {
            SeekFrom::Current(offset) if offset <= 0 => offset.unsigned_abs(),
            SeekFrom::Start(to) if to <= self.position => self.position - to,
            _ => return Err(std::io::ErrorKind::Unsupported.into()),
        };
        if back > self.rewind.behind() {
            return Err(std::io::ErrorKind::Unsupported.into());
        }
        self.rewind.step(-(back as i64));
        self.position -= back;
        Ok(self.position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_only_steps_back_over_recent_bytes_only() {
        let data: Vec<u8> = (0..=255).cycle().take(40_000).collect();
        let mut reader = ForwardOnly::new(&data[..]);
        let mut buf = [0_u8; 1000];
        reader.read_exact(&mut buf).unwrap();
        assert_eq!(reader.stream_position().unwrap(), 1000);
        assert_eq!(reader.seek(SeekFrom::Current(-10)).unwrap(), 990);
        let mut again = [0_u8; 20];
        reader.read_exact(&mut again).unwrap();
        assert_eq!(&again[..], &data[990..1010]);
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).unwrap();
        assert_eq!(&rest[..], &data[1010..]);
        assert!(reader.seek(SeekFrom::Start(0)).is_err());
        assert!(reader.seek(SeekFrom::End(0)).is_err());
    }
}
