//! Unit tests of the sender core.

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::Instant;

use quaver_engine::frame::frame_queue;
use quaver_engine::{EncodedFrame, FrameKind, FrameReceiver, FrameSender, FrameSignal, Grid};

use super::*;
use crate::crypto::{EncryptionMode, SecretKey};
use crate::dave::SenderKey;
use crate::transmit::BackendChoice;

fn core_with_call() -> (
    SenderCore,
    rtrb::Consumer<SenderEvent>,
    FrameSender,
    UdpSocket,
    SendSlot,
) {
    let grid = Grid::new(Instant::now());
    let (mut core, events) = SenderCore::new(grid, BackendChoice::Portable, 4, 64).unwrap(); // invariant: the portable backend always builds
    let receiver = UdpSocket::bind("127.0.0.1:0").unwrap(); // invariant: loopback bind
    let (tx, rx) = frame_queue(16, &Arc::default());
    let id = add_call(&mut core, 1, &receiver, rx);
    (core, events, tx, receiver, id)
}

/// Adds call `ssrc` to `core`, sending to `to` from a socket of its own, its frames from
/// `frames`.
fn add_call(core: &mut SenderCore, ssrc: u32, to: &UdpSocket, frames: FrameReceiver) -> SendSlot {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap(); // invariant: loopback bind
    socket.connect(to.local_addr().unwrap()).unwrap(); // invariant: bound, loopback
    core.add_call(CallConfig {
        ssrc,
        socket: Arc::new(socket),
        mode: EncryptionMode::Aes256GcmRtpSize,
        key: SecretKey::new([0; 32]),
        frames,
    })
    .unwrap() // invariant: callers stay below max_calls; the socket is connected
}

fn drain(events: &mut rtrb::Consumer<SenderEvent>) -> Vec<SenderEvent> {
    std::iter::from_fn(|| events.pop().ok()).collect()
}

#[test]
fn ticks_frames_silence_and_speaking_events() {
    let (mut core, mut events, mut tx, _rx, id) = core_with_call();
    for t in [5, 6] {
        tx.push(&EncodedFrame::from_packet(t, b"abc").expect("small packet"))
            .unwrap(); // invariant: small, room
    }
    tx.push(&EncodedFrame::new(7, FrameKind::EndOfStream))
        .unwrap(); // invariant: room
    assert_eq!(core.run_tick(4), 0, "nothing due before tick 5");
    assert_eq!(core.run_tick(5), 1);
    assert_eq!(
        drain(&mut events),
        [SenderEvent::SpeakingStarted { call: id }]
    );
    assert_eq!(core.run_tick(6), 1);
    for t in 7..12 {
        assert_eq!(core.run_tick(t), 1, "silence frame at tick {t}");
        let stopped = drain(&mut events).contains(&SenderEvent::SpeakingStopped { call: id });
        assert_eq!(
            stopped,
            t == 11,
            "speaking stops after the fifth silence frame"
        );
    }
    assert_eq!(core.run_tick(12), 0, "idle after the silence");
    assert_eq!(core.stats().packets_sent, 7);
    assert_eq!(core.stats().late_frames, 0);
}

#[test]
fn timestamps_follow_the_grid_across_gaps() {
    let (mut core, _events, mut tx, receiver, _id) = core_with_call();
    for t in [10, 11, 15] {
        tx.push(&EncodedFrame::from_packet(t, b"abc").expect("small packet"))
            .unwrap(); // invariant: small, room
    }
    for t in 10..16 {
        core.run_tick(t);
    }
    let mut buf = [0_u8; 256];
    let mut stamps = Vec::new();
    let mut sequences = Vec::new();
    for _ in 0..3 {
        let len = receiver.recv(&mut buf).unwrap(); // invariant: three packets were sent
        let header = crate::rtp::RtpHeader::parse(&buf[..len]).unwrap(); // invariant: ours
        stamps.push(header.timestamp);
        sequences.push(header.sequence);
    }
    assert_eq!(stamps[1].wrapping_sub(stamps[0]), 960);
    assert_eq!(
        stamps[2].wrapping_sub(stamps[1]),
        4 * 960,
        "the gap of ticks 12–14 shows"
    );
    assert_eq!(sequences[1], sequences[0].wrapping_add(1));
    assert_eq!(
        sequences[2],
        sequences[1].wrapping_add(1),
        "sequence numbers stay contiguous"
    );
}

