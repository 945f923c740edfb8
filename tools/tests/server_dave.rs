//! DAVE on the local server: real websockets on loopback, real MLS (davey clients against the
//! server's openmls external sender), real AES-GCM, real Opus. No wall-clock timing asserts.

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::num::NonZeroU16;
use std::time::{Duration, Instant};

use audiopus::coder::Encoder;
use audiopus::{Application, Channels, SampleRate};
use davey::{DaveSession, MediaType, ProposalsOperationType};
use quaver_gateway::protocol::{
    BinaryFrame, DEFAULT_MAX_FRAME_LEN, DaveTransition, Identify, Resume, SelectProtocol,
    SelectProtocolData, Snowflake, Token, VoicePayload, op,
};
use quaver_net::crypto::{EncryptionMode, Sealer, SecretKey, TransportCipher};
use quaver_net::receive;
use quaver_net::rtp::RtpStream;
use quaver_tools::server::{DaveMode, OBSERVER_USER_ID, Server, ServerConfig, ServerStats};
use tungstenite::Message;
use tungstenite::stream::MaybeTlsStream;

const WAIT: Duration = Duration::from_secs(30);
const GUILD: u64 = 7;
const CHANNEL: u64 = 7_000_000_000_000_007;

type Ws = tungstenite::WebSocket<MaybeTlsStream<TcpStream>>;

fn trace() {
    if std::env::var_os("SERVER_DAVE_TRACE").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("quaver_tools=debug")
            .with_test_writer()
            .try_init();
    }
}

fn server(mode: DaveMode) -> Server {
    trace();
    Server::start(ServerConfig {
        dave: mode,
        heartbeat_timeout_intervals: None,
        // Plain ws:// for the raw test clients (TLS may become the default).
        tls: false,
        ..ServerConfig::default()
    })
    .expect("server starts")
}

fn connect_ws(server: &Server) -> Ws {
    connect_url(&server.voice_gateway_url())
}

fn connect_url(url: &str) -> Ws {
    let (ws, _) = tungstenite::connect(url).expect("ws connect");
    if let MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_millis(5)))
            .expect("timeout");
    }
    ws
}

/// A DAVE voice client made of davey's `DaveSession` and the gateway crate's protocol types.
struct Client {
    ws: Ws,
    user: u64,
    /// The MLS group: the channel the credentials were issued for.
    channel: u64,
    session_id: quaver_gateway::protocol::SessionId,
    token: Token,
    udp: UdpSocket,
    /// Highest seq seen (−1: none).
    seq: i64,
    ssrc: u32,
    /// The UDP address from Ready.
    server_udp: Option<SocketAddr>,
    key: Option<[u8; 32]>,
    mode: Option<EncryptionMode>,
    dave_version: Option<u16>,
    dave: Option<DaveSession>,
    known: Vec<u64>,
    executed: Vec<u16>,
    /// Op 24 (epoch 1) received: group restarts.
    restarts: u32,
    /// A transition prepared from op 29/30 and not executed yet.
    pending_transition: Option<u16>,
    binary_seqs: Vec<u16>,
    proposal_errors: u32,
    /// Every op 28 payload sent.
    sent_commits: Vec<Vec<u8>>,
    /// Answer proposals with commits (off: a member that never commits).
    commits: bool,
    closed: Option<Option<u16>>,
    got_external_sender: bool,
    failures: u32,
}

impl Client {
    fn join(server: &Server, user: u64, offer: u16) -> Client {
        let req = server.voice_connect_request(GUILD, CHANNEL, user);
        Client::connect(
            connect_ws(server),
            user,
            CHANNEL,
            req.session_id,
            req.token,
            offer,
        )
    }

    fn connect(
        ws: Ws,
        user: u64,
        channel: u64,
        session_id: quaver_gateway::protocol::SessionId,
        token: Token,
        offer: u16,
    ) -> Client {
        let mut c = Client {
            ws,
            user,
            channel,
            session_id,
            token,
            udp: UdpSocket::bind("127.0.0.1:0").expect("udp"),
            seq: -1,
            ssrc: 0,
            server_udp: None,
            key: None,
            mode: None,
            dave_version: None,
            dave: None,
            known: Vec::new(),
            executed: Vec::new(),
            restarts: 0,
            pending_transition: None,
            binary_seqs: Vec::new(),
            proposal_errors: 0,
            sent_commits: Vec::new(),
            commits: true,
            closed: None,
            got_external_sender: false,
            failures: 0,
        };
        c.send_json(&VoicePayload::Identify(Identify {
            server_id: Snowflake(GUILD),
            user_id: Snowflake(user),
            session_id: c.session_id.clone(),
            token: c.token.clone(),
            max_dave_protocol_version: offer,
        }));
        c
    }

    fn send_json(&mut self, p: &VoicePayload) {
        let text = p.encode(None).expect("encodes");
        let _ = self.ws.send(Message::text(text));
    }

