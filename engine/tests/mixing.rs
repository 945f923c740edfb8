//! The engine end to end in manual mode: real sources, real resampling, real libopus; frames are
//! decoded back with libopus and measured.

use std::io::Write;
use std::time::Duration;

use quaver_engine::{
    EndReason, Engine, EngineConfig, Error, Event, FileOptions, FrameKind, FrameReceiver, Mixer,
    PcmFormat, SourceOptions,
};

fn manual(max_sources: usize) -> (Engine, Mixer) {
    let config = EngineConfig {
        max_calls: 4,
        max_sources_per_call: max_sources,
        ..EngineConfig::default()
    };
    Engine::manual(config).unwrap()
}

fn sine(rate: u32, channels: usize, freq: f64, amplitude: f32, seconds: f64) -> Vec<f32> {
    let frames = (f64::from(rate) * seconds) as usize;
    (0..frames)
        .flat_map(|i| {
            let v = (2.0 * std::f64::consts::PI * freq * i as f64 / f64::from(rate)).sin() as f32
                * amplitude;
            std::iter::repeat_n(v, channels)
        })
        .collect()
}

/// Decodes the call's audio frames (48 kHz, left channel); also returns the frame kinds seen.
struct Decoded {
    left: Vec<f32>,
    kinds: Vec<FrameKind>,
    packets: Vec<Vec<u8>>,
}

fn decode_all(
    frames: &mut FrameReceiver,
    decoder: &mut audiopus::coder::Decoder,
    out: &mut Decoded,
) {
    while let Some(frame) = frames.pop() {
        out.kinds.push(frame.kind);
        if frame.kind != FrameKind::Audio {
            continue;
        }
        out.packets.push(frame.opus().to_vec());
        let mut pcm = vec![0.0_f32; 1920];
        let packet = audiopus::packet::Packet::try_from(frame.opus()).unwrap();
        let signals = audiopus::MutSignals::try_from(&mut pcm[..]).unwrap();
        let n = decoder.decode_float(Some(packet), signals, false).unwrap();
        out.left.extend(pcm[..n * 2].chunks_exact(2).map(|p| p[0]));
    }
}

fn new_decoder() -> audiopus::coder::Decoder {
    audiopus::coder::Decoder::new(audiopus::SampleRate::Hz48000, audiopus::Channels::Stereo)
        .unwrap()
}

/// A 48 kHz stereo source whose ring holds a whole second, so a test can write its input at once.
fn one_second_source(
    engine: &Engine,
    call: quaver_engine::CallId,
) -> (quaver_engine::SourceHandle, quaver_engine::PcmWriter) {
    let options = SourceOptions {
        buffer: Duration::from_secs(1),
        ..Default::default()
    };
    engine
        .push_source_with(call, PcmFormat::STEREO_48K, options)
        .unwrap()
}

fn tone_power(signal: &[f32], freq: f64) -> f64 {
    quaver_engine::analysis::tone_power(signal, freq, 48_000)
}

fn run(
    engine: &Engine,
    mixer: &mut Mixer,
    ticks: usize,
    frames: &mut FrameReceiver,
    out: &mut Decoded,
) -> Vec<Event> {
    let mut decoder = new_decoder();
    let mut events = Vec::new();
    for _ in 0..ticks {
        engine.housekeep();
        mixer.tick();
        decode_all(frames, &mut decoder, out);
    }
    engine.housekeep();
    events.extend(engine.events().try_iter());
    events
}

fn empty() -> Decoded {
    Decoded {
        left: Vec::new(),
        kinds: Vec::new(),
        packets: Vec::new(),
    }
}

