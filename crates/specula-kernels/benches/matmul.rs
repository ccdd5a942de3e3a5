//! Cost of one quantized matmul of n = 1..9 activation rows, per weight type, on a matrix the size
//! of the Qwen2.5 1.5B MLP (8960 x 1536; Q5_0 / Q8_0: the 0.5B's 4864 x 896). The ratio of the n-row
//! time to the 1-row time is what a verification forward costs relative to a decode step.
//!
//! The `prefill` group times 256 rows (a prompt) on the MLP's up and down shapes; the `attention`
//! group times one layer's decode / verification attention (12 query heads over 2 KV heads of 128,
//! the 1.5B's shape) at several cache lengths.
//!
//! `cargo bench -p specula-kernels --bench matmul` (`SPECULA_KERNELS=scalar` for the portable path).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use specula_kernels::{causal_attention, AttentionShape, KvView, QMatrix, QuantType};

mod common;

fn matrix(ty: QuantType, rows: usize, cols: usize) -> QMatrix {
    match common::random_matrix(ty, rows, cols, 0) {
        Ok(m) => m,
        Err(e) => panic!("bench matrix: {e}"),
    }
}

fn bench(c: &mut Criterion) {
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    // Ignore the error if a pool already exists (another bench in the same process).
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global();
    for (ty, rows, cols) in [
        (QuantType::Q4K, 8960, 1536),
        (QuantType::Q6K, 8960, 1536),
        (QuantType::Q5_0, 4864, 896),
        (QuantType::Q8_0, 4864, 896),
    ] {
        let m = matrix(ty, rows, cols);
        let mut g = c.benchmark_group(format!("matmul-{ty:?}-{rows}x{cols}"));
        g.sample_size(20);
        for n in 1..=9 {
            let x: Vec<f32> = (0..n * cols)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                .collect();
            let mut y = vec![0f32; n * rows];
            g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
                b.iter(|| m.matmul(&x, n, &mut y))
            });
        }
        g.finish();
    }
    // Prefill: a prompt's worth of rows, on the MLP's up (8960 x 1536) and down (1536 x 8960)
    // shapes, where the activations no longer fit in the core's caches.
    let mut g = c.benchmark_group("prefill");
    g.sample_size(10);
    for (ty, rows, cols) in [
        (QuantType::Q4K, 8960, 1536),
        (QuantType::Q6K, 1536, 8960),
        (QuantType::Q5_0, 4864, 896),
    ] {
        let m = matrix(ty, rows, cols);
        let n = 256;
        let x: Vec<f32> = (0..n * cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let mut y = vec![0f32; n * rows];
        g.bench_function(format!("{ty:?}-{rows}x{cols}-n{n}"), |b| {
            b.iter(|| m.matmul(&x, n, &mut y))
        });
    }
    g.finish();
    // Attention of n new rows over a cache of `pos` positions, one layer of the 1.5B.
    let mut g = c.benchmark_group("attention");
    g.sample_size(20);
    let (heads, kv_heads, hd, cap) = (12, 2, 128, 2048 + 16);
    let cache: Vec<f32> = (0..kv_heads * cap * hd)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
        .collect();
    let view = KvView {
        data: &cache,
        offset: 0,
        head_stride: cap * hd,
        pos_stride: hd,
    };
    for pos in [240, 720, 2048] {
        for n in [1, 5] {
            let q: Vec<f32> = (0..heads * n * hd)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0)
                .collect();
            let mut out = vec![0f32; n * heads * hd];
            let shape = AttentionShape {
                n,
                heads,
                kv_heads,
                head_dim: hd,
                pos,
            };
            g.bench_function(format!("pos{pos}-n{n}"), |b| {
                b.iter(|| causal_attention(&q, view, view, shape, 0.088, &mut out))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