    fn send_binary(&mut self, op: u8, payload: &[u8]) {
        let frame = BinaryFrame {
            seq: None,
            op,
            payload,
        };
        let _ = self.ws.send(Message::binary(frame.encode()));
    }

    fn recognized(&self) -> Vec<u64> {
        let mut ids = self.known.clone();
        ids.push(self.user);
        ids
    }

    fn send_key_package(&mut self) {
        let kp = self
            .dave
            .as_mut()
            .expect("session")
            .create_key_package()
            .expect("key package");
        self.send_binary(op::DAVE_MLS_KEY_PACKAGE, &kp);
    }

    /// Like a client that failed a commit or welcome: op 31, reset, new key package.
    fn fail_and_rejoin(&mut self, transition_id: u16) {
        self.failures += 1;
        self.send_json(&VoicePayload::DaveMlsInvalidCommitWelcome(DaveTransition {
            transition_id,
        }));
        let dave = self.dave.as_mut().expect("session");
        dave.reinit(NonZeroU16::MIN, self.user, self.channel, None)
            .expect("reinit");
        self.send_key_package();
    }

    /// Reads and handles whatever arrived; false once the socket is gone.
    fn pump(&mut self) -> bool {
        if self.closed.is_some() {
            return false;
        }
        for _ in 0..50 {
            match self.ws.read() {
                Ok(Message::Text(t)) => self.on_text(t.as_str()),
                Ok(Message::Binary(b)) => self.on_binary(&b),
                Ok(Message::Close(f)) => {
                    self.closed = Some(f.map(|f| u16::from(f.code)));
                    return false;
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return true;
                }
                Err(_) => {
                    self.closed = Some(None);
                    return false;
                }
            }
        }
        true
    }

    fn on_text(&mut self, text: &str) {
        let f = VoicePayload::decode(text, DEFAULT_MAX_FRAME_LEN).expect("server JSON decodes");
        if let Some(s) = f.seq {
            self.seq = self.seq.max(s);
        }
        match f.payload {
            VoicePayload::Ready(r) => {
                self.ssrc = r.ssrc;
                self.server_udp = format!("{}:{}", r.ip, r.port).parse().ok();
                let port = self.udp.local_addr().expect("bound").port();
                self.send_json(&VoicePayload::SelectProtocol(SelectProtocol {
                    protocol: "udp".into(),
                    data: SelectProtocolData {
                        address: "127.0.0.1".into(),
                        port,
                        mode: "aead_aes256_gcm_rtpsize".into(),
                    },
                }));
            }
            VoicePayload::SessionDescription(d) => {
                self.key = Some(*d.secret_key.expose());
                self.mode = d.mode.parse().ok();
                self.dave_version = Some(d.dave_protocol_version);
                if d.dave_protocol_version > 0 {
                    self.dave = Some(
                        DaveSession::new(NonZeroU16::MIN, self.user, self.channel, None)
                            .expect("dave session"),
                    );
                    self.send_key_package();
                }
            }
            VoicePayload::ClientsConnect(c) => self.known.extend(c.user_ids.iter().map(|u| u.0)),
            VoicePayload::ClientDisconnect(c) => self.known.retain(|u| *u != c.user_id.0),
            VoicePayload::DavePrepareTransition(t) => {
                let dave = self.dave.as_mut().expect("DAVE op without a session");
                dave.prepare_transition(t.transition_id, t.protocol_version)
                    .expect("prepare");
                if t.transition_id != 0 {
                    self.send_json(&VoicePayload::DaveTransitionReady(DaveTransition {
                        transition_id: t.transition_id,
                    }));
                }
            }
            VoicePayload::DaveExecuteTransition(t) => {
                let dave = self.dave.as_mut().expect("DAVE op without a session");
                dave.execute_transition(t.transition_id).expect("execute");
                self.executed.push(t.transition_id);
                if self.pending_transition == Some(t.transition_id) {
                    self.pending_transition = None;
                }
            }
            VoicePayload::DavePrepareEpoch(e) if e.epoch == 1 => {
                self.restarts += 1;
                let dave = self.dave.as_mut().expect("DAVE op without a session");
                dave.reinit(NonZeroU16::MIN, self.user, self.channel, None)
                    .expect("reinit");
                self.send_key_package();
            }
            _ => {}
        }
    }

