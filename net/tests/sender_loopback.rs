//! End-to-end over loopback: a call's frames go through the real sender thread — io_uring and the
//! portable fallback — and a receiving socket gets every packet, in order, with consecutive
//! sequence numbers, timestamps +960, and payloads that decrypt. No wall-clock assertions.

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quaver_engine::frame::frame_queue;
use quaver_engine::{EncodedFrame, FrameKind, Grid};
use quaver_net::crypto::{EncryptionMode, SecretKey, TransportCipher};
use quaver_net::pacer::SchedulingRequest;
use quaver_net::receive::open_rtp;
use quaver_net::rtp::SILENCE_FRAME;
use quaver_net::{BackendChoice, BackendKind, CallConfig, Sender, SenderConfig, SenderEvent};

const FRAMES: u64 = 30;

fn frame_payload(i: u64) -> Vec<u8> {
    (0..(20 + i as usize))
        .map(|k| (k as u64 ^ i) as u8)
        .collect()
}

fn connected_pair() -> (Arc<UdpSocket>, UdpSocket) {
    let receiver = UdpSocket::bind("127.0.0.1:0").expect("loopback bind");
    receiver
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("set timeout");
    let socket = UdpSocket::bind("127.0.0.1:0").expect("loopback bind");
    socket
        .connect(receiver.local_addr().expect("bound"))
        .expect("loopback connect");
    (Arc::new(socket), receiver)
}

fn config(backend: BackendChoice) -> SenderConfig {
    let mut c = SenderConfig::new(Grid::new(Instant::now()));
    c.backend = backend;
    // Tests share the machine: no real-time priority, just the custom slice if available.
    c.scheduling = SchedulingRequest {
        fifo_priority: None,
        ..SchedulingRequest::default()
    };
    c.max_calls = 8;
    c
}

