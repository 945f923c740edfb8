//! The front door's inputs beyond PCM, Opus and files: child processes, HTTP(S) streams, and
//! the per-call track queue. Each method is the audio engine's (see [`quaver_engine`]); the
//! sources they create take the same handle controls as any other (volume, pause, stop, seek
//! where the input allows).

use std::process::Command;
use std::time::Duration;

use quaver_engine::{CallId, CommandOptions, HttpOptions, QueueEntry, SourceHandle, Track};

use crate::{Engine, Error};

impl Engine {
    /// Plays what `command` writes to its standard output (raw PCM, a container, or Ogg Opus,
    /// as [`CommandOptions::format`] says). The child is killed and reaped when the source
    /// ends; if it fails, [`quaver_engine::Event::SourceError`] carries its exit status and
    /// the end of its standard error. See [`quaver_engine::Engine::play_command`].
    pub fn play_command(
        &self,
        call: CallId,
        command: &mut Command,
        options: CommandOptions,
    ) -> Result<SourceHandle, Error> {
        Ok(self.audio.play_command(call, command, options)?)
    }

    /// Plays an `http://` or `https://` stream: downloaded ahead, resumed after a dropped
    /// connection, seekable when the server accepts range requests. See
    /// [`quaver_engine::Engine::play_url`].
    pub fn play_url(
        &self,
        call: CallId,
        url: &str,
        options: HttpOptions,
    ) -> Result<SourceHandle, Error> {
        Ok(self.audio.play_url(call, url, options)?)
    }

    /// Adds a track to the call's queue; tracks play back to back with no gap (or crossfade).
    /// See [`quaver_engine::Engine::enqueue`].
    pub fn enqueue(&self, call: CallId, track: Track) -> Result<(), Error> {
        Ok(self.audio.enqueue(call, track)?)
    }

    /// Skips the call's playing queued track; returns whether one was playing.
    pub fn skip(&self, call: CallId) -> Result<bool, Error> {
        Ok(self.audio.skip(call)?)
    }

    /// Removes every queued track after the playing one.
    pub fn clear_queue(&self, call: CallId) -> Result<(), Error> {
        Ok(self.audio.clear_queue(call)?)
    }

    /// The call's queue: the playing track, the next one, then the rest.
    pub fn queue(&self, call: CallId) -> Vec<QueueEntry> {
        self.audio.queue(call)
    }

    /// Crossfades queued tracks over `duration` (0, the default: back to back).
    pub fn set_crossfade(&self, call: CallId, duration: Duration) -> Result<(), Error> {
        Ok(self.audio.set_crossfade(call, duration)?)
    }
}
