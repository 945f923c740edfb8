//! Reading a socket's queued datagrams in batches: `recvmmsg` on Linux (one system call for up
//! to [`BATCH`] datagrams), one non-blocking `recv` per datagram elsewhere.

use std::io;
use std::net::UdpSocket;

use super::MAX_DATAGRAM;

/// Datagrams read per system call.
pub(super) const BATCH: usize = 32;

/// Preallocated buffers for one batch.
pub(super) struct RecvBatch {
    bufs: Box<[[u8; MAX_DATAGRAM]; BATCH]>,
    lens: [usize; BATCH],
    #[cfg(target_os = "linux")]
    iovecs: Box<[libc::iovec; BATCH]>,
    #[cfg(target_os = "linux")]
    headers: Box<[libc::mmsghdr; BATCH]>,
}

// SAFETY: the raw pointers in `iovecs`/`headers` point into `bufs`/`iovecs`, which the batch owns
// and which move with it (boxed: their addresses never change).
#[cfg(target_os = "linux")]
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    pub(super) fn new() -> Self {
        #[cfg_attr(not(target_os = "linux"), allow(unused_mut))]
        let mut batch = Self {
            bufs: Box::new([[0; MAX_DATAGRAM]; BATCH]),
            lens: [0; BATCH],
            #[cfg(target_os = "linux")]
            iovecs: Box::new(
                [libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                }; BATCH],
            ),
            // SAFETY: mmsghdr is plain data; all-zero is a valid (empty) value.
            #[cfg(target_os = "linux")]
            headers: Box::new(unsafe { std::mem::zeroed() }),
        };
        #[cfg(target_os = "linux")]
        for i in 0..BATCH {
            batch.iovecs[i].iov_base = batch.bufs[i].as_mut_ptr().cast();
            batch.iovecs[i].iov_len = MAX_DATAGRAM;
            batch.headers[i].msg_hdr.msg_iov = &mut batch.iovecs[i];
            batch.headers[i].msg_hdr.msg_iovlen = 1;
        }
        batch
    }

    /// Datagram `i` of the last read.
    pub(super) fn datagram(&self, i: usize) -> &[u8] {
        &self.bufs[i][..self.lens[i].min(MAX_DATAGRAM)]
    }

    /// Reads what is queued on `socket` (non-blocking), up to [`BATCH`] datagrams; `Ok(0)` when
    /// nothing is.
    #[cfg(target_os = "linux")]
    pub(super) fn read(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        for h in self.headers.iter_mut() {
            h.msg_len = 0;
            h.msg_hdr.msg_flags = 0;
        }
        // SAFETY: `headers` holds BATCH valid mmsghdr whose iovecs point at BATCH owned buffers of
        // MAX_DATAGRAM bytes; the kernel writes at most that much into each.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        let n = n as usize;
        for i in 0..n {
            self.lens[i] = self.headers[i].msg_len as usize;
        }
        Ok(n)
    }

    /// Reads what is queued on `socket` (non-blocking), up to [`BATCH`] datagrams; `Ok(0)` when
    /// nothing is.
    #[cfg(not(target_os = "linux"))]
    pub(super) fn read(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        let mut n = 0;
        while n < BATCH {
            match socket.recv(&mut self.bufs[n]) {
                Ok(len) => {
                    self.lens[n] = len;
                    n += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if n == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(n)
    }
}
