//! One call's connection as the driver sees it: how it joins, and what its UDP side waits for.

use std::net::UdpSocket;
use std::sync::Arc;

use quaver_engine::{CallId, FrameReceiver};
use quaver_gateway::control::{BotId, ConnectionId as GatewayCall};
use quaver_gateway::join::{JoinFlow, UpdateVoiceState, VoiceStateSender};
use quaver_net::keepalive::Keepalive;

use quaver_net::crypto::{EncryptionMode, SecretKey};

use super::discovery::Discovery;
use super::listen::{Listening, Members};
use crate::event::{CallStatus, E2eeStatus};

/// Whose main-gateway connection sends op 4 for a call and receives its voice dispatches.
#[derive(Clone)]
pub(crate) enum JoinVia {
    /// The built-in client, on the control thread.
    Bot(BotId),
    /// The host program's own library (twilight, serenity …); it hands us the dispatches.
    Host {
        /// Sends op 4 on the host's shard.
        shard: Arc<dyn VoiceStateSender + Sync>,
        /// The bot's user ID (the built-in client learns it from READY instead).
        user_id: u64,
    },
}

impl JoinVia {
    pub(crate) fn is_host(&self) -> bool {
        matches!(self, JoinVia::Host { .. })
    }

    pub(crate) fn is_bot(&self, bot: BotId) -> bool {
        matches!(self, JoinVia::Bot(b) if *b == bot)
    }
}

/// What the call's UDP side is waiting for; each state holds exactly what it has.
pub(crate) enum Link {
    /// No voice session: joining, between sessions, or ended.
    Down,
    /// The gateway asked for IP discovery; the answer is awaited.
    ExpectDiscovery(Discovery),
    /// Discovery done, Select Protocol sent; the Session Description is awaited.
    ExpectSession(Arc<UdpSocket>),
    /// Frames are sealed and sent from `slot` on the sender thread.
    Sending(Sending),
}

/// A call whose packets are flowing.
pub(crate) struct Sending {
    pub(crate) socket: Arc<UdpSocket>,
    pub(crate) slot: quaver_net::SendSlot,
    /// The session's SSRC, mode and key, which the receive side needs too.
    pub(crate) ssrc: u32,
    pub(crate) mode: EncryptionMode,
    pub(crate) key: SecretKey,
    /// Whether the sender last reported audio (keepalives only while silent).
    pub(crate) speaking: bool,
    pub(crate) keepalive: Keepalive,
}

/// One call.
pub(crate) struct Call {
    pub(crate) id: CallId,
    /// The mixer's frames, until a session's sender slot takes them.
    pub(crate) frames: Option<FrameReceiver>,
    pub(crate) join: Option<(JoinVia, JoinFlow)>,
    /// The current voice connection; a move or endpoint change replaces it.
    pub(crate) gateway: Option<GatewayCall>,
    pub(crate) link: Link,
    pub(crate) status: CallStatus,
    pub(crate) e2ee: E2eeStatus,
    /// The voice gateway's last heartbeat round trip on the current connection.
    pub(crate) latency: Option<std::time::Duration>,
    pub(crate) members: Members,
    pub(crate) listen: Option<Listening>,
}

impl Call {
    pub(crate) fn new(
        id: CallId,
        frames: FrameReceiver,
        join: Option<(JoinVia, JoinFlow)>,
    ) -> Self {
        Self {
            id,
            frames: Some(frames),
            status: if join.is_some() {
                CallStatus::Joining
            } else {
                CallStatus::Connecting
            },
            join,
            gateway: None,
            link: Link::Down,
            e2ee: E2eeStatus::default(),
            latency: None,
            members: Members::default(),
            listen: None,
        }
    }

    pub(crate) fn slot(&self) -> Option<quaver_net::SendSlot> {
        match &self.link {
            Link::Sending(s) => Some(s.slot),
            _ => None,
        }
    }
}

/// Sends op 4 for a call through its main gateway.
pub(crate) fn send_voice_state(
    via: &JoinVia,
    update: &UpdateVoiceState,
    ctl: &mut quaver_gateway::control::ControlContext<'_>,
) -> Result<(), crate::Error> {
    match via {
        JoinVia::Bot(bot) => ctl
            .bot_send(*bot, update.to_gateway_json())
            .map_err(|_| crate::Error::UnknownBot(*bot)),
        JoinVia::Host { shard, .. } => shard
            .send_voice_state_update(update)
            .map_err(crate::Error::VoiceStateNotSent),
    }
}
