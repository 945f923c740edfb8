//! Child-process inputs: any command that writes audio to its standard output (ffmpeg, a
//! downloader piped into ffmpeg, a speech synthesiser) plays as a source. The child is killed
//! and reaped when the source ends for any reason, and what it wrote to its standard error
//! (the last [`STDERR_TAIL`] bytes) comes with the error event when it fails.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::decode::{DecodeOptions, Decoder, InputFormat, Opened};
use crate::engine::{Inner, Placement};
use crate::error::{Error, Result};
use crate::input::{InputError, InputName};
use crate::source::SourceOptions;
use crate::stream::{Feed, ForwardOnly};
use crate::{CallId, SourceId};

/// The most of a child's standard error kept for the error event: enough for ffmpeg's
/// closing lines, bounded whatever the child writes.
pub const STDERR_TAIL: usize = 4096;

/// How long a child that closed its output may take to exit before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// How a command's output is played.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandOptions {
    /// What the command writes to its standard output.
    pub format: InputFormat,
    /// Initial linear gain (as [`crate::SourceHandle::set_volume`]).
    pub volume: f32,
    /// Start paused (the child is paused too: it blocks once the read-ahead is full).
    pub paused: bool,
    /// How much decoded audio is kept ready.
    pub read_ahead: Duration,
}

impl CommandOptions {
    /// Default options for output in `format`.
    pub fn new(format: InputFormat) -> Self {
        Self {
            format,
            volume: 1.0,
            paused: false,
            read_ahead: Duration::from_secs(1),
        }
    }
}

/// A child's standard error pipe and the last bytes read from it.
#[derive(Debug, Default)]
struct Stderr {
    pipe: Option<ChildStderr>,
    tail: Vec<u8>,
}

impl Stderr {
    fn fd(&self) -> i32 {
        self.pipe.as_ref().map_or(-1, |pipe| pipe.as_raw_fd())
    }

    /// Reads once if the pipe has something within `wait_ms` (0: only what is there now).
    /// `false` when nothing was read.
    fn drain_once(&mut self, wait_ms: i32) -> bool {
        let Some(pipe) = self.pipe.as_mut() else {
            return false;
        };
        let mut fds = [libc::pollfd {
            fd: pipe.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one valid pollfd, its count passed alongside.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 1, wait_ms) };
        if ready <= 0 || fds[0].revents == 0 {
            return false;
        }
        let mut buf = [0_u8; 1024];
        match pipe.read(&mut buf) {
            Ok(0) | Err(_) => {
                self.pipe = None;
                false
            }
            Ok(count) => {
                self.tail.extend_from_slice(&buf[..count]);
                if self.tail.len() > STDERR_TAIL {
                    let excess = self.tail.len() - STDERR_TAIL;
                    self.tail.drain(..excess);
                }
                true
            }
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.tail).trim().to_owned()
    }
}

/// The child's standard output, read while its standard error is drained into the tail: one
/// `poll` on both pipes, so a child that writes much to standard error never blocks on it, and
/// no second thread is needed.
struct ChildOutput {
    stdout: ChildStdout,
    stderr: Arc<Mutex<Stderr>>,
}

impl Read for ChildOutput {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let stderr_fd = lock(&self.stderr).fd();
            let mut fds = [
                libc::pollfd {
                    fd: self.stdout.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                // A negative descriptor is ignored by poll.
                libc::pollfd {
                    fd: stderr_fd,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: two valid pollfds, their count passed alongside.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if ready < 0 {
                let error = std::io::Error::last_os_error();
                if error.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(error);
            }
            if fds[1].revents != 0 {
                lock(&self.stderr).drain_once(0);
            }
            if fds[0].revents != 0 {
                return self.stdout.read(buf);
            }
        }
    }
}

/// The child as the input thread and the engine's worker share it: the thread reaps it, the
/// worker kills it to unblock a read once the source has ended. `std`'s `Child::kill` does not
/// signal a child already reaped, so a recycled process id is never hit.
pub(crate) type SharedChild = Arc<Mutex<Child>>;

/// A started command: its source, and what the input thread and the worker need.
pub(crate) struct Started {
    pub(crate) opened: Opened,
    pub(crate) feed: Box<dyn Feed>,
    pub(crate) child: SharedChild,
}

/// Starts `command` with its standard output piped, and decodes the first audio (so a command
/// that fails at once, or writes something unplayable, is an error here, with its standard
/// error).
pub(crate) fn start(
    call: CallId,
    source: SourceId,
    command: &mut Command,
    options: &CommandOptions,
) -> Result<Started> {
    let name = InputName::Command(command.get_program().to_owned());
    let fail = |error| Error::Input {
        input: name.clone(),
        error,
    };
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(InputError::Spawn(e)))?;
    let (Some(stdout), pipe) = (child.stdout.take(), child.stderr.take()) else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(fail(InputError::Spawn(
            std::io::ErrorKind::BrokenPipe.into(),
        )));
    };
    let stderr = Arc::new(Mutex::new(Stderr {
        pipe,
        tail: Vec::new(),
    }));
    let output = ChildOutput {
        stdout,
        stderr: Arc::clone(&stderr),
    };
    let decode = DecodeOptions {
        source: SourceOptions {
            buffer: options.read_ahead,
            volume: options.volume,
            paused: options.paused,
            latency_cap: None,
        },
        looping: false,
        start_at: Duration::ZERO,
        seekable: false,
        byte_len: None,
    };
    let pid = child.id();
    let child = Arc::new(Mutex::new(child));
    let feed = ChildFeed {
        child: Arc::clone(&child),
        stderr,
    };
    let bytes = Box::new(ForwardOnly::new(output));
    match Decoder::open(
        call,
        source,
        name.clone(),
        bytes,
        options.format.clone(),
        &decode,
    ) {
        Ok(opened) => {
            opened.shared.set_process_id(pid);
            Ok(Started {
                opened,
                feed: Box::new(feed),
                child,
            })
        }
        Err(error) => {
            // A command that failed at once says why on its standard error; one that runs on
            // but writes something unplayable is killed, and the decoder says why.
            let status = feed.reap(false);
            match feed.failure(status) {
                Some(child_error) => Err(fail(child_error)),
                None => Err(error),
            }
        }
    }
}

