//! `cargo bench --bench upper`: micro-benchmarks of the hot paths.
//!
//! - The uppercase routines (`upper_in_place`, `upper_into`, `is_upper_of`)
//!   in bytes per second, against `copy_from_slice` (memcpy) of the same
//!   buffer, at 64 B, 4 KiB, 64 KiB and 1 MiB.
//! - The protocol as the event loop drives it: `UpperEcho::on_read` on 64 B
//!   and 4 KiB, with `BytesMut` input/output buffers that are reused between
//!   messages (the input refilled, the output drained as a socket write would).

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use switchyard_common::upper::{is_upper_of, upper_in_place, upper_into};
use switchyard_common::{Protocol, UpperEcho};

const SIZES: [usize; 4] = [64, 4096, 64 * 1024, 1024 * 1024];

/// Mixed-case text with some non-ASCII bytes, deterministic.
fn text(n: usize) -> Vec<u8> {
    let alphabet = b"The quick brown Fox jumps over 13 lazy dogs; \xc3\xa9t\xc3\xa9 ";
    (0..n).map(|i| alphabet[(i * 7 + i / 61) % alphabet.len()]).collect()
}

fn size_name(n: usize) -> String {
    match n {
        n if n >= 1 << 20 => format!("{}MiB", n >> 20),
        n if n >= 1 << 10 => format!("{}KiB", n >> 10),
        n => format!("{n}B"),
    }
}

fn routines(c: &mut Criterion) {
    let mut g = c.benchmark_group("upper");
    for n in SIZES {
        let src = text(n);
        let up = switchyard_common::upper::to_upper(&src);
        let mut dst = vec![0u8; n];
        g.throughput(Throughput::Bytes(n as u64));
        let id = size_name(n);
        g.bench_with_input(BenchmarkId::new("memcpy", &id), &src, |b, s| {
            b.iter(|| dst.copy_from_slice(black_box(s)));
        });
        g.bench_with_input(BenchmarkId::new("upper_into", &id), &src, |b, s| {
            b.iter(|| upper_into(black_box(s), &mut dst));
        });
        let mut buf = src.clone();
        g.bench_with_input(BenchmarkId::new("upper_in_place", &id), &n, |b, _| {
            // Uppercasing is idempotent, so the same buffer can be reused; the work per byte does not change.
            b.iter(|| upper_in_place(black_box(&mut buf)));
        });
        g.bench_with_input(BenchmarkId::new("is_upper_of", &id), &src, |b, s| {
            b.iter(|| assert!(is_upper_of(black_box(s), black_box(&up))));
        });
    }
    g.finish();
}

/// Input and output buffers as the event loop's `Scratch` makes them (two
/// 64 KiB `BytesMut`s allocated one after the other), or with the output
/// shifted by 2 KiB. Back to back, the output starts 16 bytes past a multiple
/// of 4 KiB from the input; on this machine's AMD CPU (FSRM `rep movsb` in
/// glibc's memcpy) that aliasing makes the input-to-output copy several
/// times slower, so both layouts are measured.
fn buffers(shift_output: bool) -> (BytesMut, BytesMut) {
    let input = BytesMut::with_capacity(64 * 1024);
    let mut output = BytesMut::with_capacity(64 * 1024 + 2048);
    if shift_output {
        output.extend_from_slice(&[0u8; 2048]);
        let _ = output.split_to(2048);
    }
    (input, output)
}

fn protocol(c: &mut Criterion) {
    let mut g = c.benchmark_group("on_read");
    for n in [64usize, 4096] {
        for (name, shift) in [("UpperEcho", false), ("UpperEcho_output_shifted_2KiB", true)] {
            let (mut input, mut output) = buffers(shift);
            // The message is placed 2 KiB (mod 4 KiB) away from the input buffer, so the copy that stands
            // in for the kernel's never hits the aliasing described above.
            let store = text(n + 4096);
            let off = (input.as_ptr() as usize).wrapping_sub(store.as_ptr() as usize).wrapping_sub(2048) % 4096;
            let msg = &store[off..off + n];
            let mut proto = UpperEcho;
            g.throughput(Throughput::Elements(1));
            g.bench_function(BenchmarkId::new(name, size_name(n)), |b| {
                b.iter(|| {
                    // What the event loop does per message: bytes land in the input buffer,
                    // the protocol moves them to the output, the output is written and drained.
                    input.extend_from_slice(black_box(msg));
                    black_box(proto.on_read(&mut input, &mut output));
                    black_box(&output[..]);
                    output.clear();
                });
            });
        }
    }
    g.finish();
}

criterion_group!(benches, routines, protocol);
criterion_main!(benches);
