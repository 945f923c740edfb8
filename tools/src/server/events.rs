//! What the server tells its owner while it runs.

use super::CallStats;

/// Events for the server's owner.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum ServerEvent {
    /// A voice session was established (Session Description sent).
    SessionEstablished {
        /// Guild.
        guild_id: u64,
        /// Voice channel.
        channel_id: u64,
        /// User.
        user_id: u64,
        /// Its SSRC.
        ssrc: u32,
    },
    /// Every session of a call ended; its final statistics.
    CallEnded(CallStats),
}
