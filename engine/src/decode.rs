//! Decoding any byte stream into a source's ring: symphonia for wav/flac/mp3/ogg-vorbis (to
//! PCM), the Ogg Opus reader for pre-encoded Opus (packets as they are). The same [`Decoder`]
//! serves files (on the engine's worker), child processes and HTTP streams (on their own
//! threads); it reads ahead until the ring is full and applies seeks.

use std::io::{Read, Seek};
use std::sync::Arc;
use std::time::Duration;

use symphonia::core::codecs::audio::{AudioDecoder, AudioDecoderOptions};
use symphonia::core::errors::{Error as MediaError, SeekErrorKind};
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, FormatReader, SeekMode, SeekTo, TrackType};
use symphonia::core::io::{MediaSource, MediaSourceStream};
use symphonia::core::meta::MetadataOptions;
use symphonia::core::units::{Time, TimeBase, Timestamp};

use crate::error::{Error, Result};
use crate::input::{InputError, InputName};
use crate::ogg_opus::{OggOpusError, OggOpusReader};
use crate::pcm::{MIX_RATE, PcmFormat};
use crate::source::{SourceOptions, SourceShared, SourceSlot};
use crate::writer::{OpusWriter, PcmWriter, validate_opus_packet};
use crate::{CallId, SourceId};

/// Bytes an Ogg Opus reader can read from: a file, an HTTP stream, a child's pipe.
pub(crate) trait ByteStream: Read + Seek + Send + Sync {}
impl<T: Read + Seek + Send + Sync> ByteStream for T {}

/// How the bytes of a child's output (or another stream) are read.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InputFormat {
    /// Raw interleaved PCM, no header, in this rate and channel count.
    Raw {
        /// Rate and channels.
        format: PcmFormat,
        /// How each sample is stored.
        encoding: SampleEncoding,
    },
    /// A container symphonia recognises (wav, flac, mp3, ogg vorbis); `extension` (without the
    /// dot) is a hint for the probe.
    Probe {
        /// For example `"mp3"`.
        extension: Option<String>,
    },
    /// Ogg Opus: its 20 ms packets are passed through (or decoded and mixed).
    OggOpus,
}

/// How raw PCM samples are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SampleEncoding {
    /// Signed 16-bit little-endian (ffmpeg's `-f s16le`).
    S16Le,
    /// 32-bit float little-endian (ffmpeg's `-f f32le`).
    F32Le,
}

impl SampleEncoding {
    fn bytes(self) -> usize {
        match self {
            SampleEncoding::S16Le => 2,
            SampleEncoding::F32Le => 4,
        }
    }

    fn decode(self, bytes: &[u8]) -> f32 {
        match self {
            SampleEncoding::S16Le => {
                crate::pcm::i16_to_f32(i16::from_le_bytes([bytes[0], bytes[1]]))
            }
            SampleEncoding::F32Le => f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
        }
    }
}

/// Bytes read from a raw PCM input at a time.
const RAW_CHUNK: usize = 8192;

/// A freshly opened input: the slot for the mixer, the decoder for whoever pumps it, and the
/// shared state for the handle.
pub(crate) struct Opened {
    pub(crate) slot: Box<SourceSlot>,
    pub(crate) decoder: Decoder,
    pub(crate) shared: Arc<SourceShared>,
}

/// What [`Decoder::open`] needs besides the bytes.
pub(crate) struct DecodeOptions {
    pub(crate) source: SourceOptions,
    pub(crate) looping: bool,
    pub(crate) start_at: Duration,
    /// Whether the bytes can be repositioned (so seeks and loops work).
    pub(crate) seekable: bool,
    /// The input's length in bytes, when known.
    pub(crate) byte_len: Option<u64>,
}

