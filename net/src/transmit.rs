//! How the sender thread puts a tick's datagrams on the wire: io_uring (all sends of a tick in one
//! submission; Linux only) or plain non-blocking sockets (on Linux `sendmmsg` for runs on one
//! socket, else — and on every other Unix — one `send` each). Both take the same batch and report one result per datagram.
//!
//! io_uring was chosen over tokio-uring: tokio-uring's timers are tokio's 1 ms wheel (every packet
//! ~1.5 ms late), and the pacing here comes from `clock_nanosleep` + spin anyway, so only the
//! batched submission is needed — the raw `io-uring` crate (0.6, the version tokio-uring pins)
//! does that without a runtime. The UDP stack costs ~1.3 µs per packet on these VMs, so batching
//! saves at most ~16 %; the benches in `benches/sender.rs` show the actual split.

// Sockets are driven through raw descriptors (`send`, `sendmmsg`, io_uring).
#[cfg(not(unix))]
compile_error!(
    "quaver-net needs a Unix (Linux, macOS or a BSD): its sender writes to raw socket descriptors"
);

use std::io;
use std::os::fd::RawFd;
use std::time::Instant;

/// Which transmit backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// io_uring when the kernel and sandbox allow it, else the portable path.
    #[default]
    Auto,
    /// io_uring or fail.
    IoUring,
    /// Plain non-blocking sockets.
    Portable,
}

/// The backend in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// io_uring, one submission per tick.
    IoUring,
    /// Non-blocking sockets with `sendmmsg`/`send`.
    Portable,
}

/// One datagram of a batch; the buffer must stay valid and unmoved until the batch is sent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Datagram {
    pub fd: RawFd,
    pub ptr: *const u8,
    pub len: u32,
}

pub(crate) enum Transmitter {
    #[cfg(target_os = "linux")]
    Uring(Box<UringTx>),
    Portable(PortableTx),
}

impl Transmitter {
    /// Builds the backend; allocation happens here, never in `send`.
    pub fn new(choice: BackendChoice, capacity: usize) -> io::Result<Self> {
        match choice {
            BackendChoice::Portable => Ok(Self::Portable(PortableTx::new(capacity))),
            #[cfg(target_os = "linux")]
            BackendChoice::IoUring => UringTx::new(capacity).map(|tx| Self::Uring(Box::new(tx))),
            #[cfg(target_os = "linux")]
            BackendChoice::Auto => Ok(UringTx::new(capacity)
                .map(|tx| Self::Uring(Box::new(tx)))
                .unwrap_or_else(|_| Self::Portable(PortableTx::new(capacity)))),
            #[cfg(not(target_os = "linux"))]
            BackendChoice::IoUring => Err(io::Error::from(io::ErrorKind::Unsupported)),
            #[cfg(not(target_os = "linux"))]
            BackendChoice::Auto => Ok(Self::Portable(PortableTx::new(capacity))),
        }
    }

    pub fn kind(&self) -> BackendKind {
        match self {
            #[cfg(target_os = "linux")]
            Self::Uring(_) => BackendKind::IoUring,
            Self::Portable(_) => BackendKind::Portable,
        }
    }

    /// Sends `batch`; `results[i]` becomes the bytes sent or `-errno`, `sent_at[i]` the instant
    /// the send of that datagram had returned (for io_uring: the enter call that ran it). Both slices are at least `batch.len()` long.
    pub fn send(&mut self, batch: &[Datagram], results: &mut [i32], sent_at: &mut [Instant]) {
        match self {
            #[cfg(target_os = "linux")]
            Self::Uring(tx) => tx.send(batch, results, sent_at),
            Self::Portable(tx) => tx.send(batch, results, sent_at),
        }
    }
}

#[cfg(target_os = "linux")]
pub(crate) struct UringTx {
    ring: io_uring::IoUring,
    chunk: usize,
    broken: bool,
    fallback: PortableTx,
}

#[cfg(target_os = "linux")]
impl UringTx {
    fn new(capacity: usize) -> io::Result<Self> {
        // Bounded so that 10,000 calls need a handful of submissions, not a huge ring.
        let entries = capacity.clamp(8, 4096).next_power_of_two() as u32;
        // No SQPOLL: its kernel thread burns half a core here and splits chains.
        let ring = io_uring::IoUring::new(entries)?;
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        if !probe.is_supported(io_uring::opcode::Send::CODE) {
            return Err(io::Error::from(io::ErrorKind::Unsupported));
        }
        Ok(Self {
            chunk: ring.params().sq_entries() as usize,
            ring,
            broken: false,
            fallback: PortableTx::new(capacity),
        })
    }

