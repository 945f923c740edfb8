//! The voice gateway (v8, and v4–v7 with their older framing), server side: one thread per
//! websocket.

use std::io::Write as _;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quaver_gateway::protocol::{
    self, ClientsConnect, Hello, Identify, Ready, Resume, SelectProtocol, SessionDescription,
    Speaking, SpeakingFlags, VoicePayload, close_code,
};
use quaver_net::crypto::{EncryptionMode, Sealer, SecretKey, TransportCipher};
use tungstenite::Message;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use zeroize::Zeroize;

use super::framing::{Framing, heartbeat_nonce};
use super::tls::Ws;
use super::wake::{self, Mailbox, Wake, Wakeup};
use super::{CallKey, Outgoing, ServerEvent, Session, Shared};

/// How long to wait for the client's answer to a close frame before dropping the socket.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// The longest a connection thread sleeps with nothing to do.
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// How long a read waits for the rest of a frame, or for another after one: the thread sleeps
/// in poll(2) otherwise, so this only bounds how long a read can hold up queued frames.
const READ_SLICE: Duration = Duration::from_millis(1);

struct Conn<'a> {
    shared: &'a Shared,
    framing: Framing,
    generation: u64,
    mailbox: Mailbox,
    rx: crossbeam_channel::Receiver<Outgoing>,
    wake: Arc<Wake>,
    /// The session this socket serves, once identified or resumed.
    session: Option<u64>,
    closing_since: Option<Instant>,
    /// The client closed with 1000/1001: it is leaving, the session ends.
    client_left: bool,
    last_heartbeat: Instant,
}

/// Serves one voice websocket until it closes.
pub(crate) fn serve(mut ws: Ws, framing: Framing, shared: &Shared) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let wake = Arc::new(Wake::new());
    ws.get_ref().set_read_timeout(READ_SLICE);
    let mut c = Conn {
        shared,
        framing,
        generation: shared
            .ws_generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1,
        mailbox: Mailbox::new(tx, Arc::clone(&wake)),
        rx,
        wake,
        session: None,
        closing_since: None,
        client_left: false,
        last_heartbeat: Instant::now(),
    };
    // Hello goes out on connect, as Discord does; the client accepts Hello and Ready in either
    // order, and a resuming client waits for Hello then Resumed.
    let hello = VoicePayload::Hello(Hello {
        heartbeat_interval: shared.config.heartbeat_interval_ms,
        v: Some(framing.version()),
    });
    if send_payload(&mut ws, &hello).is_ok() {
        run(&mut ws, &mut c);
    }
    detach(&mut c);
}

fn send_payload(ws: &mut Ws, p: &VoicePayload) -> tungstenite::Result<()> {
    // Invariant: server payloads are plain structs that always serialise.
    let text = p.encode(None).expect("server payloads encode");
    ws.send(Message::text(text))
}