#[test]
fn two_tones_at_different_rates_mix_at_the_right_frequencies() {
    let (engine, mut mixer) = manual(8);
    let (call, mut frames) = engine.create_call().unwrap();
    let (_a, mut low) = engine
        .push_source(call, PcmFormat::new(44_100, 2).unwrap())
        .unwrap();
    let (_b, mut high) = engine
        .push_source_with(
            call,
            PcmFormat::new(22_050, 1).unwrap(),
            SourceOptions {
                buffer: Duration::from_secs(2),
                ..Default::default()
            },
        )
        .unwrap();
    let (_c, mut i16_source) = engine.push_source(call, PcmFormat::STEREO_48K).unwrap();
    let mut out = empty();
    let low_tone = sine(44_100, 2, 440.0, 0.3, 1.0);
    let high_tone = sine(22_050, 1, 1_500.0, 0.3, 1.0);
    let i16_tone: Vec<i16> = sine(48_000, 2, 3_000.0, 0.3, 1.0)
        .iter()
        .map(|s| (s * 32_767.0) as i16)
        .collect();
    // Write in 20 ms pieces, as a live producer would.
    let (mut lp, mut hp, mut ip) = (0, 0, 0);
    let mut decoder = new_decoder();
    for _ in 0..50 {
        lp += low
            .write_f32(&low_tone[lp..(lp + 1_764).min(low_tone.len())])
            .unwrap();
        hp += high
            .write_f32(&high_tone[hp..(hp + 441).min(high_tone.len())])
            .unwrap();
        ip += i16_source
            .write_i16(&i16_tone[ip..(ip + 1_920).min(i16_tone.len())])
            .unwrap();
        engine.housekeep();
        mixer.tick();
        decode_all(&mut frames, &mut decoder, &mut out);
    }
    let steady = &out.left[9_600..];
    let p440 = tone_power(steady, 440.0);
    let p1500 = tone_power(steady, 1_500.0);
    let p3000 = tone_power(steady, 3_000.0);
    let p_off = tone_power(steady, 900.0);
    assert!(p440 > 100.0 * p_off, "440 Hz missing: {p440} vs {p_off}");
    assert!(p1500 > 100.0 * p_off, "1500 Hz missing: {p1500} vs {p_off}");
    assert!(
        p3000 > 100.0 * p_off,
        "3000 Hz (i16 input) missing: {p3000} vs {p_off}"
    );
}

#[test]
fn a_finished_source_drains_then_ends_with_an_event_and_an_end_of_stream_marker() {
    let (engine, mut mixer) = manual(4);
    let (call, mut frames) = engine.create_call().unwrap();
    let (handle, mut writer) = engine
        .push_source(call, PcmFormat::new(44_100, 2).unwrap())
        .unwrap();
    let tone = sine(44_100, 2, 440.0, 0.5, 0.1); // 100 ms: five frames and a bit
    assert_eq!(writer.write_f32(&tone).unwrap(), tone.len());
    writer.finish();
    let mut out = empty();
    let events = run(&engine, &mut mixer, 12, &mut frames, &mut out);
    let audio = out.kinds.iter().filter(|k| **k == FrameKind::Audio).count();
    // 100 ms of input plus the resampler's flushed tail.
    assert!((5..=7).contains(&audio), "{audio} audio frames");
    assert_eq!(out.kinds.last(), Some(&FrameKind::EndOfStream));
    assert_eq!(
        out.kinds
            .iter()
            .filter(|k| **k == FrameKind::EndOfStream)
            .count(),
        1
    );
    assert!(events.contains(&Event::SourceEnded {
        call,
        source: handle.id(),
        reason: EndReason::Finished
    }));
    assert!(handle.is_ended());
    assert_eq!(handle.stats().underruns, 0);
}

#[test]
fn underruns_are_counted_and_filled_with_silence_without_stopping_the_call() {
    let (engine, mut mixer) = manual(4);
    let (call, mut frames) = engine.create_call().unwrap();
    let (handle, mut writer) = engine.push_source(call, PcmFormat::STEREO_48K).unwrap();
    let (steady, mut steady_writer) = engine.push_source(call, PcmFormat::STEREO_48K).unwrap();
    writer
        .write_f32(&sine(48_000, 2, 440.0, 0.3, 0.04))
        .unwrap(); // two frames, then nothing
    steady_writer
        .write_f32(&sine(48_000, 2, 660.0, 0.3, 0.1))
        .unwrap();
    let mut out = empty();
    run(&engine, &mut mixer, 5, &mut frames, &mut out);
    assert_eq!(
        out.kinds.iter().filter(|k| **k == FrameKind::Audio).count(),
        5
    );
    assert_eq!(handle.stats().underruns, 3);
    assert_eq!(handle.stats().frames_mixed, 5);
    assert_eq!(steady.stats().underruns, 0);
    assert!(
        !handle.is_ended(),
        "an underrun must not end a source whose producer is still there"
    );
}

