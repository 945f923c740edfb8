//! A listening participant: joins a call's channel as another user and receives what the
//! server forwards, matching each probe packet to its push as it arrives. The jitter tool
//! measures end-to-end latency with it.
//!
//! With DAVE (the local server requires it, as Discord does) what arrives is an E2EE frame: the
//! listener is a member of the call's MLS group, so it takes the sender's keys from its voice
//! session's events and decrypts, as any receiving client would.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use audiopus::coder::Decoder;
use audiopus::{Channels, SampleRate};
use crossbeam_channel::Receiver;
use hdrhistogram::Histogram;
use quaver::gateway::control::ControlEvent;
use quaver::gateway::dave::{DaveEvent, DaveKeys};
use quaver::gateway::voice::VoiceEvent;
use quaver::net::crypto::TransportCipher;
use quaver::net::dave::{FrameDecryptor, Passthrough, SenderKey};
use quaver::net::receive::{PacketKind, classify, open_rtp};

use crate::probe::{ClickMatcher, Onsets, PushLog};
use crate::report::new_histogram;
use crate::session::RawSession;

/// Most senders a listener keeps figures for: the probe's channel has one, a few more would
/// be other users; beyond that they are ignored rather than grown without bound.
const MAX_SENDERS: usize = 16;

/// What the listener measured of one sender (by RTP SSRC).
pub struct SenderArrivals {
    /// From the push of a probe packet (or click) to its arrival here, in µs.
    pub latency_us: Histogram<u64>,
    /// When its first packet arrived.
    pub first: Instant,
    /// Decodes its packets when the probe clicks (the click is found in the audio).
    clicks: Option<ClickDecoder>,
}

struct ClickDecoder {
    decoder: Decoder,
    pcm: Box<[f32; 1_920]>,
    onsets: Onsets,
    matcher: ClickMatcher,
}

impl SenderArrivals {
    fn new(first: Instant) -> Self {
        Self {
            latency_us: new_histogram(),
            first,
            clicks: None,
        }
    }

    /// Matches `payload`, arrived `at`, to its push in `log`.
    fn arrived(&mut self, payload: &[u8], at: Instant, log: &PushLog) {
        if let Some(pushed) = log.pushed(payload) {
            self.record(at.saturating_duration_since(pushed));
        }
        if !log.clicking() {
            return;
        }
        if self.clicks.is_none() {
            self.clicks = Decoder::new(SampleRate::Hz48000, Channels::Stereo)
                .ok()
                .map(|decoder| ClickDecoder {
                    decoder,
                    pcm: Box::new([0.0; 1_920]),
                    onsets: Onsets::default(),
                    matcher: ClickMatcher::default(),
                });
        }
        let Some(c) = self.clicks.as_mut() else {
            return;
        };
        let (Ok(packet), Ok(signals)) = (
            audiopus::packet::Packet::try_from(payload),
            audiopus::MutSignals::try_from(&mut c.pcm[..]),
        ) else {
            return;
        };
        let Ok(samples) = c.decoder.decode_float(Some(packet), signals, false) else {
            return;
        };
        let left = c.pcm[..samples * 2].iter().step_by(2).copied();
        if c.onsets.frame(left)
            && let Some(click) = c.matcher.matched(log, at)
        {
            let latency = at.saturating_duration_since(click);
            self.record(latency);
        }
    }

    fn record(&mut self, latency: Duration) {
        self.latency_us
            .saturating_record(latency.as_micros().try_into().unwrap_or(u64::MAX));
    }
}

/// Receives on a session's socket until dropped, matching what arrives to the probe's pushes
/// as it comes.
pub struct Listener {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<HashMap<u32, SenderArrivals>>>,
}

impl Listener {
    /// Starts receiving on `session`'s socket. `events` is the session's control thread's
    /// event stream (read by nobody else): DAVE keys for `sender` come from there. Arrivals
    /// are matched to the pushes in `log`.
    pub fn start(
        session: &RawSession,
        events: Receiver<ControlEvent>,
        sender: u64,
        log: Arc<PushLog>,
    ) -> std::io::Result<Self> {
        let socket = Arc::clone(&session.socket);
        let gateway = session.gateway;
        let mut e2ee = SenderFrames::new(sender);
        if let Some(keys) = &session.dave_keys {
            e2ee.install(keys);
        }
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
        let cipher = TransportCipher::new(session.mode, &session.key);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("jitter-listener".into())
                .spawn(move || {
                    let mut senders: HashMap<u32, SenderArrivals> = HashMap::new();
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
                        let Ok(rtp) = open_rtp(&cipher, &packet[..len], &mut opened) else {
                            continue;
                        };
                        // Frames of other senders, or that do not open, stay as they came.
                        let payload = match e2ee.open(rtp.payload, &mut plain, at) {
                            Some(n) => &plain[..n],
                            None => rtp.payload,
                        };
                        if !senders.contains_key(&rtp.ssrc) && senders.len() >= MAX_SENDERS {
                            continue;
                        }
                        senders
                            .entry(rtp.ssrc)
                            .or_insert_with(|| SenderArrivals::new(at))
                            .arrived(payload, at, &log);
                    }
                    senders
                })?
        };
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops receiving; what arrived from each SSRC.
    pub fn finish(mut self) -> HashMap<u32, SenderArrivals> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
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