#[test]
fn late_frames_go_out_at_once_and_audio_cancels_silence() {
    let (mut core, mut events, mut tx, _rx, id) = core_with_call();
    for t in 1..=3 {
        tx.push(&EncodedFrame::from_packet(t, b"x").expect("small packet"))
            .unwrap(); // invariant: room
    }
    assert_eq!(core.run_tick(3), 3, "two late frames plus the on-time one");
    assert_eq!(core.stats().late_frames, 2);
    tx.push(&EncodedFrame::new(4, FrameKind::EndOfStream))
        .unwrap(); // invariant: room
    tx.push(&EncodedFrame::from_packet(6, b"y").expect("small packet"))
        .unwrap(); // invariant: room
    assert_eq!(core.run_tick(4), 1); // silence 1
    assert_eq!(core.run_tick(5), 1); // silence 2
    assert_eq!(core.run_tick(6), 1); // audio again: silence cancelled
    assert_eq!(core.run_tick(7), 0);
    let ev = drain(&mut events);
    assert_eq!(
        ev,
        [SenderEvent::SpeakingStarted { call: id }],
        "no stop, no second start"
    );
}

/// Receives one packet and returns the transport-opened payload (a DAVE or plain frame).
fn receive_payload(receiver: &UdpSocket) -> Vec<u8> {
    let cipher = crate::crypto::TransportCipher::new(
        EncryptionMode::Aes256GcmRtpSize,
        &SecretKey::new([0; 32]),
    );
    let mut buf = [0u8; 2048];
    let mut out = [0u8; 2048];
    let n = receiver.recv(&mut buf).unwrap(); // invariant: a packet was sent
    let p = crate::receive::open_rtp(&cipher, &buf[..n], &mut out).unwrap(); // invariant: ours
    p.payload.to_vec()
}

#[test]
fn dave_keys_wrap_frames_keep_or_restart_the_counter_and_come_off() {
    use crate::dave::{FrameDecryptor, parse_frame};
    let (mut core, mut events, mut tx, receiver, id) = core_with_call();
    let key1 = SenderKey::new(1, [0x11; 16]);
    let key2 = SenderKey::new(2, [0x22; 16]);
    let now = Instant::now();
    let mut decryptor = FrameDecryptor::new();
    decryptor.install_key(key1.clone(), now);

    core.set_dave_key(id, Some(key1.clone())).unwrap(); // invariant: the call exists
    assert_eq!(
        drain(&mut events),
        [SenderEvent::DaveKeyInstalled { call: id, epoch: 1 }]
    );
    let mut tick = 1;
    let mut send = |core: &mut SenderCore, opus: &[u8]| {
        tx.push(&EncodedFrame::from_packet(tick, opus).expect("small packet"))
            .unwrap(); // invariant: room
        assert_eq!(core.run_tick(tick), 1);
        tick += 1;
        receive_payload(&receiver)
    };
    let mut nonces = Vec::new();
    for i in 0..3u8 {
        let opus = [i; 40];
        let frame = send(&mut core, &opus);
        nonces.push(parse_frame(&frame).unwrap().nonce); // invariant: DAVE frame
        let mut plain = [0u8; 64];
        let n = decryptor.decrypt_into(&frame, &mut plain, now).unwrap(); // invariant: key1
        assert_eq!(plain[..n], opus);
    }
    // The same key again: the counter carries on.
    core.set_dave_key(id, Some(key1.clone())).unwrap(); // invariant: the call exists
    nonces.push(
        parse_frame(&send(&mut core, b"same key frame"))
            .unwrap()
            .nonce,
    ); // invariant: DAVE frame
    assert_eq!(nonces, [1, 2, 3, 4]);
    // The silence frame is never wrapped, even under a key.
    let frame = send(&mut core, &crate::rtp::SILENCE_FRAME);
    assert_eq!(frame, crate::rtp::SILENCE_FRAME);
    // A new epoch starts at nonce 1.
    core.set_dave_key(id, Some(key2.clone())).unwrap(); // invariant: the call exists
    let frame = send(&mut core, b"epoch two frame");
    assert_eq!(parse_frame(&frame).unwrap().nonce, 1); // invariant: DAVE frame
    decryptor.install_key(key2, now);
    let mut plain = [0u8; 64];
    let n = decryptor.decrypt_into(&frame, &mut plain, now).unwrap(); // invariant: key2
    assert_eq!(&plain[..n], b"epoch two frame");
    // Off again: plain Opus.
    core.set_dave_key(id, None).unwrap(); // invariant: the call exists
    assert_eq!(send(&mut core, b"plain again"), b"plain again");
    assert_eq!(core.stats().dave_frames, 5);
    assert_eq!(core.stats().dave_errors, 0);
    let dave_events: Vec<_> = drain(&mut events)
        .into_iter()
        .filter(|e| {
            matches!(
                e,
                SenderEvent::DaveKeyInstalled { .. } | SenderEvent::DaveKeyRemoved { .. }
            )
        })
        .collect();
    assert_eq!(
        dave_events,
        [
            SenderEvent::DaveKeyInstalled { call: id, epoch: 1 },
            SenderEvent::DaveKeyInstalled { call: id, epoch: 2 },
            SenderEvent::DaveKeyRemoved { call: id },
        ]
    );
    assert!(matches!(
        core.set_dave_key(SendSlot(99), Some(key1)),
        Err(SenderError::UnknownCall(SendSlot(99)))
    ));
}

