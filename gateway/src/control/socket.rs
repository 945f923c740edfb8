//! One websocket's transport: TCP, TLS, and the states of opening it.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;

use mio::Poll;
use mio::net::TcpStream;
use tungstenite::WebSocket;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

use super::upgrade::Upgrade;
use crate::Error;

/// A TCP stream, optionally wrapped in TLS.
pub(super) enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    pub(super) fn tcp(&mut self) -> &mut TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &mut s.sock,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// Where a parsed websocket URL points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Target {
    pub(super) url: String,
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) tls: bool,
}

pub(super) fn parse_url(url: &str) -> Result<Target, Error> {
    let uri: tungstenite::http::Uri = url.parse().map_err(|_| Error::InvalidUrl(url.into()))?;
    let tls = match uri.scheme_str() {
        Some("wss") => true,
        Some("ws") => false,
        _ => return Err(Error::InvalidUrl(url.into())),
    };
    let host = uri
        .host()
        .ok_or_else(|| Error::InvalidUrl(url.into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    Ok(Target {
        url: url.into(),
        host,
        port,
        tls,
    })
}

pub(super) enum Socket {
    /// Waiting for the resolver.
    Resolving(Target),
    /// TCP connect in flight; the other resolved addresses to try if it fails.
    Connecting(Target, TcpStream, Vec<SocketAddr>),
    /// TLS + websocket upgrade in flight.
    Upgrading(Box<Upgrade>),
    /// Up.
    Open(Box<WebSocket<Stream>>),
}

/// rustls with exactly one provider (`ring`), chosen explicitly so no process-wide default is
/// needed, and the webpki roots.
pub(super) fn tls_config(
    extra_roots: &[rustls::pki_types::CertificateDer<'static>],
) -> Result<Arc<rustls::ClientConfig>, Error> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for cert in extra_roots {
        roots.add(cert.clone())?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

pub(super) fn deregister(poll: &Poll, mut stream: TcpStream) {
    let _ = poll.registry().deregister(&mut stream);
}

/// Best-effort close: queue a close frame, push what the kernel takes right now, drop the socket.
pub(super) fn close_socket(poll: &Poll, socket: Socket, code: u16) {
    match socket {
        Socket::Resolving(_) => {}
        Socket::Connecting(_, s, _) => deregister(poll, s),
        Socket::Upgrading(mut upgrade) => {
            let _ = poll.registry().deregister(upgrade.stream().tcp());
        }
        Socket::Open(mut ws) => {
            let _ = ws.close(Some(CloseFrame {
                code: CloseCode::from(code),
                reason: "".into(),
            }));
            let _ = ws.flush();
            let _ = poll.registry().deregister(ws.get_mut().tcp());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::ControlConfig;

    #[test]
    fn urls() {
        let t = parse_url("wss://c-waw05.discord.media:8443/?v=8").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.tls),
            ("c-waw05.discord.media", 8443, true)
        );
        let t = parse_url("ws://[::1]:9000/?v=8").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.tls), ("::1", 9000, false));
        let t = parse_url("wss://gateway.discord.gg/?v=10&encoding=json").unwrap();
        assert_eq!(t.port, 443);
        assert!(parse_url("http://x/").is_err());
        assert!(parse_url("not a url").is_err());
    }

    #[test]
    fn tls_config_builds_with_ring() {
        tls_config(&[]).unwrap();
    }

    #[test]
    fn pem_roots_are_read_and_garbage_is_refused() {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let mut config = ControlConfig::default();
        assert_eq!(config.trust_pem(cert.cert.pem().as_bytes()).unwrap(), 1);
        assert_eq!(config.extra_roots, vec![cert.cert.der().clone()]);
        tls_config(&config.extra_roots).unwrap();
        assert!(config.trust_pem(b"not a certificate").is_err());
        assert!(
            config
                .trust_pem(b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n")
                .is_err()
        );
        assert_eq!(config.extra_roots.len(), 1);
    }
}
