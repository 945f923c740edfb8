//! `quaver jitter --idle`: what joined calls that play nothing cost. DESIGN.md's target is
//! 1,000 of them within 2 % of one core: idle calls must not tick, and nothing may poll.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use quaver::gateway::main_gateway::MainGatewayConfig;
use quaver::gateway::protocol::Token;
use quaver::{CallId, Config, Engine, JoinOptions};
use serde::Serialize;

use crate::Error;
use crate::jitter::JitterOptions;
use crate::server::{Server, ServerConfig};

/// How long the calls may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// Lets keepalives and heartbeats settle into their steady rhythm before measuring.
const SETTLE: Duration = Duration::from_secs(1);

/// The idle run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    /// Calls joined.
    pub calls: usize,
    /// Seconds measured.
    pub seconds: f64,
    /// CPU of Quaver's own threads (mixer, sender, control, decoder worker), in % of one core;
    /// the in-process server's threads are left out.
    pub cpu_percent: f64,
    /// The same per call.
    pub cpu_percent_per_call: f64,
    /// Time the hypervisor took from this VM meanwhile, % of all CPU time (`None` where
    /// `/proc/stat` does not say).
    pub steal_percent: Option<f64>,
    /// Whether Ctrl-C cut the measurement short.
    pub interrupted: bool,
}

impl std::fmt::Display for IdleReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} idle joined call(s), {:.1} s: CPU {:.3} % of one core ({:.5} % per call){}{}",
            self.calls,
            self.seconds,
            self.cpu_percent,
            self.cpu_percent_per_call,
            self.steal_percent
                .map_or_else(String::new, |s| format!("; steal {s:.1} %")),
            if self.interrupted {
                " (interrupted)"
            } else {
                ""
            }
        )
    }
}

/// Joins `options.calls` calls that play nothing, waits for all of them, then measures the CPU
/// of Quaver's threads for `options.seconds`.
pub fn run(options: &JitterOptions, stop: &AtomicBool) -> Result<IdleReport, Error> {
    let embedded = match &options.server {
        Some(_) => None,
        None => Some(Server::start(ServerConfig {
            decode_audio: false,
            ..ServerConfig::default()
        })?),
    };
    let mut config = Config::default();
    config.engine.max_calls = options.calls;
    config.engine.realtime_priority = options.realtime;
    config.backend = options.backend;
    config.phases = options.phases;
    config.control = match (&embedded, &options.server) {
        (Some(server), _) => server.trusted(config.control),
        (None, _) => crate::remote::control_config(options.ca_cert.as_deref())?,
    };
    let engine = Engine::new(config)?;
    let calls: Vec<CallId> = match (&embedded, &options.server) {
        (Some(server), _) => (0..options.calls as u64)
            .map(|i| engine.connect(server.voice_connect_request(1 + i, 700_000 + i, 4242)))
            .collect::<Result<_, _>>()?,
        (None, Some(remote)) => {
            let mut bot = MainGatewayConfig::new(Token::new("quaver-idle"));
            bot.url = crate::remote::main_gateway_url(remote);
            let bot = engine.connect_bot(bot)?;
            (0..options.calls as u64)
                .map(|i| engine.join(bot, 1 + i, 700_000 + i, JoinOptions::default()))
                .collect::<Result<_, _>>()?
        }
        (None, None) => unreachable!("no server configured and none embedded"),
    };
    crate::connect::until_ready(&engine, &calls, stop, CONNECT_TIMEOUT)?;
    if let Some(line) = &options.announce {
        eprintln!("{line}");
    }
    std::thread::sleep(SETTLE);

    let cpu_before = crate::cpu::quaver_thread_time();
    let machine_before = crate::cpu::MachineTimes::now();
    let started = Instant::now();
    let mut interrupted = false;
    let mut progress = crate::progress::Progress::new(
        options.progress && std::io::IsTerminal::is_terminal(&std::io::stderr()),
    );
    while started.elapsed() < options.seconds {
        if stop.load(Ordering::Relaxed) {
            interrupted = true;
            break;
        }
        progress.update(|| {
            format!(
                "measuring {:.1} of {:.1} s",
                started.elapsed().as_secs_f64(),
                options.seconds.as_secs_f64()
            )
        });
        std::thread::sleep(Duration::from_millis(20));
    }
    let wall = started.elapsed();
    progress.clear();
    let cpu = crate::cpu::quaver_thread_time().saturating_sub(cpu_before);
    let steal_percent = crate::cpu::MachineTimes::now().steal_percent_since(&machine_before);
    let cpu_percent = cpu.as_secs_f64() / wall.as_secs_f64() * 100.0;
    for call in calls {
        let _ = engine.disconnect(call);
    }
    Ok(IdleReport {
        calls: options.calls,
        seconds: wall.as_secs_f64(),
        cpu_percent,
        cpu_percent_per_call: cpu_percent / options.calls.max(1) as f64,
        steal_percent,
        interrupted,
    })
}
