//! Specula and llama.cpp side by side: plain and speculative greedy decoding of the same GGUF pair,
//! the same prompts and the same thread count, measured in one run.
//!
//! ```text
//! BIN=$(scripts/llama-cpp.sh | tail -n1)      # builds llama.cpp's tools once (long)
//! cargo run --release --example vs_llamacpp -- --llama-bin $BIN --draft-lens 2,4,6 --prompts 4
//! ```
//!
//! For every prompt the modes run back to back: llama.cpp plain (`llama-completion`), Specula
//! plain, then for each k llama.cpp speculative (`llama-speculative-simple
//! --spec-type draft-simple --spec-draft-n-max k --spec-draft-n-min 0 --spec-draft-p-min 0`, so it drafts exactly k like
//! Specula's fixed-k mode) and Specula
//! speculative. Both decode `--max-tokens` tokens with EOS ignored. The speed compared is decode
//! tokens/s (prefill excluded), as both tools report it: llama.cpp's `eval time` / `decoded ... t/s`
//! lines and Specula's `decode_tokens_per_s`. The table reports medians over prompts and the
//! ratios Specula / llama.cpp; it also says whether each tool's speculative output agrees with its
//! own plain output: Specula's must be identical; llama.cpp's counts as agreeing when one text is a
//! prefix of the other, because its speculative tool can emit a few tokens past `-n`. The report is printed and written to `<out>/report.md` and `<out>/runs.json`.

use clap::Parser;
use serde_json::json;
use specula::{GenerateParams, Generator, ModelSource};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Specula vs llama.cpp on the same pair and prompts.
#[derive(Parser, Debug)]
struct Args {
    /// Directory with llama.cpp's `llama-completion` and `llama-speculative-simple`
    /// (default: where scripts/llama-cpp.sh builds them).
    #[arg(long)]
    llama_bin: Option<PathBuf>,
    /// Target GGUF (default: the 1.5B Qwen in the model cache).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Draft GGUF (default: the 0.5B Qwen in the model cache).
    #[arg(long)]
    draft: Option<PathBuf>,
    /// Draft lengths (`--draft-lens` with no value: plain decoding only).
    #[arg(long, value_delimiter = ',', default_value = "2,4,6", num_args = 0..)]
    draft_lens: Vec<usize>,
    /// How many of the built-in code prompts to run (1..=6).
    #[arg(long, default_value_t = 4)]
    prompts: usize,
    /// New tokens per run.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// CPU threads for both tools (and llama.cpp's draft).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Output directory.
    #[arg(long, default_value = "out/vs-llamacpp")]
    out: PathBuf,
    /// The draft scores only its first N token ids and its context's (`GeneratorBuilder::
    /// draft_vocab`; 0: all; default: the library's `DEFAULT_DRAFT_VOCAB`).
    #[arg(long)]
    draft_vocab: Option<usize>,
}

/// Code-completion prompts (no trailing newline issues: passed with `-p`, not `-f`).
const PROMPTS: [&str; 6] = [
    "def is_prime(n: int) -> bool:\n    \"\"\"Return True if n is a prime number.\"\"\"\n",
    "def quicksort(arr):\n    \"\"\"Sort a list with quicksort and return a new list.\"\"\"\n",
    "# Merge two sorted lists into one sorted list\ndef merge(a, b):\n",
    "class LRUCache:\n    \"\"\"A least-recently-used cache with a fixed capacity.\"\"\"\n\n    def __init__(self, capacity: int):\n",
    "def binary_search(items, x):\n    \"\"\"Index of x in the sorted list items, or -1.\"\"\"\n",
    "def word_count(path):\n    \"\"\"Count the words of a text file; return a dict word -> count.\"\"\"\n",
];

/// One measured run.
#[derive(Clone, Debug)]
struct Run {
    tokens_per_s: f64,
    acceptance: Option<f64>,
    text: String,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

type BoxErr = Box<dyn std::error::Error>;

/// The number after `key` on the first stderr line containing `line_marker`.
fn number_after(text: &str, line_marker: &str, key: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.contains(line_marker))?;
    let rest = &line[line.find(key)? + key.len()..];
    let num: String = rest
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    num.parse().ok()
}

