//! The node end to end: a Lavalink client (hand-written HTTP/1.1 and a tungstenite websocket)
//! drives `quaver-node` over loopback, and the local voice server (DAVE required) decodes what
//! the node's calls send.

mod client;
use client::*;

use std::time::Duration;

use quaver::engine::analysis::{rms, tone_power};
use serde_json::{Value, json};

const GUILD: u64 = 123_456_789_012_345_678;
const CHANNEL: u64 = 42;
const USER: u64 = 1_000;

fn voice(server: &quaver_tools::server::Server, guild: u64) -> Value {
    let request = server.voice_connect_request(guild, CHANNEL, USER);
    json!({
        "token": request.token.expose(),
        "endpoint": request.endpoint,
        "sessionId": request.session_id.expose(),
        "channelId": CHANNEL.to_string(),
    })
}

fn load(addr: std::net::SocketAddr, identifier: &str) -> Value {
    let path = format!("/v4/loadtracks?identifier={}", encode_query(identifier));
    let (status, body) = api(addr, "GET", &path, None);
    assert_eq!(status, 200, "{body}");
    body
}

fn encode_query(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn player_path(session: &str, guild: u64) -> String {
    format!("/v4/sessions/{session}/players/{guild}")
}

#[test]
fn refuses_without_the_password_and_answers_errors_in_lavalinks_shape() {
    let node = node(None);
    let addr = node.addr();
    for path in ["/version", "/v4/info", "/v4/stats", "/v4/websocket"] {
        let (status, body) = http(addr, "GET", path, None, None);
        assert_eq!(status, 401, "{path}");
        let error: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(error["status"], 401);
        assert_eq!(error["error"], "Unauthorized");
        assert_eq!(error["path"], path);
        assert!(error["timestamp"].as_u64().unwrap() > 0);
        let (status, _) = http(addr, "GET", path, Some("wrong"), None);
        assert_eq!(status, 401);
    }
    let (status, version) = http(addr, "GET", "/version", Some(PASSWORD), None);
    assert_eq!((status, version.as_str()), (200, env!("CARGO_PKG_VERSION")));
    let (status, info) = api(addr, "GET", "/v4/info", None);
    assert_eq!(status, 200);
    assert_eq!(info["sourceManagers"], json!(["local", "http"]));
    // NodeLink's marker, which clients check before they offer the mix routes.
    assert_eq!(info["isNodelink"], true);
    let (status, stats) = api(addr, "GET", "/v4/stats", None);
    assert_eq!(status, 200);
    assert_eq!(stats["players"], 0);
    assert!(stats["memory"]["used"].as_u64().unwrap() > 0);

    // Garbage bodies and unknown sessions.
    let (status, body) = http(
        addr,
        "PATCH",
        "/v4/sessions/nope?trace=true",
        Some(PASSWORD),
        Some("{not json"),
    );
    assert_eq!(status, 400, "{body}");
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["path"], "/v4/sessions/nope");
    assert!(error["trace"].is_string());
    let (status, error) = api(addr, "PATCH", "/v4/sessions/nope", Some(&json!({})));
    assert_eq!(
        (status, error["message"].as_str()),
        (404, Some("Session not found"))
    );
    assert!(error.get("trace").is_none());
    let (status, _) = http(
        addr,
        "POST",
        "/v4/decodetracks",
        Some(PASSWORD),
        Some("[1, 2"),
    );
    assert_eq!(status, 400);
    let huge = "x".repeat(2 << 20);
    let (status, _) = http(
        addr,
        "POST",
        "/v4/decodetracks",
        Some(PASSWORD),
        Some(&huge),
    );
    assert_eq!(status, 413);
    let (status, _) = api(addr, "GET", "/v4/decodetrack?encodedTrack=AAAA", None);
    assert_eq!(status, 400);
    let (status, _) = api(addr, "GET", "/v4/nothing-here", None);
    assert_eq!(status, 404);

    // Loading: nothing, a file, a failure; decoding what was loaded.
    assert_eq!(load(addr, "/no/such/file.flac")["loadType"], "empty");
    let tone = tone_file("tone-load.wav", 440.0, 3.0);
    let loaded = load(addr, tone.to_str().unwrap());
    assert_eq!(loaded["loadType"], "track", "{loaded}");
    let track = &loaded["data"];
    assert_eq!(track["info"]["length"], 3_000);
    assert_eq!(track["info"]["sourceName"], "local");
    let not_audio = std::env::temp_dir().join(format!("quaver-node-{}.txt", std::process::id()));
    std::fs::write(&not_audio, "not audio at all").unwrap();
    let failed = load(addr, not_audio.to_str().unwrap());
    assert_eq!(failed["loadType"], "error");
    assert_eq!(failed["data"]["severity"], "common");
    let encoded = track["encoded"].as_str().unwrap();
    let (status, decoded) = api(
        addr,
        "GET",
        &format!("/v4/decodetrack?encodedTrack={}", encode_query(encoded)),
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(decoded["info"], track["info"]);
    let (status, decoded) = api(
        addr,
        "POST",
        "/v4/decodetracks",
        Some(&json!([encoded, encoded])),
    );
    assert_eq!(status, 200);
    assert_eq!(decoded.as_array().unwrap().len(), 2);
    node.stop();
}

/// Plays, pauses, changes volume, seeks, mixes, replaces and stops, checking what the voice
/// server decoded from the node's SSRC.
#[test]
fn plays_through_a_voice_server_with_dave() {
    let server = server();
    let node = node(Some(&server));
    let addr = node.addr();
    let mut client = Client::connect(addr, USER, None);
    assert_eq!(client.ready["resumed"], false);
    let session = client.session.clone();
    let path = player_path(&session, GUILD);

    let a440 = tone_file("a440.wav", 440.0, 20.0);
    let e660 = tone_file("e660.wav", 660.0, 20.0);
    let update = json!({
        "track": { "identifier": a440.to_str().unwrap(), "userData": { "requester": 7 } },
        "voice": voice(&server, GUILD),
    });
    let (status, player) = api(addr, "PATCH", &path, Some(&update));
    assert_eq!(status, 200, "{player}");
    assert_eq!(player["guildId"], GUILD.to_string());
    assert_eq!(player["track"]["userData"]["requester"], 7);
    let start = client.event("TrackStartEvent");
    assert_eq!(start["guildId"], GUILD.to_string());
    wait_for("the node's SSRC", Duration::from_secs(30), || {
        server.ssrc_of(GUILD, USER).is_some()
    });
    let ssrc = server.ssrc_of(GUILD, USER).unwrap();
    let full = listen(&server, ssrc, 1.0);
    let full_rms = rms(&full);
    assert!(tone_power(&full, 440.0, 48_000) > 0.01, "440 Hz heard");
    let update = client.expect("playerUpdate", |m| m["op"] == "playerUpdate");
    assert_eq!(update["state"]["connected"], true);

    // Volume 50: half the amplitude.
    let (status, player) = api(addr, "PATCH", &path, Some(&json!({ "volume": 50 })));
    assert_eq!((status, &player["volume"]), (200, &json!(50)));
    listen(&server, ssrc, 0.2);
    let half = rms(&listen(&server, ssrc, 1.0));
    let ratio = half / full_rms;
    assert!(
        (0.4..0.6).contains(&ratio),
        "volume 50 gave {ratio:.2} of the level"
    );
    let (status, _) = api(addr, "PATCH", &path, Some(&json!({ "volume": 1001 })));
    assert_eq!(status, 400);
    // The volume filter multiplies.
    let (status, _) = api(
        addr,
        "PATCH",
        &path,
        Some(&json!({ "volume": 100, "filters": { "volume": 0.5 } })),
    );
    assert_eq!(status, 200);
    listen(&server, ssrc, 0.2);
    let filtered = rms(&listen(&server, ssrc, 1.0)) / full_rms;
    assert!(
        (0.4..0.6).contains(&filtered),
        "volume filter 0.5 gave {filtered:.2}"
    );
    let (status, error) = api(
        addr,
        "PATCH",
        &path,
        Some(&json!({ "filters": { "equalizer": [] } })),
    );
    assert_eq!(status, 400);
    assert_eq!(
        error["message"],
        "Following filters are disabled in the config: equalizer"
    );
    let (status, player) = api(
        addr,
        "PATCH",
        &path,
        Some(&json!({ "filters": { "volume": 1.0, "pluginFilters": { "nobody": {} } } })),
    );
    assert_eq!(status, 200);
    assert_eq!(player["filters"]["pluginFilters"], json!({ "nobody": {} }));

    // Pause: silence (or nothing) at the server; resume: the tone again.
    let (status, player) = api(addr, "PATCH", &path, Some(&json!({ "paused": true })));
    assert_eq!((status, &player["paused"]), (200, &json!(true)));
    std::thread::sleep(Duration::from_millis(300));
    let from = heard_len(&server, ssrc);
    std::thread::sleep(Duration::from_millis(1_000));
    let paused = heard(&server, ssrc, from);
    assert!(
        paused.is_empty() || rms(&paused) < 0.01,
        "paused but heard {}",
        rms(&paused)
    );
    let position = player["state"]["position"].as_u64().unwrap();
    api(addr, "PATCH", &path, Some(&json!({ "paused": false })));
    listen(&server, ssrc, 0.2);
    assert!(rms(&listen(&server, ssrc, 0.5)) > full_rms * 0.8);

    // Seek forward: the position jumps.
    let (status, _) = api(addr, "PATCH", &path, Some(&json!({ "position": 8_000 })));
    assert_eq!(status, 200);
    wait_for("the seek", Duration::from_secs(10), || {
        let (_, p) = api(addr, "GET", &path, None);
        p["state"]["position"].as_u64().unwrap() >= 8_000
    });
    assert!(position < 8_000);

    // A mix layer at 660 Hz over the 440 Hz track.
    let e660_track = load(addr, e660.to_str().unwrap())["data"].clone();
    let (status, mix) = api(
        addr,
        "POST",
        &format!("{path}/mix"),
        Some(&json!({ "track": { "encoded": e660_track["encoded"] }, "volume": 1.0 })),
    );
    assert_eq!(status, 201, "{mix}");
    let mix_id = mix["id"].as_str().unwrap().to_owned();
    let started = client.event("MixStartedEvent");
    assert_eq!(started["mixId"], mix_id.as_str());
    listen(&server, ssrc, 0.2);
    let both = listen(&server, ssrc, 1.0);
    assert!(
        tone_power(&both, 440.0, 48_000) > 0.005,
        "440 Hz with the layer"
    );
    assert!(
        tone_power(&both, 660.0, 48_000) > 0.005,
        "660 Hz from the layer"
    );
    let (status, mixes) = api(addr, "GET", &format!("{path}/mix"), None);
    assert_eq!(status, 200);
    assert_eq!(mixes["mixes"][0]["id"], mix_id.as_str());
    let (status, _) = api(
        addr,
        "PATCH",
        &format!("{path}/mix/{mix_id}"),
        Some(&json!({ "volume": 0.5 })),
    );
    assert_eq!(status, 204);
    let (status, _) = api(
        addr,
        "PATCH",
        &format!("{path}/mix/{mix_id}"),
        Some(&json!({ "volume": 2 })),
    );
    assert_eq!(status, 400);
    let (status, _) = api(addr, "DELETE", &format!("{path}/mix/{mix_id}"), None);
    assert_eq!(status, 204);
    client.event("MixEndedEvent");
    let (status, _) = api(addr, "DELETE", &format!("{path}/mix/{mix_id}"), None);
    assert_eq!(status, 404);

    // Replace with the 660 Hz track; noReplace keeps it.
    let replace = json!({ "track": { "encoded": e660_track["encoded"] } });
    api(addr, "PATCH", &path, Some(&replace));
    let end = client.event("TrackEndEvent");
    assert_eq!(end["reason"], "replaced");
    client.event("TrackStartEvent");
    let again = json!({ "track": { "identifier": a440.to_str().unwrap() } });
    let (_, player) = api(
        addr,
        "PATCH",
        &format!("{path}?noReplace=true"),
        Some(&again),
    );
    assert_eq!(player["track"]["info"]["title"], "e660.wav");
    listen(&server, ssrc, 0.2);
    let replaced = listen(&server, ssrc, 1.0);
    assert!(tone_power(&replaced, 660.0, 48_000) > 10.0 * tone_power(&replaced, 440.0, 48_000));

    // Near the end the track finishes by itself; endTime ends one early.
    api(addr, "PATCH", &path, Some(&json!({ "position": 19_500 })));
    assert_eq!(client.event("TrackEndEvent")["reason"], "finished");
    let end_early = json!({ "track": { "identifier": a440.to_str().unwrap() }, "endTime": 1_000 });
    api(addr, "PATCH", &path, Some(&end_early));
    client.event("TrackStartEvent");
    assert_eq!(client.event("TrackEndEvent")["reason"], "finished");

    // Stop with a null track.
    api(addr, "PATCH", &path, Some(&again));
    client.event("TrackStartEvent");
    let (_, player) = api(
        addr,
        "PATCH",
        &path,
        Some(&json!({ "track": { "encoded": null } })),
    );
    assert!(player["track"].is_null());
    assert_eq!(client.event("TrackEndEvent")["reason"], "stopped");

    // An HTTP URL.
    let url = format!("http://{}/a440.wav", http_file_server(&a440));
    let loaded = load(addr, &url);
    assert_eq!(loaded["data"]["info"]["sourceName"], "http");
    api(
        addr,
        "PATCH",
        &path,
        Some(&json!({ "track": { "encoded": loaded["data"]["encoded"] } })),
    );
    client.event("TrackStartEvent");
    listen(&server, ssrc, 0.3);
    assert!(tone_power(&listen(&server, ssrc, 1.0), 440.0, 48_000) > 0.01);

    // A file that cannot be opened any more fails with an exception and loadFailed.
    let gone = tone_file("gone.wav", 440.0, 1.0);
    let gone_track = load(addr, gone.to_str().unwrap())["data"]["encoded"].clone();
    std::fs::remove_file(&gone).unwrap();
    api(
        addr,
        "PATCH",
        &path,
        Some(&json!({ "track": { "encoded": gone_track } })),
    );
    client.event("TrackExceptionEvent");
    let end = client.expect("loadFailed", |m| {
        m["type"] == "TrackEndEvent" && m["reason"] == "loadFailed"
    });
    assert_eq!(end["guildId"], GUILD.to_string());

    let (status, players) = api(
        addr,
        "GET",
        &format!("/v4/sessions/{session}/players"),
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(players.as_array().unwrap().len(), 1);
    let (status, _) = api(addr, "DELETE", &path, None);
    assert_eq!(status, 204);
    let (status, _) = api(addr, "GET", &path, None);
    assert_eq!(status, 404);
    node.stop();
}

/// With resuming on, players keep playing while the client is away, its events wait, and a
/// client that resumes gets them; without it, the session ends with the socket.
#[test]
fn resumes_a_session_with_players_still_playing() {
    let server = server();
    let node = node_with(Some(&server), |config| {
        config.stats_interval = Duration::from_secs(1);
        config.player_update_interval = Duration::from_secs(1);
    });
    let addr = node.addr();
    let mut client = Client::connect(addr, USER, None);
    let session = client.session.clone();
    let (status, body) = api(
        addr,
        "PATCH",
        &format!("/v4/sessions/{session}"),
        Some(&json!({ "resuming": true, "timeout": 60 })),
    );
    assert_eq!(
        (status, body),
        (200, json!({ "resuming": true, "timeout": 60 }))
    );
    let a440 = tone_file("resume.wav", 440.0, 30.0);
    let path = player_path(&session, GUILD);
    let update = json!({
        "track": { "identifier": a440.to_str().unwrap() },
        "voice": voice(&server, GUILD),
    });
    api(addr, "PATCH", &path, Some(&update));
    client.event("TrackStartEvent");
    wait_for("the node's SSRC", Duration::from_secs(30), || {
        server.ssrc_of(GUILD, USER).is_some()
    });
    let ssrc = server.ssrc_of(GUILD, USER).unwrap();
    listen(&server, ssrc, 0.5);
    // `stats` with frameStats from the sender's counters while a player plays.
    let stats = client.expect("stats with frameStats", |m| {
        m["op"] == "stats" && !m["frameStats"].is_null()
    });
    assert_eq!(
        (stats["players"].as_u64(), stats["playingPlayers"].as_u64()),
        (Some(1), Some(1))
    );
    assert!(stats["frameStats"]["sent"].as_u64().unwrap() > 0, "{stats}");
    assert!(stats["frameStats"]["nulled"].is_u64() && stats["frameStats"]["deficit"].is_u64());
    let update = client.expect("playerUpdate", |m| m["op"] == "playerUpdate");
    assert_eq!(update["guildId"], GUILD.to_string());
    assert!(update["state"]["position"].as_u64().unwrap() > 0);

    // The client goes away; the player plays on.
    drop(client);
    std::thread::sleep(Duration::from_millis(300));
    let away = listen(&server, ssrc, 1.0);
    assert!(
        tone_power(&away, 440.0, 48_000) > 0.01,
        "still playing while away"
    );
    // An event while away waits for the client.
    api(
        addr,
        "PATCH",
        &path,
        Some(&json!({ "track": { "encoded": null } })),
    );

    let mut client = Client::connect(addr, USER, Some(&session));
    assert_eq!(client.ready["resumed"], true);
    assert_eq!(client.session, session);
    assert_eq!(client.event("TrackEndEvent")["reason"], "stopped");
    let (status, _) = api(addr, "GET", &path, None);
    assert_eq!(status, 200);

    // Resuming off: the socket's end destroys the session and its players.
    api(
        addr,
        "PATCH",
        &format!("/v4/sessions/{session}"),
        Some(&json!({ "resuming": false })),
    );
    drop(client);
    wait_for("the session to end", Duration::from_secs(10), || {
        api(addr, "GET", &path, None).0 == 404
    });
    let fresh = Client::connect(addr, USER, Some(&session));
    assert_eq!(fresh.ready["resumed"], false);
    assert_ne!(fresh.session, session);
    node.stop();
}

/// The voice server closing a call's websocket reaches the client as `WebSocketClosedEvent`
/// with the close code.
#[test]
fn reports_the_voice_servers_close_code() {
    let server = server_with(quaver_tools::server::Faults {
        close_code: Some(4014),
        ..Default::default()
    });
    let node = node(Some(&server));
    let addr = node.addr();
    let mut client = Client::connect(addr, USER, None);
    let path = player_path(&client.session, GUILD);
    let (status, _) = api(
        addr,
        "PATCH",
        &path,
        Some(&json!({ "voice": voice(&server, GUILD) })),
    );
    assert_eq!(status, 200);
    let closed = client.event("WebSocketClosedEvent");
    assert_eq!(closed["code"], 4014);
    assert_eq!(closed["byRemote"], true);
    assert_eq!(closed["guildId"], GUILD.to_string());
    node.stop();
}

/// A track whose input stops arriving produces no audio; after the threshold the client gets
/// `TrackStuckEvent` (once).
#[test]
fn reports_a_stuck_track() {
    let server = server();
    let node = node_with(Some(&server), |config| {
        config.stuck_threshold = Duration::from_secs(1);
    });
    let addr = node.addr();
    let mut client = Client::connect(addr, USER, None);
    let path = player_path(&client.session, GUILD);
    let tone = tone_file("stalls.wav", 440.0, 20.0);
    // One second of audio (48 kHz stereo 16-bit), then nothing.
    let url = format!(
        "http://{}/stalls.wav",
        stalling_http_server(&tone, 44 + 192_000)
    );
    let track = load(addr, &url)["data"]["encoded"].clone();
    let update = json!({ "track": { "encoded": track }, "voice": voice(&server, GUILD) });
    let (status, _) = api(addr, "PATCH", &path, Some(&update));
    assert_eq!(status, 200);
    client.event("TrackStartEvent");
    let stuck = client.event("TrackStuckEvent");
    assert_eq!(stuck["thresholdMs"], 1_000);
    assert_eq!(stuck["track"]["info"]["sourceName"], "http");
    node.stop();
}

/// A voice update needs `channelId` (Lavalink 4.2 made it required): DAVE's MLS group is the
/// channel, so a call without one could never encrypt. It is refused in Lavalink's error shape
/// and nothing connects.
#[test]
fn refuses_a_voice_update_without_a_channel() {
    let server = server();
    let node = node(Some(&server));
    let addr = node.addr();
    let client = Client::connect(addr, USER, None);
    let path = player_path(&client.session, GUILD);
    let full = voice(&server, GUILD);
    let mut without = full.clone();
    without.as_object_mut().unwrap().remove("channelId");
    let mut null = full.clone();
    null["channelId"] = Value::Null;
    let mut empty = full.clone();
    empty["channelId"] = json!("");
    for (what, voice) in [("absent", &without), ("null", &null), ("empty", &empty)] {
        let (status, error) = api(addr, "PATCH", &path, Some(&json!({ "voice": voice })));
        assert_eq!(status, 400, "channelId {what}: {error}");
        assert_eq!(error["status"], 400);
        assert_eq!(error["error"], "Bad Request");
        assert_eq!(error["path"], path.as_str());
        assert_eq!(
            error["message"],
            "Partial Lavalink voice state: token, endpoint, sessionId and channelId are required"
        );
    }
    let mut not_a_snowflake = full.clone();
    not_a_snowflake["channelId"] = json!("general");
    let (status, error) = api(
        addr,
        "PATCH",
        &path,
        Some(&json!({ "voice": not_a_snowflake })),
    );
    assert_eq!(
        (status, error["message"].as_str()),
        (400, Some("channelId must be a snowflake"))
    );
    // Nothing was created or joined.
    assert_eq!(api(addr, "GET", &path, None).0, 404);
    assert_eq!(node.engine().audio_engine().call_count(), 0);
    // With the channel it connects, and the player shows it.
    let (status, player) = api(addr, "PATCH", &path, Some(&json!({ "voice": full })));
    assert_eq!(status, 200, "{player}");
    assert_eq!(player["voice"]["channelId"], CHANNEL.to_string());
    assert_eq!(node.engine().audio_engine().call_count(), 1);
    node.stop();
}

/// `state.ping` is the voice gateway's heartbeat round trip in ms once a heartbeat was
/// acknowledged (-1 before, as Lavalink): in `GET` player and in `playerUpdate`.
#[test]
fn reports_the_voice_gateways_ping() {
    // Short heartbeats, so ACKs come within the test.
    let server = quaver_tools::server::Server::start(quaver_tools::server::ServerConfig {
        heartbeat_interval_ms: 100.0,
        heartbeat_timeout_intervals: None,
        ..quaver_tools::server::ServerConfig::default()
    })
    .expect("server");
    let node = node_with(Some(&server), |config| {
        config.player_update_interval = Duration::from_secs(1);
    });
    let addr = node.addr();
    let mut client = Client::connect(addr, USER, None);
    let path = player_path(&client.session, GUILD);
    let (status, player) = api(
        addr,
        "PATCH",
        &path,
        Some(&json!({ "voice": voice(&server, GUILD) })),
    );
    assert_eq!(status, 200, "{player}");
    wait_for("a ping in GET player", Duration::from_secs(30), || {
        let (_, player) = api(addr, "GET", &path, None);
        player["state"]["connected"] == true && player["state"]["ping"].as_i64() >= Some(0)
    });
    let update = client.expect("playerUpdate with a ping", |m| {
        m["op"] == "playerUpdate" && m["state"]["ping"].as_i64() >= Some(0)
    });
    assert_eq!(update["state"]["connected"], true);
    assert_eq!(update["guildId"], GUILD.to_string());
    // And in the session's player list.
    let (_, players) = api(
        addr,
        "GET",
        &format!("/v4/sessions/{}/players", client.session),
        None,
    );
    assert!(players[0]["state"]["ping"].as_i64().unwrap() >= 0);
    node.stop();
}

/// An HTTP track's length comes from the engine's probe when the server states the size and
/// the container the duration (a WAV here); `isSeekable` says whether the server takes range
/// requests. Without a stated size nothing honest can be said: length 0 and a stream.
#[test]
fn loads_http_tracks_with_what_the_server_and_container_say() {
    let node = node(None);
    let addr = node.addr();
    let tone = tone_file("http-length.wav", 440.0, 3.0);
    let load_info = |serving: Serving| {
        let url = format!(
            "http://{}/http-length.wav",
            http_server_with(&tone, serving)
        );
        let loaded = load(addr, &url);
        assert_eq!(loaded["loadType"], "track", "{loaded}");
        let encoded = loaded["data"]["encoded"].as_str().unwrap().to_owned();
        // The length survives the encoding.
        let (_, decoded) = api(
            addr,
            "GET",
            &format!("/v4/decodetrack?encodedTrack={}", encode_query(&encoded)),
            None,
        );
        assert_eq!(decoded["info"]["length"], loaded["data"]["info"]["length"]);
        assert_eq!(
            decoded["info"]["isStream"],
            loaded["data"]["info"]["isStream"]
        );
        loaded["data"]["info"].clone()
    };

    let ranged = load_info(Serving {
        ranges: true,
        length: true,
    });
    assert_eq!(ranged["length"], 3_000);
    assert_eq!(ranged["isStream"], false);
    assert_eq!(ranged["isSeekable"], true);
    assert_eq!(ranged["sourceName"], "http");
    assert_eq!(ranged["title"], "http-length.wav");

    let whole = load_info(Serving {
        ranges: false,
        length: true,
    });
    assert_eq!(whole["length"], 3_000);
    assert_eq!(whole["isStream"], false);
    // No range requests: the engine cannot seek it.
    assert_eq!(whole["isSeekable"], false);

    let live = load_info(Serving {
        ranges: false,
        length: false,
    });
    assert_eq!(live["length"], 0);
    assert_eq!(live["isStream"], true);
    assert_eq!(live["isSeekable"], false);

    // Nothing there: the load fails, as Lavalink's does for a URL it cannot play.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = format!("http://{}/gone.wav", closed.local_addr().unwrap());
    drop(closed);
    let failed = load(addr, &gone);
    assert_eq!(failed["loadType"], "error", "{failed}");
    assert_eq!(failed["data"]["message"], "That URL is not playable.");
    node.stop();
}