#[test]
fn pause_stops_consuming_and_stop_ends_the_source() {
    let (engine, mut mixer) = manual(4);
    let (call, mut frames) = engine.create_call().unwrap();
    let (handle, mut writer) = engine.push_source(call, PcmFormat::STEREO_48K).unwrap();
    writer.write_f32(&sine(48_000, 2, 440.0, 0.3, 0.1)).unwrap();
    let mut out = empty();
    run(&engine, &mut mixer, 2, &mut frames, &mut out);
    handle.pause();
    run(&engine, &mut mixer, 5, &mut frames, &mut out);
    // One fade-out frame after pausing, then nothing consumed and the call goes quiet.
    assert_eq!(handle.stats().frames_mixed, 3);
    assert_eq!(out.kinds.last(), Some(&FrameKind::EndOfStream));
    handle.resume();
    run(&engine, &mut mixer, 1, &mut frames, &mut out);
    assert_eq!(handle.stats().frames_mixed, 4);
    handle.stop();
    let events = run(&engine, &mut mixer, 3, &mut frames, &mut out);
    assert!(events.contains(&Event::SourceEnded {
        call,
        source: handle.id(),
        reason: EndReason::Stopped
    }));
    assert!(matches!(
        writer.write_f32(&[0.0, 0.0]),
        Err(Error::SourceEnded)
    ));
}

#[test]
fn volume_changes_take_effect_within_a_frame() {
    let (engine, mut mixer) = manual(4);
    let (call, mut frames) = engine.create_call().unwrap();
    let (handle, mut writer) = one_second_source(&engine, call);
    writer
        .write_f32(&sine(48_000, 2, 1_000.0, 0.5, 0.8))
        .unwrap();
    let mut out = empty();
    run(&engine, &mut mixer, 15, &mut frames, &mut out);
    handle.set_volume(0.1);
    run(&engine, &mut mixer, 15, &mut frames, &mut out);
    let rms = quaver_engine::analysis::rms;
    let loud = rms(&out.left[4_800..14_400]);
    let quiet = rms(&out.left[19_200..28_800]);
    let ratio = quiet / loud;
    assert!(
        (0.08..0.12).contains(&ratio),
        "volume 0.1 gave ratio {ratio}"
    );
}

#[test]
fn sixty_four_loud_sources_neither_wrap_nor_square_off() {
    let (engine, mut mixer) = manual(64);
    let (call, mut frames) = engine.create_call().unwrap();
    let tone = sine(48_000, 2, 500.0, 1.0, 0.5);
    let mut writers = Vec::new();
    for _ in 0..64 {
        let (_, mut writer) = one_second_source(&engine, call);
        writer.write_f32(&tone).unwrap();
        writers.push(writer);
    }
    let mut out = empty();
    run(&engine, &mut mixer, 20, &mut frames, &mut out);
    let steady = &out.left[4_800..];
    let peak = steady.iter().fold(0.0_f32, |p, s| p.max(s.abs()));
    assert!(peak <= 1.0, "peak {peak}");
    assert!(
        peak > 0.5,
        "the limiter should not crush the level: peak {peak}"
    );
    // A hard-clipped sine is nearly square: a fundamental of 8/π² ≈ 81 % of the energy. A clean
    // limited sine keeps almost all of it there.
    let total: f64 =
        steady.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / steady.len() as f64;
    let fundamental = 2.0 * tone_power(steady, 500.0);
    assert!(
        fundamental / total > 0.95,
        "fundamental holds {:.3} of the energy",
        fundamental / total
    );
}

fn opus_packets(count: usize) -> Vec<Vec<u8>> {
    let encoder = audiopus::coder::Encoder::new(
        audiopus::SampleRate::Hz48000,
        audiopus::Channels::Stereo,
        audiopus::Application::Audio,
    )
    .unwrap();
    let tone = sine(48_000, 2, 700.0, 0.4, count as f64 * 0.02);
    tone.chunks_exact(1_920)
        .map(|frame| {
            let mut packet = vec![0; 1275];
            let len = encoder.encode_float(frame, &mut packet).unwrap();
            packet.truncate(len);
            packet
        })
        .collect()
}

