//! Real frames from a loopback session, as seed corpora for the fuzz targets: a raw client talks
//! to the local server's main gateway, voice gateway (v8 and v4) and UDP port, and everything
//! either side sent is kept in each target's input format. With `QUAVER_FUZZ_CORPUS=<dir>` the
//! seeds are written to `<dir>/<target>/` (`fuzz/corpus` in the repository); without it they go
//! to a scratch directory. Either way the test checks the session produced every frame kind the
//! seeds are meant to cover.

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use quaver_tools::server::{Server, ServerConfig};
use tungstenite::Message;

type Ws = tungstenite::WebSocket<TcpStream>;

/// One record of the record-based targets: `[kind][len u16 LE][bytes]`.
fn record(out: &mut Vec<u8>, kind: u8, body: &[u8]) {
    let len = u16::try_from(body.len()).expect("frames in seeds are under 64 KiB");
    out.push(kind);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(body);
}

fn connect(addr: SocketAddr, path: &str) -> Ws {
    let tcp = TcpStream::connect(addr).expect("tcp connect");
    tcp.set_read_timeout(Some(Duration::from_millis(400)))
        .expect("timeout");
    tungstenite::client::client(format!("ws://{addr}{path}"), tcp)
        .expect("websocket handshake")
        .0
}

/// Everything the server sends until it falls quiet.
fn read_all(ws: &mut Ws) -> Vec<Message> {
    let mut got = Vec::new();
    while let Ok(m) = ws.read() {
        if matches!(m, Message::Text(_) | Message::Binary(_)) {
            got.push(m);
        }
    }
    got
}

fn texts(frames: &[Message]) -> Vec<String> {
    frames
        .iter()
        .filter_map(|m| match m {
            Message::Text(t) => Some(t.as_str().to_string()),
            _ => None,
        })
        .collect()
}

struct Seeds {
    dir: PathBuf,
    written: usize,
}

impl Seeds {
    fn put(&mut self, target: &str, name: &str, bytes: &[u8]) {
        let dir = self.dir.join(target);
        std::fs::create_dir_all(&dir).expect("corpus directory");
        std::fs::write(dir.join(name), bytes).expect("seed written");
        self.written += 1;
    }
}

fn send(ws: &mut Ws, text: &str, sent: &mut Vec<String>) {
    ws.send(Message::text(text)).expect("send");
    sent.push(text.to_string());
}