/// Decodes one input into its source's ring, a bounded amount per [`Decoder::pump`].
pub(crate) struct Decoder {
    call: CallId,
    source: SourceId,
    name: InputName,
    shared: Arc<SourceShared>,
    media: Media,
    /// Seeks are possible: the decoder outlives the end of its input while the source plays,
    /// so a seek back still works.
    seekable: bool,
    /// The input is read to its end and the source told so (it may still be seeked).
    at_end: bool,
    #[cfg(test)]
    pub(crate) panic_on_pump: bool,
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
    Raw {
        bytes: Box<dyn ByteStream>,
        encoding: SampleEncoding,
        writer: PcmWriter,
        /// Bytes read but not yet a whole sample frame.
        carry: Vec<u8>,
        pending: Vec<f32>,
        written: usize,
    },
}

impl Decoder {
    /// Opens `bytes` and decodes the first packet, so a corrupt or unsupported input is an
    /// error here, and the true rate and channel count are known.
    pub(crate) fn open(
        call: CallId,
        source: SourceId,
        name: InputName,
        bytes: Box<dyn ByteStream>,
        format: InputFormat,
        options: &DecodeOptions,
    ) -> Result<Opened> {
        let fail = |error: InputError| Error::Input {
            input: name.clone(),
            error,
        };
        match format {
            InputFormat::Raw { format, encoding } => {
                let mut bytes = bytes;
                let mut carry = Vec::with_capacity(RAW_CHUNK);
                let mut pending = Vec::with_capacity(RAW_CHUNK);
                // As for containers: the first audio is read before the source exists, so an
                // input that ends at once is an error for the caller.
                if !read_raw(&mut bytes, encoding, format, &mut carry, &mut pending)
                    .map_err(fail)?
                {
                    return Err(fail(InputError::NoAudio));
                }
                let built = SourceSlot::new_pcm(source, format, &options.source)?;
                Ok(Self::finish_open(
                    call,
                    source,
                    name,
                    options,
                    built.slot,
                    built.shared,
                    Media::Raw {
                        bytes,
                        encoding,
                        writer: built.writer,
                        carry,
                        pending,
                        written: 0,
                    },
                ))
            }
            InputFormat::OggOpus => {
                let mut stream =
                    OpusStream::open(bytes, options).map_err(|e| fail(InputError::OggOpus(e)))?;
                let first = stream.next_packet().map_err(fail)?;
                let Some(first) = first else {
                    return Err(fail(InputError::NoAudio));
                };
                validate_opus_packet(&first).map_err(|_| fail(InputError::OpusPacketDuration))?;
                let built = SourceSlot::new_opus(source, &options.source)?;
                if let Some(duration) = stream.duration {
                    built.shared.set_duration(duration);
                }
                Ok(Self::finish_open(
                    call,
                    source,
                    name,
                    options,
                    built.slot,
                    built.shared,
                    Media::Opus {
                        stream,
                        writer: built.writer,
                        pending: Some(first),
                    },
                ))
            }
            InputFormat::Probe { extension } => {
                let source_bytes: Box<dyn MediaSource> = if options.seekable {
                    Box::new(SeekableBytes {
                        bytes,
                        len: options.byte_len,
                    })
                } else {
                    Box::new(symphonia::core::io::ReadOnlySource::new(bytes))
                };
                let mut stream = DecodedStream::open(source_bytes, extension.as_deref(), options)
                    .map_err(fail)?;
                let mut pending = Vec::new();
                if !stream.next_chunk(&mut pending).map_err(fail)? {
                    return Err(fail(InputError::NoAudio));
                }
                let built = SourceSlot::new_pcm(source, stream.format, &options.source)?;
                if let Some(frames) = stream.frames {
                    let seconds = frames as f64 / f64::from(stream.format.sample_rate());
                    built.shared.set_duration(Duration::from_secs_f64(seconds));
                }
                Ok(Self::finish_open(
                    call,
                    source,
                    name,
                    options,
                    built.slot,
                    built.shared,
                    Media::Decoded {
                        stream,
                        writer: built.writer,
                        pending,
                        written: 0,
                    },
                ))
            }
        }
    }

