//! A small blocking HTTP/1.1 client for audio streams (rustls for `https://`): one GET at a
//! time, `Range` requests to resume or seek, redirects, `Content-Length`, chunked and
//! until-close bodies. It runs on the stream's own input thread (see `crate::stream`), so it
//! may block; every read has an idle timeout, and the engine can shut the socket to unblock it.
//!
//! Everything read from the server is parsed without panicking: status line and headers are
//! bounded in length and count, numbers are checked, and anything malformed is
//! [`HttpError::Malformed`].

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

/// Why an HTTP stream could not be played.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// Not an `http://` or `https://` URL with a host.
    #[error("not an http:// or https:// URL")]
    BadUrl,
    /// The host could not be resolved or connected to.
    #[error("cannot connect: {0}")]
    Connect(#[source] std::io::Error),
    /// The TLS handshake or configuration failed.
    #[error("tls: {0}")]
    Tls(#[source] rustls::Error),
    /// The server answered with an error status (4xx, 5xx) or one that carries no audio.
    #[error("the server answered {status}")]
    Status {
        /// The HTTP status code.
        status: u16,
    },
    /// The server sent something that is not audio (a web page, JSON, text).
    #[error("not audio: the server sent {content_type}")]
    NotAudio {
        /// The `Content-Type` the server sent.
        content_type: String,
    },
    /// The response could not be parsed.
    #[error("malformed HTTP response")]
    Malformed,
    /// More redirects than [`MAX_REDIRECTS`].
    #[error("too many redirects")]
    TooManyRedirects,
    /// The connection dropped and could not be re-established (after
    /// [`crate::HttpOptions::max_reconnects`] attempts in a row).
    #[error("the connection dropped and {attempts} reconnects failed: {source}")]
    Dropped {
        /// Reconnects tried.
        attempts: u32,
        /// The last failure.
        #[source]
        source: std::io::Error,
    },
}

/// Redirects followed for one request.
pub const MAX_REDIRECTS: u32 = 5;
/// Longest status or header line accepted.
const MAX_LINE: u64 = 8192;
/// Most header lines accepted.
const MAX_HEADERS: usize = 100;

/// A parsed `http://` or `https://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// `https://`.
    pub tls: bool,
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port (80 or 443 unless given).
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl Url {
    /// Parses an absolute URL; user information and fragments are dropped.
    pub fn parse(text: &str) -> Result<Self, HttpError> {
        let (tls, rest) = if let Some(rest) = strip_prefix_ignore_case(text, "https://") {
            (true, rest)
        } else if let Some(rest) = strip_prefix_ignore_case(text, "http://") {
            (false, rest)
        } else {
            return Err(HttpError::BadUrl);
        };
        let rest = rest.split('#').next().unwrap_or_default();
        let (authority, path) = match rest.find(['/', '?']) {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_owned()
        };
        let authority = authority.rsplit('@').next().unwrap_or_default();
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed.split_once(']').ok_or(HttpError::BadUrl)?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        let port = match port {
            Some(port) => port.parse().map_err(|_| HttpError::BadUrl)?,
            None if tls => 443,
            None => 80,
        };
        if host.is_empty()
            || port == 0
            || path.bytes().any(|b| b.is_ascii_control() || b == b' ')
            || host
                .bytes()
                .any(|b| b.is_ascii_control() || b == b' ' || b == b'/')
        {
            return Err(HttpError::BadUrl);
        }
        Ok(Self {
            tls,
            host: host.to_owned(),
            port,
            path,
        })
    }

    /// Resolves a `Location` header against this URL (absolute, or an absolute path).
    pub fn join(&self, location: &str) -> Result<Self, HttpError> {
        if location.starts_with('/') && !location.starts_with("//") {
            let mut next = self.clone();
            next.path = location.to_owned();
            if next.path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
                return Err(HttpError::BadUrl);
            }
            Ok(next)
        } else {
            Self::parse(location)
        }
    }
}

impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}{}", self.host, self.port, self.path)
        } else {
            write!(f, "{scheme}://{}:{}{}", self.host, self.port, self.path)
        }
    }
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

