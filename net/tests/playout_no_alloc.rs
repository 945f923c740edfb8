//! Proves the playout buffer and its decoder allocate nothing after `new`: a counting global
//! allocator counts heap operations on this thread while ~1,000 ticks push and pull real Opus
//! packets through loss, reordering, duplicates, late packets, refused packets, a pause, a jitter
//! spike (stall and shrink), a sender restart and a reset, rendering each tick with decode, FEC
//! and PLC.

use std::time::{Duration, Instant};

use audiopus::coder::Encoder;
use audiopus::{Application, Bitrate, Channels, SampleRate, Signal};
use quaver_net::playout::{PCM_SAMPLES, Playout, PlayoutConfig, Pushed, Rendered, StreamDecoder};

#[path = "common/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::{allocations, frees, start_watching, stop_watching};

/// 20 ms packets of a 330 Hz sine under a syllable-like envelope (SILK's voice-activity
/// detector takes a steady tone for noise and then stops sending LBRR), VoIP with in-band FEC,
/// so FEC decoding is exercised.
fn packets(n: usize) -> Vec<Vec<u8>> {
    let mut encoder =
        Encoder::new(SampleRate::Hz48000, Channels::Stereo, Application::Voip).expect("encoder");
    encoder
        .set_bitrate(Bitrate::BitsPerSecond(32_000))
        .expect("bitrate");
    encoder.set_signal(Signal::Voice).expect("signal");
    encoder.set_inband_fec(true).expect("fec");
    encoder.set_packet_loss_perc(10).expect("loss");
    let mut pcm = [0i16; PCM_SAMPLES];
    let mut out = [0u8; 1500];
    (0..n)
        .map(|frame| {
            for i in 0..960 {
                let t = (frame * 960 + i) as f64 / 48_000.0;
                let envelope = 0.05 + 0.95 * (std::f64::consts::PI * 3.0 * t).sin().abs();
                let v =
                    (envelope * 12_000.0 * (2.0 * std::f64::consts::PI * 330.0 * t).sin()) as i16;
                pcm[2 * i] = v;
                pcm[2 * i + 1] = v;
            }
            let len = encoder.encode(&pcm, &mut out).expect("encode");
            out[..len].to_vec()
        })
        .collect()
}

/// (arrival in µs, sequence, timestamp, packet index or a special packet)
type Event = (u64, u16, u32, Payload);

#[derive(Clone, Copy)]
enum Payload {
    Opus(usize),
    Silence,
    Garbage,
}

#[test]
fn push_pull_and_render_never_allocate() {
    let opus = packets(900);
    let mut events: Vec<Event> = Vec::new();
    let mut add = |i: u64, at_extra: u64, seq: u16, ts: u32, p: Payload| {
        events.push((i * 20_000 + 3_000 + at_extra, seq, ts, p));
    };
    for i in 0..900u64 {
        // Numbering continues across the pause below (packets 305–344 are never sent).
        let seq = 65_000u16.wrapping_add(i as u16 - if i >= 345 { 40 } else { 0 });
        let ts = (i as u32).wrapping_mul(960);
        match i {
            // losses: single, double (where the envelope is loud, so the next packet has LBRR)
            110 | 210 | 211 => continue,
            // reordered, then late
            160 => add(i, 25_000, seq, ts, Payload::Opus(i as usize)),
            260 => add(i, 150_000, seq, ts, Payload::Opus(i as usize)),
            // silence then a pause of 40 frames (sequence continues, timestamp jumps)
            300..=304 => add(i, 0, seq, ts, Payload::Silence),
            305..=344 => continue,
            // a jitter spike: held back and released together
            400..=403 => add(404, 0, seq, ts, Payload::Opus(i as usize)),
            // a refused packet
            510 => add(i, 0, seq, ts, Payload::Garbage),
            _ => add(i, 0, seq, ts, Payload::Opus(i as usize)),
        }
        if i % 97 == 0 {
            add(i, 7_000, seq, ts, Payload::Opus(i as usize));
        }
    }
    events.sort_by_key(|e| e.0);

    let mut playout = Playout::new(&PlayoutConfig::default());
    let mut decoder = StreamDecoder::new().expect("decoder");
    let mut out = [0i16; PCM_SAMPLES];
    let base = Instant::now();
    let garbage = [0xFAu8, 200, 1, 2];
    let silence = [0xF8u8, 0xFF, 0xFE];
    let mut restarted = false;
    let mut audio = 0u64;
    let mut next_event = 0;

    start_watching();
    for k in 0..1_000u64 {
        let tick = k * 20_000 + 10_000;
        while let Some(&(at, seq, ts, payload)) = events.get(next_event).filter(|e| e.0 <= tick) {
            let bytes: &[u8] = match payload {
                Payload::Opus(i) => &opus[i],
                Payload::Silence => &silence,
                Payload::Garbage => &garbage,
            };
            let pushed = playout.push(base + Duration::from_micros(at), seq, ts, bytes);
            if pushed == Pushed::Restarted {
                decoder.reset();
            }
            next_event += 1;
        }
        if k == 700 {
            // A sender restart far ahead, then a reset of the stream.
            restarted = playout.push(base + Duration::from_micros(tick), 1_000, 0, &silence)
                == Pushed::Restarted;
            playout.reset();
            decoder.reset();
        }
        let next = playout.pull(base + Duration::from_micros(tick));
        let rendered = decoder.render(&next, &mut out);
        playout.count(rendered);
        let _ = playout.take_edge();
        audio += u64::from(rendered != Rendered::Idle);
    }
    stop_watching();

    let stats = *playout.stats();
    let allocs = allocations();
    let frees = frees();
    eprintln!("{stats:?}; {audio} audio frames; {allocs} allocations, {frees} frees");
    assert!(restarted);
    assert!(stats.played > 600, "the run did real work");
    assert!(stats.fec_recovered > 0 && stats.concealed > 0 && stats.stalled > 0);
    assert!(stats.duplicates > 0 && stats.late > 0 && stats.rejected > 0);
    assert!(stats.started >= 3 && stats.stopped >= 2);
    assert!(stats.skipped > 0, "the delay shrank after the spike");
    assert_eq!(allocs, 0, "playout or decoder allocated after new()");
    assert_eq!(frees, 0, "playout or decoder freed memory after new()");
}
