//! The node's settings: from code, from Lavalink's `application.yml` (the keys Lavalink users
//! already set), and from the environment as Spring reads it (`SERVER_PORT`,
//! `LAVALINK_SERVER_PASSWORD` …).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

/// The password clients send in `Authorization`; never shown in `Debug` or logs.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Wraps a password.
    pub fn new(password: impl Into<String>) -> Self {
        Self(password.into())
    }

    /// Whether `offered` is this password, comparing every byte (no early exit on the first
    /// difference, so response time does not tell how much of a guess was right).
    pub fn matches(&self, offered: &[u8]) -> bool {
        let ours = self.0.as_bytes();
        let mut diff = u8::from(ours.len() != offered.len());
        for (i, &b) in ours.iter().enumerate() {
            diff |= b ^ offered.get(i).copied().unwrap_or(0);
        }
        diff == 0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// Which identifiers `/v4/loadtracks` resolves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sources {
    /// Local file paths. Off by default, as in Lavalink: any client with the password could
    /// otherwise play (and probe the existence of) any file the node can read.
    pub local: bool,
    /// `http://` and `https://` URLs.
    pub http: bool,
}

impl Default for Sources {
    fn default() -> Self {
        Self {
            local: false,
            http: true,
        }
    }
}

/// Bounds on what clients can make the node hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body accepted (bytes); larger ones get 413.
    pub max_body: usize,
    /// Sessions (client connections, resumable ones included) at once.
    pub max_sessions: usize,
    /// Players per session.
    pub max_players: usize,
    /// Mix layers per player (NodeLink's default is 5).
    pub max_layers: usize,
    /// Events kept for a resumable session while its client is away; the oldest go first.
    pub resume_buffer: usize,
    /// Tracks in one `/v4/decodetracks` request.
    pub max_decode: usize,
    /// Messages queued to one websocket before the node gives up on that client.
    pub socket_queue: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body: 1 << 20,
            max_sessions: 1_000,
            max_players: 10_000,
            max_layers: 5,
            resume_buffer: 1_000,
            max_decode: 1_000,
            socket_queue: 4_096,
        }
    }
}

/// Everything [`crate::Node::start`] needs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Where the HTTP and websocket API listens (Lavalink's default port is 2333).
    pub listen: SocketAddr,
    /// What clients must send in `Authorization`.
    pub password: Password,
    /// Extra CA certificates (PEM) trusted for voice endpoints' TLS, beside the web PKI roots
    /// (a local test server signs its certificate with its own CA).
    pub voice_ca_pem: Option<Vec<u8>>,
    /// Which identifiers load.
    pub sources: Sources,
    /// Bounds.
    pub limits: Limits,
    /// How often each session gets `playerUpdate` for its players (Lavalink: 5 s).
    pub player_update_interval: Duration,
    /// How often each session gets `stats` (Lavalink: 60 s).
    pub stats_interval: Duration,
    /// A playing track that produces no audio for this long gets `TrackStuckEvent`
    /// (Lavalink's `trackStuckThresholdMs`, 10 s).
    pub stuck_threshold: Duration,
    /// The engine underneath (mixer threads, sender, voice gateway settings).
    pub engine: quaver::Config,
}

impl Default for NodeConfig {
    fn default() -> Self {
        let mut engine = quaver::Config::default();
        // A node shares its machine with other services; no real-time scheduling by default.
        engine.engine.realtime_priority = false;
        Self {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 2333),
            password: Password::new("youshallnotpass"),
            voice_ca_pem: None,
            sources: Sources::default(),
            limits: Limits::default(),
            player_update_interval: Duration::from_secs(5),
            stats_interval: Duration::from_secs(60),
            stuck_threshold: Duration::from_secs(10),
            engine,
        }
    }
}

/// A setting that could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A value is not of the key's type.
    #[error("{key}: not a valid value")]
    BadValue {
        /// The key, dotted as in the YAML file.
        key: &'static str,
    },
}

/// The keys read, dotted as in `application.yml`.
const KEYS: [&str; 8] = [
    "server.port",
    "server.address",
    "lavalink.server.password",
    "lavalink.server.sources.local",
    "lavalink.server.sources.http",
    "lavalink.server.playerUpdateInterval",
    "lavalink.server.trackStuckThresholdMs",
    "lavalink.server.resumeBufferSize",
];

impl NodeConfig {
    /// Applies the known keys of a Lavalink `application.yml` (others are ignored).
    pub fn apply_yaml(&mut self, text: &str) -> Result<(), ConfigError> {
        let values = flatten_yaml(text);
        for key in KEYS {
            if let Some(value) = values.get(key) {
                self.apply(key, value)?;
            }
        }
        Ok(())
    }

