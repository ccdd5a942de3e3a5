//! Spec-Bench runner: plain and speculative decoding of the Spec-Bench questions, answers written in
//! Spec-Bench's own format, a speed report with Spec-Bench's definitions, and a losslessness check.
//!
//! ```text
//! # 2 questions per category (the shortest), 4 built-in code prompts, plain + k = 2, 4, 6:
//! cargo run --release --example specbench -- --per-category 2 --shortest --code 4 \
//!     --draft-lens 2,4,6 --max-tokens 128 --out out/specbench
//! ```
//!
//! Questions come from `../shared/data/spec_bench/question.jsonl` (`--questions` to override).
//! For every question the modes run back to back (plain, then each draft length), so slow drift of
//! a shared machine affects all modes alike. Each mode writes `<out>/<mode>.jsonl` with one
//! Spec-Bench answer per question (`question_id, category, answer_id, model_id, tstamp,
//! choices[{index, turns, decoding_steps, new_tokens, wall_time, accept_lengths, ttft}]`; `ttft`,
//! seconds to each turn's first token, is Specula's addition), and the
//! report goes to stdout, `<out>/report.md` and `<out>/summary.json`.
//!
//! Report definitions (Spec-Bench `evaluation/speed.py`): an answer's speed is its new tokens over
//! its wall time (all turns); a category's speed is the mean of its answers' speeds; speedup is
//! that mean over the plain mean; mean accepted tokens is the mean of every step's accepted length
//! (tokens emitted per target forward, 1.00 for plain decoding). Acceptance rate is accepted over
//! drafted tokens. Decode speedup is the same ratio for the decode phase alone: tokens after each
//! turn's first over the time after it (where a long prompt's prefill dominates the wall time,
//! as in `rag`, this is the part speculation can change). Greedy speculative answers must be text-identical to the plain ones; any that
//! differ are listed and the run exits with an error.

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use specula::{
    AcceptanceStats, ChatMessage, GenerateParams, Generation, Generator, LatencyStats, ModelSource,
    NgramProposer, DEFAULT_MAX_DRAFT_LEN,
};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

/// Run Spec-Bench questions plain and speculatively.
#[derive(Parser, Debug)]
struct Args {
    /// Target model (default: the 1.5B Qwen in the model cache).
    #[arg(long)]
    model: Option<String>,
    /// Draft model (default: the 0.5B Qwen in the model cache).
    #[arg(long)]
    draft: Option<String>,
    /// Target weight dtype: `bf16`, `f16` or `f32` dequantizes the target at load (the draft stays
    /// quantized); default: keep the GGUF quantization.
    #[arg(long)]
    dtype: Option<String>,
    /// Token ids the draft model scores (0 = its whole vocabulary; default: the library's
    /// DEFAULT_DRAFT_VOCAB).
    #[arg(long)]
    draft_vocab: Option<usize>,
    /// Spec-Bench question file.
    #[arg(long)]
    questions: Option<PathBuf>,
    /// Categories to run, comma separated (default: all).
    #[arg(long, value_delimiter = ',')]
    category: Vec<String>,
    /// Questions per category (default: all).
    #[arg(long)]
    per_category: Option<usize>,
    /// Take each category's shortest questions instead of the first ones.
    #[arg(long)]
    shortest: bool,
    /// Also run this many built-in code-completion prompts (category `code`, no chat template).
    #[arg(long, default_value_t = 0)]
    code: usize,
    /// Run both turns of each question (the second sees the mode's own first answer).
    #[arg(long)]
    both_turns: bool,
    /// Fixed draft lengths to run with the draft model; `--draft-lens` with no value runs none.
    #[arg(long, value_delimiter = ',', default_value = "4", num_args = 0..)]
    draft_lens: Vec<usize>,
    /// Also run the n-gram (prompt lookup) proposer alone, with the adaptive draft length (mode
    /// `ngram`).
    #[arg(long)]
    ngram: bool,
    /// Also run the default product configuration (mode `adaptive`): n-gram first, then the draft
    /// model, with the adaptive draft length.
    #[arg(long)]
    adaptive: bool,
    /// Skip plain decoding (no speedups or losslessness check then).
    #[arg(long)]
    no_plain: bool,
    /// New tokens per turn.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// CPU threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Output directory.
    #[arg(long, default_value = "out/specbench")]
    out: PathBuf,
}

