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
//! the median over rounds of each round's `t(n) / t(1)`, and with `--blocks B` the means of each
//! block of B rounds over time (on this project's shared machine the host alternates, every few
//! tens of seconds, between a state where the one-token forward is fast and the multi-token ones
//! slow and one where it is the other way round; see docs/benchmarks.md).

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
    /// Also print the mean times and ratios of each block of this many consecutive rounds (0:
    /// none): a shared host's state drifts over tens of seconds, and this shows how.
    #[arg(long, default_value_t = 0)]
    blocks: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        l => v[l / 2],
    }
}

/// Per block of `size` rounds: when it ended, the mean ms of each n and the mean ratio to n = 1.
fn print_blocks(ns: &[usize], times: &[Vec<f64>], ends: &[f64], size: usize) {
    let head: Vec<String> = ns.iter().map(|n| format!("n = {n} ms (ratio)")).collect();
    println!("| block ends at s | {} |", head.join(" | "));
    println!("|---|{}", "---|".repeat(ns.len()));
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    for (b, end) in ends.chunks(size).enumerate() {
        let at = |t: &Vec<f64>| t[b * size..(b * size + end.len()).min(t.len())].to_vec();
        let ones = at(&times[0]);
        let cells: Vec<String> = times
            .iter()
            .map(|t| {
                let mine = at(t);
                let ratios: Vec<f64> = mine.iter().zip(&ones).map(|(a, b)| a / b).collect();
                format!("{:.1} ({:.2}x)", mean(&mine), mean(&ratios))
            })
            .collect();
        println!(
            "| {:.0} | {} |",
            end.last().unwrap_or(&0.0),
            cells.join(" | ")
        );
    }
    println!();
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
    let start = Instant::now();
    let mut ends = Vec::new();
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
        if round > 0 {
            ends.push(start.elapsed().as_secs_f64());
        }
    }
    if args.blocks > 0 {
        print_blocks(&args.ns, &times, &ends, args.blocks);
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
