//! Per-tick send cost on loopback: the sender's core builds, seals and sends one packet for each
//! of 1, 100, 1,000 and 10,000 calls, through io_uring and through the portable fallback.
//! Only `run_tick` is timed; queueing the frames (the mixer's work) is not.
//!
//! Each call has its own UDP socket connected to one of a few sink sockets that are never read:
//! once their receive buffers fill, the kernel drops the datagrams after the full send path.

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use quaver::engine::frame::frame_queue;
use quaver::engine::{EncodedFrame, FrameSignal, Grid};
use quaver::net::crypto::{EncryptionMode, SecretKey};
use quaver::net::{BackendChoice, BackendKind, CallConfig, SenderCore};

struct Setup {
    core: SenderCore,
    producers: Vec<quaver::engine::FrameSender>,
    _sinks: Vec<UdpSocket>,
    tick: u64,
}

fn setup(backend: BackendChoice, calls: usize) -> Option<Setup> {
    let grid = Grid::new(Instant::now());
    let (mut core, _events) = SenderCore::new(grid, backend, calls, 1024).ok()?;
    let sinks: Vec<UdpSocket> = (0..8)
        .map(|_| UdpSocket::bind("127.0.0.1:0").expect("loopback bind"))
        .collect();
    let mut producers = Vec::with_capacity(calls);
    // One signal for every queue, as an engine's calls have.
    let signal = Arc::new(FrameSignal::default());
    for i in 0..calls {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("loopback bind");
        socket
            .connect(sinks[i % sinks.len()].local_addr().expect("bound"))
            .expect("connect");
        let (tx, rx) = frame_queue(4, &signal);
        core.add_call(CallConfig {
            ssrc: i as u32,
            socket: Arc::new(socket),
            mode: EncryptionMode::Aes256GcmRtpSize,
            key: SecretKey::new([9; 32]),
            frames: rx,
        })
        .expect("within max_calls");
        producers.push(tx);
    }
    Some(Setup {
        core,
        producers,
        _sinks: sinks,
        tick: 1,
    })
}

fn tick_cost(c: &mut Criterion) {
    let opus = [0x5Au8; 240];
    let mut group = c.benchmark_group("send_tick");
    group.warm_up_time(Duration::from_secs(1));
    for calls in [1usize, 100, 1_000, 10_000] {
        if calls >= 1_000 {
            group.sample_size(20);
            group.measurement_time(Duration::from_secs(4));
        } else {
            group.sample_size(50);
            group.measurement_time(Duration::from_secs(3));
        }
        group.throughput(Throughput::Elements(calls as u64));
        for (name, backend) in [
            ("io_uring", BackendChoice::IoUring),
            ("portable", BackendChoice::Portable),
        ] {
            let Some(mut s) = setup(backend, calls) else {
                eprintln!("{name} unavailable here; skipped");
                continue;
            };
            if backend == BackendChoice::IoUring {
                assert_eq!(s.core.backend(), BackendKind::IoUring);
            }
            group.bench_with_input(BenchmarkId::new(name, calls), &calls, |b, _| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let frame = EncodedFrame::from_packet(s.tick, &opus).expect("small");
                        for p in &mut s.producers {
                            p.push(&frame).expect("one frame per tick fits");
                        }
                        let t0 = Instant::now();
                        let sent = s.core.run_tick(s.tick);
                        total += t0.elapsed();
                        assert_eq!(sent, calls);
                        s.tick += 1;
                    }
                    total
                });
            });
        }
    }
    group.finish();
}

criterion_group!(benches, tick_cost);
criterion_main!(benches);