/// The parts of a response head a stream needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Head {
    /// Status code.
    pub status: u16,
    /// `Content-Type`, lower-cased, without parameters.
    pub content_type: Option<String>,
    /// `Content-Length`.
    pub content_length: Option<u64>,
    /// `Content-Range: bytes start-end/total`: the start and the total (if stated).
    pub range: Option<(u64, Option<u64>)>,
    /// `Accept-Ranges: bytes`.
    pub accepts_ranges: bool,
    /// `Transfer-Encoding: chunked`.
    pub chunked: bool,
    /// `Location`.
    pub location: Option<String>,
}

/// Reads and parses a response head (status line and headers, up to the empty line).
pub fn read_head(reader: &mut impl BufRead) -> Result<Head, HttpError> {
    // A connection closed before any answer is a dropped connection (worth a retry), not a
    // malformed answer.
    let status_line = read_line(reader)?
        .ok_or_else(|| HttpError::Connect(std::io::ErrorKind::UnexpectedEof.into()))?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let status = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") || status.len() != 3 {
        return Err(HttpError::Malformed);
    }
    let status: u16 = status.parse().map_err(|_| HttpError::Malformed)?;
    if !(100..=599).contains(&status) {
        return Err(HttpError::Malformed);
    }
    let mut head = Head {
        status,
        ..Head::default()
    };
    for _ in 0..=MAX_HEADERS {
        let line = read_line(reader)?.ok_or(HttpError::Malformed)?;
        if line.is_empty() {
            return Ok(head);
        }
        let (name, value) = line.split_once(':').ok_or(HttpError::Malformed)?;
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-type" => {
                head.content_type = Some(
                    value
                        .split(';')
                        .next()
                        .unwrap_or_default()
                        .trim()
                        .to_ascii_lowercase(),
                );
            }
            "content-length" => {
                head.content_length = Some(value.parse().map_err(|_| HttpError::Malformed)?);
            }
            "content-range" => head.range = Some(parse_content_range(value)?),
            "accept-ranges" => head.accepts_ranges = value.eq_ignore_ascii_case("bytes"),
            "transfer-encoding" => {
                head.chunked = value.to_ascii_lowercase().contains("chunked");
            }
            "location" => head.location = Some(value.to_owned()),
            _ => {}
        }
    }
    Err(HttpError::Malformed)
}

/// `bytes start-end/total` (total may be `*`).
fn parse_content_range(value: &str) -> Result<(u64, Option<u64>), HttpError> {
    let spec = value
        .strip_prefix("bytes ")
        .ok_or(HttpError::Malformed)?
        .trim();
    let (range, total) = spec.split_once('/').ok_or(HttpError::Malformed)?;
    let (start, end) = range.split_once('-').ok_or(HttpError::Malformed)?;
    let start: u64 = start.trim().parse().map_err(|_| HttpError::Malformed)?;
    let end: u64 = end.trim().parse().map_err(|_| HttpError::Malformed)?;
    if end < start {
        return Err(HttpError::Malformed);
    }
    let total = match total.trim() {
        "*" => None,
        total => Some(total.parse().map_err(|_| HttpError::Malformed)?),
    };
    Ok((start, total))
}

/// One CRLF- (or LF-) terminated line, at most [`MAX_LINE`] bytes; `None` at the end.
fn read_line(reader: &mut impl BufRead) -> Result<Option<String>, HttpError> {
    let mut line = Vec::new();
    let read = reader
        .take(MAX_LINE)
        .read_until(b'\n', &mut line)
        .map_err(HttpError::Connect)?;
    if read == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(HttpError::Malformed);
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| HttpError::Malformed)
}

/// A connection: plain TCP or TLS over it.
pub(crate) enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(stream) => stream.read(buf),
            Conn::Tls(stream) => stream.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(stream) => stream.write(buf),
            Conn::Tls(stream) => stream.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Plain(stream) => stream.flush(),
            Conn::Tls(stream) => stream.flush(),
        }
    }
}

