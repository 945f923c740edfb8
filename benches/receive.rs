//! The receive path per packet, as the receive thread runs it: demultiplex, open the transport
//! encryption (AES-256-GCM), open the DAVE frame (AES-128-GCM), file the Opus frame into the
//! user's playout buffer, and play one frame out per packet — with and without the libopus
//! decode (~40 µs, which the target sits beside: ≤ 2 µs for everything else). Packets are made
//! outside the timing (a batch per iteration), in virtual time.

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use quaver::engine::Grid;
use quaver::net::crypto::{EncryptionMode, Sealer, SecretKey};
use quaver::net::dave::{FrameEncryptor, Passthrough, PreparedKey, SenderKey};
use quaver::net::receiver::{
    ListenConfig, ReceiveMode, ReceiverConfig, ReceiverCore, StreamConfig, StreamOptions,
};
use quaver::net::rtp::{HEADER_LEN, RtpStream};

const MODE: EncryptionMode = EncryptionMode::Aes256GcmRtpSize;
/// Packets per measured batch: one second of one user's audio.
const BATCH: usize = 50;

/// A real 20 ms Opus frame of a tone at 96 kb/s.
fn opus_frames(count: usize) -> Vec<Vec<u8>> {
    let mut encoder = audiopus::coder::Encoder::new(
        audiopus::SampleRate::Hz48000,
        audiopus::Channels::Stereo,
        audiopus::Application::Audio,
    )
    .expect("encoder");
    let _ = encoder.set_bitrate(audiopus::Bitrate::BitsPerSecond(96_000));
    (0..count)
        .map(|n| {
            let pcm: Vec<i16> = (0..1920)
                .map(|i| (((n * 960 + i / 2) as f32 * 0.0576).sin() * 8_000.0) as i16)
                .collect();
            let mut out = [0u8; 1275];
            let len = encoder.encode(&pcm, &mut out).expect("encode");
            out[..len].to_vec()
        })
        .collect()
}

/// The receiving side.
struct Receiving {
    core: ReceiverCore,
    audio: quaver::UserAudio,
    now: Instant,
    tick: u64,
}

/// The sending member, making packets outside the timing.
struct Member {
    sealer: Sealer,
    encryptor: FrameEncryptor,
    rtp: RtpStream,
}

fn setup(mode: ReceiveMode) -> (Receiving, Member) {
    let key = SecretKey::new([0x21; 32]);
    let now = Instant::now();
    let limits = ReceiverConfig::new(Grid::new(now));
    let (mut core, _events) = ReceiverCore::new(4, 1 << 16);
    let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").expect("loopback bind"));
    let slot = core
        .add_call(
            ListenConfig {
                socket,
                mode: MODE,
                key: key.clone(),
                own_ssrc: 1,
                receive: mode,
                counters: Arc::default(),
            },
            &limits,
            now,
        )
        .expect("call");
    let dave = SenderKey::new(1, [0x42; 16]);
    let audio = core
        .add_stream(
            slot,
            mode,
            StreamConfig {
                user_id: 7,
                ssrc: 77,
                options: StreamOptions::default(),
                keys: vec![PreparedKey::new(dave.clone(), now)],
                passthrough: Passthrough::Off,
            },
            now,
        )
        .expect("stream");
    (
        Receiving {
            core,
            audio,
            now,
            tick: 0,
        },
        Member {
            sealer: Sealer::new(MODE, &key),
            encryptor: FrameEncryptor::new(dave),
            rtp: RtpStream::new(77),
        },
    )
}

impl Member {
    fn packets(&mut self, opus: &[Vec<u8>]) -> Vec<Vec<u8>> {
        opus.iter()
            .map(|frame| {
                let mut buf = vec![0u8; 1500];
                let h = self.rtp.write_next(&mut buf).expect("header");
                let n = self
                    .encryptor
                    .encrypt_into(frame, &mut buf[h..])
                    .expect("dave");
                let len = self.sealer.seal(&mut buf, HEADER_LEN, n).expect("seal");
                buf.truncate(len);
                buf
            })
            .collect()
    }
}

impl Receiving {
    /// One packet in, one frame out, per packet of the batch.
    fn run(&mut self, packets: &[Vec<u8>]) {
        for p in packets {
            self.core.handle_datagram(0, p, self.now);
            self.core.tick(self.tick, self.now);
            self.tick += 1;
            self.now += Duration::from_millis(20);
        }
        while self.audio.pop().is_some() {}
    }
}

fn receive(c: &mut Criterion) {
    let opus = opus_frames(BATCH);
    let mut group = c.benchmark_group("receive");
    group.throughput(Throughput::Elements(BATCH as u64));
    for (name, mode) in [
        ("open_dave_buffer_per_packet", ReceiveMode::Opus),
        ("open_dave_buffer_decode_per_packet", ReceiveMode::Decode),
    ] {
        group.bench_function(name, |b| {
            let (mut rx, mut member) = setup(mode);
            b.iter_batched(
                || member.packets(&opus),
                |packets| rx.run(&packets),
                BatchSize::SmallInput,
            );
            // The run really went through the whole path.
            let stats = rx.audio.stats();
            assert!(stats.played > 0 && stats.undecryptable == 0, "{stats:?}");
        });
    }
    group.finish();
}

criterion_group!(benches, receive);
criterion_main!(benches);
