//! The receive path in virtual time: real Opus, real transport and DAVE encryption, the core
//! driven directly (no thread, no clock).

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::{Duration, Instant};

use audiopus::coder::Encoder;
use audiopus::{Application, Channels, SampleRate};

use super::core::{ListenCall, ReceiverCore};
use super::stream::Stream;
use super::*;
use crate::crypto::Sealer;
use crate::dave::{FrameEncryptor, SenderKey};
use crate::rtp::{HEADER_LEN, RtpStream};

const MODE: EncryptionMode = EncryptionMode::Aes256GcmRtpSize;
const OWN_SSRC: u32 = 1;
const TICK: Duration = Duration::from_millis(20);

/// A remote member: encodes a tone, DAVE-encrypts it when keyed, seals it as RTP.
struct Member {
    rtp: RtpStream,
    sealer: Sealer,
    encoder: Encoder,
    dave: Option<FrameEncryptor>,
    hz: f32,
    phase: f32,
}

impl Member {
    fn new(ssrc: u32, hz: f32, dave: Option<SenderKey>) -> Self {
        Self {
            rtp: RtpStream::with_start(ssrc, 65_500, 1_000),
            sealer: Sealer::new(MODE, &key()),
            encoder: Encoder::new(SampleRate::Hz48000, Channels::Stereo, Application::Audio)
                .expect("encoder"),
            dave: dave.map(FrameEncryptor::new),
            hz,
            phase: 0.0,
        }
    }

    /// The next packet, sealed.
    fn packet(&mut self) -> Vec<u8> {
        let mut pcm = [0i16; FRAME_PCM_LEN];
        for frame in pcm.chunks_exact_mut(2) {
            let v = (self.phase * std::f32::consts::TAU).sin() * 12_000.0;
            frame.fill(v as i16);
            self.phase = (self.phase + self.hz / 48_000.0).fract();
        }
        let mut opus = [0u8; 1275];
        let n = self.encoder.encode(&pcm, &mut opus).expect("encode");
        let mut buf = vec![0u8; 1500];
        let header = self.rtp.write_next(&mut buf).expect("header");
        let body = match &mut self.dave {
            Some(e) => e
                .encrypt_into(&opus[..n], &mut buf[header..])
                .expect("dave"),
            None => {
                buf[header..header + n].copy_from_slice(&opus[..n]);
                n
            }
        };
        let len = self.sealer.seal(&mut buf, HEADER_LEN, body).expect("seal");
        buf.truncate(len);
        buf
    }
}

fn key() -> SecretKey {
    SecretKey::new([9; 32])
}

struct Harness {
    core: ReceiverCore,
    events: rtrb::Consumer<ReceiverEvent>,
    garbage_tx: rtrb::Producer<Returned>,
    garbage: rtrb::Consumer<Returned>,
    slot: ListenSlot,
    counters: Arc<CallCounters>,
    start: Instant,
    tick: u64,
    mode: ReceiveMode,
}

impl Harness {
    fn new(mode: ReceiveMode) -> Self {
        let (core, events) = ReceiverCore::new(4, 64);
        let (garbage_tx, garbage) = rtrb::RingBuffer::new(16);
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").expect("loopback bind"));
        let start = Instant::now();
        let slot = ListenSlot(1 << 32 | 2);
        let call = ListenCall::build(
            slot,
            ListenConfig {
                socket,
                mode: MODE,
                key: key(),
                own_ssrc: OWN_SSRC,
                receive: mode,
                counters: Arc::default(),
            },
            8,
            8,
            Duration::from_secs(1),
            start,
        );
        let counters = Arc::clone(&call.counters);
        let mut h = Self {
            core,
            events,
            garbage_tx,
            garbage,
            slot,
            counters,
            start,
            tick: 0,
            mode,
        };
        h.apply(Command::Add(call));
        h
    }

    fn now(&self) -> Instant {
        self.start + TICK * self.tick as u32
    }

    fn apply(&mut self, command: Command) {
        let now = self.now();
        let _ = self.core.apply(command, now, &mut self.garbage_tx);
        while self.garbage.pop().is_ok() {}
    }