#[test]
fn a_lone_opus_source_at_unity_passes_through_and_is_mixed_otherwise() {
    let (engine, mut mixer) = manual(4);
    let (call, mut frames) = engine.create_call().unwrap();
    let packets = opus_packets(20);
    let (opus, mut writer) = engine.push_opus(call, SourceOptions::default()).unwrap();
    for packet in &packets[..5] {
        assert!(writer.write_packet(packet).unwrap());
    }
    let mut out = empty();
    run(&engine, &mut mixer, 5, &mut frames, &mut out);
    assert_eq!(
        out.packets,
        packets[..5].to_vec(),
        "passthrough must not touch the packets"
    );
    assert_eq!(engine.stats().frames_passed_through, 5);

    // A second source: now the Opus source is decoded and mixed, and the frames re-encoded.
    let (_pcm, mut pcm_writer) = engine.push_source(call, PcmFormat::STEREO_48K).unwrap();
    pcm_writer
        .write_f32(&sine(48_000, 2, 300.0, 0.2, 0.2))
        .unwrap();
    for packet in &packets[5..10] {
        writer.write_packet(packet).unwrap();
    }
    let mut mixed = empty();
    run(&engine, &mut mixer, 5, &mut frames, &mut mixed);
    assert_eq!(mixed.packets.len(), 5);
    assert!(
        mixed
            .packets
            .iter()
            .zip(&packets[5..10])
            .all(|(a, b)| a != b)
    );
    assert!(tone_power(&mixed.left, 700.0) > 10.0 * tone_power(&mixed.left, 1_100.0));
    assert!(engine.stats().frames_encoded >= 5);

    // Below unity volume a lone Opus source is re-encoded too.
    drop(pcm_writer);
    opus.set_volume(0.5);
    assert!(matches!(
        writer.write_packet(&[0xFF; 4]),
        Err(Error::InvalidOpusPacket(_))
    ));
    assert!(matches!(
        writer.write_packet(&[]),
        Err(Error::InvalidOpusPacket(_))
    ));
}

#[test]
fn limits_and_bad_input_are_clear_errors() {
    let (engine, mut mixer) = manual(2);
    assert!(matches!(
        PcmFormat::new(4_000, 2),
        Err(Error::UnsupportedFormat(_))
    ));
    let (call, _frames) = engine.create_call().unwrap();
    let _one = engine.push_source(call, PcmFormat::STEREO_48K).unwrap();
    let _two = engine.push_source(call, PcmFormat::STEREO_48K).unwrap();
    assert!(matches!(
        engine.push_source(call, PcmFormat::STEREO_48K),
        Err(Error::LimitReached { max: 2, .. })
    ));
    let mut calls = vec![call];
    for _ in 0..3 {
        calls.push(engine.create_call().unwrap().0);
    }
    assert!(matches!(
        engine.create_call(),
        Err(Error::LimitReached { max: 4, .. })
    ));
    engine.remove_call(call).unwrap();
    assert!(matches!(
        engine.push_source(call, PcmFormat::STEREO_48K),
        Err(Error::NoSuchCall(_))
    ));
    assert!(matches!(
        engine.remove_call(call),
        Err(Error::NoSuchCall(_))
    ));
    // The removed call's slot is free once the mixer has handed it back.
    mixer.tick();
    engine.housekeep();
    assert!(engine.create_call().is_ok());
    let events: Vec<Event> = engine.events().try_iter().collect();
    assert!(events.contains(&Event::CallRemoved { call }));
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(
                e,
                Event::SourceEnded {
                    reason: EndReason::CallRemoved,
                    ..
                }
            ))
            .count(),
        2
    );
}

