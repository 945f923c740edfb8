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
//! from the ring. A ring can also *keep* its last few taken packets readable (an Opus source
//! keeps two, to bring a decoder up to date when it leaves passthrough; see
//! [`crate::source`]): their room is given back only as newer packets are taken. Both rings
//! are allocated up front; nothing allocates after.

use crate::frame::MAX_OPUS_PACKET;
use crate::writer::OpusPacket;

/// Bytes per packet of ring the packet count is given: the average of a 256 kb/s stream.
/// Streams above it fill the bytes before the count (the writer sees a full ring sooner;
/// nothing is lost).
pub(crate) const BYTES_PER_PACKET: usize = 640;

/// A ring for `packets` packets of [`BYTES_PER_PACKET`] bytes on average, each carrying a `M`
/// beside its bytes, that keeps its last `KEEP` taken packets. Those count against the bytes
/// (a source's 200 ms hold ten packets averaging 533 bytes beside the two it keeps), not
/// against the packets. It has room for `KEEP` of the largest packets and two more: with the
/// kept ones at their largest, an empty ring still takes the largest packet after the largest
/// pad (else a writer could wait for room that only a packet it cannot write would free).
pub(crate) fn packet_ring<M: Copy, const KEEP: usize>(
    packets: usize,
) -> (PacketProducer<M>, PacketConsumer<M, KEEP>) {
    let packets = packets.max(2);
    let bytes = (packets * BYTES_PER_PACKET).max((KEEP + 2) * MAX_OPUS_PACKET);
    let (heads_tx, heads_rx) = rtrb::RingBuffer::new(packets + KEEP);
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
            kept: 0,
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

impl<M> Head<M> {
    /// Bytes the packet takes in the byte ring, its pad included.
    fn size(&self) -> usize {
        usize::from(self.pad) + usize::from(self.len)
    }
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

/// The reader's end (the mixer's, or the sender's), keeping the last `KEEP` packets it took.
/// Never allocates.
pub(crate) struct PacketConsumer<M = (), const KEEP: usize = 0> {
    heads: rtrb::Consumer<Head<M>>,
    bytes: rtrb::Consumer<u8>,
    /// Packets taken but kept (at most `KEEP`): the oldest ones in both rings.
    kept: usize,
}

impl<M: Copy> PacketConsumer<M, 0> {
    /// The oldest packet's `meta` and length, without taking it.
    pub(crate) fn peek(&self) -> Option<(M, usize)> {
        let head = self.heads.peek().ok()?;
        Some((head.meta, usize::from(head.len)))
    }
}

impl<M: Copy, const KEEP: usize> PacketConsumer<M, KEEP> {
    /// Packets queued (the kept ones are not).
    pub(crate) fn len(&self) -> usize {
        self.heads.slots() - self.kept
    }

    /// The head at `index` in the ring (the kept packets come first) and the bytes before its
    /// packet's pad.
    fn head(&mut self, index: usize) -> Option<(Head<M>, usize)> {
        let chunk = self.heads.read_chunk(index + 1).ok()?;
        let (first, second) = chunk.as_slices();
        let head = *first.iter().chain(second).nth(index)?;
        // At most `KEEP` heads come before it.
        let before = first.iter().chain(second).take(index).map(Head::size).sum();
        Some((head, before))
    }

    /// Calls `read` with the bytes of the packet of `head` found `before` bytes into the ring
    /// (empty if they are not there, a broken invariant: the bytes are committed before their
    /// head is pushed; the decoder conceals an empty packet, passthrough and the sender send
    /// silence).
    fn with_bytes<R>(&mut self, head: Head<M>, before: usize, read: impl FnOnce(&[u8]) -> R) -> R {
        let start = before + usize::from(head.pad);
        let end = start + usize::from(head.len);
        let Ok(chunk) = self.bytes.read_chunk(end) else {
            return read(&[]);
        };
        let (first, second) = chunk.as_slices();
        // The producer never lets a packet straddle the ring's end: it is whole in one slice.
        let packet = if end <= first.len() {
            first.get(start..end)
        } else if start >= first.len() {
            second.get(start - first.len()..end - first.len())
        } else {
            None
        };
        read(packet.unwrap_or_default())
    }

    /// Calls `read` with the oldest queued packet's `meta` and bytes, and takes the packet when
    /// `take`; `None` when none is queued.
    pub(crate) fn read<R>(&mut self, take: bool, read: impl FnOnce(M, &[u8]) -> R) -> Option<R> {
        let (head, before) = self.head(self.kept)?;
        let out = self.with_bytes(head, before, |bytes| read(head.meta, bytes));
        if take {
            self.kept += 1;
            if self.kept > KEEP {
                self.release_oldest();
            }
        }
        Some(out)
    }

    /// Gives the oldest kept packet's room back to the producer.
    fn release_oldest(&mut self) {
        let Ok(head) = self.heads.pop() else {
            return;
        };
        if let Ok(chunk) = self.bytes.read_chunk(head.size()) {
            chunk.commit_all();
        }
        self.kept -= 1;
    }

    /// Calls `read` with the bytes of a kept packet, `age` packets older than the last one
    /// taken (0: the last); `None` when fewer are kept.
    pub(crate) fn kept<R>(&mut self, age: usize, read: impl FnOnce(&[u8]) -> R) -> Option<R> {
        let index = self.kept.checked_sub(age + 1)?;
        let (head, before) = self.head(index)?;
        Some(self.with_bytes(head, before, read))
    }

    /// Copies the oldest packet into `packet` without taking it; false when none is queued.
    pub(crate) fn peek_into(&mut self, packet: &mut OpusPacket) -> bool {
        self.read(false, |_, bytes| packet.set(bytes)).is_some()
    }

    /// Takes the oldest packet into `packet`; false when none is queued.
    pub(crate) fn pop_into(&mut self, packet: &mut OpusPacket) -> bool {
        self.read(true, |_, bytes| packet.set(bytes)).is_some()
    }

    /// Takes up to `count` of the oldest packets; returns how many.
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
        let (mut tx, mut rx) = packet_ring::<(), 0>(3);
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
        let (mut tx, mut rx) = packet_ring::<(), 0>(10);
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
        let (mut tx, mut rx) = packet_ring::<u64, 0>(3);
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
        let (mut tx, mut rx) = packet_ring::<(), 0>(3);
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

    #[test]
    fn kept_packets_stay_readable_and_hold_their_room_until_newer_ones_are_taken() {
        let (mut tx, mut rx) = packet_ring::<(), 2>(3);
        let capacity = 4 * MAX_OPUS_PACKET;
        for n in 1..=5_u8 {
            assert!(tx.push((), &packet(usize::from(n) * 100, n)));
        }
        assert_eq!(rx.len(), 5, "room for three packets and the two kept");
        assert!(!tx.push((), &packet(1, 0)), "no head left");
        assert_eq!(rx.kept(0, <[u8]>::to_vec), None, "nothing taken yet");
        assert_eq!(rx.discard(2), 2);
        assert_eq!(rx.len(), 3);
        assert_eq!(rx.kept(0, <[u8]>::to_vec), Some(packet(200, 2)));
        assert_eq!(rx.kept(1, <[u8]>::to_vec), Some(packet(100, 1)));
        assert_eq!(rx.kept(2, <[u8]>::to_vec), None);
        assert_eq!(
            tx.bytes.slots(),
            capacity - 1_500,
            "kept packets keep their room"
        );
        assert!(!tx.push((), &packet(1, 0)), "nor their heads");
        let mut out = OpusPacket::EMPTY;
        assert!(rx.pop_into(&mut out));
        assert_eq!(out.bytes(), &packet(300, 3)[..]);
        assert_eq!(rx.kept(0, <[u8]>::to_vec), Some(packet(300, 3)));
        assert_eq!(rx.kept(1, <[u8]>::to_vec), Some(packet(200, 2)));
        assert_eq!(
            tx.bytes.slots(),
            capacity - 1_400,
            "the oldest kept one left"
        );
        // Around the ring's end, pads and all: the kept packets read back whole.
        for round in 6..100_usize {
            let len = 1 + (round * 389) % MAX_OPUS_PACKET;
            while !tx.push((), &packet(len, round as u8)) {
                // Room always comes back from packets that can be taken.
                assert_eq!(rx.discard(1), 1, "round {round}");
            }
            while rx.len() > 0 {
                let expect_older = rx.kept(0, <[u8]>::to_vec);
                let taken = rx.read(true, |_, bytes| bytes.to_vec()).unwrap();
                assert_eq!(rx.kept(0, <[u8]>::to_vec), Some(taken));
                assert_eq!(rx.kept(1, <[u8]>::to_vec), expect_older);
            }
        }
    }
}
