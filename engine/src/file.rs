//! File sources: decoding (symphonia for wav/flac/mp3/ogg-vorbis, the Ogg Opus reader for
//! pre-encoded Opus) on the engine's worker thread, reading ahead into the source's ring.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use symphonia::core::codecs::audio::{AudioDecoder, AudioDecoderOptions};
use symphonia::core::errors::Error as MediaError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, FormatReader, SeekMode, SeekTo, TrackType};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::units::Time;

use crate::error::{Error, Result};
use crate::ogg_opus::{OggOpusError, OggOpusReader};
use crate::pcm::{MIX_RATE, PcmFormat};
use crate::source::{
    OpusWriter, PcmWriter, SourceOptions, SourceShared, SourceSlot, validate_opus_packet,
};
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
    fn source_options(&self) -> SourceOptions {
        SourceOptions {
            buffer: self.read_ahead,
            volume: self.volume,
            paused: self.paused,
        }
    }
}

/// A freshly opened file: the slot for the mixer, the decoder for the worker, and the shared
/// state for the handle.
pub(crate) struct OpenedFile {
    pub(crate) slot: Box<SourceSlot>,
    pub(crate) decoder: FileDecoder,
    pub(crate) shared: Arc<SourceShared>,
}

/// Decodes one file into its source's ring, a bounded amount per [`FileDecoder::pump`].
pub(crate) struct FileDecoder {
    call: CallId,
    source: SourceId,
    shared: Arc<SourceShared>,
    media: Media,
}

enum Media {
    Decoded {
        stream: DecodedStream,
        writer: PcmWriter,
        pending: Vec<f32>,
        written: usize,
    },
    Opus {
        stream: OpusStream,
        writer: OpusWriter,
        pending: Option<Vec<u8>>,
    },
}

impl FileDecoder {
    pub(crate) fn open(
        call: CallId,
        source: SourceId,
        path: &Path,
        options: &FileOptions,
    ) -> Result<OpenedFile> {
        if is_ogg_opus(path)? {
            let mut stream = OpusStream::open(path, options.looping)?;
            let first = stream
                .next_packet()
                .map_err(|reason| unsupported(path, reason))?;
            let Some(first) = first else {
                return Err(unsupported(path, "no audio packets".into()));
            };
            validate_opus_packet(&first).map_err(|error| {
                unsupported(
                    path,
                    format!("{error} (only 20 ms Opus packets can be played)"),
                )
            })?;
            let built = SourceSlot::new_opus(source, &options.source_options())?;
            let decoder = FileDecoder {
                call,
                source,
                shared: Arc::clone(&built.shared),
                media: Media::Opus {
                    stream,
                    writer: built.writer,
                    pending: Some(first),
                },
            };
            return Ok(OpenedFile {
                slot: built.slot,
                decoder,
                shared: built.shared,
            });
        }

        let mut stream = DecodedStream::open(path, options)?;
        let mut pending = Vec::new();
        // Decoding the first packet now turns a corrupt file into an error for the caller,
        // and tells the true rate and channel count.
        if !stream
            .next_chunk(&mut pending)
            .map_err(|reason| unsupported(path, reason))?
        {
            return Err(unsupported(path, "no audio".into()));
        }
        let format = stream.format;
        let built = SourceSlot::new_pcm(source, format, &options.source_options())?;
        if let Some(frames) = stream.frames {
            let seconds = frames as f64 / f64::from(format.sample_rate());
            built
                .shared
                .set_duration(Duration::from_secs_f64(seconds).saturating_sub(options.start_at));
        }
        let decoder = FileDecoder {
            call,
            source,
            shared: Arc::clone(&built.shared),
            media: Media::Decoded {
                stream,
                writer: built.writer,
                pending,
                written: 0,
            },
        };
        Ok(OpenedFile {
            slot: built.slot,
            decoder,
            shared: built.shared,
        })
    }

    pub(crate) fn call(&self) -> CallId {
        self.call
    }

    pub(crate) fn source(&self) -> SourceId {
        self.source
    }

