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
    /// Start a local voice server in-process, join one call, play the bundled example tracks
    /// mixed together for a few seconds, and report what the server received.
    Demo(quaver_tools::demo::DemoOptions),
    /// Measure send lateness, jitter, loss, latency and CPU for N calls against a voice server.
    Jitter(JitterArgs),
    /// The music bot: play files mixed together in a voice channel, against the local server by
    /// default or a real Discord guild with --token, --guild and --channel.
    Play(quaver_tools::play::PlayOptions),
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
    /// Run a local Discord-compatible voice server (main gateway subset, voice gateway v8, UDP)
    /// until Ctrl-C, printing per-call receive statistics when each call ends.
    Serve(Box<ServeArgs>),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Main-gateway address (point a bot's gateway URL at ws://HOST:PORT).
    #[arg(long, default_value = "127.0.0.1:7878")]
    listen: std::net::SocketAddr,
    /// Voice-gateway address (default: the listen host, an ephemeral port).
    #[arg(long)]
    voice_listen: Option<std::net::SocketAddr>,
    /// UDP voice-server address (default: the listen host, an ephemeral port).
    #[arg(long)]
    udp_listen: Option<std::net::SocketAddr>,
    /// Write one WAV (48 kHz stereo 16-bit) per SSRC into DIR.
    #[arg(long, value_name = "DIR")]
    record: Option<PathBuf>,
    /// Append `SSRC <ssrc> MODE <mode> KEY <hex>` per voice session to FILE (decrypts captures).
    #[arg(long, value_name = "FILE")]
    keylog: Option<PathBuf>,
    /// Serve wss:// with a self-signed certificate generated at start.
    #[arg(long)]
    tls: bool,
    /// With --tls: write the certificate (DER) to FILE so clients can trust it.
    #[arg(long, value_name = "FILE", requires = "tls")]
    cert_out: Option<PathBuf>,
    /// Heartbeat interval announced in Hello, in ms.
    #[arg(long, default_value_t = 13_750.0)]
    heartbeat_interval: f64,
    /// Close a voice websocket with 4009 after this many heartbeat intervals without a
    /// heartbeat (0: never).
    #[arg(long, value_name = "INTERVALS", default_value_t = 3.0)]
    heartbeat_timeout: f64,
    /// Encryption modes offered in Ready (comma-separated wire names).
    #[arg(long, value_delimiter = ',')]
    modes: Vec<String>,
    /// Do not forward packets to the other participants of a call.
    #[arg(long)]
    no_forward: bool,
    /// Do not Opus-decode received packets (for many-call benchmarks).
    #[arg(long)]
    no_decode: bool,
    /// Reject voice tokens the main gateway did not issue (4004).
    #[arg(long)]
    require_tokens: bool,
    /// Drop every voice websocket once, SECONDS after its session started (clients resume).
    #[arg(long, value_name = "SECONDS")]
    drop_ws_after: Option<f64>,
    /// Close each user's voice session once with CODE right after the handshake.
    #[arg(long, value_name = "CODE")]
    close_code: Option<u16>,
    /// Drop PCT % of forwarded packets.
    #[arg(long, value_name = "PCT", default_value_t = 0.0)]
    udp_loss: f64,
    /// Reorder PCT % of forwarded packets (each held back behind the next one).
    #[arg(long, value_name = "PCT", default_value_t = 0.0)]
    udp_reorder: f64,
    /// Duplicate PCT % of forwarded packets.
    #[arg(long, value_name = "PCT", default_value_t = 0.0)]
    udp_duplicate: f64,
    /// DAVE (E2EE) negotiation: required (clients without DAVE are closed with 4017, as on
    /// Discord), optional, or off (version 0 for everyone, like a stage channel).
    #[arg(long, value_name = "MODE", default_value = "required")]
    dave: quaver_tools::server::DaveMode,
    /// Print each call report (and the final statistics) as one JSON line.
    #[arg(long)]
    json: bool,
}

static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, std::sync::atomic::Ordering::Relaxed);
}

fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: `on_signal` only stores to an atomic, which is async-signal-safe; the
        // sigaction struct is fully initialised before use.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
}

#[derive(clap::Args)]
struct JitterArgs {
    /// Calls to run at once.
    #[arg(long, default_value_t = 1)]
    calls: usize,
    /// How long to stream.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Mix and encode a PCM source per call instead of passing pre-encoded Opus through.
    #[arg(long)]
    encode: bool,
    /// Also run a sleep-paced baseline sender (as other libraries send) in the same run.
    #[arg(long)]
    baseline: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Draw the histograms into this SVG file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Use a running `quaver serve` (its main-gateway address) instead of the embedded one.
    #[arg(long)]
    server: Option<std::net::SocketAddr>,
    /// Send path: auto, io-uring or portable.
    #[arg(long, default_value = "auto")]
    backend: String,
}

