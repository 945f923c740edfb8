//! A small blocking Lavalink test client: hand-written HTTP/1.1 requests and a tungstenite
//! websocket, over loopback, plus the local voice server and a node that trusts it.

#![allow(dead_code)] // each test binary uses its own subset

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use quaver_node::{Node, NodeConfig, Password};
use quaver_tools::server::{Faults, Server, ServerConfig};
use serde_json::Value;
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

pub const PASSWORD: &str = "test-password";

/// Polls `check` until it holds; fails the test after `timeout` (never asserts a timing).
pub fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let give_up = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < give_up, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The local server with DAVE required (its default, as Discord) and decoded audio kept.
pub fn server() -> Server {
    server_with(Faults::default())
}

/// As [`server`], with `faults`.
pub fn server_with(faults: Faults) -> Server {
    Server::start(ServerConfig {
        keep_decoded_audio: true,
        faults,
        ..ServerConfig::default()
    })
    .expect("server")
}

/// A node on an ephemeral loopback port, with local files on, trusting `server`'s CA.
pub fn node(server: Option<&Server>) -> Node {
    node_with(server, |_| {})
}

/// As [`node`], with `change` applied to its configuration.
pub fn node_with(server: Option<&Server>, change: impl FnOnce(&mut NodeConfig)) -> Node {
    let mut config = NodeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        password: Password::new(PASSWORD),
        voice_ca_pem: server.and_then(|s| s.ca_certificate_pem().map(|p| p.as_bytes().to_vec())),
        ..NodeConfig::default()
    };
    config.sources.local = true;
    change(&mut config);
    Node::start(config).expect("node")
}

/// One HTTP/1.1 request; returns the status and the body.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(auth) = auth {
        request.push_str(&format!("Authorization: {auth}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method != "GET" {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    (
        status,
        if chunked {
            dechunk(body)
        } else {
            body.to_owned()
        },
    )
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

/// An authorised request whose body is JSON; returns the status and the parsed body.
pub fn api(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let text = body.map(Value::to_string);
    let (status, body) = http(addr, method, path, Some(PASSWORD), text.as_deref());
    let json = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&body).unwrap_or(Value::String(body))
    };
    (status, json)
}

/// A Lavalink websocket client.
pub struct Client {
    pub ws: WebSocket<TcpStream>,
    pub session: String,
    pub ready: Value,
    /// Every message received so far.
    pub seen: Vec<Value>,
}

impl Client {
    pub fn connect(addr: SocketAddr, user_id: u64, resume: Option<&str>) -> Client {
        let mut request = format!("ws://{addr}/v4/websocket")
            .into_client_request()
            .unwrap();
        let headers = request.headers_mut();
        headers.insert("Authorization", PASSWORD.parse().unwrap());
        headers.insert("User-Id", user_id.to_string().parse().unwrap());
        headers.insert("Client-Name", "quaver-test/1.0".parse().unwrap());
        if let Some(id) = resume {
            headers.insert("Session-Id", id.parse().unwrap());
        }
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let (ws, _) = tungstenite::client(request, stream).expect("websocket handshake");
        let mut client = Client {
            ws,
            session: String::new(),
            ready: Value::Null,
            seen: Vec::new(),
        };
        let ready = client.expect("ready", |m| m["op"] == "ready");
        client.session = ready["sessionId"].as_str().unwrap().to_owned();
        client.ready = ready;
        client
    }

    /// Reads messages until one matches `want` (kept in `seen` either way).
    pub fn expect(&mut self, what: &str, want: impl Fn(&Value) -> bool) -> Value {
        let give_up = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < give_up, "timed out waiting for {what}");
            match self.ws.read() {
                Ok(Message::Text(text)) => {
                    let message: Value = serde_json::from_str(&text).unwrap();
                    self.seen.push(message.clone());
                    if want(&message) {
                        return message;
                    }
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("websocket failed while waiting for {what}: {e}"),
            }
        }
    }

    /// Waits for the event `kind`.
    pub fn event(&mut self, kind: &str) -> Value {
        self.expect(kind, |m| m["op"] == "event" && m["type"] == kind)
    }
}

