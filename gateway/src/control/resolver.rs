//! Host-name resolution off the control thread.

use std::io;
use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::Sender;
use mio::Waker;

use super::handle::Command;

/// Resolves host names off the control thread (getaddrinfo blocks).
pub(super) struct Resolver {
    requests: Option<Sender<(u64, u64, String, u16)>>,
    thread: Option<JoinHandle<()>>,
}

impl Resolver {
    pub(super) fn spawn(results: Sender<Command>, waker: Arc<Waker>) -> io::Result<Self> {
        let (tx, rx) = crossbeam_channel::unbounded::<(u64, u64, String, u16)>();
        let thread = std::thread::Builder::new()
            .name("quaver-resolver".into())
            .spawn(move || {
                for (id, generation, host, port) in rx {
                    let result = (host.as_str(), port)
                        .to_socket_addrs()
                        .map(|it| it.collect::<Vec<_>>())
                        .and_then(|addrs| {
                            if addrs.is_empty() {
                                Err(io::Error::new(
                                    io::ErrorKind::NotFound,
                                    "host has no addresses",
                                ))
                            } else {
                                Ok(addrs)
                            }
                        });
                    if results
                        .send(Command::Resolved {
                            id,
                            generation,
                            result,
                        })
                        .is_err()
                    {
                        return;
                    }
                    let _ = waker.wake();
                }
            })?;
        Ok(Resolver {
            requests: Some(tx),
            thread: Some(thread),
        })
    }

    pub(super) fn resolve(&self, id: u64, generation: u64, host: String, port: u16) {
        if let Some(tx) = &self.requests {
            let _ = tx.send((id, generation, host, port));
        }
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        self.requests = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