    fn finish_open(
        call: CallId,
        source: SourceId,
        name: InputName,
        options: &DecodeOptions,
        slot: Box<SourceSlot>,
        shared: Arc<SourceShared>,
        media: Media,
    ) -> Opened {
        shared.set_looping(options.looping);
        shared.seek.reset_position(options.start_at);
        let decoder = Decoder {
            call,
            source,
            name,
            shared: Arc::clone(&shared),
            media,
            seekable: options.seekable,
            at_end: false,
            #[cfg(test)]
            panic_on_pump: false,
        };
        Opened {
            slot,
            decoder,
            shared,
        }
    }

    pub(crate) fn call(&self) -> CallId {
        self.call
    }

    pub(crate) fn source(&self) -> SourceId {
        self.source
    }

    pub(crate) fn name(&self) -> &InputName {
        &self.name
    }

    pub(crate) fn shared(&self) -> &Arc<SourceShared> {
        &self.shared
    }

    /// Applies a pending seek, then decodes until the ring is full. `Ok(true)`: keep pumping
    /// (a seekable input stays until its source ends, even after its end was read);
    /// `Ok(false)`: the input is done (or the source ended) and the decoder can be dropped,
    /// which finishes the source. `Err`: reading or decoding failed; the source plays out what
    /// it has and ends as failed.
    pub(crate) fn pump(&mut self) -> std::result::Result<bool, InputError> {
        #[cfg(test)]
        if self.panic_on_pump {
            panic!("a decoder bug, injected by a test");
        }
        if self.shared.is_ended() {
            return Ok(false);
        }
        let result = self.seek_if_asked().and_then(|more| {
            if !more {
                Ok(false)
            } else if self.at_end {
                Ok(true)
            } else {
                self.pump_inner()
            }
        });
        match result {
            Ok(false) if self.seekable && !self.shared.is_ended() => {
                // Tell the source its input is complete, but stay for a seek back.
                self.at_end = true;
                self.shared.finish();
                Ok(true)
            }
            Err(error) => {
                self.shared.fail();
                Err(error)
            }
            other => other,
        }
    }

    /// The input was read to its end; only a seek brings more.
    pub(crate) fn at_end(&self) -> bool {
        self.at_end
    }

    /// Marks the source failed (after a panic in [`Decoder::pump`]).
    pub(crate) fn fail(&self) {
        self.shared.fail();
    }

    fn seek_if_asked(&mut self) -> std::result::Result<bool, InputError> {
        let Some(to) = self.shared.seek.take_request() else {
            return Ok(true);
        };
        let (reached, written) = match &mut self.media {
            Media::Decoded {
                stream,
                writer,
                pending,
                written,
            } => {
                pending.clear();
                *written = 0;
                (stream.seek(to)?, writer.written())
            }
            Media::Opus {
                stream,
                writer,
                pending,
            } => {
                *pending = None;
                (stream.seek(to)?, writer.written())
            }
            // Never marked seekable.
            Media::Raw { .. } => return Ok(true),
        };
        match reached {
            Some(position) => {
                // More input is coming again: un-finish before the mark, so the mixer never
                // sees the mark with the old end-of-input.
                if self.at_end {
                    self.at_end = false;
                    self.shared.unfinish();
                }
                self.shared.seek.publish(written, position);
                Ok(true)
            }
            None => {
                // Past the end: drop what is buffered and finish.
                let end = self.shared_duration().unwrap_or(to);
                self.shared.seek.publish(written, end);
                Ok(false)
            }
        }
    }

    fn shared_duration(&self) -> Option<Duration> {
        self.shared.duration()
    }