    /// Applies the known keys from environment variables named as Spring binds them
    /// (`lavalink.server.password` → `LAVALINK_SERVER_PASSWORD`).
    pub fn apply_env(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        for key in KEYS {
            let name = key.replace('.', "_").to_uppercase();
            if let Some(value) = lookup(&name) {
                self.apply(key, &value)?;
            }
        }
        Ok(())
    }

    fn apply(&mut self, key: &'static str, value: &str) -> Result<(), ConfigError> {
        let bad = || ConfigError::BadValue { key };
        let boolean = |v: &str| match v {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(bad()),
        };
        match key {
            "server.port" => self.listen.set_port(value.parse().map_err(|_| bad())?),
            "server.address" => self.listen.set_ip(value.parse().map_err(|_| bad())?),
            "lavalink.server.password" => self.password = Password::new(value),
            "lavalink.server.sources.local" => self.sources.local = boolean(value)?,
            "lavalink.server.sources.http" => self.sources.http = boolean(value)?,
            "lavalink.server.playerUpdateInterval" => {
                let seconds: u64 = value.parse().map_err(|_| bad())?;
                self.player_update_interval = Duration::from_secs(seconds.max(1));
            }
            "lavalink.server.trackStuckThresholdMs" => {
                self.stuck_threshold = Duration::from_millis(value.parse().map_err(|_| bad())?);
            }
            "lavalink.server.resumeBufferSize" => {
                self.limits.resume_buffer = value.parse().map_err(|_| bad())?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// The scalar values of a YAML document of nested mappings, keyed by their dotted path. Only
/// the block-mapping subset `application.yml` files use for these keys: `key: value` lines
/// indented by spaces, comments, quoted scalars. Sequences and flow collections are skipped.
fn flatten_yaml(text: &str) -> HashMap<String, String> {
    let mut values = HashMap::new();
    // (indent, key) of the mappings the current line is inside.
    let mut path: Vec<(usize, String)> = Vec::new();
    for line in text.lines() {
        let content = strip_comment(line);
        if content.trim().is_empty() || content.trim_start().starts_with('-') {
            continue;
        }
        let indent = content.len() - content.trim_start().len();
        let Some((key, value)) = content.trim().split_once(':') else {
            continue;
        };
        while path.last().is_some_and(|(i, _)| *i >= indent) {
            path.pop();
        }
        let key = unquote(key.trim()).to_owned();
        let value = value.trim();
        if value.is_empty() {
            path.push((indent, key));
        } else {
            let mut dotted: Vec<&str> = path.iter().map(|(_, k)| k.as_str()).collect();
            dotted.push(&key);
            values.insert(dotted.join("."), unquote(value).to_owned());
        }
    }
    values
}

fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    for (i, c) in line.char_indices() {
        match (c, quote) {
            ('"' | '\'', None) => quote = Some(c),
            (c, Some(q)) if c == q => quote = None,
            ('#', None) if i == 0 || line[..i].ends_with(char::is_whitespace) => {
                return &line[..i];
            }
            _ => {}
        }
    }
    line
}

fn unquote(s: &str) -> &str {
    for q in ['"', '\''] {
        if let Some(inner) = s.strip_prefix(q).and_then(|s| s.strip_suffix(q)) {
            return inner;
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_lavalink_application_yml() {
        let yaml = "\
server: # REST and WS server
  port: 2444
  address: 0.0.0.0
lavalink:
  plugins:
    - dependency: \"com.github.example:plugin:1.0\"
  server:
    password: \"s3cret # not a comment\"
    sources:
      http: false
      local: true
    playerUpdateInterval: 2
    trackStuckThresholdMs: 5000
";
        let mut config = NodeConfig::default();
        config.apply_yaml(yaml).unwrap();
        assert_eq!(config.listen, "0.0.0.0:2444".parse().unwrap());
        assert!(config.password.matches(b"s3cret # not a comment"));
        assert!(config.sources.local && !config.sources.http);
        assert_eq!(config.player_update_interval, Duration::from_secs(2));
        assert_eq!(config.stuck_threshold, Duration::from_secs(5));
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    #[test]
    fn environment_overrides_and_bad_values_are_errors() {
        let mut config = NodeConfig::default();
        config
            .apply_env(|name| (name == "SERVER_PORT").then(|| "3000".to_owned()))
            .unwrap();
        assert_eq!(config.listen.port(), 3000);
        let err = config
            .apply_env(|name| (name == "LAVALINK_SERVER_SOURCES_LOCAL").then(|| "yes".to_owned()));
        assert!(matches!(
            err,
            Err(ConfigError::BadValue {
                key: "lavalink.server.sources.local"
            })
        ));
    }

    #[test]
    fn password_comparison() {
        let p = Password::new("abc");
        assert!(p.matches(b"abc"));
        assert!(!p.matches(b"abd") && !p.matches(b"ab") && !p.matches(b"abcd"));
    }
}
