//! `quaver::serenity` with serenity 0.12's own types: its shard runner queue, its voice state
//! model, and a real serenity `ShardManager` whose shard talks to the local server's main
//! gateway (plain `ws://` on loopback: serenity's TLS backend is the bot's choice, not ours).
#![cfg(feature = "serenity")]

mod common;
use common::{sine, wait_for};

use std::sync::Arc;
use std::time::Duration;

use quaver::serenity::VoiceManager;
use quaver::{CallStatus, Config, Engine, Error, JoinOptions, PcmFormat};
use quaver_tools::server::{Server, ServerConfig};
use serenity::async_trait;
use serenity::client::{Context, EventHandler};
use serenity::futures::channel::mpsc::{UnboundedReceiver, unbounded};
use serenity::gateway::{
    ShardManager, ShardManagerOptions, ShardRunnerMessage, VoiceGatewayManager,
};
use serenity::model::gateway::{GatewayIntents, Ready};
use serenity::model::id::{ChannelId, GuildId, UserId};
use serenity::model::voice::VoiceState;

fn engine(server: Option<&Server>) -> Arc<Engine> {
    let mut config = Config::default();
    config.engine.realtime_priority = false;
    if let Some(server) = server {
        config.control = server.control_config();
        // The plain server's VOICE_SERVER_UPDATE carries a ws:// endpoint.
        config.allow_plain_endpoints = true;
    }
    Arc::new(Engine::new(config).unwrap())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The op 4 frames waiting in a shard runner's queue, as JSON.
fn op4_frames(rx: &mut UnboundedReceiver<ShardRunnerMessage>) -> Vec<serde_json::Value> {
    let mut frames = Vec::new();
    while let Ok(message) = rx.try_recv() {
        let ShardRunnerMessage::Message(ws) = message else {
            panic!("op 4 goes out as a websocket message, got {message:?}");
        };
        frames.push(serde_json::from_str(ws.to_text().unwrap()).unwrap());
    }
    frames
}

/// A guild ID on `shard` of `count`.
fn guild_on(shard: u64, count: u64) -> u64 {
    ((7 * count + shard) << 22) | 1
}

#[test]
fn op4_goes_to_the_guilds_shard_runner_and_waits_while_that_shard_reconnects() {
    let rt = runtime();
    let voice = VoiceManager::new(engine(None));
    let guild = GuildId::new(guild_on(1, 2));
    assert!(matches!(
        voice.join(guild, ChannelId::new(5), JoinOptions::default()),
        Err(Error::UserIdUnknown)
    ));
    rt.block_on(voice.initialise(2, UserId::new(42)));
    assert_eq!(voice.shard_count(), 2);

    let (tx0, mut rx0) = unbounded();
    rt.block_on(voice.register_shard(0, tx0));
    // Shard 1 is still connecting: its op 4 waits.
    let options = JoinOptions {
        self_mute: true,
        self_deaf: false,
    };
    let call = voice.join(guild, ChannelId::new(5), options).unwrap();
    assert_eq!(voice.call(guild), Some(call));
    assert_eq!(voice.held_voice_states(), 1);
    assert!(op4_frames(&mut rx0).is_empty(), "not shard 0's guild");

    let (tx1, mut rx1) = unbounded();
    rt.block_on(voice.register_shard(1, tx1));
    assert_eq!(voice.held_voice_states(), 0);
    assert_eq!(
        op4_frames(&mut rx1),
        [serde_json::json!({"op": 4, "d": {
            "guild_id": guild.get().to_string(), "channel_id": "5",
            "self_mute": true, "self_deaf": false,
        }})]
    );

    // Reconnecting: serenity deregisters the shard, then registers its new runner.
    rt.block_on(voice.deregister_shard(1));
    voice.leave(guild).unwrap();
    assert_eq!(voice.call(guild), None);
    assert!(
        op4_frames(&mut rx1).is_empty(),
        "the old runner gets nothing"
    );
    let (tx1, mut rx1) = unbounded();
    rt.block_on(voice.register_shard(1, tx1));
    let frames = op4_frames(&mut rx1);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0]["d"]["channel_id"], serde_json::Value::Null);

    // A runner that stopped (its receiver dropped) holds op 4 too.
    drop(rx1);
    voice
        .join(guild, ChannelId::new(6), JoinOptions::default())
        .unwrap();
    assert_eq!(voice.held_voice_states(), 1);
    assert!(matches!(
        voice.leave(GuildId::new(9 << 22)),
        Err(Error::NotInGuild(_))
    ));
}

