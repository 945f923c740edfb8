//! The whole receive path, bytes in → frames and events out: a `ReceiverCore` with one call and
//! two user streams (one keyed for DAVE, one plain) is fed datagrams built from the input —
//! RTP headers with fuzzed fields and extensions, sealed with the call's key so they get past
//! the transport layer, carrying fuzzed Opus or DAVE frames (some made by a real encryptor),
//! plus raw garbage — interleaved with play-out ticks and time jumps. Nothing may panic.
#![no_main]

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use quaver_engine::Grid;
use quaver_net::crypto::{EncryptionMode, SecretKey, TransportCipher};
use quaver_net::dave::{FrameEncryptor, Passthrough, PreparedKey, SenderKey};
use quaver_net::receiver::{
    ListenConfig, ReceiveMode, ReceiverConfig, ReceiverCore, StreamConfig, StreamOptions,
};

const MODE: EncryptionMode = EncryptionMode::Aes256GcmRtpSize;

fuzz_target!(|data: &[u8]| {
    let Ok(socket) = UdpSocket::bind("127.0.0.1:0") else {
        return;
    };
    let key = SecretKey::new([0x33; 32]);
    let cipher = TransportCipher::new(MODE, &key);
    let start = Instant::now();
    let limits = ReceiverConfig::new(Grid::new(start));
    let (mut core, mut events) = ReceiverCore::new(2, 64);
    let Ok(slot) = core.add_call(
        ListenConfig {
            socket: Arc::new(socket),
            mode: MODE,
            key,
            own_ssrc: 1,
            receive: ReceiveMode::Decode,
            counters: Arc::default(),
        },
        &limits,
        start,
    ) else {
        return;
    };
    let dave_key = SenderKey::new(1, [0x44; 16]);
    let mut readers = Vec::new();
    for (user, ssrc, keys, passthrough) in [
        (
            10,
            100,
            vec![PreparedKey::new(dave_key.clone(), start)],
            Passthrough::Off,
        ),
        (20, 200, Vec::new(), Passthrough::On),
    ] {
        let config = StreamConfig {
            user_id: user,
            ssrc,
            options: StreamOptions::default(),
            keys,
            passthrough,
        };
        if let Ok(r) = core.add_stream(slot, ReceiveMode::Decode, config, start) {
            readers.push(r);
        }
    }
    let mut encryptor = FrameEncryptor::new(dave_key);
    let mut now = start;
    let mut tick = 0u64;
    let mut nonce = 0u32;
    let mut rest = data;
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        match op % 4 {
            // A play-out tick, 20 ms later (or a jump, to exercise pauses and stalls).
            0 => {
                let step = if op & 0x80 != 0 {
                    20 * u64::from(op & 0x3F)
                } else {
                    20
                };
                now += Duration::from_millis(step);
                core.tick(tick, now);
                tick += 1 + u64::from(op >> 7);
            }
            // A raw datagram.
            1 => {
                let len = usize::from(op >> 2).min(rest.len());
                let (datagram, tail) = rest.split_at(len);
                core.handle_datagram(slot_index(), datagram, now);
                rest = tail;
            }
            // A well-sealed RTP packet with fuzzed header fields and body.
            _ => {
                if rest.len() < 8 {
                    break;
                }
                let (head, tail) = rest.split_at(8);
                let len = usize::from(head[7]).min(tail.len());
                let (body, tail) = tail.split_at(len);
                rest = tail;
                let ssrc: u32 = [100, 200, 300, 1][usize::from(head[0] & 3)];
                let mut packet = [0u8; 1500];
                // V=2, fuzzed P/X/CC bits; payload type Opus, fuzzed marker.
                packet[0] = 0x80 | (head[0] & 0x3F);
                packet[1] = 120 | (head[1] & 0x80);
                packet[2..4].copy_from_slice(&head[2..4]);
                packet[4..8].copy_from_slice(&[head[4], head[5], 0, 0]);
                packet[8..12].copy_from_slice(&ssrc.to_be_bytes());
                let mut at = 12;
                // DAVE frames made by a real encryptor when the op says so.
                let payload_len = if op % 4 == 3 && ssrc == 100 {
                    encryptor.encrypt_into(body, &mut packet[at..]).unwrap_or(0)
                } else {
                    packet[at..at + body.len()].copy_from_slice(body);
                    body.len()
                };
                at += payload_len;
                nonce = nonce.wrapping_add(1);
                if let Ok(n) = cipher.seal_with_nonce(&mut packet, 12, at - 12, nonce) {
                    core.handle_datagram(slot_index(), &packet[..n], now);
                }
            }
        }
        for r in &mut readers {
            while r.pop().is_some() {}
        }
        while events.pop().is_ok() {}
    }
});

/// The only call's index in the table (the first free slot).
fn slot_index() -> usize {
    0
}