fn run(ws: &mut Ws, c: &mut Conn<'_>) {
    // Whether tungstenite or rustls may hold a message already read off the socket, which
    // poll(2) cannot see: until a read finds nothing, read rather than wait.
    let mut maybe_buffered = true;
    loop {
        if c.shared.stopped() && c.closing_since.is_none() {
            start_close(ws, c, 1001);
        }
        if let Some(since) = c.closing_since
            && since.elapsed() > CLOSE_GRACE
        {
            return;
        }
        if !maybe_buffered {
            let socket = ws.get_ref().raw_fd();
            match wake::wait(socket, &c.wake, next_check(c)) {
                Wakeup::Socket => maybe_buffered = true,
                Wakeup::Woken | Wakeup::TimedOut => {
                    if !drain(ws, c) {
                        return;
                    }
                    check_heartbeat(ws, c);
                    inject_faults(ws, c);
                    continue;
                }
            }
        }
        match ws.read() {
            Ok(Message::Text(text)) => {
                if c.closing_since.is_none() {
                    on_text(ws, c, text.as_str());
                }
            }
            Ok(Message::Binary(bytes)) => {
                c.shared.lock().counters.binary_frames += 1;
                if c.closing_since.is_none() {
                    on_binary(ws, c, &bytes);
                }
            }
            Ok(Message::Close(frame)) => {
                let code = frame.map(|f| u16::from(f.code));
                tracing::debug!(?code, "client closed the voice websocket");
                c.client_left = matches!(code, Some(1000 | 1001));
                let _ = ws.flush();
                c.closing_since.get_or_insert_with(Instant::now);
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if super::read_timed_out(&e) => maybe_buffered = false,
            Err(tungstenite::Error::Capacity(e)) => {
                tracing::debug!(error = %e, "oversized voice frame");
                c.shared.lock().counters.oversized_frames += 1;
                start_close(ws, c, close_code::DECODE_FAILURE);
                return;
            }
            Err(tungstenite::Error::Utf8(_)) => {
                c.shared.lock().counters.bad_json += 1;
                start_close(ws, c, close_code::DECODE_FAILURE);
            }
            Err(e) => {
                tracing::debug!(error = %e, "voice websocket ended");
                return;
            }
        }
        if !drain(ws, c) {
            return;
        }
        check_heartbeat(ws, c);
        inject_faults(ws, c);
    }
}

/// How long the thread may sleep when nothing arrives: until the heartbeat deadline, the end of
/// the close grace, or (with fault injection on) the next look at the fault timers; at most
/// [`IDLE_CHECK`], which also bounds how long a stopping server waits for a socket that has
/// no session to be told through.
fn next_check(c: &Conn<'_>) -> Duration {
    let config = &c.shared.config;
    let mut wait = IDLE_CHECK;
    if let Some(since) = c.closing_since {
        wait = wait.min(CLOSE_GRACE.saturating_sub(since.elapsed()));
    } else if let Some(limit) = heartbeat_limit(c) {
        wait = wait.min(limit.saturating_sub(c.last_heartbeat.elapsed()));
    }
    if config.faults.close_code.is_some() || config.faults.drop_ws_after.is_some() {
        wait = wait.min(config.ws_poll_interval);
    }
    // Past a deadline, one more millisecond lets `elapsed() > limit` hold when checked.
    wait + Duration::from_millis(1)
}

/// Sends what other threads queued for this socket. False when the socket must go.
fn drain(ws: &mut Ws, c: &mut Conn<'_>) -> bool {
    while let Ok(out) = c.rx.try_recv() {
        if c.closing_since.is_some() {
            continue;
        }
        match out {
            Outgoing::Text(t) => {
                if ws.send(Message::text(t)).is_err() {
                    return false;
                }
            }
            Outgoing::Binary(b) => {
                if ws.send(Message::binary(b)).is_err() {
                    return false;
                }
            }
            // `ws.send` flushed the op 5 queued before this marker: now the SSRC's packets.
            Outgoing::Mapped(ssrc) => release_held(c, ssrc),
            Outgoing::Close(code) => start_close(ws, c, code),
            Outgoing::Drop => {
                ws.get_ref().shutdown();
                return false;
            }
        }
    }
    true
}

/// The op 5 naming `ssrc` is on the wire: forward the packets of `ssrc` held for this session,
/// and let the UDP thread forward the rest directly.
fn release_held(c: &mut Conn<'_>, ssrc: u32) {
    let Some(id) = c.session else { return };
    let (peer, held) = {
        let mut reg = c.shared.lock();
        let Some(s) = reg.sessions.get_mut(&id) else {
            return;
        };
        s.mapped.insert(ssrc);
        s.announced.remove(&ssrc);
        (s.udp_peer, s.pending.remove(&ssrc).unwrap_or_default())
    };
    let Some(peer) = peer else { return };
    let mut sent = 0;
    for packet in &held {
        if c.shared.udp.send_to(packet, peer).is_ok() {
            sent += 1;
        }
    }
    if sent > 0 {
        c.shared.lock().counters.forwarded += sent;
    }
}

fn start_close(ws: &mut Ws, c: &mut Conn<'_>, code: u16) {
    if c.closing_since.is_some() {
        return;
    }
    c.shared.lock().counters.closes_sent += 1;
    tracing::debug!(code, "closing voice websocket");
    let _ = ws.close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: "".into(),
    }));
    let _ = ws.flush();
    c.closing_since = Some(Instant::now());
}

/// How long a client may go without a heartbeat, when the server checks.
fn heartbeat_limit(c: &Conn<'_>) -> Option<Duration> {
    let config = &c.shared.config;
    let n = config.heartbeat_timeout_intervals?;
    Some(Duration::from_secs_f64(
        (config.heartbeat_interval_ms * n / 1000.0).max(0.001),
    ))
}

