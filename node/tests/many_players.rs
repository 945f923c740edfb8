//! One session, many players: each joins its own guild's voice channel on the local server
//! (connected, not playing), all show in `GET /players`, and deleting them leaves no player,
//! no call in the engine and no voice connection on the control thread.

mod client;
use client::*;

use std::time::Duration;

use quaver_tools::server::{DaveMode, Server, ServerConfig};
use serde_json::json;

/// Players in the session: "thousands of players", as the issue says. The engine's default
/// call limit (1,024) is raised to fit. The debug test build runs this in well under a minute
/// on a 2-core VM (about 13 s when measured while writing it; no timing is asserted).
const PLAYERS: u64 = 2_000;
const CHANNEL: u64 = 42;
const USER: u64 = 1_000;

#[test]
fn two_thousand_players_in_one_session_connect_and_leave() {
    // One websocket thread per call at the server: a slow idle poll, and no decoding (nothing
    // plays). DAVE stays required, as on Discord; the server's own MLS member is left out.
    let server = Server::start(ServerConfig {
        decode_audio: false,
        ws_poll_interval: Duration::from_millis(500),
        dave: DaveMode::Required,
        dave_observer: false,
        ..ServerConfig::default()
    })
    .expect("server");
    let node = node_with(Some(&server), |config| {
        config.engine.engine.max_calls = PLAYERS as usize;
    });
    let addr = node.addr();
    let client = Client::connect(addr, USER, None);
    let session = client.session.clone();
    let players_path = format!("/v4/sessions/{session}/players");

    for guild in 1..=PLAYERS {
        let request = server.voice_connect_request(guild, CHANNEL, USER);
        let voice = json!({
            "token": request.token.expose(),
            "endpoint": request.endpoint,
            "sessionId": request.session_id.expose(),
            "channelId": CHANNEL.to_string(),
        });
        let (status, player) = api(
            addr,
            "PATCH",
            &format!("{players_path}/{guild}"),
            Some(&json!({ "voice": voice })),
        );
        assert_eq!(status, 200, "player {guild}: {player}");
    }
    assert_eq!(node.engine().audio_engine().call_count(), PLAYERS as usize);

    let mut connected = 0;
    wait_for("every player connected", Duration::from_secs(120), || {
        let (status, players) = api(addr, "GET", &players_path, None);
        assert_eq!(status, 200);
        let players = players.as_array().expect("a list of players");
        assert_eq!(players.len(), PLAYERS as usize);
        connected = players
            .iter()
            .filter(|p| p["state"]["connected"] == true)
            .count();
        connected == PLAYERS as usize
    });
    let (_, players) = api(addr, "GET", &players_path, None);
    let mut guilds: Vec<u64> = players
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["guildId"].as_str().unwrap().parse().unwrap())
        .collect();
    guilds.sort_unstable();
    assert_eq!(guilds, (1..=PLAYERS).collect::<Vec<_>>());
    assert!(
        players
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["track"].is_null())
    );
    let (_, stats) = api(addr, "GET", "/v4/stats", None);
    assert_eq!(stats["players"], PLAYERS);
    assert_eq!(stats["playingPlayers"], 0);
    assert_eq!(
        node.engine().stats().unwrap().control.connections,
        PLAYERS as usize
    );

    for guild in 1..=PLAYERS {
        let (status, body) = api(addr, "DELETE", &format!("{players_path}/{guild}"), None);
        assert_eq!(status, 204, "player {guild}: {body}");
    }
    let (status, players) = api(addr, "GET", &players_path, None);
    assert_eq!((status, players), (200, json!([])));
    // Calls are left on a thread of their own after each DELETE answered.
    wait_for("every call left", Duration::from_secs(60), || {
        node.engine().audio_engine().call_count() == 0
            && node.engine().stats().unwrap().control.connections == 0
    });
    let (_, stats) = api(addr, "GET", "/v4/stats", None);
    assert_eq!(stats["players"], 0);
    node.stop();
}
