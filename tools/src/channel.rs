//! Joining one voice channel the way `quaver play` and `quaver record` do: the local server by
//! default (in-process), a running `quaver serve` with `--server`, or a Discord guild with a bot
//! token.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use quaver::gateway::main_gateway::MainGatewayConfig;
use quaver::gateway::protocol::Token;
use quaver::{CallId, CallStatus, Config, Engine, JoinOptions};

use crate::server::{Server, ServerConfig};
use crate::{Error, Stage};

/// Where to join (the connection flags shared by `play` and `record`).
#[derive(Clone, Default, clap::Args)]
pub struct ChannelArgs {
    /// Bot token (default: $DISCORD_TOKEN; prefer the variable: a --token value is visible to
    /// every user in the process list). Without one, the local server is used.
    #[arg(long)]
    pub token: Option<String>,
    /// Guild to join (needed with --token; 1 on a local server).
    #[arg(long)]
    pub guild: Option<u64>,
    /// Voice channel to join (needed with --token; 1 on a local server).
    #[arg(long)]
    pub channel: Option<u64>,
    /// A running `quaver serve`: its main-gateway `host:port` (TLS, the default), or
    /// `ws://host:port` for one started with `--plain`.
    #[arg(long, value_name = "ADDR|URL")]
    pub server: Option<String>,
    /// With --server: the CA certificate (PEM) that `quaver serve --cert-out` wrote.
    #[arg(long, value_name = "FILE", requires = "server")]
    pub ca_cert: Option<PathBuf>,
}

impl std::fmt::Debug for ChannelArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The bot token is a secret: never in Debug output.
        f.debug_struct("ChannelArgs")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("guild", &self.guild)
            .field("channel", &self.channel)
            .field("server", &self.server)
            .field("ca_cert", &self.ca_cert)
            .finish()
    }
}

/// A joined channel.
pub struct Joined {
    /// The engine (drop it last).
    pub engine: Engine,
    /// The call.
    pub call: CallId,
    /// Where.
    pub guild: u64,
    /// Where.
    pub channel: u64,
    /// The in-process server, when no other was named.
    pub embedded: Option<Server>,
}

/// Joins the channel `args` name as a bot called `name` (on a local server), waiting until the
/// call is ready; `stop` (Ctrl-C) interrupts the wait.
pub fn join(args: &ChannelArgs, name: &str, stop: &AtomicBool) -> Result<Joined, Error> {
    let mut embedded = None;
    let mut control = quaver::gateway::control::ControlConfig::default();
    let (bot_config, guild, channel) = match &args.token {
        Some(token) => {
            let (Some(guild), Some(channel)) = (args.guild, args.channel) else {
                return Err(Error::Usage(
                    "joining a Discord channel needs --guild and --channel".into(),
                ));
            };
            (
                MainGatewayConfig::new(Token::new(token.clone())),
                guild,
                channel,
            )
        }
        None => {
            let url = match &args.server {
                Some(server) => {
                    control = crate::remote::control_config(args.ca_cert.as_deref())?;
                    crate::remote::main_gateway_url(server)
                }
                None => {
                    let server = Server::start(ServerConfig::default())?;
                    let url = server.main_gateway_url();
                    control = server.control_config();
                    embedded = Some(server);
                    url
                }
            };
            let mut config = MainGatewayConfig::new(Token::new(name));
            config.url = url;
            (config, args.guild.unwrap_or(1), args.channel.unwrap_or(1))
        }
    };
    let engine = Engine::new(Config {
        control,
        ..Config::default()
    })?;
    let bot = engine.connect_bot(bot_config)?;
    let call = engine.join(bot, guild, channel, JoinOptions::default())?;
    let give_up = Instant::now() + Duration::from_secs(20);
    while engine.call_status(call) != Some(CallStatus::Ready) {
        if stop.load(Ordering::Relaxed) {
            return Err(Error::Interrupted {
                stage: Stage::Connecting,
            });
        }
        if Instant::now() > give_up {
            return Err(Error::Usage("could not join the voice channel".into()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "joined guild {guild} channel {channel} ({})",
        engine.sender_mode()
    );
    Ok(Joined {
        engine,
        call,
        guild,
        channel,
        embedded,
    })
}
