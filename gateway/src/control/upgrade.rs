//! The client side of the websocket upgrade (RFC 6455 §4.1), done here rather than by
//! tungstenite's handshake so that the open socket's read buffer is ours to size.
//!
//! tungstenite hands the 4 KiB buffer its handshake read the response into on to the open
//! socket, whatever `read_buffer_size` says: 4 KiB of every call's memory for a voice
//! connection whose messages are mostly under 300 bytes (and the buffer still grows for a
//! large one). Here the response is read in small pieces, and only what came after its head
//! (a server may send its first frame in the same segment) is handed on.

use std::io::{self, Read, Write};

use tungstenite::WebSocket;
use tungstenite::handshake::client::generate_key;
use tungstenite::handshake::derive_accept_key;
use tungstenite::protocol::{Role, WebSocketConfig};

use super::socket::Stream;

/// Longest response head accepted (Discord's are under 1 KiB).
pub const MAX_RESPONSE_HEAD: usize = 8 * 1024;

/// Most response headers accepted.
const MAX_HEADERS: usize = 64;

/// Bytes read from the socket at a time while the head is incomplete.
const READ_PIECE: usize = 512;

/// Why the websocket upgrade failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpgradeError {
    /// Reading or writing the socket failed.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The server closed the connection before the response was complete.
    #[error("the server closed the connection during the upgrade")]
    Closed,
    /// The URL has no host to name in the request.
    #[error("the url has no host")]
    NoHost,
    /// The response head is longer than [`MAX_RESPONSE_HEAD`].
    #[error("the response head is over {MAX_RESPONSE_HEAD} bytes")]
    TooLarge,
    /// The response is not HTTP/1.1 (or has more than 64 headers).
    #[error("malformed response: {0}")]
    Malformed(httparse::Error),
    /// The server answered with another status than 101 Switching Protocols.
    #[error("status {0}, not 101 Switching Protocols")]
    Status(u16),
    /// `Upgrade: websocket` or `Connection: upgrade` is missing.
    #[error("the response does not upgrade the connection to a websocket")]
    NotWebSocket,
    /// `Sec-WebSocket-Accept` is missing or does not answer the request's key.
    #[error("Sec-WebSocket-Accept does not answer the request's key")]
    BadAccept,
}

/// What one step of the upgrade came to.
pub(super) enum Progress {
    /// Upgraded: the open websocket.
    Open(Box<WebSocket<Stream>>),
    /// Waiting for the socket; step again when it is ready.
    Pending(Box<Upgrade>),
    /// Failed; the stream is dropped.
    Failed(UpgradeError),
}

/// An upgrade in progress: the request being written, then the response being read.
pub(super) struct Upgrade {
    stream: Stream,
    request: Vec<u8>,
    written: usize,
    flushed: bool,
    /// The `Sec-WebSocket-Accept` value the request's key calls for.
    accept: String,
    head: Vec<u8>,
    config: WebSocketConfig,
}

