//! DAVE frame encryption beside the transport seal it sits under: a 200-byte Opus frame wrapped
//! by `FrameEncryptor` (AES-128-GCM, 8-byte tag), then the packet sealed with AES-256-GCM, as
//! the sender thread does per packet; and each step alone.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use quaver::net::crypto::{EncryptionMode, Sealer, SecretKey};
use quaver::net::dave::{FrameDecryptor, FrameEncryptor, MAX_OVERHEAD, SenderKey};
use quaver::net::rtp::{HEADER_LEN, MAX_PACKET, RtpStream};
use std::hint::black_box;
use std::time::Instant;

const OPUS_LEN: usize = 200;

fn dave(c: &mut Criterion) {
    let opus = [0x5Au8; OPUS_LEN];
    let mut group = c.benchmark_group("dave");
    group.throughput(Throughput::Elements(1));

    group.bench_function("frame_encrypt_200", |b| {
        let mut enc = FrameEncryptor::new(SenderKey::new(1, [0x11; 16]));
        let mut out = [0u8; OPUS_LEN + MAX_OVERHEAD];
        b.iter(|| black_box(enc.encrypt_into(black_box(&opus), &mut out).expect("fits")));
    });

    group.bench_function("transport_seal_200", |b| {
        let mut sealer = Sealer::new(
            EncryptionMode::Aes256GcmRtpSize,
            &SecretKey::new([0x22; 32]),
        );
        let mut rtp = RtpStream::new(1);
        let mut buf = [0u8; MAX_PACKET];
        b.iter(|| {
            rtp.write_next(&mut buf).expect("buffer holds a header");
            buf[HEADER_LEN..HEADER_LEN + OPUS_LEN].copy_from_slice(&opus);
            black_box(sealer.seal(&mut buf, HEADER_LEN, OPUS_LEN).expect("fits"))
        });
    });

    group.bench_function("frame_encrypt_then_seal_200", |b| {
        let mut enc = FrameEncryptor::new(SenderKey::new(1, [0x11; 16]));
        let mut sealer = Sealer::new(
            EncryptionMode::Aes256GcmRtpSize,
            &SecretKey::new([0x22; 32]),
        );
        let mut rtp = RtpStream::new(1);
        let mut buf = [0u8; MAX_PACKET];
        b.iter(|| {
            rtp.write_next(&mut buf).expect("buffer holds a header");
            let n = enc
                .encrypt_into(&opus, &mut buf[HEADER_LEN..])
                .expect("fits");
            black_box(sealer.seal(&mut buf, HEADER_LEN, n).expect("fits"))
        });
    });

    group.bench_function("frame_decrypt_200", |b| {
        // A fresh frame per iteration (replays are refused), made outside the timing.
        let key = SenderKey::new(1, [0x11; 16]);
        let mut enc = FrameEncryptor::new(key.clone());
        let mut dec = FrameDecryptor::new();
        let now = Instant::now();
        dec.install_key(key, now);
        let mut out = [0u8; OPUS_LEN + MAX_OVERHEAD];
        b.iter_batched_ref(
            || {
                let mut frame = [0u8; OPUS_LEN + MAX_OVERHEAD];
                let n = enc.encrypt_into(&opus, &mut frame).expect("fits");
                (frame, n)
            },
            |(frame, n)| {
                black_box(
                    dec.decrypt_into(&frame[..*n], &mut out, now)
                        .expect("opens"),
                )
            },
            criterion::BatchSize::SmallInput,
        );
    });

    group.bench_function("key_install_epoch", |b| {
        b.iter(|| {
            black_box(FrameEncryptor::new(SenderKey::new(
                2,
                black_box([0x33; 16]),
            )))
        });
    });
    group.finish();
}

criterion_group!(benches, dave);
criterion_main!(benches);
