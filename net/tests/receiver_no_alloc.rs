//! Proves the receive thread does not allocate or free after start-up: a counting global
//! allocator counts heap operations made on that thread between its start and exit hooks, while
//! it reads real loopback UDP from several members for ~3 s — DAVE-encrypted and plain frames,
//! loss, reordering, duplicates, packets of an SSRC mapped late (held, then played), garbage —
//! and streams are added, replaced and removed and DAVE keys installed mid-run. Everything is
//! decoded with libopus (whose own C allocations are outside this allocator).

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::{Duration, Instant};

use audiopus::coder::Encoder;
use audiopus::{Application, Channels, SampleRate};
use quaver_engine::Grid;
use quaver_net::crypto::{EncryptionMode, Sealer, SecretKey};
use quaver_net::dave::{FrameEncryptor, Passthrough, SenderKey};
use quaver_net::receiver::{
    ListenConfig, ReceiveMode, Receiver, ReceiverConfig, StreamConfig, StreamOptions,
};
use quaver_net::rtp::{HEADER_LEN, RtpStream};

#[path = "common/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::{allocations, frees, start_watching, stop_watching};

const MODE: EncryptionMode = EncryptionMode::Aes256GcmRtpSize;

struct Member {
    rtp: RtpStream,
    sealer: Sealer,
    encoder: Encoder,
    dave: Option<FrameEncryptor>,
    n: usize,
}

impl Member {
    fn new(ssrc: u32, key: &SecretKey, dave: Option<SenderKey>) -> Self {
        Self {
            rtp: RtpStream::new(ssrc),
            sealer: Sealer::new(MODE, key),
            encoder: Encoder::new(SampleRate::Hz48000, Channels::Stereo, Application::Audio)
                .expect("encoder"),
            dave: dave.map(FrameEncryptor::new),
            n: 0,
        }
    }

    fn packet(&mut self) -> Vec<u8> {
        self.n += 1;
        let pcm: Vec<i16> = (0..1920)
            .map(|i| (((self.n * 1920 + i) as f32 * 0.03).sin() * 9_000.0) as i16)
            .collect();
        let mut opus = [0u8; 1275];
        let len = self.encoder.encode(&pcm, &mut opus).expect("encode");
        let mut buf = vec![0u8; 1500];
        let header = self.rtp.write_next(&mut buf).expect("header");
        let body = match &mut self.dave {
            Some(e) => e
                .encrypt_into(&opus[..len], &mut buf[header..])
                .expect("dave"),
            None => {
                buf[header..header + len].copy_from_slice(&opus[..len]);
                len
            }
        };
        let n = self.sealer.seal(&mut buf, HEADER_LEN, body).expect("seal");
        buf.truncate(n);
        buf
    }
}

#[test]
fn the_receive_thread_never_allocates_after_start_up() {
    let mut config = ReceiverConfig::new(Grid::new(Instant::now()));
    config.max_calls = 8;
    config.on_thread_start = Some(start_watching);
    config.on_thread_exit = Some(stop_watching);
    let mut receiver = Receiver::spawn(config).expect("receiver");

    let key = SecretKey::new([4; 32]);
    let local = Arc::new(UdpSocket::bind("127.0.0.1:0").expect("bind"));
    let remote = UdpSocket::bind("127.0.0.1:0").expect("bind");
    local.connect(remote.local_addr().unwrap()).unwrap();
    remote.connect(local.local_addr().unwrap()).unwrap();
    let slot = receiver
        .add_call(ListenConfig {
            socket: Arc::clone(&local),
            mode: MODE,
            key: key.clone(),
            own_ssrc: 1,
            receive: ReceiveMode::Decode,
            counters: Arc::default(),
        })
        .expect("call");

    let epoch1 = SenderKey::new(1, [7; 16]);
    let epoch2 = SenderKey::new(2, [8; 16]);
    let mut keyed = Member::new(10, &key, Some(epoch1.clone()));
    let mut plain = Member::new(20, &key, None);
    let mut late = Member::new(30, &key, None);
    let stream = |user_id, ssrc, keys: Vec<SenderKey>, passthrough| StreamConfig {
        user_id,
        ssrc,
        options: StreamOptions::default(),
        keys: keys
            .into_iter()
            .map(|k| quaver_net::dave::PreparedKey::new(k, Instant::now()))
            .collect(),
        passthrough,
    };
    let mut readers = vec![
        receiver
            .add_stream(slot, stream(100, 10, vec![epoch1], Passthrough::Off))
            .expect("stream"),
        receiver
            .add_stream(slot, stream(200, 20, Vec::new(), Passthrough::On))
            .expect("stream"),
    ];

    let start = Instant::now();
    let mut held_back: Option<Vec<u8>> = None;
    for i in 0..150usize {
        let mut packets = vec![keyed.packet(), plain.packet(), late.packet()];
        match i % 17 {
            3 => drop(packets.remove(1)),                  // loss
            5 => held_back = Some(packets.remove(1)),      // sent after the next one
            7 => packets.push(packets[0].clone()),         // duplicate
            11 => packets.push(vec![0x80, 0x78, 1, 2, 3]), // truncated garbage
            13 => packets.push(vec![0x81, 201, 0, 1, 0, 0, 0, 9, 0, 0, 0, 0]), // RTCP
            _ => {}
        }
        for p in &packets {
            let _ = remote.send(p);
        }
        if i % 17 == 6
            && let Some(p) = held_back.take()
        {
            let _ = remote.send(&p);
        }
        match i {
            // The late member's SSRC is mapped: its held packets play first.
            40 => readers.push(
                receiver
                    .add_stream(slot, stream(300, 30, Vec::new(), Passthrough::On))
                    .expect("stream"),
            ),
            // A DAVE transition: the keyed member moves to epoch 2.
            60 => {
                receiver
                    .install_key(slot, 100, epoch2.clone())
                    .expect("key");
                keyed.dave = Some(FrameEncryptor::new(epoch2.clone()));
            }
            // The plain member reconnects with a new SSRC: their stream is replaced.
            80 => {
                plain = Member::new(21, &key, None);
                readers.push(
                    receiver
                        .add_stream(slot, stream(200, 21, Vec::new(), Passthrough::On))
                        .expect("stream"),
                );
            }
            // The late member leaves.
            120 => receiver.remove_stream(slot, 300).expect("remove"),
            _ => {}
        }
        for r in &mut readers {
            while r.pop().is_some() {}
        }
        receiver.collect_garbage();
        let due = start + Duration::from_millis(20 * (i as u64 + 1));
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
    }
    let played: u64 = readers.iter().map(|r| r.stats().played).sum();
    let late_stats = readers[2].stats();
    receiver.remove_call(slot).expect("remove call");
    std::thread::sleep(Duration::from_millis(60));
    drop(receiver);

    assert!(
        played > 300,
        "the run exercised the path: {played} frames played"
    );
    assert!(
        late_stats.received > 0,
        "held packets were played: {late_stats:?}"
    );
    assert_eq!(
        (allocations(), frees()),
        (0, 0),
        "heap operations on the receive thread after start-up"
    );
}
