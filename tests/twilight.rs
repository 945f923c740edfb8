//! `quaver::twilight` with twilight 0.17's own types: real `Shard`s and their `MessageSender`s,
//! twilight's `UpdateVoiceState` command as the reference for op 4, its `Event`s, and a real
//! twilight shard talking to the local server's main gateway (plain `ws://` on loopback: the
//! TLS connector is the bot's choice of twilight features, not ours).
#![cfg(feature = "twilight")]

mod common;
use common::{sine, wait_for};

use std::sync::Arc;
use std::time::{Duration, Instant};

use quaver::twilight::VoiceManager;
use quaver::{CallStatus, Config, Engine, Error, JoinOptions, PcmFormat};
use quaver_tools::server::{Server, ServerConfig};
use twilight_gateway::{
    ConfigBuilder, Event, EventTypeFlags, Intents, Shard, ShardId, StreamExt as _,
};
use twilight_model::gateway::payload::incoming::{VoiceServerUpdate, VoiceStateUpdate};
use twilight_model::gateway::payload::outgoing::UpdateVoiceState;
use twilight_model::id::Id;
use twilight_model::voice::VoiceState;

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

/// Twilight's shards start their identify queue as a tokio task: they are made inside one.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

fn shard(id: ShardId) -> Shard {
    Shard::new(id, "token".into(), Intents::GUILD_VOICE_STATES)
}

#[test]
fn op4_is_twilights_own_command_and_waits_for_its_shards_sender() {
    let rt = runtime();
    let _in_runtime = rt.enter();
    let voice = VoiceManager::new(engine(None), 2);
    let guild = Id::new((9 << 22) | 1); // shard 1 of 2
    assert!(matches!(
        voice.join(guild, Id::new(5), JoinOptions::default()),
        Err(Error::UserIdUnknown)
    ));
    let voice = voice.with_user_id(Id::new(42));

    // Shard 0's sender is registered; the guild's shard 1 is not yet: held.
    let zero = shard(ShardId::new(0, 2));
    voice.register_shard(&zero);
    let options = JoinOptions {
        self_mute: false,
        self_deaf: true,
    };
    let call = voice.join(guild, Id::new(5), options).unwrap();
    assert_eq!(voice.call(guild), Some(call));
    assert_eq!(voice.held_voice_states(), 1);
    let one = shard(ShardId::new(1, 2));
    assert_eq!(voice.register_sender(one.id(), one.sender()), 1);
    assert_eq!(voice.held_voice_states(), 0);

    // A dropped shard closes its sender: op 4 is held until a new one registers.
    drop(one);
    voice.leave(guild).unwrap();
    assert_eq!(voice.held_voice_states(), 1);
    let again = shard(ShardId::new(1, 2));
    voice.register_shard(&again);
    assert_eq!(voice.held_voice_states(), 0);

    // What went out is what twilight's own command serialises to.
    let ours = quaver::gateway::join::UpdateVoiceState {
        guild_id: quaver::gateway::protocol::Snowflake(guild.get()),
        channel_id: Some(quaver::gateway::protocol::Snowflake(5)),
        self_mute: false,
        self_deaf: true,
    };
    let twilights = UpdateVoiceState::new(guild, Some(Id::new(5)), true, false);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&ours.to_gateway_json()).unwrap(),
        serde_json::to_value(&twilights).unwrap()
    );
}

#[test]
fn twilights_voice_events_connect_the_call() {
    let rt = runtime();
    let _in_runtime = rt.enter();
    let server = Server::start(ServerConfig::default()).unwrap();
    let engine = engine(Some(&server));
    let (me, guild, channel) = (4242_u64, 3_u64 << 22, 33_u64);
    let voice = VoiceManager::new(Arc::clone(&engine), 1).with_user_id(Id::new(me));
    let sender_shard = shard(ShardId::ONE);
    voice.register_shard(&sender_shard);
    let call = voice
        .join(Id::new(guild), Id::new(channel), JoinOptions::default())
        .unwrap();

    let issued = server.voice_connect_request(guild, channel, me);
    let state = |user: u64| {
        Event::VoiceStateUpdate(Box::new(VoiceStateUpdate(VoiceState {
            channel_id: Some(Id::new(channel)),
            deaf: false,
            guild_id: Some(Id::new(guild)),
            member: None,
            mute: false,
            self_deaf: false,
            self_mute: false,
            self_stream: false,
            self_video: false,
            session_id: issued.session_id.expose().to_string(),
            suppress: false,
            user_id: Id::new(user),
            request_to_speak_timestamp: None,
        })))
    };
    voice.process(&state(me)).unwrap();
    voice.process(&Event::GatewayHeartbeatAck).unwrap();
    voice
        .process(&Event::VoiceServerUpdate(VoiceServerUpdate {
            endpoint: Some(issued.endpoint.clone()),
            guild_id: Id::new(guild),
            token: issued.token.expose().to_string(),
        }))
        .unwrap();
    wait_for("the session", Duration::from_secs(10), || {
        engine.call_status(call) == Some(CallStatus::Ready)
    });
    voice.leave(Id::new(guild)).unwrap();
    assert_eq!(engine.call_status(call), None);
    assert!(matches!(
        voice.leave(Id::new(guild)),
        Err(Error::NotInGuild(g)) if g == guild
    ));
}

#[test]
fn a_twilight_shard_joins_through_the_local_main_gateway_and_the_call_sends_audio() {
    let server = Server::start(ServerConfig {
        tls: false,
        ..ServerConfig::default()
    })
    .unwrap();
    let engine = engine(Some(&server));
    let rt = runtime();
    let mut shard = {
        let _in_runtime = rt.enter();
        let intents = Intents::GUILDS | Intents::GUILD_VOICE_STATES;
        let config = ConfigBuilder::new("local-test".into(), intents)
            .proxy_url(format!("ws://{}", server.main_gateway_addr()))
            .build();
        Shard::with_config(ShardId::ONE, config)
    };
    let voice = VoiceManager::new(Arc::clone(&engine), 1);
    voice.register_shard(&shard);
    let events = voice.clone();
    let shard_task = rt.spawn(async move {
        let wanted = EventTypeFlags::READY
            | EventTypeFlags::VOICE_STATE_UPDATE
            | EventTypeFlags::VOICE_SERVER_UPDATE;
        while let Some(item) = shard.next_event(wanted).await {
            match item {
                Ok(event) => events.process(&event).unwrap(),
                Err(e) => eprintln!("shard error: {e:?}"),
            }
        }
    });

    let (guild, channel) = (Id::new(5 << 22), Id::new(55));
    // The user ID arrives with READY; until then a join is refused.
    let give_up = Instant::now() + Duration::from_secs(15);
    let call = loop {
        match voice.join(guild, channel, JoinOptions::default()) {
            Ok(call) => break call,
            Err(Error::UserIdUnknown) if Instant::now() < give_up => {
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
        .join(guild, Id::new(56), JoinOptions::default())
        .unwrap();
    assert_eq!(engine.call_status(call), None, "the first call is gone");
    wait_for(
        "the voice session in the new channel",
        Duration::from_secs(15),
        || engine.call_status(moved) == Some(CallStatus::Ready),
    );
    sends_audio_in(&engine, &server, moved, guild.get(), 56);
    voice.leave(guild).unwrap();
    shard_task.abort();
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
