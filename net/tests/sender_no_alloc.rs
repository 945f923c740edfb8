//! Proves the sender thread does not allocate or free after start-up: a counting global allocator
//! counts heap operations made on the sender thread between its start and exit hooks, while the
//! thread runs ~100 ticks with many calls, calls added and removed, a re-key, end-of-stream
//! silence, failing sends, DAVE keys installed, replaced (new epoch and same epoch) and
//! removed mid-run, and quiet calls parked and woken again by a frame.

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use quaver_engine::frame::frame_queue;
use quaver_engine::{EncodedFrame, FrameKind, FrameSender, FrameSignal, Grid};
use quaver_net::crypto::{EncryptionMode, SecretKey};
use quaver_net::dave::SenderKey;
use quaver_net::pacer::SchedulingRequest;
use quaver_net::{BackendChoice, CallConfig, Sender, SenderConfig, SenderEvent};

#[path = "common/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::{allocations, frees, start_watching, stop_watching};

/// Every call's queue rings this one signal, as an engine's do.
fn signal() -> &'static Arc<FrameSignal> {
    static SIGNAL: std::sync::OnceLock<Arc<FrameSignal>> = std::sync::OnceLock::new();
    SIGNAL.get_or_init(Arc::default)
}

/// Queues `frames` frames from tick `start` on, then an end-of-stream marker if asked.
fn feed(tx: &mut FrameSender, start: u64, frames: u64, end_of_stream: bool) {
    for i in 0..frames {
        tx.push(&EncodedFrame::from_packet(start + i, &[7; 120]).expect("small"))
            .expect("room");
    }
    if end_of_stream {
        tx.push(&EncodedFrame::new(start + frames, FrameKind::EndOfStream))
            .expect("room");
    }
}

fn call(
    sender: &mut Sender,
    receiver: &UdpSocket,
    start: u64,
    frames: u64,
    end_of_stream: bool,
) -> (quaver_net::SendSlot, FrameSender) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("loopback bind");
    socket
        .connect(receiver.local_addr().expect("bound"))
        .expect("connect");
    let (mut tx, rx) = frame_queue(256, signal());
    feed(&mut tx, start, frames, end_of_stream);
    let id = sender
        .add_call(CallConfig {
            ssrc: rand_ssrc(),
            socket: Arc::new(socket),
            mode: EncryptionMode::Aes256GcmRtpSize,
            key: SecretKey::new([3; 32]),
            frames: rx,
        })
        .expect("added");
    (id, tx)
}

fn rand_ssrc() -> u32 {
    static NEXT: AtomicUsize = AtomicUsize::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed) as u32
}