/// A 16-bit PCM WAV file, written by hand so the test depends on no encoder.
fn write_wav(path: &std::path::Path, rate: u32, channels: u16, samples: &[i16]) {
    let data_len = (samples.len() * 2) as u32;
    let mut bytes = Vec::new();
    bytes.extend_from_slice(b"RIFF");
    bytes.extend_from_slice(&(36 + data_len).to_le_bytes());
    bytes.extend_from_slice(b"WAVEfmt ");
    bytes.extend_from_slice(&16_u32.to_le_bytes());
    bytes.extend_from_slice(&1_u16.to_le_bytes());
    bytes.extend_from_slice(&channels.to_le_bytes());
    bytes.extend_from_slice(&rate.to_le_bytes());
    bytes.extend_from_slice(&(rate * u32::from(channels) * 2).to_le_bytes());
    bytes.extend_from_slice(&(channels * 2).to_le_bytes());
    bytes.extend_from_slice(&16_u16.to_le_bytes());
    bytes.extend_from_slice(b"data");
    bytes.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        bytes.extend_from_slice(&s.to_le_bytes());
    }
    std::fs::File::create(path)
        .unwrap()
        .write_all(&bytes)
        .unwrap();
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("quaver-engine-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn files_play_and_bad_files_are_errors_not_panics() {
    let dir = temp_dir("files");
    let wav = dir.join("tone.wav");
    let tone: Vec<i16> = sine(32_000, 1, 1_000.0, 0.5, 0.5)
        .iter()
        .map(|s| (s * 32_767.0) as i16)
        .collect();
    write_wav(&wav, 32_000, 1, &tone);
    let (engine, mut mixer) = manual(4);
    let (call, mut frames) = engine.create_call().unwrap();
    let handle = engine
        .play_file(call, &wav, FileOptions::default())
        .unwrap();
    let mut out = empty();
    let events = run(&engine, &mut mixer, 40, &mut frames, &mut out);
    let audio = out.kinds.iter().filter(|k| **k == FrameKind::Audio).count();
    assert!((25..=27).contains(&audio), "0.5 s file gave {audio} frames");
    assert!(
        tone_power(&out.left[2_000..20_000], 1_000.0)
            > 100.0 * tone_power(&out.left[2_000..20_000], 1_700.0)
    );
    assert!(events.contains(&Event::SourceEnded {
        call,
        source: handle.id(),
        reason: EndReason::Finished
    }));

    // Looping keeps going past the file's end until stopped.
    let looping = engine
        .play_file(
            call,
            &wav,
            FileOptions {
                looping: true,
                ..Default::default()
            },
        )
        .unwrap();
    run(&engine, &mut mixer, 60, &mut frames, &mut out);
    assert!(!looping.is_ended());
    assert!(looping.stats().frames_mixed >= 59);
    looping.stop();
    run(&engine, &mut mixer, 3, &mut frames, &mut out);
    assert!(looping.is_ended());

    let missing = engine.play_file(call, dir.join("missing.flac"), FileOptions::default());
    assert!(matches!(missing, Err(Error::Io { .. })), "{missing:?}");
    let garbage = dir.join("garbage.mp3");
    let mut seed = 12345_u32;
    let noise: Vec<u8> = (0..50_000)
        .map(|_| {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (seed >> 16) as u8
        })
        .collect();
    std::fs::write(&garbage, &noise).unwrap();
    let result = engine.play_file(call, &garbage, FileOptions::default());
    assert!(
        matches!(result, Err(Error::UnsupportedMedia { .. })),
        "{result:?}"
    );
    // A WAV cut off mid-stream plays what is there.
    let bytes = std::fs::read(&wav).unwrap();
    let truncated = dir.join("truncated.wav");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2 + 1]).unwrap();
    let cut = engine
        .play_file(call, &truncated, FileOptions::default())
        .unwrap();
    run(&engine, &mut mixer, 30, &mut frames, &mut out);
    assert!(cut.is_ended());
    assert!(cut.stats().frames_mixed >= 10);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn calls_spread_over_several_mixer_threads_all_produce_frames() {
    let config = EngineConfig {
        mixer_threads: 3,
        realtime_priority: false,
        ..EngineConfig::default()
    };
    let engine = Engine::new(config).unwrap();
    let mut queues = Vec::new();
    let mut writers = Vec::new();
    for n in 0..6 {
        let (call, frames) = engine.create_call().unwrap();
        let (_, mut writer) = engine.push_source(call, PcmFormat::STEREO_48K).unwrap();
        writer
            .write_f32(&sine(48_000, 2, 300.0 + 100.0 * f64::from(n), 0.3, 0.15))
            .unwrap();
        writers.push(writer);
        queues.push(frames);
    }
    drop(writers);
    let give_up = std::time::Instant::now() + Duration::from_secs(5);
    let mut audio = vec![0; queues.len()];
    while audio.iter().any(|&n| n < 7) && std::time::Instant::now() < give_up {
        std::thread::sleep(Duration::from_millis(20));
        for (count, queue) in audio.iter_mut().zip(queues.iter_mut()) {
            while let Some(frame) = queue.pop() {
                *count += usize::from(frame.kind == FrameKind::Audio);
            }
        }
    }
    assert!(audio.iter().all(|&n| n >= 7), "frames per call: {audio:?}");
    // Three threads tick on the same grid.
    assert!(engine.stats().ticks > 0);
}