fn check_heartbeat(ws: &mut Ws, c: &mut Conn<'_>) {
    let Some(limit) = heartbeat_limit(c) else {
        return;
    };
    if c.closing_since.is_none() && c.last_heartbeat.elapsed() > limit {
        tracing::info!(session = ?c.session, "no heartbeat in time; closing with 4009");
        c.shared.lock().counters.heartbeat_timeouts += 1;
        start_close(ws, c, close_code::SESSION_TIMEOUT);
    }
}

fn inject_faults(ws: &mut Ws, c: &mut Conn<'_>) {
    let faults = &c.shared.config.faults;
    if faults.close_code.is_none() && faults.drop_ws_after.is_none() {
        return;
    }
    let Some(id) = c.session else { return };
    let mut close = None;
    {
        let mut reg = c.shared.lock();
        let Some(s) = reg.sessions.get(&id) else {
            return;
        };
        let Some(at) = s.established_at else { return };
        let who = (s.guild_id, s.user_id);
        // Once per user rather than per session: a client that reconnects after the close
        // gets a working session, instead of a close after every handshake.
        if let Some(code) = faults.close_code
            && !reg.close_faulted.contains(&who)
        {
            reg.close_faulted.insert(who);
            close = Some(code);
        } else if let Some(after) = faults.drop_ws_after
            && !s.dropped_once
            && at.elapsed() >= after
        {
            if let Some(s) = reg.sessions.get_mut(&id) {
                s.dropped_once = true;
            }
            reg.counters.injected_drops += 1;
            drop(reg);
            tracing::info!(
                session = id,
                "fault injection: dropping the voice websocket"
            );
            ws.get_ref().shutdown();
            return;
        }
    }
    if let Some(code) = close {
        tracing::info!(
            session = id,
            code,
            "fault injection: closing the voice session"
        );
        start_close(ws, c, code);
    }
}

/// The socket is gone: the session stays resumable for the resume window, unless the client
/// said it was leaving.
fn detach(c: &mut Conn<'_>) {
    let Some(id) = c.session else { return };
    let mut reg = c.shared.lock();
    if c.client_left {
        reg.end_session(id, c.shared);
        return;
    }
    if let Some(s) = reg.sessions.get_mut(&id)
        && s.outbox.as_ref().is_some_and(|(g, _)| *g == c.generation)
    {
        s.outbox = None;
        s.detached_at = Some(Instant::now());
    }
}

/// Opcodes only a server sends: a client sending one is a client bug (4001), whatever its `d`.
fn server_only(op: u64) -> bool {
    matches!(
        op,
        2 | 4 | 6 | 8 | 9 | 11 | 13 | 21 | 22 | 24 | 25 | 27 | 29 | 30
    )
}

fn on_text(ws: &mut Ws, c: &mut Conn<'_>, text: &str) {
    let value = serde_json::from_str::<serde_json::Value>(text).ok();
    // Heartbeats first: older clients send the bare nonce, which the typed decoder refuses.
    if let Some(nonce) = value.as_ref().and_then(heartbeat_nonce) {
        c.last_heartbeat = Instant::now();
        let _ = ws.send(Message::text(c.framing.heartbeat_ack(nonce)));
        return;
    }
    let op = value
        .as_ref()
        .and_then(|v| v.get("op").and_then(serde_json::Value::as_u64));
    if op.is_some_and(server_only) {
        tracing::debug!(?op, "server-only opcode from a client");
        c.shared.lock().counters.unknown_opcodes += 1;
        return start_close(ws, c, close_code::UNKNOWN_OPCODE);
    }
    let frame = match VoicePayload::decode(text, c.shared.config.max_message_size) {
        Ok(f) => f,
        Err(e) => {
            tracing::debug!(error = %e, "undecodable voice payload");
            c.shared.lock().counters.bad_json += 1;
            return start_close(ws, c, close_code::DECODE_FAILURE);
        }
    };
    match frame.payload {
        VoicePayload::Heartbeat(h) => {
            c.last_heartbeat = Instant::now();
            let _ = ws.send(Message::text(c.framing.heartbeat_ack(h.t)));
        }
        VoicePayload::Identify(id) if c.session.is_none() => identify(ws, c, id),
        VoicePayload::Resume(r) if c.session.is_none() => resume(ws, c, r),
        VoicePayload::Identify(_) | VoicePayload::Resume(_) => {
            start_close(ws, c, close_code::ALREADY_AUTHENTICATED)
        }
        VoicePayload::SelectProtocol(_) | VoicePayload::Speaking(_) if c.session.is_none() => {
            start_close(ws, c, close_code::NOT_AUTHENTICATED)
        }
        VoicePayload::SelectProtocol(sp) => select_protocol(ws, c, sp),
        VoicePayload::Speaking(s) => speaking(c, s),
        p @ (VoicePayload::DaveTransitionReady(_)
        | VoicePayload::DaveMlsInvalidCommitWelcome(_)) => {
            if let Some(key) = c.session {
                super::dave::on_json(c.shared, key, &p);
            }
        }
        other => {
            tracing::debug!(op = other.op(), "unexpected opcode from a client");
            c.shared.lock().counters.unknown_opcodes += 1;
            start_close(ws, c, close_code::UNKNOWN_OPCODE)
        }
    }
}