#[test]
fn sender_thread_never_allocates_after_start_up() {
    for backend in [BackendChoice::Auto, BackendChoice::Portable] {
        counting_alloc::reset();
        let grid = Grid::new(Instant::now());
        let mut config = SenderConfig::new(grid);
        config.backend = backend;
        config.scheduling = SchedulingRequest {
            fifo_priority: None,
            ..SchedulingRequest::default()
        };
        config.max_calls = 64;
        // Small event queue so that overflow (dropped events) is exercised too.
        config.event_capacity = 16;
        config.on_thread_start = Some(start_watching);
        config.on_thread_exit = Some(stop_watching);
        let mut sender = Sender::spawn(config).expect("sender starts");
        let receiver = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let start = grid.tick_at_or_after(Instant::now()) + 2;
        let mut producers = Vec::new();
        let mut ids = Vec::new();
        for k in 0..20u64 {
            // Some calls end early (silence + speaking stopped), some run long.
            let (id, tx) = call(&mut sender, &receiver, start, 20 + 4 * k, k % 3 == 0);
            ids.push(id);
            producers.push(tx);
        }
        // A call whose sends fail.
        let dead = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let (bad, bad_tx) = call(&mut sender, &dead, start, 60, false);
        drop(dead);
        producers.push(bad_tx);
        // DAVE on for half of the calls before the first frames.
        for (i, &id) in ids.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
            sender
                .set_dave_key(id, Some(SenderKey::new(1, [i as u8; 16])))
                .expect("queue has room");
        }

        // Mid-run: late frames, new calls, removals and a re-key, all while ticking.
        std::thread::sleep(Duration::from_millis(400));
        let now_tick = grid.tick_at_or_after(Instant::now());
        for _ in 0..5 {
            let (id, tx) = call(&mut sender, &receiver, now_tick.saturating_sub(3), 30, true);
            ids.push(id);
            producers.push(tx);
        }
        // Calls that stay: 6 and 8 and 10 got epoch-1 keys above, 7 none.
        let (same, next_epoch, off, first) = (ids[6], ids[8], ids[10], ids[7]);
        for id in ids.drain(..5) {
            sender.remove_call(id).expect("queue has room");
        }
        sender
            .rekey(
                ids[0],
                EncryptionMode::XChaCha20Poly1305RtpSize,
                &SecretKey::new([4; 32]),
            )
            .expect("queue has room");
        // DAVE key changes while frames flow: a new epoch, the same epoch again, a removal, and
        // a first key on a call that had none.
        std::thread::sleep(Duration::from_millis(200));
        sender
            .set_dave_key(same, Some(SenderKey::new(1, [6; 16])))
            .expect("queue has room");
        sender
            .set_dave_key(next_epoch, Some(SenderKey::new(2, [0x20; 16])))
            .expect("queue has room");
        sender.set_dave_key(off, None).expect("queue has room");
        sender
            .set_dave_key(first, Some(SenderKey::new(3, [0x30; 16])))
            .expect("queue has room");
        std::thread::sleep(Duration::from_millis(200));
        for id in [same, next_epoch, off, first] {
            sender
                .set_dave_key(id, Some(SenderKey::new(4, [0x40; 16])))
                .expect("queue has room");
        }
        sender
            .set_dave_key(same, Some(SenderKey::new(4, [0x40; 16])))
            .expect("queue has room");
        std::thread::sleep(Duration::from_millis(800));
        // Call 6 and the first call added mid-run ended long ago and are parked: frames
        // wake them.
        let now_tick = grid.tick_at_or_after(Instant::now());
        for index in [6, 21] {
            feed(&mut producers[index], now_tick + 2, 5, true);
        }
        std::thread::sleep(Duration::from_millis(400));
        let mut saw_error = false;
        let mut dave_events = 0;
        while let Some(e) = sender.poll_event() {
            saw_error |= matches!(e, SenderEvent::SendFailed { call, .. } if call == bad);
            dave_events += usize::from(matches!(
                e,
                SenderEvent::DaveKeyInstalled { .. } | SenderEvent::DaveKeyRemoved { .. }
            ));
        }
        let stats = sender.shutdown();
        let allocs = allocations();
        let frees = frees();
        eprintln!(
            "{backend:?}: {} packets ({} DAVE frames), {} errors, {} late frames, {} ticks, {} parked, {} woken; {allocs} allocations, {frees} frees on the sender thread",
            stats.packets_sent,
            stats.dave_frames,
            stats.send_errors,
            stats.late_frames,
            stats.ticks,
            stats.calls_parked,
            stats.calls_woken
        );
        assert!(stats.packets_sent > 500, "the run did real work");
        assert!(
            stats.dave_frames > 100,
            "DAVE encryption ran: {}",
            stats.dave_frames
        );
        assert_eq!(stats.dave_errors, 0);
        assert!(stats.calls_parked > 0, "quiet calls were parked");
        // Both are woken unless one was still finishing its silence (a stalled thread).
        assert!(stats.calls_woken > 0, "parked calls were woken");
        // The event queue is small and overflows on purpose, so only check that key changes
        // were applied at all (each is confirmed by an event unless the queue was full).
        assert!(dave_events > 0 || stats.events_dropped > 0);
        assert!(
            stats.send_errors > 0 || saw_error,
            "failing sends were exercised"
        );
        assert_eq!(allocs, 0, "sender thread allocated after start-up");
        assert_eq!(frees, 0, "sender thread freed memory after start-up");
    }
}