    fn pump_inner(&mut self) -> std::result::Result<bool, InputError> {
        match &mut self.media {
            Media::Decoded {
                stream,
                writer,
                pending,
                written,
            } => loop {
                if let Some(more) = flush_pending(writer, pending, written) {
                    return Ok(more);
                }
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
            Media::Raw {
                bytes,
                encoding,
                writer,
                carry,
                pending,
                written,
            } => loop {
                if let Some(more) = flush_pending(writer, pending, written) {
                    return Ok(more);
                }
                if !read_raw(bytes, *encoding, writer.format(), carry, pending)? {
                    return Ok(false);
                }
            },
        }
    }
}

/// Reads one chunk of raw PCM into `out` as f32, keeping a partial sample frame in `carry`.
/// `Ok(false)` at the end of the input.
/// Writes what is left of `pending` into the source's ring. `Some(true)`: the ring is full, come
/// back later; `Some(false)`: the source is gone; `None`: all written, `pending` is emptied for
/// the next chunk.
fn flush_pending(
    writer: &mut PcmWriter,
    pending: &mut Vec<f32>,
    written: &mut usize,
) -> Option<bool> {
    if *written < pending.len() {
        match writer.write_f32(&pending[*written..]) {
            Ok(count) => *written += count,
            Err(_) => return Some(false),
        }
        if *written < pending.len() {
            return Some(true);
        }
    }
    pending.clear();
    *written = 0;
    None
}

fn read_raw(
    bytes: &mut Box<dyn ByteStream>,
    encoding: SampleEncoding,
    format: PcmFormat,
    carry: &mut Vec<u8>,
    out: &mut Vec<f32>,
) -> std::result::Result<bool, InputError> {
    let frame_bytes = encoding.bytes() * usize::from(format.channels());
    loop {
        let kept = carry.len();
        carry.resize(kept + RAW_CHUNK, 0);
        let read = loop {
            match bytes.read(&mut carry[kept..]) {
                Ok(read) => break read,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    carry.truncate(kept);
                    return Err(InputError::from_io(e));
                }
            }
        };
        carry.truncate(kept + read);
        if read == 0 {
            // A trailing partial frame cannot be played.
            return Ok(false);
        }
        let whole = carry.len() / frame_bytes * frame_bytes;
        out.extend(
            carry[..whole]
                .chunks_exact(encoding.bytes())
                .map(|sample| encoding.decode(sample)),
        );
        carry.drain(..whole);
        if !out.is_empty() {
            return Ok(true);
        }
    }
}

/// A seekable byte stream as symphonia's media source.
struct SeekableBytes {
    bytes: Box<dyn ByteStream>,
    len: Option<u64>,
}

impl Read for SeekableBytes {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.bytes.read(buf)
    }
}

impl Seek for SeekableBytes {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        self.bytes.seek(pos)
    }
}

impl MediaSource for SeekableBytes {
    fn is_seekable(&self) -> bool {
        true
    }

    fn byte_len(&self) -> Option<u64> {
        self.len
    }
}

/// How long an input plays, as its container says, read the way [`Decoder::open`] reads it
/// (so it is the duration the source will report): the headers only, plus — for a `seekable`
/// input whose format keeps its length at the end, Ogg — a seek there. `None` when the
/// container does not say without a full read. Raw PCM has no container: `None`.
pub(crate) fn probe_duration(
    bytes: Box<dyn ByteStream>,
    format: &InputFormat,
    seekable: bool,
    byte_len: Option<u64>,
) -> std::result::Result<Option<Duration>, InputError> {
    match format {
        InputFormat::Raw { .. } => Ok(None),
        InputFormat::OggOpus if seekable => OggOpusReader::new(bytes)
            .and_then(|mut reader| reader.duration())
            .map_err(InputError::OggOpus),
        InputFormat::OggOpus => Ok(None),
        InputFormat::Probe { extension } => {
            let source: Box<dyn MediaSource> = if seekable {
                Box::new(SeekableBytes {
                    bytes,
                    len: byte_len,
                })
            } else {
                Box::new(symphonia::core::io::ReadOnlySource::new(bytes))
            };
            let reader = probe(source, extension.as_deref()).map_err(InputError::Media)?;
            let track = reader
                .default_track(TrackType::Audio)
                .ok_or(InputError::NoAudioTrack)?;
            let rate = track
                .codec_params
                .as_ref()
                .and_then(|params| params.audio())
                .and_then(|params| params.sample_rate)
                .filter(|&rate| rate > 0);
            Ok(match (track.num_frames, rate) {
                (Some(frames), Some(rate)) => {
                    Some(Duration::from_secs_f64(frames as f64 / f64::from(rate)))
                }
                _ => None,
            })
        }
    }
}