fn credentials_ok(
    c: &Conn<'_>,
    reg: &super::Registry,
    guild: u64,
    user: u64,
    session_id: &str,
    token: &str,
) -> bool {
    match reg.issued.get(&(guild, user)) {
        Some(i) => i.session_id == session_id && i.token.expose() == token,
        None => !c.shared.config.require_issued_tokens,
    }
}

fn identify(ws: &mut Ws, c: &mut Conn<'_>, id: Identify) {
    let shared = c.shared;
    let cap = shared.config.replay_buffer;
    let (guild, user) = (id.server_id.0, id.user_id.0);
    let mut reg = shared.lock();
    if !credentials_ok(
        c,
        &reg,
        guild,
        user,
        id.session_id.expose(),
        id.token.expose(),
    ) {
        drop(reg);
        tracing::info!(
            guild,
            user,
            "voice identify with a token the server did not issue"
        );
        return start_close(ws, c, close_code::AUTHENTICATION_FAILED);
    }
    let dave_version =
        match super::dave::negotiate(shared.config.dave, id.max_dave_protocol_version) {
            Ok(v) => v,
            Err(code) => {
                drop(reg);
                tracing::info!(
                    guild,
                    user,
                    "voice identify without DAVE; closing with {code}"
                );
                return start_close(ws, c, code);
            }
        };
    reg.counters.identifies += 1;
    // The channel is the one the credentials were issued for (op 4); credentials the server
    // did not issue (allowed unless `require_issued_tokens`) land in channel 0.
    let channel = reg
        .issued
        .get(&(guild, user))
        .map_or(0, |issued| issued.channel_id);
    let call = CallKey {
        guild_id: guild,
        channel_id: channel,
    };
    // A user is in one channel per guild: a fresh Identify replaces their previous session.
    reg.end_sessions_of(guild, user, shared);
    let ssrc = reg.fresh_ssrc();
    reg.next_session += 1;
    let key = reg.next_session;
    let others: Vec<(u64, u32, u32)> = reg
        .call_members(call)
        .iter()
        .filter_map(|k| reg.sessions.get(k))
        .map(|s| (s.user_id, s.ssrc, s.speaking))
        .collect();
    let mut session = Session {
        guild_id: guild,
        channel_id: channel,
        framing: c.framing,
        dave_version,
        user_id: user,
        session_id: id.session_id.expose().to_string(),
        token: id.token.clone(),
        ssrc,
        mode: None,
        cipher: None,
        sealer: None,
        udp_peer: None,
        seq: 0,
        replay: Default::default(),
        outbox: Some((c.generation, c.mailbox.clone())),
        detached_at: None,
        speaking: 0,
        established_at: None,
        dropped_once: false,
        held: None,
        mapped: Default::default(),
        announced: Default::default(),
        pending: Default::default(),
    };
    session.push(
        &VoicePayload::Ready(Ready {
            ssrc,
            ip: shared.udp_addr.ip().to_string(),
            port: shared.udp_addr.port(),
            modes: shared
                .config
                .modes
                .iter()
                .map(|m| m.as_str().to_string())
                .collect(),
        }),
        cap,
    );
    if !others.is_empty() {
        session.push(
            &VoicePayload::ClientsConnect(ClientsConnect {
                user_ids: others.iter().map(|o| o.0.into()).collect(),
            }),
            cap,
        );
        for (other_user, other_ssrc, flags) in &others {
            if *flags != 0 {
                session.tell_speaking(
                    Speaking {
                        speaking: SpeakingFlags(*flags),
                        ssrc: *other_ssrc,
                        delay: None,
                        user_id: Some((*other_user).into()),
                    },
                    cap,
                );
            }
        }
    }
    if dave_version > 0 && shared.config.dave_observer {
        // The server's own group member, announced like a user so DAVE clients accept its Add.
        session.push(
            &VoicePayload::ClientsConnect(ClientsConnect {
                user_ids: vec![super::dave::OBSERVER_USER_ID.into()],
            }),
            cap,
        );
    }
    let joined = VoicePayload::ClientsConnect(ClientsConnect {
        user_ids: vec![user.into()],
    });
    let members = reg.call_members(call).to_vec();
    for k in members {
        if let Some(s) = reg.sessions.get_mut(&k) {
            s.push(&joined, cap);
        }
    }
    reg.insert_session(key, session);
    c.session = Some(key);
    tracing::info!(guild, channel, user, ssrc, "voice session identified");
}

