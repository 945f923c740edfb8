//! The `quaver` command.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use quaver_tools::Finished;

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
    /// Join a voice channel and record every other member into one file each (Ogg Opus, or WAV
    /// with --wav), time-aligned so they mix back; Ctrl-C finishes the files cleanly.
    Record(quaver_tools::record::RecordOptions),
    /// Mix audio files (wav, flac, mp3, ogg vorbis, ogg opus), all starting together, into an
    /// Ogg Opus file, offline and as fast as possible.
    Render {
        /// Output file (.ogg / .opus).
        #[arg(short, long)]
        output: PathBuf,
        /// Opus bitrate in bits per second (6000 to 510000).
        #[arg(long, default_value_t = 96_000, value_parser = clap::value_parser!(u32).range(6_000..=510_000))]
        bitrate: u32,
        /// Input files.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
    },
    /// Run a local Discord-compatible voice server (main gateway subset, voice gateway v4–v8,
    /// UDP) over TLS until Ctrl-C, printing per-call receive statistics when each call ends.
    Serve(Box<ServeArgs>),
    /// Serve the Lavalink v4 API (HTTP + websocket) so Lavalink client libraries play through
    /// Quaver, until Ctrl-C. Settings: defaults, then --config FILE (Lavalink's
    /// application.yml keys), then the environment (SERVER_PORT, LAVALINK_SERVER_PASSWORD …),
    /// then these flags.
    Node(Box<NodeArgs>),
}

#[derive(clap::Args)]
struct NodeArgs {
    /// Address to listen on (default 127.0.0.1:2333).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// The password clients send in `Authorization` (default youshallnotpass).
    #[arg(long)]
    password: Option<String>,
    /// A Lavalink application.yml to read settings from.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Let clients load local files by path (off by default, as in Lavalink).
    #[arg(long)]
    local: bool,
    /// A CA certificate (PEM) to trust for voice endpoints, e.g. from `quaver serve --cert-out`.
    #[arg(long, value_name = "FILE")]
    voice_ca: Option<PathBuf>,
}

