//! HTTP(S) streams as sources: a progressive download read ahead into the source's ring on the
//! stream's own thread, resumed with a `Range` request when the connection drops, and seekable
//! by `Range` when the server supports it.

use std::io::{Read, Seek, SeekFrom};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::CallId;
use crate::decode::{DecodeOptions, Decoder, InputFormat};
use crate::engine::{Inner, Placement};
use crate::error::{Error, Result};
use crate::http::{Body, HttpError, MAX_REDIRECTS, Url, get, tls_config};
use crate::input::{InputError, InputName};
use crate::source::SourceOptions;
use crate::stream::Feed;
use crate::stream::Rewind;

/// How an HTTP stream is played.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpOptions {
    /// Initial linear gain.
    pub volume: f32,
    /// Start paused.
    pub paused: bool,
    /// Start again from the beginning at the end, until stopped (only when the stream is
    /// seekable: the server accepts range requests and states the length).
    pub looping: bool,
    /// Where to start (by a `Range` request when the server supports them).
    pub start_at: Duration,
    /// How much decoded audio is kept ready; the download runs this far ahead of playback.
    pub read_ahead: Duration,
    /// Reconnects in a row after a dropped connection before the source fails.
    pub max_reconnects: u32,
    /// Connecting, or a read that waits longer than this, counts as a dropped connection.
    pub timeout: Duration,
    /// Extra trusted root certificates (DER) for `https://`, beside the webpki roots.
    pub extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            volume: 1.0,
            paused: false,
            looping: false,
            start_at: Duration::ZERO,
            read_ahead: Duration::from_secs(5),
            max_reconnects: 5,
            timeout: Duration::from_secs(10),
            extra_roots: Vec::new(),
        }
    }
}

/// First wait before a reconnect; doubled for each failure in a row.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(50);
/// A forward seek shorter than this reads on instead of opening a new connection.
const SKIP_BY_READING: u64 = 64 * 1024;
/// Bytes kept for stepping back without a new request (probes and the Ogg reader step back).
const HISTORY: usize = 64 * 1024;

/// The socket a stream currently reads from, shared so the engine can shut it down.
#[derive(Default)]
struct Abort {
    socket: Mutex<Option<TcpStream>>,
    aborted: AtomicBool,
}

impl Abort {
    fn abort(&self) {
        self.aborted.store(true, Ordering::Release);
        if let Some(socket) = lock(&self.socket).as_ref() {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }

    fn is_aborted(&self) -> bool {
        self.aborted.load(Ordering::Acquire)
    }
}

/// An HTTP resource as a byte stream: `Read` downloads progressively, reconnecting at the
/// current position when the connection drops; `Seek` moves by `Range` request (lazily, at the
/// next read) when the server accepts them.
pub(crate) struct HttpStream {
    url: Url,
    tls: Arc<rustls::ClientConfig>,
    options: HttpOptions,
    body: Option<Body<std::io::BufReader<crate::http::Conn>>>,
    /// Where the next byte of `body` is in the resource.
    body_position: u64,
    /// Where the reader is.
    position: u64,
    length: Option<u64>,
    ranges: bool,
    content_type: Option<String>,
    abort: Arc<Abort>,
    /// The last bytes read, for stepping back without a request.
    rewind: Rewind,
}

impl HttpStream {
    fn open(url: Url, options: HttpOptions) -> std::result::Result<Self, HttpError> {
        let tls = tls_config(&options.extra_roots)?;
        let mut stream = Self {
            url,
            tls,
            options,
            body: None,
            body_position: 0,
            position: 0,
            length: None,
            ranges: false,
            content_type: None,
            abort: Arc::new(Abort::default()),
            rewind: Rewind::new(HISTORY),
        };
        stream.connect(0)?;
        if let Some(content_type) = &stream.content_type
            && !is_audio(content_type)
        {
            return Err(HttpError::NotAudio {
                content_type: content_type.clone(),
            });
        }
        Ok(stream)
    }

