//! What an input is called in errors, and how reading or decoding one can fail.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

/// Names the input a source plays, in errors and events.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InputName {
    /// A file.
    File(PathBuf),
    /// A child process's standard output; the program that was run.
    Command(OsString),
    /// An HTTP(S) stream (credentials in the URL are not shown).
    Url(String),
}

impl fmt::Display for InputName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InputName::File(path) => write!(f, "{}", path.display()),
            InputName::Command(program) => write!(f, "command {}", program.to_string_lossy()),
            InputName::Url(url) => f.write_str(url),
        }
    }
}

/// Why an input could not be read or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// Reading the bytes failed.
    #[error("i/o: {0}")]
    Io(#[source] std::io::Error),
    /// The container or codec is corrupt or unsupported (symphonia's verdict).
    #[error("{0}")]
    Media(#[source] symphonia::core::errors::Error),
    /// The Ogg Opus stream is corrupt or unsupported.
    #[error("{0}")]
    OggOpus(#[source] crate::ogg_opus::OggOpusError),
    /// Ogg Opus whose packets are not 20 ms long, the only duration Quaver plays.
    #[error("only 20 ms Opus packets can be played")]
    OpusPacketDuration,
    /// The container holds no audio track.
    #[error("no audio track")]
    NoAudioTrack,
    /// The input ended before any audio.
    #[error("no audio")]
    NoAudio,
    /// The sample rate or channel count changed mid-stream.
    #[error("the audio format changed mid-stream")]
    FormatChanged,
    /// The decoder panicked; the source ended, every other source plays on.
    #[error("the decoder panicked")]
    DecoderPanicked,
    /// The child process could not be started.
    #[error("cannot start: {0}")]
    Spawn(#[source] std::io::Error),
    /// The child process exited unsuccessfully (its exit code, or `None` when a signal ended
    /// it), with the end of what it wrote to its standard error.
    #[error("exited with {}: {stderr}", match .status { Some(code) => format!("status {code}"), None => "a signal".to_owned() })]
    ChildFailed {
        /// The exit code, if it exited rather than being killed.
        status: Option<i32>,
        /// The last bytes of its standard error, as text (at most
        /// [`crate::STDERR_TAIL`] bytes).
        stderr: String,
    },
    /// The HTTP stream failed.
    #[error("{0}")]
    Http(#[source] crate::http::HttpError),
}

impl InputError {
    /// An I/O error from a reader, unwrapping the HTTP error a stream reports through it.
    pub(crate) fn from_io(error: std::io::Error) -> Self {
        let is_http = error
            .get_ref()
            .is_some_and(|inner| inner.is::<crate::http::HttpError>());
        if is_http {
            match error
                .into_inner()
                .map(|inner| inner.downcast::<crate::http::HttpError>())
            {
                Some(Ok(http)) => return InputError::Http(*http),
                // Checked just above; an I/O error without detail is the honest fallback.
                _ => return InputError::Io(std::io::ErrorKind::Other.into()),
            }
        }
        InputError::Io(error)
    }
}
