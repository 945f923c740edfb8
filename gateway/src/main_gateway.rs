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

use crate::backoff::{Backoff, BackoffConfig, JitterSource};
use crate::heartbeat::{Beat, Heartbeater};
use crate::join::{UpdateVoiceState, VoiceServerUpdate, VoiceStateUpdate};
use crate::protocol::{Snowflake, Token};

/// `GUILDS` intent (1 << 0).
pub const INTENT_GUILDS: u64 = 1 << 0;
/// `GUILD_VOICE_STATES` intent (1 << 7): required for the voice dispatches.
pub const INTENT_GUILD_VOICE_STATES: u64 = 1 << 7;

/// Default gateway URL (v10, JSON).
pub const DEFAULT_GATEWAY_URL: &str = "wss://gateway.discord.gg/?v=10&encoding=json";

/// Configuration of the built-in client.
#[derive(Clone, Debug)]
pub struct MainGatewayConfig {
    /// Bot token (redacted in `Debug`).
    pub token: Token,
    /// Intents; `GUILD_VOICE_STATES` is always added.
    pub intents: u64,
    /// Gateway URL (`DEFAULT_GATEWAY_URL`; a `ws://` URL for a local test server).
    pub url: String,
    /// Reconnect backoff.
    pub backoff: BackoffConfig,
}

impl MainGatewayConfig {
    /// Config for `token` with `GUILDS | GUILD_VOICE_STATES` against Discord.
    pub fn new(token: Token) -> Self {
        MainGatewayConfig {
            token,
            intents: INTENT_GUILDS | INTENT_GUILD_VOICE_STATES,
            url: DEFAULT_GATEWAY_URL.into(),
            backoff: BackoffConfig::default(),
        }
    }
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
    /// The socket dropped; reconnecting (resuming when `resume`).
    Reconnecting {
        /// Whether the session will be resumed.
        resume: bool,
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
    session: Option<(String, String)>,
    user_id: Option<u64>,
    /// Commands asked for while the socket was down, sent once it is up.
    pending: Vec<String>,
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
            _ => self.heartbeat.as_ref().map(Heartbeater::next_due),
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
        if text.len() > crate::protocol::DEFAULT_MAX_FRAME_LEN * 8 {
            return Err(crate::protocol::ProtocolError::FrameTooLarge {
                len: text.len(),
                max: crate::protocol::DEFAULT_MAX_FRAME_LEN * 8,
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
            0 => self.on_dispatch(env.t.as_deref().unwrap_or(""), env.d)?,
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

    fn on_dispatch(&mut self, t: &str, d: serde_json::Value) -> Result<(), crate::Error> {
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
                    .map(|u| format!("{}/?v=10&encoding=json", u.trim_end_matches('/')))
                    .unwrap_or_else(|| self.config.url.clone());
                self.session = Some((r.session_id, url));
                self.user_id = Some(r.user.id.0);
                self.established();
                self.event(MainGatewayEvent::Ready {
                    user_id: r.user.id.0,
                });
            }
            "RESUMED" => {
                self.established();
                self.event(MainGatewayEvent::Resumed);
            }
            "VOICE_STATE_UPDATE" => {
                let u =
                    serde_json::from_value(d).map_err(|e| malformed("VOICE_STATE_UPDATE", e))?;
                self.event(MainGatewayEvent::VoiceStateUpdate(u));
            }
            "VOICE_SERVER_UPDATE" => {
                let u =
                    serde_json::from_value(d).map_err(|e| malformed("VOICE_SERVER_UPDATE", e))?;
                self.event(MainGatewayEvent::VoiceServerUpdate(u));
            }
            _ => {}
        }
        Ok(())
    }

    fn established(&mut self) {
        self.state = State::Established;
        self.backoff.reset();
        for cmd in std::mem::take(&mut self.pending) {
            self.out.push_back(Output::Send(cmd));
        }
    }

    fn identify_or_resume(&mut self) {
        let payload = match (&self.session, self.seq) {
            (Some((session_id, _)), Some(seq)) => serde_json::json!({
                "op": 6,
                "d": { "token": self.config.token.expose(), "session_id": session_id, "seq": seq }
            }),
            _ => serde_json::json!({
                "op": 2,
                "d": {
                    "token": self.config.token.expose(),
                    "intents": self.config.intents | INTENT_GUILD_VOICE_STATES,
                    "properties": { "os": std::env::consts::OS, "browser": "quaver", "device": "quaver" }
                }
            }),
        };
        self.state = State::ExpectReady;
        self.out.push_back(Output::Send(payload.to_string()));
    }

    fn send_heartbeat(&mut self) {
        let d = self
            .seq
            .map_or(serde_json::Value::Null, serde_json::Value::from);
        self.out.push_back(Output::Send(
            serde_json::json!({ "op": 1, "d": d }).to_string(),
        ));
    }

    fn connect(&mut self, _now: Instant) {
        let url = match &self.session {
            Some((_, resume_url)) => resume_url.clone(),
            None => self.config.url.clone(),
        };
        self.state = State::ExpectSocket;
        self.heartbeat = None;
        self.out.push_back(Output::Connect { url });
    }

    fn retry(&mut self, now: Instant) {
        let Some(delay) = self.backoff.next_delay() else {
            self.end(None);
            return;
        };
        let resume = self.session.is_some();
        self.event(MainGatewayEvent::Reconnecting { resume });
        self.state = State::ExpectRetryTimer {
            at: now + delay.max(Duration::from_millis(100)),
        };
    }

    fn end(&mut self, code: Option<u16>) {
        self.state = State::Ended;
        self.heartbeat = None;
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
                resume: true
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
}
