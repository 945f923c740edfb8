//! The main-gateway join flow (placeholder until implemented).

/// Errors from the join flow.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum JoinError {
    /// Not joined to that guild.
    #[error("not joined to guild {0}")]
    NotJoined(u64),
}