/// Opens a container with symphonia; `extension` is the hint. The one probe playback and the
/// tools' up-front media check use.
pub(crate) fn probe(
    source: Box<dyn MediaSource>,
    extension: Option<&str>,
) -> std::result::Result<Box<dyn FormatReader>, MediaError> {
    let stream = MediaSourceStream::new(source, Default::default());
    let mut hint = Hint::new();
    if let Some(extension) = extension {
        hint.with_extension(extension);
    }
    symphonia::default::get_probe().probe(
        &hint,
        stream,
        FormatOptions::default(),
        MetadataOptions::default(),
    )
}

/// An input decoded by symphonia into interleaved f32 at its own rate (mono or stereo).
struct DecodedStream {
    reader: Box<dyn FormatReader>,
    decoder: Box<dyn AudioDecoder>,
    track_id: u32,
    time_base: Option<TimeBase>,
    format: PcmFormat,
    /// Length in frames, when the container says.
    frames: Option<u64>,
    looping: bool,
    /// Decoded time still to drop after an accurate seek landed before its target.
    skip: Duration,
    /// The decoder's output with all of the input's channels.
    scratch: Vec<f32>,
    /// Whether anything was decoded since the last rewind, so an empty looping input cannot
    /// spin forever.
    decoded_since_rewind: bool,
}

impl DecodedStream {
    fn open(
        source: Box<dyn MediaSource>,
        extension: Option<&str>,
        options: &DecodeOptions,
    ) -> std::result::Result<Self, InputError> {
        let reader = probe(source, extension).map_err(InputError::Media)?;
        let track = reader
            .default_track(TrackType::Audio)
            .ok_or(InputError::NoAudioTrack)?;
        let track_id = track.id;
        let frames = track.num_frames;
        let time_base = track.time_base;
        let params = track
            .codec_params
            .as_ref()
            .and_then(|params| params.audio())
            .ok_or(InputError::NoAudioTrack)?;
        let decoder = symphonia::default::get_codecs()
            .make_audio_decoder(params, &AudioDecoderOptions::default())
            .map_err(InputError::Media)?;
        // Provisional until the first decoded packet says otherwise.
        let rate = params.sample_rate.unwrap_or(MIX_RATE);
        let channels = params.channels.as_ref().map_or(2, |c| c.count().min(2)) as u8;
        let format =
            PcmFormat::new(rate, channels.max(1)).map_err(|_| InputError::FormatChanged)?;
        let mut stream = Self {
            reader,
            decoder,
            track_id,
            time_base,
            format,
            frames,
            looping: options.looping,
            skip: Duration::ZERO,
            scratch: Vec::new(),
            decoded_since_rewind: false,
        };
        if !options.start_at.is_zero() && stream.seek(options.start_at)?.is_none() {
            return Err(InputError::NoAudio);
        }
        Ok(stream)
    }

    /// Moves to `to`. `Some(position)`: where the next audio starts; `None`: past the end.
    fn seek(&mut self, to: Duration) -> std::result::Result<Option<Duration>, InputError> {
        if let Some(frames) = self.frames {
            let length =
                Duration::from_secs_f64(frames as f64 / f64::from(self.format.sample_rate()));
            if to >= length {
                return Ok(None);
            }
        }
        let time = Time::try_from_secs_f64(to.as_secs_f64()).unwrap_or(Time::ZERO);
        let seek = SeekTo::Time {
            time,
            track_id: Some(self.track_id),
        };
        match self.reader.seek(SeekMode::Accurate, seek) {
            Ok(seeked) => {
                self.decoder.reset();
                // Accurate seeks may land on an earlier packet; the difference is decoded and
                // dropped, so the first sample played is the one asked for.
                let early = seeked
                    .required_ts
                    .get()
                    .saturating_sub(seeked.actual_ts.get());
                self.skip = match (self.time_base, early) {
                    (Some(base), early) if early > 0 => base
                        .calc_time(Timestamp::new(early))
                        .map_or(Duration::ZERO, |t| {
                            Duration::from_secs_f64(t.as_secs_f64().max(0.0))
                        }),
                    _ => Duration::ZERO,
                };
                Ok(Some(to))
            }
            Err(MediaError::SeekError(SeekErrorKind::OutOfRange)) => Ok(None),
            Err(MediaError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                Ok(None)
            }
            Err(e) => Err(InputError::Media(e)),
        }
    }

