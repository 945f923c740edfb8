//! IP discovery (PROTOCOL.md §3): a 74-byte request sent from the voice socket to the server, whose
//! 74-byte response carries our external address and port for Select Protocol.
//!
//! The codec is sans-IO; [`discover`] is a blocking helper with timeout and retries for the
//! control side.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use thiserror::Error;

/// Length of a request or response.
pub const PACKET_LEN: usize = 74;
const TYPE_REQUEST: u16 = 1;
const TYPE_RESPONSE: u16 = 2;
const BODY_LEN: u16 = 70;
const ADDRESS_LEN: usize = 64;

/// Why discovery failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// The packet is not 74 bytes.
    #[error("discovery packet has {0} bytes (expected 74)")]
    Length(usize),
    /// The type or length field is wrong.
    #[error("not a discovery response (type {kind}, length {length})")]
    NotAResponse {
        /// The type field.
        kind: u16,
        /// The length field.
        length: u16,
    },
    /// The address field is not NUL-terminated ASCII text of an IP address.
    #[error("invalid address in discovery response")]
    Address,
    /// The response is for another SSRC.
    #[error("response for SSRC {got}, expected {expected}")]
    Ssrc {
        /// Our SSRC.
        expected: u32,
        /// The response's SSRC.
        got: u32,
    },
    /// No valid response arrived in time.
    #[error("no discovery response after {attempts} attempts")]
    TimedOut {
        /// Requests sent.
        attempts: u32,
    },
    /// The socket failed.
    #[error("discovery socket: {0}")]
    Io(#[from] std::io::Error),
}

/// The request for `ssrc`: type 1, length 70, SSRC, zeroed address and port.
pub fn encode_request(ssrc: u32) -> [u8; PACKET_LEN] {
    encode(TYPE_REQUEST, ssrc, &[], 0)
}

/// A response as a server would send it (used by the local server and tests).
/// Addresses longer than 63 bytes cannot occur for IPv4/IPv6 text forms.
pub fn encode_response(ssrc: u32, address: SocketAddr) -> [u8; PACKET_LEN] {
    let mut text = [0u8; 48];
    let len = {
        use std::io::Write;
        let mut cursor = std::io::Cursor::new(&mut text[..]);
        // An IPv6 text form is at most 45 bytes, so it always fits the 48-byte scratch buffer.
        let _ = write!(cursor, "{}", address.ip());
        cursor.position() as usize
    };
    encode(TYPE_RESPONSE, ssrc, &text[..len], address.port())
}

fn encode(kind: u16, ssrc: u32, address: &[u8], port: u16) -> [u8; PACKET_LEN] {
    let mut p = [0u8; PACKET_LEN];
    p[0..2].copy_from_slice(&kind.to_be_bytes());
    p[2..4].copy_from_slice(&BODY_LEN.to_be_bytes());
    p[4..8].copy_from_slice(&ssrc.to_be_bytes());
    let n = address.len().min(ADDRESS_LEN - 1);
    p[8..8 + n].copy_from_slice(&address[..n]);
    p[72..74].copy_from_slice(&port.to_be_bytes());
    p
}

/// A parsed discovery response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscoveryResponse {
    /// The SSRC the response is for.
    pub ssrc: u32,
    /// Our address and port as the server sees them.
    pub address: SocketAddr,
}

/// Parses a response; rejects anything else (including requests) with an error.
pub fn parse_response(packet: &[u8]) -> Result<DiscoveryResponse, DiscoveryError> {
    let p: &[u8; PACKET_LEN] = packet
        .try_into()
        .map_err(|_| DiscoveryError::Length(packet.len()))?;
    let kind = u16::from_be_bytes([p[0], p[1]]);
    let length = u16::from_be_bytes([p[2], p[3]]);
    if kind != TYPE_RESPONSE || length != BODY_LEN {
        return Err(DiscoveryError::NotAResponse { kind, length });
    }
    let ssrc = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
    let field = &p[8..8 + ADDRESS_LEN];
    let end = field
        .iter()
        .position(|b| *b == 0)
        .ok_or(DiscoveryError::Address)?;
    let text = std::str::from_utf8(&field[..end]).map_err(|_| DiscoveryError::Address)?;
    let ip: IpAddr = text.parse().map_err(|_| DiscoveryError::Address)?;
    let port = u16::from_be_bytes([p[72], p[73]]);
    Ok(DiscoveryResponse {
        ssrc,
        address: SocketAddr::new(ip, port),
    })
}

