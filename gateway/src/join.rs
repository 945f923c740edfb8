//! The main-gateway join flow (PROTOCOL.md §1), sans-IO.
//!
//! Joining a voice channel is a conversation on the *main* gateway: send op 4 Update Voice
//! State, then wait for both VOICE_STATE_UPDATE (our `session_id`, `channel_id`) and
//! VOICE_SERVER_UPDATE (`token`, `endpoint`), in either order. [`JoinFlow`] tracks that for one
//! guild and tells its owner when to open, replace or close the voice connection. It is used by
//! both join paths: a host's own main-gateway library ([`VoiceStateSender`]) or the built-in
//! client ([`crate::main_gateway`]).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::protocol::{SessionId, Snowflake, Token};
use crate::voice::{EndReason, VoiceConnectRequest};

/// Errors from the join flow.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum JoinError {
    /// Not joined to that guild.
    #[error("not joined to guild {0}")]
    NotJoined(u64),
    /// A dispatch payload could not be decoded.
    #[error("malformed {what} dispatch: {reason}")]
    Malformed {
        /// Which dispatch.
        what: &'static str,
        /// What serde said.
        reason: String,
    },
}

/// The `d` of a VOICE_STATE_UPDATE dispatch (the fields the join flow needs; others ignored).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VoiceStateUpdate {
    /// Guild, absent for DM calls.
    #[serde(default)]
    pub guild_id: Option<Snowflake>,
    /// The channel the user is now in; `None` means they left.
    #[serde(default)]
    pub channel_id: Option<Snowflake>,
    /// Whose voice state this is.
    pub user_id: Snowflake,
    /// Voice session ID for the voice gateway's Identify (redacted in `Debug`).
    pub session_id: SessionId,
}

impl VoiceStateUpdate {
    /// Decode from a dispatch's `d` JSON (what a host library hands over as raw JSON).
    pub fn from_json(d: &str) -> Result<Self, JoinError> {
        serde_json::from_str(d).map_err(|e| JoinError::Malformed {
            what: "VOICE_STATE_UPDATE",
            reason: e.to_string(),
        })
    }
}

/// The `d` of a VOICE_SERVER_UPDATE dispatch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VoiceServerUpdate {
    /// Voice token (redacted in `Debug`).
    pub token: Token,
    /// Guild.
    pub guild_id: Snowflake,
    /// `host:port` of the voice server; `None` when the allocated server went away.
    #[serde(default)]
    pub endpoint: Option<String>,
}

impl VoiceServerUpdate {
    /// Decode from a dispatch's `d` JSON.
    pub fn from_json(d: &str) -> Result<Self, JoinError> {
        serde_json::from_str(d).map_err(|e| JoinError::Malformed {
            what: "VOICE_SERVER_UPDATE",
            reason: e.to_string(),
        })
    }
}

/// Main-gateway op 4 Update Voice State.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateVoiceState {
    /// Guild.
    pub guild_id: Snowflake,
    /// Channel to join, `None` to leave.
    pub channel_id: Option<Snowflake>,
    /// Muted.
    pub self_mute: bool,
    /// Deafened.
    pub self_deaf: bool,
}

impl UpdateVoiceState {
    /// The full main-gateway frame `{"op":4,"d":{…}}`.
    pub fn to_gateway_json(&self) -> String {
        serde_json::json!({ "op": 4, "d": self }).to_string()
    }
}

/// How to appear in the channel (op 4's `self_mute` and `self_deaf`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JoinOptions {
    /// Show as muted (audio is still sent; this is only the indicator).
    pub self_mute: bool,
    /// Deafened: the voice server sends this member no audio.
    pub self_deaf: bool,
}

/// What the owner of a [`JoinFlow`] must do.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum JoinAction {
    /// Send op 4 on the main gateway.
    SendVoiceStateUpdate(UpdateVoiceState),
    /// Open a fresh voice connection with this request (closing any current one first).
    Connect(VoiceConnectRequest),
    /// Close the current voice connection, if any.
    Disconnect,
    /// We are no longer in a voice channel in this guild.
    Left,
}

