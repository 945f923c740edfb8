//! A real Lavalink client library from crates.io, `lavalink-rs` 0.15, drives the node: it
//! connects its websocket, reads `/v4/info` and `/v4/stats` into its own types, loads a local
//! file, creates a player with voice credentials from the local server (DAVE required) and
//! plays, pauses and stops it. The server decodes the audio.

mod client;
use client::{heard_len, listen, node, server, tone_file, wait_for};

use std::sync::Mutex;
use std::time::Duration;

use lavalink_rs::model::events::Events;
use lavalink_rs::model::player::ConnectionInfo;
use lavalink_rs::model::track::TrackLoadData;
use lavalink_rs::model::{BoxFuture, ChannelId};
use lavalink_rs::prelude::{LavalinkClient, NodeBuilder, NodeDistributionStrategy};
use quaver::engine::analysis::tone_power;
use serde_json::Value;

const GUILD: u64 = 987_654_321_098_765_432;
const CHANNEL: u64 = 77;
const USER: u64 = 2_000;

/// Every message the library's websocket received (its event handlers are plain functions).
static RAW: Mutex<Vec<Value>> = Mutex::new(Vec::new());

fn raw(_: LavalinkClient, _: String, message: &Value) -> BoxFuture<'_, ()> {
    RAW.lock().unwrap().push(message.clone());
    Box::pin(async {})
}

fn saw(want: impl Fn(&Value) -> bool) -> bool {
    RAW.lock().unwrap().iter().any(want)
}

fn event(kind: &'static str) -> impl Fn(&Value) -> bool {
    move |m| m["op"] == "event" && m["type"] == kind
}

#[test]
fn lavalink_rs_plays_through_the_node() {
    let server = server();
    let node = node(Some(&server));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let tone = tone_file("lavalink-rs.wav", 440.0, 20.0);
    let client = runtime.block_on(async {
        let events = Events {
            raw: Some(raw),
            ..Events::default()
        };
        let builder = NodeBuilder {
            hostname: node.addr().to_string(),
            is_ssl: false,
            events: Events::default(),
            password: client::PASSWORD.to_owned(),
            user_id: USER.into(),
            session_id: None,
        };
        LavalinkClient::new(events, vec![builder], NodeDistributionStrategy::new()).await
    });
    wait_for("the library's ready", Duration::from_secs(30), || {
        saw(|m| m["op"] == "ready")
    });

    let info = runtime.block_on(client.request_info(GUILD)).expect("info");
    assert!(info.source_managers.contains(&"local".to_owned()));
    let stats = runtime
        .block_on(client.request_stats(GUILD))
        .expect("stats");
    assert_eq!(stats.players, 0);

    let loaded = runtime
        .block_on(client.load_tracks(GUILD, tone.to_str().unwrap()))
        .expect("load");
    let Some(TrackLoadData::Track(track)) = loaded.data else {
        panic!("not a track: {loaded:?}");
    };
    assert_eq!(track.info.length, 20_000);

    let request = server.voice_connect_request(GUILD, CHANNEL, USER);
    let connection = ConnectionInfo {
        endpoint: request.endpoint.clone(),
        token: request.token.expose().to_owned(),
        session_id: request.session_id.expose().to_owned(),
        channel_id: Some(ChannelId(CHANNEL)),
    };
    let player = runtime
        .block_on(client.create_player_context(GUILD, connection))
        .expect("player");
    runtime.block_on(player.play_now(&track)).expect("play");
    wait_for("TrackStartEvent", Duration::from_secs(30), || {
        saw(event("TrackStartEvent"))
    });
    wait_for("the node's SSRC", Duration::from_secs(30), || {
        server.ssrc_of(GUILD, USER).is_some()
    });
    let ssrc = server.ssrc_of(GUILD, USER).unwrap();
    let heard = listen(&server, ssrc, 1.0);
    assert!(tone_power(&heard, 440.0, 48_000) > 0.01, "440 Hz heard");

    let paused = runtime.block_on(player.set_pause(true)).expect("pause");
    assert!(paused.paused);
    let volume = runtime.block_on(player.set_volume(40)).expect("volume");
    assert_eq!(volume.volume, 40);
    let stopped = runtime.block_on(player.stop_now()).expect("stop");
    assert!(stopped.track.is_none());
    wait_for("TrackEndEvent", Duration::from_secs(30), || {
        saw(|m| m["type"] == "TrackEndEvent" && m["reason"] == "stopped")
    });
    assert!(heard_len(&server, ssrc) > 0);
    runtime
        .block_on(client.delete_player(GUILD))
        .expect("delete");
    drop(runtime);
    node.stop();
}