    fn on_binary(&mut self, bytes: &[u8]) {
        let f = BinaryFrame::parse_server(bytes, DEFAULT_MAX_FRAME_LEN).expect("v8 binary frame");
        let seq = f.seq.expect("server binary frames carry a seq");
        self.binary_seqs.push(seq);
        // The wire carries the low 16 bits; these tests stay far below 65536 messages.
        self.seq = self.seq.max(i64::from(seq));
        let recognized = self.recognized();
        let dave = self
            .dave
            .as_mut()
            .expect("binary DAVE op without a session");
        match f.op {
            op::DAVE_MLS_EXTERNAL_SENDER => {
                dave.set_external_sender(f.payload)
                    .expect("external sender parses");
                self.got_external_sender = true;
            }
            op::DAVE_MLS_PROPOSALS => {
                let kind = match f.payload[0] {
                    0 => ProposalsOperationType::APPEND,
                    _ => ProposalsOperationType::REVOKE,
                };
                // Like a real client, a member that just reset (op 31) may still get proposals
                // for the group it left; those fail and are dropped.
                let cw = match dave.process_proposals(kind, &f.payload[1..], Some(&recognized)) {
                    Ok(cw) => cw,
                    Err(e) => {
                        eprintln!("user {}: proposals dropped: {e}", self.user);
                        self.proposal_errors += 1;
                        None
                    }
                };
                if let Some(cw) = cw
                    && self.commits
                {
                    let mut bytes = cw.commit;
                    bytes.extend(cw.welcome.unwrap_or_default());
                    self.send_binary(op::DAVE_MLS_COMMIT_WELCOME, &bytes);
                    self.sent_commits.push(bytes);
                }
            }
            op::DAVE_MLS_ANNOUNCE_COMMIT_TRANSITION | op::DAVE_MLS_WELCOME => {
                let id = u16::from_be_bytes([f.payload[0], f.payload[1]]);
                let ok = if f.op == op::DAVE_MLS_WELCOME {
                    dave.process_welcome(&f.payload[2..], Some(&recognized))
                        .map(|()| true)
                        .map_err(|e| e.to_string())
                } else {
                    dave.process_commit(&f.payload[2..])
                        .map_err(|e| e.to_string())
                };
                match ok {
                    Ok(true) => {
                        dave.prepare_transition(id, 1).expect("prepare");
                        self.pending_transition = Some(id);
                        self.send_json(&VoicePayload::DaveTransitionReady(DaveTransition {
                            transition_id: id,
                        }));
                    }
                    Ok(false) => {}
                    Err(e) => {
                        eprintln!("user {}: commit/welcome failed: {e}", self.user);
                        self.fail_and_rejoin(id);
                    }
                }
            }
            other => panic!("unexpected server binary op {other}"),
        }
    }

    fn epoch(&self) -> u64 {
        self.dave
            .as_ref()
            .and_then(|d| d.epoch())
            .map_or(0, |e| e.as_u64())
    }

    fn members(&self) -> Vec<u64> {
        let mut ids = self
            .dave
            .as_ref()
            .and_then(|d| d.get_user_ids())
            .unwrap_or_default();
        ids.sort_unstable();
        ids
    }

    fn can_encrypt(&self) -> bool {
        self.dave.as_ref().is_some_and(|d| d.can_encrypt())
    }
}

/// Pumps every client until `done` holds.
fn pump_until(
    server: &Server,
    clients: &mut [&mut Client],
    what: &str,
    mut done: impl FnMut(&[&mut Client], &ServerStats) -> bool,
) {
    let deadline = Instant::now() + WAIT;
    loop {
        for c in clients.iter_mut() {
            c.pump();
        }
        let stats = server.stats();
        if done(clients, &stats) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: epochs {:?}, server {:?}, counters {:?}",
            clients.iter().map(|c| c.epoch()).collect::<Vec<_>>(),
            stats
                .calls
                .iter()
                .map(|c| c.dave.clone())
                .collect::<Vec<_>>(),
            stats.counters
        );
    }
}

fn dave_epoch(stats: &ServerStats) -> u64 {
    stats
        .calls
        .iter()
        .find(|c| c.guild_id == GUILD)
        .and_then(|c| c.dave.as_ref())
        .map_or(0, |d| d.epoch)
}

/// Every client and the server's observer agree on one epoch, the server counts `members`
/// (the observer included), and every client executed a transition into it.
fn converged(clients: &[&mut Client], stats: &ServerStats, members: usize) -> bool {
    let Some(d) = stats
        .calls
        .iter()
        .find(|c| c.guild_id == GUILD)
        .and_then(|c| c.dave.clone())
    else {
        return false;
    };
    let mut expected: Vec<u64> = clients.iter().map(|c| c.user).collect();
    expected.push(OBSERVER_USER_ID);
    expected.sort_unstable();
    d.epoch > 0
        && d.members == members
        && d.observer_epoch == d.epoch
        && d.roster_matches_observer == Some(true)
        && clients.iter().all(|c| {
            c.epoch() == d.epoch
                && c.pending_transition.is_none()
                && c.can_encrypt()
                && c.members() == expected
        })
}

fn form(server: &Server, clients: &mut [&mut Client]) {
    let n = clients.len() + 1;
    pump_until(server, clients, "the group to converge", |c, s| {
        converged(c, s, n)
    });
}

