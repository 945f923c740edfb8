//! `quaver record`: joins a voice channel and writes every other member's audio to a file of
//! their own — Ogg Opus (the packets as they came, no re-encoding) or WAV (decoded, with loss
//! concealed). All files start at the same instant and fill the time a member was silent (or
//! not there yet) with silence, so they mix back by simply adding them.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use quaver::engine::ogg_opus::OggOpusWriter;
use quaver::{
    FrameOrigin, ListenEvent, ReceiveMode, ReceiveOptions, ReceivedFrame, StreamStats, UserAudio,
};

use crate::server::wav::WavWriter;
use crate::{Error, Finished};

/// The Opus silence frame (20 ms): what a gap in an Ogg Opus recording is filled with.
const SILENCE: [u8; 3] = [0xF8, 0xFF, 0xFE];
/// Samples per channel in one 20 ms frame.
const FRAME: usize = 960;
/// The pre-skip written into each Ogg Opus header: libopus's usual encoder delay at 48 kHz. The
/// senders' real delay is not known to a receiver; every file gets the same value, so they stay
/// aligned with each other.
const PRE_SKIP: u16 = 312;

/// What to record (also the `quaver record` command line).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct RecordOptions {
    /// Where to join.
    #[command(flatten)]
    pub at: crate::channel::ChannelArgs,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long, value_parser = crate::args::seconds, allow_negative_numbers = true)]
    pub seconds: Option<Duration>,
    /// Directory for the files (created if missing).
    #[arg(short, long, default_value = ".")]
    pub output: PathBuf,
    /// Write decoded WAV (48 kHz stereo 16-bit) instead of Ogg Opus.
    #[arg(long)]
    pub wav: bool,
}

/// One member's recording.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The member.
    pub user_id: u64,
    /// The file written.
    pub path: PathBuf,
    /// Seconds of audio in it (silence included).
    pub seconds: f64,
    /// Their stream's figures.
    pub stats: StreamStats,
}

/// What `quaver record` did.
#[derive(Debug)]
pub struct RecordReport {
    /// One entry per member heard, by user ID.
    pub files: Vec<Recorded>,
    /// Whether it ran its course or was interrupted.
    pub finished: Finished,
}

impl fmt::Display for RecordReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.files.is_empty() {
            return write!(f, "nobody else spoke in the channel: no file written");
        }
        for (i, r) in self.files.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            let s = &r.stats;
            write!(
                f,
                "user {}: {} ({:.1} s; {} packets, {} lost, {} concealed, {} FEC, {} late, {} duplicates)",
                r.user_id,
                r.path.display(),
                r.seconds,
                s.received,
                s.lost,
                s.concealed,
                s.fec_recovered,
                s.late,
                s.duplicates
            )?;
        }
        Ok(())
    }
}

enum Sink {
    Opus(OggOpusWriter<BufWriter<File>>),
    Wav(WavWriter),
}

/// One member's file, written up to `next_tick`.
struct Track {
    audio: UserAudio,
    path: PathBuf,
    sink: Option<Sink>,
    next_tick: u64,
    frames: u64,
}

impl Track {
    fn open(audio: UserAudio, dir: &Path, wav: bool, start_tick: u64) -> Result<Self, Error> {
        let user = audio.user_id();
        let (path, sink) = if wav {
            let path = dir.join(format!("user-{user}.wav"));
            let w = WavWriter::create(&path).map_err(|e| Error::io(&path, e))?;
            (path, Sink::Wav(w))
        } else {
            let path = dir.join(format!("user-{user}.opus"));
            let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
            // The serial only has to differ between streams of one file; any value does.
            let w = OggOpusWriter::new(BufWriter::new(file), PRE_SKIP, 48_000, user as u32)
                .map_err(|e| Error::io(&path, e))?;
            (path, Sink::Opus(w))
        };
        Ok(Self {
            audio,
            path,
            sink: Some(sink),
            next_tick: start_tick,
            frames: 0,
        })
    }

    /// Writes what the stream has ready, with silence for the ticks it skipped.
    fn drain(&mut self) -> Result<(), Error> {
        while let Some(frame) = self.audio.pop() {
            self.write(&frame)?;
        }
        Ok(())
    }