/// Code-completion prompts for the `code` category (raw completion, no chat template).
const CODE_PROMPTS: [&str; 8] = [
    "def is_prime(n: int) -> bool:\n    \"\"\"Return True if n is a prime number.\"\"\"\n",
    "def quicksort(arr):\n    \"\"\"Sort a list with quicksort and return a new list.\"\"\"\n",
    "# Merge two sorted lists into one sorted list\ndef merge(a, b):\n",
    "/// Returns the n-th Fibonacci number.\nfn fib(n: u64) -> u64 {\n",
    "class LRUCache:\n    \"\"\"A least-recently-used cache with a fixed capacity.\"\"\"\n\n    def __init__(self, capacity: int):\n",
    "def binary_search(items, x):\n    \"\"\"Index of x in the sorted list items, or -1.\"\"\"\n",
    "def word_count(path):\n    \"\"\"Count the words of a text file; return a dict word -> count.\"\"\"\n",
    "function debounce(fn, ms) {\n  // Call fn at most once per ms milliseconds.\n",
];

struct Question {
    id: u64,
    category: String,
    turns: Vec<String>,
    /// Raw completion prompt instead of a chat.
    raw: bool,
}

/// One mode's answer to one question.
struct Answer {
    turns: Vec<String>,
    steps: Vec<usize>,
    new_tokens: Vec<usize>,
    wall_time: Vec<f64>,
    accept_lengths: Vec<usize>,
    stats: Option<AcceptanceStats>,
    ttft_ms: Vec<f64>,
    itl_ms: Vec<f64>,
}

impl Answer {
    fn speed(&self) -> f64 {
        let t: f64 = self.wall_time.iter().sum();
        self.new_tokens.iter().sum::<usize>() as f64 / t.max(1e-9)
    }

    /// Tokens per second after each turn's first token (`None` if no turn has a second token).
    fn decode_speed(&self) -> Option<f64> {
        let tokens: usize = self.new_tokens.iter().map(|n| n.saturating_sub(1)).sum();
        let secs: f64 = self
            .wall_time
            .iter()
            .zip(&self.ttft_ms)
            .map(|(w, t)| (w - t / 1e3).max(0.0))
            .sum();
        (tokens > 0 && secs > 0.0).then(|| tokens as f64 / secs)
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn load_questions(args: &Args) -> Result<Vec<Question>, Box<dyn std::error::Error>> {
    let path = args.questions.clone().unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/spec_bench/question.jsonl")
    });
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("{}: {e} (pass --questions FILE)", path.display()))?;
    let mut by_cat: BTreeMap<String, Vec<Question>> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: Value =
            serde_json::from_str(line).map_err(|e| format!("{}:{}: {e}", path.display(), n + 1))?;
        let bad = || format!("{}:{}: not a Spec-Bench question", path.display(), n + 1);
        let category = v["category"].as_str().ok_or_else(bad)?.to_string();
        let turns = v["turns"]
            .as_array()
            .ok_or_else(bad)?
            .iter()
            .map(|t| t.as_str().map(str::to_string).ok_or_else(bad))
            .collect::<Result<Vec<_>, _>>()?;
        if turns.is_empty() {
            return Err(bad().into());
        }
        let q = Question {
            id: v["question_id"].as_u64().ok_or_else(bad)?,
            category: category.clone(),
            turns,
            raw: false,
        };
        if !by_cat.contains_key(&category) {
            order.push(category.clone());
        }
        by_cat.entry(category).or_default().push(q);
    }
    for c in &args.category {
        if !by_cat.contains_key(c) {
            return Err(format!("no category `{c}`; have: {}", order.join(", ")).into());
        }
    }
    let mut out = Vec::new();
    for c in order {
        if !args.category.is_empty() && !args.category.contains(&c) {
            continue;
        }
        let mut qs = by_cat.remove(&c).unwrap_or_default();
        if args.shortest {
            qs.sort_by_key(|q| (q.turns[0].len(), q.id));
        }
        qs.truncate(args.per_category.unwrap_or(usize::MAX));
        out.extend(qs);
    }
    if args.code > CODE_PROMPTS.len() {
        return Err(format!("--code: at most {} built-in prompts", CODE_PROMPTS.len()).into());
    }
    for (i, p) in CODE_PROMPTS.iter().take(args.code).enumerate() {
        out.push(Question {
            id: 10_001 + i as u64,
            category: "code".into(),
            turns: vec![p.to_string()],
            raw: true,
        });
    }
    Ok(out)
}

