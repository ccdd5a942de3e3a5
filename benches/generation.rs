//! Criterion benchmarks of plain generation: time to first token and per-token decode latency.
//!
//! `cargo bench --bench generation` runs them on a synthetic model (seconds) and, when the real
//! models have been fetched (`scripts/fetch-models.sh`), on Qwen2.5-Coder 0.5B and 1.5B. A missing
//! real model is reported with the command that fetches it, never downloaded silently.

use criterion::{criterion_group, criterion_main, Criterion};
use specula::{CausalLm, GenerateParams, Generator, LogitsSelection, ModelSource};
use specula_models::synthetic::SyntheticSpec;
use std::time::Duration;

fn bench_generator(c: &mut Criterion, name: &str, mut g: Generator) {
    let prompt = "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n";
    let ids = g.tokenizer().encode(prompt).unwrap_or_default();
    let one = GenerateParams {
        ignore_eos: true,
        ..GenerateParams::new(1)
    };
    let _ = g.generate(prompt, &one); // warm-up (weight repacking)
    let mut group = c.benchmark_group(name);
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    group.bench_function("ttft", |b| {
        b.iter(|| g.generate_from_ids(&ids, &one, |_| {}))
    });
    group.bench_function("decode_16_tokens", |b| {
        let p = GenerateParams {
            ignore_eos: true,
            ..GenerateParams::new(17)
        };
        b.iter(|| g.generate_from_ids(&ids, &p, |_| {}))
    });
    group.finish();
}

fn synthetic(c: &mut Criterion) {
    specula::set_num_threads(2);
    let dir = std::env::temp_dir().join(format!("specula-bench-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("tiny.gguf");
    if SyntheticSpec::tiny_qwen2().write_gguf(&path).is_err() {
        eprintln!("cannot write the synthetic model to {}", dir.display());
        return;
    }
    if let Ok(g) = Generator::builder().model(ModelSource::gguf(&path)).build() {
        bench_generator(c, "synthetic-qwen2", g);
    }
    // The cost of one forward of n tokens (verification cost for speculation).
    if let Ok(loaded) = specula_models::load(&ModelSource::gguf(&path), &Default::default()) {
        let mut m = loaded.model;
        let mut group = c.benchmark_group("synthetic-forward-n");
        for n in [1usize, 2, 5, 9] {
            let toks: Vec<u32> = (0..n as u32).map(|i| 10 + i).collect();
            group.bench_function(format!("n={n}"), |b| {
                b.iter(|| {
                    m.reset();
                    let _ = m.forward(&[1, 2, 3, 4], LogitsSelection::Last);
                    m.forward(&toks, LogitsSelection::All)
                })
            });
        }
        group.finish();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn real(c: &mut Criterion) {
    for (name, file) in [
        (
            "qwen2.5-coder-0.5b",
            "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        ),
        (
            "qwen2.5-coder-1.5b",
            "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        ),
    ] {
        let path = specula_models::models_dir().join(file);
        if !path.exists() {
            eprintln!(
                "skipping {name}: {} not found; run scripts/fetch-models.sh",
                path.display()
            );
            continue;
        }
        match Generator::builder().model(ModelSource::gguf(&path)).build() {
            Ok(g) => bench_generator(c, name, g),
            Err(e) => eprintln!("skipping {name}: {e}"),
        }
    }
}

criterion_group!(benches, synthetic, real);
criterion_main!(benches);