/// States, named after what they wait for.
#[derive(Clone, Debug, PartialEq)]
enum JoinState {
    /// Not joined.
    Idle,
    /// Op 4 sent (or a voice session lost); waiting for the two dispatches.
    ExpectVoiceUpdates,
    /// A voice connection is running with `token` at `endpoint`.
    Connected,
    /// The voice server went away (null endpoint, 4011/4014/4022): wait for a new server update.
    ExpectServerUpdate,
}

/// Which of the two voice dispatches the flow still waits for before it connects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Awaiting {
    /// Nothing: connect when the credentials are complete.
    Neither,
    /// VOICE_STATE_UPDATE (session ID, channel).
    StateUpdate,
    /// VOICE_SERVER_UPDATE (token, endpoint).
    ServerUpdate,
    /// Both, in either order (right after our op 4).
    Both,
}

impl Awaiting {
    fn got_state_update(self) -> Self {
        match self {
            Awaiting::Both => Awaiting::ServerUpdate,
            Awaiting::StateUpdate => Awaiting::Neither,
            other => other,
        }
    }

    fn got_server_update(self) -> Self {
        match self {
            Awaiting::Both => Awaiting::StateUpdate,
            Awaiting::ServerUpdate => Awaiting::Neither,
            other => other,
        }
    }

    fn and_server_update(self) -> Self {
        match self {
            Awaiting::Neither => Awaiting::ServerUpdate,
            Awaiting::StateUpdate => Awaiting::Both,
            other => other,
        }
    }
}

/// The join flow for one guild.
#[derive(Debug)]
pub struct JoinFlow {
    guild_id: u64,
    user_id: u64,
    state: JoinState,
    requested: Option<UpdateVoiceState>,
    session_id: Option<SessionId>,
    channel_id: Option<u64>,
    server: Option<(Token, String)>,
    out: VecDeque<JoinAction>,
    voice_state_retries: u32,
    /// After our op 4, wait for *both* dispatches before connecting, whatever their order: a
    /// move's new token must not be used with the old channel or vice versa.
    awaiting: Awaiting,
    /// A server update arrived since the last connect: its token has not been used yet.
    fresh_token: bool,
    /// Whether a plain `ws://` endpoint from VOICE_SERVER_UPDATE is followed as given.
    plain_endpoints: bool,
}

impl JoinFlow {
    /// A flow for `guild_id`, as bot user `user_id`.
    pub fn new(guild_id: u64, user_id: u64) -> Self {
        JoinFlow {
            guild_id,
            user_id,
            state: JoinState::Idle,
            requested: None,
            session_id: None,
            channel_id: None,
            server: None,
            out: VecDeque::new(),
            voice_state_retries: 0,
            awaiting: Awaiting::Neither,
            fresh_token: false,
            plain_endpoints: true,
        }
    }

    /// Whether a VOICE_SERVER_UPDATE `endpoint` with an explicit `ws://` scheme is used as given
    /// (a local test server the user chose) or upgraded to `wss://`, so the voice token never
    /// travels in clear text because the network asked for it. Allowed by default for the
    /// built-in client, which already upgrades unless its own URL is plain
    /// ([`crate::main_gateway::MainGatewayConfig::allows_plain_urls`]); a host's own
    /// main-gateway library should pass `false` unless the user configured a plain server.
    pub fn allow_plain_endpoints(&mut self, allowed: bool) {
        self.plain_endpoints = allowed;
    }

    /// The guild.
    pub fn guild_id(&self) -> u64 {
        self.guild_id
    }

    /// The channel we are in (as last reported by VOICE_STATE_UPDATE).
    pub fn channel_id(&self) -> Option<u64> {
        self.channel_id
    }

    /// Whether a voice connection should currently be running.
    pub fn is_connected(&self) -> bool {
        self.state == JoinState::Connected
    }