#[test]
fn two_then_three_members_reach_one_epoch_and_execute_transitions() {
    let server = server(DaveMode::Required);
    let mut a = Client::join(&server, 11, 1);
    form(&server, &mut [&mut a]);
    assert_eq!(a.dave_version, Some(1));
    assert!(
        a.known.contains(&OBSERVER_USER_ID),
        "observer announced in op 11"
    );
    let first = dave_epoch(&server.stats());
    assert_eq!(first, 1, "the first commit creates epoch 1");
    assert!(!a.executed.is_empty(), "op 22 executed");

    let mut b = Client::join(&server, 12, 1);
    form(&server, &mut [&mut a, &mut b]);
    let mut c = Client::join(&server, 13, 1);
    form(&server, &mut [&mut a, &mut b, &mut c]);
    let stats = server.stats();
    let d = stats.calls[0].dave.clone().expect("dave stats");
    assert_eq!(d.epoch, 3, "one commit per join");
    assert_eq!((d.members, d.protocol_version), (4, 1));
    assert_eq!(d.commits, 3);
    assert_eq!(stats.counters.dave_commits, 3);
    assert!(stats.counters.dave_key_packages >= 3);
    for cl in [&a, &b, &c] {
        assert!(cl.got_external_sender);
        assert!(cl.binary_seqs.windows(2).all(|w| w[0] < w[1]), "seqs rise");
    }
    // Every client holds the same group: the same epoch authenticator.
    let auth = |c: &Client| {
        c.dave
            .as_ref()
            .and_then(|d| d.get_epoch_authenticator())
            .map(|a| a.as_slice().to_vec())
    };
    assert_eq!(auth(&a), auth(&b));
    assert_eq!(auth(&b), auth(&c));
    assert!(format!("{}", stats.calls[0]).contains("E2EE: DAVE v1, epoch 3"));
    for cl in [&a, &b, &c] {
        assert_eq!(
            (cl.failures, cl.proposal_errors),
            (0, 0),
            "user {}",
            cl.user
        );
    }
}

#[test]
fn the_observer_commits_when_no_client_does() {
    trace();
    let server = Server::start(ServerConfig {
        dave_commit_timeout: Duration::from_millis(200),
        heartbeat_timeout_intervals: None,
        // Plain ws:// for the raw test clients (TLS may become the default).
        tls: false,
        ..ServerConfig::default()
    })
    .expect("server starts");
    let mut a = Client::join(&server, 101, 1);
    a.commits = false;
    form(&server, &mut [&mut a]);
    let mut b = Client::join(&server, 102, 1);
    b.commits = false;
    form(&server, &mut [&mut a, &mut b]);
    let stats = server.stats();
    assert_eq!(stats.counters.dave_commits, 0, "no client committed");
    let d = stats.calls[0].dave.clone().expect("dave stats");
    assert_eq!((d.epoch, d.commits, d.resets), (2, 2, 0));
}

#[test]
fn a_member_leaving_is_removed_in_a_new_epoch() {
    let server = server(DaveMode::Required);
    let mut a = Client::join(&server, 21, 1);
    let mut b = Client::join(&server, 22, 1);
    let mut c = Client::join(&server, 23, 1);
    form(&server, &mut [&mut a, &mut b, &mut c]);
    let before = dave_epoch(&server.stats());
    leave(&mut c);
    pump_until(
        &server,
        &mut [&mut a, &mut b],
        "the remove commit",
        |cl, s| dave_epoch(s) > before && converged(cl, s, 3),
    );
    assert!(!a.members().contains(&23));
    assert_eq!(dave_epoch(&server.stats()), before + 1);
}

fn leave(c: &mut Client) {
    c.ws.close(Some(tungstenite::protocol::CloseFrame {
        code: tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "".into(),
    }))
    .expect("close");
    let _ = c.ws.flush();
}

#[test]
fn a_blank_leaf_is_reused_and_its_new_holder_removed_correctly() {
    let server = server(DaveMode::Required);
    let mut a = Client::join(&server, 24, 1);
    let mut b = Client::join(&server, 25, 1);
    let mut c = Client::join(&server, 26, 1);
    form(&server, &mut [&mut a, &mut b, &mut c]);
    let start = dave_epoch(&server.stats());
    // A member leaves, a newcomer takes the blank leaf and leaves in turn, and another
    // one comes: every Remove must name the right leaf, or the clients' rosters would differ
    // from the server's.
    for newcomer in [27u64, 28] {
        leave(&mut b);
        form(&server, &mut [&mut a, &mut c]);
        b = Client::join(&server, newcomer, 1);
        form(&server, &mut [&mut a, &mut b, &mut c]);
    }
    assert!(a.members().contains(&28) && !a.members().contains(&27));
    let d = server.stats().calls[0].dave.clone().expect("dave stats");
    assert_eq!(
        (d.members, d.epoch),
        (4, start + 4),
        "one commit per leave and per join"
    );
}

#[test]
fn op31_removes_the_member_and_adds_it_back() {
    let server = server(DaveMode::Required);
    let mut a = Client::join(&server, 31, 1);
    let mut b = Client::join(&server, 32, 1);
    form(&server, &mut [&mut a, &mut b]);
    let before = dave_epoch(&server.stats());
    b.fail_and_rejoin(0);
    pump_until(&server, &mut [&mut a, &mut b], "the re-add", |cl, s| {
        dave_epoch(s) > before && converged(cl, s, 3)
    });
    assert_eq!(b.failures, 1);
    assert!(a.members().contains(&32));
}

