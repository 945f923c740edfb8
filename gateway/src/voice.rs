//! The sans-IO voice gateway v8 state machine.
//!
//! [`VoiceGateway`] owns no socket and reads no clock. Its driver tells it when a websocket
//! opened or closed, hands it every received frame with `now`, calls
//! [`VoiceGateway::handle_timeout`] at [`VoiceGateway::poll_timeout`], and drains
//! [`VoiceGateway::poll_output`]: socket actions (connect, send, close) and [`VoiceEvent`]s for the
//! call's owner, in the order they must happen.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::backoff::{Backoff, BackoffConfig, JitterSource};
use crate::dave::{DaveClient, DaveContext, DaveEvent, DaveExtension, DaveOutbox, NoDave};
use crate::heartbeat::{Beat, Heartbeater};
use crate::protocol::{
    BinaryFrame, ClosePolicy, DEFAULT_MAX_FRAME_LEN, EncryptionMode, Heartbeat, Identify, Ready,
    Resume, SecretKey, SelectProtocol, SelectProtocolData, SessionDescription, SessionId,
    Snowflake, Speaking, SpeakingFlags, Token, VoicePayload, close_policy,
};

/// Close code we use when we abandon a socket ourselves (missed ACKs, handshake timeout): in the
/// 4000 range so the server does not read it as a clean session end.
pub const CLIENT_ABANDON_CLOSE_CODE: u16 = 4000;

/// A client-bug close (4001, 4002 …) is retried once per this window; a second one inside it
/// gives up.
pub const CLIENT_BUG_WINDOW: Duration = Duration::from_secs(60);

/// Most users (op 11) and SSRCs (op 5) one call remembers. A stage channel holds at most 10,000
/// people; beyond that a peer is only growing our memory, so further entries are refused and
/// counted ([`VoiceGateway::refused_peers`]).
pub const MAX_PEERS: usize = 10_000;

/// Errors from the voice state machine.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum VoiceError {
    /// Ready offered no transport mode Quaver supports.
    #[error("the voice server offers no supported encryption mode (offered: {offered:?})")]
    NoSupportedMode {
        /// What the server offered.
        offered: Vec<String>,
    },
    /// A message arrived in a state where it makes no sense; it was ignored.
    #[error("unexpected op {op} while {state}")]
    Unexpected {
        /// Opcode.
        op: u64,
        /// The state's name.
        state: &'static str,
    },
    /// `set_discovered_address` was called when no discovery was pending.
    #[error("no IP discovery is pending")]
    NoDiscoveryPending,
}

/// Who to connect as and where: everything the join flow learned from the main gateway.
#[derive(Clone, Debug, PartialEq)]
pub struct VoiceConnectRequest {
    /// Guild ID (`server_id`).
    pub guild_id: u64,
    /// Voice channel ID (DAVE's group ID).
    pub channel_id: u64,
    /// Our user ID.
    pub user_id: u64,
    /// From VOICE_STATE_UPDATE (redacted in `Debug`).
    pub session_id: SessionId,
    /// From VOICE_SERVER_UPDATE.
    pub token: Token,
    /// From VOICE_SERVER_UPDATE: `host:port`, or a full `ws://`/`wss://` URL (local servers).
    pub endpoint: String,
}

impl VoiceConnectRequest {
    /// The websocket URL: `wss://{endpoint}/?v=8`, keeping an explicit `ws://` scheme.
    pub fn url(&self) -> String {
        let ep = self.endpoint.trim_end_matches('/');
        if ep.starts_with("ws://") || ep.starts_with("wss://") {
            format!("{ep}/?v=8")
        } else {
            format!("wss://{ep}/?v=8")
        }
    }
}