fn wait_for_event(sender: &mut Sender, want: impl Fn(&SenderEvent) -> bool) -> Vec<SenderEvent> {
    let mut seen = Vec::new();
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        while let Some(e) = sender.poll_event() {
            let hit = want(&e);
            seen.push(e);
            if hit {
                return seen;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("event not seen; got {seen:?}");
}

fn run_call(backend: BackendChoice) -> BackendKind {
    let mut sender = Sender::spawn(config(backend)).expect("sender starts");
    let kind = sender.backend();
    eprintln!("backend {kind:?}, pacing {:?}", sender.pacing());
    let (socket, receiver) = connected_pair();
    let key = SecretKey::new([0x42; 32]);
    let mode = EncryptionMode::Aes256GcmRtpSize;
    let (mut producer, frames) = frame_queue(64, &Arc::default());
    let call = sender
        .add_call(CallConfig {
            ssrc: 0x1234_5678,
            socket,
            mode,
            key: key.clone(),
            frames,
        })
        .expect("call added");
    let grid_epoch = Instant::now();
    let _ = grid_epoch;
    // Start a few ticks ahead so the first frames are on time.
    let start = Grid::new(Instant::now()).tick_at_or_after(Instant::now());
    let start = start + 3;
    for i in 0..FRAMES {
        let f = EncodedFrame::from_packet(start + i, &frame_payload(i)).expect("small packet");
        producer.push(&f).expect("ring has room for all frames");
    }
    producer
        .push(&EncodedFrame::new(start + FRAMES, FrameKind::EndOfStream))
        .expect("ring has room");

    let cipher = TransportCipher::new(mode, &key);
    let mut buf = [0u8; 2048];
    let mut out = [0u8; 2048];
    let mut prev: Option<(u16, u32)> = None;
    for i in 0..FRAMES + 5 {
        let n = receiver.recv(&mut buf).expect("packet arrives");
        let p = open_rtp(&cipher, &buf[..n], &mut out).expect("packet decrypts");
        assert_eq!(p.ssrc, 0x1234_5678);
        if i < FRAMES {
            assert_eq!(p.payload, &frame_payload(i)[..], "frame {i}");
        } else {
            assert_eq!(p.payload, &SILENCE_FRAME[..], "silence {i}");
        }
        if let Some((seq, ts)) = prev {
            assert_eq!(p.sequence, seq.wrapping_add(1), "sequence at {i}");
            assert_eq!(p.timestamp, ts.wrapping_add(960), "timestamp at {i}");
        }
        prev = Some((p.sequence, p.timestamp));
    }
    let events = wait_for_event(
        &mut sender,
        |e| matches!(e, SenderEvent::SpeakingStopped { call: c } if *c == call),
    );
    assert!(events.contains(&SenderEvent::CallAdded { call }));
    let started = events
        .iter()
        .position(|e| *e == SenderEvent::SpeakingStarted { call })
        .expect("speaking started before stopped");
    assert_eq!(
        events[started + 1..]
            .iter()
            .filter(|e| matches!(e, SenderEvent::SpeakingStarted { .. }))
            .count(),
        0
    );
    // Nothing more after the silence.
    receiver
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("set timeout");
    assert!(
        receiver.recv(&mut buf).is_err(),
        "no packets after the 5 silence frames"
    );
    sender.remove_call(call).expect("queue has room");
    assert!(sender.remove_call(call).is_err(), "a call is removed once");
    assert_eq!(sender.call_count(), 0);
    wait_for_event(
        &mut sender,
        |e| matches!(e, SenderEvent::CallRemoved { packets, .. } if *packets == FRAMES + 5),
    );
    let stats = sender.shutdown();
    assert_eq!(stats.packets_sent, FRAMES + 5);
    assert_eq!(stats.lateness_ns.len(), FRAMES + 5);
    assert_eq!(stats.send_errors, 0);
    kind
}

#[test]
fn loopback_through_io_uring() {
    match Sender::spawn(config(BackendChoice::IoUring)) {
        Ok(s) => {
            assert_eq!(s.backend(), BackendKind::IoUring);
            drop(s);
            assert_eq!(run_call(BackendChoice::IoUring), BackendKind::IoUring);
        }
        Err(e) => {
            eprintln!("io_uring is unavailable here ({e}); checking that Auto falls back");
            assert_eq!(run_call(BackendChoice::Auto), BackendKind::Portable);
        }
    }
}

#[test]
fn loopback_through_portable_fallback() {
    assert_eq!(run_call(BackendChoice::Portable), BackendKind::Portable);
}

#[test]
fn send_errors_are_events_and_other_calls_continue() {
    for backend in [BackendChoice::Auto, BackendChoice::Portable] {
        let mut sender = Sender::spawn(config(backend)).expect("sender starts");
        // A socket connected to a port nobody listens on: loopback answers with ICMP port
        // unreachable, so later sends fail with ECONNREFUSED.
        let dead = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let dead_addr = dead.local_addr().expect("bound");
        drop(dead);
        let bad = UdpSocket::bind("127.0.0.1:0").expect("bind");
        bad.connect(dead_addr).expect("connect");
        let (good, receiver) = connected_pair();
        let key = SecretKey::new([1; 32]);
        let (mut bad_tx, bad_rx) = frame_queue(64, &Arc::default());
        let (mut good_tx, good_rx) = frame_queue(64, &Arc::default());
        let mode = EncryptionMode::XChaCha20Poly1305RtpSize;
        let bad_id = sender
            .add_call(CallConfig {
                ssrc: 1,
                socket: Arc::new(bad),
                mode,
                key: key.clone(),
                frames: bad_rx,
            })
            .expect("added");
        sender
            .add_call(CallConfig {
                ssrc: 2,
                socket: good,
                mode,
                key: key.clone(),
                frames: good_rx,
            })
            .expect("added");
        let start = Grid::new(Instant::now()).tick_at_or_after(Instant::now()) + 3;
        for i in 0..10 {
            let f = EncodedFrame::from_packet(start + i, b"opus").expect("small");
            bad_tx.push(&f).expect("room");
            good_tx.push(&f).expect("room");
        }
        let cipher = TransportCipher::new(mode, &key);
        let (mut buf, mut out) = ([0u8; 256], [0u8; 256]);
        for _ in 0..10 {
            let n = receiver.recv(&mut buf).expect("good call keeps sending");
            assert_eq!(
                open_rtp(&cipher, &buf[..n], &mut out)
                    .expect("opens")
                    .payload,
                b"opus"
            );
        }
        let events = wait_for_event(&mut sender, |e| matches!(e, SenderEvent::SendFailed { .. }));
        let failed = events.last().expect("non-empty");
        assert!(
            matches!(failed, SenderEvent::SendFailed { call, errno, .. } if *call == bad_id && *errno == libc_econnrefused())
        );
        let stats = sender.shutdown();
        assert!(stats.send_errors >= 1);
        assert!(stats.packets_sent >= 10);
    }
}

fn libc_econnrefused() -> i32 {
    std::io::Error::from(std::io::ErrorKind::ConnectionRefused)
        .raw_os_error()
        .unwrap_or(111)
}

#[test]
fn rekey_switches_at_a_frame_boundary() {
    let mut sender = Sender::spawn(config(BackendChoice::Auto)).expect("sender starts");
    let (socket, receiver) = connected_pair();
    let old_key = SecretKey::new([5; 32]);
    let new_key = SecretKey::new([6; 32]);
    let (mut producer, frames) = frame_queue(64, &Arc::default());
    let call = sender
        .add_call(CallConfig {
            ssrc: 9,
            socket,
            mode: EncryptionMode::Aes256GcmRtpSize,
            key: old_key.clone(),
            frames,
        })
        .expect("added");
    let start = Grid::new(Instant::now()).tick_at_or_after(Instant::now()) + 3;
    for i in 0..20 {
        producer
            .push(&EncodedFrame::from_packet(start + i, &[i as u8; 50]).expect("small"))
            .expect("room");
    }
    let old = TransportCipher::new(EncryptionMode::Aes256GcmRtpSize, &old_key);
    let new = TransportCipher::new(EncryptionMode::XChaCha20Poly1305RtpSize, &new_key);
    let (mut buf, mut out) = ([0u8; 256], [0u8; 256]);
    let mut switched = false;
    let mut prev_seq = None;
    for i in 0..20u8 {
        let n = receiver.recv(&mut buf).expect("packet arrives");
        if i == 5 {
            sender
                .rekey(call, EncryptionMode::XChaCha20Poly1305RtpSize, &new_key)
                .expect("queue has room");
        }
        let with_old =
            open_rtp(&old, &buf[..n], &mut out).map(|p| (p.sequence, p.payload.to_vec()));
        let with_new =
            open_rtp(&new, &buf[..n], &mut out).map(|p| (p.sequence, p.payload.to_vec()));
        let (seq, payload) = match (with_old, with_new) {
            (Ok(p), Err(_)) => {
                assert!(!switched, "old key used after the switch (packet {i})");
                p
            }
            (Err(_), Ok(p)) => {
                switched = true;
                p
            }
            other => panic!("packet {i} must open under exactly one key: {other:?}"),
        };
        assert_eq!(
            payload,
            vec![i; 50],
            "no frame lost or duplicated at the switch"
        );
        if let Some(s) = prev_seq {
            assert_eq!(seq, u16::wrapping_add(s, 1));
        }
        prev_seq = Some(seq);
    }
    assert!(switched, "the new key took effect");
    sender.shutdown();
}

/// The control side knows each call's phase (the mixer builds calls in that order): groups
/// fill in turn, and a group a call left takes the next one.
#[test]
fn the_handle_tells_each_calls_phase() {
    let mut c = config(BackendChoice::Portable);
    c.phases = quaver_net::sender::PhaseConfig {
        groups: 4,
        calls_per_group: 2,
    };
    let mut sender = Sender::spawn(c).expect("sender starts");
    let mut receivers = Vec::new();
    let mut add = |sender: &mut Sender| {
        let (socket, receiver) = connected_pair();
        receivers.push(receiver);
        let (_, frames) = frame_queue(4, &Arc::default());
        sender
            .add_call(CallConfig {
                ssrc: receivers.len() as u32,
                socket,
                mode: EncryptionMode::Aes256GcmRtpSize,
                key: SecretKey::new([7; 32]),
                frames,
            })
            .expect("call added")
    };
    let calls: Vec<_> = (0..5).map(|_| add(&mut sender)).collect();
    let ms = Duration::from_millis;
    let phases: Vec<_> = calls.iter().map(|&c| sender.phase_offset(c)).collect();
    assert_eq!(
        phases,
        [ms(0), ms(0), ms(5), ms(5), ms(10)].map(Some).to_vec()
    );
    sender.remove_call(calls[0]).expect("call removed");
    assert_eq!(sender.phase_offset(calls[0]), None);
    let next = add(&mut sender);
    assert_eq!(sender.phase_offset(next), Some(ms(0)));
}
