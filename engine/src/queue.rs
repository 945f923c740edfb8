//! A per-call track queue (optional): tracks play one after another, the next starting in the
//! same tick the previous ends (gapless), or fading in under it (crossfade). Only the next
//! track is opened ahead (prebuffering in its ring while the current one plays); the rest wait
//! as descriptions. The mixer swaps tracks itself, so the hand-over never waits for this side.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::child::CommandOptions;
use crate::engine::{Inner, Placement, lock};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::file::FileOptions;
use crate::frame::FRAME_DURATION;
use crate::http_stream::HttpOptions;
use crate::input::InputName;
use crate::mixer::Command as MixerCommand;
use crate::source::SourceHandle;
use crate::{CallId, Engine};

/// How often [`Event::TrackPosition`] reports the playing track's position.
const POSITION_EVERY: Duration = Duration::from_secs(1);

/// A track waiting in a queue: what to open when its turn comes.
#[derive(Debug)]
#[non_exhaustive]
pub enum Track {
    /// A file (as [`Engine::play_file`]).
    File {
        /// The file.
        path: PathBuf,
        /// How to play it.
        options: FileOptions,
    },
    /// A command's output (as [`Engine::play_command`]).
    Command {
        /// The command, started when the track is opened.
        command: Command,
        /// How to play it.
        options: CommandOptions,
    },
    /// An HTTP(S) stream (as [`Engine::play_url`]).
    Url {
        /// The URL.
        url: String,
        /// How to play it.
        options: HttpOptions,
    },
}

impl Track {
    /// A file with default options.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Track::File {
            path: path.into(),
            options: FileOptions::default(),
        }
    }

    /// An HTTP(S) stream with default options.
    pub fn url(url: impl Into<String>) -> Self {
        Track::Url {
            url: url.into(),
            options: HttpOptions::default(),
        }
    }

    /// What the track plays.
    pub fn input(&self) -> InputName {
        match self {
            Track::File { path, .. } => InputName::File(path.clone()),
            Track::Command { command, .. } => InputName::Command(command.get_program().to_owned()),
            Track::Url { url, .. } => InputName::Url(url.clone()),
        }
    }
}

/// One entry of [`Engine::queue`].
#[derive(Debug, Clone)]
pub struct QueueEntry {
    /// What it plays.
    pub input: InputName,
    /// Its source, once opened: the playing track and the next one have one.
    pub source: Option<SourceHandle>,
}

/// A call's queue, on the control side.
#[derive(Default)]
pub(crate) struct TrackQueue {
    current: Option<(InputName, SourceHandle)>,
    next: Option<(InputName, SourceHandle)>,
    /// The track being opened on a loader thread, if any.
    loading: Option<InputName>,
    pending: VecDeque<Track>,
    crossfade: Duration,
    /// Bumped by a clear, so a load that was under way is dropped.
    generation: u64,
    /// The position last reported.
    reported: Option<Duration>,
}

/// Opens `track` for `call` as the queue's next.
fn open(inner: &Inner, call: CallId, track: Track, crossfade: Duration) -> Result<SourceHandle> {
    let placement = Placement::Next {
        crossfade_ticks: (crossfade.as_millis() / FRAME_DURATION.as_millis()) as u32,
    };
    match track {
        Track::File { path, options } => {
            let id = inner.next_source_id();
            let opened = crate::file::open_file(call, id, &path, &options)?;
            inner.start_file(call, opened, placement)
        }
        Track::Command {
            mut command,
            options,
        } => crate::child::play_command(inner, call, &mut command, &options, placement),
        Track::Url { url, options } => {
            crate::http_stream::play_url(inner, call, &url, options, placement)
        }
    }
}

impl Inner {
    /// Opens the call's next pending track on a loader thread if no next track is ready.
    /// Opening may block (a command starting, a server answering), so never on the worker.
    pub(crate) fn refill_queue(self: &Arc<Self>, call: CallId) {
        let (track, generation, crossfade) = {
            let mut queues = lock(&self.queues);
            let Some(queue) = queues.get_mut(&call) else {
                return;
            };
            if queue.next.is_some() || queue.loading.is_some() {
                return;
            }
            let Some(track) = queue.pending.pop_front() else {
                return;
            };
            queue.loading = Some(track.input());
            (track, queue.generation, queue.crossfade)
        };
        let inner = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("quaver-queue-loader".into())
            .spawn(move || inner.load_next(call, track, generation, crossfade));
        if spawned.is_err() {
            // No thread: the track stays unopened; the next event retries.
            if let Some(queue) = lock(&self.queues).get_mut(&call) {
                queue.loading = None;
            }
        }
    }

    fn load_next(
        self: &Arc<Self>,
        call: CallId,
        track: Track,
        generation: u64,
        crossfade: Duration,
    ) {
        let input = track.input();
        let opened = open(self, call, track, crossfade);
        let mut queues = lock(&self.queues);
        let Some(queue) = queues.get_mut(&call) else {
            if let Ok(handle) = opened {
                handle.stop();
            }
            return;
        };
        queue.loading = None;
        match opened {
            Ok(handle) if queue.generation == generation => queue.next = Some((input, handle)),
            Ok(handle) => self.drop_cleared(call, &handle),
            Err(error) => self.forward(Event::TrackFailed {
                call,
                input,
                error: Arc::new(error),
            }),
        }
        drop(queues);
        self.refill_queue(call);
    }

    /// A track opened while the queue was being cleared: it must not play.
    fn drop_cleared(&self, call: CallId, handle: &SourceHandle) {
        handle.stop();
        let _ = self.send_about(call, MixerCommand::ClearNext(call));
    }

