//! Rings of variable-length packets: an [`crate::OpusWriter`]'s pre-encoded Opus on its way to
//! its source's mixer slot, and each call's encoded frames on their way to the sender
//! ([`crate::frame_queue`]).
//!
//! Packets are stored at their own length, not in 1,275-byte slots: a 96 kb/s stream's
//! packets are ~240 bytes, so fixed slots left four fifths of every passthrough call's ring
//! (12.8 KB for 200 ms) empty. Two lock-free rings make it: the bytes, and each packet's
//! head (its length and what else the ring carries with it), pushed after its bytes (so a
//! head the consumer sees always has its bytes behind it). A packet never straddles the end
//! of the byte ring: one that would starts over at its beginning, behind a pad that the head
//! counts, so the consumer reads every packet as one slice and the sender seals it straight
//! from the ring. Both are allocated up front; nothing allocates after.

use crate::frame::MAX_OPUS_PACKET;
use crate::writer::OpusPacket;

/// Bytes per packet of ring the packet count is given: the average of a 256 kb/s stream.
/// Streams above it fill the bytes before the count (the writer sees a full ring sooner;
/// nothing is lost).
pub(crate) const BYTES_PER_PACKET: usize = 640;

/// A ring for `packets` packets of [`BYTES_PER_PACKET`] bytes on average (room for at least
/// two of the largest), each carrying a `M` beside its bytes.
pub(crate) fn packet_ring<M: Copy>(packets: usize) -> (PacketProducer<M>, PacketConsumer<M>) {
    let packets = packets.max(2);
    let bytes = (packets * BYTES_PER_PACKET).max(2 * MAX_OPUS_PACKET);
    let (heads_tx, heads_rx) = rtrb::RingBuffer::new(packets);
    let (bytes_tx, bytes_rx) = rtrb::RingBuffer::new(bytes);
    (
        PacketProducer {
            heads: heads_tx,
            bytes: bytes_tx,
            capacity: bytes,
            position: 0,
        },
        PacketConsumer {
            heads: heads_rx,
            bytes: bytes_rx,
        },
    )
}

/// One packet's entry in the ring of heads.
#[derive(Clone, Copy)]
struct Head<M> {
    meta: M,
    /// Bytes skipped before the packet so that it does not straddle the ring's end.
    pad: u16,
    len: u16,
}

/// The writer's end.
pub(crate) struct PacketProducer<M = ()> {
    heads: rtrb::Producer<Head<M>>,
    bytes: rtrb::Producer<u8>,
    /// Length of the byte ring.
    capacity: usize,
    /// Where the next byte goes in the byte ring (only this side writes, so it can know).
    position: usize,
}

impl<M: Copy> PacketProducer<M> {
    /// The pad a packet of `len` bytes needs to start now: the rest of the byte ring when it
    /// would not fit before the end.
    fn pad_for(&self, len: usize) -> usize {
        let to_end = self.capacity - self.position;
        if len > to_end { to_end } else { 0 }
    }

    /// Whether a packet of `len` bytes fits now.
    pub(crate) fn fits(&self, len: usize) -> bool {
        len <= MAX_OPUS_PACKET
            && self.heads.slots() > 0
            && self.bytes.slots() >= self.pad_for(len) + len
    }

    /// Packets of the largest size that fit now (at least as many of any size do): a pad is
    /// shorter than the packet after it, so one largest packet of room covers all pads.
    pub(crate) fn free_packets(&self) -> usize {
        self.heads
            .slots()
            .min(self.bytes.slots().saturating_sub(MAX_OPUS_PACKET - 1) / MAX_OPUS_PACKET)
    }

    /// Queues `packet` (at most [`MAX_OPUS_PACKET`] bytes) with `meta`; false when it does
    /// not fit.
    pub(crate) fn push(&mut self, meta: M, packet: &[u8]) -> bool {
        if !self.fits(packet.len()) {
            return false;
        }
        let pad = self.pad_for(packet.len());
        let Ok(mut chunk) = self.bytes.write_chunk(pad + packet.len()) else {
            return false;
        };
        let (first, second) = chunk.as_mut_slices();
        // With a pad the packet is all of the second slice, else all in the first.
        let target = if pad > 0 { second } else { first };
        target[..packet.len()].copy_from_slice(packet);
        chunk.commit_all();
        self.position = (self.position + pad + packet.len()) % self.capacity;
        // Cannot fail: a slot was checked above and only this side pushes.
        let _ = self.heads.push(Head {
            meta,
            pad: pad as u16,
            len: packet.len() as u16,
        });
        true
    }
}

/// The reader's end (the mixer's, or the sender's). Never allocates.
pub(crate) struct PacketConsumer<M = ()> {
    heads: rtrb::Consumer<Head<M>>,
    bytes: rtrb::Consumer<u8>,
}

impl<M: Copy> PacketConsumer<M> {
    /// Packets queued.
    pub(crate) fn len(&self) -> usize {
        self.heads.slots()
    }

    /// The oldest packet's `meta` and length, without taking it.
    pub(crate) fn peek(&self) -> Option<(M, usize)> {
        let head = self.heads.peek().ok()?;
        Some((head.meta, usize::from(head.len)))
    }

