//! One call's packet state: RTP, transport seal, DAVE, and its buffers.

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use quaver_engine::FrameReceiver;

use super::{CallConfig, SendSlot, SenderError};
use crate::crypto::{SEAL_OVERHEAD, Sealer};
use crate::dave::{self, FrameEncryptor};
use crate::rtp::{HEADER_LEN, MAX_PACKET, RtpStream, SILENCE_FRAME, TIMESTAMP_STEP};

pub(super) struct Call {
    pub(super) id: SendSlot,
    pub(super) fd: std::os::fd::RawFd,
    // Keeps the descriptor open while the thread sends on it.
    pub(super) _socket: Arc<UdpSocket>,
    pub(super) frames: FrameReceiver,
    pub(super) out: Outgoing,
    pub(super) speaking: bool,
    pub(super) silence_left: u8,
    pub(super) stop_after_send: bool,
    pub(super) packets: u64,
    pub(super) send_errors: u64,
    pub(super) refusal: Refusal,
    /// Its phase group (see [`super::phase`]), chosen by the handle (or the core, for calls
    /// added to it directly).
    pub(super) group: u8,
}

/// Back-off after the far end refused the call's packets. On a connected UDP socket Linux turns
/// the ICMP "port unreachable" of a dead voice server into `ECONNREFUSED` on the next send; a
/// server that is down for the minutes a reconnect can take should not get 50 packets a second
/// meanwhile. The call keeps its frames flowing (they are dropped and counted, the audio is lost
/// either way) and probes with one packet after each quiet spell: 100 ms, doubling to 1 s.
#[derive(Debug, Default)]
pub(super) struct Refusal {
    /// No packet goes out before this tick.
    quiet_until: u64,
    /// Refusals since the last clean stretch; sets the length of the next quiet spell.
    streak: u32,
    /// Packets accepted in a row since the last refusal.
    accepted: u32,
}

impl Refusal {
    const FIRST_QUIET_TICKS: u64 = 5;
    const MAX_QUIET_TICKS: u64 = 50;
    /// One second of accepted packets: the peer is back (a single accepted probe proves
    /// nothing, since the refusal only shows on the send after the ICMP came back).
    const CLEAN_PACKETS: u32 = 50;

    /// Whether tick `n` must stay quiet.
    pub(super) fn holds(&self, n: u64) -> bool {
        n < self.quiet_until
    }

    /// A send on tick `n` was refused.
    pub(super) fn refused(&mut self, n: u64) {
        let quiet = (Self::FIRST_QUIET_TICKS << self.streak.min(8)).min(Self::MAX_QUIET_TICKS);
        self.quiet_until = n.saturating_add(quiet);
        self.streak = self.streak.saturating_add(1);
        self.accepted = 0;
    }

    /// A send was accepted.
    pub(super) fn accepted(&mut self) {
        self.accepted = self.accepted.saturating_add(1);
        if self.accepted >= Self::CLEAN_PACKETS {
            self.streak = 0;
        }
    }
}

/// The packet being built for a call, apart from its frame queue so both can be borrowed at once.
pub(super) struct Outgoing {
    pub(super) rtp: RtpStream,
    /// The grid tick and RTP timestamp of the call's first packet. Timestamps follow the grid
    /// from there, so a gap (a stalled mixer, a pause between stretches of audio) shows as a
    /// jump in the timestamp, as in any real-time RTP stream, instead of every later packet
    /// looking late to the receiver's jitter buffer.
    pub(super) anchor: Option<(u64, u32)>,
    /// The tick of the last packet, so timestamps never go backwards.
    pub(super) last_tick: Option<u64>,
    pub(super) sealer: Box<Sealer>,
    /// End-to-end encryption of the Opus frames, when DAVE is on.
    pub(super) dave: Option<Box<FrameEncryptor>>,
    pub(super) len: usize,
    pub(super) buf: [u8; MAX_PACKET],
}

impl Call {
    pub(super) fn build(config: CallConfig, id: SendSlot) -> Result<Box<Self>, SenderError> {
        config
            .socket
            .peer_addr()
            .map_err(SenderError::NotConnected)?;
        // The blocking mode is left alone (the control side may read with timeouts): every send
        // passes MSG_DONTWAIT instead.
        Ok(Box::new(Self {
            id,
            fd: config.socket.as_raw_fd(),
            _socket: config.socket,
            frames: config.frames,
            out: Outgoing {
                rtp: RtpStream::new(config.ssrc),
                anchor: None,
                last_tick: None,
                sealer: Box::new(Sealer::new(config.mode, &config.key)),
                dave: None,
                len: 0,
                buf: [0; MAX_PACKET],
            },
            speaking: false,
            silence_left: 0,
            stop_after_send: false,
            packets: 0,
            send_errors: 0,
            refusal: Refusal::default(),
            group: 0,
        }))
    }
}

/// Why a packet could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SealError {
    /// The transport key has used all its nonces.
    TransportExhausted,
    /// DAVE encryption failed; the frame is dropped rather than sent unprotected.
    Dave,
}

/// Largest payload copied into a packet: what fits between the header and the transport seal,
/// less the DAVE frame overhead so that plain and end-to-end encrypted packets cut alike. Opus
/// frames are at most 1,275 bytes (12 + 1,275 + 16 + 20 = 1,323 < 1,460), so nothing real is cut.
pub(super) const MAX_PAYLOAD: usize = MAX_PACKET - HEADER_LEN - SEAL_OVERHEAD - dave::MAX_OVERHEAD;

impl Outgoing {
    /// Builds `payload` (`None`: a silence frame) as the packet of grid tick `tick` into `buf`:
    /// header, then the Opus frame — DAVE-encrypted in place when a key is set — then the
    /// transport seal. `Ok(true)` when the frame was DAVE-encrypted.
    pub(super) fn seal(&mut self, payload: Option<&[u8]>, tick: u64) -> Result<bool, SealError> {
        let tick = self.last_tick.map_or(tick, |last| tick.max(last + 1));
        let (anchor_tick, anchor_timestamp) =
            *self.anchor.get_or_insert((tick, self.rtp.timestamp));
        let frames_since = (tick - anchor_tick) as u32;
        let timestamp = anchor_timestamp.wrapping_add(frames_since.wrapping_mul(TIMESTAMP_STEP));
        let payload = payload.unwrap_or(&SILENCE_FRAME);
        // Longer input is cut rather than allowed to fail (see MAX_PAYLOAD).
        let payload = &payload[..payload.len().min(MAX_PAYLOAD)];
        let _ =
            crate::rtp::write_header(&mut self.buf, self.rtp.sequence, timestamp, self.rtp.ssrc);
        let body = &mut self.buf[HEADER_LEN..MAX_PACKET - SEAL_OVERHEAD];
        // The silence frame is never wrapped (PROTOCOL.md §4, as davey and discord.js send it).
        let (len, wrapped) = match self.dave.as_deref_mut() {
            Some(encryptor) if payload != SILENCE_FRAME => (
                encryptor
                    .encrypt_into(payload, body)
                    .map_err(|_| SealError::Dave)?,
                true,
            ),
            _ => {
                body[..payload.len()].copy_from_slice(payload);
                (payload.len(), false)
            }
        };
        let n = self
            .sealer
            .seal(&mut self.buf, HEADER_LEN, len)
            .map_err(|_| SealError::TransportExhausted)?;
        self.len = n;
        self.rtp.sequence = self.rtp.sequence.wrapping_add(1);
        self.last_tick = Some(tick);
        Ok(wrapped)
    }
}