/// Broadband energy (fourth difference, which passes almost nothing of a 400 Hz tone but all of
/// a click) in windows of one period of that tone (120 samples).
fn click_energy(signal: &[f32]) -> Vec<f64> {
    let d4: Vec<f64> = signal
        .windows(5)
        .map(|w| {
            f64::from(w[4]) - 4.0 * f64::from(w[3]) + 6.0 * f64::from(w[2]) - 4.0 * f64::from(w[1])
                + f64::from(w[0])
        })
        .collect();
    d4.chunks(120)
        .map(|c| c.iter().map(|v| v * v).sum())
        .collect()
}

/// RMS in windows of one period of a 400 Hz tone, so a steady tone reads the same in each.
fn period_rms(signal: &[f32]) -> Vec<f32> {
    signal
        .chunks(120)
        .map(|c| (c.iter().map(|v| v * v).sum::<f32>() / c.len() as f32).sqrt())
        .collect()
}

/// What one run of [`switch_scenario`] produced.
struct SwitchRun {
    packets: Vec<Vec<u8>>,
    out: Decoded,
    /// The packets decoded, with the gain ramps the volume changes ask for.
    ideal: Vec<f32>,
}

const SWITCH_FRAME: usize = 960;
/// One period of the 400 Hz test tone per window: a steady tone reads the same in each.
const PER_FRAME: usize = SWITCH_FRAME / 120;

/// A lone Opus source (a 400 Hz tone) is passed through, mixed at half volume from tick 40 (its
/// volume ramps down), and passed through again after tick 80 ramps it back up. The listener
/// decodes the call's frames with one decoder, as a Discord client does. With `just_in_time`
/// the producer writes each packet right before the tick that plays it, so nothing is ever
/// queued ahead.
fn switch_scenario(just_in_time: bool) -> SwitchRun {
    switch_scenario_with(just_in_time, &[(40, 0.5), (80, 1.0)], 2.4)
}

/// [`switch_scenario`] with the volume set to `volume` at each `(tick, volume)` of `changes`,
/// over `seconds` of tone.
fn switch_scenario_with(just_in_time: bool, changes: &[(usize, f32)], seconds: f64) -> SwitchRun {
    let (engine, mut mixer) = manual(4);
    let (call, mut frames) = engine.create_call().unwrap();
    let encoder = audiopus::coder::Encoder::new(
        audiopus::SampleRate::Hz48000,
        audiopus::Channels::Stereo,
        audiopus::Application::Audio,
    )
    .unwrap();
    let tone = sine(48_000, 2, 400.0, 0.4, seconds);
    let packets: Vec<Vec<u8>> = tone
        .chunks_exact(1_920)
        .map(|frame| {
            let mut packet = vec![0; 1275];
            let len = encoder.encode_float(frame, &mut packet).unwrap();
            packet.truncate(len);
            packet
        })
        .collect();
    let options = SourceOptions {
        buffer: Duration::from_secs(3),
        ..Default::default()
    };
    let (opus, mut writer) = engine.push_opus(call, options).unwrap();
    if !just_in_time {
        for packet in &packets {
            assert!(writer.write_packet(packet).unwrap());
        }
    }
    let mut out = empty();
    let mut listener = new_decoder();
    for (tick, packet) in packets.iter().enumerate() {
        if let Some(&(_, volume)) = changes.iter().find(|(at, _)| *at == tick) {
            opus.set_volume(volume);
        }
        if just_in_time {
            assert!(writer.write_packet(packet).unwrap());
        }
        mixer.tick();
        decode_all(&mut frames, &mut listener, &mut out);
    }
    let stats = engine.stats();
    assert!(stats.frames_passed_through >= 70 && stats.frames_encoded >= 40);
    assert_eq!(out.left.len(), packets.len() * SWITCH_FRAME);

    let mut reference_decoder = new_decoder();
    let mut ideal = Vec::new();
    for packet in &packets {
        let mut pcm = vec![0.0_f32; 1920];
        let p = audiopus::packet::Packet::try_from(&packet[..]).unwrap();
        let signals = audiopus::MutSignals::try_from(&mut pcm[..]).unwrap();
        reference_decoder
            .decode_float(Some(p), signals, false)
            .unwrap();
        ideal.extend(pcm.chunks_exact(2).map(|p| p[0]));
    }
    for (n, v) in ideal.iter_mut().enumerate() {
        let t = n as f32 / SWITCH_FRAME as f32;
        // Each change ramps over one frame from the volume before it.
        let mut gain = 1.0;
        for &(at, volume) in changes {
            let at = at as f32;
            if t >= at + 1.0 {
                gain = volume;
            } else if t >= at {
                gain += (volume - gain) * (t - at);
            }
        }
        *v *= gain;
    }
    SwitchRun {
        packets,
        out,
        ideal,
    }
}

