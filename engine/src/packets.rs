//! The ring of pre-encoded Opus packets between an [`crate::OpusWriter`] and its source's
//! mixer slot.
//!
//! Packets are stored at their own length, not in 1,275-byte slots: a 96 kb/s stream's
//! packets are ~240 bytes, so fixed slots left four fifths of every passthrough call's ring
//! (12.8 KB for 200 ms) empty. Two lock-free rings make it: the bytes, and each packet's
//! length, pushed after its bytes (so a length the consumer sees always has its bytes behind
//! it). Both are allocated up front; nothing allocates after.

use crate::frame::MAX_OPUS_PACKET;
use crate::writer::OpusPacket;

/// Bytes per packet of ring the packet count is given: the average of a 256 kb/s stream.
/// Streams above it fill the bytes before the count (the writer sees a full ring sooner;
/// nothing is lost).
pub(crate) const BYTES_PER_PACKET: usize = 640;

/// A ring for `packets` packets of [`BYTES_PER_PACKET`] bytes on average (room for at least
/// two of the largest).
pub(crate) fn packet_ring(packets: usize) -> (PacketProducer, PacketConsumer) {
    let packets = packets.max(2);
    let bytes = (packets * BYTES_PER_PACKET).max(2 * MAX_OPUS_PACKET);
    let (lengths_tx, lengths_rx) = rtrb::RingBuffer::new(packets);
    let (bytes_tx, bytes_rx) = rtrb::RingBuffer::new(bytes);
    (
        PacketProducer {
            lengths: lengths_tx,
            bytes: bytes_tx,
        },
        PacketConsumer {
            lengths: lengths_rx,
            bytes: bytes_rx,
        },
    )
}

/// The writer's end.
pub(crate) struct PacketProducer {
    lengths: rtrb::Producer<u16>,
    bytes: rtrb::Producer<u8>,
}

impl PacketProducer {
    /// Whether a packet of `len` bytes fits now.
    pub(crate) fn fits(&self, len: usize) -> bool {
        self.lengths.slots() > 0 && self.bytes.slots() >= len
    }

    /// Packets of the largest size that fit now (at least as many of any size do).
    pub(crate) fn free_packets(&self) -> usize {
        self.lengths
            .slots()
            .min(self.bytes.slots() / MAX_OPUS_PACKET)
    }

    /// Queues `packet` (at most [`MAX_OPUS_PACKET`] bytes); false when it does not fit.
    pub(crate) fn push(&mut self, packet: &[u8]) -> bool {
        if packet.len() > MAX_OPUS_PACKET || !self.fits(packet.len()) {
            return false;
        }
        let Ok(mut chunk) = self.bytes.write_chunk(packet.len()) else {
            return false;
        };
        let (first, second) = chunk.as_mut_slices();
        let split = first.len();
        first.copy_from_slice(&packet[..split]);
        second.copy_from_slice(&packet[split..]);
        chunk.commit_all();
        // Cannot fail: a slot was checked above and only this side pushes.
        let _ = self.lengths.push(packet.len() as u16);
        true
    }
}

/// The mixer's end. Never allocates.
pub(crate) struct PacketConsumer {
    lengths: rtrb::Consumer<u16>,
    bytes: rtrb::Consumer<u8>,
}

impl PacketConsumer {
    /// Packets queued.
    pub(crate) fn len(&self) -> usize {
        self.lengths.slots()
    }

    /// Copies the oldest packet into `packet` without taking it; false when none is queued.
    pub(crate) fn peek_into(&mut self, packet: &mut OpusPacket) -> bool {
        let Ok(&len) = self.lengths.peek() else {
            return false;
        };
        let len = usize::from(len);
        // An uncommitted chunk consumes nothing. The bytes were committed before their length
        // was pushed, so the chunk is there; if not (a broken invariant) the packet reads as
        // empty, which the decoder conceals and passthrough replaces with silence.
        packet.len = 0;
        if let Ok(chunk) = self.bytes.read_chunk(len) {
            let (first, second) = chunk.as_slices();
            packet.data[..first.len()].copy_from_slice(first);
            packet.data[first.len()..len].copy_from_slice(second);
            packet.len = len as u16;
        }
        true
    }

    /// Takes the oldest packet into `packet`; false when none is queued.
    pub(crate) fn pop_into(&mut self, packet: &mut OpusPacket) -> bool {
        if !self.peek_into(packet) {
            return false;
        }
        self.discard(1);
        true
    }

    /// Drops up to `count` of the oldest packets; returns how many.
    pub(crate) fn discard(&mut self, count: usize) -> usize {
        let mut dropped = 0;
        while dropped < count {
            let Ok(len) = self.lengths.pop() else {
                break;
            };
            if let Ok(chunk) = self.bytes.read_chunk(usize::from(len)) {
                chunk.commit_all();
            }
            dropped += 1;
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(len: usize, fill: u8) -> Vec<u8> {
        vec![fill; len]
    }

    #[test]
    fn packets_keep_their_bytes_and_order_across_the_ring_wrapping() {
        let (mut tx, mut rx) = packet_ring(3);
        let mut out = OpusPacket::EMPTY;
        // Sizes that do not divide the byte ring, so packets straddle its end.
        for round in 0..50_u8 {
            let len = 1 + (usize::from(round) * 97) % MAX_OPUS_PACKET;
            assert!(tx.push(&packet(len, round)));
            assert_eq!(rx.len(), 1);
            assert!(rx.peek_into(&mut out));
            assert_eq!(out.bytes(), &packet(len, round)[..], "peek, round {round}");
            assert_eq!(rx.len(), 1, "peeking takes nothing");
            out = OpusPacket::EMPTY;
            assert!(rx.pop_into(&mut out));
            assert_eq!(out.bytes(), &packet(len, round)[..], "pop, round {round}");
            assert_eq!(rx.len(), 0);
        }
        assert!(!rx.pop_into(&mut out));
    }

    #[test]
    fn the_ring_is_full_by_count_for_small_packets_and_by_bytes_for_large_ones() {
        let (mut tx, mut rx) = packet_ring(10);
        for n in 0..10 {
            assert!(tx.push(&packet(240, n)), "a 96 kb/s packet {n} fits");
        }
        assert!(!tx.fits(240) && !tx.push(&packet(240, 10)));
        assert_eq!(rx.discard(20), 10);
        let large = (10 * BYTES_PER_PACKET) / MAX_OPUS_PACKET;
        for n in 0..large {
            assert!(tx.push(&packet(MAX_OPUS_PACKET, n as u8)));
        }
        assert!(!tx.push(&packet(MAX_OPUS_PACKET, 0)), "the bytes are full");
        assert_eq!(tx.free_packets(), 0);
        assert_eq!(rx.len(), large);
        let mut out = OpusPacket::EMPTY;
        assert!(rx.pop_into(&mut out));
        assert_eq!(out.bytes(), &packet(MAX_OPUS_PACKET, 0)[..]);
        assert!(
            tx.push(&packet(MAX_OPUS_PACKET, 9)),
            "a popped packet frees its bytes"
        );
        assert!(
            !tx.push(&packet(MAX_OPUS_PACKET + 1, 0)),
            "never more than one packet"
        );
    }
}
