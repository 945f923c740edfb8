//! A bare voice session opened with the control thread and `net` directly, without the engine:
//! the jitter tool's listener (which receives what the server forwards) and its baseline sender
//! (a plain sleep-paced loop, as other libraries send) are built on it.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quaver::gateway::control::{ConnectionId, ControlEvent, ControlThread};
use quaver::gateway::dave::{DaveEvent, DaveKeys};
use quaver::gateway::protocol::SpeakingFlags;
use quaver::gateway::voice::{VoiceConfig, VoiceConnectRequest, VoiceEvent};
use quaver::net::crypto::{EncryptionMode, SecretKey};

/// An established session: the socket is connected to the voice server, the key is known.
pub struct RawSession {
    /// The control thread's handle of the voice connection, to disconnect it.
    pub gateway: ConnectionId,
    /// The UDP socket, connected to the voice server's address from Ready.
    pub socket: Arc<UdpSocket>,
    /// The SSRC the server assigned in Ready.
    pub ssrc: u32,
    /// The transport encryption mode selected.
    pub mode: EncryptionMode,
    /// The transport key from Session Description (redacted from `Debug`).
    pub key: SecretKey,
    /// The DAVE keys last installed while the session was being opened (a group that formed
    /// at once); later ones arrive as events on the control thread.
    pub dave_keys: Option<DaveKeys>,
}

impl std::fmt::Debug for RawSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawSession")
            .field("ssrc", &self.ssrc)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl RawSession {
    /// Connects on `control` (which must have no other owner reading its events) and waits
    /// for the session. `speaking` is sent with the session (listeners send none).
    pub fn open(
        control: &ControlThread,
        request: VoiceConnectRequest,
        speaking: SpeakingFlags,
        timeout: Duration,
    ) -> Result<Self, crate::Error> {
        let config = VoiceConfig {
            initial_speaking: speaking,
            ..VoiceConfig::default()
        };
        let gateway = control
            .connect(request, config)
            .map_err(quaver::Error::from)?;
        let give_up = Instant::now() + timeout;
        let mut socket = None;
        let mut dave_keys = None;
        while let Some(left) = give_up.checked_duration_since(Instant::now()) {
            let Ok(event) = control.events().recv_timeout(left) else {
                break;
            };
            let ControlEvent::Voice { call, event } = event else {
                continue;
            };
            if call != gateway {
                continue;
            }
            match event {
                VoiceEvent::DiscoveryRequested { ssrc, ip, port } => {
                    let server: SocketAddr = format!("{ip}:{port}").parse().map_err(|_| {
                        crate::Error::Usage(format!("bad voice server address {ip}:{port}"))
                    })?;
                    let udp = UdpSocket::bind(if server.is_ipv4() {
                        "0.0.0.0:0"
                    } else {
                        "[::]:0"
                    })
                    .and_then(|udp| udp.connect(server).map(|()| udp))
                    .map_err(|e| crate::Error::Usage(format!("voice UDP socket: {e}")))?;
                    let ours = quaver::net::discovery::discover(
                        &udp,
                        server,
                        ssrc,
                        Duration::from_secs(1),
                        5,
                    )
                    .map_err(|e| crate::Error::Usage(format!("IP discovery: {e}")))?;
                    control
                        .set_discovered_address(gateway, ours.ip().to_string(), ours.port())
                        .map_err(quaver::Error::from)?;
                    socket = Some(Arc::new(udp));
                }
                VoiceEvent::SessionReady(session) => {
                    let socket = socket
                        .ok_or_else(|| crate::Error::Usage("session before IP discovery".into()))?;
                    let mode =
                        session.mode.as_str().parse().map_err(|_| {
                            crate::Error::Usage("unsupported encryption mode".into())
                        })?;
                    let key = SecretKey::from_slice(session.secret_key.expose())
                        .map_err(|_| crate::Error::Usage("bad session key".into()))?;
                    return Ok(Self {
                        gateway,
                        socket,
                        ssrc: session.ssrc,
                        mode,
                        key,
                        dave_keys,
                    });
                }
                VoiceEvent::Dave(DaveEvent::KeysChanged(keys)) => dave_keys = Some(keys),
                VoiceEvent::Ended(reason) => {
                    return Err(crate::Error::Usage(format!(
                        "voice connection ended: {reason:?}"
                    )));
                }
                _ => {}
            }
        }
        let _ = control.disconnect(gateway);
        Err(crate::Error::Usage(
            "timed out waiting for the voice session".into(),
        ))
    }
}
