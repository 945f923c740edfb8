//! A minimal built-in main-gateway client, sans-IO, for standalone bots.
//!
//! It does just what joining voice needs: Hello, Identify (token, intents including
//! `GUILD_VOICE_STATES`), heartbeats, op 4, the VOICE_STATE_UPDATE / VOICE_SERVER_UPDATE
//! dispatches, and Resume after a drop (or Reconnect / Invalid Session).
//!
//! **Limits**: one shard (no sharding, so roughly up to 2,500 guilds), JSON encoding without
//! compression, no rate limiting of outgoing commands beyond what op 4 needs (keep it well under
//! 120 commands per minute), no caching, and every other dispatch is dropped. Bots that need more
//! should run twilight or serenity and use the [`crate::join::VoiceStateSender`] path instead.
//! The control thread ([`crate::control::ControlThread::connect_bot`]) drives it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::backoff::{Backoff, BackoffConfig, JitterSource, UNLIMITED_RETRIES};
use crate::heartbeat::{Beat, Heartbeater};
use crate::join::{UpdateVoiceState, VoiceServerUpdate, VoiceStateUpdate};
use crate::protocol::{SessionId, Snowflake, Token};

/// `GUILDS` intent (1 << 0).
pub const INTENT_GUILDS: u64 = 1 << 0;
/// `GUILD_VOICE_STATES` intent (1 << 7): required for the voice dispatches.
pub const INTENT_GUILD_VOICE_STATES: u64 = 1 << 7;

/// Default gateway URL (v10, JSON).
pub const DEFAULT_GATEWAY_URL: &str = "wss://gateway.discord.gg/?v=10&encoding=json";

/// Largest main-gateway message accepted: a GUILD_CREATE of a big guild is several MiB of JSON
/// (the bot socket must not fail, resume and fail again on it).
pub const MAX_DISPATCH_LEN: usize = 8 << 20;

/// How long a (re)connect may take from `Connect` to READY/RESUMED before the socket is
/// abandoned and retried (Discord sends Hello at once; a half-open socket never would).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

/// Configuration of the built-in client.
#[derive(Clone, Debug)]
pub struct MainGatewayConfig {
    /// Bot token (redacted in `Debug`).
    pub token: Token,
    /// Intents; `GUILD_VOICE_STATES` is always added.
    pub intents: u64,
    /// Gateway URL (`DEFAULT_GATEWAY_URL`; a `ws://` URL for a local test server).
    pub url: String,
    /// Reconnect backoff. Retries never run out by default: a Discord outage lasts minutes,
    /// and a bot should be back when Discord is.
    pub backoff: BackoffConfig,
    /// Deadline from opening a socket to READY/RESUMED ([`DEFAULT_HANDSHAKE_TIMEOUT`]).
    pub handshake_timeout: Duration,
}

impl MainGatewayConfig {
    /// Config for `token` with `GUILDS | GUILD_VOICE_STATES` against Discord.
    pub fn new(token: Token) -> Self {
        MainGatewayConfig {
            token,
            intents: INTENT_GUILDS | INTENT_GUILD_VOICE_STATES,
            url: DEFAULT_GATEWAY_URL.into(),
            backoff: BackoffConfig {
                max_retries: UNLIMITED_RETRIES,
                ..BackoffConfig::default()
            },
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }

    /// Whether the user chose a plain `ws://` URL (a local test server): only then are plain
    /// URLs the network hands over (READY's `resume_gateway_url`, a voice `endpoint`) followed.
    pub fn allows_plain_urls(&self) -> bool {
        has_scheme(&self.url, "ws://")
    }
}

fn has_scheme(url: &str, scheme: &str) -> bool {
    url.get(..scheme.len())
        .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
}

/// Events from the main gateway.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum MainGatewayEvent {
    /// READY: who we are.
    Ready {
        /// Our bot user ID (the join flow needs it).
        user_id: u64,
    },
    /// The session resumed after a drop.
    Resumed,
    /// A VOICE_STATE_UPDATE dispatch (any user; the join flow filters).
    VoiceStateUpdate(VoiceStateUpdate),
    /// A VOICE_SERVER_UPDATE dispatch.
    VoiceServerUpdate(VoiceServerUpdate),
    /// The socket dropped (or never came up); a new one opens after `delay`. Sent for every
    /// attempt, so an owner can show "reconnecting (attempt n)" while Discord is away.
    Reconnecting {
        /// Whether the session will be resumed.
        resume: bool,
        /// Retry number since the connection was last stable (1-based).
        attempt: u32,
        /// Delay before the new socket.
        delay: Duration,
    },
    /// Connected again after [`MainGatewayEvent::Reconnecting`]. With `resumed == false` the
    /// session was replaced by a fresh Identify: Discord dropped the old session's voice states,
    /// so every join must send op 4 again ([`crate::join::JoinFlow::rejoin`]).
    Reconnected {
        /// Whether the old session was resumed (nothing lost) or a new one identified.
        resumed: bool,
        /// Attempts it took.
        attempts: u32,
    },
    /// Stopped for good (bad token, disallowed intents, or `disconnect`).
    Ended {
        /// Close code, if that was the reason.
        code: Option<u16>,
    },
}

