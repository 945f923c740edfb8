//! The progress line of long runs (`jitter`, `demo`, `record`, `play`): one line on stderr,
//! rewritten in place a few times a second, and only for a person at a terminal. Piped or
//! redirected, stderr gets nothing from it: no carriage returns, no lines of counters.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How often the line is rewritten: often enough to look alive, rarely enough to cost nothing.
const EVERY: Duration = Duration::from_millis(250);

/// A progress line on stderr (silent unless stderr is a terminal).
#[derive(Debug)]
pub struct Progress {
    enabled: bool,
    /// When the line was last drawn (`None`: nothing on screen).
    drawn: Option<Instant>,
    /// Characters of the line on screen, to blank it out.
    width: usize,
}

impl Progress {
    /// A progress line if stderr is a terminal, else one that never prints.
    pub fn on_terminal() -> Self {
        Self::new(std::io::stderr().is_terminal())
    }

    /// A progress line that prints only if `enabled`.
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            drawn: None,
            width: 0,
        }
    }

    /// Whether anything is ever printed.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Draws `line()` in place, unless it was drawn less than a quarter second ago (the text
    /// is only made when it is drawn).
    pub fn update(&mut self, line: impl FnOnce() -> String) {
        if !self.enabled || self.drawn.is_some_and(|at| at.elapsed() < EVERY) {
            return;
        }
        let line = line();
        let width = line.chars().count();
        let blank = self.width.saturating_sub(width);
        eprint!("\r{line}{:blank$}", "");
        let _ = std::io::stderr().flush();
        self.width = width;
        self.drawn = Some(Instant::now());
    }

    /// Prints `message` on a line of its own, above the progress line.
    pub fn say(&mut self, message: &str) {
        self.clear();
        eprintln!("{message}");
    }

    /// Blanks the progress line out; the next update draws it afresh.
    pub fn clear(&mut self) {
        if self.enabled && self.drawn.take().is_some() {
            eprint!("\r{:width$}\r", "", width = self.width);
            let _ = std::io::stderr().flush();
            self.width = 0;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.clear();
    }
}
