//! `quaver render`: mixes files offline, as fast as the CPU allows, into an Ogg Opus file.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use quaver::engine::ogg_opus::OggOpusWriter;
use quaver::engine::{
    Engine, EngineConfig, Event, FRAME_SAMPLES, FileOptions, FrameKind, OpusConfig,
};

/// A finished render.
#[derive(Debug, Clone)]
pub struct RenderReport {
    /// The Ogg Opus file written.
    pub output: PathBuf,
    /// Opus packets written, one per 20 ms frame.
    pub frames: u64,
    /// Length of the audio written, in seconds (`frames` × 20 ms).
    pub seconds: f64,
    /// Size of the file, in bytes (0 if it could not be read back).
    pub bytes: u64,
}

/// Stops a render of looping or endless input (one hour).
const MAX_FRAMES: u64 = 50 * 60 * 60;

/// Mixes `inputs` (all starting together, each at `volume`) into `output` at `bitrate` bits/s.
pub fn render(
    inputs: &[PathBuf],
    output: &Path,
    bitrate: u32,
) -> Result<RenderReport, crate::Error> {
    if inputs.is_empty() {
        return Err(crate::Error::Usage(
            "render needs at least one input file".into(),
        ));
    }
    // Before the output file is created: a bad input leaves nothing behind.
    crate::media::check_all(inputs)?;
    let opus = OpusConfig {
        bitrate,
        ..OpusConfig::default()
    };
    let config = EngineConfig {
        opus,
        realtime_priority: false,
        ..EngineConfig::default()
    };
    let (engine, mut mixer) = Engine::manual(config)?;
    let (call, mut frames) = engine.create_call()?;
    for input in inputs {
        engine.play_file(call, input, FileOptions::default())?;
    }

    let file = File::create(output).map_err(|e| crate::Error::io(output, e))?;
    let mut writer = OggOpusWriter::new(
        BufWriter::new(file),
        opus.encoder_lookahead()?,
        48_000,
        0x5155_4156,
    )
    .map_err(|e| crate::Error::io(output, e))?;
    let mut playing = inputs.len();
    let mut frames_written = 0_u64;
    let mut stream_ended = false;
    let mut ticks = 0_u64;
    // The call's end-of-stream marker and the sources' end events arrive by different routes;
    // the render is over once both have.
    while !(stream_ended && playing == 0) && ticks < MAX_FRAMES {
        ticks += 1;
        // Manual mode: read the files ahead, then build the next frame.
        engine.housekeep();
        mixer.tick();
        while let Some(frame) = frames.pop() {
            match frame.kind {
                FrameKind::Audio => {
                    writer
                        .write_packet(frame.opus(), FRAME_SAMPLES as u64)
                        .map_err(|e| crate::Error::io(output, e))?;
                    frames_written += 1;
                }
                FrameKind::EndOfStream => stream_ended = true,
            }
        }
        for event in engine.events().try_iter() {
            match event {
                Event::SourceEnded { .. } => playing = playing.saturating_sub(1),
                // The tool's own word to the user, not a log line (logs are off unless
                // RUST_LOG asks).
                Event::SourceError { error, .. } => eprintln!("warning: {error}"),
                _ => {}
            }
        }
    }
    let mut file = writer.finish().map_err(|e| crate::Error::io(output, e))?;
    std::io::Write::flush(&mut file).map_err(|e| crate::Error::io(output, e))?;
    let bytes = std::fs::metadata(output).map(|m| m.len()).unwrap_or(0);
    Ok(RenderReport {
        output: output.to_path_buf(),
        frames: frames_written,
        seconds: frames_written as f64 * 0.02,
        bytes,
    })
}