struct ChildFeed {
    child: SharedChild,
    stderr: Arc<Mutex<Stderr>>,
}

impl ChildFeed {
    /// Waits for the child (killing it at once with `kill_now`, or after [`EXIT_GRACE`]) and
    /// reaps it. Returns its exit status unless this killed it.
    fn reap(&self, kill_now: bool) -> Option<std::process::ExitStatus> {
        if kill_now {
            let mut child = lock(&self.child);
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        // The child closed its output: give it a moment to exit on its own (its exit status
        // tells whether it failed), then kill it.
        let give_up = Instant::now() + EXIT_GRACE;
        loop {
            let polled = lock(&self.child).try_wait();
            match polled {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < give_up => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(None) | Err(_) => return self.reap(true),
            }
        }
    }

    /// The child's failure, if it exited unsuccessfully, with the end of its standard error
    /// (still in the pipe after it exited; this stops at the pipe's end, or at once if a
    /// grandchild keeps the pipe open).
    fn failure(&self, status: Option<std::process::ExitStatus>) -> Option<InputError> {
        let status = status.filter(|status| !status.success())?;
        let mut stderr = lock(&self.stderr);
        while stderr.drain_once(0) {}
        Some(InputError::ChildFailed {
            status: status.code(),
            stderr: stderr.text(),
        })
    }
}

impl Feed for ChildFeed {
    fn finish(
        &mut self,
        outcome: std::result::Result<(), InputError>,
        stopped: bool,
    ) -> Option<InputError> {
        let status = self.reap(stopped || outcome.is_err());
        if stopped {
            return None;
        }
        match outcome {
            Err(error) => Some(error),
            Ok(()) => self.failure(status),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl crate::Engine {
    /// Plays what `command` writes to its standard output in `call`: raw PCM, a container
    /// symphonia recognises, or Ogg Opus, as [`CommandOptions::format`] says. Returns once the
    /// first audio is decoded, so a command that cannot start, fails at once (its standard
    /// error is in the error) or writes something unplayable is an error here. The child is
    /// killed and reaped when the source ends for any reason (stopped, call removed, engine
    /// dropped); if it exits unsuccessfully first, an [`crate::Event::SourceError`] carries
    /// its exit status and the end of its standard error. Its output is decoded on a thread of
    /// its own, reading [`CommandOptions::read_ahead`] ahead; the child blocks beyond that.
    ///
    /// ```no_run
    /// use std::process::Command;
    /// use quaver_engine::{CommandOptions, Engine, EngineConfig, InputFormat, PcmFormat, SampleEncoding};
    ///
    /// let engine = Engine::new(EngineConfig::default())?;
    /// let (call, _frames) = engine.create_call()?;
    /// let mut ffmpeg = Command::new("ffmpeg");
    /// ffmpeg.args(["-nostdin", "-loglevel", "error", "-i", "song.mp3", "-f", "s16le", "-ar", "48000", "-ac", "2", "-"]);
    /// let format = InputFormat::Raw { format: PcmFormat::new(48_000, 2)?, encoding: SampleEncoding::S16Le };
    /// let handle = engine.play_command(call, &mut ffmpeg, CommandOptions::new(format))?;
    /// # drop(handle);
    /// # Ok::<(), quaver_engine::Error>(())
    /// ```
    pub fn play_command(
        &self,
        call: CallId,
        command: &mut Command,
        options: CommandOptions,
    ) -> Result<crate::SourceHandle> {
        play_command(&self.inner, call, command, &options, Placement::Now)
    }
}

/// Starts `command` and adds its source to `call` as `placement` says.
pub(crate) fn play_command(
    inner: &Inner,
    call: CallId,
    command: &mut Command,
    options: &CommandOptions,
    placement: Placement,
) -> Result<crate::SourceHandle> {
    let id = inner.next_source_id();
    let started = start(call, id, command, options)?;
    let child = started.child;
    let abort = Box::new(move || {
        let _ = lock(&child).kill();
    });
    inner.start_stream(call, started.opened, started.feed, abort, placement)
}
