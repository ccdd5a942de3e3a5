//! Runs the same prompt with plain and speculative decoding, prints both speeds side by side with
//! the speedup and acceptance, and exits with an error if greedy outputs differ.
//!
//! ```text
//! M=~/.cache/specula/models
//! cargo run --release --example compare -- --model $M/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf \
//!     --draft $M/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf --draft-len 4 --prompt "def quicksort(arr):"
//! ```

use clap::Parser;
use specula::{GenerateParams, Generator, ModelSource};

/// Plain vs speculative decoding of one prompt.
#[derive(Parser, Debug)]
struct Args {
    /// Target model (default: the 1.5B Qwen in the model cache).
    #[arg(long)]
    model: Option<String>,
    /// Draft model (default: the 0.5B Qwen in the model cache).
    #[arg(long)]
    draft: Option<String>,
    /// Tokens drafted per step.
    #[arg(long, default_value_t = 4)]
    draft_len: usize,
    /// The prompt.
    #[arg(long, default_value = "def quicksort(arr):")]
    prompt: String,
    /// New tokens.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// CPU threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
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
    let dir = specula_models::models_dir();
    let target = args.model.unwrap_or_else(|| {
        dir.join("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf")
            .display()
            .to_string()
    });
    let draft = args.draft.unwrap_or_else(|| {
        dir.join("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
            .display()
            .to_string()
    });
    let mut plain = Generator::builder()
        .model(ModelSource::parse(&target))
        .build()?;
    let mut spec = Generator::builder()
        .model(ModelSource::parse(&target))
        .draft(ModelSource::parse(&draft))
        .draft_len(args.draft_len)
        .build()?;
    let params = GenerateParams::new(args.max_tokens);
    // Warm-up: candle repacks quantized weights on first use.
    let warm = GenerateParams::new(2);
    plain.generate(&args.prompt, &warm)?;
    spec.generate(&args.prompt, &warm)?;

    let a = plain.generate(&args.prompt, &params)?;
    let b = spec.generate(&args.prompt, &params)?;
    let tps =
        |g: &specula::Generation| g.metrics.new_tokens as f64 * 1e3 / g.metrics.total_ms.max(1e-9);
    println!(
        "{:<12} {:>8} {:>10} {:>10} {:>12}",
        "mode", "tokens", "total ms", "tok/s", "ITL p50 ms"
    );
    for (name, g) in [("plain", &a), ("speculative", &b)] {
        println!(
            "{:<12} {:>8} {:>10.0} {:>10.2} {:>12.1}",
            name,
            g.metrics.new_tokens,
            g.metrics.total_ms,
            tps(g),
            g.metrics.inter_token.p50_ms
        );
    }
    println!("speedup: {:.2}x", tps(&b) / tps(&a).max(1e-9));
    if let Some(s) = &b.speculation {
        println!("k = {}: {}", args.draft_len, s.summary());
    }
    if a.tokens != b.tokens {
        let at = a
            .tokens
            .iter()
            .zip(&b.tokens)
            .take_while(|(x, y)| x == y)
            .count();
        return Err(format!(
            "LOSSLESSNESS VIOLATION: speculative output differs from plain output at token {at}\nplain: {:?}\nspec:  {:?}",
            a.text, b.text
        )
        .into());
    }
    println!("outputs identical ({} tokens)", a.tokens.len());
    Ok(())
}
