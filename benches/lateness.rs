//! Sender lateness for 100 calls on loopback: runs the real sender thread for a few seconds per
//! configuration and prints p50/p99/max of
//! * sender-side lateness (packet handed to the kernel − its grid deadline), from the sender's
//!   own histogram, and
//! * receiver-side lateness (arrival at a loopback socket − deadline), measured here.
//!
//! Configurations: io_uring and portable, each with real-time priority (if the process may) and
//! without (custom slice). A feeder thread plays the mixer, keeping every call's queue a few
//! frames ahead. `QUAVER_LATENESS_BUSY_POLL=1` makes the receiver spin instead of block.
//! `QUAVER_LATENESS_CALLS` changes the number of calls (default 100). The receiving thread runs at real-time priority when allowed; its own wake-up
//! latency is part of the receiver-side numbers. Run with `cargo bench --bench lateness`; `QUAVER_LATENESS_SECS` sets the length.

use std::collections::HashMap;
use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use quaver::engine::frame::frame_queue;
use quaver::engine::{EncodedFrame, FrameSignal, Grid};
use quaver::net::crypto::{EncryptionMode, SecretKey};
use quaver::net::pacer::SchedulingRequest;
use quaver::net::{BackendChoice, CallConfig, Sender, SenderConfig};

fn run(backend: BackendChoice, realtime: bool, secs: u64, calls: usize) {
    let grid = Grid::new(Instant::now());
    let mut config = SenderConfig::new(grid);
    config.backend = backend;
    if !realtime {
        config.scheduling = SchedulingRequest {
            fifo_priority: None,
            ..SchedulingRequest::default()
        };
    }
    let mut sender = Sender::spawn(config).expect("sender starts");
    let label = format!(
        "{calls} calls, {:?} / {:?}",
        sender.backend(),
        sender.pacing()
    );

    let receiver = UdpSocket::bind("127.0.0.1:0").expect("loopback bind");
    // A whole tick of 100 packets arrives as one burst: make room so none is dropped.
    socket2::SockRef::from(&receiver)
        .set_recv_buffer_size(8 << 20)
        .expect("SO_RCVBUF");
    receiver
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    // Busy-polling keeps the receiver awake, so the sender does not pay for waking it (a
    // cross-CPU wake-up of an idle vCPU costs tens of µs in the sending syscall here).
    let busy_poll = std::env::var_os("QUAVER_LATENESS_BUSY_POLL").is_some();
    receiver.set_nonblocking(busy_poll).expect("nonblocking");
    let start = grid.tick_at_or_after(Instant::now()) + 10;
    let mut producers = Vec::new();
    // One signal for every queue, as an engine's calls have.
    let signal = Arc::new(FrameSignal::default());
    for i in 0..calls {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("loopback bind");
        socket
            .connect(receiver.local_addr().expect("bound"))
            .expect("connect");
        let (tx, rx) = frame_queue(16, &signal);
        sender
            .add_call(CallConfig {
                ssrc: i as u32,
                socket: Arc::new(socket),
                mode: EncryptionMode::Aes256GcmRtpSize,
                key: SecretKey::new([1; 32]),
                frames: rx,
            })
            .expect("added");
        producers.push(tx);
    }
    let end = start + secs * 50;
    let done = Arc::new(AtomicBool::new(false));
    let feeder_done = Arc::clone(&done);
    let feeder = std::thread::spawn(move || {
        let opus = [0x33u8; 240];
        let mut next = start;
        while next < end && !feeder_done.load(Ordering::Relaxed) {
            let now_tick = grid.tick_at_or_after(Instant::now());
            while next < end && next <= now_tick + 3 {
                let frame = EncodedFrame::from_packet(next, &opus).expect("small");
                for p in &mut producers {
                    let _ = p.push(&frame);
                }
                next += 1;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });

    let mut recv_hist = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).expect("bounds");
    // Lateness of the first packet of each tick at the receiver: pacing precision without the
    // serialisation of the rest of the batch.
    let mut first_hist = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).expect("bounds");
    let mut seen_ticks = std::collections::HashSet::new();
    let mut first_ts: HashMap<u32, u32> = HashMap::new();
    let mut buf = [0u8; 2048];
    let mut received = 0u64;
    let expected = (end - start) * calls as u64;
    while received < expected {
        let n = match receiver.recv(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && busy_poll => {
                if Instant::now() > grid.deadline(end) + Duration::from_secs(2) {
                    break;
                }
                std::hint::spin_loop();
                continue;
            }
            Err(_) => break,
        };
        let arrived = Instant::now();
        if n < 12 {
            continue;
        }
        let ts = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
        let ssrc = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
        let ts0 = *first_ts.entry(ssrc).or_insert(ts);
        let tick = start + u64::from(ts.wrapping_sub(ts0) / 960);
        let late = arrived.saturating_duration_since(grid.deadline(tick));
        recv_hist.saturating_record(late.as_nanos() as u64);
        if seen_ticks.insert(tick) {
            first_hist.saturating_record(late.as_nanos() as u64);
        }
        received += 1;
    }
    done.store(true, Ordering::Relaxed);
    let _ = feeder.join();
    let stats = sender.shutdown();
    let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{label}: {received}/{expected} packets; pacer wake-up vs deadline p50 {:.1} µs p99 {:.1} µs; sender lateness p50 {:.1} µs p99 {:.1} µs max {:.1} µs; \
         receiver lateness p50 {:.1} µs p99 {:.1} µs max {:.1} µs \
         (first packet of each tick p50 {:.1} µs p99 {:.1} µs); tick work p50 {:.1} µs p99 {:.1} µs; \
         late frames {}, send errors {}",
        us(&stats.wake_ns, 0.5),
        us(&stats.wake_ns, 0.99),
        us(&stats.lateness_ns, 0.5),
        us(&stats.lateness_ns, 0.99),
        stats.lateness_ns.max() as f64 / 1000.0,
        us(&recv_hist, 0.5),
        us(&recv_hist, 0.99),
        recv_hist.max() as f64 / 1000.0,
        us(&first_hist, 0.5),
        us(&first_hist, 0.99),
        us(&stats.tick_work_ns, 0.5),
        us(&stats.tick_work_ns, 0.99),
        stats.late_frames,
        stats.send_errors,
    );
}

fn main() {
    // The measuring receiver gets the same scheduling as the sender (FIFO when allowed) so that
    // its own wake-up latency distorts the receiver-side numbers as little as possible.
    let receiver_mode = quaver::net::pacer::configure_current_thread(SchedulingRequest::default());
    println!("receiver thread: {receiver_mode:?}");
    // `cargo bench` passes `--bench`; a filter argument is not supported here.
    let secs = std::env::var("QUAVER_LATENESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let calls = std::env::var("QUAVER_LATENESS_CALLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    for backend in [BackendChoice::IoUring, BackendChoice::Portable] {
        for realtime in [true, false] {
            run(backend, realtime, secs, calls);
        }
    }
}
