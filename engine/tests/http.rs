//! HTTP streams against a tiny server on 127.0.0.1 written here: it serves byte ranges, can
//! drop the connection mid-body, and answers 404, 500 or a web page where asked.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quaver_engine::{EndReason, Error, Event, HttpError, HttpOptions, InputError};
use support::{Output, dominant, ended, manual, run_until, tones, wav_bytes};

const LOW: f64 = 440.0;
const HIGH: f64 = 1_000.0;

/// What the server was asked, per request: the path and the `Range` start, if any.
type Log = Arc<Mutex<Vec<(String, Option<u64>)>>>;

struct Server {
    base: String,
    log: Log,
}

/// Serves `wav` at several paths with different behaviours; `drops` counts the connections to
/// drop mid-body (shared by the dropping paths).
fn serve(wav: Vec<u8>, drops: usize) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let log: Log = Arc::default();
    let wav = Arc::new(wav);
    let drops = Arc::new(AtomicUsize::new(drops));
    let server_log = Arc::clone(&log);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let (wav, drops, log) = (
                Arc::clone(&wav),
                Arc::clone(&drops),
                Arc::clone(&server_log),
            );
            std::thread::spawn(move || {
                let _ = answer(stream, &wav, &drops, &log);
            });
        }
    });
    Server { base, log }
}

fn answer(
    mut stream: TcpStream,
    wav: &[u8],
    drops: &AtomicUsize,
    log: &Log,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let path = request.split(' ').nth(1).unwrap_or_default().to_owned();
    let mut range = None;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if line.trim().is_empty() {
            break;
        }
        if let Some(spec) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
            range = spec.trim().trim_end_matches('-').parse::<u64>().ok();
        }
    }
    log.lock().unwrap().push((path.clone(), range));
    let take_drop = || {
        drops
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    };
    let simple = |status: &str, content_type: &str, body: &[u8]| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
    };
    match path.as_str() {
        "/missing" => stream.write_all(simple("404 Not Found", "text/html", b"nope").as_bytes())?,
        "/broken" => {
            stream.write_all(simple("500 Internal Server Error", "text/plain", b"").as_bytes())?;
        }
        "/page" => {
            let page = b"<html><body>not a song</body></html>";
            stream.write_all(simple("200 OK", "text/html; charset=utf-8", page).as_bytes())?;
            stream.write_all(page)?;
        }
        "/moved" => stream.write_all(
            b"HTTP/1.1 302 Found\r\nLocation: /ranges.wav\r\nContent-Length: 0\r\n\r\n",
        )?,
        // Ranges supported; the first `drops` connections break after 100 kB.
        "/ranges.wav" | "/norange.wav" | "/dies.wav" => {
            let ranges = path != "/norange.wav";
            if path == "/dies.wav" && log.lock().unwrap().len() > 1 {
                // Gone for good: every reconnect is closed before an answer.
                return Ok(());
            }
            let start = if ranges { range.unwrap_or(0) } else { 0 };
            let body = &wav[start as usize..];
            let head = if ranges && range.is_some() {
                format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Type: audio/wav\r\nAccept-Ranges: bytes\r\nContent-Range: bytes {start}-{}/{}\r\nContent-Length: {}\r\n\r\n",
                    wav.len() - 1,
                    wav.len(),
                    body.len()
                )
            } else {
                let accept = if ranges {
                    "Accept-Ranges: bytes\r\n"
                } else {
                    ""
                };
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: audio/wav\r\n{accept}Content-Length: {}\r\n\r\n",
                    body.len()
                )
            };
            stream.write_all(head.as_bytes())?;
            if (path == "/dies.wav" || take_drop()) && body.len() > 100_000 {
                stream.write_all(&body[..100_000])?;
                // Dropped mid-body.
                return Ok(());
            }
            stream.write_all(body)?;
        }
        "/chunked.wav" => {
            stream.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: audio/x-wav\r\nTransfer-Encoding: chunked\r\n\r\n",
            )?;
            for chunk in wav.chunks(7_000) {
                write!(stream, "{:x}\r\n", chunk.len())?;
                stream.write_all(chunk)?;
                stream.write_all(b"\r\n")?;
            }
            stream.write_all(b"0\r\n\r\n")?;
        }
        _ => stream.write_all(simple("404 Not Found", "text/plain", b"").as_bytes())?,
    }
    Ok(())
}

fn two_tones() -> Vec<u8> {
    wav_bytes(48_000, 2, &tones(48_000, 2, &[(LOW, 1.0), (HIGH, 2.0)]))
}

/// Plays `path` to its end; returns the output and the handle's id.
fn play_to_the_end(
    server: &Server,
    path: &str,
    options: HttpOptions,
) -> (Output, quaver_engine::SourceId) {
    let (engine, mut mixer) = manual();
    let (call, mut frames) = engine.create_call().unwrap();
    let handle = engine
        .play_url(call, &format!("{}{path}", server.base), options)
        .unwrap();
    let mut out = Output::default();
    run_until(&engine, &mut mixer, &mut frames, &mut out, |out| {
        ended(out, handle.id()).is_some()
    });
    (out, handle.id())
}

