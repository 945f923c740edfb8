//! `quaver jitter` counts every resume of a run, however small the engine's event queues: the
//! local server drops each voice websocket once, so every call must show one attempt and one
//! successful resume.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use quaver_tools::jitter::{JitterOptions, run};
use quaver_tools::server::Faults;

#[test]
fn every_resume_is_counted_with_the_smallest_event_queue() {
    // 12 calls make 24 resume events (attempt and success), past the 16 the queue holds: read
    // only at the end of the run, none of them were left (0 attempts counted).
    let calls = 12;
    let report = run(
        &JitterOptions {
            calls,
            seconds: Duration::from_secs(4),
            realtime: false,
            faults: Faults {
                drop_ws_after: Some(Duration::from_millis(500)),
                ..Faults::default()
            },
            event_queue: 16,
            ..JitterOptions::default()
        },
        &AtomicBool::new(false),
    )
    .expect("jitter runs");
    assert_eq!(report.resume_attempts, calls as u64, "{report:?}");
    assert_eq!(report.resumes, report.resume_attempts, "{report:?}");
    assert_eq!(report.reconnects, 0, "{report:?}");
}