    /// Join (or move to) `channel_id`.
    pub fn join(&mut self, channel_id: u64, options: JoinOptions) {
        let update = UpdateVoiceState {
            guild_id: Snowflake(self.guild_id),
            channel_id: Some(Snowflake(channel_id)),
            self_mute: options.self_mute,
            self_deaf: options.self_deaf,
        };
        self.requested = Some(update);
        self.voice_state_retries = 0;
        if self.state != JoinState::Connected {
            self.state = JoinState::ExpectVoiceUpdates;
        }
        // A move keeps the current connection until both new dispatches arrived.
        self.request_voice_state(update);
    }

    /// The main-gateway session behind this flow was replaced by a fresh Identify
    /// ([`crate::main_gateway::MainGatewayEvent::Reconnected`] with `resumed: false`): Discord
    /// dropped the old session's voice state, so ask for the current channel again. A running
    /// voice connection keeps going until both new dispatches arrived, then is replaced.
    pub fn rejoin(&mut self) {
        if self.state == JoinState::Idle {
            return;
        }
        let Some(mut update) = self.requested else {
            return;
        };
        if let Some(channel) = self.channel_id {
            update.channel_id = Some(Snowflake(channel));
        }
        self.requested = Some(update);
        self.voice_state_retries = 0;
        if self.state != JoinState::Connected {
            self.state = JoinState::ExpectVoiceUpdates;
        }
        self.request_voice_state(update);
    }

    fn request_voice_state(&mut self, update: UpdateVoiceState) {
        self.awaiting = Awaiting::Both;
        self.out.push_back(JoinAction::SendVoiceStateUpdate(update));
    }

    /// Leave the channel.
    pub fn leave(&mut self) {
        let update = UpdateVoiceState {
            guild_id: Snowflake(self.guild_id),
            channel_id: None,
            self_mute: false,
            self_deaf: false,
        };
        self.out.push_back(JoinAction::SendVoiceStateUpdate(update));
        self.reset_to_idle();
    }

    /// Feed a VOICE_STATE_UPDATE. Other users' and other guilds' updates are ignored.
    pub fn handle_voice_state_update(&mut self, u: &VoiceStateUpdate) {
        if u.user_id.0 != self.user_id || u.guild_id.is_some_and(|g| g.0 != self.guild_id) {
            return;
        }
        if self.state == JoinState::Idle {
            return;
        }
        let Some(channel) = u.channel_id else {
            // Kicked, or our leave took effect.
            self.reset_to_idle();
            return;
        };
        let moved = self.channel_id.is_some_and(|c| c != channel.0);
        self.channel_id = Some(channel.0);
        self.session_id = Some(u.session_id.clone());
        self.awaiting = self.awaiting.got_state_update();
        if moved && self.state == JoinState::Connected && !self.fresh_token {
            // Moved by someone else: the token changes with a move, so wait for the new server
            // update (the old connection keeps running until then).
            self.awaiting = self.awaiting.and_server_update();
        }
        self.try_connect();
    }

    /// Feed a VOICE_SERVER_UPDATE for this guild.
    pub fn handle_voice_server_update(&mut self, u: &VoiceServerUpdate) {
        if u.guild_id.0 != self.guild_id || self.state == JoinState::Idle {
            return;
        }
        match &u.endpoint {
            None => {
                // The voice server went away: close and wait for a better update.
                if self.state == JoinState::Connected {
                    self.out.push_back(JoinAction::Disconnect);
                }
                self.server = None;
                self.fresh_token = false;
                self.state = JoinState::ExpectServerUpdate;
            }
            Some(endpoint) => {
                let endpoint = match endpoint.get(.."ws://".len()) {
                    Some(s) if !self.plain_endpoints && s.eq_ignore_ascii_case("ws://") => {
                        tracing::warn!(
                            guild = self.guild_id,
                            "a plain ws:// voice endpoint: using wss://"
                        );
                        format!("wss://{}", &endpoint["ws://".len()..])
                    }
                    _ => endpoint.clone(),
                };
                // Never reuse a token: every server update means a fresh voice session.
                self.server = Some((u.token.clone(), endpoint));
                self.awaiting = self.awaiting.got_server_update();
                self.fresh_token = true;
                self.try_connect();
            }
        }
    }

