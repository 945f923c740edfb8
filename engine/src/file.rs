//! File sources: opened here, decoded by [`crate::decode::Decoder`] on the engine's worker
//! thread, reading ahead into the source's ring.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;
use std::time::Duration;

use symphonia::core::errors::Error as MediaError;
use symphonia::core::formats::FormatReader;

use crate::decode::{DecodeOptions, Decoder, InputFormat, Opened};
use crate::error::{Error, Result};
use crate::input::{InputError, InputName};
use crate::source::SourceOptions;
use crate::{CallId, SourceId};

/// How a file is played.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FileOptions {
    /// Initial linear gain (as [`crate::SourceHandle::set_volume`]).
    pub volume: f32,
    /// Start paused.
    pub paused: bool,
    /// Start again from the beginning at the end, until stopped.
    pub looping: bool,
    /// Where to start playing (clamped to the file's length by the decoder).
    pub start_at: Duration,
    /// How much decoded audio is kept ready, so a slow disk never starves the mixer.
    pub read_ahead: Duration,
}

impl Default for FileOptions {
    fn default() -> Self {
        Self {
            volume: 1.0,
            paused: false,
            looping: false,
            start_at: Duration::ZERO,
            read_ahead: Duration::from_secs(2),
        }
    }
}

impl FileOptions {
    pub(crate) fn source_options(&self) -> SourceOptions {
        SourceOptions {
            buffer: self.read_ahead,
            volume: self.volume,
            paused: self.paused,
            latency_cap: None,
        }
    }
}

/// Opens `path` and decodes its first packet (see [`Decoder::open`]).
pub(crate) fn open_file(
    call: CallId,
    source: SourceId,
    path: &Path,
    options: &FileOptions,
) -> Result<Opened> {
    let ogg_opus = is_ogg_opus(path)?;
    let file = File::open(path).map_err(|e| io_error(path, e))?;
    let format = if ogg_opus {
        InputFormat::OggOpus
    } else {
        InputFormat::Probe {
            extension: path.extension().and_then(|e| e.to_str()).map(str::to_owned),
        }
    };
    let decode = DecodeOptions {
        source: options.source_options(),
        looping: options.looping,
        start_at: options.start_at,
        seekable: true,
        byte_len: file.metadata().ok().map(|m| m.len()),
    };
    let bytes = Box::new(BufReader::new(file));
    let opened = Decoder::open(
        call,
        source,
        InputName::File(path.to_path_buf()),
        bytes,
        format,
        &decode,
    )
    .map_err(|error| match error {
        // Opening a file keeps its long-standing error shape: the path and what was wrong.
        Error::Input {
            error: InputError::Io(source),
            ..
        } => io_error(path, source),
        Error::Input { error, .. } => unsupported(path, error.to_string()),
        other => other,
    })?;
    Ok(opened)
}

fn unsupported(path: &Path, reason: String) -> Error {
    Error::UnsupportedMedia {
        path: path.to_path_buf(),
        reason,
    }
}

fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Ogg Opus files start with an Ogg page whose first packet is `OpusHead`.
fn is_ogg_opus(path: &Path) -> Result<bool> {
    let mut start = [0_u8; 64];
    let mut file = File::open(path).map_err(|e| io_error(path, e))?;
    let mut filled = 0;
    while filled < start.len() {
        match file.read(&mut start[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_error(path, e)),
        }
    }
    let start = &start[..filled];
    Ok(start.starts_with(b"OggS") && start.windows(8).any(|w| w == b"OpusHead"))
}

/// Opens `file`'s container with symphonia, using `path`'s extension as the hint: the one probe
/// both playback and the tools' up-front media check use.
pub fn probe_container(
    path: &Path,
    file: File,
) -> std::result::Result<Box<dyn FormatReader>, MediaError> {
    crate::decode::probe(Box::new(file), path.extension().and_then(|e| e.to_str()))
}