    /// Decodes until the ring is full. `Ok(true)`: more to come; `Ok(false)`: the file is done
    /// (or the source ended) and the decoder can be dropped, which finishes the source.
    /// `Err`: decoding failed; the source plays out what it has and ends as failed.
    pub(crate) fn pump(&mut self) -> std::result::Result<bool, String> {
        let result = self.pump_inner();
        if result.is_err() {
            self.shared.fail();
        }
        result
    }

    fn pump_inner(&mut self) -> std::result::Result<bool, String> {
        match &mut self.media {
            Media::Decoded {
                stream,
                writer,
                pending,
                written,
            } => loop {
                if *written < pending.len() {
                    match writer.write_f32(&pending[*written..]) {
                        Ok(count) => *written += count,
                        Err(_) => return Ok(false),
                    }
                    if *written < pending.len() {
                        return Ok(true);
                    }
                }
                pending.clear();
                *written = 0;
                if !stream.next_chunk(pending)? {
                    return Ok(false);
                }
            },
            Media::Opus {
                stream,
                writer,
                pending,
            } => loop {
                if let Some(packet) = pending.as_deref() {
                    match writer.write_packet(packet) {
                        Ok(true) => *pending = None,
                        Ok(false) => return Ok(true),
                        // A packet of another duration inside the stream: skip it.
                        Err(Error::InvalidOpusPacket(_)) => *pending = None,
                        Err(_) => return Ok(false),
                    }
                }
                match stream.next_packet()? {
                    Some(packet) => *pending = Some(packet),
                    None => return Ok(false),
                }
            },
        }
    }
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

/// A file decoded by symphonia into interleaved f32 at its own rate (mono or stereo).
struct DecodedStream {
    path: PathBuf,
    reader: Box<dyn FormatReader>,
    decoder: Box<dyn AudioDecoder>,
    track_id: u32,
    format: PcmFormat,
    /// Length in frames, when the container says.
    frames: Option<u64>,
    looping: bool,
    /// The decoder's output with all of the file's channels.
    scratch: Vec<f32>,
    /// Whether anything was decoded since the last rewind, so an empty looping file cannot
    /// spin forever.
    decoded_since_rewind: bool,
}

/// Opens `file`'s container with symphonia, using `path`'s extension as the hint: the one probe
/// both playback and the tools' up-front media check use.
pub fn probe_container(
    path: &Path,
    file: File,
) -> std::result::Result<Box<dyn FormatReader>, MediaError> {
    let stream = MediaSourceStream::new(Box::new(file), Default::default());
    let mut hint = Hint::new();
    if let Some(extension) = path.extension().and_then(|e| e.to_str()) {
        hint.with_extension(extension);
    }
    symphonia::default::get_probe().probe(
        &hint,
        stream,
        FormatOptions::default(),
        MetadataOptions::default(),
    )
}

impl DecodedStream {
    fn open(path: &Path, options: &FileOptions) -> Result<Self> {
        let file = File::open(path).map_err(|e| io_error(path, e))?;
        let mut reader =
            probe_container(path, file).map_err(|e| unsupported(path, e.to_string()))?;
        let track = reader
            .default_track(TrackType::Audio)
            .ok_or_else(|| unsupported(path, "no audio track".into()))?;
        let track_id = track.id;
        let frames = track.num_frames;
        let params = track
            .codec_params
            .as_ref()
            .and_then(|params| params.audio())
            .ok_or_else(|| unsupported(path, "no audio codec parameters".into()))?;
        let decoder = symphonia::default::get_codecs()
            .make_audio_decoder(params, &AudioDecoderOptions::default())
            .map_err(|e| unsupported(path, e.to_string()))?;
        // Provisional until the first decoded packet says otherwise.
        let rate = params.sample_rate.unwrap_or(MIX_RATE);
        let channels = params.channels.as_ref().map_or(2, |c| c.count().min(2)) as u8;
        let format = PcmFormat::new(rate, channels.max(1))?;
        if !options.start_at.is_zero() {
            let time =
                Time::try_from_secs_f64(options.start_at.as_secs_f64()).unwrap_or(Time::ZERO);
            reader
                .seek(
                    SeekMode::Accurate,
                    SeekTo::Time {
                        time,
                        track_id: Some(track_id),
                    },
                )
                .map_err(|e| {
                    unsupported(path, format!("cannot seek to {:?}: {e}", options.start_at))
                })?;
        }
        Ok(Self {
            path: path.to_path_buf(),
            reader,
            decoder,
            track_id,
            format,
            frames,
            looping: options.looping,
            scratch: Vec::new(),
            decoded_since_rewind: false,
        })
    }

