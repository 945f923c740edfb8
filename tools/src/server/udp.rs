//! The UDP voice server: IP discovery, decryption, RTP checks and measurements, Opus decode,
//! recording, and forwarding to the other participants of a call. One thread.

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use audiopus::coder::Decoder;
use audiopus::packet::Packet;
use audiopus::{Channels, MutSignals, SampleRate};
use quaver_net::discovery;
use quaver_net::receive::{self, PacketKind, ReceiveError};
use quaver_net::rtp::{self, RtpHeader};

use super::stats::{Arrival, StreamMeter};
use super::wav::WavWriter;
use super::{CallKey, Registry, Shared, StreamRecord};

/// How often the thread wakes up without traffic (stop flag, session expiry).
const POLL: Duration = Duration::from_millis(20);
/// Housekeeping period: expire sessions, sync WAV headers, release decoders.
const HOUSEKEEPING: Duration = Duration::from_millis(200);
/// Lost packets concealed in a recording before a gap is just skipped.
const MAX_CONCEALED: u16 = 5;
/// 120 ms of stereo at 48 kHz: the largest Opus frame.
const MAX_PCM: usize = 5760 * 2;

/// Receive options: kernel timestamps, a big buffer, a short timeout.
pub(crate) fn configure(sock: &UdpSocket) -> std::io::Result<()> {
    let fd = sock.as_raw_fd();
    let one: libc::c_int = 1;
    // SAFETY: fd is a valid socket owned by `sock`; the option value is a c_int of the given size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        // Without kernel timestamps the thread falls back to reading the clock on receipt.
        tracing::warn!(error = %std::io::Error::last_os_error(), "SO_TIMESTAMPNS unavailable");
    }
    count_kernel_drops(sock);
    // A tick of 1,000 calls arrives as one burst of 1,000 datagrams: the buffer must hold
    // several bursts while this one thread catches up. SO_RCVBUFFORCE (root) goes past
    // net.core.rmem_max; SO_RCVBUF is the unprivileged fallback.
    let size: libc::c_int = 32 << 20;
    for option in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: as above; failure only leaves a smaller buffer.
        let set = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if set == 0 {
            break;
        }
    }
    sock.set_read_timeout(Some(POLL))
}

/// Asks the kernel to attach its count of datagrams dropped at this socket (receive buffer
/// full) to every datagram received: when this one thread cannot keep up (1,000 streams to
/// decode on 2 cores), the loss happens in the kernel and would otherwise go unseen.
pub(crate) fn count_kernel_drops(sock: &UdpSocket) {
    let one: libc::c_int = 1;
    // SAFETY: fd is a valid socket owned by `sock`; the option value is a c_int of the given size.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RXQ_OVFL,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "SO_RXQ_OVFL unavailable: kernel drops go uncounted");
    }
}

fn realtime_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

struct Datagram {
    len: usize,
    from: SocketAddr,
    /// CLOCK_REALTIME ns (the clock SO_TIMESTAMPNS uses).
    at_ns: i64,
    kernel: bool,
    truncated: bool,
    /// The socket's running count of datagrams the kernel dropped (SO_RXQ_OVFL), if attached.
    kernel_drops: Option<u32>,
}

/// `recvmsg` with the SO_TIMESTAMPNS control message; `wait: false` returns `WouldBlock` at
/// once when nothing is queued.
fn recv(sock: &UdpSocket, buf: &mut [u8], wait: bool) -> std::io::Result<Datagram> {
    // SAFETY: all-zero is a valid sockaddr_storage / msghdr.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 16];
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut addr as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    let flags = if wait { 0 } else { libc::MSG_DONTWAIT };
    // SAFETY: msg points at live buffers of the stated sizes for the duration of the call.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, flags) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut at = None;
    let mut kernel_drops = None;
    // SAFETY: the kernel filled msg_control up to msg_controllen; the CMSG macros walk within it.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                at = Some(ts.tv_sec * 1_000_000_000 + ts.tv_nsec);
            }
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SO_RXQ_OVFL {
                kernel_drops = Some(std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<u32>()));
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    let from = sockaddr(&addr).ok_or_else(|| std::io::Error::other("unknown address family"))?;
    Ok(Datagram {
        len: n as usize,
        from,
        at_ns: at.unwrap_or_else(realtime_ns),
        kernel: at.is_some(),
        truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
        kernel_drops,
    })
}