    fn stream(&mut self, user_id: u64, ssrc: u32, keys: Vec<SenderKey>) -> UserAudio {
        let now = self.now();
        let passthrough = if keys.is_empty() {
            Passthrough::On
        } else {
            Passthrough::Off
        };
        let config = StreamConfig {
            user_id,
            ssrc,
            // Room for a whole test's frames: the tests read them at the end.
            options: StreamOptions {
                ring_frames: 512,
                ..StreamOptions::default()
            },
            keys: keys.into_iter().map(|k| PreparedKey::new(k, now)).collect(),
            passthrough,
        };
        let (stream, audio) = Stream::build(config, self.mode, now).expect("stream");
        self.apply(Command::AddStream(self.slot, stream));
        audio
    }

    fn receive(&mut self, packet: &[u8]) {
        let now = self.now();
        self.core.handle_datagram(self.slot.index(), packet, now);
    }

    /// Plays one tick out and moves time on by 20 ms.
    fn tick(&mut self) {
        let now = self.now();
        self.core.tick(self.tick, now);
        self.tick += 1;
    }

    fn events(&mut self) -> Vec<ReceiverEvent> {
        std::iter::from_fn(|| self.events.pop().ok()).collect()
    }
}

fn drain(audio: &mut UserAudio) -> Vec<ReceivedFrame> {
    std::iter::from_fn(|| audio.pop()).collect()
}

/// The dominant frequency of the left channel, from zero crossings.
fn frequency(frames: &[ReceivedFrame]) -> f32 {
    let left: Vec<i16> = frames
        .iter()
        .filter_map(|f| f.pcm())
        .flat_map(|pcm| pcm.iter().step_by(2).copied())
        .collect();
    let crossings = left.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
    crossings as f32 / 2.0 / (left.len() as f32 / 48_000.0)
}

#[test]
fn a_member_is_heard_in_order_at_the_right_frequency() {
    let mut h = Harness::new(ReceiveMode::Decode);
    let mut audio = h.stream(7, 100, Vec::new());
    let mut member = Member::new(100, 440.0, None);
    for _ in 0..100 {
        let p = member.packet();
        h.receive(&p);
        h.tick();
    }
    for _ in 0..10 {
        h.tick();
    }
    let frames = drain(&mut audio);
    let stats = audio.stats();
    // Every packet played; after the last one, the stream conceals while it waits for more
    // (`stalled`, not loss) until it is declared paused.
    let (packets, waiting): (Vec<_>, Vec<_>) =
        frames.iter().partition(|f| f.origin == FrameOrigin::Packet);
    assert_eq!(packets.len(), 100);
    assert_eq!(waiting.len() as u64, stats.stalled);
    assert!(waiting.iter().all(|f| f.origin == FrameOrigin::Concealed));
    let seqs: Vec<u16> = packets.iter().map(|f| f.sequence).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1)),
        "in order across the wrap: {seqs:?}"
    );
    // Skip the codec's start-up frames.
    let hz = frequency(&frames[5..100]);
    assert!((hz - 440.0).abs() < 15.0, "{hz} Hz");
    assert_eq!(
        (stats.received, stats.lost, stats.undecryptable),
        (100, 0, 0)
    );
    let events = h.events();
    assert!(events.contains(&ReceiverEvent::SpeakingStarted {
        call: h.slot,
        user_id: 7
    }));
    assert!(events.contains(&ReceiverEvent::SpeakingStopped {
        call: h.slot,
        user_id: 7
    }));
}

#[test]
fn dave_frames_open_with_the_members_key_only() {
    let key = SenderKey::new(3, [5; 16]);
    let mut h = Harness::new(ReceiveMode::Decode);
    let mut keyed = h.stream(7, 100, vec![key.clone()]);
    let mut unkeyed = h.stream(8, 200, vec![SenderKey::new(3, [6; 16])]);
    let mut member = Member::new(100, 660.0, Some(key.clone()));
    let mut stranger = Member::new(200, 660.0, Some(key));
    for _ in 0..50 {
        let (a, b) = (member.packet(), stranger.packet());
        h.receive(&a);
        h.receive(&b);
        h.tick();
    }
    let frames = drain(&mut keyed);
    assert!(frames.len() >= 45);
    assert!((frequency(&frames[5..]) - 660.0).abs() < 20.0);
    // The second member's frames were made with someone else's key: none opens, none plays.
    assert_eq!(unkeyed.stats().undecryptable, 50);
    assert!(drain(&mut unkeyed).is_empty());
}

