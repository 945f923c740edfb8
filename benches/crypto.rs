//! Transport-encryption cost per packet: seal (and open) one RTP packet in each mode, in a
//! caller-owned buffer, for a silence frame, a typical 96 kb/s Opus frame and a large one.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use quaver::net::crypto::{EncryptionMode, SEAL_OVERHEAD, Sealer, SecretKey, TransportCipher};
use quaver::net::rtp::{HEADER_LEN, RtpStream};
use std::hint::black_box;

fn seal(c: &mut Criterion) {
    let key = SecretKey::new([0x11; 32]);
    let mut group = c.benchmark_group("seal");
    for mode in EncryptionMode::PREFERENCE {
        for size in [3usize, 240, 1275] {
            group.throughput(Throughput::Elements(1));
            group.bench_with_input(BenchmarkId::new(mode.as_str(), size), &size, |b, &size| {
                let mut sealer = Sealer::new(mode, &key);
                let mut rtp = RtpStream::new(1);
                let mut buf = [0u8; 1460];
                b.iter(|| {
                    // Header + payload copy + seal: the per-packet work of the sender.
                    rtp.write_next(&mut buf).expect("buffer holds a header");
                    buf[HEADER_LEN..HEADER_LEN + size].fill(0x5A);
                    black_box(sealer.seal(&mut buf, HEADER_LEN, size).expect("fits"))
                });
            });
        }
    }
    group.finish();

    let mut group = c.benchmark_group("open");
    for mode in EncryptionMode::PREFERENCE {
        let size = 240;
        let mut sealer = Sealer::new(mode, &key);
        let cipher = TransportCipher::new(mode, &key);
        let mut packet = [0u8; 1460];
        RtpStream::new(1)
            .write_next(&mut packet)
            .expect("buffer holds a header");
        let n = sealer.seal(&mut packet, HEADER_LEN, size).expect("fits");
        assert_eq!(n, HEADER_LEN + size + SEAL_OVERHEAD);
        group.bench_function(BenchmarkId::new(mode.as_str(), size), |b| {
            let mut out = [0u8; 1460];
            b.iter(|| {
                black_box(
                    cipher
                        .open_into(&packet[..n], HEADER_LEN, &mut out)
                        .expect("opens"),
                )
            });
        });
    }
    group.finish();
}

criterion_group!(benches, seal);
criterion_main!(benches);