#[test]
fn largest_opus_frame_fits_under_dave() {
    let (mut core, _events, mut tx, receiver, id) = core_with_call();
    core.set_dave_key(id, Some(SenderKey::new(7, [7; 16])))
        .unwrap(); // invariant: the call exists
    let opus = [0x42u8; quaver_engine::MAX_OPUS_PACKET];
    tx.push(&EncodedFrame::from_packet(1, &opus).expect("maximal packet"))
        .unwrap(); // invariant: room
    assert_eq!(core.run_tick(1), 1);
    let frame = receive_payload(&receiver);
    let mut decryptor = crate::dave::FrameDecryptor::new();
    decryptor.install_key(SenderKey::new(7, [7; 16]), Instant::now());
    let mut plain = [0u8; 2048];
    let n = decryptor
        .decrypt_into(&frame, &mut plain, Instant::now())
        .unwrap(); // invariant: key 7
    assert_eq!(plain[..n], opus, "nothing cut");
}

#[test]
fn end_of_stream_while_idle_sends_nothing() {
    let (mut core, mut events, mut tx, _rx, _id) = core_with_call();
    tx.push(&EncodedFrame::new(1, FrameKind::EndOfStream))
        .unwrap(); // invariant: room
    for t in 1..8 {
        assert_eq!(core.run_tick(t), 0);
    }
    assert!(drain(&mut events).is_empty());
}

#[test]
fn a_refusing_peer_gets_probes_not_every_frame() {
    let grid = Grid::new(Instant::now());
    let (mut core, mut events) = SenderCore::new(grid, BackendChoice::Portable, 4, 1024).unwrap(); // invariant: the portable backend always builds
    // A port nobody listens on: loopback answers each packet with ICMP port unreachable, which
    // the next send reports as ECONNREFUSED (loopback ICMP is not rate-limited).
    let closed = UdpSocket::bind("127.0.0.1:0").unwrap(); // invariant: loopback bind
    // A bare queue, without a doorbell: never parked, looked at every tick.
    let (mut tx, rx) = frame_queue(8, &Arc::default());
    add_call(&mut core, 1, &closed, rx);
    drop(closed);
    let ticks = 500; // 10 s of audio
    for t in 1..=ticks {
        tx.push(&EncodedFrame::from_packet(t, b"abc").expect("small packet"))
            .unwrap(); // invariant: the core took the previous frame
        core.run_tick(t);
    }
    let stats = core.stats();
    let attempts = stats.packets_sent + stats.send_errors;
    // Every frame is accounted for: sent (accepted or refused) or dropped in a quiet spell.
    assert_eq!(attempts + stats.refused_frames, ticks);
    // 100, 200, 400, 800 ms, then one probe a second (two sends each: the probe, and the one
    // that reports its ICMP): well under 50 a second.
    assert!(
        attempts <= 40,
        "{attempts} sends into a closed port in 10 s"
    );
    assert!(stats.send_errors > 0, "the refusals were seen");
    assert!(drain(&mut events).iter().any(
        |e| matches!(e, SenderEvent::SendFailed { errno, .. } if *errno == libc::ECONNREFUSED)
    ));
}

