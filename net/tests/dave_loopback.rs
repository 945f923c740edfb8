//! DAVE through the real sender thread over loopback UDP: every packet's transport-opened payload
//! is a DAVE frame that `FrameDecryptor` opens to the original Opus, across a key change made
//! while frames flow (the counter restarts at the new epoch, and a re-install of that key does not
//! restart it again); the silence frames at the end go out unwrapped.

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quaver_engine::frame::frame_queue;
use quaver_engine::{EncodedFrame, FrameKind, Grid};
use quaver_net::crypto::{EncryptionMode, SecretKey, TransportCipher};
use quaver_net::dave::{DaveError, FrameDecryptor, SenderKey, parse_frame};
use quaver_net::pacer::SchedulingRequest;
use quaver_net::receive::open_rtp;
use quaver_net::rtp::SILENCE_FRAME;
use quaver_net::{BackendChoice, Sender, SenderConfig, SenderEvent};

const FRAMES: usize = 60;

fn opus(i: usize) -> Vec<u8> {
    (0..(30 + i * 3)).map(|k| (k ^ (i * 11)) as u8).collect()
}

fn wait_for(sender: &mut Sender, want: impl Fn(&SenderEvent) -> bool) {
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        while let Some(e) = sender.poll_event() {
            if want(&e) {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("event not seen");
}

fn decrypt(decryptor: &mut FrameDecryptor, frame: &[u8]) -> Result<Vec<u8>, DaveError> {
    let mut out = vec![0u8; frame.len()];
    let n = decryptor.decrypt_into(frame, &mut out, Instant::now())?;
    out.truncate(n);
    Ok(out)
}

#[test]
fn dave_frames_over_loopback_across_a_key_change() {
    let grid = Grid::new(Instant::now());
    let mut config = SenderConfig::new(grid);
    config.backend = BackendChoice::Auto;
    config.scheduling = SchedulingRequest {
        fifo_priority: None,
        ..SchedulingRequest::default()
    };
    config.max_calls = 4;
    let mut sender = Sender::spawn(config).expect("sender starts");

    let receiver = UdpSocket::bind("127.0.0.1:0").expect("loopback bind");
    receiver
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let socket = UdpSocket::bind("127.0.0.1:0").expect("loopback bind");
    socket
        .connect(receiver.local_addr().expect("bound"))
        .expect("loopback connect");
    let transport_key = SecretKey::new([0x5C; 32]);
    let (mut producer, frames) = frame_queue(FRAMES + 8, &Arc::default());
    let call = sender
        .add_call(quaver_net::CallConfig {
            ssrc: 77,
            socket: Arc::new(socket),
            mode: EncryptionMode::Aes256GcmRtpSize,
            key: transport_key.clone(),
            frames,
        })
        .expect("call added");

    let key1 = SenderKey::new(11, [0xA1; 16]);
    let key2 = SenderKey::new(12, [0xB2; 16]);
    sender
        .set_dave_key(call, Some(key1.clone()))
        .expect("queue has room");
    wait_for(&mut sender, |e| {
        *e == SenderEvent::DaveKeyInstalled { call, epoch: 11 }
    });

    let start = grid.tick_at_or_after(Instant::now()) + 2;
    for i in 0..FRAMES {
        producer
            .push(&EncodedFrame::from_packet(start + i as u64, &opus(i)).expect("small"))
            .expect("room");
    }
    producer
        .push(&EncodedFrame::new(
            start + FRAMES as u64,
            FrameKind::EndOfStream,
        ))
        .expect("room");

    let cipher = TransportCipher::new(EncryptionMode::Aes256GcmRtpSize, &transport_key);
    let mut buf = [0u8; 2048];
    let mut out = [0u8; 2048];
    let mut payloads = Vec::new();
    for n in 0..FRAMES + 5 {
        if n == 10 {
            sender
                .set_dave_key(call, Some(key2.clone()))
                .expect("queue has room");
        }
        if n == 25 {
            // The key in use again: must not restart the frame counter.
            sender
                .set_dave_key(call, Some(key2.clone()))
                .expect("queue has room");
        }
        let len = receiver.recv(&mut buf).expect("packet arrives");
        let packet = open_rtp(&cipher, &buf[..len], &mut out).expect("transport opens");
        payloads.push(packet.payload.to_vec());
    }

    // Receivers: one holding both epochs (as a real one would during the overlap), and one per
    // epoch to tell which key each frame was made under.
    let mut both = FrameDecryptor::new();
    let now = Instant::now();
    both.install_key(key1.clone(), now);
    both.install_key(key2.clone(), now);
    let mut only1 = FrameDecryptor::new();
    only1.install_key(key1, now);
    let mut only2 = FrameDecryptor::new();
    only2.install_key(key2, now);

    let mut switch = None;
    for (i, frame) in payloads[..FRAMES].iter().enumerate() {
        let parsed = parse_frame(frame).expect("every audio payload is a DAVE frame");
        assert_eq!(decrypt(&mut both, frame), Ok(opus(i)), "frame {i}");
        let under1 = decrypt(&mut only1, frame).is_ok();
        let under2 = decrypt(&mut only2, frame).is_ok();
        assert!(under1 != under2, "frame {i} opens under exactly one key");
        match switch {
            None if under2 => {
                switch = Some(i);
                assert_eq!(parsed.nonce, 1, "the new epoch starts at nonce 1");
            }
            None => assert_eq!(parsed.nonce as usize, i + 1, "epoch 1 nonces count up"),
            Some(k) => {
                assert!(under2, "no frame under the old key after the switch");
                assert_eq!(
                    parsed.nonce as usize,
                    i - k + 1,
                    "contiguous nonces through the re-install"
                );
            }
        }
    }
    let k = switch.expect("the key change took effect while frames flowed");
    assert!(
        k >= 10,
        "not before it was asked for (switched at frame {k})"
    );
    for (i, silence) in payloads[FRAMES..].iter().enumerate() {
        assert_eq!(silence, &SILENCE_FRAME, "silence {i} is not wrapped");
    }

    sender.remove_call(call).expect("queue has room");
    wait_for(
        &mut sender,
        |e| matches!(e, SenderEvent::CallRemoved { call: c, .. } if *c == call),
    );
    let stats = sender.shutdown();
    assert_eq!(stats.dave_frames, FRAMES as u64);
    assert_eq!(stats.dave_errors, 0);
}
