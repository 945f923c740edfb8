//! Calls share the engine's threads: a process with 50 calls has exactly the threads it has
//! with one (no thread per call, none for IP discovery). Its own test binary, so no other test's
//! threads come and go while it counts.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use quaver::{CallStatus, Config, Engine};
use quaver_tools::server::{Server, ServerConfig};

/// Thread names of this process and how many threads carry each, leaving out the in-process
/// server's own threads (one per websocket, by design of the test server).
fn threads() -> BTreeMap<String, usize> {
    let mut names = BTreeMap::new();
    for task in std::fs::read_dir("/proc/self/task").expect("procfs") {
        let comm = task.expect("task").path().join("comm");
        let Ok(name) = std::fs::read_to_string(comm) else {
            continue; // the thread ended while we looked
        };
        let name = name.trim().to_string();
        if !name.starts_with("quaver-serve") {
            *names.entry(name).or_insert(0) += 1;
        }
    }
    names
}

fn wait_ready(engine: &Engine, calls: &[quaver::CallId]) {
    let give_up = Instant::now() + Duration::from_secs(30);
    while !calls
        .iter()
        .all(|&c| engine.call_status(c) == Some(CallStatus::Ready))
    {
        assert!(Instant::now() < give_up, "calls never became ready");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn fifty_calls_use_the_threads_of_one() {
    let server = Server::start(ServerConfig::default()).expect("server");
    let mut config = Config::default();
    config.engine.realtime_priority = false;
    config.control = server.control_config();
    let engine = Engine::new(config).expect("engine");

    let first = engine
        .connect(server.voice_connect_request(1, 10, 100))
        .expect("first call");
    wait_ready(&engine, &[first]);
    let with_one = threads();

    // Watch the count while 49 more calls join: a thread per call (or per IP discovery, as
    // there once was) would show up here even if it ended before the calls were ready.
    let baseline: usize = with_one.values().sum::<usize>() + 1; // + the watcher itself
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut most = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                most = most.max(threads().values().sum::<usize>());
                std::thread::sleep(Duration::from_micros(500));
            }
            most
        })
    };
    let more: Vec<_> = (2..=50)
        .map(|i| {
            engine
                .connect(server.voice_connect_request(i, 10 * i, 100))
                .expect("call")
        })
        .collect();
    wait_ready(&engine, &more);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let most = watcher.join().expect("watcher");
    let with_fifty = threads();
    assert_eq!(with_one, with_fifty, "threads with 1 call vs with 50");
    assert_eq!(
        most, baseline,
        "no thread came and went while 49 calls joined"
    );
    assert!(
        with_one.keys().any(|n| n.starts_with("quaver-control")),
        "the count saw the engine's threads: {with_one:?}"
    );
}
