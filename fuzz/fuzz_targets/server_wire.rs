//! The local server's own parsers, through its real sockets: main-gateway text (`main_ws`),
//! voice-gateway text and binary frames (`voice_ws`, v8 and the legacy framing) and UDP
//! datagrams (discovery, RTP, RTCP, keepalives). One plain server on loopback serves every
//! input; a panic in any of its threads aborts the run (libFuzzer's panic hook).
//!
//! Input: `[target u8]` then records `[kind u8][len u16 LE][bytes]`; target 0 is the main
//! gateway, 1 the voice gateway v8, 2 voice v4, 3 UDP only. Kind odd = binary frame.
#![no_main]

use std::net::{TcpStream, UdpSocket};
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use quaver_tools::server::{Server, ServerConfig};
use tungstenite::Message;

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        Server::start(ServerConfig {
            tls: false,
            decode_audio: false,
            ws_poll_interval: Duration::from_millis(1),
            ..ServerConfig::default()
        })
        .expect("server starts")
    })
}

fn udp() -> &'static UdpSocket {
    static UDP: OnceLock<UdpSocket> = OnceLock::new();
    UDP.get_or_init(|| UdpSocket::bind("127.0.0.1:0").expect("udp"))
}

fuzz_target!(|data: &[u8]| {
    let Some((&target, mut rest)) = data.split_first() else {
        return;
    };
    let server = server();
    let (addr, path) = match target % 4 {
        0 => (server.main_gateway_addr(), "/?v=10&encoding=json"),
        1 => (server.voice_gateway_addr(), "/?v=8"),
        2 => (server.voice_gateway_addr(), "/?v=4"),
        _ => {
            while let [_, l0, l1, tail @ ..] = rest {
                let len = usize::from(u16::from_le_bytes([*l0, *l1])).min(tail.len());
                let (body, next) = tail.split_at(len);
                rest = next;
                let _ = udp().send_to(body, server.udp_addr());
            }
            return;
        }
    };
    let Ok(tcp) = TcpStream::connect(addr) else {
        return;
    };
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(2)));
    let Ok((mut ws, _)) = tungstenite::client::client(format!("ws://{addr}{path}"), tcp) else {
        return;
    };
    while let [kind, l0, l1, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*l0, *l1])).min(tail.len());
        let (body, next) = tail.split_at(len);
        rest = next;
        let message = if kind % 2 == 1 {
            Message::binary(body.to_vec())
        } else {
            match std::str::from_utf8(body) {
                Ok(text) => Message::text(text),
                Err(_) => continue,
            }
        };
        if ws.send(message).is_err() {
            break;
        }
    }
    // Wait for the server to have handled everything: close and read until it answers.
    let _ = ws.close(None);
    while ws.read().is_ok() {}
});