fn resume(ws: &mut Ws, c: &mut Conn<'_>, r: Resume) {
    let shared = c.shared;
    let mut reg = shared.lock();
    let found = reg
        .sessions
        .iter()
        .find(|(_, s)| s.guild_id == r.server_id.0 && r.session_id == s.session_id.as_str())
        .map(|(k, _)| *k);
    let Some(key) = found else {
        reg.counters.failed_resumes += 1;
        drop(reg);
        return start_close(ws, c, close_code::SESSION_INVALID);
    };
    // Invariant: `key` was just found in the map under the same lock.
    let s = reg.sessions.get_mut(&key).expect("session just found");
    let token_ok = s.token.expose() == r.token.expose();
    let oldest = s.replay.front().map_or(s.seq + 1, |(q, _)| *q);
    // Everything after seq_ack must still be buffered, or the client would miss messages.
    // Before v8 there is no seq_ack and nothing is replayed.
    let covered = !c.framing.numbered()
        || (r.seq_ack >= oldest - 1 && r.seq_ack <= s.seq && s.framing.numbered());
    if !token_ok || !covered {
        reg.counters.failed_resumes += 1;
        drop(reg);
        tracing::info!(token_ok, covered, "voice resume rejected");
        return start_close(ws, c, close_code::SESSION_INVALID);
    }
    if let Some((_, old)) = s.outbox.take() {
        let _ = old.send(Outgoing::Drop);
    }
    let _ = c.mailbox.send(Outgoing::Text(
        // Invariant: a unit payload always serialises.
        VoicePayload::Resumed
            .encode(None)
            .expect("server payloads encode"),
    ));
    if c.framing.numbered() {
        for (q, frame) in &s.replay {
            if *q > r.seq_ack {
                let _ = c.mailbox.send(frame.clone());
            }
        }
    } else {
        // Nothing to replay from: the v8 buffer, if any, is numbered for another framing.
        s.replay.clear();
    }
    s.framing = c.framing;
    s.outbox = Some((c.generation, c.mailbox.clone()));
    s.detached_at = None;
    // Op 5s queued while no websocket was attached never reached the client (or, before v8,
    // are not replayed): tell again, so held packets can flow.
    let waiting: Vec<u32> = s.announced.iter().copied().collect();
    let mut speakers = Vec::new();
    for ssrc in waiting {
        if let Some(other) = reg.session_by_ssrc(ssrc) {
            speakers.push(other.speaking_announcement());
        }
    }
    let cap = shared.config.replay_buffer;
    if let Some(s) = reg.sessions.get_mut(&key) {
        for sp in speakers {
            s.tell_speaking(sp, cap);
        }
    }
    reg.counters.resumes += 1;
    c.session = Some(key);
    tracing::info!(session = key, seq_ack = r.seq_ack, "voice session resumed");
}

