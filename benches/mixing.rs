//! Mixer cost per tick: one call with 1, 8 and 64 sources at 48 kHz and 44.1 kHz, with and
//! without the libopus encode, and 100 calls of one source each. Each iteration is one 20 ms
//! tick, including writing that tick's input into the sources' rings.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use quaver::engine::{Engine, EngineConfig, FrameReceiver, Mixer, PcmFormat, PcmWriter};

struct Fixture {
    _engine: Engine,
    mixer: Mixer,
    writers: Vec<(PcmWriter, Vec<f32>)>,
    queues: Vec<FrameReceiver>,
}

fn fixture(calls: usize, sources_per_call: usize, rate: u32, encode: bool) -> Fixture {
    let config = EngineConfig {
        max_calls: calls,
        max_sources_per_call: sources_per_call,
        ..EngineConfig::default()
    };
    let (engine, mut mixer) = Engine::manual(config).unwrap();
    mixer.set_encoding(encode);
    let mut writers = Vec::new();
    let mut queues = Vec::new();
    for _ in 0..calls {
        let (call, queue) = engine.create_call().unwrap();
        queues.push(queue);
        for n in 0..sources_per_call {
            let (handle, writer) = engine
                .push_source(call, PcmFormat::new(rate, 2).unwrap())
                .unwrap();
            handle.set_volume(0.5);
            // Slightly more than one tick of input, so the resampler never runs dry.
            let frames = rate as usize / 50 + 2;
            let freq = 200.0 + 37.0 * n as f32;
            let chunk = (0..frames * 2)
                .map(|i| ((i / 2) as f32 * freq / rate as f32 * std::f32::consts::TAU).sin() * 0.3)
                .collect();
            writers.push((writer, chunk));
        }
    }
    let mut fixture = Fixture {
        _engine: engine,
        mixer,
        writers,
        queues,
    };
    // Warm up: prebuffer every source and fill the resamplers' delay lines.
    for _ in 0..5 {
        step(&mut fixture);
    }
    fixture
}

fn step(f: &mut Fixture) {
    for (writer, chunk) in f.writers.iter_mut() {
        let _ = writer.write_f32(chunk);
    }
    black_box(f.mixer.tick());
    for queue in f.queues.iter_mut() {
        while let Some(len) = queue.pop_with(|_, opus| opus.len()) {
            black_box(len);
        }
    }
}

fn one_call(c: &mut Criterion) {
    let mut group = c.benchmark_group("tick_one_call");
    for encode in [false, true] {
        for rate in [48_000, 44_100] {
            for sources in [1, 8, 64] {
                let label = format!(
                    "{}_{}k",
                    if encode { "encode" } else { "mix_only" },
                    rate / 1000
                );
                let mut f = fixture(1, sources, rate, encode);
                group.bench_function(BenchmarkId::new(label, sources), |b| {
                    b.iter(|| step(&mut f))
                });
            }
        }
    }
    group.finish();
}

fn hundred_calls(c: &mut Criterion) {
    let mut group = c.benchmark_group("tick_100_calls_1_source");
    group.sample_size(20);
    for encode in [false, true] {
        let mut f = fixture(100, 1, 44_100, encode);
        group.bench_function(if encode { "encode_44k" } else { "mix_only_44k" }, |b| {
            b.iter(|| step(&mut f))
        });
    }
    group.finish();
}

criterion_group!(benches, one_call, hundred_calls);
criterion_main!(benches);
