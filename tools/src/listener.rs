//! A listening participant: joins a call's channel as another user and receives what the
//! server forwards, with the arrival time of every packet. The jitter tool measures end-to-end
//! latency with it.
//!
//! With DAVE (the local server requires it, as Discord does) what arrives is an E2EE frame: the
//! listener is a member of the call's MLS group, so it takes the sender's keys from its voice
//! session's events and decrypts, as any receiving client would.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use quaver::gateway::control::ControlEvent;
use quaver::gateway::dave::{DaveEvent, DaveKeys};
use quaver::gateway::voice::VoiceEvent;
use quaver::net::crypto::TransportCipher;
use quaver::net::dave::{FrameDecryptor, Passthrough, SenderKey};
use quaver::net::receive::{PacketKind, classify, open_rtp};

use crate::session::RawSession;

/// One received audio packet.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// When the listener's thread got it back from `recv` (user space, not a kernel timestamp).
    pub at: Instant,
    /// The sender's RTP SSRC.
    pub ssrc: u32,
    /// Its RTP sequence number.
    pub sequence: u16,
    /// The decrypted payload: the Opus frame (DAVE frames of the watched sender opened too).
    pub payload: Vec<u8>,
}

/// Receives on a session's socket until dropped.
pub struct Listener {
    arrivals: Arc<Mutex<Vec<Arrival>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    /// Starts receiving on `session`'s socket. `events` is the session's control thread's
    /// event stream (read by nobody else): DAVE keys for `sender` come from there.
    pub fn start(
        session: &RawSession,
        events: Receiver<ControlEvent>,
        sender: u64,
    ) -> std::io::Result<Self> {
        let socket = Arc::clone(&session.socket);
        let gateway = session.gateway;
        let mut e2ee = SenderFrames::new(sender);
        if let Some(keys) = &session.dave_keys {
            e2ee.install(keys);
        }
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
                    let mut plain = [0_u8; 2048];
                    while !stop.load(Ordering::Relaxed) {
                        for event in events.try_iter() {
                            if let ControlEvent::Voice {
                                call,
                                event: VoiceEvent::Dave(DaveEvent::KeysChanged(keys)),
                            } = event
                                && call == gateway
                            {
                                e2ee.install(&keys);
                            }
                        }
                        let Ok(len) = socket.recv(&mut packet) else {
                            continue;
                        };
                        let at = Instant::now();
                        if classify(&packet[..len]) != PacketKind::Rtp {
                            continue;
                        }
                        if let Ok(rtp) = open_rtp(&cipher, &packet[..len], &mut opened) {
                            // Frames of other senders, or that do not open, stay as they came.
                            let payload = match e2ee.open(rtp.payload, &mut plain, at) {
                                Some(n) => plain[..n].to_vec(),
                                None => rtp.payload.to_vec(),
                            };
                            let arrival = Arrival {
                                at,
                                ssrc: rtp.ssrc,
                                sequence: rtp.sequence,
                                payload,
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

/// The watched sender's DAVE decryptor, fed with its keys as transitions execute.
struct SenderFrames {
    sender: u64,
    decryptor: FrameDecryptor,
    /// Whether DAVE is in force (protocol version above 0).
    e2ee: bool,
}

impl SenderFrames {
    fn new(sender: u64) -> Self {
        Self {
            sender,
            decryptor: FrameDecryptor::new(),
            e2ee: false,
        }
    }

    fn install(&mut self, keys: &DaveKeys) {
        self.e2ee = keys.protocol_version > 0;
        self.decryptor.set_passthrough(if self.e2ee {
            Passthrough::Off
        } else {
            Passthrough::On
        });
        for (user, secret) in &keys.members {
            if *user == self.sender {
                self.decryptor
                    .install_key(SenderKey::new(keys.epoch, *secret.expose()), Instant::now());
            }
        }
    }

    /// The plaintext length in `out`, when DAVE is in force and the frame opens.
    fn open(&mut self, frame: &[u8], out: &mut [u8], now: Instant) -> Option<usize> {
        if !self.e2ee {
            return None;
        }
        self.decryptor.decrypt_into(frame, out, now).ok()
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
