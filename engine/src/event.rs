//! Events the engine reports, as values on a queue (never callbacks).

use crate::source::EndReason;
use crate::{CallId, SourceId};

/// Something that happened in the engine. Read them from [`crate::Engine::events`].
#[derive(Debug, Clone, PartialEq)]
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
    /// A file source hit a decoding or reading error mid-stream. It ends right after, with
    /// [`EndReason::Failed`] unless it had already ended.
    SourceError {
        /// The call it plays in.
        call: CallId,
        /// The source.
        source: SourceId,
        /// The decoder's or reader's description of the error.
        message: String,
    },
    /// A call was removed; all of its sources have ended.
    CallRemoved {
        /// The removed call.
        call: CallId,
    },
}