/// Sends requests from `socket` to `server` until a matching response arrives: each attempt waits
/// up to `timeout`, at most `attempts` requests. Other datagrams are ignored. The socket's read
/// timeout is changed.
pub fn discover(
    socket: &UdpSocket,
    server: SocketAddr,
    ssrc: u32,
    timeout: Duration,
    attempts: u32,
) -> Result<SocketAddr, DiscoveryError> {
    let request = encode_request(ssrc);
    let mut buf = [0u8; 1500];
    for _ in 0..attempts {
        socket.send_to(&request, server)?;
        let until = Instant::now() + timeout;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            socket.set_read_timeout(Some(left))?;
            match socket.recv_from(&mut buf) {
                Ok((n, from)) if from == server => match parse_response(&buf[..n]) {
                    Ok(r) if r.ssrc == ssrc => return Ok(r.address),
                    _ => continue,
                },
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break;
                }
                // ICMP port unreachable from an earlier attempt surfaces here; retry.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
                Err(e) => return Err(e.into()),
            }
        }
    }
    Err(DiscoveryError::TimedOut { attempts })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout() {
        let r = encode_request(0x0102_0304);
        assert_eq!(&r[..8], &[0, 1, 0, 70, 1, 2, 3, 4]);
        assert!(r[8..].iter().all(|b| *b == 0));
    }

    #[test]
    fn response_round_trip_v4_and_v6() {
        for addr in ["203.0.113.7:50000", "[2001:db8::1]:65535"] {
            let addr: SocketAddr = addr.parse().unwrap(); // invariant: literal is valid
            let r = parse_response(&encode_response(9, addr)).unwrap(); // invariant: just encoded
            assert_eq!(
                r,
                DiscoveryResponse {
                    ssrc: 9,
                    address: addr
                }
            );
        }
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_response(&[0; 73]).is_err());
        assert!(parse_response(&encode_request(1)).is_err());
        let mut no_nul = encode_response(1, "1.2.3.4:5".parse().unwrap()); // invariant: literal
        no_nul[8..72].fill(b'1');
        assert!(matches!(
            parse_response(&no_nul),
            Err(DiscoveryError::Address)
        ));
        let mut bad = encode_response(1, "1.2.3.4:5".parse().unwrap()); // invariant: literal
        bad[8] = b'x';
        assert!(parse_response(&bad).is_err());
    }

    #[test]
    fn discovers_over_loopback_after_a_lost_request() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap(); // invariant: loopback bind
        let client = UdpSocket::bind("127.0.0.1:0").unwrap(); // invariant: loopback bind
        let server_addr = server.local_addr().unwrap(); // invariant: bound socket
        let t = std::thread::spawn(move || {
            let mut buf = [0u8; 128];
            // Drop the first request to exercise the retry.
            let _ = server.recv_from(&mut buf).unwrap(); // invariant: client sends
            let (n, from) = server.recv_from(&mut buf).unwrap(); // invariant: client retries
            assert_eq!(n, PACKET_LEN);
            server.send_to(b"noise", from).unwrap(); // invariant: loopback send
            server.send_to(&encode_response(77, from), from).unwrap(); // invariant: loopback
            from
        });
        let found = discover(&client, server_addr, 77, Duration::from_millis(300), 5).unwrap(); // invariant: server answers the 2nd request
        assert_eq!(found, t.join().unwrap()); // invariant: thread does not panic
    }

    #[test]
    fn times_out() {
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap(); // invariant: loopback bind
        let client = UdpSocket::bind("127.0.0.1:0").unwrap(); // invariant: loopback bind
        let to = silent.local_addr().unwrap(); // invariant: bound socket
        let r = discover(&client, to, 1, Duration::from_millis(20), 2);
        assert!(matches!(r, Err(DiscoveryError::TimedOut { attempts: 2 })));
    }
}
