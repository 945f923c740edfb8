//! Events the engine reports, as values on a queue (never callbacks).

use std::sync::Arc;

use crate::source::EndReason;
use crate::{CallId, SourceId};

/// Something that happened in the engine. Read them from [`crate::Engine::events`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// A source left its call; its handle reports `is_ended()` from now on.
    SourceEnded {
        /// The call it played in.
        call: CallId,
        /// The source.
        source: SourceId,
        /// Why it ended.
        reason: EndReason,
    },
    /// A source's input (file, command, HTTP stream) failed mid-stream: a read or decode
    /// error, a child process that exited unsuccessfully (with its standard error), a decoder
    /// panic. It ends right after, with [`EndReason::Failed`] unless it had already ended.
    SourceError {
        /// The call it plays in.
        call: CallId,
        /// The source.
        source: SourceId,
        /// What went wrong ([`crate::Error::Input`] names the input).
        error: Arc<crate::Error>,
    },
    /// A call was removed; all of its sources have ended.
    CallRemoved {
        /// The removed call.
        call: CallId,
    },
    /// A queued track started playing, in the same tick the previous one ended (or, with a
    /// crossfade, began to fade out).
    TrackStarted {
        /// The call whose queue it is.
        call: CallId,
        /// The track's source.
        source: SourceId,
    },
    /// A queued track ended ([`EndReason::Stopped`] when skipped). Its
    /// [`Event::SourceEnded`] comes too.
    TrackEnded {
        /// The call whose queue it is.
        call: CallId,
        /// The track's source.
        source: SourceId,
        /// Why it ended.
        reason: EndReason,
    },
    /// A queued track could not be opened when its turn came; the queue moved on.
    TrackFailed {
        /// The call whose queue it is.
        call: CallId,
        /// The track.
        input: crate::InputName,
        /// Why.
        error: Arc<crate::Error>,
    },
    /// Where the playing queued track is, once a second of playback.
    TrackPosition {
        /// The call whose queue it is.
        call: CallId,
        /// The track's source.
        source: SourceId,
        /// Its position (see [`crate::SourceHandle::position`]).
        position: std::time::Duration,
    },
}

/// Errors are not comparable (they carry I/O errors), so two `SourceError`s are equal when they
/// are the same report (one `Arc`).
impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (
                Event::SourceEnded {
                    call: a,
                    source: b,
                    reason: c,
                },
                Event::SourceEnded {
                    call: x,
                    source: y,
                    reason: z,
                },
            ) => (a, b, c) == (x, y, z),
            (
                Event::SourceError {
                    call: a,
                    source: b,
                    error: c,
                },
                Event::SourceError {
                    call: x,
                    source: y,
                    error: z,
                },
            ) => (a, b) == (x, y) && Arc::ptr_eq(c, z),
            (Event::CallRemoved { call: a }, Event::CallRemoved { call: x }) => a == x,
            (
                Event::TrackStarted { call: a, source: b },
                Event::TrackStarted { call: x, source: y },
            ) => (a, b) == (x, y),
            (
                Event::TrackEnded {
                    call: a,
                    source: b,
                    reason: c,
                },
                Event::TrackEnded {
                    call: x,
                    source: y,
                    reason: z,
                },
            ) => (a, b, c) == (x, y, z),
            (
                Event::TrackFailed {
                    call: a,
                    input: b,
                    error: c,
                },
                Event::TrackFailed {
                    call: x,
                    input: y,
                    error: z,
                },
            ) => (a, b) == (x, y) && Arc::ptr_eq(c, z),
            (
                Event::TrackPosition {
                    call: a,
                    source: b,
                    position: c,
                },
                Event::TrackPosition {
                    call: x,
                    source: y,
                    position: z,
                },
            ) => (a, b, c) == (x, y, z),
            _ => false,
        }
    }
}