/// Every frame of the three seconds is there: 440 Hz for the first second, 1 kHz after.
fn assert_whole(out: &Output, what: &str) {
    let audio: Vec<_> = out.frames.iter().flatten().collect();
    assert!(
        (149..=152).contains(&audio.len()),
        "{what}: {} frames",
        audio.len()
    );
    assert_eq!(dominant(audio[25], LOW, HIGH), Some(LOW), "{what}");
    assert_eq!(dominant(audio[100], LOW, HIGH), Some(HIGH), "{what}");
    assert!(
        audio
            .iter()
            .skip(1)
            .all(|f| quaver_engine::analysis::rms(f) > 0.2),
        "{what}: a gap in the audio"
    );
}

#[test]
fn a_stream_plays_through_dropped_connections_by_range_or_from_the_start() {
    let server = serve(two_tones(), 2);
    let (out, id) = play_to_the_end(&server, "/ranges.wav", HttpOptions::default());
    assert_eq!(ended(&out, id), Some(EndReason::Finished));
    assert_whole(&out, "dropped twice, resumed by range");
    let log = server.log.lock().unwrap().clone();
    assert_eq!(
        log,
        vec![
            ("/ranges.wav".into(), None),
            ("/ranges.wav".into(), Some(100_000)),
            ("/ranges.wav".into(), Some(200_000)),
        ]
    );

    let server = serve(two_tones(), 1);
    let (out, _) = play_to_the_end(&server, "/norange.wav", HttpOptions::default());
    assert_whole(&out, "dropped once, no ranges: read again from the start");
    assert_eq!(server.log.lock().unwrap().len(), 2);

    let server = serve(two_tones(), 0);
    let (out, _) = play_to_the_end(&server, "/chunked.wav", HttpOptions::default());
    assert_whole(&out, "chunked");
    let (out, _) = play_to_the_end(&server, "/moved", HttpOptions::default());
    assert_whole(&out, "redirected");
}

#[test]
fn a_server_gone_for_good_fails_the_source_after_the_reconnects() {
    let server = serve(two_tones(), 0);
    let options = HttpOptions {
        max_reconnects: 2,
        ..HttpOptions::default()
    };
    let (out, id) = play_to_the_end(&server, "/dies.wav", options);
    assert_eq!(ended(&out, id), Some(EndReason::Failed));
    let error = out.events.iter().find_map(|event| match event {
        Event::SourceError { error, .. } => Some(error.clone()),
        _ => None,
    });
    assert!(
        matches!(
            error.as_deref(),
            Some(Error::Input {
                error: InputError::Http(HttpError::Dropped { attempts: 2, .. }),
                ..
            })
        ),
        "{error:?}"
    );
    // What arrived before the drop was played.
    assert!(out.frames.iter().flatten().count() >= 25);
    assert_eq!(server.log.lock().unwrap().len(), 3);
}

#[test]
fn error_statuses_and_web_pages_are_typed_errors() {
    let server = serve(two_tones(), 0);
    let (engine, _mixer) = manual();
    let (call, _frames) = engine.create_call().unwrap();
    let play = |path: &str| {
        engine
            .play_url(
                call,
                &format!("{}{path}", server.base),
                HttpOptions::default(),
            )
            .map(|_| ())
            .unwrap_err()
    };
    let http = |error: Error| match error {
        Error::Input {
            error: InputError::Http(http),
            ..
        } => http,
        other => panic!("{other:?}"),
    };
    assert!(matches!(
        http(play("/missing")),
        HttpError::Status { status: 404 }
    ));
    assert!(matches!(
        http(play("/broken")),
        HttpError::Status { status: 500 }
    ));
    match http(play("/page")) {
        HttpError::NotAudio { content_type } => assert_eq!(content_type, "text/html"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        http(
            engine
                .play_url(call, "ftp://127.0.0.1/x", HttpOptions::default())
                .map(|_| ())
                .unwrap_err()
        ),
        HttpError::BadUrl
    ));
    // Nothing listening: a connection error, not a hang.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    assert!(matches!(
        http(
            engine
                .play_url(
                    call,
                    &format!("http://{closed}/x.wav"),
                    HttpOptions::default()
                )
                .map(|_| ())
                .unwrap_err()
        ),
        HttpError::Connect(_)
    ));
}

