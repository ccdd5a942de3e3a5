//! Plain-decoding throughput of real models: prefill and decode tokens/s, medians over runs.
//!
//! ```text
//! cargo run --release --example bench -- --threads 2 --runs 5 \
//!     ~/.cache/specula/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf \
//!     ~/.cache/specula/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
//! ```
//! Each model is loaded once and warmed up with one request (candle repacks weights on first
//! use); then every run prefills the same ~200-token code prompt and decodes `--tokens` tokens
//! greedily with EOS ignored (`--repeat 3`: the prompt three times over, ~720 tokens). Prints a
//! Markdown table row per model.

use clap::Parser;
use specula::{GenerateParams, Generator, ModelSource};

/// Measure plain decoding speed.
#[derive(Parser, Debug)]
struct Args {
    /// GGUF files or other model sources.
    models: Vec<String>,
    /// CPU threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Measured runs per model (after one warm-up).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// New tokens per run.
    #[arg(long, default_value_t = 128)]
    tokens: usize,
    /// The prompt repeated this many times (a longer context: attention's share of a step).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Weight dtype: `bf16`, `f16` or `f32` dequantizes the weights at load (default: as stored).
    #[arg(long)]
    dtype: Option<String>,
}

const PROMPT: &str = r#"import heapq
from dataclasses import dataclass, field


@dataclass(order=True)
class Task:
    priority: int
    name: str = field(compare=False)
    deps: list = field(default_factory=list, compare=False)


class Scheduler:
    """Runs tasks in priority order once their dependencies are done."""

    def __init__(self):
        self.queue = []
        self.done = set()
        self.waiting = {}

    def add(self, task: Task) -> None:
        if all(d in self.done for d in task.deps):
            heapq.heappush(self.queue, task)
        else:
            self.waiting[task.name] = task

    def run(self):
        order = []
        while self.queue:
            task = heapq.heappop(self.queue)
            order.append(task.name)
            self.done.add(task.name)
            for name, t in list(self.waiting.items()):
                if all(d in self.done for d in t.deps):
                    del self.waiting[name]
                    heapq.heappush(self.queue, t)
        return order


def topological_sort(graph):
    """Return the nodes of a DAG in dependency order."""
"#;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    specula::set_num_threads(args.threads);
    println!(
        "| model | prompt tokens | prefill tok/s | decode tok/s | ITL p50 ms | ITL p99 ms | runs |"
    );
    println!("|---|---|---|---|---|---|---|");
    let dtype = args
        .dtype
        .as_deref()
        .map(specula::parse_dtype)
        .transpose()?;
    for m in &args.models {
        let builder = Generator::builder().model(ModelSource::parse(m));
        let mut g = match dtype {
            Some(d) => builder.dtype(d),
            None => builder,
        }
        .build()?;
        let params = GenerateParams {
            ignore_eos: true,
            ..GenerateParams::new(args.tokens)
        };
        let prompt = PROMPT.repeat(args.repeat.max(1));
        g.generate(&prompt, &params)?; // warm-up
        let (mut prefill, mut decode, mut p50, mut p99) = (vec![], vec![], vec![], vec![]);
        let mut prompt_tokens = 0;
        for _ in 0..args.runs.max(1) {
            let out = g.generate(&prompt, &params)?;
            prompt_tokens = out.metrics.prompt_tokens;
            prefill.push(out.metrics.prefill_tokens_per_s);
            decode.push(out.metrics.decode_tokens_per_s);
            p50.push(out.metrics.inter_token.p50_ms);
            p99.push(out.metrics.inter_token.p99_ms);
        }
        let name = std::path::Path::new(m)
            .file_name()
            .map_or(m.clone(), |f| f.to_string_lossy().into_owned());
        println!(
            "| {name} | {prompt_tokens} | {:.1} | {:.2} | {:.1} | {:.1} | {} |",
            median(prefill),
            median(decode),
            median(p50),
            median(p99),
            args.runs
        );
    }
    Ok(())
}