#[test]
fn a_loopback_session_yields_seed_frames_for_every_target() {
    let dir = std::env::var_os("QUAVER_FUZZ_CORPUS").map_or_else(
        || std::env::temp_dir().join(format!("quaver-corpus-{}", std::process::id())),
        PathBuf::from,
    );
    let mut seeds = Seeds { dir, written: 0 };
    let server = Server::start(ServerConfig {
        tls: false,
        ..ServerConfig::default()
    })
    .expect("server starts");

    // Main gateway: Hello, Identify → READY, op 4 → the two voice dispatches, heartbeat → ACK.
    let mut main = connect(server.main_gateway_addr(), "/?v=10&encoding=json");
    let mut client_main = Vec::new();
    let mut from_main = texts(&read_all(&mut main));
    send(
        &mut main,
        r#"{"op":2,"d":{"token":"bot-token","intents":129,"properties":{"os":"linux","browser":"quaver","device":"quaver"}}}"#,
        &mut client_main,
    );
    from_main.extend(texts(&read_all(&mut main)));
    send(
        &mut main,
        r#"{"op":4,"d":{"guild_id":"1","channel_id":"2","self_mute":false,"self_deaf":true}}"#,
        &mut client_main,
    );
    send(&mut main, r#"{"op":1,"d":3}"#, &mut client_main);
    from_main.extend(texts(&read_all(&mut main)));
    for t in ["READY", "VOICE_STATE_UPDATE", "VOICE_SERVER_UPDATE"] {
        assert!(
            from_main.iter().any(|f| f.contains(&format!("\"{t}\""))),
            "no {t}: {from_main:?}"
        );
    }
    let ready: serde_json::Value = serde_json::from_str(
        from_main
            .iter()
            .find(|f| f.contains("\"READY\""))
            .expect("READY"),
    )
    .expect("json");
    let main_session = ready["d"]["session_id"]
        .as_str()
        .expect("session")
        .to_string();
    drop(main);
    let mut main = connect(server.main_gateway_addr(), "/?v=10&encoding=json");
    send(
        &mut main,
        &format!(r#"{{"op":6,"d":{{"token":"bot-token","session_id":"{main_session}","seq":1}}}}"#),
        &mut client_main,
    );
    from_main.extend(texts(&read_all(&mut main)));
    assert!(from_main.iter().any(|f| f.contains("\"RESUMED\"")));
    // The client machine's view: every server frame, in order, then a drop and the frames again
    // (a resume), and a zombie timeout.
    let mut input = vec![0u8];
    for f in &from_main {
        record(&mut input, 0, f.as_bytes());
    }
    record(&mut input, 5, &1006u16.to_le_bytes());
    record(&mut input, 4, &[0x75, 0x30]);
    record(&mut input, 6, b"");
    for f in &from_main {
        record(&mut input, 0, f.as_bytes());
    }
    record(&mut input, 4, &[0xA1, 0x22]);
    seeds.put("main_gateway", "loopback-session", &input);
    for (i, f) in from_main.iter().enumerate() {
        let mut one = vec![0u8];
        record(&mut one, 0, f.as_bytes());
        seeds.put("main_gateway", &format!("frame-{i}"), &one);
    }
    let mut wire = vec![0u8];
    for f in &client_main {
        record(&mut wire, 0, f.as_bytes());
    }
    seeds.put("server_wire", "main-client", &wire);

    // Voice gateway v8 with DAVE offered: Identify → Hello, Ready (and DAVE's binary ops),
    // Select Protocol → Session Description, Heartbeat → ACK; then a Resume on a new socket.
    let request = server.voice_connect_request(1, 2, 99);
    let identify = serde_json::json!({"op":0,"d":{"server_id":"1","user_id":"99",
        "session_id":request.session_id.expose(),"token":request.token.expose(),
        "max_dave_protocol_version":1}})
    .to_string();
    let mut from_voice: Vec<Message> = Vec::new();
    let mut client_voice = Vec::new();
    let mut voice = connect(server.voice_gateway_addr(), "/?v=8");
    send(&mut voice, &identify, &mut client_voice);
    from_voice.extend(read_all(&mut voice));
    let ready_text = texts(&from_voice)
        .into_iter()
        .find(|t| t.contains("\"op\":2"))
        .expect("Ready");
    let ready: serde_json::Value = serde_json::from_str(&ready_text).expect("json");
    let ssrc = ready["d"]["ssrc"].as_u64().expect("ssrc") as u32;

    // UDP: a real discovery exchange.
    let udp = UdpSocket::bind("127.0.0.1:0").expect("udp");
    udp.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let request_packet = quaver_net::discovery::encode_request(ssrc);
    udp.send_to(&request_packet, server.udp_addr())
        .expect("send");
    let mut buf = [0u8; 2048];
    let (n, _) = udp.recv_from(&mut buf).expect("discovery answered");
    let response = &buf[..n];
    quaver_net::discovery::parse_response(response).expect("a real response parses");
    seeds.put("discovery_response", "loopback", response);
    let me = udp.local_addr().expect("bound");

    let select = serde_json::json!({"op":1,"d":{"protocol":"udp","data":{
        "address":me.ip().to_string(),"port":me.port(),"mode":"aead_aes256_gcm_rtpsize"}}})
    .to_string();
    send(&mut voice, &select, &mut client_voice);
    send(
        &mut voice,
        r#"{"op":3,"d":{"t":1,"seq_ack":2}}"#,
        &mut client_voice,
    );
    send(
        &mut voice,
        &format!(r#"{{"op":5,"d":{{"speaking":1,"delay":0,"ssrc":{ssrc}}}}}"#),
        &mut client_voice,
    );
    from_voice.extend(read_all(&mut voice));
    let voice_texts = texts(&from_voice);
    assert!(
        voice_texts.iter().any(|t| t.contains("\"op\":4")),
        "no Session Description: {voice_texts:?}"
    );
    drop(voice);
    let resume = serde_json::json!({"op":7,"d":{"server_id":"1",
        "session_id":request.session_id.expose(),"token":request.token.expose(),"seq_ack":1}})
    .to_string();
    let mut voice = connect(server.voice_gateway_addr(), "/?v=8");
    send(&mut voice, &resume, &mut client_voice);
    let resumed = read_all(&mut voice);
    assert!(texts(&resumed).iter().any(|t| t.contains("\"op\":9")));
    from_voice.extend(resumed);

    let mut input = vec![1u8];
    for m in &from_voice {
        match m {
            Message::Text(t) => {
                record(&mut input, 0, t.as_bytes());
                if t.contains("\"op\":2") {
                    record(&mut input, 7, b"");
                }
            }
            Message::Binary(b) => record(&mut input, 3, b),
            _ => {}
        }
    }
    record(&mut input, 4, &[0x3A, 0x98]);
    record(&mut input, 5, &4015u16.to_le_bytes());
    record(&mut input, 4, &[0x13, 0x88]);
    record(&mut input, 6, b"");
    seeds.put("voice_machine", "loopback-session", &input);
    let mut binaries = 0;
    for (i, m) in from_voice.iter().enumerate() {
        if let Message::Binary(b) = m {
            binaries += 1;
            seeds.put("gateway_frames", &format!("binary-{i}"), b);
            seeds.put("dave_client", &format!("binary-{i}"), &{
                let mut r = Vec::new();
                if let Some((op, payload)) = b.get(2..).and_then(|x| x.split_first()) {
                    record(&mut r, *op, payload);
                }
                r
            });
        }
        if let Message::Text(t) = m {
            seeds.put("gateway_frames", &format!("text-{i}"), t.as_bytes());
        }
    }
    assert!(binaries > 0, "DAVE sent no binary frame");
    let mut wire = vec![1u8];
    for f in &client_voice {
        record(&mut wire, 0, f.as_bytes());
    }
    seeds.put("server_wire", "voice-client", &wire);
    let mut legacy = vec![2u8];
    record(&mut legacy, 0, identify.as_bytes());
    record(&mut legacy, 0, br#"{"op":3,"d":1234}"#);
    seeds.put("server_wire", "voice-v4-client", &legacy);
    let mut datagrams = vec![3u8];
    record(&mut datagrams, 0, &request_packet);
    record(&mut datagrams, 0, &[1, 0, 0, 0, 0, 0, 0, 0]);
    seeds.put("server_wire", "udp", &datagrams);

    // URLs as they arrive: READY's resume URL, the voice endpoint, the defaults.
    let resume_url = ready_resume_url(&from_main);
    for (i, url) in [
        resume_url,
        server.voice_endpoint(),
        server.voice_gateway_url(),
        quaver_gateway::main_gateway::DEFAULT_GATEWAY_URL.to_string(),
        "c-waw05-1a2b.discord.media:8443".to_string(),
        "wss://[::1]:9000/?v=8".to_string(),
    ]
    .iter()
    .enumerate()
    {
        seeds.put("parse_url", &format!("url-{i}"), url.as_bytes());
    }

    // The stream meter: a real packet clock (20 ms, 960 samples), with a gap and a reorder.
    let mut meter = Vec::new();
    for (n, seq) in (0u16..60).chain([62, 61, 63]).enumerate() {
        meter.extend_from_slice(&(seq.wrapping_add(65_500)).to_le_bytes());
        meter.extend_from_slice(&(u32::from(seq) * 960).to_le_bytes());
        meter.extend_from_slice(&120u16.to_le_bytes());
        meter.extend_from_slice(&(n as i64 * 20_000_000 + 7_000).to_le_bytes());
    }
    seeds.put("stream_meter", "packet-clock", &meter);

    // Media: the bundled tracks, and an Ogg Opus file rendered from one of them.
    let tracks = Path::new(env!("CARGO_MANIFEST_DIR")).join("tracks");
    for (pick, name) in [(0u8, "bass.mp3"), (1, "beat.flac"), (3, "chords.ogg")] {
        let mut bytes = vec![pick];
        bytes.extend(std::fs::read(tracks.join(name)).expect("bundled track"));
        seeds.put("media_file", name, &bytes);
    }
    let rendered = seeds.dir.join("rendered.opus.tmp");
    quaver_tools::render::render(&[tracks.join("beat.flac")], &rendered, 16_000).expect("render");
    let opus = std::fs::read(&rendered).expect("rendered file");
    std::fs::remove_file(&rendered).expect("scratch removed");
    assert!(opus.starts_with(b"OggS"));
    seeds.put("ogg_opus", "rendered", &opus);
    let mut as_media = vec![4u8];
    as_media.extend_from_slice(&opus);
    seeds.put("media_file", "rendered.opus", &as_media);

    assert!(seeds.written > 20, "{}", seeds.written);
    server.stop();
}

fn ready_resume_url(frames: &[String]) -> String {
    frames
        .iter()
        .filter_map(|f| serde_json::from_str::<serde_json::Value>(f).ok())
        .find(|v| v["t"] == "READY")
        .and_then(|v| v["d"]["resume_gateway_url"].as_str().map(str::to_string))
        .expect("READY has a resume URL")
}