    /// Decodes the next packet and appends it to `out` as interleaved mono or stereo.
    /// Returns `Ok(false)` at the end of the input (after rewinding, when looping).
    fn next_chunk(&mut self, out: &mut Vec<f32>) -> std::result::Result<bool, InputError> {
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
                Err(MediaError::IoError(e)) => return Err(InputError::from_io(e)),
                Err(e) => return Err(InputError::Media(e)),
            };
            if packet.track_id != self.track_id {
                continue;
            }
            let decoded = match self.decoder.decode(&packet) {
                Ok(decoded) => decoded,
                // One bad packet: skip it, as players do.
                Err(MediaError::DecodeError(_)) => continue,
                Err(e) => return Err(InputError::Media(e)),
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
                self.format = PcmFormat::new(rate, kept).map_err(|_| InputError::FormatChanged)?;
            } else if rate != self.format.sample_rate() || kept != self.format.channels() {
                return Err(InputError::FormatChanged);
            }
            self.scratch.resize(decoded.samples_interleaved(), 0.0);
            decoded.copy_to_slice_interleaved(&mut self.scratch[..]);
            let mut frames = &self.scratch[..];
            if !self.skip.is_zero() {
                let skip_frames = ((self.skip.as_secs_f64() * f64::from(rate)).round() as usize)
                    .min(decoded.frames());
                frames = &frames[skip_frames * channels..];
                self.skip = self.skip.saturating_sub(Duration::from_secs_f64(
                    skip_frames as f64 / f64::from(rate),
                ));
                if skip_frames == decoded.frames() || self.skip < Duration::from_micros(10) {
                    self.skip = Duration::ZERO;
                }
            }
            if channels <= 2 {
                out.extend_from_slice(frames);
            } else {
                // More than stereo: keep the front left and right channels.
                for frame in frames.chunks_exact(channels) {
                    out.extend_from_slice(&frame[..2]);
                }
            }
            self.decoded_since_rewind = true;
            if out.is_empty() {
                continue;
            }
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

/// An Ogg Opus input read packet by packet for passthrough.
struct OpusStream {
    reader: OggOpusReader<Box<dyn ByteStream>>,
    looping: bool,
    seekable: bool,
    duration: Option<Duration>,
    packets_since_rewind: u64,
}

impl OpusStream {
    fn open(
        bytes: Box<dyn ByteStream>,
        options: &DecodeOptions,
    ) -> std::result::Result<Self, OggOpusError> {
        let mut reader = OggOpusReader::new(bytes)?;
        let duration = if options.seekable {
            reader.duration()?
        } else {
            None
        };
        let mut stream = Self {
            reader,
            looping: options.looping,
            seekable: options.seekable,
            duration,
            packets_since_rewind: 0,
        };
        if !options.start_at.is_zero() {
            stream.reader.seek(options.start_at)?;
        }
        Ok(stream)
    }

    fn seek(&mut self, to: Duration) -> std::result::Result<Option<Duration>, InputError> {
        if !self.seekable {
            return Ok(Some(to));
        }
        self.reader.seek(to).map_err(InputError::OggOpus)
    }

    fn next_packet(&mut self) -> std::result::Result<Option<Vec<u8>>, InputError> {
        loop {
            match self.reader.next_packet() {
                Ok(Some(packet)) => {
                    self.packets_since_rewind += 1;
                    return Ok(Some(packet));
                }
                Ok(None) if self.looping && self.seekable && self.packets_since_rewind > 0 => {
                    self.reader
                        .seek(Duration::ZERO)
                        .map_err(InputError::OggOpus)?;
                    self.packets_since_rewind = 0;
                }
                Ok(None) => return Ok(None),
                Err(OggOpusError::Io(e)) => return Err(InputError::from_io(e)),
                Err(e) => return Err(InputError::OggOpus(e)),
            }
        }
    }
}
