//! The verification cost ratio: the time of one forward of n tokens over the time of one forward
//! of 1 token, with the n values measured round-robin so that a noisy machine's drift hits every
//! n alike (the criterion bench `qwen-1.5b-forward-n` times each n in its own block of seconds).
//!
//! ```text
//! cargo run --release --example forward_cost -- --rounds 30 \
//!     ~/.cache/specula/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
//! ```
//! Each round runs one forward of every n (after a `--context`-token prefix, truncated back after
//! each forward, all logits computed as a verification does); prints the median time per n and
//! the median over rounds of each round's `t(n) / t(1)`.

use clap::Parser;
use specula::{CausalLm, LogitsSelection, ModelSource, TokenId};
use std::time::Instant;

/// Measure the n-token forward cost relative to one token.
#[derive(Parser, Debug)]
struct Args {
    /// A GGUF file or other model source.
    model: String,
    /// CPU threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Rounds (each times every n once).
    #[arg(long, default_value_t = 30)]
    rounds: usize,
    /// Tokens already in the cache before each forward.
    #[arg(long, default_value_t = 256)]
    context: usize,
    /// The n values, comma-separated.
    #[arg(long, default_value = "1,2,3,4,5,6,7,8,9", value_delimiter = ',')]
    ns: Vec<usize>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        l => v[l / 2],
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if args.ns.first() != Some(&1) {
        return Err("--ns must start with 1 (the ratios are taken against it)".into());
    }
    specula::set_num_threads(args.threads);
    let mut loaded = specula_models::load(&ModelSource::parse(&args.model), &Default::default())?;
    let m: &mut dyn CausalLm = &mut loaded.model;
    let prefix: Vec<TokenId> = (0..args.context as TokenId)
        .map(|i| 100 + i % 1000)
        .collect();
    m.forward(&prefix, LogitsSelection::Last)?;
    let mut times = vec![Vec::new(); args.ns.len()];
    for round in 0..=args.rounds {
        for (i, &n) in args.ns.iter().enumerate() {
            let toks: Vec<TokenId> = (0..n as TokenId).map(|t| 200 + t).collect();
            let t = Instant::now();
            m.forward(&toks, LogitsSelection::All)?;
            let dt = t.elapsed().as_secs_f64() * 1e3;
            m.truncate(args.context)?;
            // Round 0 warms up.
            if round > 0 {
                times[i].push(dt);
            }
        }
    }
    println!("| n | median ms | median ratio to n = 1 |");
    println!("|---|---|---|");
    for (i, &n) in args.ns.iter().enumerate() {
        let ratios = times[i]
            .iter()
            .zip(&times[0])
            .map(|(t, t1)| t / t1)
            .collect();
        println!(
            "| {n} | {:.1} | {:.2}x |",
            median(times[i].clone()),
            median(ratios)
        );
    }
    Ok(())
}