#[test]
fn serenitys_own_voice_state_and_server_update_connect_the_call() {
    let server = Server::start(ServerConfig::default()).unwrap();
    let rt = runtime();
    let engine = engine(Some(&server));
    let voice = VoiceManager::new(Arc::clone(&engine));
    let (me, guild, channel) = (4242_u64, 3_u64 << 22, 33_u64);
    rt.block_on(voice.initialise(1, UserId::new(me)));
    let (tx, mut rx) = unbounded();
    rt.block_on(voice.register_shard(0, tx));
    let call = voice
        .join(
            GuildId::new(guild),
            ChannelId::new(channel),
            JoinOptions::default(),
        )
        .unwrap();
    assert_eq!(op4_frames(&mut rx).len(), 1);

    // What Discord would answer, from the server's own credentials, as serenity parses it.
    let issued = server.voice_connect_request(guild, channel, me);
    // Serenity's model is `#[non_exhaustive]`: built the way serenity builds it, from JSON.
    let mine: VoiceState = serde_json::from_value(serde_json::json!({
        "guild_id": guild.to_string(), "channel_id": channel.to_string(),
        "user_id": me.to_string(), "session_id": issued.session_id.expose(),
        "deaf": false, "mute": false, "self_deaf": false, "self_mute": false,
        "self_video": false, "suppress": false, "request_to_speak_timestamp": null,
    }))
    .unwrap();
    rt.block_on(async {
        // Server update first: either order joins.
        voice
            .server_update(
                GuildId::new(guild),
                &Some(issued.endpoint.clone()),
                issued.token.expose(),
            )
            .await;
        voice.state_update(GuildId::new(guild), &mine).await;
    });
    wait_for("the session", Duration::from_secs(10), || {
        engine.call_status(call) == Some(CallStatus::Ready)
    });
    assert!(server.ssrc_of(guild, me).is_some());
    voice.leave(GuildId::new(guild)).unwrap();
    assert_eq!(engine.call_status(call), None);
}

/// Tells the voice manager the bot's user ID from READY, as serenity's `Client` does from the
/// HTTP API at start (the test has no HTTP API to ask).
struct Initialise(Arc<VoiceManager>);

#[async_trait]
impl EventHandler for Initialise {
    async fn ready(&self, _: Context, ready: Ready) {
        self.0.initialise(1, ready.user.id).await;
    }
}

#[test]
fn a_serenity_shard_joins_through_the_local_main_gateway_and_the_call_sends_audio() {
    let server = Server::start(ServerConfig {
        tls: false,
        ..ServerConfig::default()
    })
    .unwrap();
    let rt = runtime();
    let engine = engine(Some(&server));
    let voice = VoiceManager::new(Arc::clone(&engine));
    let http = Arc::new(serenity::http::Http::new("Bot local-test"));
    let (manager, _results) = rt.block_on(async {
        ShardManager::new(ShardManagerOptions {
            data: Default::default(),
            event_handlers: vec![Arc::new(Initialise(Arc::clone(&voice)))],
            raw_event_handlers: vec![],
            shard_index: 0,
            shard_init: 1,
            shard_total: 1,
            voice_manager: Some(voice.clone() as Arc<dyn VoiceGatewayManager>),
            ws_url: Arc::new(tokio::sync::Mutex::new(format!(
                "ws://{}",
                server.main_gateway_addr()
            ))),
            http,
            intents: GatewayIntents::GUILDS | GatewayIntents::GUILD_VOICE_STATES,
            presence: None,
        })
    });
    manager.initialize().unwrap();

    let (guild, channel) = (GuildId::new(5 << 22), ChannelId::new(55));
    // Until READY the user ID is unknown; afterwards the join goes out on the shard.
    let give_up = std::time::Instant::now() + Duration::from_secs(15);
    let call = loop {
        match voice.join(guild, channel, JoinOptions::default()) {
            Ok(call) => break call,
            Err(Error::UserIdUnknown) if std::time::Instant::now() < give_up => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("join failed: {e}"),
        }
    };
    wait_for("the voice session", Duration::from_secs(15), || {
        engine.call_status(call) == Some(CallStatus::Ready)
    });
    sends_audio_in(&engine, &server, call, guild.get(), 55);
    // A move: Quaver leaves and joins again, and the leave's echo (a voice state with no
    // channel) must not end the new join.
    let moved = voice
        .join(guild, ChannelId::new(56), JoinOptions::default())
        .unwrap();
    assert_eq!(engine.call_status(call), None, "the first call is gone");
    wait_for(
        "the voice session in the new channel",
        Duration::from_secs(15),
        || engine.call_status(moved) == Some(CallStatus::Ready),
    );
    sends_audio_in(&engine, &server, moved, guild.get(), 56);
    voice.leave(guild).unwrap();
    rt.block_on(manager.shutdown_all());
}

/// Plays half a second into `call` and waits until the server got 20 packets of it in
/// `channel`.
fn sends_audio_in(
    engine: &Engine,
    server: &Server,
    call: quaver::CallId,
    guild: u64,
    channel: u64,
) {
    let (_source, mut writer) = engine.push_source(call, PcmFormat::STEREO_48K).unwrap();
    writer.write_all_f32(&sine(48_000, 2, 500.0, 0.5)).unwrap();
    wait_for("packets from the call", Duration::from_secs(10), || {
        server.stats().calls.iter().any(|c| {
            c.guild_id == guild
                && c.channel_id == channel
                && c.streams.iter().any(|s| s.packets >= 20)
        })
    });
}