    fn write(&mut self, frame: &ReceivedFrame) -> Result<(), Error> {
        // A frame from before this file started (held packets) is dropped.
        if frame.tick < self.next_tick {
            return Ok(());
        }
        while self.next_tick < frame.tick {
            self.silence()?;
        }
        let path = &self.path;
        match self.sink.as_mut() {
            Some(Sink::Wav(w)) => {
                let silence = [0i16; FRAME * 2];
                w.write(frame.pcm().map_or(&silence[..], |p| &p[..]))
                    .map_err(|e| Error::io(path, e))?;
            }
            Some(Sink::Opus(w)) => {
                let packet = match (frame.origin, frame.opus()) {
                    (FrameOrigin::Packet, Some(opus)) => opus,
                    // A lost packet: Ogg Opus has no gaps, and a receiver cannot re-encode
                    // what it never got; the silence frame keeps the timeline.
                    _ => &SILENCE[..],
                };
                w.write_packet(packet, FRAME as u64)
                    .map_err(|e| Error::io(path, e))?;
            }
            None => {}
        }
        self.next_tick += 1;
        self.frames += 1;
        Ok(())
    }

    fn silence(&mut self) -> Result<(), Error> {
        let path = &self.path;
        match self.sink.as_mut() {
            Some(Sink::Wav(w)) => w.write(&[0; FRAME * 2]).map_err(|e| Error::io(path, e))?,
            Some(Sink::Opus(w)) => w
                .write_packet(&SILENCE, FRAME as u64)
                .map_err(|e| Error::io(path, e))?,
            None => {}
        }
        self.next_tick += 1;
        self.frames += 1;
        Ok(())
    }

    /// Pads to `end_tick` and closes the file.
    fn finish(mut self, end_tick: u64) -> Result<Recorded, Error> {
        self.drain()?;
        while self.next_tick < end_tick {
            self.silence()?;
        }
        let path = self.path.clone();
        match self.sink.take() {
            Some(Sink::Wav(mut w)) => w.finish().map_err(|e| Error::io(&path, e))?,
            Some(Sink::Opus(w)) => {
                w.finish()
                    .and_then(|mut b| b.flush())
                    .map_err(|e| Error::io(&path, e))?;
            }
            None => {}
        }
        Ok(Recorded {
            user_id: self.audio.user_id(),
            path,
            seconds: self.frames as f64 * 0.02,
            stats: self.audio.stats(),
        })
    }
}

/// Records until `options.seconds` have passed or `stop` is set.
pub fn record(options: &RecordOptions, stop: &AtomicBool) -> Result<RecordReport, Error> {
    std::fs::create_dir_all(&options.output).map_err(|e| Error::io(&options.output, e))?;
    let joined = crate::channel::join(&options.at, "quaver-record", stop)?;
    let engine = &joined.engine;
    let listener = engine.listen(
        joined.call,
        ReceiveOptions {
            mode: if options.wav {
                ReceiveMode::Decode
            } else {
                ReceiveMode::Opus
            },
            ..ReceiveOptions::default()
        },
    )?;
    let grid = engine.audio_engine().grid();
    let started = Instant::now();
    let start_tick = grid.tick_at_or_after(started);
    let until = options.seconds.map(|s| started + s);
    let mut tracks: BTreeMap<u64, Track> = BTreeMap::new();
    let mut finished_tracks = Vec::new();
    let mut progress = crate::progress::Progress::on_terminal();
    let finished = loop {
        if stop.load(Ordering::Relaxed) {
            break Finished::Interrupted;
        }
        if until.is_some_and(|t| Instant::now() >= t) {
            break Finished::Completed;
        }
        while let Some(event) = listener.try_event() {
            match event {
                ListenEvent::User(audio) => {
                    let user = audio.user_id();
                    // A member who reconnects gets a new stream: keep writing the same file.
                    match tracks.get_mut(&user) {
                        Some(track) => {
                            track.drain()?;
                            track.audio = audio;
                        }
                        None => {
                            let track =
                                Track::open(audio, &options.output, options.wav, start_tick)?;
                            tracks.insert(user, track);
                        }
                    }
                }
                ListenEvent::StreamFailed { user_id, error } => {
                    progress.say(&format!("user {user_id} cannot be recorded: {error}"));
                }
                _ => {}
            }
        }
        for track in tracks.values_mut() {
            track.drain()?;
        }
        progress.update(|| {
            let lost: u64 = tracks.values().map(|t| t.audio.stats().lost).sum();
            format!(
                "recording {} user(s), {:.1} s, {lost} lost",
                tracks.len(),
                started.elapsed().as_secs_f64()
            )
        });
        std::thread::sleep(Duration::from_millis(20));
    };
    progress.clear();
    let end_tick = grid.tick_at_or_after(Instant::now());
    drop(listener);
    for (_, track) in std::mem::take(&mut tracks) {
        finished_tracks.push(track.finish(end_tick)?);
    }
    engine.disconnect(joined.call)?;
    Ok(RecordReport {
        files: finished_tracks,
        finished,
    })
}