/// Tuning for one voice connection.
#[derive(Clone, Debug, PartialEq)]
pub struct VoiceConfig {
    /// The highest DAVE version advertised in Identify: 1 (Discord closes non-stage calls that
    /// offer 0 with 4017); 0 only for stage channels or servers without E2EE.
    pub max_dave_protocol_version: u16,
    /// Speaking flags sent right after Session Description and after each resume (before any
    /// audio may flow). `NONE` leaves it to [`VoiceGateway::set_speaking`].
    pub initial_speaking: SpeakingFlags,
    /// Unanswered heartbeats in a row that make the socket dead (then resume).
    pub missed_ack_limit: u32,
    /// How long a (re)connect may take to reach Established/Resumed before it counts as failed.
    pub handshake_timeout: Duration,
    /// Largest frame accepted.
    pub max_frame_len: usize,
    /// Reconnect backoff.
    pub backoff: BackoffConfig,
}

impl Default for VoiceConfig {
    fn default() -> Self {
        VoiceConfig {
            max_dave_protocol_version: crate::dave::MAX_PROTOCOL_VERSION,
            initial_speaking: SpeakingFlags::MICROPHONE,
            missed_ack_limit: 3,
            handshake_timeout: Duration::from_secs(15),
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            backoff: BackoffConfig::default(),
        }
    }
}

/// A frame for the websocket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutgoingFrame {
    /// JSON text.
    Text(String),
    /// Binary (`[op][payload]`).
    Binary(Vec<u8>),
}

/// What the driver must do, or tell the owner, in this order.
#[derive(Debug)]
pub enum Output {
    /// Open a new websocket to `url` (closing any previous one without reporting it), then call
    /// [`VoiceGateway::handle_socket_open`] or [`VoiceGateway::handle_socket_closed`].
    Connect {
        /// Where.
        url: String,
    },
    /// Send a frame on the current socket.
    Send(OutgoingFrame),
    /// Close the current socket with `code`. The machine already treats it as gone: don't report
    /// its closure back.
    Close {
        /// Close code.
        code: u16,
    },
    /// Tell the call's owner.
    Event(VoiceEvent),
}

/// Negotiated session parameters for the UDP sender.
#[derive(Clone, Debug, PartialEq)]
pub struct VoiceSession {
    /// Our SSRC.
    pub ssrc: u32,
    /// Voice server UDP address (from Ready).
    pub server_ip: String,
    /// Voice server UDP port (from Ready).
    pub server_port: u16,
    /// Transport encryption mode.
    pub mode: EncryptionMode,
    /// Transport key (redacted in `Debug`).
    pub secret_key: SecretKey,
    /// Negotiated DAVE version (0 = none).
    pub dave_protocol_version: u16,
}

/// Why a voice connection ended for good.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum EndReason {
    /// [`VoiceGateway::disconnect`] was called.
    Left,
    /// 4004/4006: the join flow must send a new op 4 and start over.
    NeedsNewVoiceState {
        /// The close code.
        code: u16,
    },
    /// 4011/4014/4022: wait for a new VOICE_SERVER_UPDATE.
    AwaitServerUpdate {
        /// The close code.
        code: u16,
    },
    /// A close code that says stop (4017, 4021, or a repeated client bug).
    GaveUp {
        /// The close code, if any.
        code: Option<u16>,
    },
    /// The retry limit was used up.
    RetriesExhausted,
    /// A protocol-level failure (e.g. no supported mode).
    Failed(VoiceError),
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let code = |f: &mut std::fmt::Formatter<'_>, code: u16| {
            write!(
                f,
                "closed with {code} ({})",
                crate::protocol::close_code::describe(code)
            )
        };
        match self {
            EndReason::Left => f.write_str("left"),
            EndReason::NeedsNewVoiceState { code: c }
            | EndReason::AwaitServerUpdate { code: c } => code(f, *c),
            EndReason::GaveUp { code: Some(c) } => code(f, *c),
            EndReason::GaveUp { code: None } => f.write_str("gave up"),
            EndReason::RetriesExhausted => f.write_str("every reconnect attempt failed"),
            EndReason::Failed(e) => write!(f, "{e}"),
        }
    }
}