/// Socket actions and events, in order.
#[derive(Debug)]
pub enum Output {
    /// Open a websocket (replacing any current one).
    Connect {
        /// Where.
        url: String,
    },
    /// Send a text frame.
    Send(String),
    /// Close the current socket; don't report its closure back.
    Close {
        /// Close code.
        code: u16,
    },
    /// For the owner.
    Event(MainGatewayEvent),
}

#[derive(Deserialize)]
struct Envelope {
    op: u64,
    #[serde(default)]
    d: serde_json::Value,
    #[serde(default)]
    s: Option<u64>,
    #[serde(default)]
    t: Option<String>,
}

#[derive(Deserialize)]
struct ReadyUser {
    id: Snowflake,
}

#[derive(Deserialize)]
struct ReadyData {
    session_id: String,
    #[serde(default)]
    resume_gateway_url: Option<String>,
    user: ReadyUser,
}

/// Identify (op 2) and Resume (op 6), serialized without an intermediate `Value`.
#[derive(serde::Serialize)]
struct Command<'a> {
    op: u8,
    d: CommandData<'a>,
}

#[derive(serde::Serialize)]
#[serde(untagged)]
enum CommandData<'a> {
    Resume {
        token: &'a str,
        session_id: &'a str,
        seq: u64,
    },
    Identify {
        token: &'a str,
        intents: u64,
        properties: Properties,
    },
}

#[derive(serde::Serialize)]
struct Properties {
    os: &'static str,
    browser: &'static str,
    device: &'static str,
}

#[derive(Debug, PartialEq)]
enum State {
    Idle,
    ExpectSocket,
    ExpectHello,
    /// Identify or Resume sent; waiting for READY / RESUMED.
    ExpectReady,
    Established,
    ExpectRetryTimer {
        at: Instant,
    },
    Ended,
}

/// The main-gateway client state machine.
pub struct MainGateway {
    config: MainGatewayConfig,
    state: State,
    out: VecDeque<Output>,
    heartbeat: Option<Heartbeater>,
    jitter: Box<dyn JitterSource>,
    backoff: Backoff,
    seq: Option<u64>,
    /// Session ID and resume URL.
    session: Option<(SessionId, String)>,
    user_id: Option<u64>,
    /// Commands asked for while the socket was down, sent once it is up.
    pending: Vec<String>,
    /// When the socket being opened must have reached READY/RESUMED.
    handshake_deadline: Option<Instant>,
    /// Retries since the last established connection; `Some` after a drop until READY/RESUMED.
    outage_attempts: Option<u32>,
}

