//! N playing players on one node, for measuring CPU and memory per player:
//!
//! ```sh
//! cargo run --release -p quaver-node --example players -- 100
//! ```
//!
//! Starts the local voice server (DAVE required, decoding and forwarding off so it costs
//! little) and a node in this process, then drives the node as a Lavalink client would: one
//! websocket session, and per player one PATCH with voice credentials and a 10-minute tone
//! (a generated WAV file). It prints the node's `/v4/stats` every 5 s until Ctrl-C. The node's
//! threads are named `quaver-node-*`, the engine's `quaver-*`; the server's are apart, so
//! per-thread CPU from /proc/PID/task tells the node's share.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use quaver_node::{Node, NodeConfig, Password};
use quaver_tools::server::{Server, ServerConfig};
use tungstenite::client::IntoClientRequest;

const PASSWORD: &str = "youshallnotpass";
const USER: u64 = 1;

fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect to the node");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {PASSWORD}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("receive");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

fn tone_file() -> std::path::PathBuf {
    let path = std::env::temp_dir().join("quaver-node-players-tone.wav");
    let frames: u32 = 48_000 * 600;
    let mut bytes = Vec::with_capacity(44 + frames as usize * 4);
    bytes.extend_from_slice(b"RIFF");
    bytes.extend_from_slice(&(36 + frames * 4).to_le_bytes());
    bytes.extend_from_slice(b"WAVEfmt ");
    bytes.extend_from_slice(&16_u32.to_le_bytes());
    bytes.extend_from_slice(&1_u16.to_le_bytes()); // PCM
    bytes.extend_from_slice(&2_u16.to_le_bytes()); // stereo
    bytes.extend_from_slice(&48_000_u32.to_le_bytes());
    bytes.extend_from_slice(&(48_000_u32 * 4).to_le_bytes());
    bytes.extend_from_slice(&4_u16.to_le_bytes());
    bytes.extend_from_slice(&16_u16.to_le_bytes());
    bytes.extend_from_slice(b"data");
    bytes.extend_from_slice(&(frames * 4).to_le_bytes());
    for i in 0..frames {
        let s = ((f64::from(i) * 440.0 / 48_000.0 * std::f64::consts::TAU).sin() * 8_000.0) as i16;
        bytes.extend_from_slice(&s.to_le_bytes());
        bytes.extend_from_slice(&s.to_le_bytes());
    }
    std::fs::write(&path, bytes).expect("write the tone");
    path
}

fn main() {
    let players: u64 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(10);
    let server = Server::start(ServerConfig {
        decode_audio: false,
        forward: false,
        ..ServerConfig::default()
    })
    .expect("server");
    let mut config = NodeConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        password: Password::new(PASSWORD),
        voice_ca_pem: server.ca_certificate_pem().map(|p| p.as_bytes().to_vec()),
        ..NodeConfig::default()
    };
    config.sources.local = true;
    let node = Node::start(config).expect("node");
    let addr = node.addr();
    println!("node on {addr}, process {}", std::process::id());

    let mut request = format!("ws://{addr}/v4/websocket")
        .into_client_request()
        .expect("request");
    let headers = request.headers_mut();
    headers.insert("Authorization", PASSWORD.parse().expect("header"));
    headers.insert("User-Id", USER.to_string().parse().expect("header"));
    let (mut ws, _) = tungstenite::connect(request).expect("websocket");
    let ready: serde_json::Value =
        serde_json::from_str(ws.read().expect("ready").to_text().expect("text")).expect("json");
    let session = ready["sessionId"].as_str().expect("session id").to_owned();
    // Keep reading so the node's queue for this client never fills.
    std::thread::spawn(move || while ws.read().is_ok() {});

    let tone = tone_file();
    for guild in 1..=players {
        let voice = server.voice_connect_request(guild, 1, USER);
        let body = serde_json::json!({
            "track": { "identifier": tone },
            "voice": {
                "token": voice.token.expose(),
                "endpoint": voice.endpoint,
                "sessionId": voice.session_id.expose(),
                "channelId": "1",
            },
        });
        http(
            addr,
            "PATCH",
            &format!("/v4/sessions/{session}/players/{guild}"),
            &body.to_string(),
        );
    }
    loop {
        println!("{}", http(addr, "GET", "/v4/stats", ""));
        std::thread::sleep(Duration::from_secs(5));
    }
}
