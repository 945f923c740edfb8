//! Helpers shared by the input tests (seek, child processes, HTTP, the queue): media files
//! made on the spot, and the mixed output decoded back with libopus frame by frame.

#![allow(dead_code, reason = "each test file uses part of these")]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use quaver_engine::ogg_opus::OggOpusWriter;
use quaver_engine::{
    EndReason, Engine, EngineConfig, Event, FrameKind, FrameReceiver, Mixer, SourceId,
};

pub const RATE: u32 = 48_000;

pub fn manual() -> (Engine, Mixer) {
    let config = EngineConfig {
        max_calls: 8,
        max_sources_per_call: 8,
        ..EngineConfig::default()
    };
    Engine::manual(config).unwrap()
}

/// Interleaved samples of tones played one after another: `(frequency, seconds)` each.
pub fn tones(rate: u32, channels: usize, parts: &[(f64, f64)]) -> Vec<f32> {
    let mut out = Vec::new();
    let mut phase = 0.0_f64;
    for &(freq, seconds) in parts {
        let frames = (f64::from(rate) * seconds).round() as usize;
        for _ in 0..frames {
            let v = (phase.sin() * 0.5) as f32;
            phase += 2.0 * std::f64::consts::PI * freq / f64::from(rate);
            out.extend(std::iter::repeat_n(v, channels));
        }
    }
    out
}

pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("quaver-inputs-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A 16-bit PCM WAV file's bytes.
pub fn wav_bytes(rate: u32, channels: u16, samples: &[f32]) -> Vec<u8> {
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
        bytes.extend_from_slice(&((s * 32_767.0) as i16).to_le_bytes());
    }
    bytes
}

pub fn write_wav(path: &Path, rate: u32, channels: u16, samples: &[f32]) {
    std::fs::File::create(path)
        .unwrap()
        .write_all(&wav_bytes(rate, channels, samples))
        .unwrap();
}

/// An Ogg Opus file's bytes: 48 kHz stereo `samples` encoded in 20 ms packets by libopus.
pub fn ogg_opus_bytes(samples: &[f32]) -> Vec<u8> {
    let encoder = audiopus::coder::Encoder::new(
        audiopus::SampleRate::Hz48000,
        audiopus::Channels::Stereo,
        audiopus::Application::Audio,
    )
    .unwrap();
    let mut writer = OggOpusWriter::new(Vec::new(), 312, 48_000, 1).unwrap();
    let mut packet = [0_u8; 1500];
    for frame in samples.chunks_exact(1920) {
        let len = encoder.encode_float(frame, &mut packet).unwrap();
        writer.write_packet(&packet[..len], 960).unwrap();
    }
    writer.finish().unwrap()
}

/// The mixed output, one entry per tick: the decoded left channel of an audio frame, or `None`
/// for a tick without audio.
#[derive(Default)]
pub struct Output {
    pub frames: Vec<Option<Vec<f32>>>,
    pub events: Vec<Event>,
    decoder: Option<audiopus::coder::Decoder>,
}

impl Output {
    /// Pops and decodes what the call produced since the last call.
    pub fn collect(&mut self, frames: &mut FrameReceiver) {
        let decoder = self.decoder.get_or_insert_with(|| {
            audiopus::coder::Decoder::new(audiopus::SampleRate::Hz48000, audiopus::Channels::Stereo)
                .unwrap()
        });
        let mut produced = false;
        while let Some(frame) = frames.pop() {
            if frame.kind != FrameKind::Audio {
                continue;
            }
            produced = true;
            let mut pcm = vec![0.0_f32; 1920];
            let packet = audiopus::packet::Packet::try_from(frame.opus()).unwrap();
            let signals = audiopus::MutSignals::try_from(&mut pcm[..]).unwrap();
            let n = decoder.decode_float(Some(packet), signals, false).unwrap();
            self.frames
                .push(Some(pcm[..n * 2].chunks_exact(2).map(|p| p[0]).collect()));
        }
        if !produced {
            self.frames.push(None);
        }
    }

    /// The left channel of every frame from `from` on, silence for ticks without audio.
    pub fn joined(&self, from: usize) -> Vec<f32> {
        self.frames[from.min(self.frames.len())..]
            .iter()
            .flat_map(|f| f.clone().unwrap_or_else(|| vec![0.0; 960]))
            .collect()
    }
}

/// Runs `ticks` ticks of a manual engine (housekeeping before each, as the worker would),
/// collecting the call's output and the events.
pub fn run(
    engine: &Engine,
    mixer: &mut Mixer,
    ticks: usize,
    frames: &mut FrameReceiver,
    out: &mut Output,
) {
    for _ in 0..ticks {
        engine.housekeep();
        mixer.tick();
        out.collect(frames);
    }
    engine.housekeep();
    out.events.extend(engine.events().try_iter());
}

/// Which of two tones dominates a stretch of audio (by a factor of 10), if either.
pub fn dominant(signal: &[f32], a: f64, b: f64) -> Option<f64> {
    let pa = quaver_engine::analysis::tone_power(signal, a, RATE);
    let pb = quaver_engine::analysis::tone_power(signal, b, RATE);
    if pa > 10.0 * pb && pa > 1e-4 {
        Some(a)
    } else if pb > 10.0 * pa && pb > 1e-4 {
        Some(b)
    } else {
        None
    }
}

/// Runs ticks until `done` holds (or panics after ten seconds of real time).
pub fn run_until(
    engine: &Engine,
    mixer: &mut Mixer,
    frames: &mut FrameReceiver,
    out: &mut Output,
    mut done: impl FnMut(&Output) -> bool,
) {
    let give_up = Instant::now() + Duration::from_secs(10);
    while !done(out) {
        assert!(Instant::now() < give_up, "timed out");
        run(engine, mixer, 1, frames, out);
        // Twice real time: inputs on their own threads (a child, a download) keep ahead of
        // it even on a loaded machine, as they keep ahead of the real clock.
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn ended(out: &Output, source: SourceId) -> Option<EndReason> {
    out.events.iter().find_map(|event| match event {
        Event::SourceEnded {
            source: id, reason, ..
        } if *id == source => Some(*reason),
        _ => None,
    })
}
