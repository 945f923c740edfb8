//! Events the engine reports, as values on a queue (never callbacks).

use crate::source::EndReason;
use crate::{CallId, SourceId};

/// Something that happened in the engine. Read them from [`crate::Engine::events`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A source left its call; its handle reports `is_ended()` from now on.
    SourceEnded {
        call: CallId,
        source: SourceId,
        reason: EndReason,
    },
    /// A file source hit a decoding or reading error mid-stream. It ends right after, with
    /// [`EndReason::Failed`] unless it had already ended.
    SourceError {
        call: CallId,
        source: SourceId,
        message: String,
    },
    /// A call was removed; all of its sources have ended.
    CallRemoved { call: CallId },
}
