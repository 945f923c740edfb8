//! The gateways' listeners: one thread per accepted connection.

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::registry::Shared;
use super::{main_ws, tls, voice_ws};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Gateway {
    Main,
    Voice,
}

/// Accepts connections until stopped; one thread per connection.
pub(super) fn accept_loop(listener: TcpListener, shared: Arc<Shared>, which: Gateway) {
    if let Err(e) = listener.set_nonblocking(true) {
        tracing::error!(error = %e, "cannot poll the listener; accepting nothing");
        return;
    }
    while !shared.stopped() {
        let (stream, peer) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "accept failed");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let limit = shared.config.max_connections;
        if shared.live_connections.fetch_add(1, Ordering::AcqRel) >= limit {
            shared.live_connections.fetch_sub(1, Ordering::AcqRel);
            let refused = {
                let mut reg = shared.lock();
                reg.counters.refused_connections += 1;
                reg.counters.refused_connections
            };
            if refused % 1_000 == 1 {
                tracing::warn!(
                    %peer,
                    limit,
                    refused,
                    "refusing a websocket connection: {limit} are open (ServerConfig::max_connections)"
                );
            }
            drop(stream);
            continue;
        }
        shared.lock().counters.ws_connections += 1;
        let s = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(match which {
                Gateway::Main => "quaver-serve-main-conn".into(),
                Gateway::Voice => "quaver-serve-voice-conn".into(),
            })
            .stack_size(512 * 1024)
            .spawn(move || {
                let _slot = Slot(&s);
                let (ws, framing) = match tls::accept(stream, &s, which == Gateway::Voice) {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "websocket handshake failed");
                        return;
                    }
                };
                match (which, framing) {
                    (Gateway::Voice, Some(framing)) => voice_ws::serve(ws, framing, &s),
                    (Gateway::Main, _) => main_ws::serve(ws, &s),
                    // The handshake refuses a voice request without a supported version.
                    (Gateway::Voice, None) => {}
                }
            });
        if let Err(e) = spawned {
            shared.live_connections.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(error = %e, "cannot spawn a connection thread");
        }
    }
}

/// A connection thread's place under [`super::ServerConfig::max_connections`], given back
/// however the thread ends.
struct Slot<'a>(&'a Shared);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.live_connections.fetch_sub(1, Ordering::AcqRel);
    }
}