/// Events for the call's owner.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum VoiceEvent {
    /// Ready arrived: do IP discovery from the voice UDP socket to `ip:port` using `ssrc`, then
    /// call [`VoiceGateway::set_discovered_address`].
    DiscoveryRequested {
        /// Our SSRC.
        ssrc: u32,
        /// Voice server UDP IP.
        ip: String,
        /// Voice server UDP port.
        port: u16,
    },
    /// Session Description arrived and Speaking was sent: audio may flow with these parameters.
    SessionReady(VoiceSession),
    /// A Speaking op was sent with these flags (after this, audio may flow).
    SpeakingSent(SpeakingFlags),
    /// The socket dropped; a resume is scheduled. UDP audio may keep flowing.
    Resuming {
        /// Retry number (1-based).
        attempt: u32,
        /// Delay before the new socket.
        delay: Duration,
    },
    /// The resume succeeded (Speaking was re-sent if set).
    Resumed,
    /// The session is lost; a fresh Identify is scheduled. Stop audio: a new SSRC and key follow.
    Reconnecting {
        /// Retry number (1-based).
        attempt: u32,
        /// Delay before the new socket.
        delay: Duration,
    },
    /// Users present in the call (op 11).
    ClientsConnected(Vec<u64>),
    /// A user left (op 13); their SSRC mapping is gone.
    ClientDisconnected(u64),
    /// A user's SSRC and speaking state (op 5 from the server).
    UserSpeaking {
        /// User ID.
        user_id: u64,
        /// Their SSRC.
        ssrc: u32,
        /// Flags.
        flags: SpeakingFlags,
    },
    /// DAVE news: keys changed at a transition, or a DAVE step failed.
    Dave(DaveEvent),
    /// A heartbeat was acknowledged after this round trip (the voice gateway's ping; the last
    /// one is also [`VoiceGateway::latency`]). One per heartbeat interval.
    HeartbeatAcked(Duration),
    /// The connection ended; no further output follows.
    Ended(EndReason),
}

/// States, named after what they wait for.
#[derive(Debug)]
enum State {
    /// `start` not called yet.
    Idle,
    /// A socket is being opened (for Identify, or Resume when `resume`).
    ExpectSocket { resume: bool },
    /// Identify sent; Hello and Ready may come in either order.
    ExpectHelloReady { hello: bool, ready: Option<Ready> },
    /// Ready handled; the owner is doing IP discovery.
    ExpectDiscovery { ready: Ready, mode: EncryptionMode },
    /// Select Protocol sent.
    ExpectSessionDescription { ready: Ready, mode: EncryptionMode },
    /// Up and running.
    Established,
    /// Resume sent; waiting for op 9.
    ExpectResumed,
    /// Waiting out a backoff delay before reconnecting.
    ExpectRetryTimer { at: Instant, resume: bool },
    /// Finished; only `Ended` was emitted.
    Ended,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::ExpectSocket { .. } => "expecting the socket",
            State::ExpectHelloReady { .. } => "expecting hello/ready",
            State::ExpectDiscovery { .. } => "expecting ip discovery",
            State::ExpectSessionDescription { .. } => "expecting session description",
            State::Established => "established",
            State::ExpectResumed => "expecting resumed",
            State::ExpectRetryTimer { .. } => "expecting the retry timer",
            State::Ended => "ended",
        }
    }
}

/// The voice gateway v8 client for one call.
pub struct VoiceGateway {
    request: VoiceConnectRequest,
    config: VoiceConfig,
    state: State,
    out: VecDeque<Output>,
    backoff: Backoff,
    dave: Box<dyn DaveExtension>,
    heartbeat: Option<Heartbeater>,
    /// Kept across resumes so heartbeats continue even if a server skips Hello on resume.
    heartbeat_interval: Option<Duration>,
    next_nonce: u64,
    seq_ack: i64,
    handshake_deadline: Option<Instant>,
    /// Negotiated UDP parameters; `Some` once Established at least once in this session.
    session: Option<(u32, EncryptionMode)>,
    speaking: SpeakingFlags,
    resumed_after_4009: bool,
    /// When the last client-bug close (4001, 4002 …) was retried. A second one within
    /// [`CLIENT_BUG_WINDOW`] gives up, even if a handshake succeeded in between — otherwise a
    /// server that rejects every session after its handshake would be retried forever.
    client_bug_retry_at: Option<Instant>,
    users: BTreeSet<u64>,
    ssrcs: HashMap<u32, u64>,
    /// Users and SSRCs refused because [`MAX_PEERS`] were already known.
    refused_peers: u64,
}