/// rustls with exactly one provider (`ring`), the webpki roots and any extra roots.
pub(crate) fn tls_config(
    extra_roots: &[rustls::pki_types::CertificateDer<'static>],
) -> Result<Arc<rustls::ClientConfig>, HttpError> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for cert in extra_roots {
        roots.add(cert.clone()).map_err(HttpError::Tls)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(HttpError::Tls)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Connects to `url`'s host and sends a GET for bytes from `from` on. Returns the socket (a
/// clone, so it can be shut down from another thread) and the response, head read.
pub(crate) fn get(
    url: &Url,
    from: u64,
    tls: &Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<(TcpStream, Head, BufReader<Conn>), HttpError> {
    let addresses = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(HttpError::Connect)?;
    let mut last = std::io::Error::from(std::io::ErrorKind::NotFound);
    let mut connected = None;
    for address in addresses {
        match TcpStream::connect_timeout(&address, timeout) {
            Ok(stream) => {
                connected = Some(stream);
                break;
            }
            Err(error) => last = error,
        }
    }
    let socket = connected.ok_or(HttpError::Connect(last))?;
    socket
        .set_read_timeout(Some(timeout))
        .and_then(|()| socket.set_write_timeout(Some(timeout)))
        .map_err(HttpError::Connect)?;
    let handle = socket.try_clone().map_err(HttpError::Connect)?;
    let mut conn = if url.tls {
        let name = rustls::pki_types::ServerName::try_from(url.host.clone())
            .map_err(|_| HttpError::BadUrl)?;
        let client =
            rustls::ClientConnection::new(Arc::clone(tls), name).map_err(HttpError::Tls)?;
        Conn::Tls(Box::new(rustls::StreamOwned::new(client, socket)))
    } else {
        Conn::Plain(socket)
    };
    let host = if url.host.contains(':') {
        format!("[{}]", url.host)
    } else {
        url.host.clone()
    };
    let default_port = if url.tls { 443 } else { 80 };
    let host = if url.port == default_port {
        host
    } else {
        format!("{host}:{}", url.port)
    };
    let range = if from > 0 {
        format!("Range: bytes={from}-\r\n")
    } else {
        String::new()
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: quaver/{}\r\nAccept: audio/*, application/ogg, */*;q=0.5\r\n{range}Connection: close\r\n\r\n",
        url.path,
        env!("CARGO_PKG_VERSION"),
    );
    conn.write_all(request.as_bytes())
        .and_then(|()| conn.flush())
        .map_err(
            |e| match e.get_ref().and_then(|r| r.downcast_ref::<rustls::Error>()) {
                Some(tls) => HttpError::Tls(tls.clone()),
                None => HttpError::Connect(e),
            },
        )?;
    let mut reader = BufReader::new(conn);
    let head = read_head(&mut reader)?;
    Ok((handle, head, reader))
}

/// How a response body ends.
#[derive(Debug)]
enum Framing {
    /// This many bytes are left.
    Length(u64),
    /// Chunked: bytes left in the current chunk (`None`: a size line comes next).
    Chunked { left: Option<u64>, done: bool },
    /// Until the server closes the connection.
    UntilClose,
}

/// A response body read from `R` (the connection, after its head): the payload whatever the
/// framing. An early end of the connection is an `UnexpectedEof` error, so a stream can tell a
/// drop from the end; malformed chunk framing is `InvalidData` carrying [`HttpError::Malformed`].
pub struct Body<R> {
    reader: R,
    framing: Framing,
}

impl<R: BufRead> Body<R> {
    /// The body that follows `head` on `reader`.
    pub fn new(reader: R, head: &Head) -> Self {
        let framing = if head.chunked {
            Framing::Chunked {
                left: None,
                done: false,
            }
        } else if let Some(length) = head.content_length {
            Framing::Length(length)
        } else {
            Framing::UntilClose
        };
        Self { reader, framing }
    }
}

fn early_end() -> std::io::Error {
    std::io::ErrorKind::UnexpectedEof.into()
}

fn malformed() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, HttpError::Malformed)
}

impl<R: BufRead> Read for Body<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        match &mut self.framing {
            Framing::UntilClose => self.reader.read(buf),
            Framing::Length(0) => Ok(0),
            Framing::Length(left) => {
                let want = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                let read = self.reader.read(&mut buf[..want])?;
                if read == 0 {
                    return Err(early_end());
                }
                *left -= read as u64;
                Ok(read)
            }
            Framing::Chunked { done: true, .. } => Ok(0),
            Framing::Chunked { left, done } => loop {
                match left {
                    Some(0) => {
                        // The CRLF after a chunk's data.
                        let line = read_line(&mut self.reader).map_err(|_| malformed())?;
                        if line.as_deref() != Some("") {
                            return Err(if line.is_none() {
                                early_end()
                            } else {
                                malformed()
                            });
                        }
                        *left = None;
                    }
                    Some(count) => {
                        let want = buf.len().min(usize::try_from(*count).unwrap_or(usize::MAX));
                        let read = self.reader.read(&mut buf[..want])?;
                        if read == 0 {
                            return Err(early_end());
                        }
                        *count -= read as u64;
                        return Ok(read);
                    }
                    None => {
                        let line = read_line(&mut self.reader)
                            .map_err(|_| malformed())?
                            .ok_or_else(early_end)?;
                        let size = line.split(';').next().unwrap_or_default().trim();
                        let size = u64::from_str_radix(size, 16).map_err(|_| malformed())?;
                        if size == 0 {
                            // Trailers are not needed; the connection closes after them.
                            *done = true;
                            return Ok(0);
                        }
                        *left = Some(size);
                    }
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn urls_parse_or_are_rejected() {
        let url = Url::parse("https://user:pw@Example.com:8443/a/b.mp3?x=1#frag").unwrap();
        assert!(url.tls);
        assert_eq!(url.host, "Example.com");
        assert_eq!(url.port, 8443);
        assert_eq!(url.path, "/a/b.mp3?x=1");
        let url = Url::parse("http://[::1]/x").unwrap();
        assert_eq!((url.host.as_str(), url.port), ("::1", 80));
        assert_eq!(Url::parse("HTTP://h?q").unwrap().path, "/?q");
        for bad in [
            "ftp://x/",
            "http://",
            "http://h:99999/",
            "http://h:0/",
            "http://[::1/",
            "http://h/a b",
            "/x",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(url.join("/y").unwrap().path, "/y");
        assert_eq!(url.join("http://o/z").unwrap().host, "o");
    }

    #[test]
    fn heads_parse_and_garbage_is_an_error() {
        let text = "HTTP/1.1 206 Partial Content\r\nContent-Type: audio/mpeg; charset=x\r\nContent-Range: bytes 100-199/1000\r\nContent-Length: 100\r\nAccept-Ranges: bytes\r\n\r\nBODY";
        let mut reader = Cursor::new(text.as_bytes());
        let head = read_head(&mut reader).unwrap();
        assert_eq!(head.status, 206);
        assert_eq!(head.content_type.as_deref(), Some("audio/mpeg"));
        assert_eq!(head.range, Some((100, Some(1000))));
        assert_eq!(head.content_length, Some(100));
        assert!(head.accepts_ranges);
        for bad in [
            "",
            "HTTP/1.1 20 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Range: bytes 9-1/5\r\n\r\n",
            "HTTP/1.1 200 OK\r\n",
            "SSH-2.0\r\n\r\n",
        ] {
            assert!(
                read_head(&mut Cursor::new(bad.as_bytes())).is_err(),
                "{bad:?}"
            );
        }
    }

    fn body_of(raw: &str, head: &Head) -> std::io::Result<Vec<u8>> {
        let reader = BufReader::new(Conn::Plain(loopback_with(raw.as_bytes())));
        let mut body = Body::new(reader, head);
        let mut out = Vec::new();
        body.read_to_end(&mut out).map(|_| out)
    }

    /// A connected socket whose peer has written `bytes` and closed.
    fn loopback_with(bytes: &[u8]) -> TcpStream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        server.write_all(bytes).unwrap();
        drop(server);
        client
    }

    #[test]
    fn bodies_end_where_their_framing_says_and_early_ends_are_errors() {
        let chunked = Head {
            chunked: true,
            ..Head::default()
        };
        assert_eq!(
            body_of("3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n", &chunked).unwrap(),
            b"abcde"
        );
        assert!(body_of("3\r\nab", &chunked).is_err());
        assert!(body_of("zz\r\n", &chunked).is_err());
        let sized = Head {
            content_length: Some(5),
            ..Head::default()
        };
        assert_eq!(body_of("hello, and more", &sized).unwrap(), b"hello");
        let error = body_of("hel", &sized).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::UnexpectedEof);
        assert_eq!(
            body_of("all of it", &Head::default()).unwrap(),
            b"all of it"
        );
    }
}
