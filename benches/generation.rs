//! Criterion benchmarks: time to first token (TTFT) and inter-token latency (ITL), plain vs
//! speculative decoding, and the verification cost curve (one forward of n = 1..9 tokens).
//!
//! ```text
//! cargo bench --bench generation                 # everything (real models: tens of minutes)
//! cargo bench --bench generation -- synthetic    # the synthetic variant only (seconds)
//! cargo bench --bench generation -- forward-n    # only the verification cost curves
//! ```
//!
//! Groups:
//! - `synthetic/<prompt>/<mode>/{ttft,itl}` and `synthetic-forward-n/n=..`: a tiny random-weight
//!   Qwen2-shaped model written to a temp dir (the draft is the same model: acceptance 1, the
//!   upper bound of what speculation can gain).
//! - `qwen/<short|long>/<plain|k2|k4|k6|adaptive>/{ttft,itl}`: the real Qwen2.5-Coder 1.5B target
//!   with the 0.5B draft (fixed k, or the default: n-gram then draft, adaptive k), on a short code
//!   prompt and a ~500-token prompt.
//! - `qwen-1.5b-forward-n/n=..`, `qwen-0.5b-forward-n/n=..`: one forward of n tokens after a
//!   256-token context, the cost that decides whether speculation can pay.
//!
//! `itl` is the mean inter-token latency of a 33-token greedy generation (EOS ignored): its decode
//! time over the 32 tokens after the first. Real models are never downloaded: when they are
//! missing the bench says which command fetches them. Kernel threads are pinned to 2
//! (`SPECULA_BENCH_THREADS` overrides).

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use specula::{CausalLm, GenerateParams, Generator, LogitsSelection, ModelSource, TokenId};
use specula_models::synthetic::SyntheticSpec;
use std::path::{Path, PathBuf};
use std::time::Duration;

const SHORT_PROMPT: &str = "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n";

/// A ~500-token prompt: a realistic source file to continue.
fn long_prompt() -> String {
    let mut s = String::from("import heapq\nfrom dataclasses import dataclass, field\n\n");
    for i in 0..12 {
        s.push_str(&format!(
            "\n@dataclass(order=True)\nclass Task{i}:\n    priority: int\n    name: str = \
             field(compare=False)\n\n    def run(self, ctx):\n        ctx.log(\"running\", \
             self.name)\n        return self.priority * {i}\n"
        ));
    }
    s.push_str("\n\nclass Scheduler:\n    \"\"\"Runs tasks in priority order.\"\"\"\n\n    def __init__(self):\n");
    s
}

fn threads() {
    let n = std::env::var("SPECULA_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    specula::set_num_threads(n);
}

fn greedy(n: usize) -> GenerateParams {
    GenerateParams {
        ignore_eos: true,
        ..GenerateParams::new(n)
    }
}

/// TTFT and ITL of `g` on `prompt` under `group/<mode>`.
fn bench_latency(c: &mut Criterion, group: &str, mode: &str, g: &mut Generator, prompt: &str) {
    let ids = match g.tokenizer().encode(prompt) {
        Ok(ids) => ids,
        Err(e) => {
            eprintln!("skipping {group}/{mode}: {e}");
            return;
        }
    };
    let _ = g.generate_from_ids(&ids, &greedy(2), |_| {}); // warm-up (weight repacking)
    let mut grp = c.benchmark_group(format!("{group}/{mode}"));
    // Flat sampling: a 33-token generation takes seconds, so each sample is one or a few runs.
    grp.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .measurement_time(Duration::from_secs(5));
    grp.bench_function("ttft", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                if let Ok(out) = g.generate_from_ids(&ids, &greedy(1), |_| {}) {
                    total += Duration::from_secs_f64(out.metrics.ttft_ms / 1e3);
                }
            }
            total
        })
    });
    grp.bench_function("itl", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                if let Ok(out) = g.generate_from_ids(&ids, &greedy(33), |_| {}) {
                    let n = out.metrics.new_tokens.saturating_sub(1).max(1);
                    total += Duration::from_secs_f64(out.metrics.decode_ms / 1e3 / n as f64);
                }
            }
            total
        })
    });
    grp.finish();
}

