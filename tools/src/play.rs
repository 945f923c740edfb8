//! `quaver play`: the music bot. Mixes files into one voice channel — on the local server by
//! default, or in a real Discord guild with a bot token — with a progress line, and leaves
//! cleanly on Ctrl-C (silence frames, Speaking off, op 4 leave).

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use quaver::engine::FileOptions;
use quaver::gateway::main_gateway::MainGatewayConfig;
use quaver::gateway::protocol::Token;
use quaver::net::SenderEvent;
use quaver::{CallEvent, CallStatus, Config, Engine, Event, JoinOptions};

use crate::server::{Server, ServerConfig};
use crate::{Error, Finished};

/// What to play where (also the `quaver play` command line).
#[derive(Clone, Default, clap::Args)]
pub struct PlayOptions {
    /// Files to play.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Per-file volume (linear, 0 to 16, 1.0 = unchanged), in the order of the files.
    #[arg(long, value_delimiter = ',', value_parser = crate::args::volume, allow_negative_numbers = true)]
    pub volume: Vec<f32>,
    /// Bot token (default: $DISCORD_TOKEN; prefer the variable: a --token value is visible to
    /// every user in the process list). Without one, plays on the local server.
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

impl std::fmt::Debug for PlayOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The bot token is a secret: never in Debug output.
        f.debug_struct("PlayOptions")
            .field("files", &self.files)
            .field("volume", &self.volume)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("guild", &self.guild)
            .field("channel", &self.channel)
            .field("server", &self.server)
            .field("ca_cert", &self.ca_cert)
            .finish()
    }
}

/// Plays until every file has ended or `stop` is set. Every file is checked before anything
/// connects.
pub fn play(options: &PlayOptions, stop: &AtomicBool) -> Result<Finished, Error> {
    crate::media::check_all(&options.files)?;
    if let Some(volume) = options
        .volume
        .iter()
        .find(|v| !(0.0..=crate::args::MAX_VOLUME).contains(*v))
    {
        return Err(Error::Usage(format!(
            "volume {volume} is not between 0 and {}",
            crate::args::MAX_VOLUME
        )));
    }
    let mut embedded = None;
    let mut control = quaver::gateway::control::ControlConfig::default();
    let (bot_config, guild, channel) = match &options.token {
        Some(token) => {
            let (Some(guild), Some(channel)) = (options.guild, options.channel) else {
                return Err(Error::Usage(
                    "playing on Discord needs --guild and --channel".into(),
                ));
            };
            (
                MainGatewayConfig::new(Token::new(token.clone())),
                guild,
                channel,
            )
        }
        None => {
            let url = match &options.server {
                Some(server) => {
                    control = crate::remote::control_config(options.ca_cert.as_deref())?;
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
            let mut config = MainGatewayConfig::new(Token::new("quaver-play"));
            config.url = url;
            (
                config,
                options.guild.unwrap_or(1),
                options.channel.unwrap_or(1),
            )
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
                stage: crate::Stage::Connecting,
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

    let mut tracks = Vec::new();
    for (index, file) in options.files.iter().enumerate() {
        let volume = options.volume.get(index).copied().unwrap_or(1.0);
        let handle = engine.play_file(
            call,
            file,
            FileOptions {
                volume,
                ..FileOptions::default()
            },
        )?;
        let name = file.file_name().map_or_else(
            || file.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        tracks.push((name, handle));
    }
    // DAVE keys arrive once the MLS group has formed, usually just after the join: each change
    // of the keys in force is shown as it happens.
    let mut e2ee_shown = None;
    while !stop.load(Ordering::Relaxed) && tracks.iter().any(|(_, h)| !h.is_ended()) {
        let e2ee = engine
            .e2ee_status(call)
            .filter(|s| s.transitions > 0)
            .map(|s| (s.protocol_version, s.epoch));
        if e2ee.is_some() && e2ee != e2ee_shown {
            e2ee_shown = e2ee;
            match e2ee {
                Some((0, _)) => {
                    eprintln!("\rE2EE: none (DAVE version 0: transport encryption only)")
                }
                Some((version, epoch)) => eprintln!("\rE2EE: DAVE v{version}, epoch {epoch}"),
                None => {}
            }
        }
        let line: Vec<String> = tracks
            .iter()
            .map(|(name, handle)| {
                let duration = handle.duration().map_or_else(|| "?".into(), clock);
                let state = if handle.is_ended() { " ended" } else { "" };
                format!("{name} {}/{duration}{state}", clock(handle.position()))
            })
            .collect();
        eprint!("\r{}   ", line.join(" | "));
        let _ = std::io::stderr().flush();
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!();
    let finished = if tracks.iter().all(|(_, h)| h.is_ended()) {
        Finished::Completed
    } else {
        Finished::Interrupted
    };
    // Leaving: fade out, let the sender send its five silence frames (it then turns Speaking
    // off), and leave the channel with op 4.
    for (_, handle) in &tracks {
        handle.stop();
    }
    let give_up = Instant::now() + Duration::from_millis(500);
    while Instant::now() < give_up {
        let stopped = engine.events().try_iter().any(|event| {
            matches!(
                event,
                Event::Call(CallEvent::Sender {
                    event: SenderEvent::SpeakingStopped { .. },
                    ..
                })
            )
        });
        if stopped {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    engine.disconnect(call)?;
    if let Some(server) = embedded {
        for call in server.stats().calls {
            for stream in call.streams {
                eprintln!(
                    "local server received {} packets from ssrc {} ({} lost; {} DAVE frames decrypted, {} undecryptable)",
                    stream.unique_packets,
                    stream.ssrc,
                    stream.lost,
                    stream.dave_frames,
                    stream.dave_undecryptable
                );
            }
        }
    }
    Ok(finished)
}

fn clock(duration: Duration) -> String {
    let seconds = duration.as_secs();
    format!("{}:{:02}", seconds / 60, seconds % 60)
}