#[test]
fn clients_without_dave_are_closed_4017_when_required_and_accepted_when_optional() {
    let required = server(DaveMode::Required);
    let mut plain = Client::join(&required, 41, 0);
    while plain.pump() {}
    assert_eq!(plain.closed, Some(Some(4017)));
    assert_eq!(required.stats().counters.identifies, 0);

    let optional = server(DaveMode::Optional);
    let mut plain = Client::join(&optional, 42, 0);
    let mut e2ee = Client::join(&optional, 43, 1);
    pump_until(
        &optional,
        &mut [&mut plain, &mut e2ee],
        "both sessions",
        |c, _| c.iter().all(|c| c.dave_version.is_some()),
    );
    assert_eq!(plain.dave_version, Some(0));
    assert_eq!(e2ee.dave_version, Some(1));
    form(&optional, &mut [&mut e2ee]);
    plain.pump();
    assert!(plain.dave.is_none() && plain.binary_seqs.is_empty());

    let off = server(DaveMode::Off);
    let mut c = Client::join(&off, 44, 1);
    pump_until(&off, &mut [&mut c], "session description", |c, _| {
        c[0].dave_version.is_some()
    });
    assert_eq!(c.dave_version, Some(0), "off behaves like a stage channel");
    assert!(!c.known.contains(&OBSERVER_USER_ID));
}

#[test]
fn garbage_binary_frames_close_4002_and_the_server_keeps_serving() {
    // Closed sessions stay resumable (and in the group) only briefly here.
    trace();
    let server = Server::start(ServerConfig {
        resume_window: Duration::from_millis(100),
        heartbeat_timeout_intervals: None,
        // Plain ws:// for the raw test clients (TLS may become the default).
        tls: false,
        ..ServerConfig::default()
    })
    .expect("server starts");
    let garbage: Vec<Vec<u8>> = vec![
        vec![op::DAVE_MLS_KEY_PACKAGE, 0, 1, 2, 3],
        vec![op::DAVE_MLS_COMMIT_WELCOME, 0, 1, 0, 1, 0xff],
        vec![],
        vec![op::DAVE_MLS_EXTERNAL_SENDER, 1, 2],
    ];
    for (i, g) in garbage.iter().enumerate() {
        let mut c = Client::join(&server, 50 + i as u64, 1);
        pump_until(&server, &mut [&mut c], "external sender", |c, _| {
            c[0].got_external_sender
        });
        let _ = c.ws.send(Message::binary(g.clone()));
        while c.pump() {}
        assert_eq!(c.closed, Some(Some(4002)), "frame {g:?}");
    }
    // A key package for somebody else is refused too.
    let mut c = Client::join(&server, 60, 1);
    pump_until(&server, &mut [&mut c], "external sender", |c, _| {
        c[0].got_external_sender
    });
    let mut other = DaveSession::new(NonZeroU16::MIN, 61, CHANNEL, None).expect("session");
    let kp = other.create_key_package().expect("kp");
    c.send_binary(op::DAVE_MLS_KEY_PACKAGE, &kp);
    while c.pump() {}
    assert_eq!(c.closed, Some(Some(4002)));
    assert_eq!(server.stats().counters.dave_bad_frames, 5);

    let mut a = Client::join(&server, 70, 1);
    let mut b = Client::join(&server, 71, 1);
    form(&server, &mut [&mut a, &mut b]);
}

#[test]
fn resume_mid_epoch_replays_binary_frames_and_keeps_membership() {
    let server = server(DaveMode::Required);
    let mut a = Client::join(&server, 81, 1);
    let mut b = Client::join(&server, 82, 1);
    form(&server, &mut [&mut a, &mut b]);
    let before = dave_epoch(&server.stats());
    // B's connection drops without a close frame; C joins meanwhile.
    let seq_ack = b.seq;
    if let MaybeTlsStream::Plain(s) = b.ws.get_ref() {
        s.shutdown(std::net::Shutdown::Both).expect("shutdown");
    }
    b.closed = Some(None);
    let mut c = Client::join(&server, 83, 1);
    pump_until(&server, &mut [&mut a, &mut c], "C's commit", |_, s| {
        dave_epoch(s) > before
    });
    b.ws = connect_ws(&server);
    b.closed = None;
    b.binary_seqs.clear();
    b.send_json(&VoicePayload::Resume(Resume {
        server_id: Snowflake(GUILD),
        session_id: b.session_id.clone(),
        token: b.token.clone(),
        seq_ack,
    }));
    form(&server, &mut [&mut a, &mut b, &mut c]);
    assert_eq!(server.stats().counters.resumes, 1);
    let first = *b.binary_seqs.first().expect("replayed binary frames");
    assert!(i64::from(first) > seq_ack, "only what B missed is replayed");
    assert_eq!(dave_epoch(&server.stats()), before + 1);
}