/// Answers one question: each turn sees the previous turns and this mode's own answers.
fn answer(
    g: &mut Generator,
    q: &Question,
    turns: usize,
    params: &GenerateParams,
) -> Result<Answer, Box<dyn std::error::Error>> {
    let mut a = Answer {
        turns: Vec::new(),
        steps: Vec::new(),
        new_tokens: Vec::new(),
        wall_time: Vec::new(),
        accept_lengths: Vec::new(),
        stats: None,
        ttft_ms: Vec::new(),
        itl_ms: Vec::new(),
    };
    let mut messages = Vec::new();
    for turn in q.turns.iter().take(turns) {
        let out: Generation = if q.raw {
            g.generate(turn, params)?
        } else {
            messages.push(ChatMessage::user(turn));
            g.generate_chat(&messages, params, |_| {})?
        };
        messages.push(ChatMessage::new("assistant", out.text.clone()));
        a.steps.push(out.step_tokens.len());
        a.new_tokens.push(out.tokens.len());
        a.wall_time.push(out.metrics.total_ms / 1e3);
        a.accept_lengths.extend(&out.step_tokens);
        a.ttft_ms.push(out.metrics.ttft_ms);
        a.itl_ms.extend(&out.metrics.inter_token_ms);
        if let Some(s) = &out.speculation {
            a.stats
                .get_or_insert_with(|| AcceptanceStats::new(0))
                .merge(s);
        }
        a.turns.push(out.text);
    }
    Ok(a)
}

fn record(q: &Question, mode: &str, a: &Answer) -> Value {
    let tstamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    json!({
        "question_id": q.id,
        "category": q.category,
        "answer_id": format!("specula-{mode}-{}", q.id),
        "model_id": format!("specula-{mode}"),
        "tstamp": tstamp,
        "choices": [{
            "index": 0,
            "turns": a.turns,
            "decoding_steps": a.steps,
            "new_tokens": a.new_tokens,
            "wall_time": a.wall_time,
            "accept_lengths": a.accept_lengths,
            "ttft": a.ttft_ms.iter().map(|t| t / 1e3).collect::<Vec<_>>(),
        }],
    })
}

/// Per-category aggregate of one mode.
#[derive(Default, Clone)]
struct Agg {
    speeds: Vec<f64>,
    /// Decode-phase speed of each answer (`None`: no second token).
    decode_speeds: Vec<Option<f64>>,
    accept_lengths: Vec<usize>,
    stats: Option<AcceptanceStats>,
    ttft_ms: Vec<f64>,
    itl_ms: Vec<f64>,
}

