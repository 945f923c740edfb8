//! A small scripted voice gateway v8 server for driver tests, on 127.0.0.1 only.
//!
//! One thread per connection with blocking tungstenite: simple and plenty for tests. It speaks
//! just enough of the server side: Identify → Hello + Ready, Select Protocol → Session
//! Description, Heartbeat → ACK, Resume → Hello + Resumed + a replayed op 11.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use quaver_gateway::protocol::{
    ClientsConnect, HeartbeatAck, Hello, Ready, SecretKey, SessionDescription, Snowflake,
    VoicePayload,
};
use tungstenite::Message;

#[derive(Default)]
pub struct ServerStats {
    pub connections: AtomicU64,
    pub identifies: AtomicU64,
    pub resumes: AtomicU64,
    pub heartbeats: AtomicU64,
    pub speaking: AtomicU64,
    /// Client binary frames received, as `op` values.
    pub client_binary_ops: std::sync::Mutex<Vec<u8>>,
}

#[derive(Clone, Default)]
pub struct ServerOptions {
    pub heartbeat_interval_ms: f64,
    /// Drop the TCP connection (no close frame) of the first session once it sent Speaking.
    pub drop_first_after_speaking: bool,
    /// Close the first session with this code once it sent Speaking.
    pub close_first_after_speaking: Option<u16>,
    /// Never acknowledge heartbeats on the first connection.
    pub ignore_first_heartbeats: bool,
    /// Negotiate DAVE v1 and send a binary op 25 (external sender) after Session Description.
    pub dave_probe: bool,
}

pub struct ScriptedServer {
    pub addr: SocketAddr,
    pub stats: Arc<ServerStats>,
}

impl ScriptedServer {
    /// The same server behind TLS (rustls, ring) with a fresh self-signed certificate for
    /// 127.0.0.1; returns the certificate for the client to trust.
    pub fn start_tls(options: ServerOptions) -> (Self, rustls::pki_types::CertificateDer<'static>) {
        let key = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])
            .expect("self-signed certificate");
        let cert = key.cert.der().clone();
        let private = rustls::pki_types::PrivateKeyDer::Pkcs8(
            rustls::pki_types::PrivatePkcs8KeyDer::from(key.signing_key.serialize_der()),
        );
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], private)
            .expect("valid certificate and key"),
        );
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("bound socket has an address");
        let stats = Arc::new(ServerStats::default());
        let dropped = Arc::new(AtomicBool::new(false));
        let s = stats.clone();
        std::thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let Ok(stream) = stream else { continue };
                let (s, o, d, c) = (s.clone(), options.clone(), dropped.clone(), config.clone());
                std::thread::spawn(move || {
                    let Ok(conn) = rustls::ServerConnection::new(c) else {
                        return;
                    };
                    let tls = rustls::StreamOwned::new(conn, stream);
                    let Ok(ws) = tungstenite::accept(tls) else {
                        return;
                    };
                    serve(ws, n as u32 + 1, &s, &o, &d)
                });
            }
        });
        (ScriptedServer { addr, stats }, cert)
    }

    pub fn start(options: ServerOptions) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("bound socket has an address");
        let stats = Arc::new(ServerStats::default());
        let dropped = Arc::new(AtomicBool::new(false));
        let s = stats.clone();
        std::thread::Builder::new()
            .name("voice-server-accept".into())
            .spawn(move || {
                for (n, stream) in listener.incoming().enumerate() {
                    let Ok(stream) = stream else { continue };
                    let (s, o, d) = (s.clone(), options.clone(), dropped.clone());
                    let _ = std::thread::Builder::new()
                        .stack_size(256 * 1024)
                        .spawn(move || {
                            let _ = stream.set_nodelay(true);
                            let Ok(ws) = tungstenite::accept(stream) else {
                                return;
                            };
                            serve(ws, n as u32 + 1, &s, &o, &d)
                        });
                }
            })
            .expect("spawn accept thread");
        ScriptedServer { addr, stats }
    }

    pub fn endpoint(&self) -> String {
        format!("ws://{}", self.addr)
    }
}

