//! N playing players on one node, for measuring CPU and memory per player and the time from
//! the PATCH that starts a track to its first packet at the voice server:
//!
//! ```sh
//! cargo run --release -p quaver-node --example players -- 100 60
//! ```
//!
//! Starts the local voice server (DAVE required, decoding and forwarding off so it costs
//! little) and a node in this process, then drives the node as a Lavalink client would: one
//! websocket session, and per player one PATCH with voice credentials and a 10-minute tone
//! (a generated WAV file), one player after another. For each it times the PATCH to the first
//! packet the server receives from that player. With every player playing it measures, over
//! the given seconds (default 30), the CPU of the node's and engine's threads (named
//! `quaver-…`; the server's `quaver-serve…` threads are left out) and prints it per player,
//! with the process's RSS growth per player (which includes the in-process server's share of
//! each session, so it overstates the node's) and the machine's steal.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

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
    let seconds: u64 = std::env::args()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or(30);
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
    let rss_before = rss_kb();
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
    let mut first_packet_ms = Vec::new();
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
        let patched = Instant::now();
        http(
            addr,
            "PATCH",
            &format!("/v4/sessions/{session}/players/{guild}"),
            &body.to_string(),
        );
        // The PATCH joins the voice channel too (websocket, DAVE, UDP), as a first play does.
        let give_up = patched + Duration::from_secs(20);
        loop {
            let sent = server
                .ssrc_of(guild, USER)
                .and_then(|ssrc| server.stream_stats(ssrc))
                .is_some_and(|s| s.packets > 0);
            if sent {
                first_packet_ms.push(patched.elapsed().as_secs_f64() * 1_000.0);
                break;
            }
            if Instant::now() > give_up {
                eprintln!("player {guild}: no packet after 20 s");
                break;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    }
    first_packet_ms.sort_by(f64::total_cmp);
    let at = |q: f64| {
        first_packet_ms
            .get(((first_packet_ms.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "PATCH to first packet at the server ({} players, each joining the channel as it starts): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        first_packet_ms.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );

    // Settle, then measure with every player playing.
    std::thread::sleep(Duration::from_secs(2));
    let cpu_before = quaver_tools::cpu::quaver_thread_time();
    let machine_before = quaver_tools::cpu::MachineTimes::now();
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let cpu = quaver_tools::cpu::quaver_thread_time().saturating_sub(cpu_before);
    let wall = started.elapsed();
    let steal = quaver_tools::cpu::MachineTimes::now().steal_percent_since(&machine_before);
    let percent = cpu.as_secs_f64() / wall.as_secs_f64() * 100.0;
    let rss_growth = rss_kb().saturating_sub(rss_before);
    println!("{}", http(addr, "GET", "/v4/stats", ""));
    println!(
        "{players} players for {seconds} s: node + engine CPU {percent:.1} % of one core ({:.3} % per player); RSS +{} KB ({} KB per player, in-process server included); steal {}",
        percent / players as f64,
        rss_growth,
        rss_growth / players.max(1),
        steal.map_or("unknown".to_string(), |s| format!("{s:.1} %"))
    );
}

/// The process's resident set size in KB (0 where /proc is unavailable).
fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
