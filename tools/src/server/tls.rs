//! Plain or TLS websocket streams for both gateways, and the self-signed certificate.

use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tungstenite::WebSocket;
use tungstenite::protocol::WebSocketConfig;

use super::framing::Framing;
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

    /// The socket's descriptor, to poll it.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(self.tcp())
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

/// The `v` query parameter of a request URI, if any.
fn version_of(uri: &tungstenite::http::Uri) -> Option<u32> {
    uri.query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("v="))
        .and_then(|v| v.parse().ok())
}

/// TLS (if configured) and the websocket handshake, then the short polling read timeout.
/// With `voice`, the request must carry a supported `?v=` (4–8, PROTOCOL.md §0); others get
/// HTTP 400. Returns the voice connection's framing (`None` for the main gateway).
pub(crate) fn accept(
    stream: TcpStream,
    shared: &Shared,
    voice: bool,
) -> Result<(Ws, Option<Framing>), String> {
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
    // tungstenite reserves its read buffer per connection up front (128 KiB by default: 256 MB
    // for a 1,000-call run's 2,000 websockets); the buffer grows for a larger message.
    let config = WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(4 * 1024)
        .max_message_size(Some(shared.config.max_message_size))
        .max_frame_size(Some(shared.config.max_message_size));
    let mut framing = None;
    // tungstenite's handshake callback fixes this error type (an HTTP response).
    #[allow(clippy::result_large_err)]
    let check = |req: &tungstenite::handshake::server::Request,
                 resp: tungstenite::handshake::server::Response| {
        if !voice {
            return Ok(resp);
        }
        let v = version_of(req.uri());
        framing = v.and_then(Framing::of_version);
        if framing.is_some() {
            return Ok(resp);
        }
        let mut reject = tungstenite::handshake::server::ErrorResponse::new(Some(format!(
            "unsupported voice gateway version {v:?}; use ?v=8"
        )));
        *reject.status_mut() = tungstenite::http::StatusCode::BAD_REQUEST;
        Err(reject)
    };
    let ws = tungstenite::accept_hdr_with_config(conn, check, Some(config))
        .map_err(|e| e.to_string())?;
    ws.get_ref()
        .set_read_timeout(shared.config.ws_poll_interval.max(Duration::from_millis(1)));
    Ok((ws, framing))
}

/// The server's TLS identity: a throwaway CA generated at start, and the leaf it signed for
/// the listen addresses. Clients trust the CA (what `--cert-out` writes), as they would trust a
/// corporate root, so the leaf is an ordinary server certificate (not a CA, server-auth usage)
/// that strict verifiers accept.
///
/// Handed to a later server through [`crate::server::ServerConfig::tls_identity`], it plays a
/// restarted server that keeps its certificate, as Discord's does across an outage.
#[derive(Clone)]
pub struct TlsIdentity {
    pub(crate) config: Arc<rustls::ServerConfig>,
    pub(crate) ca_der: CertificateDer<'static>,
    pub(crate) ca_pem: String,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private key lives in `config`; nothing of it is printed.
        f.debug_struct("TlsIdentity").finish_non_exhaustive()
    }
}

/// A fresh CA and a leaf for the listen addresses (plus `localhost`).
pub(crate) fn generate(a: IpAddr, b: IpAddr) -> Result<TlsIdentity, ServerError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let tls_err = |e: rcgen::Error| ServerError::Tls(e.to_string());
    let mut names = vec!["localhost".to_string(), a.to_string()];
    if b != a {
        names.push(b.to_string());
    }
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
    ca.distinguished_name
        .push(DnType::CommonName, "quaver serve local CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().map_err(tls_err)?;
    let ca_cert = ca.self_signed(&ca_key).map_err(tls_err)?;
    let issuer = Issuer::new(ca, ca_key);

    let mut leaf = CertificateParams::new(names).map_err(tls_err)?;
    leaf.distinguished_name
        .push(DnType::CommonName, "quaver serve");
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.use_authority_key_identifier_extension = true;
    let leaf_key = KeyPair::generate().map_err(tls_err)?;
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).map_err(tls_err)?;

    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ServerError::Tls(e.to_string()))?
    .with_no_client_auth()
    // The chain includes the CA, so a client that was handed the leaf-signing CA by other
    // means (or pins it) sees the whole path.
    .with_single_cert(
        vec![leaf_cert.der().clone(), ca_cert.der().clone()],
        private,
    )
    .map_err(|e| ServerError::Tls(e.to_string()))?;
    Ok(TlsIdentity {
        config: Arc::new(config),
        ca_der: ca_cert.der().clone(),
        ca_pem: ca_cert.pem(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        let uri = |s: &str| s.parse::<tungstenite::http::Uri>().expect("valid uri");
        assert_eq!(version_of(&uri("/?v=8")), Some(8));
        assert_eq!(version_of(&uri("/?encoding=json&v=4")), Some(4));
        assert_eq!(version_of(&uri("/")), None);
        assert_eq!(version_of(&uri("/?v=x")), None);
    }
}