/// The level around the switch at tick `at` neither dips below the lower level nor overshoots
/// the higher one, and the switch makes no more broadband energy than the gain ramp itself.
fn assert_clean_switch(run: &SwitchRun, name: &str, at: usize) {
    let (low, high, click, ideal_click) = around_switch(run, at);
    eprintln!(
        "{name}: level {:.0}–{:.0} % of full, click energy {click:.2e} (ideal ramp \
         {ideal_click:.2e})",
        low * 100.0,
        high * 100.0
    );
    assert!(low > 0.45, "{name}: dips to {:.0} % of full", low * 100.0);
    assert!(high < 1.05, "{name}: overshoots to {:.0} %", high * 100.0);
    assert!(
        click < 3.0 * ideal_click,
        "{name} clicks: {click:.2e} vs {ideal_click:.2e}"
    );
}

/// Around the switch at tick `at`: the lowest and highest level (fractions of the full
/// level), and the largest click energy next to an ideal ramp's.
fn around_switch(run: &SwitchRun, at: usize) -> (f32, f32, f64, f64) {
    let full = 0.4 / std::f32::consts::SQRT_2;
    let windows = (at - 1) * PER_FRAME..(at + 5) * PER_FRAME;
    let rms = period_rms(&run.out.left);
    let (low, high) = rms[windows.clone()]
        .iter()
        .fold((f32::MAX, 0.0_f32), |(lo, hi), &r| (lo.min(r), hi.max(r)));
    let peak = |energy: Vec<f64>| energy[windows.clone()].iter().copied().fold(0.0, f64::max);
    (
        low / full,
        high / full,
        peak(click_energy(&run.out.left)),
        peak(click_energy(&run.ideal)),
    )
}

/// With the next packet queued (a file, a buffered relay), the listener hears a clean ramp.
/// Before the fix, leaving passthrough dipped to 16 % of the level for 6.5 ms (the encoder's
/// look-ahead held silence) and stayed up to 25 % low for three frames (a decoder that had
/// skipped the passed-through packets), and rejoining dipped to 41 % (the stream jumped 6.5 ms
/// ahead).
#[test]
fn leaving_and_rejoining_passthrough_keeps_the_level_and_does_not_click() {
    let run = switch_scenario(false);
    assert!(
        run.out.packets[..40] == run.packets[..40],
        "passthrough until the change"
    );
    assert!(
        run.out.packets[90..] == run.packets[90..],
        "passthrough again after it"
    );
    for (name, at) in [("leaving passthrough", 40), ("rejoining passthrough", 80)] {
        assert_clean_switch(&run, name, at);
    }
    // Settled a frame after each ramp.
    let full = 0.4 / std::f32::consts::SQRT_2;
    let rms = period_rms(&run.out.left);
    for (range, level) in [(42..78, full / 2.0), (82..118, full)] {
        for (i, r) in rms[range.start * PER_FRAME..range.end * PER_FRAME]
            .iter()
            .enumerate()
        {
            assert!(
                (r - level).abs() < 0.05 * level,
                "tick {}: level {r:.3}, expected {level:.3}",
                range.start + i / PER_FRAME
            );
        }
    }
}

/// A call leaves passthrough again with codecs another stretch used (handed back, reset and
/// taken again from the mixer's spares, see `crate::pool`): the second departure sounds as
/// clean as the first.
#[test]
fn leaving_passthrough_again_with_recycled_codecs_keeps_the_level_and_does_not_click() {
    let run = switch_scenario_with(false, &[(40, 0.5), (60, 1.0), (100, 0.5), (120, 1.0)], 3.0);
    assert!(run.out.packets[70..100] == run.packets[70..100]);
    assert!(run.out.packets[130..] == run.packets[130..]);
    for (name, at) in [("leaving again", 100), ("rejoining again", 120)] {
        assert_clean_switch(&run, name, at);
    }
}

