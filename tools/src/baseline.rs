//! The baseline sender: what other voice libraries do — one loop that sleeps until the next
//! 20 ms deadline and then seals and sends each call's packet in turn. The jitter tool runs it
//! beside Quaver's sender so the report can show the difference on the same machine, same run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use quaver::net::crypto::Sealer;
use quaver::net::rtp::RtpStream;

use crate::session::RawSession;

/// Sends `packets` in a loop on every session, paced by `thread::sleep`, until dropped.
pub struct BaselineSender {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u64>>,
}

impl BaselineSender {
    /// Starts the sending thread: every 20 ms, the next of `packets` (cycling through them) on
    /// every session.
    pub fn start(sessions: Vec<RawSession>, packets: Arc<Vec<Vec<u8>>>) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("jitter-baseline".into())
                .spawn(move || {
                    let mut calls: Vec<(RawSession, RtpStream, Sealer)> = sessions
                        .into_iter()
                        .map(|s| {
                            let rtp = RtpStream::new(s.ssrc);
                            let sealer = Sealer::new(s.mode, &s.key);
                            (s, rtp, sealer)
                        })
                        .collect();
                    let start = Instant::now();
                    let mut buffer = [0_u8; 1500];
                    let mut sent = 0_u64;
                    for tick in 0_u32.. {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let deadline = start + Duration::from_millis(20) * tick;
                        std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
                        let payload = &packets[tick as usize % packets.len()];
                        for (session, rtp, sealer) in calls.iter_mut() {
                            let Ok(header) = rtp.write_next(&mut buffer) else {
                                continue;
                            };
                            buffer[header..header + payload.len()].copy_from_slice(payload);
                            if let Ok(len) = sealer.seal(&mut buffer, header, payload.len()) {
                                sent += u64::from(session.socket.send(&buffer[..len]).is_ok());
                            }
                        }
                    }
                    sent
                })?
        };
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops and returns the packets sent.
    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or(0)
    }
}

impl Drop for BaselineSender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