fn node(args: NodeArgs) -> Result<(), String> {
    let mut config = quaver_node::NodeConfig::default();
    if let Some(path) = &args.config {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        config
            .apply_yaml(&text)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    config
        .apply_env(|name| std::env::var(name).ok())
        .map_err(|e| format!("environment: {e}"))?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(password) = args.password {
        config.password = quaver_node::Password::new(password);
    }
    config.sources.local |= args.local;
    if let Some(path) = &args.voice_ca {
        config.voice_ca_pem =
            Some(std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?);
    }
    let node = quaver_node::Node::start(config).map_err(|e| e.to_string())?;
    println!("Lavalink v4-compatible node listening on {}", node.addr());
    install_signal_handlers();
    while !STOP.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
    node.stop();
    Ok(())
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Main-gateway address (point a bot's gateway URL at wss://HOST:PORT, or ws:// with
    /// --plain).
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
    /// Debugging mode: plain ws:// instead of TLS, and the voice endpoint sent as
    /// ws://HOST:PORT (Discord always sends a bare host:port that clients dial with wss://).
    #[arg(long, visible_alias = "no-tls")]
    plain: bool,
    /// Write the CA certificate (PEM) that signed the server's certificate to FILE, for
    /// clients to trust (default: a file in the temporary directory, printed at start).
    #[arg(long, value_name = "FILE", conflicts_with = "plain")]
    cert_out: Option<PathBuf>,
    /// Heartbeat interval announced in Hello, in ms.
    #[arg(long, default_value_t = 13_750.0, value_parser = quaver_tools::args::interval_ms, allow_negative_numbers = true)]
    heartbeat_interval: f64,
    /// Close a voice websocket with 4009 after this many heartbeat intervals without a
    /// heartbeat (0: never).
    #[arg(long, value_name = "INTERVALS", default_value_t = 3.0, value_parser = quaver_tools::args::intervals, allow_negative_numbers = true)]
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
    /// Drain the UDP socket every MICROS µs instead of sleeping in recv (0: sleep in recv,
    /// woken by each datagram, which makes the sender on this machine pay for waking the
    /// server at every burst).
    #[arg(long, value_name = "MICROS", default_value_t = 1000)]
    udp_read_interval_us: u64,
    /// Reject voice tokens the main gateway did not issue (4004).
    #[arg(long)]
    require_tokens: bool,
    /// Drop every voice websocket once, SECONDS after its session started (clients resume).
    #[arg(long, value_name = "SECONDS", value_parser = quaver_tools::args::seconds, allow_negative_numbers = true)]
    drop_ws_after: Option<Duration>,
    /// Close each user's voice session once with CODE right after the handshake.
    #[arg(long, value_name = "CODE")]
    close_code: Option<u16>,
    /// Drop PCT % of forwarded packets.
    #[arg(long, value_name = "PCT", default_value_t = 0.0, value_parser = quaver_tools::args::percent, allow_negative_numbers = true)]
    udp_loss: f64,
    /// Reorder PCT % of forwarded packets (each held back behind the next one).
    #[arg(long, value_name = "PCT", default_value_t = 0.0, value_parser = quaver_tools::args::percent, allow_negative_numbers = true)]
    udp_reorder: f64,
    /// Duplicate PCT % of forwarded packets.
    #[arg(long, value_name = "PCT", default_value_t = 0.0, value_parser = quaver_tools::args::percent, allow_negative_numbers = true)]
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
    /// Calls to run at once (1 to 5000, and as the open-file limit allows).
    #[arg(long, default_value = "1", value_parser = quaver_tools::args::calls, allow_negative_numbers = true)]
    calls: usize,
    /// How long to stream, in seconds (at most 3600). Ctrl-C stops early and reports.
    #[arg(long, default_value = "10", value_parser = quaver_tools::args::run_length, allow_negative_numbers = true)]
    seconds: Duration,
    /// Mix and encode a PCM source per call instead of passing pre-encoded Opus through.
    #[arg(long)]
    encode: bool,
    /// Also run a sleep-paced baseline sender (as other libraries send) in the same run.
    #[arg(long)]
    baseline: bool,
    /// Also run the machine's floor in the same run: a bare real-time sender (packets sealed
    /// ahead, a spin to each phase group's deadline, one send per call) on its own calls, half a
    /// group apart from Quaver's. A tail that both show is the machine's, not Quaver's.
    #[arg(long, conflicts_with_all = ["baseline", "server"])]
    floor: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Draw the percentiles of every timing figure (the baseline's beside Quaver's) into this
    /// SVG file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Use a running `quaver serve` instead of the embedded one: its main-gateway `host:port`
    /// (TLS, the default), or `ws://host:port` for one started with --plain.
    #[arg(long, value_name = "ADDR|URL")]
    server: Option<String>,
    /// With --server: the CA certificate (PEM) that `quaver serve --cert-out` wrote.
    #[arg(long, value_name = "FILE", requires = "server")]
    ca_cert: Option<PathBuf>,
    /// Send path: auto, io-uring or portable.
    #[arg(long, default_value = "auto")]
    backend: String,
    /// Join the calls but play nothing, and report what they cost (CPU of Quaver's threads).
    #[arg(long, conflicts_with_all = ["encode", "baseline", "floor", "out"])]
    idle: bool,
    /// Find the capacity: run with --calls calls (the first step), then half as many again
    /// each step, --seconds each, until a step has late frames, skipped ticks or lost audio;
    /// report the last clean step in calls and calls per core.
    #[arg(long, conflicts_with_all = ["idle", "baseline", "floor", "out"])]
    ramp: bool,
    /// With --ramp: stop after the step that reaches this many calls (default 1000).
    #[arg(long, value_name = "CALLS", requires = "ramp", default_value = "1000", value_parser = quaver_tools::args::calls)]
    ramp_to: usize,
    /// The embedded server drops PCT % of the packets it forwards to listeners (Quaver's
    /// receiver among them, which conceals them).
    #[arg(long, value_name = "PCT", default_value_t = 0.0, value_parser = quaver_tools::args::percent, allow_negative_numbers = true, conflicts_with = "server")]
    udp_loss: f64,
    /// The embedded server reorders PCT % of forwarded packets.
    #[arg(long, value_name = "PCT", default_value_t = 0.0, value_parser = quaver_tools::args::percent, allow_negative_numbers = true, conflicts_with = "server")]
    udp_reorder: f64,
    /// The embedded server duplicates PCT % of forwarded packets.
    #[arg(long, value_name = "PCT", default_value_t = 0.0, value_parser = quaver_tools::args::percent, allow_negative_numbers = true, conflicts_with = "server")]
    udp_duplicate: f64,
    /// Quaver's receiver hears the first N calls (at most --calls), not only the first: the
    /// receive path under load, reported over every stream it heard.
    #[arg(long, value_name = "N", default_value = "1", value_parser = quaver_tools::args::calls, conflicts_with_all = ["server", "idle", "ramp"])]
    hear: usize,
    /// Phase groups the sender spreads the calls over within the 20 ms period (1 to 20).
    #[arg(long, value_name = "N", default_value_t = quaver::PhaseConfig::default().groups, value_parser = quaver_tools::args::phase_groups)]
    phase_groups: usize,
    /// Calls a phase group takes before the next one opens (1 or more).
    #[arg(long, value_name = "N", default_value_t = quaver::PhaseConfig::default().calls_per_group, value_parser = quaver_tools::args::calls_per_group)]
    calls_per_group: usize,
}

fn jitter(args: JitterArgs) -> Result<Finished, quaver_tools::Error> {
    let JitterArgs {
        calls,
        seconds,
        encode,
        baseline,
        floor,
        json,
        out,
        server,
        ca_cert,
        backend,
        idle,
        ramp,
        ramp_to,
        udp_loss,
        udp_reorder,
        udp_duplicate,
        hear,
        phase_groups,
        calls_per_group,
    } = args;
    let faults = quaver_tools::server::Faults {
        udp_loss_pct: udp_loss,
        udp_reorder_pct: udp_reorder,
        udp_duplicate_pct: udp_duplicate,
        ..quaver_tools::server::Faults::default()
    };
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
    let announce = format!(
        "quaver jitter: {calls} call(s) {} for {} s (Ctrl-C stops early and reports)",
        if idle { "joined and idle" } else { "streaming" },
        seconds.as_secs_f64()
    );
    let options = quaver_tools::jitter::JitterOptions {
        calls,
        seconds,
        encode,
        baseline: if floor {
            Some(quaver_tools::baseline::BaselineKind::Floor)
        } else {
            baseline.then_some(quaver_tools::baseline::BaselineKind::Sleep)
        },
        server,
        ca_cert,
        backend,
        announce: Some(announce),
        progress: true,
        faults,
        hear,
        phases: quaver::PhaseConfig {
            groups: phase_groups,
            calls_per_group,
        },
        ..Default::default()
    };
    if ramp {
        let report = quaver_tools::ramp::run(&options, ramp_to, &STOP)?;
        return Ok(print_report(&report, json, report.interrupted));
    }
    if idle {
        let report = quaver_tools::idle::run(&options, &STOP)?;
        return Ok(print_report(&report, json, report.interrupted));
    }
    let report = quaver_tools::jitter::run(&options, &STOP)?;
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
        eprintln!("charts drawn in {}", path.display());
    }
    Ok(quaver_tools::report::finished(&report))
}

/// Prints a report as JSON or as its table; how the run finished.
fn print_report(
    report: &(impl serde::Serialize + std::fmt::Display),
    json: bool,
    interrupted: bool,
) -> Finished {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(report).unwrap_or_default()
        );
    } else {
        print!("{report}");
    }
    if interrupted {
        Finished::Interrupted
    } else {
        Finished::Completed
    }
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
        tls: !args.plain,
        record_dir: args.record,
        decode_audio: !args.no_decode,
        udp_read_interval: (args.udp_read_interval_us > 0)
            .then(|| Duration::from_micros(args.udp_read_interval_us)),
        keylog: args.keylog.clone(),
        forward: !args.no_forward,
        require_issued_tokens: args.require_tokens,
        dave: args.dave,
        faults: Faults {
            drop_ws_after: args.drop_ws_after,
            close_code: args.close_code,
            udp_loss_pct: args.udp_loss,
            udp_reorder_pct: args.udp_reorder,
            udp_duplicate_pct: args.udp_duplicate,
        },
        ..defaults
    };
    let server = Server::start(config)?;
    install_signal_handlers();
    // The CA file exists before the first line is printed, so whoever reads the URL can
    // trust the server right away.
    let ca_file = match server.ca_certificate_pem() {
        Some(pem) => {
            let path = args.cert_out.clone().unwrap_or_else(|| {
                std::env::temp_dir().join(format!(
                    "quaver-serve-{}-ca.pem",
                    server.main_gateway_addr().port()
                ))
            });
            std::fs::write(&path, pem).map_err(|e| quaver_tools::Error::Io {
                path: path.clone(),
                source: e,
            })?;
            Some(path)
        }
        None => None,
    };
    println!("quaver serve: main gateway {}", server.main_gateway_url());
    println!("  voice gateway {}", server.voice_gateway_url());
    println!("  udp {}", server.udp_addr());
    match &ca_file {
        Some(path) => println!(
            "  tls: CA certificate in {} (quaver: --ca-cert FILE; node: NODE_EXTRA_CA_CERTS; \
             openssl, python: SSL_CERT_FILE)",
            path.display()
        ),
        None => println!("  plain ws:// (debugging mode; Discord clients expect TLS)"),
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
                channel_id,
                user_id,
                ssrc,
            }) => println!(
                "session: guild {guild_id} channel {channel_id} user {user_id} ssrc {ssrc}"
            ),
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
    if let Some(note) = counters.overload_note() {
        println!("warning: {note}");
    }
    Ok(())
}

