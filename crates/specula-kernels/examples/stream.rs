//! Matmul speed with the weights streamed from memory, as in a real decode step (the `matmul`
//! criterion bench reuses one matrix, which then sits in the L3 cache).
//!
//! ```text
//! cargo run --release -p specula-kernels --example stream -- [q4k|q6k|q50|q80] [rows] [cols] [n] [MB]
//! ```
//!
//! Builds enough random matrices of the given type and shape to fill `MB` megabytes (default 400,
//! far more than any cache), multiplies each by `n` activation rows in turn, and prints the weight
//! bytes read per second: the median and range over 11 timed passes after one warm-up pass.
//! `RAYON_NUM_THREADS` sets the thread count (default 2) and `PASSES` the number of timed
//! passes (with `MB` 0 and a small matrix, many passes time the kernel on cache-resident
//! weights).

use specula_kernels::QuantType;
use std::time::Instant;

#[path = "../benches/common/mod.rs"]
mod common;

fn arg<T: std::str::FromStr>(args: &[String], i: usize, default: T) -> Result<T, String> {
    match args.get(i) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| format!("argument {i} ({v:?}) is not a valid number")),
    }
}

fn main() -> Result<(), String> {
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .map_err(|e| e.to_string())?;
    let args: Vec<String> = std::env::args().collect();
    let ty = match args.get(1).map(String::as_str) {
        None | Some("q4k") => QuantType::Q4K,
        Some("q6k") => QuantType::Q6K,
        Some("q50") => QuantType::Q5_0,
        Some("q80") => QuantType::Q8_0,
        Some(other) => return Err(format!("unknown type {other:?}: use q4k, q6k, q50 or q80")),
    };
    let rows: usize = arg(&args, 2, 8960)?;
    let cols: usize = arg(&args, 3, 1536)?;
    let n: usize = arg(&args, 4, 1)?;
    let mb: usize = arg(&args, 5, 400)?;
    let bytes_each = rows * (cols / ty.block_elems().max(1)) * ty.block_bytes();
    if rows == 0 || n == 0 || bytes_each == 0 {
        return Err("rows, cols and n must be positive (cols a whole number of blocks)".into());
    }
    let count = (mb << 20) / bytes_each + 1;
    let ms = (0..count)
        .map(|i| common::random_matrix(ty, rows, cols, i as u64).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let x: Vec<f32> = (0..n * cols)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
        .collect();
    let mut y = vec![0f32; n * rows];
    let passes = std::env::var("PASSES")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(11)
        .max(1);
    let mut rates = Vec::new();
    for pass in 0..=passes {
        let t = Instant::now();
        for m in &ms {
            m.matmul(&x, n, &mut y).map_err(|e| e.to_string())?;
        }
        let dt = t.elapsed().as_secs_f64();
        if pass > 0 {
            rates.push((count * bytes_each) as f64 / dt / 1e9);
        }
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "{ty:?} {rows}x{cols}, n = {n}, {count} matrices ({:.0} MB), {threads} threads: median {:.2} GB/s (range {:.2}-{:.2}), {:.1} us per matmul",
        (count * bytes_each) as f64 / 1e6,
        rates[rates.len() / 2],
        rates[0],
        rates[rates.len() - 1],
        bytes_each as f64 / rates[rates.len() / 2] / 1e3,
    );
    Ok(())
}
