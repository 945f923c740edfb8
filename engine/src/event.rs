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
            _ => false,
        }
    }
}
