//! Waiting for calls to connect, and saying at once why one could not.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use quaver::{CallEvent, CallId, CallStatus, Engine, Event};

use crate::Error;

/// Waits until every call is ready. A call the server ends meanwhile (4017, 4004 …) fails the
/// wait at once with the reason; `stop` (Ctrl-C) interrupts it. Events that arrive meanwhile
/// are read and dropped, except the first end.
pub fn until_ready(
    engine: &Engine,
    calls: &[CallId],
    stop: &AtomicBool,
    timeout: Duration,
) -> Result<(), Error> {
    let give_up = Instant::now() + timeout;
    let ended = |event: Event| match event {
        Event::Call(CallEvent::Ended { call, reason }) if calls.contains(&call) => {
            Some(Error::CallEnded { call, reason })
        }
        _ => None,
    };
    loop {
        // A thousand calls report several events each: read what is queued in one go, so the
        // readiness scan below runs once per batch, not once per event.
        for event in engine.events().try_iter() {
            if let Some(error) = ended(event) {
                return Err(error);
            }
        }
        let ready = calls
            .iter()
            .filter(|&&c| engine.call_status(c) == Some(CallStatus::Ready))
            .count();
        if ready == calls.len() {
            return Ok(());
        }
        if stop.load(Ordering::Relaxed) {
            return Err(Error::Interrupted {
                stage: crate::Stage::Connecting,
            });
        }
        if Instant::now() > give_up {
            return Err(Error::NotConnected {
                ready,
                calls: calls.len(),
                waited: timeout,
            });
        }
        if let Some(error) = engine
            .events()
            .recv_timeout(Duration::from_millis(20))
            .and_then(ended)
        {
            return Err(error);
        }
    }
}
