//! Starting and stopping a node: the engine, the HTTP/websocket server on its own tokio
//! runtime thread, and the event thread.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use quaver::CallId;

use crate::config::NodeConfig;
use crate::error::NodeError;
use crate::player::Connection;
use crate::session::State;
use crate::stats::Sampler;

/// What every part of a running node shares.
pub(crate) struct Shared {
    pub engine: quaver::Engine,
    pub config: NodeConfig,
    state: Mutex<State>,
    pub started: Instant,
    pub sampler: Mutex<Sampler>,
    pub stopping: AtomicBool,
}

impl Shared {
    /// The state, recovering it if a thread panicked while holding the lock (every update
    /// leaves it consistent between statements that can panic).
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Leaves calls on a thread of their own: `Engine::disconnect` waits for the control
    /// thread's answer, which no request handler or the event thread should wait for.
    pub(crate) fn disconnect_later(self: &Arc<Self>, calls: Vec<CallId>) {
        if calls.is_empty() {
            return;
        }
        let shared = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("quaver-node-leave".into())
            .spawn(move || {
                for call in calls {
                    if let Err(e) = shared.engine.disconnect(call) {
                        tracing::debug!(error = %e, "leaving a call");
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "could not start a thread to leave calls");
        }
    }

    /// Whether the call's voice connection is up.
    pub(crate) fn connected(&self, call: Option<CallId>) -> bool {
        call.and_then(|c| self.engine.call_status(c)) == Some(quaver::CallStatus::Ready)
    }

    /// The call's voice connection as players show it: up or not, and its gateway ping.
    pub(crate) fn connection(&self, call: Option<CallId>) -> Connection {
        Connection {
            connected: self.connected(call),
            ping: call.and_then(|c| self.engine.gateway_latency(c)),
        }
    }
}

/// A running node. Dropping it stops it.
pub struct Node {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Starts the engine and serves the Lavalink v4 API on `config.listen` (port 0 picks a
    /// free port; see [`Node::addr`]).
    pub fn start(mut config: NodeConfig) -> Result<Self, NodeError> {
        if let Some(pem) = &config.voice_ca_pem {
            config
                .engine
                .control
                .trust_pem(pem)
                .map_err(NodeError::Certificate)?;
        }
        let engine = quaver::Engine::new(config.engine.clone())?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("quaver-node-http")
            .enable_all()
            .build()
            .map_err(NodeError::Runtime)?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(config.listen))
            .map_err(NodeError::Listen)?;
        let addr = listener.local_addr().map_err(NodeError::Listen)?;
        let shared = Arc::new(Shared {
            engine,
            config,
            state: Mutex::new(State::default()),
            started: Instant::now(),
            sampler: Mutex::new(Sampler::default()),
            stopping: AtomicBool::new(false),
        });
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = crate::routes::router(Arc::clone(&shared));
        let server = std::thread::Builder::new()
            .name("quaver-node-http".into())
            .spawn(move || {
                let served = runtime.block_on(async move {
                    axum::serve(listener, app)
                        .with_graceful_shutdown(async move {
                            let _ = stopped.await;
                        })
                        .await
                });
                if let Err(e) = served {
                    tracing::error!(error = %e, "the node's HTTP server stopped");
                }
                runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            })
            .map_err(NodeError::Runtime)?;
        let pump = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("quaver-node-events".into())
                .spawn(move || crate::pump::run(&shared))
                .map_err(NodeError::Runtime)?
        };
        tracing::info!(%addr, "Lavalink-compatible node listening");
        Ok(Self {
            addr,
            shared,
            shutdown: Some(shutdown),
            threads: vec![server, pump],
        })
    }

    /// Where the node listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The engine underneath (its statistics, for reports and tests).
    pub fn engine(&self) -> &quaver::Engine {
        &self.shared.engine
    }

    /// Stops serving, leaves every call and stops the engine.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        self.shared.stopping.store(true, Ordering::Relaxed);
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        let ids: Vec<_> = self.shared.lock().sessions.keys().cloned().collect();
        for id in ids {
            let calls = self.shared.lock().remove_session(&id);
            for call in calls {
                let _ = self.shared.engine.disconnect(call);
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shut_down();
    }
}