/// With nothing queued ahead, the call cannot feed its encoder early: it crossfades into the
/// encoder's delayed timing over one frame when leaving passthrough, and skips ahead when
/// rejoining. Measured, not asserted beyond "no click and passthrough resumes".
#[test]
fn leaving_passthrough_just_in_time_crossfades_without_clicking() {
    let run = switch_scenario(true);
    assert!(run.out.packets[..40] == run.packets[..40]);
    assert!(
        run.out.packets[90..] == run.packets[90..],
        "passthrough resumes"
    );
    for (name, at) in [("leaving", 40), ("rejoining", 80)] {
        let (low, high, click, ideal_click) = around_switch(&run, at);
        eprintln!(
            "just in time, {name} passthrough: level {:.0}–{:.0} % of full, click energy \
             {click:.2e} (ideal ramp {ideal_click:.2e})",
            low * 100.0,
            high * 100.0
        );
    }
}

/// A live producer that stalls five times, each stall a frame longer than the one before, and
/// then delivers what it owed at once: each stall drains the queue and plays a frame of
/// silence, so after the five the rest of its stream is 100 ms later. Returns the source's
/// stats and how much input it still had queued at the end.
fn late_live_producer(latency_cap: Option<Duration>) -> (quaver_engine::SourceStats, Duration) {
    let (engine, mut mixer) = manual(2);
    let (call, mut frames) = engine.create_call().unwrap();
    let options = SourceOptions {
        latency_cap,
        ..Default::default()
    };
    let (source, mut writer) = engine
        .push_source_with(call, PcmFormat::STEREO_48K, options)
        .unwrap();
    let tone = sine(48_000, 2, 440.0, 0.3, 10.0);
    let capacity = writer.free_samples();
    let mut at = 0;
    let mut owed = 0;
    for tick in 0..400 {
        // Stalls of 1, 2, 3, 4 and 5 ticks from ticks 10, 30, 50, 70 and 90.
        let stall = (tick - 10) / 20 + 1;
        let miss = (10..110).contains(&tick) && (tick - 10) % 20 < stall;
        if miss {
            owed += 1;
        } else {
            for _ in 0..=owed {
                at += writer.write_f32(&tone[at..at + 1_920]).unwrap();
            }
            owed = 0;
        }
        engine.housekeep();
        mixer.tick();
        while frames.discard() {}
    }
    let queued = (capacity - writer.free_samples()) / 2;
    (
        source.stats(),
        Duration::from_micros(queued as u64 * 1_000_000 / 48_000),
    )
}

#[test]
fn a_live_source_does_not_keep_the_latency_of_its_underruns() {
    let (kept, kept_queue) = late_live_producer(None);
    assert_eq!(kept.underruns, 5, "{kept:?}");
    assert_eq!(kept.latency_dropped, Duration::ZERO);
    assert!(
        kept_queue >= Duration::from_millis(100),
        "without a cap the five misses stay queued: {kept_queue:?}"
    );

    let (capped, capped_queue) = late_live_producer(Some(Duration::from_millis(60)));
    assert_eq!(capped.underruns, 5, "{capped:?}");
    assert!(
        capped_queue <= Duration::from_millis(60),
        "the cap holds the queue: {capped_queue:?}"
    );
    assert!(
        capped.latency_dropped >= kept_queue - Duration::from_millis(60),
        "what was dropped is counted: {capped:?}"
    );
}

#[test]
fn a_producer_queueing_ahead_on_purpose_loses_nothing_to_the_cap() {
    let (engine, mut mixer) = manual(2);
    let (call, mut frames) = engine.create_call().unwrap();
    // The default options (cap on), two seconds of room, filled at once.
    let options = SourceOptions {
        buffer: Duration::from_secs(2),
        ..Default::default()
    };
    let (source, mut writer) = engine
        .push_source_with(call, PcmFormat::STEREO_48K, options)
        .unwrap();
    let tone = sine(48_000, 2, 440.0, 0.3, 2.0);
    assert_eq!(writer.write_f32(&tone).unwrap(), tone.len());
    drop(writer);
    let mut out = empty();
    run(&engine, &mut mixer, 130, &mut frames, &mut out);
    let stats = source.stats();
    assert_eq!(stats.latency_dropped, Duration::ZERO, "{stats:?}");
    assert_eq!(stats.frames_mixed, 100, "two whole seconds: {stats:?}");
}