    /// Decodes the next packet and appends it to `out` as interleaved mono or stereo.
    /// Returns `Ok(false)` at the end of the file (after rewinding, when looping).
    fn next_chunk(&mut self, out: &mut Vec<f32>) -> std::result::Result<bool, String> {
        loop {
            let packet = match self.reader.next_packet() {
                Ok(Some(packet)) => packet,
                Ok(None) => {
                    if self.looping && self.decoded_since_rewind && self.rewind() {
                        continue;
                    }
                    return Ok(false);
                }
                Err(MediaError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Ok(false);
                }
                Err(MediaError::ResetRequired) => {
                    self.decoder.reset();
                    continue;
                }
                Err(e) => return Err(format!("{}: {e}", self.path.display())),
            };
            if packet.track_id != self.track_id {
                continue;
            }
            let decoded = match self.decoder.decode(&packet) {
                Ok(decoded) => decoded,
                // One bad packet: skip it, as players do.
                Err(MediaError::DecodeError(_)) => continue,
                Err(e) => return Err(format!("{}: {e}", self.path.display())),
            };
            let rate = decoded.spec().rate();
            let channels = decoded.spec().channels().count();
            if channels == 0 || decoded.frames() == 0 {
                continue;
            }
            let kept = channels.min(2) as u8;
            if !self.decoded_since_rewind
                && out.is_empty()
                && (rate != self.format.sample_rate() || kept != self.format.channels())
            {
                // First packet: adopt the real format before the source is created.
                self.format = PcmFormat::new(rate, kept).map_err(|e| e.to_string())?;
            } else if rate != self.format.sample_rate() || kept != self.format.channels() {
                return Err(format!(
                    "{}: the audio format changed mid-stream",
                    self.path.display()
                ));
            }
            self.scratch.resize(decoded.samples_interleaved(), 0.0);
            decoded.copy_to_slice_interleaved(&mut self.scratch[..]);
            if channels <= 2 {
                out.extend_from_slice(&self.scratch);
            } else {
                // More than stereo: keep the front left and right channels.
                for frame in self.scratch.chunks_exact(channels) {
                    out.extend_from_slice(&frame[..2]);
                }
            }
            self.decoded_since_rewind = true;
            return Ok(true);
        }
    }

    fn rewind(&mut self) -> bool {
        let to = SeekTo::Time {
            time: Time::ZERO,
            track_id: Some(self.track_id),
        };
        if self.reader.seek(SeekMode::Accurate, to).is_err() {
            return false;
        }
        self.decoder.reset();
        self.decoded_since_rewind = false;
        true
    }
}

/// An Ogg Opus file read packet by packet for passthrough.
struct OpusStream {
    path: PathBuf,
    reader: OggOpusReader<BufReader<File>>,
    looping: bool,
    packets_since_rewind: u64,
}

impl OpusStream {
    fn open(path: &Path, looping: bool) -> Result<Self> {
        Ok(Self {
            path: path.to_path_buf(),
            reader: Self::reader(path)?,
            looping,
            packets_since_rewind: 0,
        })
    }

    fn reader(path: &Path) -> Result<OggOpusReader<BufReader<File>>> {
        let file = File::open(path).map_err(|e| io_error(path, e))?;
        OggOpusReader::new(BufReader::new(file)).map_err(|e| match e {
            OggOpusError::Io(e) => io_error(path, e),
            other => unsupported(path, other.to_string()),
        })
    }

    fn next_packet(&mut self) -> std::result::Result<Option<Vec<u8>>, String> {
        loop {
            match self.reader.next_packet() {
                Ok(Some(packet)) => {
                    self.packets_since_rewind += 1;
                    return Ok(Some(packet));
                }
                Ok(None) if self.looping && self.packets_since_rewind > 0 => {
                    self.reader = Self::reader(&self.path).map_err(|e| e.to_string())?;
                    self.packets_since_rewind = 0;
                }
                Ok(None) => return Ok(None),
                Err(e) => return Err(format!("{}: {e}", self.path.display())),
            }
        }
    }
}