impl Upgrade {
    /// An upgrade of `stream` to a websocket at `url` (already checked by
    /// [`super::socket::parse_url`]), opened with `config`.
    pub(super) fn start(
        url: &tungstenite::http::Uri,
        stream: Stream,
        config: WebSocketConfig,
    ) -> Result<Box<Self>, UpgradeError> {
        let authority = url.authority().ok_or(UpgradeError::NoHost)?;
        let path = url.path_and_query().map_or("/", |p| p.as_str());
        let key = generate_key();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: Upgrade\r\n\
             Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
        );
        Ok(Box::new(Self {
            stream,
            request: request.into_bytes(),
            written: 0,
            flushed: false,
            accept: derive_accept_key(key.as_bytes()),
            head: Vec::new(),
            config,
        }))
    }

    /// The stream, to register or deregister it.
    pub(super) fn stream(&mut self) -> &mut Stream {
        &mut self.stream
    }

    /// Writes and reads what the socket allows now.
    pub(super) fn step(mut self: Box<Self>) -> Progress {
        match self.try_step() {
            Ok(Some(rest)) => {
                let Upgrade { stream, config, .. } = *self;
                Progress::Open(Box::new(WebSocket::from_partially_read(
                    stream,
                    rest,
                    Role::Client,
                    Some(config),
                )))
            }
            Ok(None) => Progress::Pending(self),
            Err(e) => Progress::Failed(e),
        }
    }

    /// `Some(bytes after the head)` once upgraded; `None` when the socket would block.
    fn try_step(&mut self) -> Result<Option<Vec<u8>>, UpgradeError> {
        while self.written < self.request.len() {
            match self.stream.write(&self.request[self.written..]) {
                Ok(0) => return Err(UpgradeError::Closed),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        if !self.flushed {
            // TLS keeps what the socket did not take; flushing sends it.
            match self.stream.flush() {
                Ok(()) => self.flushed = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
        let mut piece = [0; READ_PIECE];
        loop {
            match self.stream.read(&mut piece) {
                Ok(0) => return Err(UpgradeError::Closed),
                Ok(n) => {
                    self.head.extend_from_slice(&piece[..n]);
                    if let Some(len) = parse_response(&self.head, &self.accept)? {
                        return Ok(Some(self.head.split_off(len)));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Checks a websocket upgrade response: `Ok(Some(length of its head))` when `bytes` start
/// with a complete head that accepts the upgrade (answering with `accept`, the value the
/// request's key calls for), `Ok(None)` while it is incomplete.
pub fn parse_response(bytes: &[u8], accept: &str) -> Result<Option<usize>, UpgradeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(bytes).map_err(UpgradeError::Malformed)? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial if bytes.len() > MAX_RESPONSE_HEAD => {
            return Err(UpgradeError::TooLarge);
        }
        httparse::Status::Partial => return Ok(None),
    };
    if len > MAX_RESPONSE_HEAD {
        return Err(UpgradeError::TooLarge);
    }
    let status = response.code.unwrap_or(0);
    if status != 101 {
        return Err(UpgradeError::Status(status));
    }
    let headers: &[httparse::Header<'_>] = response.headers;
    let header = |name: &'static str| {
        headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    // Connection is a comma-separated list of tokens (RFC 9110 §7.6.1).
    let upgrades = header("Connection").any(|value| {
        value
            .split(|&b| b == b',')
            .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
    });
    let to_websocket = header("Upgrade").any(|value| value.eq_ignore_ascii_case(b"websocket"));
    if !upgrades || !to_websocket {
        return Err(UpgradeError::NotWebSocket);
    }
    if !header("Sec-WebSocket-Accept").any(|value| value.trim_ascii() == accept.as_bytes()) {
        return Err(UpgradeError::BadAccept);
    }
    Ok(Some(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6455 §1.3's example key and its accept value.
    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    fn response(status: &str, headers: &str) -> Vec<u8> {
        format!("HTTP/1.1 {status}\r\n{headers}\r\n").into_bytes()
    }

    const GOOD: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\n\
                        Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n";

    #[test]
    fn the_accept_value_follows_rfc_6455() {
        assert_eq!(derive_accept_key(KEY.as_bytes()), ACCEPT);
    }

    #[test]
    fn a_good_response_is_accepted_in_any_case_and_with_a_frame_behind_it() {
        let mut bytes = response("101 Switching Protocols", GOOD);
        let head = bytes.len();
        bytes.extend_from_slice(&[0x81, 0x02, b'h', b'i']);
        assert_eq!(parse_response(&bytes, ACCEPT).unwrap(), Some(head));
        let shouting = response(
            "101 Switching Protocols",
            "upgrade: WebSocket\r\nconnection: keep-alive, UPGRADE\r\n\
             sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n",
        );
        assert!(parse_response(&shouting, ACCEPT).unwrap().is_some());
    }

    #[test]
    fn an_incomplete_head_waits_for_more() {
        let bytes = response("101 Switching Protocols", GOOD);
        for cut in 0..bytes.len() {
            assert_eq!(
                parse_response(&bytes[..cut], ACCEPT).unwrap(),
                None,
                "cut {cut}"
            );
        }
    }

    #[test]
    fn refusals_and_garbage_are_typed_errors() {
        let check = |bytes: &[u8]| parse_response(bytes, ACCEPT).unwrap_err();
        assert!(matches!(
            check(&response("403 Forbidden", "Content-Length: 0\r\n")),
            UpgradeError::Status(403)
        ));
        assert!(matches!(
            check(&response(
                "101 Switching Protocols",
                "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: AAAA\r\n"
            )),
            UpgradeError::BadAccept
        ));
        assert!(matches!(
            check(&response(
                "101 Switching Protocols",
                "Upgrade: websocket\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
            )),
            UpgradeError::NotWebSocket
        ));
        assert!(matches!(
            check(&response(
                "101 Switching Protocols",
                "Upgrade: h2c\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
            )),
            UpgradeError::NotWebSocket
        ));
        assert!(matches!(
            check(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"),
            UpgradeError::Malformed(_)
        ));
        let mut endless = b"HTTP/1.1 101 Switching Protocols\r\nX: ".to_vec();
        endless.resize(MAX_RESPONSE_HEAD + 1, b'a');
        assert!(matches!(check(&endless), UpgradeError::TooLarge));
    }
}
