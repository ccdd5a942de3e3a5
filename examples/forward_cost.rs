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
//!
//! With `--llama-pace BIN` (built by `scripts/llama-cpp.sh`) every forward of ours is paired with
//! llama.cpp's forward of the same tokens on the same file and context, run by a helper process
//! right before or after it (alternately), so the two see the same state of the host; the ratio
//! is taken per round:
//!
//! ```text
//! cargo run --release --example forward_cost -- --ns 1,5,9 --rounds 400 --blocks 40 \
//!     --llama-pace ~/.cache/specula/llama.cpp/build/bin/llama-pace \
//!     ~/.cache/specula/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
//! ```

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
    /// Dequantize the model to this dtype at load (`bf16`: the full-precision target path).
    #[arg(long)]
    dtype: Option<String>,
    /// KV cache element type (`f16`, the CPU's default, or `f32`).
    #[arg(long)]
    kv_dtype: Option<String>,
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
    /// The `llama-pace` helper built by scripts/llama-cpp.sh: time llama.cpp's forward of the
    /// same tokens on the same file next to each of ours (in alternating order), so that both see
    /// the same state of a drifting host, and print llama.cpp's times and the per-round ratios.
    #[arg(long)]
    llama_pace: Option<std::path::PathBuf>,
    /// With `--llama-pace`: milliseconds to wait before each forward, ours and llama.cpp's, so
    /// that the other program's threads have stopped spinning (llama.cpp's OpenMP workers spin
    /// for a few milliseconds after a forward before they sleep, and would steal the cores of the
    /// forward that follows).
    #[arg(long, default_value_t = 20)]
    gap_ms: u64,
    /// Megabytes of a plain memory read timed once per round on all threads (0: none): the
    /// host's memory bandwidth at that moment, shown per block next to the forwards' times.
    #[arg(long, default_value_t = 0)]
    probe_mb: usize,
}

/// GB/s of one parallel pass reading `data` (an xor over its words, which the compiler
/// vectorizes: a read-bandwidth probe, not a kernel).
fn probe(data: &[u64]) -> f64 {
    use rayon::prelude::*;
    let t = Instant::now();
    let x = data
        .par_chunks(1 << 16)
        .map(|c| c.iter().fold(0u64, |a, &w| a ^ w))
        .reduce(|| 0, |a, b| a ^ b);
    std::hint::black_box(x);
    (data.len() * 8) as f64 / t.elapsed().as_secs_f64() / 1e9
}

/// A running `llama-pace` (scripts/llama-pace.cpp): one llama.cpp forward per request.
struct Pace {
    child: std::process::Child,
    input: std::process::ChildStdin,
    output: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl Pace {
    fn start(bin: &std::path::Path, args: &Args) -> Result<Self, Box<dyn std::error::Error>> {
        use std::process::{Command, Stdio};
        let mut child = Command::new(bin)
            .arg(&args.model)
            .arg(args.threads.to_string())
            .arg(args.context.max(1).to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot run {}: {e} (build it: scripts/llama-cpp.sh)",
                    bin.display()
                )
            })?;
        let input = child.stdin.take().ok_or("llama-pace: no stdin")?;
        let out = child.stdout.take().ok_or("llama-pace: no stdout")?;
        let mut pace = Self {
            child,
            input,
            output: std::io::BufRead::lines(std::io::BufReader::new(out)),
        };
        match pace.output.next() {
            Some(Ok(l)) if l == "ready" => Ok(pace),
            other => Err(format!("llama-pace did not start: {other:?}").into()),
        }
    }

    /// The milliseconds of one llama.cpp forward of `n` tokens.
    fn forward(
        &mut self,
        n: usize,
        gap: std::time::Duration,
    ) -> Result<f64, Box<dyn std::error::Error>> {
        use std::io::Write;
        std::thread::sleep(gap);
        writeln!(self.input, "{n}")?;
        self.input.flush()?;
        let line = self.output.next().ok_or("llama-pace exited")??;
        Ok(line.trim().parse()?)
    }
}

impl Drop for Pace {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        l => v[l / 2],
    }
}