/// Without RUST_LOG, only the tools' own warnings (the local server's): the libraries' log
/// lines would only repeat what the command reports in its own words (symphonia logs every
/// failed probe, and a file the demo plays made it print `WARN symphonia_core…`), and a user
/// who did not ask for a log should not get one. RUST_LOG=quaver=debug,symphonia=debug (or any
/// filter) brings them back.
const DEFAULT_LOG_FILTER: &str = "off,quaver_tools=warn";

fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    // Colour only for a person at a terminal, never into a pipe or a log file.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .init();
}

fn main() -> ExitCode {
    init_logging();
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
                Finished::Completed
            })
        }
        Command::Serve(args) => serve(*args).map(|()| Finished::Completed),
        Command::Node(args) => {
            return match node(*args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("error: {error}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Demo(options) => {
            install_signal_handlers();
            quaver_tools::demo::demo(&options, &STOP)
        }
        Command::Jitter(args) => {
            install_signal_handlers();
            jitter(args)
        }
        Command::Play(mut options) => {
            install_signal_handlers();
            options.at.token = options
                .at
                .token
                .or_else(|| std::env::var("DISCORD_TOKEN").ok());
            quaver_tools::play::play(&options, &STOP)
        }
        Command::Record(mut options) => {
            install_signal_handlers();
            options.at.token = options
                .at
                .token
                .or_else(|| std::env::var("DISCORD_TOKEN").ok());
            quaver_tools::record::record(&options, &STOP).map(|report| {
                println!("{report}");
                report.finished
            })
        }
    };
    match result {
        Ok(Finished::Completed) => ExitCode::SUCCESS,
        Ok(Finished::Interrupted) => ExitCode::from(quaver_tools::INTERRUPTED_EXIT_CODE),
        Ok(Finished::AudioLost) => ExitCode::from(quaver_tools::AUDIO_LOST_EXIT_CODE),
        Err(error @ quaver_tools::Error::Interrupted { .. }) => {
            eprintln!("{error}");
            ExitCode::from(quaver_tools::INTERRUPTED_EXIT_CODE)
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
