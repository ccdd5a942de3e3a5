//! Generate text with a local or hub model, streaming to stdout.
//!
//! ```text
//! cargo run --release --example generate -- --model ~/.cache/specula/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf \
//!     --prompt "def fibonacci(n):" --max-tokens 128
//! cargo run --release --example generate -- --model Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF:qwen2.5-coder-0.5b-instruct-q4_k_m.gguf \
//!     --chat --prompt "Write quicksort in Rust" --temperature 0.7 --top-p 0.9 --json
//! # speculative decoding with the 0.5B draft
//! cargo run --release --example generate -- --draft ~/.cache/specula/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf --draft-len 4
//! ```

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use specula::{ChatMessage, DeviceChoice, GenerateParams, Generator, ModelSource, SamplingParams};
use std::io::Write;
use std::path::PathBuf;

/// Generate text with Specula.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Model: a .gguf file, a safetensors directory, `owner/name` (hub safetensors) or
    /// `owner/name:file.gguf` (hub GGUF). Default: the 1.5B Qwen target in the model cache.
    #[arg(long)]
    model: Option<String>,
    /// A draft model for speculative decoding (same sources as --model; same tokenizer).
    #[arg(long)]
    draft: Option<String>,
    /// Tokens drafted per speculative step (default: adaptive, chosen every step up to
    /// specula::DEFAULT_MAX_DRAFT_LEN).
    #[arg(long)]
    draft_len: Option<usize>,
    /// Also propose by prompt lookup (n-gram), tried before the draft model; alone without --draft.
    #[arg(long)]
    ngram: bool,
    /// The prompt (or the user message with --chat).
    #[arg(long, default_value = "def fibonacci(n):")]
    prompt: String,
    /// Apply the model's chat template to the prompt.
    #[arg(long)]
    chat: bool,
    /// Maximum new tokens.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Top-k (0 = off).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Top-p (1 = off).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Min-p (0 = off).
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    /// Repetition penalty (1 = off).
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Device: auto, cpu, cuda[:N], metal[:N].
    #[arg(long, default_value = "auto")]
    device: String,
    /// Dense weight dtype: f32, f16 or bf16 (GGUF weights are dequantized to it at load;
    /// default: keep GGUF quantized, f32 for safetensors).
    #[arg(long)]
    dtype: Option<String>,
    /// CPU threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// A tokenizer.json overriding the model's own.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Print one JSON record (text, token ids, finish reason, metrics) instead of streaming.
    #[arg(long)]
    json: bool,
}

fn default_model() -> String {
    specula_models::models_dir()
        .join("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf")
        .display()
        .to_string()
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if let Some(n) = args.threads {
        specula::set_num_threads(n);
    }
    let model = args.model.clone().unwrap_or_else(default_model);
    let bar = ProgressBar::new(1);
    bar.set_style(
        ProgressStyle::with_template("loading {msg} [{bar:30}] {pos}/{len} layers")?
            .progress_chars("=> "),
    );
    bar.set_message(model.clone());
    let pb = bar.clone();
    let mut builder = Generator::builder()
        .model(ModelSource::parse(&model))
        .device(args.device.parse::<DeviceChoice>()?)
        .progress(move |done, total| {
            pb.set_length(total as u64);
            pb.set_position(done as u64);
        });
    if let Some(t) = &args.tokenizer {
        builder = builder.tokenizer(t);
    }
    if let Some(d) = &args.draft {
        builder = builder.draft(ModelSource::parse(d));
    }
    if args.ngram {
        builder = builder.ngram(specula::NgramProposer::default());
    }
    if let Some(k) = args.draft_len {
        builder = builder.draft_len(k);
    }
    if let Some(d) = &args.dtype {
        builder = builder.dtype(specula::parse_dtype(d)?);
    }
    let mut generator = builder.build()?;
    bar.finish_and_clear();

    let mut params = GenerateParams::new(args.max_tokens).sampling(SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repetition_penalty: args.repetition_penalty,
        seed: args.seed,
        ..Default::default()
    });
    params.stop_strings = args.stop.clone();

    let json = args.json;
    let mut stdout = std::io::stdout();
    let on_text = |delta: &str| {
        if !json {
            print!("{delta}");
            let _ = std::io::stdout().flush();
        }
    };
    let out = if args.chat {
        generator.generate_chat(&[ChatMessage::user(&args.prompt)], &params, on_text)?
    } else {
        if !json {
            print!("{}", args.prompt);
        }
        generator.generate_stream(&args.prompt, &params, on_text)?
    };
    if json {
        let record = serde_json::json!({
            "model": model,
            "prompt": args.prompt,
            "text": out.text,
            "token_ids": out.tokens,
            "finish_reason": out.finish_reason,
            "metrics": out.metrics,
            "speculation": out.speculation,
        });
        writeln!(stdout, "{record}")?;
    } else {
        println!();
        eprintln!("[{}] {}", out.finish_reason, out.metrics.summary());
        if let Some(s) = &out.speculation {
            let k = args
                .draft_len
                .map_or_else(|| "adaptive".to_string(), |k| k.to_string());
            eprintln!("speculation (k = {k}): {}", s.summary());
        }
    }
    Ok(())
}