impl std::fmt::Debug for MainGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MainGateway")
            .field("state", &self.state)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl MainGateway {
    /// A new client; `jitter` spreads the first heartbeat and reconnects.
    pub fn new(config: MainGatewayConfig, jitter: Box<dyn JitterSource>) -> Self {
        // A second source for the backoff keeps the heartbeat jitter sequence independent.
        let seed = jitter_seed(&config);
        let backoff = Backoff::new(
            config.backoff,
            Box::new(crate::backoff::SplitMixJitter::new(seed)),
        );
        MainGateway {
            config,
            state: State::Idle,
            out: VecDeque::new(),
            heartbeat: None,
            jitter,
            backoff,
            seq: None,
            session: None,
            user_id: None,
            pending: Vec::new(),
            handshake_deadline: None,
            outage_attempts: None,
        }
    }

    /// Our user ID, once READY arrived.
    pub fn user_id(&self) -> Option<u64> {
        self.user_id
    }

    /// Whether READY/RESUMED has been received on the current socket.
    pub fn is_established(&self) -> bool {
        self.state == State::Established
    }

    /// Whether the client stopped for good.
    pub fn is_ended(&self) -> bool {
        self.state == State::Ended
    }

    /// Begin connecting.
    pub fn start(&mut self, now: Instant) {
        if self.state == State::Idle {
            self.connect(now);
        }
    }

    /// Send op 4 (queued until the session is up).
    pub fn update_voice_state(&mut self, update: &UpdateVoiceState) {
        self.send_raw(update.to_gateway_json());
    }

    /// Send a raw JSON command (queued until the session is up).
    pub fn send_raw(&mut self, json: String) {
        if self.state == State::Established {
            self.out.push_back(Output::Send(json));
        } else {
            self.pending.push(json);
        }
    }

    /// Close and stop.
    pub fn disconnect(&mut self) {
        if self.state == State::Ended {
            return;
        }
        self.out.push_back(Output::Close { code: 1000 });
        self.end(None);
    }

    /// Next output.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Next deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::ExpectRetryTimer { at } => Some(at),
            _ => [
                self.handshake_deadline,
                self.heartbeat.as_ref().map(Heartbeater::next_due),
            ]
            .into_iter()
            .flatten()
            .min(),
        }
    }

    /// The socket from the last `Connect` is open.
    pub fn handle_socket_open(&mut self, _now: Instant) {
        if self.state == State::ExpectSocket {
            self.state = State::ExpectHello;
        }
    }

    /// The socket closed.
    pub fn handle_socket_closed(&mut self, code: Option<u16>, now: Instant) {
        if matches!(
            self.state,
            State::Idle | State::Ended | State::ExpectRetryTimer { .. }
        ) {
            return;
        }
        self.heartbeat = None;
        self.handshake_deadline = None;
        self.backoff.disconnected(now);
        match code {
            // Authentication failed, invalid shard, sharding required, invalid API version,
            // invalid or disallowed intents: retrying cannot help.
            Some(c @ (4004 | 4010 | 4011 | 4012 | 4013 | 4014)) => self.end(Some(c)),
            // Invalid seq or session timed out: the session is gone.
            Some(4007 | 4009) => {
                self.session = None;
                self.retry(now);
            }
            _ => self.retry(now),
        }
    }

    /// Timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let State::ExpectRetryTimer { at } = self.state {
            if now >= at {
                self.connect(now);
            }
            return;
        }
        if self.handshake_deadline.is_some_and(|d| now >= d) {
            tracing::debug!(state = ?self.state, "main gateway handshake timed out");
            self.out.push_back(Output::Close { code: 4000 });
            self.handle_socket_closed(None, now);
            return;
        }
        match self.heartbeat.as_mut().and_then(|h| h.poll(now)) {
            Some(Beat::Send { .. }) => self.send_heartbeat(),
            Some(Beat::Dead { .. }) => {
                // A zombie connection: close it and resume.
                self.out.push_back(Output::Close { code: 4000 });
                self.handle_socket_closed(None, now);
            }
            None => {}
        }
    }

    /// A text frame arrived. Errors mean it was ignored.
    pub fn handle_text(&mut self, text: &str, now: Instant) -> Result<(), crate::Error> {
        if text.len() > MAX_DISPATCH_LEN {
            return Err(crate::protocol::ProtocolError::FrameTooLarge {
                len: text.len(),
                max: MAX_DISPATCH_LEN,
            }
            .into());
        }
        let env: Envelope =
            serde_json::from_str(text).map_err(crate::protocol::ProtocolError::Envelope)?;
        if let Some(s) = env.s {
            self.seq = Some(s);
        }
        match env.op {
            // Dispatch.
            0 => self.on_dispatch(env.t.as_deref().unwrap_or(""), env.d, now)?,
            // Heartbeat request.
            1 => self.send_heartbeat(),
            // Reconnect.
            7 => {
                self.out.push_back(Output::Close { code: 4000 });
                self.handle_socket_closed(None, now);
            }
            // Invalid Session; `d` says whether it is resumable.
            9 => {
                if env.d != serde_json::Value::Bool(true) {
                    self.session = None;
                    self.seq = None;
                }
                self.out.push_back(Output::Close { code: 4000 });
                self.handle_socket_closed(None, now);
            }
            // Hello.
            10 => {
                let ms = env
                    .d
                    .get("heartbeat_interval")
                    .and_then(serde_json::Value::as_f64)
                    .unwrap_or(41_250.0);
                let interval = Heartbeater::interval_from_ms(ms);
                let first =
                    now + interval.mul_f64(crate::backoff::unit_fraction(self.jitter.as_mut()));
                self.heartbeat = Some(Heartbeater::starting_at(interval, 2, first));
                if self.state == State::ExpectHello {
                    self.identify_or_resume();
                }
            }
            // Heartbeat ACK.
            11 => {
                if let Some(h) = self.heartbeat.as_mut() {
                    h.on_ack_latest(now);
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn on_dispatch(
        &mut self,
        t: &str,
        d: serde_json::Value,
        now: Instant,
    ) -> Result<(), crate::Error> {
        let malformed =
            |what: &'static str, e: serde_json::Error| crate::join::JoinError::Malformed {
                what,
                reason: e.to_string(),
            };
        match t {
            "READY" => {
                let r: ReadyData = serde_json::from_value(d).map_err(|e| malformed("READY", e))?;
                let url = r
                    .resume_gateway_url
                    .filter(|u| self.acceptable_url(u))
                    .map(|u| format!("{}/?v=10&encoding=json", u.trim_end_matches('/')))
                    .unwrap_or_else(|| self.config.url.clone());
                self.session = Some((SessionId::new(r.session_id), url));
                self.user_id = Some(r.user.id.0);
                self.established(now);
                self.event(MainGatewayEvent::Ready {
                    user_id: r.user.id.0,
                });
                self.reconnected(false);
            }
            "RESUMED" => {
                self.established(now);
                self.event(MainGatewayEvent::Resumed);
                self.reconnected(true);
            }
            "VOICE_STATE_UPDATE" => {
                let u =
                    serde_json::from_value(d).map_err(|e| malformed("VOICE_STATE_UPDATE", e))?;
                self.event(MainGatewayEvent::VoiceStateUpdate(u));
            }
            "VOICE_SERVER_UPDATE" => {
                let mut u: VoiceServerUpdate =
                    serde_json::from_value(d).map_err(|e| malformed("VOICE_SERVER_UPDATE", e))?;
                if let Some(endpoint) = &u.endpoint
                    && !self.acceptable_url(endpoint)
                {
                    // Never send the voice token in clear text because the network said so:
                    // connect to the same host over TLS instead.
                    tracing::warn!(
                        "a VOICE_SERVER_UPDATE asked for a plain ws:// endpoint: using wss://"
                    );
                    u.endpoint = Some(format!("wss://{}", &endpoint["ws://".len()..]));
                }
                self.event(MainGatewayEvent::VoiceServerUpdate(u));
            }
            _ => {}
        }
        Ok(())
    }

    /// A URL from the network may be plain `ws://` only if the user configured a plain URL.
    fn acceptable_url(&self, url: &str) -> bool {
        let plain = has_scheme(url, "ws://");
        if plain && !self.config.allows_plain_urls() {
            tracing::warn!(
                "refusing a plain ws:// URL from the gateway: the token would travel in clear text"
            );
            return false;
        }
        true
    }

    fn reconnected(&mut self, resumed: bool) {
        if let Some(attempts) = self.outage_attempts.take() {
            self.event(MainGatewayEvent::Reconnected { resumed, attempts });
        }
    }

    fn established(&mut self, now: Instant) {
        self.state = State::Established;
        self.handshake_deadline = None;
        self.backoff.connected(now);
        for cmd in std::mem::take(&mut self.pending) {
            self.out.push_back(Output::Send(cmd));
        }
    }

    fn identify_or_resume(&mut self) {
        // Serialized straight from borrowed fields: the token is copied once, into the frame,
        // not into a `serde_json::Value` tree that would be freed without being wiped.
        let encoded = match (&self.session, self.seq) {
            (Some((session_id, _)), Some(seq)) => serde_json::to_string(&Command {
                op: 6,
                d: CommandData::Resume {
                    token: self.config.token.expose(),
                    session_id: session_id.expose(),
                    seq,
                },
            }),
            _ => serde_json::to_string(&Command {
                op: 2,
                d: CommandData::Identify {
                    token: self.config.token.expose(),
                    intents: self.config.intents | INTENT_GUILD_VOICE_STATES,
                    properties: Properties {
                        os: std::env::consts::OS,
                        browser: "quaver",
                        device: "quaver",
                    },
                },
            }),
        };
        self.state = State::ExpectReady;
        match encoded {
            Ok(text) => self.out.push_back(Output::Send(text)),
            // Strings and integers only: serde_json cannot fail on them.
            Err(e) => tracing::error!(error = %e, "could not encode Identify/Resume"),
        }
    }

    fn send_heartbeat(&mut self) {
        let d = self
            .seq
            .map_or(serde_json::Value::Null, serde_json::Value::from);
        self.out.push_back(Output::Send(
            serde_json::json!({ "op": 1, "d": d }).to_string(),
        ));
    }

    fn connect(&mut self, now: Instant) {
        let url = match &self.session {
            Some((_, resume_url)) => resume_url.clone(),
            None => self.config.url.clone(),
        };
        self.state = State::ExpectSocket;
        self.heartbeat = None;
        self.handshake_deadline = Some(now + self.config.handshake_timeout);
        self.out.push_back(Output::Connect { url });
    }

    fn retry(&mut self, now: Instant) {
        let Some(delay) = self.backoff.next_delay() else {
            self.end(None);
            return;
        };
        let delay = delay.max(Duration::from_millis(100));
        let attempt = self.backoff.attempts();
        let resume = self.session.is_some();
        let outage = self.outage_attempts.get_or_insert(0);
        *outage = outage.saturating_add(1);
        self.event(MainGatewayEvent::Reconnecting {
            resume,
            attempt,
            delay,
        });
        self.state = State::ExpectRetryTimer { at: now + delay };
    }

    fn end(&mut self, code: Option<u16>) {
        self.state = State::Ended;
        self.heartbeat = None;
        self.handshake_deadline = None;
        self.event(MainGatewayEvent::Ended { code });
    }

    fn event(&mut self, e: MainGatewayEvent) {
        self.out.push_back(Output::Event(e));
    }
}

fn jitter_seed(config: &MainGatewayConfig) -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(config.intents)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backoff::FixedJitter;

    fn drain(m: &mut MainGateway) -> Vec<Output> {
        std::iter::from_fn(|| m.poll_output()).collect()
    }

    fn sent(out: &[Output]) -> Vec<serde_json::Value> {
        out.iter()
            .filter_map(|o| match o {
                Output::Send(t) => Some(serde_json::from_str(t).unwrap()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn identify_dispatches_and_resume() {
        let t0 = Instant::now();
        let mut cfg = MainGatewayConfig::new(Token::new("bot-token"));
        cfg.url = "ws://127.0.0.1:1/?v=10&encoding=json".into();
        let mut m = MainGateway::new(cfg, Box::new(FixedJitter(0.5)));
        assert!(!format!("{m:?}").contains("bot-token"));
        m.start(t0);
        m.update_voice_state(&UpdateVoiceState {
            guild_id: Snowflake(1),
            channel_id: Some(Snowflake(2)),
            self_mute: false,
            self_deaf: true,
        });
        assert!(matches!(&drain(&mut m)[..], [Output::Connect { .. }]));
        m.handle_socket_open(t0);
        m.handle_text(r#"{"op":10,"d":{"heartbeat_interval":1000}}"#, t0)
            .unwrap();
        let s = sent(&drain(&mut m));
        assert_eq!(s[0]["op"], 2);
        assert_eq!(s[0]["d"]["token"], "bot-token");
        assert_eq!(s[0]["d"]["intents"].as_u64().unwrap() & (1 << 7), 1 << 7);
        // First heartbeat after jitter·interval.
        assert_eq!(m.poll_timeout(), Some(t0 + Duration::from_millis(500)));
        m.handle_text(
            r#"{"op":0,"t":"READY","s":1,"d":{"session_id":"abc","resume_gateway_url":"ws://127.0.0.1:2","user":{"id":"99"}}}"#,
            t0,
        )
        .unwrap();
        let out = drain(&mut m);
        let s = sent(&out);
        assert_eq!(s[0]["op"], 4, "queued op 4 goes out after READY");
        assert!(
            out.iter()
                .any(|o| matches!(o, Output::Event(MainGatewayEvent::Ready { user_id: 99 })))
        );
        m.handle_text(
            r#"{"op":0,"t":"VOICE_SERVER_UPDATE","s":2,"d":{"token":"vt","guild_id":"1","endpoint":"x:443"}}"#,
            t0,
        )
        .unwrap();
        assert!(
            matches!(&drain(&mut m)[..], [Output::Event(MainGatewayEvent::VoiceServerUpdate(u))] if u.endpoint.as_deref() == Some("x:443"))
        );
        m.handle_timeout(t0 + Duration::from_millis(500));
        assert_eq!(sent(&drain(&mut m))[0], serde_json::json!({"op":1,"d":2}));
        m.handle_text(r#"{"op":11}"#, t0).unwrap();
        // Drop → resume against resume_gateway_url with the last seq.
        m.handle_socket_closed(Some(1006), t0);
        let out = drain(&mut m);
        assert!(matches!(
            &out[..],
            [Output::Event(MainGatewayEvent::Reconnecting {
                resume: true,
                attempt: 1,
                ..
            })]
        ));
        m.handle_timeout(t0 + Duration::from_secs(60));
        let out = drain(&mut m);
        assert!(
            matches!(&out[..], [Output::Connect { url }] if url.starts_with("ws://127.0.0.1:2"))
        );
        m.handle_socket_open(t0);
        m.handle_text(r#"{"op":10,"d":{"heartbeat_interval":1000}}"#, t0)
            .unwrap();
        let s = sent(&drain(&mut m));
        assert_eq!(
            s[0],
            serde_json::json!({"op":6,"d":{"token":"bot-token","session_id":"abc","seq":2}})
        );
        // Bad token ends it.
        m.handle_socket_closed(Some(4004), t0);
        assert!(m.is_ended());
        assert!(m.handle_text("garbage", t0).is_err());
    }

    fn client(url: &str) -> (MainGateway, Instant) {
        let mut cfg = MainGatewayConfig::new(Token::new("bot-token"));
        cfg.url = url.into();
        let mut m = MainGateway::new(cfg, Box::new(FixedJitter(0.5)));
        let t0 = Instant::now();
        m.start(t0);
        drain(&mut m);
        (m, t0)
    }

    fn hello_ready(m: &mut MainGateway, now: Instant, resume_url: &str) -> Vec<Output> {
        m.handle_socket_open(now);
        m.handle_text(r#"{"op":10,"d":{"heartbeat_interval":40000}}"#, now)
            .unwrap();
        let ready = serde_json::json!({"op":0,"t":"READY","s":1,"d":{
            "session_id":"secret-session","resume_gateway_url":resume_url,"user":{"id":"99"}}});
        m.handle_text(&ready.to_string(), now).unwrap();
        drain(m)
    }

    #[test]
    fn a_socket_that_never_says_hello_is_abandoned_and_retried() {
        let (mut m, t0) = client("wss://gateway.example/?v=10");
        m.handle_socket_open(t0);
        // Before the fix there was no timer at all: the client waited forever.
        assert_eq!(m.poll_timeout(), Some(t0 + DEFAULT_HANDSHAKE_TIMEOUT));
        m.handle_timeout(t0 + DEFAULT_HANDSHAKE_TIMEOUT);
        let out = drain(&mut m);
        assert!(
            matches!(
                &out[..],
                [
                    Output::Close { code: 4000 },
                    Output::Event(MainGatewayEvent::Reconnecting {
                        resume: false,
                        attempt: 1,
                        ..
                    })
                ]
            ),
            "{out:?}"
        );
        // Hello but never READY: the same deadline applies.
        let at = m.poll_timeout().unwrap();
        m.handle_timeout(at);
        assert!(matches!(&drain(&mut m)[..], [Output::Connect { .. }]));
        m.handle_socket_open(at);
        m.handle_text(r#"{"op":10,"d":{"heartbeat_interval":41250}}"#, at)
            .unwrap();
        drain(&mut m);
        m.handle_timeout(at + DEFAULT_HANDSHAKE_TIMEOUT);
        let out = drain(&mut m);
        assert!(
            out.iter().any(|o| matches!(
                o,
                Output::Event(MainGatewayEvent::Reconnecting { attempt: 2, .. })
            )),
            "{out:?}"
        );
    }

    #[test]
    fn retries_never_run_out_and_quick_drops_do_not_reset_the_backoff() {
        let (mut m, t0) = client("wss://gateway.example/?v=10");
        hello_ready(&mut m, t0, "wss://resume.example");
        let mut now = t0;
        let mut attempts = Vec::new();
        let mut delays = Vec::new();
        // Discord is away for a long time: 40 failed connects, then READY-and-drop cycles.
        for n in 0..60 {
            m.handle_socket_closed(Some(1006), now);
            for o in drain(&mut m) {
                match o {
                    Output::Event(MainGatewayEvent::Reconnecting { attempt, delay, .. }) => {
                        attempts.push(attempt);
                        delays.push(delay);
                    }
                    Output::Event(MainGatewayEvent::Ended { .. }) => panic!("gave up after {n}"),
                    _ => {}
                }
            }
            now = m.poll_timeout().unwrap();
            m.handle_timeout(now);
            assert!(matches!(&drain(&mut m)[..], [Output::Connect { .. }]));
            if n >= 40 {
                m.handle_socket_open(now);
                m.handle_text(r#"{"op":10,"d":{"heartbeat_interval":40000}}"#, now)
                    .unwrap();
                m.handle_text(r#"{"op":0,"t":"RESUMED","s":2,"d":null}"#, now)
                    .unwrap();
                assert!(m.is_established());
            }
        }
        assert_eq!(attempts, (1..=60).collect::<Vec<u32>>());
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(30)));
        assert!(delays[59] >= Duration::from_secs(15), "{delays:?}");
        // A connection that stayed up resets it.
        now += Duration::from_secs(31);
        m.handle_socket_closed(Some(1006), now);
        assert!(drain(&mut m).iter().any(|o| matches!(
            o,
            Output::Event(MainGatewayEvent::Reconnecting { attempt: 1, .. })
        )));
    }

    #[test]
    fn reconnected_says_whether_the_session_survived() {
        let (mut m, t0) = client("wss://gateway.example/?v=10");
        let out = hello_ready(&mut m, t0, "wss://resume.example");
        assert!(
            !out.iter()
                .any(|o| matches!(o, Output::Event(MainGatewayEvent::Reconnected { .. }))),
            "the first READY is no reconnection"
        );
        m.handle_socket_closed(Some(1006), t0);
        drain(&mut m);
        let t1 = m.poll_timeout().unwrap();
        m.handle_timeout(t1);
        drain(&mut m);
        m.handle_socket_open(t1);
        m.handle_text(r#"{"op":10,"d":{"heartbeat_interval":40000}}"#, t1)
            .unwrap();
        m.handle_text(r#"{"op":0,"t":"RESUMED","s":2,"d":null}"#, t1)
            .unwrap();
        assert!(drain(&mut m).iter().any(|o| matches!(
            o,
            Output::Event(MainGatewayEvent::Reconnected {
                resumed: true,
                attempts: 1
            })
        )));
        // Invalid Session, not resumable: a fresh Identify, and the owner must rejoin.
        m.handle_text(r#"{"op":9,"d":false}"#, t1).unwrap();
        drain(&mut m);
        let t2 = m.poll_timeout().unwrap();
        m.handle_timeout(t2);
        drain(&mut m);
        let out = hello_ready(&mut m, t2, "wss://resume.example");
        let sent = sent(&out);
        assert_eq!(sent[0]["op"], 2, "{sent:?}");
        assert!(out.iter().any(|o| matches!(
            o,
            Output::Event(MainGatewayEvent::Reconnected {
                resumed: false,
                attempts: 1
            })
        )));
    }

    #[test]
    fn plain_urls_from_the_network_are_not_followed() {
        let (mut m, t0) = client("wss://gateway.example/?v=10&encoding=json");
        hello_ready(&mut m, t0, "ws://attacker.example");
        m.handle_text(
            r#"{"op":0,"t":"VOICE_SERVER_UPDATE","s":2,"d":{"token":"vt","guild_id":"1","endpoint":"ws://voice.example:80"}}"#,
            t0,
        )
        .unwrap();
        assert!(matches!(
            &drain(&mut m)[..],
            [Output::Event(MainGatewayEvent::VoiceServerUpdate(u))]
                if u.endpoint.as_deref() == Some("wss://voice.example:80")
        ));
        m.handle_socket_closed(Some(1006), t0);
        drain(&mut m);
        let t1 = m.poll_timeout().unwrap();
        m.handle_timeout(t1);
        let out = drain(&mut m);
        assert!(
            matches!(&out[..], [Output::Connect { url }] if url == "wss://gateway.example/?v=10&encoding=json"),
            "{out:?}"
        );
        // A user who configured a plain server (a local test server) keeps plain URLs.
        let (mut m, t0) = client("ws://127.0.0.1:1/?v=10");
        hello_ready(&mut m, t0, "ws://127.0.0.1:2");
        m.handle_socket_closed(Some(1006), t0);
        drain(&mut m);
        let t1 = m.poll_timeout().unwrap();
        m.handle_timeout(t1);
        assert!(
            matches!(&drain(&mut m)[..], [Output::Connect { url }] if url.starts_with("ws://127.0.0.1:2"))
        );
    }

    #[test]
    fn resume_with_the_largest_seq_and_a_session_id_kept_out_of_debug() {
        let (mut m, t0) = client("wss://gateway.example/?v=10");
        hello_ready(&mut m, t0, "wss://resume.example");
        m.handle_text(
            &format!(r#"{{"op":0,"t":"X","s":{},"d":null}}"#, u64::MAX),
            t0,
        )
        .unwrap();
        assert!(!format!("{m:?}").contains("secret-session"));
        m.handle_socket_closed(None, t0);
        drain(&mut m);
        let t1 = m.poll_timeout().unwrap();
        m.handle_timeout(t1);
        drain(&mut m);
        m.handle_socket_open(t1);
        m.handle_text(r#"{"op":10,"d":{"heartbeat_interval":40000}}"#, t1)
            .unwrap();
        let s = sent(&drain(&mut m));
        assert_eq!(
            s[0],
            serde_json::json!({"op":6,"d":{"token":"bot-token","session_id":"secret-session","seq":u64::MAX}})
        );
    }
}