    /// Requests the resource from `from` on, following redirects.
    fn connect(&mut self, from: u64) -> std::result::Result<(), HttpError> {
        self.body = None;
        for _ in 0..=MAX_REDIRECTS {
            let (socket, head, reader) = get(&self.url, from, &self.tls, self.options.timeout)?;
            *lock(&self.abort.socket) = Some(socket);
            if self.abort.is_aborted() {
                return Err(HttpError::Connect(std::io::ErrorKind::Interrupted.into()));
            }
            match head.status {
                301 | 302 | 303 | 307 | 308 => {
                    let location = head.location.as_deref().ok_or(HttpError::Malformed)?;
                    self.url = self.url.join(location)?;
                    continue;
                }
                200 | 206 => {}
                status => return Err(HttpError::Status { status }),
            }
            self.content_type.clone_from(&head.content_type);
            let start = match (head.status, head.range) {
                (206, Some((start, total))) => {
                    self.ranges = true;
                    self.length = total.or(self.length);
                    start
                }
                (206, None) => return Err(HttpError::Malformed),
                _ => {
                    self.ranges |= head.accepts_ranges;
                    self.length = head.content_length.or(self.length);
                    0
                }
            };
            self.body = Some(Body::new(reader, &head));
            self.body_position = start;
            if start > from {
                return Err(HttpError::Malformed);
            }
            return Ok(());
        }
        Err(HttpError::TooManyRedirects)
    }

    /// Reads from the body at `position`: skips forward or reconnects if the body is elsewhere,
    /// and resumes after a drop.
    fn read_body(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut failures = 0;
        loop {
            if self.abort.is_aborted() {
                return Err(std::io::ErrorKind::Interrupted.into());
            }
            let error = match self.position_body() {
                Ok(()) => {
                    let body = self.body.as_mut().ok_or(std::io::ErrorKind::NotConnected)?;
                    match body.read(buf) {
                        Ok(0) if self.length.is_some_and(|l| self.body_position < l) => {
                            std::io::ErrorKind::UnexpectedEof.into()
                        }
                        Ok(read) => {
                            self.body_position += read as u64;
                            return Ok(read);
                        }
                        Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(error) => error,
                    }
                }
                Err(HttpError::Connect(error)) => error,
                // A 4xx/5xx or garbage on a reconnect is final.
                Err(other) => return Err(std::io::Error::other(other)),
            };
            if self.abort.is_aborted() {
                return Err(error);
            }
            self.body = None;
            failures += 1;
            if failures > self.options.max_reconnects {
                return Err(std::io::Error::other(HttpError::Dropped {
                    attempts: failures - 1,
                    source: error,
                }));
            }
            tracing::debug!(url = %self.url, position = self.position, "reconnecting: {error}");
            std::thread::sleep(RECONNECT_BACKOFF * (1 << (failures - 1).min(6)));
        }
    }

    /// Makes `body` deliver the byte at `position` next.
    fn position_body(&mut self) -> std::result::Result<(), HttpError> {
        if self.body.is_some() && self.body_position == self.position {
            return Ok(());
        }
        let ahead = self.position.saturating_sub(self.body_position);
        if self.body.is_some() && self.position > self.body_position && ahead <= SKIP_BY_READING {
            let skipped = self.skip_body(ahead);
            if skipped == Some(ahead) {
                return Ok(());
            }
        }
        let from = if self.ranges { self.position } else { 0 };
        self.connect(from)?;
        // Without ranges the resource is read again from its start up to the position.
        let behind = self.position - self.body_position;
        if self.skip_body(behind) != Some(behind) {
            self.body = None;
            return Err(HttpError::Connect(std::io::ErrorKind::UnexpectedEof.into()));
        }
        Ok(())
    }

    fn skip_body(&mut self, count: u64) -> Option<u64> {
        let body = self.body.as_mut()?;
        let skipped = std::io::copy(&mut body.take(count), &mut std::io::sink()).ok()?;
        self.body_position += skipped;
        Some(skipped)
    }
}

impl Read for HttpStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let count = match self.rewind.replay_into(buf) {
            Some(count) => count,
            None => {
                let count = self.read_body(buf)?;
                self.rewind.remember(&buf[..count]);
                count
            }
        };
        self.position += count as u64;
        Ok(count)
    }
}