fn sockaddr(a: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(a.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let v4: &libc::sockaddr_in = unsafe { &*(a as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                u32::from_be(v4.sin_addr.s_addr).into(),
                u16::from_be(v4.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let v6: &libc::sockaddr_in6 = unsafe { &*(a as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                v6.sin6_addr.s6_addr.into(),
                u16::from_be(v6.sin6_port),
                v6.sin6_flowinfo,
                v6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Per-SSRC state that only this thread touches.
struct Local {
    decoder: Option<Decoder>,
    wav: Option<WavWriter>,
}

struct Udp<'a> {
    shared: &'a Shared,
    locals: HashMap<u32, Local>,
    pcm: Vec<i16>,
    open: Vec<u8>,
    fwd: Vec<u8>,
    /// The last SO_RXQ_OVFL count seen.
    kernel_drops_seen: u32,
}

/// The thread body.
pub(crate) fn run(shared: std::sync::Arc<Shared>) {
    // Ahead of ordinary threads where the process may raise itself (nice -15; CAP_SYS_NICE):
    // the server shares its machine with what it measures, and a 1,000-call soak beside two
    // compilers lost 50 packets a stream at this socket when the thread went unscheduled for a
    // second (the kernel counted them). Not SCHED_FIFO: decoding every stream, the thread
    // would push the real-time threads' total past the kernel's 95 % budget, and throttling
    // would stall the engine's mixers with it. Timing is unaffected either way: lateness comes
    // from kernel receive timestamps.
    #[cfg(target_os = "linux")]
    // SAFETY: gettid has no preconditions; setpriority on this thread only changes its nice
    // value, and failure leaves it as it was.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, -15);
    }
    let mut u = Udp {
        shared: &shared,
        locals: HashMap::new(),
        pcm: vec![0; MAX_PCM],
        open: vec![0; 2048],
        fwd: vec![0; 2048],
        kernel_drops_seen: 0,
    };
    let mut buf = vec![0u8; 2048];
    let mut last_housekeeping = Instant::now();
    let read_interval = shared.config.udp_read_interval.filter(|i| !i.is_zero());
    while !shared.stopped() {
        match recv(&shared.udp, &mut buf, read_interval.is_none()) {
            Ok(d) => u.on_datagram(&buf[..d.len], &d),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                // Drained: nobody waits on the socket until the next slice (see
                // `ServerConfig::udp_read_interval`). Blocking reads time out here instead.
                if let Some(interval) = read_interval {
                    std::thread::sleep(interval);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::TimedOut | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                // ICMP errors from earlier sends (a receiver went away) surface here; keep going.
                tracing::debug!(error = %e, "udp receive error");
            }
        }
        if last_housekeeping.elapsed() >= HOUSEKEEPING {
            last_housekeeping = Instant::now();
            u.housekeeping();
        }
    }
    for (_, mut l) in u.locals.drain() {
        if let Some(w) = l.wav.as_mut() {
            let _ = w.finish();
        }
    }
}

impl Udp<'_> {
    fn on_datagram(&mut self, pkt: &[u8], d: &Datagram) {
        let shared = self.shared;
        if let Some(total) = d.kernel_drops {
            // A running count per socket (it wraps at 2³²): only the growth is news.
            let new = total.wrapping_sub(self.kernel_drops_seen);
            if new > 0 {
                self.kernel_drops_seen = total;
                let mut reg = shared.lock();
                reg.counters.kernel_drops += u64::from(new);
                let dropped = reg.counters.kernel_drops;
                drop(reg);
                if dropped == u64::from(new) {
                    tracing::warn!(
                        dropped,
                        "the kernel is dropping datagrams at the UDP socket: this server cannot \
                         keep up (try --no-decode)"
                    );
                }
            }
        }
        if d.truncated {
            shared.lock().counters.garbage_datagrams += 1;
            return;
        }
        if pkt.len() == discovery::PACKET_LEN && pkt[..4] == [0, 1, 0, 70] {
            let ssrc = u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]);
            let mut reg = shared.lock();
            match reg.session_by_ssrc(ssrc) {
                Some(s) => {
                    s.udp_peer = Some(d.from);
                    reg.counters.discovery_requests += 1;
                    drop(reg);
                    let _ = shared
                        .udp
                        .send_to(&discovery::encode_response(ssrc, d.from), d.from);
                }
                None => reg.counters.unknown_ssrc += 1,
            }
            return;
        }
        match receive::classify(pkt) {
            PacketKind::Rtp => self.on_rtp(pkt, d),
            PacketKind::Rtcp => shared.lock().counters.rtcp += 1,
            PacketKind::Unknown => {
                let mut reg = shared.lock();
                // discord.js sends 8 bytes (u32 LE counter + 4 zeros), songbird 4 (the SSRC).
                if pkt.len() == 8 || pkt.len() == 4 {
                    reg.counters.keepalives += 1;
                } else {
                    reg.counters.garbage_datagrams += 1;
                }
            }
        }
    }

    fn on_rtp(&mut self, pkt: &[u8], d: &Datagram) {
        let shared = self.shared;
        let config = &shared.config;
        let mut reg = shared.lock();
        if d.kernel {
            reg.counters.kernel_timestamps += 1;
        }
        let Ok(header) = RtpHeader::parse(pkt) else {
            reg.counters.malformed_rtp += 1;
            return;
        };
        let Some(session) = reg.session_by_ssrc(header.ssrc) else {
            reg.counters.unknown_ssrc += 1;
            return;
        };
        let Some(cipher) = session.cipher.as_ref() else {
            reg.counters.unknown_ssrc += 1;
            return;
        };
        let opened = match receive::open_rtp(cipher, pkt, &mut self.open) {
            Ok(r) => r,
            Err(ReceiveError::Crypto(_)) => {
                reg.counters.auth_failures += 1;
                return;
            }
            Err(_) => {
                reg.counters.malformed_rtp += 1;
                return;
            }
        };
        // Like Discord, the address a valid packet comes from is where this user receives.
        session.udp_peer = Some(d.from);
        let (call, user, ssrc) = (session.key(), session.user_id, session.ssrc);
        let announcement = session.speaking_announcement();
        let dave = session.dave_version > 0;
        let (seq, ts, marker) = (opened.sequence, opened.timestamp, opened.marker);
        let payload_len = opened.payload.len();
        // `payload` is a sub-slice of `self.open` (open_rtp decrypts into it), so this offset
        // cannot underflow; it lets the borrow of `self.open` end here.
        let payload_at = opened.payload.as_ptr() as usize - self.open.as_ptr() as usize;
        let (guild, channel) = (call.guild_id, call.channel_id);
        let record = reg.streams.entry(ssrc).or_insert_with(|| StreamRecord {
            guild_id: guild,
            channel_id: channel,
            user_id: user,
            meter: StreamMeter::new(),
            decodes: config.decodes(),
            decode_errors: 0,
            decoded_samples: 0,
            recording: config.record_dir.as_ref().map(|dir| {
                dir.join(format!(
                    "guild{guild}-channel{channel}-user{user}-ssrc{ssrc}.wav"
                ))
            }),
            decoded: Vec::new(),
            dave_frames: 0,
            dave_undecryptable: 0,
            dave_seen: 0,
        });
        let arrival = record.meter.on_packet(seq, ts, payload_len, d.at_ns);
        let recording = record.recording.clone();
        let open_dave = dave && arrival != Arrival::Duplicate && record.opens_dave_frame();
        if config.forward && arrival != Arrival::Duplicate {
            let payload = &self.open[payload_at..payload_at + payload_len];
            forward(
                &mut reg,
                shared,
                &mut self.fwd,
                call,
                announcement,
                seq,
                ts,
                marker,
                payload,
            );
        }
        drop(reg);
        let mut payload = None;
        if open_dave {
            // E2EE frames are opened with the server's own group member before decoding
            // (the DAVE decryptor would refuse a duplicate's nonce, so those are skipped).
            let frame = &self.open[payload_at..payload_at + payload_len];
            let (decrypted, failed) = match super::dave::open(shared, guild, channel, user, frame) {
                super::dave::Opened::Plain => (0, 0),
                super::dave::Opened::Decrypted(plain) => {
                    payload = Some(plain);
                    (1, 0)
                }
                super::dave::Opened::Undecryptable => (0, 1),
            };
            if decrypted + failed > 0 {
                let mut reg = shared.lock();
                if let Some(r) = reg.streams.get_mut(&ssrc) {
                    r.dave_frames += decrypted;
                    r.dave_undecryptable += failed;
                }
                if failed > 0 {
                    return;
                }
            }
        }
        if let Arrival::InOrder { gap } = arrival
            && config.decodes()
        {
            let payload =
                payload.unwrap_or_else(|| self.open[payload_at..payload_at + payload_len].to_vec());
            self.decode(ssrc, gap, &payload, recording);
        }
    }

    /// Decodes one in-order packet (concealing a short gap first) into the stream's outputs.
    fn decode(&mut self, ssrc: u32, gap: u16, payload: &[u8], recording: Option<PathBuf>) {
        let shared = self.shared;
        let local = self.locals.entry(ssrc).or_insert_with(|| Local {
            decoder: Decoder::new(SampleRate::Hz48000, Channels::Stereo)
                .map_err(|e| tracing::warn!(error = %e, "no opus decoder"))
                .ok(),
            wav: recording.and_then(|p| {
                WavWriter::create(&p)
                    .map_err(|e| tracing::warn!(path = %p.display(), error = %e, "cannot record"))
                    .ok()
            }),
        });
        let Some(decoder) = local.decoder.as_mut() else {
            return;
        };
        let mut decoded = 0u64;
        let mut errors = 0u64;
        let mut out: Vec<i16> = Vec::new();
        let keep = shared.config.keep_decoded_audio;
        for _ in 0..gap.min(MAX_CONCEALED) {
            // Concealment: 20 ms per lost packet, so the recording keeps its timeline.
            let Ok(signals) = MutSignals::try_from(&mut self.pcm[..960 * 2]) else {
                break;
            };
            if let Ok(n) = decoder.decode(None, signals, false) {
                decoded += n as u64;
                if let Some(w) = local.wav.as_mut() {
                    let _ = w.write(&self.pcm[..n * 2]);
                }
                if keep {
                    out.extend_from_slice(&self.pcm[..n * 2]);
                }
            }
        }
        let result = Packet::try_from(payload).map_err(|_| ()).and_then(|p| {
            let signals = MutSignals::try_from(&mut self.pcm[..]).map_err(|_| ())?;
            decoder.decode(Some(p), signals, false).map_err(|_| ())
        });
        match result {
            Ok(n) => {
                decoded += n as u64;
                if let Some(w) = local.wav.as_mut() {
                    let _ = w.write(&self.pcm[..n * 2]);
                }
                if keep {
                    out.extend_from_slice(&self.pcm[..n * 2]);
                }
            }
            Err(()) => errors += 1,
        }
        let mut reg = shared.lock();
        if let Some(r) = reg.streams.get_mut(&ssrc) {
            r.decoded_samples += decoded;
            r.decode_errors += errors;
            r.decoded.extend_from_slice(&out);
        }
    }

    fn housekeeping(&mut self) {
        let shared = self.shared;
        super::dave::tick(shared, Instant::now());
        let mut reg = shared.lock();
        let window = shared.config.resume_window;
        let expired: Vec<u64> = reg
            .sessions
            .iter()
            .filter(|(_, s)| s.detached_at.is_some_and(|t| t.elapsed() >= window))
            .map(|(k, _)| *k)
            .collect();
        for id in expired {
            tracing::info!(session = id, "voice session expired without a resume");
            reg.end_session(id, shared);
        }
        let live: Vec<u32> = self
            .locals
            .keys()
            .copied()
            .filter(|ssrc| reg.by_ssrc.contains_key(ssrc))
            .collect();
        drop(reg);
        self.locals.retain(|ssrc, l| {
            let keep = live.contains(ssrc);
            if let Some(w) = l.wav.as_mut() {
                let _ = if keep { w.sync() } else { w.finish() };
            }
            keep
        });
    }
}

/// Re-seals a sender's packet for every other participant of its call and sends it, with the
/// configured loss / reorder / duplication applied. A receiver whose websocket has not yet
/// written an op 5 for this SSRC gets it first (`announcement`, queued now if it was never
/// queued) and the packet is held until then, so no client sees an SSRC it cannot map.
#[allow(clippy::too_many_arguments)]
fn forward(
    reg: &mut Registry,
    shared: &Shared,
    buf: &mut [u8],
    call: CallKey,
    announcement: quaver_gateway::protocol::Speaking,
    seq: u16,
    ts: u32,
    marker: bool,
    payload: &[u8],
) {
    let ssrc = announcement.ssrc;
    let faults = &shared.config.faults;
    let cap = shared.config.replay_buffer;
    let chance = |pct: f64| pct > 0.0 && rand::random::<f64>() * 100.0 < pct;
    let mut counters = reg.counters;
    let Registry {
        sessions, by_call, ..
    } = reg;
    let Some(members) = by_call.get(&call) else {
        return;
    };
    for key in members {
        let Some(s) = sessions.get_mut(key) else {
            continue;
        };
        if s.ssrc == ssrc {
            continue;
        }
        // Like Discord's SFU: E2EE frames are not sent to a receiver without DAVE.
        if s.dave_version == 0 && super::dave::is_protocol_frame(payload) {
            continue;
        }
        let (Some(peer), Some(sealer)) = (s.udp_peer, s.sealer.as_mut()) else {
            continue;
        };
        if rtp::write_header(buf, seq, ts, ssrc).is_err() {
            continue;
        }
        if marker {
            buf[1] |= 0x80;
        }
        let end = rtp::HEADER_LEN + payload.len();
        let Some(body) = buf.get_mut(rtp::HEADER_LEN..end) else {
            continue;
        };
        body.copy_from_slice(payload);
        let Ok(n) = sealer.seal(buf, rtp::HEADER_LEN, payload.len()) else {
            continue;
        };
        if !s.mapped.contains(&ssrc) {
            if !s.announced.contains(&ssrc) {
                s.tell_speaking(announcement, cap);
            }
            s.hold(ssrc, buf[..n].to_vec());
            continue;
        }
        if chance(faults.udp_loss_pct) {
            counters.injected_udp_loss += 1;
            continue;
        }
        if s.held.is_none() && chance(faults.udp_reorder_pct) {
            counters.injected_udp_reorders += 1;
            s.held = Some(buf[..n].to_vec());
            continue;
        }
        let mut send = |b: &[u8]| {
            if shared.udp.send_to(b, peer).is_ok() {
                counters.forwarded += 1;
            }
        };
        send(&buf[..n]);
        if chance(faults.udp_duplicate_pct) {
            counters.injected_udp_duplicates += 1;
            send(&buf[..n]);
        }
        if let Some(held) = s.held.take() {
            send(&held);
        }
    }
    reg.counters = counters;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_the_kernel_dropped_are_reported_with_the_next_one() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        count_kernel_drops(&rx);
        // The smallest receive buffer the kernel allows, filled while nobody reads: the
        // kernel drops the overflow and says how many with the next datagram received.
        let small: libc::c_int = 1;
        // SAFETY: fd is a valid socket; the value is a c_int of the given size.
        let r = unsafe {
            libc::setsockopt(
                rx.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&small as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0);
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..200 {
            tx.send_to(&[0u8; 200], rx.local_addr().unwrap()).unwrap();
        }
        // What was queued before the drops carries no count; drain it.
        let mut buf = [0u8; 2048];
        rx.set_nonblocking(true).unwrap();
        let mut queued = 0;
        while let Ok(d) = recv(&rx, &mut buf, true) {
            assert_eq!(d.len, 200);
            queued += 1;
        }
        assert!(queued > 0 && queued < 200, "{queued}");
        rx.set_nonblocking(false).unwrap();
        // The next datagram brings the socket's drop count.
        tx.send_to(&[0u8; 200], rx.local_addr().unwrap()).unwrap();
        let d = recv(&rx, &mut buf, true).unwrap();
        let dropped = d.kernel_drops.expect("SO_RXQ_OVFL attaches the count");
        assert_eq!(
            dropped,
            200 - queued,
            "every datagram was either queued or dropped"
        );
    }
}