fn jitter(args: JitterArgs) -> Result<(), quaver_tools::Error> {
    let JitterArgs {
        calls,
        seconds,
        encode,
        baseline,
        json,
        out,
        server,
        backend,
    } = args;
    let backend = match backend.as_str() {
        "auto" => quaver::net::BackendChoice::Auto,
        "io-uring" | "io_uring" => quaver::net::BackendChoice::IoUring,
        "portable" => quaver::net::BackendChoice::Portable,
        other => {
            return Err(quaver_tools::Error::Usage(format!(
                "unknown backend {other:?}"
            )));
        }
    };
    let options = quaver_tools::jitter::JitterOptions {
        calls,
        seconds,
        encode,
        baseline,
        server,
        backend,
        ..Default::default()
    };
    let report = quaver_tools::jitter::run(&options)?;
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_table());
    }
    if let Some(path) = out {
        std::fs::write(&path, report.to_svg()).map_err(|source| quaver_tools::Error::Io {
            path: path.clone(),
            source,
        })?;
        eprintln!("histograms drawn in {}", path.display());
    }
    Ok(())
}

fn serve(args: ServeArgs) -> Result<(), quaver_tools::Error> {
    use quaver_tools::server::{Faults, Server, ServerConfig, ServerEvent};
    let host = args.listen.ip();
    let mut modes = Vec::new();
    for m in &args.modes {
        modes.push(
            m.parse().map_err(|_| {
                quaver_tools::Error::Usage(format!("unknown encryption mode {m:?}"))
            })?,
        );
    }
    let defaults = ServerConfig::default();
    let config = ServerConfig {
        main_listen: args.listen,
        voice_listen: args
            .voice_listen
            .unwrap_or(std::net::SocketAddr::new(host, 0)),
        udp_listen: args
            .udp_listen
            .unwrap_or(std::net::SocketAddr::new(host, 0)),
        heartbeat_interval_ms: args.heartbeat_interval,
        heartbeat_timeout_intervals: (args.heartbeat_timeout > 0.0)
            .then_some(args.heartbeat_timeout),
        modes: if modes.is_empty() {
            defaults.modes.clone()
        } else {
            modes
        },
        tls: args.tls,
        record_dir: args.record,
        decode_audio: !args.no_decode,
        keylog: args.keylog.clone(),
        forward: !args.no_forward,
        require_issued_tokens: args.require_tokens,
        dave: args.dave,
        faults: Faults {
            drop_ws_after: args
                .drop_ws_after
                .map(|s| std::time::Duration::from_secs_f64(s.max(0.0))),
            close_code: args.close_code,
            udp_loss_pct: args.udp_loss,
            udp_reorder_pct: args.udp_reorder,
            udp_duplicate_pct: args.udp_duplicate,
        },
        ..defaults
    };
    let server = Server::start(config)?;
    install_signal_handlers();
    println!("quaver serve: main gateway {}", server.main_gateway_url());
    println!("  voice gateway {}", server.voice_gateway_url());
    println!("  udp {}", server.udp_addr());
    if let Some(cert) = server.certificate_der() {
        match &args.cert_out {
            Some(path) => {
                std::fs::write(path, cert.as_ref())
                    .map_err(|e| quaver_tools::Error::Usage(format!("{}: {e}", path.display())))?;
                println!(
                    "  tls: self-signed certificate written to {}",
                    path.display()
                );
            }
            None => println!("  tls: self-signed certificate (use --cert-out FILE to save it)"),
        }
    }
    println!("Ctrl-C to stop.");
    while !STOP.load(std::sync::atomic::Ordering::Relaxed) {
        match server
            .events()
            .recv_timeout(std::time::Duration::from_millis(100))
        {
            Ok(ServerEvent::CallEnded(call)) if args.json => {
                println!("{}", serde_json::to_string(&call).unwrap_or_default())
            }
            Ok(ServerEvent::CallEnded(call)) => print!("{call}"),
            Ok(ServerEvent::SessionEstablished {
                guild_id,
                user_id,
                ssrc,
            }) => println!("session: guild {guild_id} user {user_id} ssrc {ssrc}"),
            Ok(_) | Err(_) => {}
        }
    }
    println!("stopping");
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&server.stats()).unwrap_or_default()
        );
        server.stop();
        return Ok(());
    }
    for call in server.stats().calls.iter().filter(|c| !c.ended) {
        print!("{call}");
    }
    let counters = server.stats().counters;
    server.stop();
    println!("{counters:?}");
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
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
        Command::Serve(args) => serve(*args),
        Command::Demo(options) => {
            install_signal_handlers();
            quaver_tools::demo::demo(&options)
        }
        Command::Jitter(args) => {
            install_signal_handlers();
            jitter(args)
        }
        Command::Play(mut options) => {
            install_signal_handlers();
            options.token = options
                .token
                .or_else(|| std::env::var("DISCORD_TOKEN").ok());
            quaver_tools::play::play(&options, &STOP)
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