fn llama(bin: &Path, tool: &str, args: &[String]) -> Result<(String, String), BoxErr> {
    let exe = bin.join(tool);
    let out = Command::new(&exe).args(args).output().map_err(|e| {
        format!(
            "{}: {e} (build it with scripts/llama-cpp.sh)",
            exe.display()
        )
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
        return Err(format!(
            "{tool} failed ({}):\n{}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
        .into());
    }
    Ok((stdout, stderr))
}

/// The arguments both llama.cpp tools share: model, prompt, length, threads, context, greedy.
fn common_args(a: &Args, target: &Path, prompt: &str) -> Vec<String> {
    let mut v: Vec<String> = ["-m", &target.display().to_string(), "-p", prompt]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for (flag, value) in [
        ("-n", a.max_tokens),
        ("-t", a.threads),
        ("-c", 4096),
        ("--temp", 0),
    ] {
        v.push(flag.to_string());
        v.push(value.to_string());
    }
    v.push("--ignore-eos".into());
    v
}

fn llama_plain(a: &Args, bin: &Path, target: &Path, prompt: &str) -> Result<Run, BoxErr> {
    let mut args = common_args(a, target, prompt);
    args.extend(["-no-cnv", "--no-display-prompt"].map(String::from));
    let (stdout, stderr) = llama(bin, "llama-completion", &args)?;
    // `...:        eval time = X ms / N runs   (Y ms per token, Z tokens per second)`
    let tps = stderr
        .lines()
        .find(|l| l.contains(" eval time") && !l.contains("prompt eval"))
        .and_then(|l| number_after(l, "eval time", "ms per token,"))
        .ok_or("llama-completion printed no `eval time` line")?;
    Ok(Run {
        tokens_per_s: tps,
        acceptance: None,
        text: stdout,
    })
}

fn llama_spec(
    a: &Args,
    bin: &Path,
    target: &Path,
    draft: &Path,
    prompt: &str,
    k: usize,
) -> Result<Run, BoxErr> {
    let mut args = common_args(a, target, prompt);
    let (threads, k) = (a.threads.to_string(), k.to_string());
    args.extend(
        [
            "-md",
            &draft.display().to_string(),
            "-td",
            &threads,
            "--spec-type",
            "draft-simple",
            "--spec-draft-n-max",
            &k,
            "--spec-draft-n-min",
            "0",
            "--spec-draft-p-min",
            "0",
        ]
        .map(String::from),
    );
    let (stdout, stderr) = llama(bin, "llama-speculative-simple", &args)?;
    let tps = number_after(&stderr, "decoded", "speed:")
        .ok_or("llama-speculative-simple printed no `decoded ... speed` line")?;
    let acc = number_after(&stderr, "accept    =", "=").map(|p| p / 100.0);
    // stdout is the prompt followed by the generated text.
    let text = stdout
        .trim_start_matches('\n')
        .strip_prefix(prompt)
        .unwrap_or(&stdout)
        .to_string();
    Ok(Run {
        tokens_per_s: tps,
        acceptance: acc,
        text,
    })
}

fn specula_run(g: &mut Generator, prompt: &str, max_tokens: usize) -> Result<Run, BoxErr> {
    let p = GenerateParams {
        ignore_eos: true,
        ..GenerateParams::new(max_tokens)
    };
    let out = g.generate(prompt, &p)?;
    Ok(Run {
        tokens_per_s: out.metrics.decode_tokens_per_s,
        acceptance: out.speculation.as_ref().map(|s| s.acceptance_rate()),
        text: out.text,
    })
}

/// Whether two greedy outputs agree: equal, or one a prefix of the other.
/// `llama-speculative-simple` may emit a few tokens past `-n` (it appends whole accepted drafts),
/// so its text can be longer than the plain run's; only a real divergence counts as a difference.
fn agrees(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim_end(), b.trim_end());
    a.starts_with(b) || b.starts_with(a)
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn run() -> Result<(), BoxErr> {
    let a = Args::parse();
    if a.prompts == 0 || a.prompts > PROMPTS.len() {
        return Err(format!("--prompts must be 1..={}", PROMPTS.len()).into());
    }
    specula::set_num_threads(a.threads);
    let dir = specula_models::models_dir();
    let target = a
        .model
        .clone()
        .unwrap_or_else(|| dir.join("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"));
    let draft = a
        .draft
        .clone()
        .unwrap_or_else(|| dir.join("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"));
    let bin = a.llama_bin.clone().unwrap_or_else(|| {
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(|| PathBuf::from(".cache"));
        cache.join("specula/llama.cpp/build/bin")
    });
    let mut plain = Generator::builder()
        .model(ModelSource::gguf(&target))
        .build()?;
    let spec = Generator::builder()
        .model(ModelSource::gguf(&target))
        .draft(ModelSource::gguf(&draft));
    let spec = match a.draft_vocab {
        Some(n) => spec.draft_vocab(n),
        None => spec,
    };
    let mut spec = spec.build()?;
    let warm = GenerateParams::new(2);
    plain.generate("def f(x):", &warm)?;
    spec.generate("def f(x):", &warm)?;

    // modes: "plain", "k2", ...; runs[mode] = (llama.cpp runs, specula runs)
    let mut modes: Vec<(String, Option<usize>)> = vec![("plain".into(), None)];
    modes.extend(a.draft_lens.iter().map(|&k| (format!("k{k}"), Some(k))));
    let mut runs: Vec<(Vec<Run>, Vec<Run>)> = vec![(Vec::new(), Vec::new()); modes.len()];
    for (pi, prompt) in PROMPTS.iter().take(a.prompts).enumerate() {
        for (mi, (name, k)) in modes.iter().enumerate() {
            let (l, s) = match k {
                None => (
                    llama_plain(&a, &bin, &target, prompt)?,
                    specula_run(&mut plain, prompt, a.max_tokens)?,
                ),
                Some(k) => {
                    spec.set_draft_len(*k)?;
                    (
                        llama_spec(&a, &bin, &target, &draft, prompt, *k)?,
                        specula_run(&mut spec, prompt, a.max_tokens)?,
                    )
                }
            };
            eprintln!(
                "prompt {pi} {name:<6} llama.cpp {:>6.2} tok/s  specula {:>6.2} tok/s",
                l.tokens_per_s, s.tokens_per_s
            );
            runs[mi].0.push(l);
            runs[mi].1.push(s);
        }
    }

    let vocab = match a.draft_vocab.unwrap_or(specula::DEFAULT_DRAFT_VOCAB) {
        0 => "; Specula's draft scores every token id".to_string(),
        n => format!("; Specula's draft scores its first {n} token ids and its context's"),
    };
    let mut md = format!(
        "{} code prompts, {} new tokens (EOS ignored), greedy, {} threads{vocab}; decode tokens/s, \
         medians over prompts\n\n",
        a.prompts, a.max_tokens, a.threads
    );
    md.push_str(
        "| mode | llama.cpp tok/s | llama.cpp speedup | llama.cpp acceptance | llama.cpp spec agrees with plain \
         | Specula tok/s | Specula speedup | Specula acceptance | Specula spec == plain \
         | Specula / llama.cpp |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let (lp, sp) = (
        median(runs[0].0.iter().map(|r| r.tokens_per_s).collect()),
        median(runs[0].1.iter().map(|r| r.tokens_per_s).collect()),
    );
    let mut json_rows = Vec::new();
    for ((name, k), (l, s)) in modes.iter().zip(&runs) {
        let lt = median(l.iter().map(|r| r.tokens_per_s).collect());
        let st = median(s.iter().map(|r| r.tokens_per_s).collect());
        let la = median(l.iter().filter_map(|r| r.acceptance).collect());
        let sa = median(s.iter().filter_map(|r| r.acceptance).collect());
        let same = |runs: &[Run], base: &[Run], eq: fn(&str, &str) -> bool| {
            runs.iter()
                .zip(base)
                .filter(|(r, b)| eq(&r.text, &b.text))
                .count()
        };
        // Specula's own outputs must be identical; llama.cpp's may run past `-n`.
        let (ls, ss) = (
            same(l, &runs[0].0, agrees),
            same(s, &runs[0].1, |a, b| a == b),
        );
        let pct = |x: f64| {
            if x.is_nan() {
                "-".to_string()
            } else {
                format!("{:.1}%", x * 100.0)
            }
        };
        let eq = |n: usize| {
            if k.is_none() {
                "-".to_string()
            } else {
                format!("{n}/{}", l.len())
            }
        };
        md.push_str(&format!(
            "| {name} | {lt:.2} | {:.2}x | {} | {} | {st:.2} | {:.2}x | {} | {} | {:.2}x |\n",
            lt / lp,
            pct(la),
            eq(ls),
            st / sp,
            pct(sa),
            eq(ss),
            st / lt
        ));
        json_rows.push(json!({
            "mode": name, "draft_len": k,
            "llama_cpp": {"tokens_per_s": lt, "speedup": lt / lp, "acceptance": la, "identical_to_plain": ls},
            "specula": {"tokens_per_s": st, "speedup": st / sp, "acceptance": sa, "identical_to_plain": ss},
            "specula_over_llama_cpp": st / lt,
            "per_prompt": {
                "llama_cpp": l.iter().map(|r| r.tokens_per_s).collect::<Vec<_>>(),
                "specula": s.iter().map(|r| r.tokens_per_s).collect::<Vec<_>>(),
            },
        }));
    }
    println!("{md}");
    std::fs::create_dir_all(&a.out).map_err(|e| format!("{}: {e}", a.out.display()))?;
    std::fs::write(a.out.join("report.md"), &md)?;
    std::fs::write(
        a.out.join("runs.json"),
        serde_json::to_string_pretty(&json!({
            "prompts": a.prompts, "max_tokens": a.max_tokens, "threads": a.threads,
            "rows": json_rows,
        }))?,
    )?;
    eprintln!("report.md and runs.json in {}", a.out.display());
    Ok(())
}