impl Seek for HttpStream {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        let target = match pos {
            SeekFrom::Start(to) => Some(to),
            SeekFrom::Current(offset) => self.position.checked_add_signed(offset),
            SeekFrom::End(offset) => self.length.and_then(|l| l.checked_add_signed(offset)),
        }
        .ok_or(std::io::ErrorKind::InvalidInput)?;
        if target == self.position {
            return Ok(target);
        }
        // Back over bytes still in the history: replay them.
        // Forward into bytes being replayed too.
        let within = if target < self.position {
            self.position - target <= self.rewind.behind()
        } else {
            target - self.position <= self.rewind.ahead()
        };
        if within {
            self.rewind.step(target as i64 - self.position as i64);
            self.position = target;
            return Ok(target);
        }
        if !self.ranges && target < self.body_position {
            return Err(std::io::ErrorKind::Unsupported.into());
        }
        // Elsewhere: the next read gets there (by reading on, or by a range request).
        self.rewind.clear();
        self.position = target;
        Ok(target)
    }
}

/// Whether a `Content-Type` can be audio. Generic binary types are allowed (many servers send
/// `application/octet-stream`); the probe decides.
fn is_audio(content_type: &str) -> bool {
    content_type.starts_with("audio/")
        || content_type.starts_with("video/")
        || matches!(
            content_type,
            "application/ogg" | "application/octet-stream" | "binary/octet-stream" | ""
        )
}

/// The file extension a `Content-Type` or URL path suggests, as a hint for the probe.
fn extension_hint(content_type: Option<&str>, url: &Url) -> Option<String> {
    let from_type = match content_type? {
        "audio/mpeg" | "audio/mp3" => "mp3",
        "audio/flac" | "audio/x-flac" => "flac",
        "audio/wav" | "audio/x-wav" | "audio/wave" => "wav",
        "audio/ogg" | "application/ogg" | "audio/vorbis" => "ogg",
        _ => "",
    };
    if !from_type.is_empty() {
        return Some(from_type.to_owned());
    }
    let path = url.path.split('?').next().unwrap_or_default();
    let name = path.rsplit('/').next().unwrap_or_default();
    name.rsplit_once('.')
        .map(|(_, extension)| extension.to_ascii_lowercase())
}

/// What [`probe_url`] learnt of an HTTP(S) resource without playing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct UrlProbe {
    /// How long it plays, as its container says: from its headers (wav, flac, mp3 with a
    /// Xing/Info header …), or for Ogg from its last page when the resource is seekable.
    /// `None` when the server does not state the resource's length (a live stream, whose
    /// container may claim anything), or for a format that only tells by being read to the end.
    pub duration: Option<Duration>,
    /// Whether its source can seek: the server states the length and takes range requests.
    pub seekable: bool,
}

/// Opens `url` as [`crate::Engine::play_url`] does (same checks and errors: status, content
/// type, the container) and reads only what the container needs to tell its duration, then
/// closes the connection: one request for the headers (plus range requests to read the last
/// page of a seekable Ogg file, whose length is there), as the start of playback reads it.
/// Blocks for up to `options.timeout` per request.
pub fn probe_url(url: &str, options: &HttpOptions) -> Result<UrlProbe> {
    let name = InputName::Url(display_url(url));
    let fail = |error: HttpError| Error::Input {
        input: name.clone(),
        error: InputError::Http(error),
    };
    let parsed = Url::parse(url).map_err(fail)?;
    let mut stream = HttpStream::open(parsed, options.clone()).map_err(fail)?;
    let format = sniff_format(&mut stream).map_err(|e| input_error(&name, e))?;
    let seekable = stream.ranges && stream.length.is_some();
    let byte_len = stream.length;
    let duration = crate::decode::probe_duration(Box::new(stream), &format, seekable, byte_len)
        .map_err(|error| Error::Input {
            input: name.clone(),
            error,
        })?
        .filter(|_| byte_len.is_some());
    Ok(UrlProbe { duration, seekable })
}