fn select_protocol(ws: &mut Ws, c: &mut Conn<'_>, sp: SelectProtocol) {
    let shared = c.shared;
    if sp.protocol != "udp" {
        return start_close(ws, c, close_code::UNKNOWN_PROTOCOL);
    }
    let mode = match EncryptionMode::from_str(&sp.data.mode) {
        Ok(m) if shared.config.modes.contains(&m) => m,
        _ => {
            tracing::info!(mode = %sp.data.mode, "client selected a mode the server does not offer");
            return start_close(ws, c, close_code::UNKNOWN_ENCRYPTION_MODE);
        }
    };
    let Some(key_id) = c.session else { return };
    let mut key: [u8; 32] = rand::random();
    let mut reg = shared.lock();
    let Some(s) = reg.sessions.get_mut(&key_id) else {
        return;
    };
    s.mode = Some(mode);
    s.cipher = Some(TransportCipher::new(mode, &SecretKey::new(key)));
    s.sealer = Some(Sealer::new(mode, &SecretKey::new(key)));
    if let Ok(ip) = sp.data.address.parse::<std::net::IpAddr>()
        && s.udp_peer.is_none()
    {
        s.udp_peer = Some(std::net::SocketAddr::new(ip, sp.data.port));
    }
    if let Some(path) = &shared.config.keylog {
        let line = format!(
            "SSRC {} MODE {} KEY {}\n",
            s.ssrc,
            mode.as_str(),
            key.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        use std::os::unix::fs::OpenOptionsExt;
        // Transport keys: readable by the user who asked for them only (a file that already
        // exists keeps its mode; `serve` creates it with this one at start).
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "cannot append to the keylog");
        }
    }
    s.push(
        &VoicePayload::SessionDescription(SessionDescription {
            mode: mode.as_str().to_string(),
            secret_key: protocol::SecretKey::new(key),
            dave_protocol_version: s.dave_version,
        }),
        shared.config.replay_buffer,
    );
    key.zeroize();
    s.established_at = Some(Instant::now());
    let dave = s.dave_version > 0;
    let event = ServerEvent::SessionEstablished {
        guild_id: s.guild_id,
        channel_id: s.channel_id,
        user_id: s.user_id,
        ssrc: s.ssrc,
    };
    tracing::info!(
        guild = s.guild_id,
        user = s.user_id,
        ssrc = s.ssrc,
        mode = mode.as_str(),
        "voice session established"
    );
    let _ = shared.events_tx.send(event);
    drop(reg);
    if dave {
        // Op 25 right after op 4.
        super::dave::on_established(shared, key_id);
    }
}

/// A binary frame from the client: DAVE ops 26 and 28. Undecodable ones close with 4002; on a
/// session without DAVE they are ignored, as before DAVE existed.
fn on_binary(ws: &mut Ws, c: &mut Conn<'_>, bytes: &[u8]) {
    let Some(key) = c.session else {
        tracing::debug!(len = bytes.len(), "binary frame before identify ignored");
        return;
    };
    match super::dave::on_binary(c.shared, key, bytes) {
        Ok(()) => {}
        Err(super::dave::DaveError::NotNegotiated) => {
            tracing::debug!(len = bytes.len(), "binary frame outside DAVE ignored");
        }
        Err(e) => {
            tracing::info!(error = %e, "undecodable DAVE frame; closing with 4002");
            c.shared.lock().counters.dave_bad_frames += 1;
            start_close(ws, c, close_code::DECODE_FAILURE);
        }
    }
}

fn speaking(c: &mut Conn<'_>, sp: Speaking) {
    let shared = c.shared;
    let Some(key) = c.session else { return };
    let mut reg = shared.lock();
    let Some(s) = reg.sessions.get_mut(&key) else {
        return;
    };
    s.speaking = sp.speaking.0;
    let (call, user, ssrc) = (s.key(), s.user_id, s.ssrc);
    let relay = Speaking {
        speaking: sp.speaking,
        ssrc,
        delay: None,
        user_id: Some(user.into()),
    };
    let members = reg.call_members(call).to_vec();
    for k in members {
        if k == key {
            continue;
        }
        if let Some(other) = reg.sessions.get_mut(&k) {
            other.tell_speaking(relay, shared.config.replay_buffer);
        }
    }
}