#[test]
fn refusal_backoff_probes_and_forgets_after_a_clean_second() {
    use super::call::Refusal;
    let mut r = Refusal::default();
    r.refused(10);
    assert!(r.holds(14) && !r.holds(15), "first quiet spell: 5 ticks");
    r.refused(15);
    assert!(r.holds(24) && !r.holds(25), "then 10");
    for _ in 0..10 {
        r.refused(100);
    }
    assert!(r.holds(149) && !r.holds(150), "capped at 50 ticks (1 s)");
    for _ in 0..49 {
        r.accepted();
    }
    r.refused(200);
    assert!(
        r.holds(249),
        "49 accepted packets are not yet a clean second"
    );
    for _ in 0..50 {
        r.accepted();
    }
    r.refused(300);
    assert!(
        r.holds(304) && !r.holds(305),
        "after a clean second it starts over"
    );
}

/// Records the deadlines the core waits for, without waiting.
#[derive(Default)]
struct RecordingPace {
    sends: Vec<Instant>,
    idles: Vec<Instant>,
}

impl super::core::Pace for RecordingPace {
    fn waits(&self) -> bool {
        false
    }
    fn until_build(&mut self, _deadline: Instant) {}
    fn until_send(&mut self, deadline: Instant, _build: std::time::Duration) -> Instant {
        self.sends.push(deadline);
        Instant::now()
    }
    fn idle(&mut self, deadline: Instant) {
        self.idles.push(deadline);
    }
}

#[test]
fn calls_send_in_phase_groups_spread_over_the_period() {
    use std::time::Duration;
    let grid = Grid::new(Instant::now());
    let (mut core, _events) = SenderCore::new(grid, BackendChoice::Portable, 64, 1024).unwrap(); // invariant: the portable backend always builds
    core.set_phases(PhaseConfig {
        groups: 4,
        calls_per_group: 10,
    })
    .unwrap(); // invariant: no calls yet
    let receiver = UdpSocket::bind("127.0.0.1:0").unwrap(); // invariant: loopback bind
    let mut producers = Vec::new();
    let signal = Arc::<FrameSignal>::default();
    for ssrc in 0..35 {
        let (tx, rx) = frame_queue(4, &signal);
        add_call(&mut core, ssrc, &receiver, rx);
        producers.push(tx);
    }
    assert!(matches!(
        core.set_phases(PhaseConfig::default()),
        Err(SenderError::PhasesFixed)
    ));
    for tx in &mut producers {
        tx.push(&EncodedFrame::from_packet(3, b"abc").expect("small packet"))
            .unwrap(); // invariant: room
    }
    let mut pace = RecordingPace::default();
    assert_eq!(core.tick(3, &mut pace), 35);
    // 35 calls, 10 a group: groups at 0, 5, 10 and 15 ms after the grid's deadline, each
    // woken for once.
    let offsets: Vec<Duration> = pace
        .sends
        .iter()
        .map(|d| d.duration_since(grid.deadline(3)))
        .collect();
    assert_eq!(offsets, [0, 5, 10, 15].map(Duration::from_millis).to_vec());
    // The streams end: five silence frames each, still in their groups.
    for tx in &mut producers {
        tx.push(&EncodedFrame::new(4, FrameKind::EndOfStream))
            .unwrap(); // invariant: room
    }
    for t in 4..9 {
        let mut pace = RecordingPace::default();
        assert_eq!(core.tick(t, &mut pace), 35, "tick {t}");
        assert_eq!(pace.sends.len(), 4);
    }
    // Nothing due any more: one idle wait at the grid's own deadline, no group wake-ups.
    let mut pace = RecordingPace::default();
    assert_eq!(core.tick(9, &mut pace), 0);
    assert!(pace.sends.is_empty());
    assert_eq!(pace.idles, [grid.deadline(9)]);

    // A quiet call's first frame that shows up after its group's turn (here: while the thread
    // waits for group 3) goes out with the next group woken, in the same tick.
    let mut late = producers.swap_remove(0);
    producers[33 - 1]
        .push(&EncodedFrame::from_packet(10, b"abc").expect("small packet"))
        .unwrap(); // invariant: room
    let mut pace = ArrivingPace {
        inner: RecordingPace::default(),
        arrives: Some(&mut late),
        tick: 10,
    };
    assert_eq!(
        core.tick(10, &mut pace),
        2,
        "group 0's late starter caught up by group 3"
    );
    assert_eq!(pace.inner.sends.len(), 1);
}

/// A [`RecordingPace`] during whose first build wait a frame arrives for a quiet call.
struct ArrivingPace<'a> {
    inner: RecordingPace,
    arrives: Option<&'a mut FrameSender>,
    tick: u64,
}

