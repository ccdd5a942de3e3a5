//! # Specula
//!
//! Fast, exact text generation on [candle](https://github.com/huggingface/candle). This crate is
//! the facade: [`Generator`] loads a model and its tokenizer and generates text, streaming or not,
//! with sampling, stop conditions and per-request latency metrics. Speculative decoding (a draft
//! model proposing tokens that the target verifies in one forward) is configuration of the same
//! `Generator`; plain decoding is the baseline it must reproduce exactly.
//!
//! ```no_run
//! use specula::{GenerateParams, Generator, ModelSource, SamplingParams};
//!
//! let mut generator = Generator::builder()
//!     .model(ModelSource::gguf("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"))
//!     .build()?;
//! let params = GenerateParams::new(64).sampling(SamplingParams::greedy());
//! let out = generator.generate_stream("def fibonacci(n):", &params, |delta| print!("{delta}"))?;
//! println!("\n{} ({:?})", out.metrics.summary(), out.finish_reason);
//! # Ok::<(), specula::Error>(())
//! ```
//!
//! The workspace crates: [`specula_core`] (sampling, stop criteria, metrics, the
//! [`CausalLm`] trait), [`specula_kv`] (the KV cache), [`specula_models`] (the decoder,
//! loaders, tokenizers).
#![warn(missing_docs)]

mod generate;
mod stream;

pub use generate::{
    check_compatible, GenerateParams, Generation, Generator, GeneratorBuilder,
    DEFAULT_DRAFT_CONFIDENCE, DEFAULT_DRAFT_LEN, DEFAULT_DRAFT_VOCAB, DEFAULT_MAX_DRAFT_LEN,
    MAX_DRAFT_LEN,
};
pub use specula_draft::{
    AdaptiveConfig, AdaptiveK, Candidate, DraftModel, Extension, FirstNonEmpty, NgramProposer,
    Proposal, Proposer, ProposerCosts, StepRecord,
};
pub use specula_verify::AcceptanceStats;
pub use stream::TextStreamer;

pub use specula_core::{
    CausalLm, CoreError, Distribution, FinishReason, GenerationMetrics, LatencyStats,
    LogitsProcessor, LogitsSelection, SamplingParams, StopStringMatcher, TokenId,
};
pub use specula_models::{
    ChatMessage, ChatTemplate, DeviceChoice, LlamaModel, LoadOptions, ModelError, ModelSource,
    Tokenizer,
};
pub use {specula_core, specula_draft, specula_kv, specula_models, specula_verify};

/// Errors of the `specula` facade.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Loading a model or tokenizer failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Sampling parameters, the prompt or a forward pass failed.
    #[error(transparent)]
    Core(#[from] CoreError),
    /// The draft model cannot speculate for this target.
    #[error("incompatible draft model: {0}")]
    IncompatibleDraft(String),
    /// The builder is missing something.
    #[error("generator configuration: {0}")]
    Config(String),
}

/// Result alias with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// The weight dtype a command-line name denotes, for [`GeneratorBuilder::dtype`]: `bf16`, `f16`
/// or `f32` (any case).
///
/// ```
/// assert_eq!(specula::parse_dtype("BF16")?, candle_core::DType::BF16);
/// assert!(specula::parse_dtype("q4").is_err());
/// # Ok::<(), specula::Error>(())
/// ```
pub fn parse_dtype(name: &str) -> Result<candle_core::DType> {
    match name.to_ascii_lowercase().as_str() {
        "bf16" => Ok(candle_core::DType::BF16),
        "f16" => Ok(candle_core::DType::F16),
        "f32" => Ok(candle_core::DType::F32),
        _ => Err(Error::Config(format!(
            "unknown dtype `{name}`; use bf16, f16 or f32"
        ))),
    }
}

/// Sets the number of CPU threads used by the tensor kernels (candle's GEMM and quantized
/// matmuls). Call it once, before loading a model; later calls only affect candle's GEMM.
/// Benchmarks and tests pin the count because candle's pool spins: a busy second process on
/// the same cores slows decoding several-fold.
pub fn set_num_threads(n: usize) {
    let n = n.max(1);
    // candle reads RAYON_NUM_THREADS when sizing its GEMM; rayon's global pool serves the rest.
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global();
}
