//! Plain or TLS websocket streams for both gateways, and the self-signed certificate.

use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tungstenite::WebSocket;
use tungstenite::protocol::WebSocketConfig;

use super::{ServerError, Shared};

/// How long a client may take for the TCP/TLS/websocket handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A server-side connection, plain or TLS.
pub(crate) enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => &s.sock,
        }
    }

    pub fn set_read_timeout(&self, t: Duration) {
        let _ = self.tcp().set_read_timeout(Some(t));
    }

    /// Drops the connection without a close frame.
    pub fn shutdown(&self) {
        let _ = self.tcp().shutdown(Shutdown::Both);
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

pub(crate) type Ws = WebSocket<Conn>;

/// TLS (if configured) and the websocket handshake, then the short polling read timeout.
pub(crate) fn accept(stream: TcpStream, shared: &Shared) -> Result<Ws, String> {
    let _ = stream.set_nodelay(true);
    stream
        .set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let conn = match &shared.tls {
        Some(config) => {
            let c = rustls::ServerConnection::new(config.clone()).map_err(|e| e.to_string())?;
            Conn::Tls(Box::new(rustls::StreamOwned::new(c, stream)))
        }
        None => Conn::Plain(stream),
    };
    let config = WebSocketConfig::default()
        .max_message_size(Some(shared.config.max_message_size))
        .max_frame_size(Some(shared.config.max_message_size));
    let ws = tungstenite::accept_with_config(conn, Some(config)).map_err(|e| e.to_string())?;
    ws.get_ref()
        .set_read_timeout(shared.config.ws_poll_interval.max(Duration::from_millis(1)));
    Ok(ws)
}

/// A fresh self-signed certificate for the listen addresses (plus `localhost`).
pub(crate) fn self_signed(
    a: IpAddr,
    b: IpAddr,
) -> Result<(Arc<rustls::ServerConfig>, CertificateDer<'static>), ServerError> {
    let mut names = vec!["localhost".to_string(), a.to_string()];
    if b != a {
        names.push(b.to_string());
    }
    let key =
        rcgen::generate_simple_self_signed(names).map_err(|e| ServerError::Tls(e.to_string()))?;
    let cert = key.cert.der().clone();
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.signing_key.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ServerError::Tls(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(vec![cert.clone()], private)
    .map_err(|e| ServerError::Tls(e.to_string()))?;
    Ok((Arc::new(config), cert))
}
