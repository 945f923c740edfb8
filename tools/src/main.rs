//! The `quaver` command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "quaver",
    version,
    about = "Quaver: a real-time voice engine for Discord-compatible voice"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mix audio files (wav, flac, mp3, ogg vorbis, ogg opus), all starting together, into an
    /// Ogg Opus file, offline and as fast as possible.
    Render {
        /// Output file (.ogg / .opus).
        #[arg(short, long)]
        output: PathBuf,
        /// Opus bitrate in bits per second.
        #[arg(long, default_value_t = 96_000)]
        bitrate: u32,
        /// Input files.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,symphonia=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Render {
            output,
            bitrate,
            inputs,
        } => {
            let started = std::time::Instant::now();
            quaver_tools::render::render(&inputs, &output, bitrate).map(|report| {
                println!(
                    "rendered {} input(s) into {}: {:.2} s of audio ({} frames, {} bytes) in {:.2} s",
                    inputs.len(),
                    report.output.display(),
                    report.seconds,
                    report.frames,
                    report.bytes,
                    started.elapsed().as_secs_f64()
                );
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("quaver: {error}");
            ExitCode::FAILURE
        }
    }
}