/// One forward of n = 1..9 tokens after a `context`-token prefix.
fn bench_forward_n(c: &mut Criterion, name: &str, m: &mut dyn CausalLm, context: usize) {
    let prefix: Vec<TokenId> = (0..context as TokenId).map(|i| 100 + i % 1000).collect();
    if let Err(e) = m.forward(&prefix, LogitsSelection::Last) {
        eprintln!("skipping {name}: {e}");
        return;
    }
    let mut grp = c.benchmark_group(name);
    grp.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .measurement_time(Duration::from_secs(3));
    for n in 1..=9usize {
        let toks: Vec<TokenId> = (0..n as TokenId).map(|i| 200 + i).collect();
        grp.bench_function(format!("n={n}"), |b| {
            b.iter(|| {
                let _ = m.truncate(context);
                m.forward(&toks, LogitsSelection::All)
            })
        });
    }
    grp.finish();
}

fn synthetic(c: &mut Criterion) {
    threads();
    let dir = std::env::temp_dir().join(format!("specula-bench-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("tiny.gguf");
    if let Err(e) = SyntheticSpec::tiny_qwen2().write_gguf(&path) {
        eprintln!("cannot write the synthetic model to {}: {e}", dir.display());
        return;
    }
    let src = ModelSource::gguf(&path);
    if let Ok(mut g) = Generator::builder().model(src.clone()).build() {
        bench_latency(c, "synthetic/short", "plain", &mut g, SHORT_PROMPT);
    }
    if let Ok(mut g) = Generator::builder()
        .model(src.clone())
        .draft(src.clone())
        .build()
    {
        for k in [2, 4, 6] {
            if g.set_draft_len(k).is_ok() {
                bench_latency(c, "synthetic/short", &format!("k{k}"), &mut g, SHORT_PROMPT);
            }
        }
    }
    if let Ok(loaded) = specula_models::load(&src, &Default::default()) {
        let mut m = loaded.model;
        bench_forward_n(c, "synthetic-forward-n", &mut m, 32);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn real_model(file: &str) -> Option<PathBuf> {
    let path = specula_models::models_dir().join(file);
    if path.exists() {
        Some(path)
    } else {
        eprintln!(
            "skipping real-model benches: {} not found; run scripts/fetch-models.sh",
            path.display()
        );
        None
    }
}

fn real(c: &mut Criterion) {
    threads();
    let (Some(target), Some(draft)) = (
        real_model("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"),
        real_model("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"),
    ) else {
        return;
    };
    for (name, path) in [
        ("qwen-1.5b-forward-n", &target),
        ("qwen-0.5b-forward-n", &draft),
    ] {
        if !c_wants(name) {
            continue;
        }
        match specula_models::load(&ModelSource::gguf(path), &Default::default()) {
            Ok(mut l) => bench_forward_n(c, name, &mut l.model, 256),
            Err(e) => eprintln!("skipping {name}: {e}"),
        }
    }
    if !c_wants("qwen/") {
        return;
    }
    let long = long_prompt();
    let prompts = [("qwen/short", SHORT_PROMPT), ("qwen/long", long.as_str())];
    if let Ok(mut g) = build(&target, None) {
        for (group, p) in prompts {
            bench_latency(c, group, "plain", &mut g, p);
        }
    }
    if let Ok(mut g) = build(&target, Some(&draft)) {
        for k in [2, 4, 6] {
            for (group, p) in prompts {
                if g.set_draft_len(k).is_ok() {
                    bench_latency(c, group, &format!("k{k}"), &mut g, p);
                }
            }
        }
    }
    // The default configuration: n-gram, then the draft, adaptive draft length.
    if let Ok(mut g) = build(&target, Some(&draft)) {
        for (group, p) in prompts {
            bench_latency(c, group, "adaptive", &mut g, p);
        }
    }
}

/// Whether the command-line filter can match benchmarks starting with `prefix` (so that a
/// filtered run does not load models it will not use).
fn c_wants(prefix: &str) -> bool {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    filters.is_empty()
        || filters
            .iter()
            .any(|f| prefix.contains(f.as_str()) || f.starts_with(prefix))
}

fn build(target: &Path, draft: Option<&Path>) -> Result<Generator, specula::Error> {
    let mut b = Generator::builder().model(ModelSource::gguf(target));
    if let Some(d) = draft {
        b = b
            .draft(ModelSource::gguf(d))
            .ngram(specula::NgramProposer::default());
    }
    b.build().map_err(|e| {
        eprintln!("cannot load {}: {e}", target.display());
        e
    })
}

criterion_group!(benches, synthetic, real);
criterion_main!(benches);