/// A WAV file (48 kHz stereo 16-bit) of a sine at `freq` and amplitude 0.3, in the test's
/// temporary directory.
pub fn tone_file(name: &str, freq: f64, seconds: f64) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("quaver-node-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let frames = (48_000.0 * seconds) as u32;
    let mut bytes = Vec::with_capacity(44 + frames as usize * 4);
    let data = frames * 4;
    bytes.extend_from_slice(b"RIFF");
    bytes.extend_from_slice(&(36 + data).to_le_bytes());
    bytes.extend_from_slice(b"WAVEfmt ");
    bytes.extend_from_slice(&16_u32.to_le_bytes());
    bytes.extend_from_slice(&1_u16.to_le_bytes());
    bytes.extend_from_slice(&2_u16.to_le_bytes());
    bytes.extend_from_slice(&48_000_u32.to_le_bytes());
    bytes.extend_from_slice(&(48_000_u32 * 4).to_le_bytes());
    bytes.extend_from_slice(&4_u16.to_le_bytes());
    bytes.extend_from_slice(&16_u16.to_le_bytes());
    bytes.extend_from_slice(b"data");
    bytes.extend_from_slice(&data.to_le_bytes());
    for i in 0..frames {
        let v = (2.0 * std::f64::consts::PI * freq * f64::from(i) / 48_000.0).sin() * 0.3;
        let s = (v * 32_767.0) as i16;
        bytes.extend_from_slice(&s.to_le_bytes());
        bytes.extend_from_slice(&s.to_le_bytes());
    }
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Serves `file` over plain HTTP on loopback to every request, until the test ends.
pub fn http_file_server(file: &Path) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let bytes = std::fs::read(file).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(16) {
            let Ok(mut stream) = stream else { continue };
            let bytes = bytes.clone();
            std::thread::spawn(move || {
                let mut head = [0_u8; 4096];
                let _ = stream.read(&mut head);
                let header = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: audio/wav\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    bytes.len()
                );
                let _ = stream.write_all(header.as_bytes());
                let _ = stream.write_all(&bytes);
            });
        }
    });
    addr
}

/// How [`http_server_with`] answers.
#[derive(Clone, Copy, Debug)]
pub struct Serving {
    /// Announce `Accept-Ranges: bytes` and answer `Range: bytes=N-` with 206.
    pub ranges: bool,
    /// Send `Content-Length`; without it the body runs until the connection closes, as a
    /// live stream's does.
    pub length: bool,
}

/// Serves `file` over plain HTTP on loopback as `serving` says, until the test ends.
pub fn http_server_with(file: &Path, serving: Serving) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let bytes = std::fs::read(file).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(16) {
            let Ok(mut stream) = stream else { continue };
            let bytes = bytes.clone();
            std::thread::spawn(move || {
                let mut head = [0_u8; 4096];
                let n = stream.read(&mut head).unwrap_or(0);
                let request = String::from_utf8_lossy(&head[..n]).to_ascii_lowercase();
                let from = request
                    .lines()
                    .find_map(|l| l.strip_prefix("range: bytes="))
                    .and_then(|r| r.split('-').next()?.trim().parse::<usize>().ok())
                    .filter(|_| serving.ranges)
                    .map(|from| from.min(bytes.len()));
                let mut header = match from {
                    Some(from) => format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {from}-{}/{}\r\n",
                        bytes.len().saturating_sub(1),
                        bytes.len()
                    ),
                    None => "HTTP/1.1 200 OK\r\n".to_owned(),
                };
                let body = &bytes[from.unwrap_or(0)..];
                header.push_str("Content-Type: audio/wav\r\nConnection: close\r\n");
                if serving.ranges {
                    header.push_str("Accept-Ranges: bytes\r\n");
                }
                if serving.length {
                    header.push_str(&format!("Content-Length: {}\r\n", body.len()));
                }
                header.push_str("\r\n");
                let _ = stream.write_all(header.as_bytes());
                let _ = stream.write_all(body);
            });
        }
    });
    addr
}

/// Serves the first `prefix` bytes of `file` (announcing all of it), then stalls for up to
/// 20 s: a download that stops mid-stream.
pub fn stalling_http_server(file: &Path, prefix: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let bytes = std::fs::read(file).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(4) {
            let Ok(mut stream) = stream else { continue };
            let bytes = bytes.clone();
            std::thread::spawn(move || {
                let mut head = [0_u8; 4096];
                let _ = stream.read(&mut head);
                let header = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: audio/wav\r\nContent-Length: {}\r\n\r\n",
                    bytes.len()
                );
                let _ = stream.write_all(header.as_bytes());
                let _ = stream.write_all(&bytes[..prefix.min(bytes.len())]);
                std::thread::sleep(Duration::from_secs(20));
            });
        }
    });
    addr
}

/// The left channel of what the server decoded for `ssrc`, from sample `from` on.
pub fn heard(server: &Server, ssrc: u32, from: usize) -> Vec<f32> {
    server
        .decoded_audio(ssrc)
        .chunks_exact(2)
        .skip(from)
        .map(|pair| f32::from(pair[0]) / 32_768.0)
        .collect()
}

/// Frames (per channel) the server has decoded for `ssrc`.
pub fn heard_len(server: &Server, ssrc: u32) -> usize {
    server.decoded_audio(ssrc).len() / 2
}

/// Waits until `seconds` more audio arrived after now, and returns that stretch.
pub fn listen(server: &Server, ssrc: u32, seconds: f64) -> Vec<f32> {
    let from = heard_len(server, ssrc);
    let want = (48_000.0 * seconds) as usize;
    wait_for("audio at the server", Duration::from_secs(30), || {
        heard_len(server, ssrc) >= from + want
    });
    heard(server, ssrc, from)
}