#[test]
fn seeking_a_stream_asks_for_the_range_and_plays_the_new_position() {
    let server = serve(two_tones(), 0);
    let (engine, mut mixer) = manual();
    let (call, mut frames) = engine.create_call().unwrap();
    let options = HttpOptions {
        read_ahead: Duration::from_millis(500),
        ..HttpOptions::default()
    };
    let handle = engine
        .play_url(call, &format!("{}/ranges.wav", server.base), options)
        .unwrap();
    assert!(handle.is_seekable());
    assert_eq!(handle.duration(), Some(Duration::from_secs(3)));
    let mut out = Output::default();
    run_until(&engine, &mut mixer, &mut frames, &mut out, |_| {
        handle.stats().frames_mixed >= 10
    });
    handle.seek(Duration::from_millis(2_000)).unwrap();
    let seek_at = out.frames.len();
    run_until(&engine, &mut mixer, &mut frames, &mut out, |out| {
        out.frames[seek_at..]
            .iter()
            .flatten()
            .any(|f| dominant(f, LOW, HIGH) == Some(HIGH))
    });
    let first_new = out.frames[seek_at..]
        .iter()
        .position(|f| f.as_deref().and_then(|f| dominant(f, LOW, HIGH)) == Some(HIGH))
        .unwrap();
    println!("http seek: first frame from the new position {first_new} ticks after the seek");
    // 2 s into 48 kHz stereo 16-bit after the 44-byte header, or the symphonia packet before.
    let log = server.log.lock().unwrap().clone();
    let ranged = log
        .iter()
        .filter_map(|(_, range)| *range)
        .next_back()
        .unwrap();
    assert!(
        (44 + 2 * 192_000 - 8_192..=44 + 2 * 192_000).contains(&ranged),
        "range request from {ranged}: {log:?}"
    );
}

#[test]
fn a_looping_stream_plays_on_past_its_end_until_stopped() {
    let server = serve(two_tones(), 0);
    let (engine, mut mixer) = manual();
    let (call, mut frames) = engine.create_call().unwrap();
    let options = HttpOptions {
        looping: true,
        volume: 0.5,
        ..HttpOptions::default()
    };
    let handle = engine
        .play_url(call, &format!("{}/ranges.wav", server.base), options)
        .unwrap();
    let mut out = Output::default();
    run_until(&engine, &mut mixer, &mut frames, &mut out, |_| {
        handle.stats().frames_mixed >= 200
    });
    // Four seconds into a three-second stream: the second time through, 440 Hz again.
    assert!(!handle.is_ended());
    assert!(
        handle.position() < Duration::from_millis(1_100),
        "{:?}",
        handle.position()
    );
    let last = out.frames.iter().flatten().last().unwrap();
    assert_eq!(dominant(last, LOW, HIGH), Some(LOW));
    handle.stop();
    run_until(&engine, &mut mixer, &mut frames, &mut out, |out| {
        ended(out, handle.id()).is_some()
    });
    assert_eq!(ended(&out, handle.id()), Some(EndReason::Stopped));
    // Rewinding asked for the start again by range.
    let log = server.log.lock().unwrap().clone();
    assert!(
        log.iter()
            .skip(1)
            .any(|(_, range)| range.is_some_and(|r| r < 1_000)),
        "{log:?}"
    );
}

/// An `https://` server on 127.0.0.1 with a certificate from a CA made here: serves `wav` whole
/// to every request. Returns its base URL and the CA to trust.
fn serve_tls(wav: Vec<u8>) -> (String, rustls::pki_types::CertificateDer<'static>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("https://{}", listener.local_addr().unwrap());
    let wav = Arc::new(wav);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let (config, wav) = (Arc::clone(&config), Arc::clone(&wav));
            std::thread::spawn(move || {
                let Ok(connection) = rustls::ServerConnection::new(config) else {
                    return;
                };
                let mut tls = rustls::StreamOwned::new(connection, stream);
                // The request head, up to its blank line.
                let mut head = Vec::new();
                let mut byte = [0_u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if std::io::Read::read(&mut tls, &mut byte).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let _ = write!(
                    tls,
                    "HTTP/1.1 200 OK\r\nContent-Type: audio/wav\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    wav.len()
                );
                let _ = tls.write_all(&wav);
                let _ = tls.flush();
                tls.conn.send_close_notify();
                let _ = tls.flush();
            });
        }
    });
    (base, ca_cert.der().clone())
}

#[test]
fn an_https_stream_plays_with_its_ca_trusted_and_is_refused_without() {
    let (base, ca) = serve_tls(two_tones());
    let (engine, mut mixer) = manual();
    let (call, mut frames) = engine.create_call().unwrap();
    let untrusted = engine.play_url(call, &format!("{base}/song.wav"), HttpOptions::default());
    assert!(
        matches!(
            untrusted,
            Err(Error::Input {
                error: InputError::Http(_),
                ..
            })
        ),
        "a certificate nobody vouched for: {untrusted:?}"
    );
    let options = HttpOptions {
        extra_roots: vec![ca],
        ..HttpOptions::default()
    };
    let handle = engine
        .play_url(call, &format!("{base}/song.wav"), options)
        .unwrap();
    let mut out = Output::default();
    run_until(&engine, &mut mixer, &mut frames, &mut out, |out| {
        ended(out, handle.id()).is_some()
    });
    assert_eq!(ended(&out, handle.id()), Some(EndReason::Finished));
    assert_whole(&out, "over TLS");
}