    /// The voice connection ended; follow its reason.
    pub fn handle_voice_ended(&mut self, reason: &EndReason) {
        if self.state != JoinState::Connected {
            return;
        }
        match reason {
            EndReason::NeedsNewVoiceState { .. } => {
                self.server = None;
                self.state = JoinState::ExpectVoiceUpdates;
                match self.requested {
                    Some(update) if self.voice_state_retries < 1 => {
                        self.voice_state_retries += 1;
                        self.request_voice_state(update);
                    }
                    _ => self.reset_to_idle(),
                }
            }
            EndReason::AwaitServerUpdate { .. } => {
                self.server = None;
                self.state = JoinState::ExpectServerUpdate;
            }
            // The voice server stayed unreachable through every retry (an outage, or it moved):
            // ask the main gateway where the call lives now rather than leave. Each round is
            // paced by the voice connection's own backoff, so this never spins; the user leaves
            // with `leave`.
            EndReason::RetriesExhausted => {
                self.server = None;
                self.state = JoinState::ExpectVoiceUpdates;
                if let Some(update) = self.requested {
                    self.request_voice_state(update);
                }
            }
            _ => self.reset_to_idle(),
        }
    }

    /// Next action for the owner.
    pub fn poll_action(&mut self) -> Option<JoinAction> {
        self.out.pop_front()
    }

    fn try_connect(&mut self) {
        if self.awaiting != Awaiting::Neither {
            return;
        }
        if self.state == JoinState::Connected && !self.fresh_token {
            return;
        }
        let (Some(session_id), Some(channel_id), Some((token, endpoint))) =
            (&self.session_id, self.channel_id, &self.server)
        else {
            return;
        };
        let request = VoiceConnectRequest {
            guild_id: self.guild_id,
            channel_id,
            user_id: self.user_id,
            session_id: session_id.clone(),
            token: token.clone(),
            endpoint: endpoint.clone(),
        };
        self.out.push_back(JoinAction::Connect(request));
        self.state = JoinState::Connected;
        self.fresh_token = false;
    }

    fn reset_to_idle(&mut self) {
        if self.state == JoinState::Idle {
            return;
        }
        if self.state == JoinState::Connected {
            self.out.push_back(JoinAction::Disconnect);
        }
        self.state = JoinState::Idle;
        self.session_id = None;
        self.channel_id = None;
        self.server = None;
        self.requested = None;
        self.awaiting = Awaiting::Neither;
        self.fresh_token = false;
        self.out.push_back(JoinAction::Left);
    }
}

/// For bots that already run a main-gateway library (twilight, serenity, …): the host sends op 4
/// for us. Implement it by forwarding to your shard, e.g. twilight's
/// `shard.command(&UpdateVoiceState::new(guild, channel, mute, deaf))`, or by writing
/// [`UpdateVoiceState::to_gateway_json`] to the socket.
pub trait VoiceStateSender: Send {
    /// Send main-gateway op 4 for `update.guild_id`. An error (the shard is gone, its queue is
    /// closed) fails the join at once instead of leaving it waiting for dispatches that never
    /// come.
    fn send_voice_state_update(&self, update: &UpdateVoiceState)
    -> Result<(), SendVoiceStateError>;
}