impl super::core::Pace for ArrivingPace<'_> {
    fn waits(&self) -> bool {
        false
    }
    fn until_build(&mut self, _deadline: Instant) {
        if let Some(producer) = self.arrives.take() {
            producer
                .push(&EncodedFrame::from_packet(self.tick, b"abc").expect("small packet"))
                .unwrap(); // invariant: room
        }
    }
    fn until_send(&mut self, deadline: Instant, build: std::time::Duration) -> Instant {
        self.inner.until_send(deadline, build)
    }
    fn idle(&mut self, deadline: Instant) {
        self.inner.idle(deadline);
    }
}

fn audio(tick: u64) -> EncodedFrame {
    EncodedFrame::from_packet(tick, b"abc").expect("small packet")
}

#[test]
fn quiet_calls_park_and_a_frame_wakes_them() {
    let (mut core, _events, mut tx, _receiver, _id) = core_with_call();
    assert_eq!(core.awake_count(), 1, "a new call starts awake");
    assert_eq!(core.run_tick(1), 0);
    assert_eq!(core.awake_count(), 0, "nothing queued: parked");
    tx.push(&audio(3)).unwrap(); // invariant: room
    assert_eq!(core.run_tick(2), 0, "woken, but its frame is not due yet");
    assert_eq!(
        core.awake_count(),
        1,
        "a call with a queued frame stays awake"
    );
    assert_eq!(core.run_tick(3), 1);
    assert_eq!(core.run_tick(4), 0);
    assert_eq!(
        core.awake_count(),
        1,
        "a speaking call stays awake between frames"
    );
    tx.push(&EncodedFrame::new(5, FrameKind::EndOfStream))
        .unwrap(); // invariant: room
    for t in 5..10 {
        assert_eq!(core.run_tick(t), 1, "silence frame at tick {t}");
    }
    assert_eq!(core.awake_count(), 0, "parked once its silence is out");
    assert_eq!(
        (core.stats().calls_parked, core.stats().calls_woken),
        (2, 1)
    );
}

/// Parking reorders the call table: packets must still leave on each call's own socket, and
/// removing parked and awake calls must keep the rest where they are.
#[test]
fn parked_and_awake_calls_keep_their_own_sockets_through_removals() {
    let grid = Grid::new(Instant::now());
    let (mut core, _events) = SenderCore::new(grid, BackendChoice::Portable, 8, 64).unwrap(); // invariant: the portable backend always builds
    let signal = Arc::<FrameSignal>::default();
    let mut calls = Vec::new();
    for ssrc in 0..4 {
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap(); // invariant: loopback bind
        receiver.set_nonblocking(true).unwrap(); // invariant: a bound socket
        let (tx, rx) = frame_queue(8, &signal);
        let id = add_call(&mut core, ssrc, &receiver, rx);
        calls.push((id, tx, receiver));
    }
    let (mut garbage, mut garbage_rx) = rtrb::RingBuffer::<Returned>::new(8);
    let received = |calls: &[(SendSlot, FrameSender, UdpSocket)]| -> Vec<usize> {
        let mut buf = [0u8; 2048];
        calls
            .iter()
            .map(|(_, _, r)| std::iter::from_fn(|| r.recv(&mut buf).ok()).count())
            .collect()
    };
    assert_eq!(core.run_tick(1), 0);
    assert_eq!(core.awake_count(), 0);
    // Calls 1 and 3 speak; 0 and 2 stay parked.
    for t in 2..4 {
        for index in [1, 3] {
            calls[index].1.push(&audio(t)).unwrap(); // invariant: room
        }
        assert_eq!(core.run_tick(t), 2);
    }
    assert_eq!(core.awake_count(), 2);
    assert_eq!(received(&calls), [0, 2, 0, 2]);
    // Remove a parked call (0) and an awake one (3).
    core.apply(Command::Remove(calls[0].0), &mut garbage);
    core.apply(Command::Remove(calls[3].0), &mut garbage);
    assert_eq!((core.call_count(), core.awake_count()), (2, 1));
    assert_eq!(
        std::iter::from_fn(|| garbage_rx.pop().ok()).count(),
        2,
        "both removed calls came back"
    );
    // The remaining parked call (2) wakes; the awake one (1) keeps speaking.
    for index in [1, 2] {
        calls[index].1.push(&audio(4)).unwrap(); // invariant: room
    }
    assert_eq!(core.run_tick(4), 2);
    assert_eq!(received(&calls), [0, 1, 1, 0]);
    assert_eq!(core.awake_count(), 2);
}