    /// Keeps the queues in step with the mixer's track events; reports positions.
    pub(crate) fn track_queues(self: &Arc<Self>, events: &[Event]) {
        let mut refill = Vec::new();
        {
            let mut queues = lock(&self.queues);
            for event in events {
                match event {
                    Event::TrackStarted { call, source } => {
                        if let Some(queue) = queues.get_mut(call) {
                            if queue.next.as_ref().is_some_and(|(_, h)| h.id() == *source) {
                                queue.current = queue.next.take();
                                queue.reported = None;
                            }
                            refill.push(*call);
                        }
                    }
                    Event::TrackEnded { call, source, .. } => {
                        if let Some(queue) = queues.get_mut(call)
                            && queue
                                .current
                                .as_ref()
                                .is_some_and(|(_, h)| h.id() == *source)
                        {
                            queue.current = None;
                        }
                    }
                    Event::CallRemoved { call } => {
                        queues.remove(call);
                    }
                    _ => {}
                }
            }
            for (call, queue) in queues.iter_mut() {
                let Some((_, handle)) = &queue.current else {
                    continue;
                };
                let position = handle.position();
                let due = queue
                    .reported
                    .is_none_or(|last| position >= last + POSITION_EVERY || position < last);
                if due && !handle.is_ended() {
                    queue.reported = Some(position);
                    self.forward(Event::TrackPosition {
                        call: *call,
                        source: handle.id(),
                        position,
                    });
                }
            }
        }
        for call in refill {
            self.refill_queue(call);
        }
    }
}

impl Engine {
    /// Adds a track to `call`'s queue. When nothing is queued, it is opened here and starts
    /// at the next tick (errors come back from this call); otherwise it waits its turn and is
    /// opened, on a loader thread, when the track before it starts (a failure then is an
    /// [`Event::SourceError`], and the queue moves on). Each track starts in the tick the one
    /// before it ends, with no silent frame between them, or fades in under it (see
    /// [`Engine::set_crossfade`]). [`Event::TrackStarted`], [`Event::TrackEnded`] and
    /// [`Event::TrackPosition`] tell where the queue is.
    pub fn enqueue(&self, call: CallId, track: Track) -> Result<()> {
        self.call_exists(call)?;
        let mut queues = lock(&self.inner.queues);
        let queue = queues.entry(call).or_default();
        let idle = queue.current.is_none()
            && queue.next.is_none()
            && queue.loading.is_none()
            && queue.pending.is_empty();
        if !idle {
            queue.pending.push_back(track);
            drop(queues);
            self.inner.refill_queue(call);
            return Ok(());
        }
        let input = track.input();
        let crossfade = queue.crossfade;
        let generation = queue.generation;
        queue.loading = Some(input.clone());
        // Opening may block (a command, a server): not while holding the queues.
        drop(queues);
        let opened = open(&self.inner, call, track, crossfade);
        let mut queues = lock(&self.inner.queues);
        let queue = queues.entry(call).or_default();
        queue.loading = None;
        let handle = opened?;
        if queue.generation == generation {
            queue.next = Some((input, handle));
        } else {
            self.inner.drop_cleared(call, &handle);
        }
        drop(queues);
        self.inner.refill_queue(call);
        Ok(())
    }

    /// Skips the playing track: it fades out over one frame and the next starts in that tick.
    /// Returns whether a track was playing.
    pub fn skip(&self, call: CallId) -> Result<bool> {
        self.call_exists(call)?;
        let queues = lock(&self.inner.queues);
        match queues.get(&call).and_then(|q| q.current.as_ref()) {
            Some((_, handle)) => {
                handle.stop();
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Empties `call`'s queue of everything after the playing track (which plays on; skip it
    /// to stop it too).
    pub fn clear_queue(&self, call: CallId) -> Result<()> {
        self.call_exists(call)?;
        let mut queues = lock(&self.inner.queues);
        if let Some(queue) = queues.get_mut(&call) {
            queue.pending.clear();
            queue.next = None;
            queue.generation += 1;
        }
        self.inner.send_about(call, MixerCommand::ClearNext(call))
    }

    /// What `call`'s queue holds: the playing track, the next (opened) one, then the rest.
    pub fn queue(&self, call: CallId) -> Vec<QueueEntry> {
        let queues = lock(&self.inner.queues);
        let Some(queue) = queues.get(&call) else {
            return Vec::new();
        };
        let opened = |(input, handle): &(InputName, SourceHandle)| QueueEntry {
            input: input.clone(),
            source: Some(handle.clone()),
        };
        queue
            .current
            .iter()
            .chain(queue.next.iter())
            .map(opened)
            .chain(queue.loading.iter().map(|input| QueueEntry {
                input: input.clone(),
                source: None,
            }))
            .chain(queue.pending.iter().map(|track| QueueEntry {
                input: track.input(),
                source: None,
            }))
            .collect()
    }

    /// Fades each next track in over `duration` while the one before fades out (0: back to
    /// back, the default). Applies to tracks opened from now on. The fade starts when the
    /// playing track's input is complete and what is left of it fits in `duration`, so it
    /// cannot be longer than that track's read-ahead.
    pub fn set_crossfade(&self, call: CallId, duration: Duration) -> Result<()> {
        self.call_exists(call)?;
        lock(&self.inner.queues).entry(call).or_default().crossfade = duration;
        Ok(())
    }

    fn call_exists(&self, call: CallId) -> Result<usize> {
        self.inner.mixer_of(call).ok_or(Error::NoSuchCall(call))
    }
}