    fn send(&mut self, batch: &[Datagram], results: &mut [i32], sent_at: &mut [Instant]) {
        if self.broken {
            self.fallback.send(batch, results, sent_at);
            return;
        }
        let mut base = 0;
        for chunk in batch.chunks(self.chunk) {
            let slots = base..base + chunk.len();
            results[slots.clone()].fill(PENDING);
            {
                let mut sq = self.ring.submission();
                for (i, d) in chunk.iter().enumerate() {
                    let entry =
                        io_uring::opcode::Send::new(io_uring::types::Fd(d.fd), d.ptr, d.len)
                            .flags(libc::MSG_DONTWAIT)
                            .build()
                            .user_data((base + i) as u64);
                    // SAFETY: the buffer behind `d.ptr` lives in a boxed call that is neither
                    // moved nor freed before every completion of this chunk has been reaped below
                    // (or the ring is abandoned, see `broken`); the chunk never exceeds the SQ
                    // size and the SQ is empty here, so the push cannot fail.
                    let _ = unsafe { sq.push(&entry) };
                }
            }
            let mut reaped = 0;
            loop {
                let failure = match self.ring.submit_and_wait(chunk.len() - reaped) {
                    Ok(_) => None,
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => None,
                    Err(e) => Some(-e.raw_os_error().unwrap_or(libc::EIO)),
                };
                for cqe in self.ring.completion() {
                    if let Some(slot) = results.get_mut(cqe.user_data() as usize) {
                        *slot = cqe.result();
                    }
                    reaped += 1;
                }
                if reaped >= chunk.len() {
                    // The sends ran inside the enter call; they are all done by now.
                    sent_at[slots.clone()].fill(Instant::now());
                    break;
                }
                if let Some(errno) = failure {
                    // The kernel refused to take or run the batch. Entries may still sit in the
                    // SQ pointing at buffers that can be freed later, so this ring is never
                    // entered again: the thread continues on plain sockets.
                    for r in &mut results[slots.clone()] {
                        if *r == PENDING {
                            *r = errno;
                        }
                    }
                    self.broken = true;
                    sent_at[slots].fill(Instant::now());
                    return;
                }
            }
            base += chunk.len();
        }
    }
}

/// Marks a datagram whose completion has not arrived yet.
#[cfg(target_os = "linux")]
const PENDING: i32 = i32::MIN;

/// Plain non-blocking sockets. On Linux, runs of datagrams on one socket go out in one
/// `sendmmsg`; elsewhere (macOS, the BSDs: no `sendmmsg` with Linux's semantics) every datagram is
/// one `send`. Both modes report results and send instants the same way, so the sender cannot
/// tell them apart.
pub(crate) struct PortableTx {
    #[cfg(target_os = "linux")]
    batched: bool,
    #[cfg(target_os = "linux")]
    iovecs: Vec<libc::iovec>,
    #[cfg(target_os = "linux")]
    msgs: Vec<libc::mmsghdr>,
}

