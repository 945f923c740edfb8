//! A listening participant: joins a call's channel as another user and receives what the
//! server forwards, with the arrival time of every packet. The jitter tool measures end-to-end
//! latency with it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use quaver::net::crypto::TransportCipher;
use quaver::net::receive::{PacketKind, classify, open_rtp};

use crate::session::RawSession;

/// One received audio packet.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub at: Instant,
    pub ssrc: u32,
    pub sequence: u16,
    /// The decrypted payload: the Opus frame.
    pub payload: Vec<u8>,
}

/// Receives on a session's socket until dropped.
pub struct Listener {
    arrivals: Arc<Mutex<Vec<Arrival>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    pub fn start(session: &RawSession) -> std::io::Result<Self> {
        let socket = Arc::clone(&session.socket);
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
        let cipher = TransportCipher::new(session.mode, &session.key);
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let arrivals = Arc::clone(&arrivals);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("jitter-listener".into())
                .spawn(move || {
                    let mut packet = [0_u8; 2048];
                    let mut opened = [0_u8; 2048];
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(len) = socket.recv(&mut packet) else {
                            continue;
                        };
                        let at = Instant::now();
                        if classify(&packet[..len]) != PacketKind::Rtp {
                            continue;
                        }
                        if let Ok(rtp) = open_rtp(&cipher, &packet[..len], &mut opened) {
                            let arrival = Arrival {
                                at,
                                ssrc: rtp.ssrc,
                                sequence: rtp.sequence,
                                payload: rtp.payload.to_vec(),
                            };
                            arrivals
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(arrival);
                        }
                    }
                })?
        };
        Ok(Self {
            arrivals,
            stop,
            thread: Some(thread),
        })
    }

    /// Everything received so far.
    pub fn take(&self) -> Vec<Arrival> {
        std::mem::take(&mut *self.arrivals.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