#[test]
fn e2ee_audio_is_decrypted_by_the_observer_and_forwarded_unchanged() {
    let server = server(DaveMode::Required);
    let mut a = Client::join(&server, 91, 1);
    let mut b = Client::join(&server, 92, 1);
    form(&server, &mut [&mut a, &mut b]);
    let mode = a.mode.expect("mode");
    let mut sealer = Sealer::new(mode, &SecretKey::new(a.key.expect("key")));
    let mut rtp = RtpStream::new(a.ssrc);
    let enc = Encoder::new(SampleRate::Hz48000, Channels::Stereo, Application::Audio)
        .expect("opus encoder");
    let to: SocketAddr = server.udp_addr();
    let frames = 50;
    let mut sent_opus = Vec::new();
    let mut pcm = [0i16; 960 * 2];
    let mut opus = [0u8; 1400];
    let mut buf = [0u8; 1500];
    for f in 0..frames {
        for i in 0..960 {
            let t = (f * 960 + i) as f64 / 48_000.0;
            let v = (0.4 * (2.0 * std::f64::consts::PI * 440.0 * t).sin() * 32767.0) as i16;
            pcm[2 * i] = v;
            pcm[2 * i + 1] = v;
        }
        let n = enc.encode(&pcm, &mut opus).expect("opus");
        let e2ee = a
            .dave
            .as_mut()
            .expect("session")
            .encrypt_opus(&opus[..n])
            .expect("DAVE encrypt")
            .into_owned();
        assert_eq!(&e2ee[e2ee.len() - 2..], &[0xFA, 0xFA]);
        sent_opus.push(opus[..n].to_vec());
        let h = rtp.write_next(&mut buf).expect("header");
        buf[h..h + e2ee.len()].copy_from_slice(&e2ee);
        let len = sealer.seal(&mut buf, h, e2ee.len()).expect("seal");
        a.udp.send_to(&buf[..len], to).expect("send");
        // A little pacing so the loopback buffer never overflows.
        std::thread::sleep(Duration::from_millis(2));
    }
    let deadline = Instant::now() + WAIT;
    let s = loop {
        if let Some(s) = server.stream_stats(a.ssrc)
            && s.dave_frames + s.dave_undecryptable >= frames as u64
        {
            break s;
        }
        assert!(Instant::now() < deadline, "stats: {:?}", server.stats());
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!((s.dave_frames, s.dave_undecryptable), (frames as u64, 0));
    assert_eq!(
        (s.packets, s.lost, s.decode_errors),
        (frames as u64, 0, Some(0))
    );
    assert_eq!(s.decoded_samples, Some(frames as u64 * 960));

    // B gets the E2EE frames unchanged (re-sealed for B) and opens them with its own session.
    let cipher = TransportCipher::new(b.mode.expect("mode"), &SecretKey::new(b.key.expect("key")));
    b.udp
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut out = [0u8; 2048];
    for expected in &sent_opus {
        let (n, _) = b.udp.recv_from(&mut buf).expect("forwarded packet");
        let r = receive::open_rtp(&cipher, &buf[..n], &mut out).expect("sealed for B");
        assert_eq!(r.ssrc, a.ssrc);
        let plain = b
            .dave
            .as_mut()
            .expect("session")
            .decrypt(91, MediaType::AUDIO, r.payload)
            .expect("B decrypts A's frame");
        assert_eq!(&plain, expected);
    }
}

/// Mutated and truncated real op 26 / op 28 payloads: errors, never panics.
#[test]
fn key_package_and_commit_parsers_survive_mutations() {
    use quaver_tools::server::dave::{parse_commit_welcome, parse_key_package};
    let server = server(DaveMode::Required);
    let mut a = Client::join(&server, 111, 1);
    let mut b = Client::join(&server, 112, 1);
    form(&server, &mut [&mut a, &mut b]);
    let commit = a
        .sent_commits
        .iter()
        .chain(&b.sent_commits)
        .find(|c| parse_commit_welcome(c).is_ok_and(|cw| cw.welcome.is_some()))
        .expect("a real commit with a welcome")
        .clone();
    let cw = parse_commit_welcome(&commit).expect("parses");
    assert_eq!(cw.parsed.group_id, CHANNEL.to_be_bytes());
    assert!(!cw.parsed.refs.is_empty());
    let kp = a
        .dave
        .as_mut()
        .expect("session")
        .create_key_package()
        .expect("kp");
    assert!(parse_key_package(&kp, 111).is_ok());
    assert!(
        parse_key_package(&kp, 112).is_err(),
        "someone else's identity"
    );

    for n in 0..commit.len() {
        let _ = parse_commit_welcome(&commit[..n]);
    }
    for n in 0..kp.len() {
        assert!(
            parse_key_package(&kp[..n], 111).is_err(),
            "truncated at {n}"
        );
    }
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..3000 {
        let mut c = commit.clone();
        let mut k = kp.clone();
        for _ in 0..1 + next() % 3 {
            let i = next() as usize % c.len();
            c[i] = next() as u8;
            let j = next() as usize % k.len();
            k[j] = next() as u8;
        }
        let _ = parse_commit_welcome(&c);
        // A key package is signed: any change to it must be refused.
        if k != kp {
            assert!(parse_key_package(&k, 111).is_err());
        }
    }
}

/// `quaver serve --json` (default: DAVE required) reports the DAVE group and the decrypted
/// frames; credentials it did not issue put the session in channel 0 of the guild.
#[test]
fn quaver_serve_json_reports_dave() {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_quaver"))
        // --plain: this hand-made client speaks ws:// (TLS is the default).
        .args(["serve", "--json", "--plain", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn quaver serve");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, lines) = crossbeam_channel::unbounded();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let next_line = || lines.recv_timeout(WAIT).expect("a line from quaver serve");
    next_line();
    let voice = next_line();
    let url = voice
        .trim()
        .strip_prefix("voice gateway ")
        .expect("second line names the voice gateway")
        .to_string();
    let join = |user: u64| {
        Client::connect(
            connect_url(&url),
            user,
            // Credentials the server did not issue: channel 0 (the MLS group ID).
            0,
            format!("s{user}").into(),
            Token::new("t"),
            1,
        )
    };
    let mut a = join(121);
    let mut b = join(122);
    let deadline = Instant::now() + WAIT;
    while !(a.can_encrypt()
        && b.can_encrypt()
        && a.epoch() == b.epoch()
        && a.pending_transition.is_none()
        && b.pending_transition.is_none()
        && a.members().len() == 3)
    {
        a.pump();
        b.pump();
        assert!(Instant::now() < deadline, "group formed");
    }
    let epoch = a.epoch();
    let mode = a.mode.expect("mode");
    let mut sealer = Sealer::new(mode, &SecretKey::new(a.key.expect("key")));
    let mut rtp = RtpStream::new(a.ssrc);
    let server_udp = a.server_udp.expect("Ready's address");
    let mut buf = [0u8; 1500];
    for _ in 0..10 {
        // A valid Opus packet: one 20 ms CELT silence frame code.
        let e2ee = a
            .dave
            .as_mut()
            .expect("session")
            .encrypt_opus(&[0xFC, 0xFF, 0xFE, 0x00])
            .expect("encrypt")
            .into_owned();
        let h = rtp.write_next(&mut buf).expect("header");
        buf[h..h + e2ee.len()].copy_from_slice(&e2ee);
        let len = sealer.seal(&mut buf, h, e2ee.len()).expect("seal");
        a.udp.send_to(&buf[..len], server_udp).expect("send");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(300));
    leave(&mut a);
    leave(&mut b);
    let report: serde_json::Value = loop {
        let line = next_line();
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
            && v["ended"] == true
        {
            break v;
        }
    };
    let dave = &report["dave"];
    assert_eq!(dave["channel_id"], 0);
    assert_eq!(dave["protocol_version"], 1);
    assert_eq!(dave["epoch"], epoch);
    let stream = &report["streams"][0];
    assert_eq!(stream["dave_frames"], 10);
    assert_eq!(stream["dave_undecryptable"], 0);
    // SAFETY: kill(2) on the child this test spawned.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    assert!(child.wait().expect("exits").success());
}

/// Without the observer, the clients keep the group alone; a member left alone gets the sole
/// member reset (op 24 epoch 1 + op 21 transition 0) and forms a new group with the next one.
#[test]
fn without_observer_a_sole_member_is_reset_and_regroups() {
    trace();
    let server = Server::start(ServerConfig {
        dave_observer: false,
        heartbeat_timeout_intervals: None,
        // Plain ws:// for the raw test clients (TLS may become the default).
        tls: false,
        ..ServerConfig::default()
    })
    .expect("server starts");
    let mut a = Client::join(&server, 131, 1);
    let mut b = Client::join(&server, 132, 1);
    let pair = |cl: &[&mut Client], s: &ServerStats, users: [u64; 2]| {
        let d = s.calls.first().and_then(|c| c.dave.clone());
        d.is_some_and(|d| d.epoch > 0 && d.members == 2 && d.roster_matches_observer.is_none())
            && cl.iter().all(|c| {
                c.epoch() == dave_epoch(s)
                    && c.pending_transition.is_none()
                    && c.can_encrypt()
                    && c.members() == users.to_vec()
            })
    };
    pump_until(&server, &mut [&mut a, &mut b], "a group of two", |cl, s| {
        pair(cl, s, [131, 132])
    });
    assert!(!a.known.contains(&OBSERVER_USER_ID));
    leave(&mut b);
    pump_until(&server, &mut [&mut a], "the sole member reset", |cl, s| {
        cl[0].restarts == 1 && dave_epoch(s) == 0
    });
    let mut c = Client::join(&server, 133, 1);
    pump_until(&server, &mut [&mut a, &mut c], "a new group", |cl, s| {
        pair(cl, s, [131, 133])
    });
    let d = server.stats().calls[0].dave.clone().expect("dave stats");
    assert_eq!((d.epoch, d.resets), (1, 1));
}

/// A commit replayed in a later epoch is ignored (counted), never fatal.
#[test]
fn stale_commits_are_ignored_and_counted() {
    let server = server(DaveMode::Required);
    let mut a = Client::join(&server, 141, 1);
    let mut b = Client::join(&server, 142, 1);
    form(&server, &mut [&mut a, &mut b]);
    let sent: Vec<Vec<u8>> = a
        .sent_commits
        .iter()
        .chain(&b.sent_commits)
        .cloned()
        .collect();
    assert!(!sent.is_empty(), "clients committed");
    let before = server.stats();
    for c in &sent {
        a.send_binary(op::DAVE_MLS_COMMIT_WELCOME, c);
    }
    let epoch = dave_epoch(&before);
    pump_until(
        &server,
        &mut [&mut a, &mut b],
        "the replays counted",
        |_, s| {
            s.counters.dave_ignored_commits
                >= before.counters.dave_ignored_commits + sent.len() as u64
        },
    );
    let after = server.stats();
    assert_eq!(dave_epoch(&after), epoch);
    assert_eq!(after.counters.dave_commits, before.counters.dave_commits);
    assert!(
        a.closed.is_none(),
        "a stale commit is not a reason to close"
    );
}

/// Optional mode: E2EE frames reach DAVE receivers only; plain Opus reaches everyone.
#[test]
fn optional_mode_keeps_e2ee_frames_from_receivers_without_dave() {
    let server = server(DaveMode::Optional);
    let mut a = Client::join(&server, 151, 1);
    let mut b = Client::join(&server, 152, 1);
    let mut plain = Client::join(&server, 153, 0);
    form(&server, &mut [&mut a, &mut b]);
    pump_until(&server, &mut [&mut plain], "plain session", |c, _| {
        c[0].dave_version == Some(0)
    });
    let mode = a.mode.expect("mode");
    let mut sealer = Sealer::new(mode, &SecretKey::new(a.key.expect("key")));
    let mut rtp = RtpStream::new(a.ssrc);
    let to = a.server_udp.expect("Ready's address");
    let mut buf = [0u8; 1500];
    let opus = [0xFCu8, 0xFF, 0xFE, 0x01];
    for i in 0..10 {
        let frame = if i % 2 == 0 {
            a.dave
                .as_mut()
                .expect("session")
                .encrypt_opus(&opus)
                .expect("encrypt")
                .into_owned()
        } else {
            opus.to_vec()
        };
        let h = rtp.write_next(&mut buf).expect("header");
        buf[h..h + frame.len()].copy_from_slice(&frame);
        let len = sealer.seal(&mut buf, h, frame.len()).expect("seal");
        a.udp.send_to(&buf[..len], to).expect("send");
        std::thread::sleep(Duration::from_millis(2));
    }
    let count = |c: &Client, want: usize| {
        let cipher =
            TransportCipher::new(c.mode.expect("mode"), &SecretKey::new(c.key.expect("key")));
        c.udp
            .set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        let (mut b, mut out) = ([0u8; 2048], [0u8; 2048]);
        let mut got = Vec::new();
        while got.len() < want {
            let Ok((n, _)) = c.udp.recv_from(&mut b) else {
                break;
            };
            let r = receive::open_rtp(&cipher, &b[..n], &mut out).expect("sealed for us");
            got.push(r.payload.len() > opus.len());
        }
        got
    };
    let to_b = count(&b, 10);
    assert_eq!(
        to_b.iter().filter(|e| **e).count(),
        5,
        "B gets the E2EE frames"
    );
    assert_eq!(to_b.len(), 10);
    // The plain client gets the 5 plain frames and nothing else (a short wait for strays).
    let to_plain = count(&plain, 6);
    assert_eq!(to_plain, vec![false; 5]);
    let s = server.stream_stats(a.ssrc).expect("stream");
    assert_eq!((s.dave_frames, s.dave_undecryptable), (5, 0));
}

#[test]
fn inputs_that_panicked_openmls_are_refused() {
    // Found by the mutation test above and by the server_dave fuzz target: openmls 0.8.3's
    // `tls_deserialize_bytes` re-serialises what it decoded to find where it ended and slices
    // out of range when that disagrees with the input (in a key package's extensions, in an
    // MLSMessage). The parsers now use the `Read` decoders, which cannot; `dave::untrusted`
    // still turns any other openmls panic into an error. Before, these took the connection's
    // thread down.
    use quaver_tools::server::dave::{parse_commit_welcome, parse_key_package};
    let key_package = include_bytes!("fixtures/key_package_panicking_openmls.bin");
    assert!(parse_key_package(key_package, 111).is_err());
    let commit = include_bytes!("fixtures/commit_panicking_openmls.bin");
    assert!(parse_commit_welcome(commit).is_err());
}