impl PortableTx {
    fn new(capacity: usize) -> Self {
        #[cfg(target_os = "linux")]
        {
            let capacity = capacity.max(1);
            Self {
                batched: true,
                iovecs: vec![
                    libc::iovec {
                        iov_base: std::ptr::null_mut(),
                        iov_len: 0
                    };
                    capacity
                ],
                // SAFETY: mmsghdr is plain C data for which all-zero bytes are a valid value
                // (null pointers, zero lengths).
                msgs: vec![unsafe { std::mem::zeroed() }; capacity],
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = capacity;
            Self {}
        }
    }

    /// The mode other Unixes run, so Linux tests can exercise it.
    #[cfg(all(test, target_os = "linux"))]
    fn per_datagram() -> Self {
        Self {
            batched: false,
            iovecs: Vec::new(),
            msgs: Vec::new(),
        }
    }

    fn send(&mut self, batch: &[Datagram], results: &mut [i32], sent_at: &mut [Instant]) {
        #[cfg(target_os = "linux")]
        if self.batched {
            self.send_batched(batch, results, sent_at);
            return;
        }
        send_each(batch, results, sent_at);
    }

    #[cfg(target_os = "linux")]
    fn send_batched(&mut self, batch: &[Datagram], results: &mut [i32], sent_at: &mut [Instant]) {
        let mut start = 0;
        while start < batch.len() {
            let fd = batch[start].fd;
            let end = batch[start..]
                .iter()
                .position(|d| d.fd != fd)
                .map_or(batch.len(), |p| start + p);
            let mut i = start;
            while i < end {
                if end - i == 1 {
                    send_each(&batch[i..=i], &mut results[i..=i], &mut sent_at[i..=i]);
                    i += 1;
                    continue;
                }
                let n = end - i;
                for k in 0..n {
                    self.iovecs[k] = libc::iovec {
                        iov_base: batch[i + k].ptr as *mut libc::c_void,
                        iov_len: batch[i + k].len as usize,
                    };
                    let hdr = &mut self.msgs[k].msg_hdr;
                    hdr.msg_name = std::ptr::null_mut();
                    hdr.msg_namelen = 0;
                    hdr.msg_iov = &mut self.iovecs[k];
                    hdr.msg_iovlen = 1;
                    hdr.msg_control = std::ptr::null_mut();
                    hdr.msg_controllen = 0;
                    hdr.msg_flags = 0;
                }
                // SAFETY: `msgs[..n]` point at `iovecs[..n]`, which point at live buffers; both
                // vectors outlive the call and are not touched during it.
                let rc = unsafe {
                    libc::sendmmsg(
                        fd,
                        self.msgs.as_mut_ptr(),
                        n as libc::c_uint,
                        libc::MSG_DONTWAIT,
                    )
                };
                let done = Instant::now();
                if rc <= 0 {
                    results[i] = -errno();
                    sent_at[i] = done;
                    i += 1;
                } else {
                    for k in 0..rc as usize {
                        results[i + k] = self.msgs[k].msg_len as i32;
                        sent_at[i + k] = done;
                    }
                    i += rc as usize;
                }
            }
            start = end;
        }
    }
}

/// One non-blocking `send` per datagram: the path of every Unix without `sendmmsg`, and of
/// lone datagrams on Linux.
fn send_each(batch: &[Datagram], results: &mut [i32], sent_at: &mut [Instant]) {
    for ((d, result), at) in batch.iter().zip(results.iter_mut()).zip(sent_at.iter_mut()) {
        // SAFETY: `ptr`/`len` describe a live buffer (see `Datagram`); MSG_DONTWAIT keeps the
        // call non-blocking whatever the socket's own mode.
        let rc = unsafe { libc::send(d.fd, d.ptr.cast(), d.len as usize, libc::MSG_DONTWAIT) };
        *result = if rc < 0 { -errno() } else { rc as i32 };
        *at = Instant::now();
    }
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    use super::*;

    fn datagram(socket: &UdpSocket, payload: &[u8]) -> Datagram {
        Datagram {
            fd: socket.as_raw_fd(),
            ptr: payload.as_ptr(),
            len: payload.len() as u32,
        }
    }

    /// Sends a batch mixing two sockets and one bad descriptor, and checks the contract every
    /// mode keeps: one result per datagram (bytes sent or `-errno`), one send instant per
    /// datagram, every good datagram delivered in order.
    fn check_contract(mut tx: PortableTx) {
        let sink_a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let sink_b = UdpSocket::bind("127.0.0.1:0").unwrap();
        for sink in [&sink_a, &sink_b] {
            sink.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        }
        let to_a = UdpSocket::bind("127.0.0.1:0").unwrap();
        to_a.connect(sink_a.local_addr().unwrap()).unwrap();
        let to_b = UdpSocket::bind("127.0.0.1:0").unwrap();
        to_b.connect(sink_b.local_addr().unwrap()).unwrap();

        let payloads: [&[u8]; 5] = [b"a1", b"a2-longer", b"b1", b"bad", b"a3"];
        let mut batch = [
            datagram(&to_a, payloads[0]),
            datagram(&to_a, payloads[1]),
            datagram(&to_b, payloads[2]),
            datagram(&to_b, payloads[3]),
            datagram(&to_a, payloads[4]),
        ];
        batch[3].fd = -1;
        let before = Instant::now();
        let mut results = [i32::MIN; 5];
        let mut sent_at = [before; 5];
        tx.send(&batch, &mut results, &mut sent_at);

        let lens: Vec<i32> = payloads.iter().map(|p| p.len() as i32).collect();
        assert_eq!(
            results,
            [lens[0], lens[1], lens[2], -libc::EBADF, lens[4]],
            "one result per datagram"
        );
        assert!(
            sent_at.iter().all(|at| *at > before),
            "every send instant set"
        );
        assert!(
            sent_at.windows(2).all(|w| w[0] <= w[1]),
            "instants in order"
        );

        let mut buf = [0_u8; 64];
        for expected in [payloads[0], payloads[1], payloads[4]] {
            let n = sink_a.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], expected);
        }
        let n = sink_b.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], payloads[2]);
    }

    #[test]
    fn per_datagram_sends_keep_the_batch_contract() {
        #[cfg(target_os = "linux")]
        check_contract(PortableTx::per_datagram());
        #[cfg(not(target_os = "linux"))]
        check_contract(PortableTx::new(8));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn sendmmsg_sends_keep_the_batch_contract() {
        check_contract(PortableTx::new(8));
    }
}