/// Per block of `size` rounds: when it ended, the mean ms of each n and the mean ratio to n = 1,
/// and the mean of the memory probe's GB/s when `probe` has values.
fn print_blocks(
    title: &str,
    ns: &[usize],
    times: &[Vec<f64>],
    probe: &[f64],
    ends: &[f64],
    size: usize,
) {
    println!("{title}");
    println!();
    let mut head: Vec<String> = ns.iter().map(|n| format!("n = {n} ms (ratio)")).collect();
    if !probe.is_empty() {
        head.push("memory read GB/s".into());
    }
    println!("| block ends at s | {} |", head.join(" | "));
    println!("|---|{}", "---|".repeat(head.len()));
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    for (b, end) in ends.chunks(size).enumerate() {
        let at = |t: &Vec<f64>| t[b * size..(b * size + end.len()).min(t.len())].to_vec();
        let ones = at(&times[0]);
        let mut cells: Vec<String> = times
            .iter()
            .map(|t| {
                let mine = at(t);
                let ratios: Vec<f64> = mine.iter().zip(&ones).map(|(a, b)| a / b).collect();
                format!("{:.1} ({:.2}x)", mean(&mine), mean(&ratios))
            })
            .collect();
        if !probe.is_empty() {
            cells.push(format!("{:.1}", mean(&at(&probe.to_vec()))));
        }
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
    let options = specula_models::LoadOptions {
        dtype: args
            .dtype
            .as_deref()
            .map(specula::parse_dtype)
            .transpose()?,
        kv_dtype: args
            .kv_dtype
            .as_deref()
            .map(specula::parse_dtype)
            .transpose()?,
        ..Default::default()
    };
    let mut loaded = specula_models::load(&ModelSource::parse(&args.model), &options)?;
    let m: &mut dyn CausalLm = &mut loaded.model;
    let prefix: Vec<TokenId> = (0..args.context as TokenId)
        .map(|i| 100 + i % 1000)
        .collect();
    m.forward(&prefix, LogitsSelection::Last)?;
    let mut pace = match &args.llama_pace {
        Some(bin) => Some(Pace::start(bin, &args)?),
        None => None,
    };
    let gap = std::time::Duration::from_millis(args.gap_ms);
    let probe_data: Vec<u64> = (0..args.probe_mb << 17).map(|i| i as u64).collect();
    let mut probe_gbs = Vec::new();
    let mut times = vec![Vec::new(); args.ns.len()];
    let mut theirs = vec![Vec::new(); args.ns.len()];
    let start = Instant::now();
    let mut ends = Vec::new();
    for round in 0..=args.rounds {
        for (i, &n) in args.ns.iter().enumerate() {
            let toks: Vec<TokenId> = (0..n as TokenId).map(|t| 200 + t).collect();
            // llama.cpp's forward goes first in odd rounds, ours in even ones.
            let mut other = None;
            if let Some(p) = pace.as_mut().filter(|_| round % 2 == 1) {
                other = Some(p.forward(n, gap)?);
            }
            if pace.is_some() {
                std::thread::sleep(gap);
            }
            let t = Instant::now();
            m.forward(&toks, LogitsSelection::All)?;
            let dt = t.elapsed().as_secs_f64() * 1e3;
            m.truncate(args.context)?;
            if let Some(p) = pace.as_mut().filter(|_| round % 2 == 0) {
                other = Some(p.forward(n, gap)?);
            }
            // Round 0 warms up.
            if round > 0 {
                times[i].push(dt);
                theirs[i].extend(other);
            }
        }
        if round > 0 {
            if !probe_data.is_empty() {
                probe_gbs.push(probe(&probe_data));
            }
            ends.push(start.elapsed().as_secs_f64());
        }
    }
    if args.blocks > 0 {
        let title = "Specula, per block:";
        print_blocks(title, &args.ns, &times, &probe_gbs, &ends, args.blocks);
        if pace.is_some() {
            print_blocks(
                "llama.cpp, per block:",
                &args.ns,
                &theirs,
                &[],
                &ends,
                args.blocks,
            );
        }
    }
    if pace.is_some() {
        println!(
            "| n | Specula median ms | llama.cpp median ms | median of llama.cpp / Specula per \
             round | llama.cpp median ratio to n = 1 |"
        );
        println!("|---|---|---|---|---|");
        for (i, &n) in args.ns.iter().enumerate() {
            let ratio =
                |a: &[f64], b: &[f64]| median(a.iter().zip(b).map(|(x, y)| x / y).collect());
            println!(
                "| {n} | {:.1} | {:.1} | {:.3}x | {:.2}x |",
                median(times[i].clone()),
                median(theirs[i].clone()),
                ratio(&theirs[i], &times[i]),
                ratio(&theirs[i], &theirs[0])
            );
        }
        println!();
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