    /// Calls `read` with the oldest packet's `meta` and bytes, and takes the packet when
    /// `take`; `None` when none is queued.
    pub(crate) fn read<R>(&mut self, take: bool, read: impl FnOnce(M, &[u8]) -> R) -> Option<R> {
        let head = *self.heads.peek().ok()?;
        let (pad, len) = (usize::from(head.pad), usize::from(head.len));
        // The bytes were committed before their head was pushed, so the chunk is there; if
        // not (a broken invariant) the packet reads as empty, which the decoder conceals and
        // passthrough and the sender replace with silence.
        let read_out = match self.bytes.read_chunk(pad + len) {
            Ok(chunk) => {
                let (first, second) = chunk.as_slices();
                let packet = match pad {
                    0 => first.get(..len),
                    _ if first.len() == pad => second.get(..len),
                    _ => None,
                };
                let out = read(head.meta, packet.unwrap_or_default());
                if take {
                    chunk.commit_all();
                }
                out
            }
            Err(_) => read(head.meta, &[]),
        };
        if take {
            let _ = self.heads.pop();
        }
        Some(read_out)
    }

    /// Copies the oldest packet into `packet` without taking it; false when none is queued.
    pub(crate) fn peek_into(&mut self, packet: &mut OpusPacket) -> bool {
        self.read(false, |_, bytes| packet.set(bytes)).is_some()
    }

    /// Takes the oldest packet into `packet`; false when none is queued.
    pub(crate) fn pop_into(&mut self, packet: &mut OpusPacket) -> bool {
        self.read(true, |_, bytes| packet.set(bytes)).is_some()
    }

    /// Drops up to `count` of the oldest packets; returns how many.
    pub(crate) fn discard(&mut self, count: usize) -> usize {
        let mut dropped = 0;
        while dropped < count && self.read(true, |_, _| ()).is_some() {
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
        let (mut tx, mut rx) = packet_ring::<()>(3);
        let mut out = OpusPacket::EMPTY;
        // Sizes that do not divide the byte ring, so packets straddle its end.
        for round in 0..50_u8 {
            let len = 1 + (usize::from(round) * 97) % MAX_OPUS_PACKET;
            assert!(tx.push((), &packet(len, round)));
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
        let (mut tx, mut rx) = packet_ring::<()>(10);
        for n in 0..10 {
            assert!(tx.push((), &packet(240, n)), "a 96 kb/s packet {n} fits");
        }
        assert!(!tx.fits(240) && !tx.push((), &packet(240, 10)));
        assert_eq!(rx.discard(20), 10);
        // 2,400 bytes in: of 6,400, three largest packets fit before the end and a fourth
        // after a pad of 175, which leaves too little for a fifth.
        assert_eq!(tx.free_packets(), 4, "promised whatever the pads");
        for n in 0..4 {
            assert!(tx.push((), &packet(MAX_OPUS_PACKET, n)));
        }
        assert!(
            !tx.push((), &packet(MAX_OPUS_PACKET, 0)),
            "the bytes are full"
        );
        assert_eq!(tx.free_packets(), 0);
        assert_eq!(rx.len(), 4);
        let mut out = OpusPacket::EMPTY;
        assert!(rx.pop_into(&mut out));
        assert_eq!(out.bytes(), &packet(MAX_OPUS_PACKET, 0)[..]);
        assert!(
            tx.push((), &packet(MAX_OPUS_PACKET, 9)),
            "a popped packet frees its bytes"
        );
        assert!(
            !tx.push((), &packet(MAX_OPUS_PACKET + 1, 0)),
            "never more than one packet"
        );
    }

    #[test]
    fn every_packet_reads_as_one_slice_with_its_meta() {
        let (mut tx, mut rx) = packet_ring::<u64>(3);
        let capacity = 2 * MAX_OPUS_PACKET;
        let mut written = 0;
        let mut pads = 0;
        for round in 0..200_u64 {
            let len = (round as usize * 389) % (MAX_OPUS_PACKET + 1);
            let before = tx.bytes.slots();
            assert!(tx.push(round, &packet(len, round as u8)), "round {round}");
            let used = before - tx.bytes.slots();
            pads += usize::from(used > len);
            written += used;
            assert_eq!(tx.position, written % capacity);
            assert_eq!(rx.peek(), Some((round, len)));
            let read = rx.read(false, |meta, bytes| (meta, bytes.to_vec()));
            assert_eq!(
                read,
                Some((round, packet(len, round as u8))),
                "round {round}"
            );
            assert_eq!(rx.len(), 1, "reading without taking keeps it");
            assert_eq!(
                rx.read(true, |meta, bytes| (meta, bytes.len())),
                Some((round, len))
            );
            assert_eq!(rx.len(), 0);
            assert_eq!(
                tx.bytes.slots(),
                capacity,
                "a taken packet frees its pad too"
            );
        }
        assert!(pads > 10, "packets met the ring's end {pads} times");
        assert_eq!(rx.read(true, |_, _| ()), None);
    }

    #[test]
    fn a_packet_that_needs_a_pad_fits_only_with_room_for_both() {
        let (mut tx, mut rx) = packet_ring::<()>(3);
        // 2,550 bytes: fill to 100 before the end, then free the first 275.
        assert!(tx.push((), &packet(275, 1)));
        assert!(tx.push((), &packet(1_000, 2)));
        assert!(tx.push((), &packet(1_175, 3)));
        assert_eq!(tx.position, 2_450);
        assert_eq!(rx.discard(1), 1);
        // 375 bytes are free (100 at the end, 275 at the start): 100 fit at the end, a longer
        // packet only from the start, after a 100-byte pad.
        assert!(tx.fits(100) && tx.fits(275) && !tx.fits(276));
        assert_eq!(rx.discard(1), 1);
        assert!(tx.push((), &packet(1_175, 4)));
        assert_eq!(tx.position, 1_175);
        let mut out = OpusPacket::EMPTY;
        assert!(rx.pop_into(&mut out));
        assert_eq!(out.bytes(), &packet(1_175, 3)[..]);
        assert!(rx.pop_into(&mut out));
        assert_eq!(
            out.bytes(),
            &packet(1_175, 4)[..],
            "read from after the pad"
        );
    }
}