/// Why a host library could not send op 4 (its own error, boxed).
pub type SendVoiceStateError = Box<dyn std::error::Error + Send + Sync>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::voice::VoiceConnectRequest;

    const G: u64 = 1;
    const ME: u64 = 99;

    fn vsu(channel: Option<u64>, session: &str) -> VoiceStateUpdate {
        VoiceStateUpdate {
            guild_id: Some(Snowflake(G)),
            channel_id: channel.map(Snowflake),
            user_id: Snowflake(ME),
            session_id: session.into(),
        }
    }

    fn vserver(token: &str, endpoint: Option<&str>) -> VoiceServerUpdate {
        VoiceServerUpdate {
            token: Token::new(token),
            guild_id: Snowflake(G),
            endpoint: endpoint.map(str::to_string),
        }
    }

    fn actions(f: &mut JoinFlow) -> Vec<JoinAction> {
        std::iter::from_fn(|| f.poll_action()).collect()
    }

    fn connect_to(f: &mut JoinFlow) -> VoiceConnectRequest {
        let a = actions(f);
        let Some(JoinAction::Connect(r)) = a.last() else {
            panic!("expected a connect, got {a:?}");
        };
        r.clone()
    }

    #[test]
    fn both_orders() {
        for server_first in [false, true] {
            let mut f = JoinFlow::new(G, ME);
            f.join(
                5,
                JoinOptions {
                    self_mute: false,
                    self_deaf: true,
                },
            );
            let a = actions(&mut f);
            assert!(matches!(&a[..], [JoinAction::SendVoiceStateUpdate(u)]
                if u.channel_id == Some(Snowflake(5)) && u.self_deaf));
            if server_first {
                f.handle_voice_server_update(&vserver("t1", Some("ep:443")));
                assert!(actions(&mut f).is_empty());
                f.handle_voice_state_update(&vsu(Some(5), "s1"));
            } else {
                f.handle_voice_state_update(&vsu(Some(5), "s1"));
                assert!(actions(&mut f).is_empty());
                f.handle_voice_server_update(&vserver("t1", Some("ep:443")));
            }
            let r = connect_to(&mut f);
            assert_eq!(
                (
                    r.guild_id,
                    r.channel_id,
                    r.user_id,
                    r.session_id.expose(),
                    r.token.expose(),
                    r.endpoint.as_str()
                ),
                (G, 5, ME, "s1", "t1", "ep:443")
            );
        }
    }

    #[test]
    fn other_users_and_guilds_are_ignored() {
        let mut f = JoinFlow::new(G, ME);
        f.join(5, JoinOptions::default());
        actions(&mut f);
        let mut other = vsu(Some(5), "x");
        other.user_id = Snowflake(7);
        f.handle_voice_state_update(&other);
        let mut other_guild = vserver("t", Some("e"));
        other_guild.guild_id = Snowflake(2);
        f.handle_voice_server_update(&other_guild);
        f.handle_voice_server_update(&vserver("t", Some("e")));
        assert!(actions(&mut f).is_empty());
    }

    #[test]
    fn channel_move_gets_a_fresh_session() {
        let mut f = JoinFlow::new(G, ME);
        f.join(5, JoinOptions::default());
        f.handle_voice_state_update(&vsu(Some(5), "s1"));
        f.handle_voice_server_update(&vserver("t1", Some("ep:443")));
        connect_to(&mut f);
        f.join(6, JoinOptions::default());
        assert!(matches!(
            &actions(&mut f)[..],
            [JoinAction::SendVoiceStateUpdate(_)]
        ));
        f.handle_voice_state_update(&vsu(Some(6), "s1"));
        assert!(actions(&mut f).is_empty(), "waits for the new token");
        // Same endpoint, new token: a new voice session in the new channel.
        f.handle_voice_server_update(&vserver("t2", Some("ep:443")));
        let r = connect_to(&mut f);
        assert_eq!((r.channel_id, r.token.expose()), (6, "t2"));
        // The other order: server update first must not connect to the old channel.
        f.join(7, JoinOptions::default());
        actions(&mut f);
        f.handle_voice_server_update(&vserver("t3", Some("ep:443")));
        assert!(actions(&mut f).is_empty(), "waits for the new channel");
        f.handle_voice_state_update(&vsu(Some(7), "s1"));
        let r = connect_to(&mut f);
        assert_eq!((r.channel_id, r.token.expose()), (7, "t3"));
    }

    #[test]
    fn moved_by_someone_else() {
        let mut f = JoinFlow::new(G, ME);
        f.join(5, JoinOptions::default());
        f.handle_voice_state_update(&vsu(Some(5), "s1"));
        f.handle_voice_server_update(&vserver("t1", Some("ep:443")));
        connect_to(&mut f);
        f.handle_voice_state_update(&vsu(Some(8), "s1"));
        assert!(actions(&mut f).is_empty());
        f.handle_voice_server_update(&vserver("t2", Some("ep:443")));
        let r = connect_to(&mut f);
        assert_eq!((r.channel_id, r.token.expose()), (8, "t2"));
        // An unrelated state change (mute) in the same channel changes nothing.
        f.handle_voice_state_update(&vsu(Some(8), "s1"));
        assert!(actions(&mut f).is_empty());
    }

    #[test]
    fn a_fresh_main_gateway_session_rejoins_and_reconnects_with_the_new_session() {
        let mut f = JoinFlow::new(G, ME);
        f.join(5, JoinOptions::default());
        f.handle_voice_state_update(&vsu(Some(5), "s1"));
        f.handle_voice_server_update(&vserver("t1", Some("a:443")));
        let actions: Vec<_> = std::iter::from_fn(|| f.poll_action()).collect();
        assert!(matches!(actions.last(), Some(JoinAction::Connect(r)) if r.session_id == "s1"));
        f.rejoin();
        assert!(matches!(
            f.poll_action(),
            Some(JoinAction::SendVoiceStateUpdate(u)) if u.channel_id == Some(Snowflake(5))
        ));
        assert_eq!(
            f.poll_action(),
            None,
            "the old connection keeps running meanwhile"
        );
        f.handle_voice_state_update(&vsu(Some(5), "s2"));
        assert_eq!(f.poll_action(), None, "waits for the server update too");
        f.handle_voice_server_update(&vserver("t2", Some("a:443")));
        match f.poll_action() {
            Some(JoinAction::Connect(r)) => {
                assert_eq!((r.session_id.expose(), r.token.expose()), ("s2", "t2"));
                assert!(
                    !format!("{r:?}").contains("s2"),
                    "session IDs stay out of Debug"
                );
            }
            other => panic!("expected a new connection, got {other:?}"),
        }
        let mut idle = JoinFlow::new(G, ME);
        idle.rejoin();
        assert_eq!(idle.poll_action(), None);
    }

    #[test]
    fn plain_endpoints_from_the_network_are_upgraded_unless_allowed() {
        for (allowed, expected) in [(false, "wss://evil:80"), (true, "ws://evil:80")] {
            let mut f = JoinFlow::new(G, ME);
            f.allow_plain_endpoints(allowed);
            f.join(5, JoinOptions::default());
            f.handle_voice_state_update(&vsu(Some(5), "s1"));
            f.handle_voice_server_update(&vserver("t1", Some("ws://evil:80")));
            let r = connect_to(&mut f);
            assert_eq!(r.endpoint, expected);
            assert!(r.url().starts_with(expected));
        }
    }

    #[test]
    fn endpoint_change_reidentifies() {
        let mut f = JoinFlow::new(G, ME);
        f.join(5, JoinOptions::default());
        f.handle_voice_state_update(&vsu(Some(5), "s1"));
        f.handle_voice_server_update(&vserver("t1", Some("old:443")));
        connect_to(&mut f);
        f.handle_voice_server_update(&vserver("t2", Some("new:443")));
        let a = actions(&mut f);
        let [JoinAction::Connect(r)] = &a[..] else {
            panic!("expected a replacing connect, got {a:?}");
        };
        assert_eq!(
            (r.endpoint.as_str(), r.token.expose(), r.session_id.expose()),
            ("new:443", "t2", "s1")
        );
    }

    #[test]
    fn null_endpoint_closes_and_waits() {
        let mut f = JoinFlow::new(G, ME);
        f.join(5, JoinOptions::default());
        f.handle_voice_state_update(&vsu(Some(5), "s1"));
        f.handle_voice_server_update(&vserver("t1", Some("a:443")));
        connect_to(&mut f);
        f.handle_voice_server_update(&vserver("t1", None));
        assert_eq!(actions(&mut f), vec![JoinAction::Disconnect]);
        assert!(!f.is_connected());
        f.handle_voice_server_update(&vserver("t3", Some("b:443")));
        let r = connect_to(&mut f);
        assert_eq!(r.endpoint, "b:443");
    }

    #[test]
    fn voice_close_codes_drive_the_flow() {
        let mut f = JoinFlow::new(G, ME);
        f.join(5, JoinOptions::default());
        f.handle_voice_state_update(&vsu(Some(5), "s1"));
        f.handle_voice_server_update(&vserver("t1", Some("a:443")));
        connect_to(&mut f);
        // 4014 → wait for a server update.
        f.handle_voice_ended(&EndReason::AwaitServerUpdate { code: 4014 });
        assert!(actions(&mut f).is_empty());
        f.handle_voice_server_update(&vserver("t2", Some("a:443")));
        connect_to(&mut f);
        // 4006 → ask the main gateway again (once).
        f.handle_voice_ended(&EndReason::NeedsNewVoiceState { code: 4006 });
        assert!(
            matches!(&actions(&mut f)[..], [JoinAction::SendVoiceStateUpdate(u)] if u.channel_id == Some(Snowflake(5)))
        );
        f.handle_voice_state_update(&vsu(Some(5), "s2"));
        f.handle_voice_server_update(&vserver("t3", Some("a:443")));
        assert_eq!(connect_to(&mut f).session_id, "s2");
        f.handle_voice_ended(&EndReason::NeedsNewVoiceState { code: 4006 });
        assert_eq!(actions(&mut f), vec![JoinAction::Left]);
    }

    #[test]
    fn an_outage_that_outlasts_the_retries_asks_for_the_channel_again_each_time() {
        let mut f = JoinFlow::new(G, ME);
        f.join(5, JoinOptions::default());
        f.handle_voice_state_update(&vsu(Some(5), "s1"));
        f.handle_voice_server_update(&vserver("t1", Some("a:443")));
        connect_to(&mut f);
        for (round, endpoint) in [(2, "b:443"), (3, "c:443"), (4, "c:443")] {
            f.handle_voice_ended(&EndReason::RetriesExhausted);
            assert!(
                matches!(&actions(&mut f)[..], [JoinAction::SendVoiceStateUpdate(u)] if u.channel_id == Some(Snowflake(5))),
                "round {round}: op 4 again, not a leave"
            );
            f.handle_voice_state_update(&vsu(Some(5), &format!("s{round}")));
            f.handle_voice_server_update(&vserver(&format!("t{round}"), Some(endpoint)));
            assert_eq!(connect_to(&mut f).endpoint, endpoint);
        }
    }

    #[test]
    fn leave_and_kick() {
        let mut f = JoinFlow::new(G, ME);
        f.join(5, JoinOptions::default());
        f.handle_voice_state_update(&vsu(Some(5), "s1"));
        f.handle_voice_server_update(&vserver("t1", Some("a:443")));
        connect_to(&mut f);
        f.leave();
        let a = actions(&mut f);
        assert!(
            matches!(&a[..], [JoinAction::SendVoiceStateUpdate(u), JoinAction::Disconnect, JoinAction::Left] if u.channel_id.is_none())
        );
        // Kicked: a state update with no channel.
        f.join(5, JoinOptions::default());
        f.handle_voice_state_update(&vsu(Some(5), "s1"));
        f.handle_voice_server_update(&vserver("t1", Some("a:443")));
        connect_to(&mut f);
        f.handle_voice_state_update(&vsu(None, "s1"));
        assert_eq!(
            actions(&mut f),
            vec![JoinAction::Disconnect, JoinAction::Left]
        );
    }

    #[test]
    fn dispatch_json() {
        let s = VoiceStateUpdate::from_json(
            r#"{"guild_id":"1","channel_id":"5","user_id":"99","session_id":"abc","deaf":false,"mute":false,"self_deaf":false,"self_mute":false,"suppress":false,"request_to_speak_timestamp":null}"#,
        )
        .unwrap();
        assert_eq!(s, vsu(Some(5), "abc"));
        let v = VoiceServerUpdate::from_json(r#"{"token":"t","guild_id":"1","endpoint":null}"#)
            .unwrap();
        assert_eq!(v.endpoint, None);
        assert!(VoiceServerUpdate::from_json("{}").is_err());
        assert_eq!(
            UpdateVoiceState {
                guild_id: Snowflake(1),
                channel_id: None,
                self_mute: false,
                self_deaf: true
            }
            .to_gateway_json(),
            r#"{"d":{"channel_id":null,"guild_id":"1","self_deaf":true,"self_mute":false},"op":4}"#
        );
    }
}
