//! The facade's one error type, wrapping the crates' own.

use std::time::Duration;

use quaver_engine::CallId;
use quaver_gateway::control::BotId;

impl From<quaver_net::sender::SenderError> for Error {
    fn from(e: quaver_net::sender::SenderError) -> Self {
        Error::Net(e.into())
    }
}

/// Everything that can go wrong at the front door.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The audio engine refused (limits, formats, files).
    #[error(transparent)]
    Engine(#[from] quaver_engine::Error),
    /// UDP, RTP, transport or DAVE crypto failed, or the sender thread refused a call or a key.
    #[error(transparent)]
    Net(#[from] quaver_net::Error),
    /// The gateway side failed (URLs, certificates, websockets, the control thread).
    #[error(transparent)]
    Gateway(#[from] quaver_gateway::Error),
    /// The receive side refused (its thread, a full table, a stream's decoder).
    #[error("receive: {0}")]
    Receive(#[source] quaver_net::receiver::ReceiverError),
    /// [`Engine::listen`](crate::Engine::listen) was called twice for one call.
    #[error("{0} already has a listener")]
    AlreadyListening(CallId),
    /// The call does not exist (any more).
    #[error("no such call: {0}")]
    NoSuchCall(CallId),
    /// The bot connection does not exist, or has not received READY yet.
    #[error("no ready bot connection {0:?}")]
    UnknownBot(BotId),
    /// A bot's main gateway sent no READY in time.
    #[error("the main gateway sent no READY within {0:?}")]
    BotNotReady(Duration),
    /// The host library's shard could not send op 4 (Update Voice State): the join never left.
    #[error("op 4 (Update Voice State) could not be sent: {0}")]
    VoiceStateNotSent(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A host-library integration (`quaver::serenity`, `quaver::twilight`) was asked to
    /// join before it knew the bot's user ID (serenity tells it when the client starts).
    #[error("the bot's user ID is not known yet")]
    UserIdUnknown,
    /// A host-library integration has no call in this guild.
    #[error("no call in guild {0}")]
    NotInGuild(u64),
    /// A thread could not be started.
    #[error("could not start the {name} thread: {source}")]
    Thread {
        /// Which one.
        name: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The control thread is gone, so no call can be driven.
    #[error("the control thread has stopped")]
    Stopped,
}