fn serve<S: std::io::Read + std::io::Write>(
    mut ws: tungstenite::WebSocket<S>,
    ssrc: u32,
    stats: &ServerStats,
    o: &ServerOptions,
    dropped: &AtomicBool,
) {
    stats.connections.fetch_add(1, Ordering::Relaxed);
    let seq = std::cell::Cell::new(0i64);
    let send = |ws: &mut tungstenite::WebSocket<S>, p: VoicePayload, numbered: bool| {
        let s = if numbered {
            seq.set(seq.get() + 1);
            Some(seq.get())
        } else {
            None
        };
        ws.send(Message::text(p.encode(s).expect("server payloads encode")))
    };
    let hello = VoicePayload::Hello(Hello {
        heartbeat_interval: o.heartbeat_interval_ms,
        v: Some(8),
    });
    loop {
        let msg = match ws.read() {
            Ok(m) => m,
            Err(_) => return,
        };
        if let Message::Binary(b) = &msg
            && let Ok(f) = quaver_gateway::protocol::BinaryFrame::parse_client(b, 1 << 20)
        {
            stats.client_binary_ops.lock().unwrap().push(f.op);
        }
        let Message::Text(t) = msg else { continue };
        let Ok(frame) = VoicePayload::decode(t.as_str(), 1 << 20) else {
            continue;
        };
        let r = match frame.payload {
            VoicePayload::Identify(_) => {
                stats.identifies.fetch_add(1, Ordering::Relaxed);
                // Ready before Hello, as real servers sometimes do.
                send(
                    &mut ws,
                    VoicePayload::Ready(Ready {
                        ssrc,
                        ip: "127.0.0.1".into(),
                        port: 9,
                        modes: vec![
                            "aead_xchacha20_poly1305_rtpsize".into(),
                            "aead_aes256_gcm_rtpsize".into(),
                        ],
                    }),
                    true,
                )
                .and_then(|_| send(&mut ws, hello.clone(), false))
            }
            VoicePayload::SelectProtocol(sp) => send(
                &mut ws,
                VoicePayload::SessionDescription(SessionDescription {
                    mode: sp.data.mode,
                    secret_key: SecretKey::new([1; 32]),
                    dave_protocol_version: u16::from(o.dave_probe),
                }),
                true,
            )
            .and_then(|_| {
                if !o.dave_probe {
                    return Ok(());
                }
                seq.set(seq.get() + 1);
                let frame = quaver_gateway::protocol::BinaryFrame {
                    seq: Some(seq.get() as u16),
                    op: quaver_gateway::protocol::op::DAVE_MLS_EXTERNAL_SENDER,
                    payload: &[0xAA, 0xBB],
                };
                ws.send(Message::binary(frame.encode()))
            }),
            VoicePayload::Speaking(_) => {
                stats.speaking.fetch_add(1, Ordering::Relaxed);
                if o.drop_first_after_speaking && !dropped.swap(true, Ordering::SeqCst) {
                    return; // drop the TCP connection without a close frame
                }
                if let Some(code) = o.close_first_after_speaking
                    && !dropped.swap(true, Ordering::SeqCst)
                {
                    let _ = ws.close(Some(tungstenite::protocol::CloseFrame {
                        code: code.into(),
                        reason: "scripted".into(),
                    }));
                    // Finish the close handshake: read until the client's reply.
                    while ws.read().is_ok() {}
                    return;
                }
                Ok(())
            }
            VoicePayload::Heartbeat(_) if o.ignore_first_heartbeats && ssrc == 1 => Ok(()),
            VoicePayload::Heartbeat(h) => {
                stats.heartbeats.fetch_add(1, Ordering::Relaxed);
                send(
                    &mut ws,
                    VoicePayload::HeartbeatAck(HeartbeatAck { t: h.t }),
                    false,
                )
            }
            VoicePayload::Resume(_) => {
                stats.resumes.fetch_add(1, Ordering::Relaxed);
                send(&mut ws, hello.clone(), false)
                    .and_then(|_| send(&mut ws, VoicePayload::Resumed, false))
                    .and_then(|_| {
                        // A message the client missed while disconnected, replayed.
                        send(
                            &mut ws,
                            VoicePayload::ClientsConnect(ClientsConnect {
                                user_ids: vec![Snowflake(42)],
                            }),
                            true,
                        )
                    })
            }
            _ => Ok(()),
        };
        if r.is_err() {
            return;
        }
    }
}

