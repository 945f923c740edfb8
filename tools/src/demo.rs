//! `quaver demo`: the whole engine on one machine with nothing external — a local voice server
//! in-process, one call (or more) playing the bundled example tracks mixed together, and a short
//! report of what the server received.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::Error;
use crate::jitter::{JitterOptions, run};

/// The example tracks shipped with the tools.
pub fn bundled_tracks() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tracks");
    ["bass.mp3", "beat.flac", "chords.ogg"]
        .iter()
        .map(|name| dir.join(name))
        .collect()
}

/// What to demo.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub seconds: f64,
    pub calls: usize,
    pub json: bool,
    pub server: Option<SocketAddr>,
    pub record: PathBuf,
    pub files: Vec<PathBuf>,
}

pub fn demo(options: &DemoOptions) -> Result<(), Error> {
    let files = if options.files.is_empty() {
        bundled_tracks()
    } else {
        options.files.clone()
    };
    if let Some(missing) = files.iter().find(|f| !f.exists()) {
        return Err(Error::Usage(format!(
            "{} does not exist",
            missing.display()
        )));
    }
    std::fs::create_dir_all(&options.record).map_err(|e| Error::io(&options.record, e))?;
    if !options.json {
        eprintln!(
            "quaver demo: {} call(s) playing {} file(s) for {:.0} s against {}…",
            options.calls,
            files.len(),
            options.seconds,
            options
                .server
                .map_or("an in-process local server".to_string(), |s| s.to_string())
        );
    }
    let report = run(&JitterOptions {
        calls: options.calls,
        seconds: options.seconds,
        files,
        server: options.server,
        record: options.server.is_none().then(|| options.record.clone()),
        realtime: true,
        ..JitterOptions::default()
    })?;
    if options.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_table());
    }
    Ok(())
}