/// How to read the stream (Ogg Opus read packet by packet, anything else probed), from its
/// first bytes; the stream is back at its start afterwards.
fn sniff_format(stream: &mut HttpStream) -> std::io::Result<InputFormat> {
    let mut start = [0_u8; 64];
    let sniffed = read_up_to(stream, &mut start)?;
    stream.seek(SeekFrom::Start(0))?;
    let start = &start[..sniffed];
    Ok(
        if start.starts_with(b"OggS") && start.windows(8).any(|w| w == b"OpusHead") {
            InputFormat::OggOpus
        } else {
            InputFormat::Probe {
                extension: extension_hint(stream.content_type.as_deref(), &stream.url),
            }
        },
    )
}

struct HttpFeed;

impl Feed for HttpFeed {
    fn finish(
        &mut self,
        outcome: std::result::Result<(), InputError>,
        stopped: bool,
    ) -> Option<InputError> {
        match outcome {
            Err(error) if !stopped => Some(error),
            _ => None,
        }
    }
}

impl crate::Engine {
    /// Plays an `http://` or `https://` stream in `call` (anything [`crate::Engine::play_file`]
    /// plays). Returns once the response is checked and the first audio decoded, so a bad URL,
    /// an error status ([`HttpError::Status`]), a web page instead of audio
    /// ([`HttpError::NotAudio`]) or undecodable content is an error here. The download runs
    /// on a thread of its own, [`HttpOptions::read_ahead`] ahead of playback; a dropped
    /// connection is resumed where it stopped (by `Range` request, or by reading again up to
    /// there), up to [`HttpOptions::max_reconnects`] times in a row. The source can
    /// [`crate::SourceHandle::seek`] when the server accepts range requests.
    ///
    /// ```no_run
    /// use quaver_engine::{Engine, EngineConfig, HttpOptions};
    ///
    /// let engine = Engine::new(EngineConfig::default())?;
    /// let (call, _frames) = engine.create_call()?;
    /// let handle = engine.play_url(call, "https://example.com/song.mp3", HttpOptions::default())?;
    /// # drop(handle);
    /// # Ok::<(), quaver_engine::Error>(())
    /// ```
    pub fn play_url(
        &self,
        call: CallId,
        url: &str,
        options: HttpOptions,
    ) -> Result<crate::SourceHandle> {
        play_url(&self.inner, call, url, options, Placement::Now)
    }
}

/// Opens `url` and adds its source to `call` as `placement` says.
pub(crate) fn play_url(
    inner: &Inner,
    call: CallId,
    url: &str,
    options: HttpOptions,
    placement: Placement,
) -> Result<crate::SourceHandle> {
    let name = InputName::Url(display_url(url));
    let fail = |error: HttpError| Error::Input {
        input: name.clone(),
        error: InputError::Http(error),
    };
    let parsed = Url::parse(url).map_err(fail)?;
    let decode = |seekable| DecodeOptions {
        source: SourceOptions {
            buffer: options.read_ahead,
            volume: options.volume,
            paused: options.paused,
            latency_cap: None,
        },
        looping: options.looping && seekable,
        start_at: options.start_at,
        seekable,
        byte_len: None,
    };
    let mut stream = HttpStream::open(parsed, options.clone()).map_err(fail)?;
    let format = sniff_format(&mut stream).map_err(|e| input_error(&name, e))?;
    let seekable = stream.ranges && stream.length.is_some();
    let mut options = decode(seekable);
    options.byte_len = stream.length;
    let abort = Arc::clone(&stream.abort);
    let id = inner.next_source_id();
    let opened = Decoder::open(call, id, name.clone(), Box::new(stream), format, &options)?;
    if seekable {
        opened.shared.set_seekable();
    }
    inner.start_stream(
        call,
        opened,
        Box::new(HttpFeed),
        Box::new(move || abort.abort()),
        placement,
    )
}

/// The URL without user information, for errors and events.
fn display_url(url: &str) -> String {
    match Url::parse(url) {
        Ok(parsed) => parsed.to_string(),
        Err(_) => url.split('@').next_back().unwrap_or_default().to_owned(),
    }
}

fn input_error(name: &InputName, error: std::io::Error) -> Error {
    Error::Input {
        input: name.clone(),
        error: InputError::from_io(error),
    }
}

fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 => break,
            read => filled += read,
        }
    }
    Ok(filled)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