impl std::fmt::Debug for VoiceGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoiceGateway")
            .field("guild_id", &self.request.guild_id)
            .field("state", &self.state.name())
            .field("seq_ack", &self.seq_ack)
            .finish_non_exhaustive()
    }
}

impl VoiceGateway {
    /// A new machine with DAVE up to `config.max_dave_protocol_version` ([`DaveClient`]), or
    /// none when that is 0.
    pub fn new(
        request: VoiceConnectRequest,
        config: VoiceConfig,
        jitter: Box<dyn JitterSource>,
    ) -> Self {
        let dave: Box<dyn DaveExtension> = if config.max_dave_protocol_version > 0 {
            Box::new(DaveClient::new(config.max_dave_protocol_version))
        } else {
            Box::new(NoDave)
        };
        Self::with_dave(request, config, jitter, dave)
    }

    /// A new machine routing DAVE traffic to `dave`.
    pub fn with_dave(
        request: VoiceConnectRequest,
        config: VoiceConfig,
        jitter: Box<dyn JitterSource>,
        dave: Box<dyn DaveExtension>,
    ) -> Self {
        let backoff = Backoff::new(config.backoff, jitter);
        VoiceGateway {
            request,
            speaking: config.initial_speaking,
            config,
            state: State::Idle,
            out: VecDeque::new(),
            backoff,
            dave,
            heartbeat: None,
            heartbeat_interval: None,
            next_nonce: 1,
            seq_ack: -1,
            handshake_deadline: None,
            session: None,
            resumed_after_4009: false,
            client_bug_retry_at: None,
            users: BTreeSet::new(),
            ssrcs: HashMap::new(),
            refused_peers: 0,
        }
    }

    /// The request this machine connects with.
    pub fn request(&self) -> &VoiceConnectRequest {
        &self.request
    }

