//! `quaver demo`: the whole engine on one machine with nothing external — a local voice server
//! in-process, one call (or more) playing the bundled example tracks mixed together, and a short
//! report of what the server received.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::jitter::{JitterOptions, run};
use crate::{Error, Finished};

/// What to demo (also the `quaver demo` command line).
#[derive(Debug, Clone, clap::Args)]
pub struct DemoOptions {
    /// How long to play, in seconds (at most 3600). Ctrl-C stops early and reports.
    #[arg(long, default_value = "5", value_parser = crate::args::run_length, allow_negative_numbers = true)]
    pub seconds: Duration,
    /// Calls to run at once, each playing the files (1 to 1000).
    #[arg(long, default_value = "1", value_parser = crate::args::calls, allow_negative_numbers = true)]
    pub calls: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Use a running `quaver serve` instead of the embedded one: its main-gateway `host:port`
    /// (TLS, the default), or `ws://host:port` for one started with `--plain`.
    #[arg(long, value_name = "ADDR|URL")]
    pub server: Option<String>,
    /// With --server: the CA certificate (PEM) that `quaver serve --cert-out` wrote.
    #[arg(long, value_name = "FILE", requires = "server")]
    pub ca_cert: Option<PathBuf>,
    /// Where the embedded server writes its recording.
    #[arg(long, default_value = "quaver-demo")]
    pub record: PathBuf,
    /// Files to play (default: the example tracks built into the binary).
    pub files: Vec<PathBuf>,
}

/// Runs the demo until its time is up or `stop` is set, and prints the report.
pub fn demo(options: &DemoOptions, stop: &AtomicBool) -> Result<Finished, Error> {
    // Kept until the run is over: dropping it removes the files.
    let bundled = if options.files.is_empty() {
        Some(crate::bundled::BundledTracks::extract()?)
    } else {
        None
    };
    let files = match &bundled {
        Some(tracks) => tracks.paths().to_vec(),
        None => options.files.clone(),
    };
    crate::media::check_all(&files)?;
    std::fs::create_dir_all(&options.record).map_err(|e| Error::io(&options.record, e))?;
    let announce = (!options.json).then(|| {
        format!(
            "quaver demo: {} call(s) playing {} file(s) for {} s against {} (Ctrl-C stops early)",
            options.calls,
            files.len(),
            options.seconds.as_secs_f64(),
            options
                .server
                .clone()
                .unwrap_or_else(|| "an in-process local server".to_string())
        )
    });
    let report = run(
        &JitterOptions {
            calls: options.calls,
            seconds: options.seconds,
            files,
            server: options.server.clone(),
            ca_cert: options.ca_cert.clone(),
            record: options.server.is_none().then(|| options.record.clone()),
            realtime: true,
            announce,
            progress: true,
            ..JitterOptions::default()
        },
        stop,
    )?;
    if options.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_table());
    }
    Ok(crate::report::finished(&report))
}