impl Agg {
    fn add(&mut self, a: &Answer) {
        self.speeds.push(a.speed());
        self.decode_speeds.push(a.decode_speed());
        self.absorb(&a.accept_lengths, &a.ttft_ms, &a.itl_ms, a.stats.as_ref());
    }
    fn merge(&mut self, o: &Agg) {
        self.speeds.extend(&o.speeds);
        self.decode_speeds.extend(&o.decode_speeds);
        self.absorb(&o.accept_lengths, &o.ttft_ms, &o.itl_ms, o.stats.as_ref());
    }
    fn absorb(
        &mut self,
        accept_lengths: &[usize],
        ttft_ms: &[f64],
        itl_ms: &[f64],
        stats: Option<&AcceptanceStats>,
    ) {
        self.accept_lengths.extend(accept_lengths);
        self.ttft_ms.extend(ttft_ms);
        self.itl_ms.extend(itl_ms);
        if let Some(s) = stats {
            self.stats
                .get_or_insert_with(|| AcceptanceStats::new(0))
                .merge(s);
        }
    }
    fn speed(&self) -> f64 {
        self.speeds.iter().sum::<f64>() / self.speeds.len().max(1) as f64
    }
    /// Mean decode-phase speed over `self` and `base`'s answers (same questions, same order) that
    /// both have a decode phase, relative to `base`'s.
    fn decode_speedup(&self, base: &Agg) -> Option<f64> {
        let (mut s, mut b, mut n) = (0.0, 0.0, 0usize);
        for (x, y) in self.decode_speeds.iter().zip(&base.decode_speeds) {
            if let (Some(x), Some(y)) = (x, y) {
                s += x;
                b += y;
                n += 1;
            }
        }
        (n > 0 && b > 0.0).then(|| s / b)
    }
    fn mean_accepted(&self) -> f64 {
        self.accept_lengths.iter().sum::<usize>() as f64 / self.accept_lengths.len().max(1) as f64
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    specula::set_num_threads(args.threads);
    let questions = load_questions(&args)?;
    if questions.is_empty() {
        return Err("no questions selected".into());
    }
    let dir = specula_models::models_dir();
    let target = args.model.clone().unwrap_or_else(|| {
        dir.join("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf")
            .display()
            .to_string()
    });
    let draft = args.draft.clone().unwrap_or_else(|| {
        dir.join("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
            .display()
            .to_string()
    });
    let mut modes: Vec<(String, Option<usize>)> = Vec::new();
    if !args.no_plain {
        modes.push(("plain".into(), None));
    }
    for &k in &args.draft_lens {
        modes.push((format!("k{k}"), Some(k)));
    }
    if args.ngram {
        modes.push(("ngram".into(), Some(DEFAULT_MAX_DRAFT_LEN)));
    }
    if args.adaptive {
        modes.push(("adaptive".into(), Some(DEFAULT_MAX_DRAFT_LEN)));
    }
    if modes.is_empty() {
        return Err("nothing to run: --no-plain and no --draft-lens, --ngram or --adaptive".into());
    }
    let dtype = args
        .dtype
        .as_deref()
        .map(specula::parse_dtype)
        .transpose()?;
    let builder = || {
        let mut b = Generator::builder().model(ModelSource::parse(&target));
        if let Some(n) = args.draft_vocab {
            b = b.draft_vocab(n);
        }
        match dtype {
            Some(d) => b.dtype(d),
            None => b,
        }
    };
    let mut plain = if args.no_plain {
        None
    } else {
        Some(builder().build()?)
    };
    let mut spec = if args.draft_lens.is_empty() {
        None
    } else {
        Some(builder().draft(ModelSource::parse(&draft)).build()?)
    };
    // Warm-up: candle repacks quantized weights on first use.
    // The adaptive modes use the builder's defaults: adaptive draft length up to
    // DEFAULT_MAX_DRAFT_LEN, n-gram first (then the draft model for `adaptive`).
    let mut ngram_gen = if args.ngram {
        Some(builder().ngram(NgramProposer::default()).build()?)
    } else {
        None
    };
    let mut adaptive_gen = if args.adaptive {
        Some(
            builder()
                .ngram(NgramProposer::default())
                .draft(ModelSource::parse(&draft))
                .build()?,
        )
    } else {
        None
    };
    let warm = GenerateParams::new(2);
    for g in [ngram_gen.as_mut(), adaptive_gen.as_mut()]
        .into_iter()
        .flatten()
    {
        g.generate("def f(x):", &warm)?;
    }
    if let Some(g) = plain.as_mut() {
        g.generate("def f(x):", &warm)?;
    }
    if let Some(g) = spec.as_mut() {
        g.generate("def f(x):", &warm)?;
    }

    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let mut files = Vec::new();
    for (name, _) in &modes {
        let path = args.out.join(format!("{name}.jsonl"));
        let f = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        files.push(std::io::BufWriter::new(f));
    }
    let params = GenerateParams::new(args.max_tokens);
    let turns = if args.both_turns { 2 } else { 1 };
    let bar = ProgressBar::new(questions.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} questions, {elapsed} [{msg}]")?
            .progress_chars("=> "),
    );
    // aggregates[mode][category]
    let mut aggregates: Vec<BTreeMap<String, Agg>> =
        modes.iter().map(|_| BTreeMap::new()).collect();
    let mut categories: Vec<String> = Vec::new();
    let mut differs: Vec<String> = Vec::new();
    for q in &questions {
        if !categories.contains(&q.category) {
            categories.push(q.category.clone());
        }
        let mut plain_turns: Option<Vec<String>> = None;
        for (mi, (name, k)) in modes.iter().enumerate() {
            let own = match name.as_str() {
                "ngram" => ngram_gen.as_mut(),
                "adaptive" => adaptive_gen.as_mut(),
                _ => None,
            };
            let a = match (own, k) {
                (Some(g), _) => answer(g, q, turns, &params)?,
                (None, None) => match plain.as_mut() {
                    Some(g) => answer(g, q, turns, &params)?,
                    None => continue,
                },
                (None, Some(k)) => match spec.as_mut() {
                    Some(g) => {
                        g.set_draft_len(*k)?;
                        answer(g, q, turns, &params)?
                    }
                    None => continue,
                },
            };
            use std::io::Write;
            writeln!(files[mi], "{}", record(q, name, &a))?;
            files[mi].flush()?; // answers survive an interrupted run
            match (&plain_turns, k) {
                (None, None) => plain_turns = Some(a.turns.clone()),
                (Some(p), Some(_)) if *p != a.turns => {
                    differs.push(format!("{} ({}) with {name}", q.id, q.category))
                }
                _ => {}
            }
            aggregates[mi]
                .entry(q.category.clone())
                .or_default()
                .add(&a);
        }
        bar.inc(1);
        bar.set_message(running_message(&modes, &aggregates));
    }
    bar.finish_and_clear();
    for f in &mut files {
        use std::io::Write;
        f.flush()?;
    }
    let (report, summary) = report(&args, &modes, &categories, &aggregates, &differs, turns);
    println!("{report}");
    std::fs::write(args.out.join("report.md"), &report)?;
    std::fs::write(
        args.out.join("summary.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    eprintln!(
        "answers, report.md and summary.json in {}",
        args.out.display()
    );
    if !differs.is_empty() {
        return Err(format!(
            "LOSSLESSNESS VIOLATION: {} speculative answers differ from plain: {}",
            differs.len(),
            differs.join("; ")
        )
        .into());
    }
    Ok(())
}

/// Running overall speedup of each speculative mode, for the progress bar.
fn running_message(modes: &[(String, Option<usize>)], aggs: &[BTreeMap<String, Agg>]) -> String {
    let overall = |m: &BTreeMap<String, Agg>| {
        let s: Vec<f64> = m.values().flat_map(|a| a.speeds.iter().copied()).collect();
        s.iter().sum::<f64>() / s.len().max(1) as f64
    };
    let base = modes
        .iter()
        .position(|(_, k)| k.is_none())
        .map(|i| overall(&aggs[i]));
    modes
        .iter()
        .zip(aggs)
        .map(|((name, _), a)| match base {
            Some(b) if b > 0.0 => format!("{name} {:.2}x", overall(a) / b),
            _ => format!("{name} {:.1} tok/s", overall(a)),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn report(
    args: &Args,
    modes: &[(String, Option<usize>)],
    categories: &[String],
    aggs: &[BTreeMap<String, Agg>],
    differs: &[String],
    turns: usize,
) -> (String, Value) {
    let plain_idx = modes.iter().position(|(_, k)| k.is_none());
    let mut rows: Vec<(String, Vec<Agg>)> = Vec::new();
    for c in categories {
        let per_mode = aggs
            .iter()
            .map(|m| m.get(c).cloned().unwrap_or_default())
            .collect();
        rows.push((c.clone(), per_mode));
    }
    // Overall: every answer of every category.
    let overall = aggs
        .iter()
        .map(|m| {
            let mut a = Agg::default();
            for x in m.values() {
                a.merge(x);
            }
            a
        })
        .collect();
    rows.push(("overall".into(), overall));

    let mut md = format!(
        "Spec-Bench run: {} questions, {} turn(s), {} new tokens per turn, {} threads, target weights {}\n\n",
        aggs.first()
            .map_or(0, |m| m.values().map(|a| a.speeds.len()).sum()),
        turns,
        args.max_tokens,
        args.threads,
        args.dtype.as_deref().unwrap_or("as in the GGUF")
    );
    md.push_str("| category | n |");
    for (name, k) in modes {
        match k {
            None => md.push_str(&format!(" {name} tok/s |")),
            Some(_) => md.push_str(&format!(
                " {name} tok/s | {name} speedup | {name} decode speedup | {name} acceptance | {name} mean accepted |"
            )),
        }
    }
    md.push_str("\n|---|---|");
    for (_, k) in modes {
        md.push_str(if k.is_none() {
            "---|"
        } else {
            "---|---|---|---|---|"
        });
    }
    md.push('\n');
    let mut json_rows = Vec::new();
    for (cat, per_mode) in &rows {
        let base = plain_idx.map(|i| per_mode[i].speed());
        let base_agg = plain_idx.map(|i| &per_mode[i]);
        md.push_str(&format!("| {cat} | {} |", per_mode[0].speeds.len()));
        let mut jm = serde_json::Map::new();
        for ((name, k), a) in modes.iter().zip(per_mode) {
            let speed = a.speed();
            let speedup = base.filter(|b| *b > 0.0).map(|b| speed / b);
            let rate = a.stats.as_ref().map(|s| s.acceptance_rate());
            let decode_speedup = base_agg.and_then(|b| a.decode_speedup(b));
            if k.is_none() {
                md.push_str(&format!(" {speed:.2} |"));
            } else {
                let fmt = |x: Option<f64>, f: &dyn Fn(f64) -> String| x.map_or("-".into(), f);
                md.push_str(&format!(
                    " {speed:.2} | {} | {} | {} | {:.2} |",
                    fmt(speedup, &|s| format!("{s:.2}x")),
                    fmt(decode_speedup, &|s| format!("{s:.2}x")),
                    fmt(rate, &|r| format!("{:.1}%", r * 100.0)),
                    a.mean_accepted()
                ));
            }
            jm.insert(
                name.clone(),
                json!({
                    "draft_len": k,
                    "tokens_per_s": speed,
                    "speedup": speedup,
                    "decode_speedup": decode_speedup,
                    "acceptance_rate": rate,
                    "mean_accepted_tokens": a.mean_accepted(),
                    "position_acceptance": a.stats.as_ref().map(|s| s.position_acceptance()),
                    "answers": a.speeds.len(),
                }),
            );
        }
        md.push('\n');
        json_rows.push(json!({ "category": cat, "modes": jm }));
    }
    if plain_idx.is_some() && modes.len() > 1 {
        md.push_str(&if differs.is_empty() {
            "\nLosslessness: every speculative answer is text-identical to the plain answer.\n"
                .to_string()
        } else {
            format!(
                "\nLOSSLESSNESS VIOLATION: {} answers differ: {}\n",
                differs.len(),
                differs.join("; ")
            )
        });
    }
    if let Some((_, per_mode)) = rows.last() {
        md.push_str(
            "\nLatency over all answers (ms):\n\n| mode | TTFT p50 | ITL mean | ITL p50 | ITL p95 | ITL p99 |\n|---|---|---|---|---|---|\n",
        );
        for ((name, _), a) in modes.iter().zip(per_mode) {
            let t = LatencyStats::from_millis(&a.ttft_ms);
            let i = LatencyStats::from_millis(&a.itl_ms);
            md.push_str(&format!(
                "| {name} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} |\n",
                t.p50_ms, i.mean_ms, i.p50_ms, i.p95_ms, i.p99_ms
            ));
        }
    }
    // Every TTFT and inter-token latency of each mode, for distribution charts.
    let latency: serde_json::Map<String, Value> = rows
        .last()
        .map(|(_, per_mode)| {
            modes
                .iter()
                .zip(per_mode)
                .map(|((name, _), a)| {
                    (
                        name.clone(),
                        json!({ "ttft_ms": a.ttft_ms, "itl_ms": a.itl_ms }),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let summary = json!({
        "latency": latency,
        "max_tokens": args.max_tokens,
        "threads": args.threads,
        "dtype": args.dtype,
        "turns": turns,
        "rows": json_rows,
        "differs": differs,
    });
    (md, summary)
}