    /// Name of the current state (for logs and tests).
    pub fn state_name(&self) -> &'static str {
        self.state.name()
    }

    /// Whether the session is up (Established, including after a resume).
    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established)
    }

    /// Whether the machine has ended.
    pub fn is_ended(&self) -> bool {
        matches!(self.state, State::Ended)
    }

    /// Last seq seen (−1 if none).
    pub fn seq_ack(&self) -> i64 {
        self.seq_ack
    }

    /// Round-trip time of the last acknowledged heartbeat.
    pub fn latency(&self) -> Option<Duration> {
        self.heartbeat.as_ref().and_then(Heartbeater::last_rtt)
    }

    /// Users and SSRCs the server announced beyond [`MAX_PEERS`], refused (never remembered).
    pub fn refused_peers(&self) -> u64 {
        self.refused_peers
    }

    fn refuse_peer(&mut self, what: &'static str) {
        self.refused_peers += 1;
        // Once, then every 1,000th: a hostile server must not flood the log either.
        if self.refused_peers % 1_000 == 1 {
            tracing::warn!(
                guild = self.request.guild_id,
                what,
                refused = self.refused_peers,
                max = MAX_PEERS,
                "the voice server announced more peers than a call can hold; refusing them"
            );
        }
    }

    /// The user speaking on `ssrc`, from server op 5.
    pub fn user_for_ssrc(&self, ssrc: u32) -> Option<u64> {
        self.ssrcs.get(&ssrc).copied()
    }

    /// Users present (ops 11/13), as DAVE will need them.
    pub fn users(&self) -> impl Iterator<Item = u64> + '_ {
        self.users.iter().copied()
    }

    /// Begin: asks the driver to open the first socket.
    pub fn start(&mut self, now: Instant) {
        if matches!(self.state, State::Idle) {
            self.begin_connect(false, now);
        }
    }

    /// Next output for the driver, in order.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`VoiceGateway::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let retry = match self.state {
            State::ExpectRetryTimer { at, .. } => Some(at),
            _ => None,
        };
        [
            retry,
            self.handshake_deadline,
            self.heartbeat.as_ref().map(Heartbeater::next_due),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The socket asked for by the last `Connect` is open.
    pub fn handle_socket_open(&mut self, now: Instant) {
        let State::ExpectSocket { resume } = self.state else {
            return;
        };
        let payload = if resume {
            self.state = State::ExpectResumed;
            VoicePayload::Resume(Resume {
                server_id: Snowflake(self.request.guild_id),
                session_id: self.request.session_id.clone(),
                token: self.request.token.clone(),
                seq_ack: self.seq_ack,
            })
        } else {
            self.state = State::ExpectHelloReady {
                hello: false,
                ready: None,
            };
            VoicePayload::Identify(Identify {
                server_id: Snowflake(self.request.guild_id),
                user_id: Snowflake(self.request.user_id),
                session_id: self.request.session_id.clone(),
                token: self.request.token.clone(),
                max_dave_protocol_version: self
                    .config
                    .max_dave_protocol_version
                    .min(self.dave.max_protocol_version()),
            })
        };
        self.send(&payload);
        if resume && let Some(iv) = self.heartbeat_interval {
            self.heartbeat = Some(self.new_heartbeater(iv, now));
        }
    }

    /// The current socket closed (`code` from its close frame; `None` if it just dropped).
    pub fn handle_socket_closed(&mut self, code: Option<u16>, now: Instant) {
        match self.state {
            State::Idle | State::Ended | State::ExpectRetryTimer { .. } => return,
            _ => {}
        }
        tracing::debug!(
            guild = self.request.guild_id,
            ?code,
            state = self.state.name(),
            "voice socket closed"
        );
        // Only a server that saw our Resume and closed rejects it; a failed TCP connect doesn't.
        let failed_resume = matches!(self.state, State::ExpectResumed);
        self.backoff.disconnected(now);
        self.heartbeat = None;
        self.handshake_deadline = None;
        let resumable = self.session.is_some() && !failed_resume;
        match close_policy(code) {
            ClosePolicy::Resume => self.schedule_retry(resumable, now),
            ClosePolicy::ResumeOnceThenReconnect => {
                let resume = resumable && !self.resumed_after_4009;
                self.resumed_after_4009 |= resume;
                self.schedule_retry(resume, now)
            }
            ClosePolicy::ReconnectOnce => {
                let recent = self
                    .client_bug_retry_at
                    .is_some_and(|at| now.saturating_duration_since(at) < CLIENT_BUG_WINDOW);
                if recent {
                    self.end(EndReason::GaveUp { code });
                } else {
                    self.client_bug_retry_at = Some(now);
                    self.schedule_retry(false, now);
                }
            }
            ClosePolicy::NewVoiceState => self.end(EndReason::NeedsNewVoiceState {
                code: code.unwrap_or_default(),
            }),
            ClosePolicy::AwaitServerUpdate => self.end(EndReason::AwaitServerUpdate {
                code: code.unwrap_or_default(),
            }),
            _ => self.end(EndReason::GaveUp { code }),
        }
    }

    /// Drive timers: heartbeats, handshake timeout, backoff.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let State::ExpectRetryTimer { at, resume } = self.state {
            if now >= at {
                self.begin_connect(resume, now);
            }
            return;
        }
        if self.handshake_deadline.is_some_and(|d| now >= d) {
            tracing::debug!(
                guild = self.request.guild_id,
                state = self.state.name(),
                "voice handshake timed out"
            );
            self.abandon_socket(now);
            return;
        }
        let Some(beat) = self.heartbeat.as_mut().and_then(|h| h.poll(now)) else {
            return;
        };
        match beat {
            Beat::Send { nonce } => {
                self.next_nonce = nonce + 1;
                let hb = VoicePayload::Heartbeat(Heartbeat {
                    t: nonce,
                    seq_ack: self.seq_ack,
                });
                self.send(&hb);
            }
            Beat::Dead { missed } => {
                tracing::debug!(
                    guild = self.request.guild_id,
                    missed,
                    "voice heartbeats unanswered"
                );
                self.abandon_socket(now);
            }
        }
    }

    /// A text frame arrived. Errors mean the frame was ignored; the connection carries on.
    pub fn handle_text(&mut self, text: &str, now: Instant) -> Result<(), crate::Error> {
        let frame = VoicePayload::decode(text, self.config.max_frame_len)?;
        if let Some(seq) = frame.seq {
            self.seq_ack = seq;
        }
        self.handle_payload(frame.payload, now)
    }

    /// A binary frame arrived (`[seq u16][op][payload]`).
    pub fn handle_binary(&mut self, bytes: &[u8], _now: Instant) -> Result<(), crate::Error> {
        let frame = BinaryFrame::parse_server(bytes, self.config.max_frame_len)?;
        if let Some(seq) = frame.seq {
            self.seq_ack = i64::from(seq);
        }
        if matches!(self.state, State::Ended | State::Idle) {
            return Ok(());
        }
        let mut outbox = DaveOutbox::default();
        self.dave.on_binary(frame.op, frame.payload, &mut outbox);
        self.flush_dave(outbox);
        Ok(())
    }

    /// IP discovery finished: our external address as the voice server sees it.
    pub fn set_discovered_address(
        &mut self,
        ip: String,
        port: u16,
        _now: Instant,
    ) -> Result<(), VoiceError> {
        self.transition(|gw, state| match state {
            State::ExpectDiscovery { ready, mode } => {
                gw.send(&VoicePayload::SelectProtocol(SelectProtocol {
                    protocol: "udp".into(),
                    data: SelectProtocolData {
                        address: ip,
                        port,
                        mode: mode.as_str().into(),
                    },
                }));
                (State::ExpectSessionDescription { ready, mode }, Ok(()))
            }
            other => (other, Err(VoiceError::NoDiscoveryPending)),
        })
    }

    /// Ask for Speaking on/off. Sent now if established, and re-sent after every resume.
    pub fn set_speaking(&mut self, flags: SpeakingFlags) {
        let changed = self.speaking != flags;
        self.speaking = flags;
        if changed && matches!(self.state, State::Established) {
            self.send_speaking();
        }
    }

    /// Leave: close the socket and end.
    pub fn disconnect(&mut self) {
        if matches!(self.state, State::Ended) {
            return;
        }
        if !matches!(self.state, State::Idle | State::ExpectRetryTimer { .. }) {
            self.out.push_back(Output::Close { code: 1000 });
        }
        self.end(EndReason::Left);
    }

    fn handle_payload(&mut self, payload: VoicePayload, now: Instant) -> Result<(), crate::Error> {
        // Nothing follows `Ended`, even if a driver keeps feeding a socket it should have closed.
        if matches!(self.state, State::Ended | State::Idle) {
            return Ok(());
        }
        match payload {
            VoicePayload::Hello(hello) => {
                let iv = Heartbeater::interval_from_ms(hello.heartbeat_interval);
                self.heartbeat_interval = Some(iv);
                if !matches!(
                    self.state,
                    State::Idle | State::Ended | State::ExpectRetryTimer { .. }
                ) {
                    self.heartbeat = Some(self.new_heartbeater(iv, now));
                }
                if let State::ExpectHelloReady { hello, .. } = &mut self.state {
                    *hello = true;
                    self.advance_handshake()?;
                }
            }
            VoicePayload::Ready(ready) => {
                let accepted = self.transition(|_, state| match state {
                    State::ExpectHelloReady { hello, ready: None } => (
                        State::ExpectHelloReady {
                            hello,
                            ready: Some(ready),
                        },
                        true,
                    ),
                    other => (other, false),
                });
                if !accepted {
                    return Err(self.unexpected(2));
                }
                self.advance_handshake()?;
            }
            VoicePayload::SessionDescription(desc) => self.on_session_description(desc, now)?,
            VoicePayload::HeartbeatAck(ack) => {
                let mut acked = None;
                if let Some(h) = self.heartbeat.as_mut()
                    && h.on_ack(ack.t, now)
                {
                    acked = h.last_rtt();
                }
                if let Some(rtt) = acked {
                    self.event(VoiceEvent::HeartbeatAcked(rtt));
                }
            }
            VoicePayload::Resumed => {
                if !matches!(self.state, State::ExpectResumed) {
                    return Err(self.unexpected(9));
                }
                self.state = State::Established;
                self.handshake_deadline = None;
                self.backoff.connected(now);
                if self.speaking.is_speaking() {
                    self.send_speaking();
                }
                self.event(VoiceEvent::Resumed);
            }
            VoicePayload::Speaking(s) => {
                if let Some(user) = s.user_id {
                    if self.ssrcs.len() >= MAX_PEERS && !self.ssrcs.contains_key(&s.ssrc) {
                        self.refuse_peer("ssrc");
                        return Ok(());
                    }
                    self.ssrcs.insert(s.ssrc, user.0);
                    self.event(VoiceEvent::UserSpeaking {
                        user_id: user.0,
                        ssrc: s.ssrc,
                        flags: s.speaking,
                    });
                }
            }
            VoicePayload::ClientsConnect(c) => {
                let mut ids: Vec<u64> = Vec::with_capacity(c.user_ids.len().min(MAX_PEERS));
                for user in c.user_ids.iter().map(|u| u.0) {
                    if self.users.len() < MAX_PEERS || self.users.contains(&user) {
                        self.users.insert(user);
                        ids.push(user);
                    } else {
                        self.refuse_peer("user");
                    }
                }
                self.dave.on_clients_connect(&ids);
                self.event(VoiceEvent::ClientsConnected(ids));
            }
            VoicePayload::ClientDisconnect(c) => {
                self.users.remove(&c.user_id.0);
                self.ssrcs.retain(|_, u| *u != c.user_id.0);
                self.dave.on_client_disconnect(c.user_id.0);
                self.event(VoiceEvent::ClientDisconnected(c.user_id.0));
            }
            p @ (VoicePayload::DavePrepareTransition(_)
            | VoicePayload::DaveExecuteTransition(_)
            | VoicePayload::DavePrepareEpoch(_)
            | VoicePayload::DaveTransitionReady(_)
            | VoicePayload::DaveMlsInvalidCommitWelcome(_)) => {
                let mut outbox = DaveOutbox::default();
                self.dave.on_json(&p, &mut outbox);
                self.flush_dave(outbox);
            }
            VoicePayload::Unknown { op } => {
                tracing::trace!(op, "ignoring unknown voice opcode");
            }
            other => return Err(self.unexpected(other.op())),
        }
        Ok(())
    }

    fn advance_handshake(&mut self) -> Result<(), crate::Error> {
        self.transition(|gw, state| match state {
            State::ExpectHelloReady {
                hello: true,
                ready: Some(ready),
            } => match EncryptionMode::choose_current(ready.modes.iter().map(String::as_str)) {
                Some(mode) => {
                    gw.event(VoiceEvent::DiscoveryRequested {
                        ssrc: ready.ssrc,
                        ip: ready.ip.clone(),
                        port: ready.port,
                    });
                    (State::ExpectDiscovery { ready, mode }, Ok(()))
                }
                None => {
                    let err = VoiceError::NoSupportedMode {
                        offered: ready.modes.clone(),
                    };
                    gw.out.push_back(Output::Close { code: 1000 });
                    gw.end(EndReason::Failed(err.clone()));
                    (State::Ended, Err(err.into()))
                }
            },
            other => (other, Ok(())),
        })
    }

    /// Runs `step` on the current state, which it consumes; what it returns becomes the state
    /// on every path, so no early exit can leave a placeholder behind.
    fn transition<T>(&mut self, step: impl FnOnce(&mut Self, State) -> (State, T)) -> T {
        let state = std::mem::replace(&mut self.state, State::Ended);
        let (next, out) = step(self, state);
        self.state = next;
        out
    }

    fn on_session_description(
        &mut self,
        desc: SessionDescription,
        now: Instant,
    ) -> Result<(), crate::Error> {
        let taken = self.transition(|_, state| match state {
            State::ExpectSessionDescription { ready, mode } => {
                (State::Established, Some((ready, mode)))
            }
            other => (other, None),
        });
        let Some((ready, mode)) = taken else {
            return Err(self.unexpected(4));
        };
        // Trust the server's choice if it is one we can do; otherwise keep ours.
        let mode = desc
            .mode
            .parse::<EncryptionMode>()
            .ok()
            .filter(|m| m.is_current())
            .unwrap_or(mode);
        self.handshake_deadline = None;
        self.backoff.connected(now);
        self.resumed_after_4009 = false;
        self.session = Some((ready.ssrc, mode));
        let mut outbox = DaveOutbox::default();
        self.dave.on_session_description(
            DaveContext {
                user_id: self.request.user_id,
                channel_id: self.request.channel_id,
            },
            desc.dave_protocol_version,
            &mut outbox,
        );
        if self.speaking.is_speaking() {
            self.send_speaking();
        }
        self.event(VoiceEvent::SessionReady(VoiceSession {
            ssrc: ready.ssrc,
            server_ip: ready.ip,
            server_port: ready.port,
            mode,
            secret_key: desc.secret_key,
            dave_protocol_version: desc.dave_protocol_version,
        }));
        self.flush_dave(outbox);
        Ok(())
    }

    fn begin_connect(&mut self, resume: bool, now: Instant) {
        self.state = State::ExpectSocket { resume };
        self.handshake_deadline = Some(now + self.config.handshake_timeout);
        self.heartbeat = None;
        self.out.push_back(Output::Connect {
            url: self.request.url(),
        });
    }

    /// We gave up on the current socket (timeouts): close it and recover as for a dropped one.
    fn abandon_socket(&mut self, now: Instant) {
        self.out.push_back(Output::Close {
            code: CLIENT_ABANDON_CLOSE_CODE,
        });
        // Our own 4000 must not be read as the server's client-bug close: treat it as a drop.
        self.handle_socket_closed(None, now);
    }

    fn schedule_retry(&mut self, resume: bool, now: Instant) {
        let Some(delay) = self.backoff.next_delay() else {
            self.end(EndReason::RetriesExhausted);
            return;
        };
        let attempt = self.backoff.attempts();
        if resume {
            self.event(VoiceEvent::Resuming { attempt, delay });
        } else {
            self.forget_session();
            self.event(VoiceEvent::Reconnecting { attempt, delay });
        }
        self.state = State::ExpectRetryTimer {
            at: now + delay,
            resume,
        };
    }

    fn forget_session(&mut self) {
        self.session = None;
        self.seq_ack = -1;
        self.users.clear();
        self.ssrcs.clear();
        self.resumed_after_4009 = false;
        self.dave.on_reset();
    }

    fn end(&mut self, reason: EndReason) {
        self.state = State::Ended;
        self.heartbeat = None;
        self.handshake_deadline = None;
        self.dave.on_reset();
        self.event(VoiceEvent::Ended(reason));
    }

    fn new_heartbeater(&self, interval: Duration, now: Instant) -> Heartbeater {
        Heartbeater::new(interval, self.config.missed_ack_limit, self.next_nonce, now)
    }

    fn send_speaking(&mut self) {
        let Some((ssrc, _)) = self.session else {
            return;
        };
        let flags = self.speaking;
        self.send(&VoicePayload::Speaking(Speaking {
            speaking: flags,
            ssrc,
            delay: Some(0),
            user_id: None,
        }));
        self.event(VoiceEvent::SpeakingSent(flags));
    }

    fn send(&mut self, payload: &VoicePayload) {
        match payload.encode(None) {
            Ok(text) => self.out.push_back(Output::Send(OutgoingFrame::Text(text))),
            // Our own payloads hold no floats, so this cannot happen; log rather than panic.
            Err(e) => tracing::error!(error = %e, "could not encode a voice payload"),
        }
    }

    fn flush_dave(&mut self, outbox: DaveOutbox) {
        self.out.extend(outbox.frames.into_iter().map(Output::Send));
        self.out.extend(
            outbox
                .events
                .into_iter()
                .map(|e| Output::Event(VoiceEvent::Dave(e))),
        );
    }

    fn event(&mut self, e: VoiceEvent) {
        self.out.push_back(Output::Event(e));
    }

    fn unexpected(&self, op: u64) -> crate::Error {
        VoiceError::Unexpected {
            op,
            state: self.state.name(),
        }
        .into()
    }
}

#[cfg(test)]
#[path = "voice_tests.rs"]
mod tests;