/// A scripted *main* gateway: Hello, READY for user 99, heartbeat ACKs, and for every op 4 a
/// VOICE_SERVER_UPDATE (fresh token, pointing at `voice_endpoint`) then a VOICE_STATE_UPDATE.
pub struct MainServer {
    pub addr: SocketAddr,
    pub op4s: Arc<AtomicU64>,
    pub identifies: Arc<AtomicU64>,
    pub resumes: Arc<AtomicU64>,
}

impl MainServer {
    pub fn start(voice_endpoint: String) -> Self {
        Self::start_with(voice_endpoint, false)
    }

    /// With `drop_first_after_ready`, the first connection is dropped right after READY.
    pub fn start_with(voice_endpoint: String, drop_first_after_ready: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("bound socket has an address");
        let op4s = Arc::new(AtomicU64::new(0));
        let identifies = Arc::new(AtomicU64::new(0));
        let resumes = Arc::new(AtomicU64::new(0));
        let (o, i, r) = (op4s.clone(), identifies.clone(), resumes.clone());
        std::thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let Ok(stream) = stream else { continue };
                let (o, i, r, ep) = (o.clone(), i.clone(), r.clone(), voice_endpoint.clone());
                let drop_after_ready = drop_first_after_ready && n == 0;
                std::thread::spawn(move || {
                    serve_main(stream, addr, &ep, &o, &i, &r, drop_after_ready)
                });
            }
        });
        MainServer {
            addr,
            op4s,
            identifies,
            resumes,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/?v=10&encoding=json", self.addr)
    }
}

fn serve_main(
    stream: TcpStream,
    addr: SocketAddr,
    voice_ep: &str,
    op4s: &AtomicU64,
    identifies: &AtomicU64,
    resumes: &AtomicU64,
    drop_after_ready: bool,
) {
    let Ok(mut ws) = tungstenite::accept(stream) else {
        return;
    };
    let mut seq = 0u64;
    let mut dispatch =
        |ws: &mut tungstenite::WebSocket<TcpStream>, t: &str, d: serde_json::Value| {
            seq += 1;
            ws.send(Message::text(
                serde_json::json!({"op": 0, "t": t, "s": seq, "d": d}).to_string(),
            ))
        };
    if ws
        .send(Message::text(r#"{"op":10,"d":{"heartbeat_interval":500}}"#))
        .is_err()
    {
        return;
    }
    loop {
        let Ok(Message::Text(t)) = ws.read() else {
            return;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(t.as_str()) else {
            continue;
        };
        let r = match v["op"].as_u64() {
            Some(1) => ws.send(Message::text(r#"{"op":11}"#)),
            Some(2) => {
                assert_eq!(v["d"]["token"], "bot-token");
                assert_eq!(v["d"]["intents"].as_u64().unwrap_or(0) & (1 << 7), 1 << 7);
                identifies.fetch_add(1, Ordering::Relaxed);
                let r = dispatch(
                    &mut ws,
                    "READY",
                    serde_json::json!({
                        "session_id": "main-session",
                        "resume_gateway_url": format!("ws://{addr}"),
                        "user": {"id": "99", "username": "quaver"}
                    }),
                );
                if drop_after_ready {
                    return; // drop the TCP connection: the client must resume
                }
                r
            }
            Some(4) => {
                let n = op4s.fetch_add(1, Ordering::Relaxed) + 1;
                let guild = v["d"]["guild_id"].clone();
                let channel = v["d"]["channel_id"].clone();
                let state = serde_json::json!({
                    "guild_id": guild, "channel_id": channel, "user_id": "99",
                    "session_id": "voice-session", "deaf": false, "mute": false,
                    "self_deaf": true, "self_mute": false, "suppress": false
                });
                if channel.is_null() {
                    dispatch(&mut ws, "VOICE_STATE_UPDATE", state)
                } else {
                    dispatch(
                        &mut ws,
                        "VOICE_SERVER_UPDATE",
                        serde_json::json!({"token": format!("vt{n}"), "guild_id": guild, "endpoint": voice_ep}),
                    )
                    .and_then(|_| dispatch(&mut ws, "VOICE_STATE_UPDATE", state))
                }
            }
            Some(6) => {
                assert_eq!(v["d"]["session_id"], "main-session");
                assert_eq!(v["d"]["seq"], 1);
                resumes.fetch_add(1, Ordering::Relaxed);
                dispatch(&mut ws, "RESUMED", serde_json::Value::Null)
            }
            _ => Ok(()),
        };
        if r.is_err() {
            return;
        }
    }
}