#[test]
fn packets_that_overtake_op5_are_held_and_played() {
    let mut h = Harness::new(ReceiveMode::Opus);
    let mut member = Member::new(100, 440.0, None);
    let first: Vec<Vec<u8>> = (0..3).map(|_| member.packet()).collect();
    for p in &first {
        h.receive(p);
    }
    assert_eq!(h.counters.snapshot().held, 3);
    let mut audio = h.stream(7, 100, Vec::new());
    for _ in 0..20 {
        let p = member.packet();
        h.receive(&p);
        h.tick();
    }
    let frames = drain(&mut audio);
    assert_eq!(frames.first().map(|f| f.sequence), Some(65_500));
    assert!(
        frames
            .iter()
            .all(|f| f.opus().is_some() && f.pcm().is_none())
    );
    assert_eq!(h.counters.snapshot().held_expired, 0);
}

#[test]
fn held_packets_of_an_ssrc_never_mapped_expire() {
    let mut h = Harness::new(ReceiveMode::Opus);
    let mut member = Member::new(300, 440.0, None);
    let p = member.packet();
    h.receive(&p);
    for _ in 0..60 {
        h.tick();
    }
    let stats = h.counters.snapshot();
    assert_eq!((stats.held, stats.held_expired), (1, 1));
}

#[test]
fn loss_and_reordering_are_concealed_and_counted() {
    let mut h = Harness::new(ReceiveMode::Decode);
    let mut audio = h.stream(7, 100, Vec::new());
    let mut member = Member::new(100, 440.0, None);
    let packets: Vec<Vec<u8>> = (0..60).map(|_| member.packet()).collect();
    let mut i = 0;
    while i < packets.len() {
        match i {
            20 => {} // lost
            30 => {
                // 31 arrives before 30.
                h.receive(&packets[31]);
                h.receive(&packets[30]);
                h.tick();
                h.tick();
                i += 2;
                continue;
            }
            _ => h.receive(&packets[i]),
        }
        h.tick();
        i += 1;
    }
    for _ in 0..10 {
        h.tick();
    }
    let frames = drain(&mut audio);
    let stats = audio.stats();
    assert_eq!(stats.lost, 1);
    assert_eq!(stats.received, 59);
    let concealed = frames
        .iter()
        .filter(|f| matches!(f.origin, FrameOrigin::Concealed | FrameOrigin::FecRecovered))
        .count();
    assert_eq!(concealed as u64, stats.lost + stats.stalled);
    assert_eq!(
        frames.len() as u64,
        60 + stats.stalled,
        "every frame played, the lost one concealed"
    );
}

#[test]
fn garbage_and_our_own_packets_are_counted_not_played() {
    let mut h = Harness::new(ReceiveMode::Decode);
    let mut audio = h.stream(7, 100, Vec::new());
    let mut own = Member::new(OWN_SSRC, 440.0, None);
    let p = own.packet();
    h.receive(&p);
    let mut member = Member::new(100, 440.0, None);
    let mut good = member.packet();
    let last = good.len() - 1;
    good[last] ^= 1; // breaks the transport tag
    h.receive(&good);
    h.receive(&[0x80, 200, 0, 7, 1, 2, 3, 4]); // RTCP
    h.receive(&[1, 2, 3]);
    h.receive(&[]);
    let mut rng = 0x1234_5678u32;
    for len in 0..200 {
        let junk: Vec<u8> = (0..len)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 17;
                rng ^= rng << 5;
                rng as u8
            })
            .collect();
        h.receive(&junk);
    }
    for _ in 0..10 {
        h.tick();
    }
    let stats = h.counters.snapshot();
    assert_eq!(stats.own_ssrc, 1);
    assert!(stats.transport_failures >= 1);
    assert!(stats.rtcp >= 1);
    assert_eq!(stats.datagrams, 205);
    assert!(drain(&mut audio).is_empty());
}

#[test]
fn a_new_ssrc_for_a_user_replaces_their_stream() {
    let mut h = Harness::new(ReceiveMode::Opus);
    let old = h.stream(7, 100, Vec::new());
    let mut new = h.stream(7, 101, Vec::new());
    assert!(old.is_closed(), "the old reader sees its stream closed");
    let mut member = Member::new(101, 440.0, None);
    for _ in 0..10 {
        let p = member.packet();
        h.receive(&p);
        h.tick();
    }
    assert!(!drain(&mut new).is_empty());
}
