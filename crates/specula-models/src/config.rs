//! Model configuration for the Llama family, from GGUF metadata or a Hugging Face `config.json`.

use crate::{ModelError, Result};
use serde::Deserialize;

/// Llama-family architectures this crate runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// Llama 1/2/3, SmolLM, and other bias-free Llama-shaped models.
    Llama,
    /// Qwen2 / Qwen2.5: biases on q/k/v projections.
    Qwen2,
    /// Mistral (no sliding window support beyond the context length).
    Mistral,
}

impl Architecture {
    /// Parses the architecture name used in GGUF metadata or `config.json`'s `model_type`.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "llama" => Ok(Architecture::Llama),
            "qwen2" => Ok(Architecture::Qwen2),
            "mistral" => Ok(Architecture::Mistral),
            other => Err(ModelError::UnsupportedArchitecture(other.to_string())),
        }
    }
}

/// How rotary position embeddings pair dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum RopeStyle {
    /// Pairs `(i, i + d/2)` ("rotate half"): Hugging Face checkpoints and GGUF qwen2.
    Half,
    /// Pairs `(2i, 2i + 1)`: GGUF llama, whose q/k weights llama.cpp's converter permuted.
    Interleaved,
}

/// Hyper-parameters of a Llama-family decoder.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModelConfig {
    /// Architecture.
    pub arch: Architecture,
    /// Output vocabulary size (embedding rows).
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// Width of the SwiGLU feed-forward layer.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (`num_heads` without GQA).
    pub num_kv_heads: usize,
    /// Dimension of one head.
    pub head_dim: usize,
    /// RoPE base frequency.
    pub rope_theta: f32,
    /// RoPE pairing.
    pub rope_style: RopeStyle,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Context length.
    pub max_seq_len: usize,
    /// Biases on the q/k/v projections.
    pub attention_bias: bool,
    /// Output projection shares the embedding matrix.
    pub tie_word_embeddings: bool,
}

impl ModelConfig {
    /// Checks internal consistency (divisibility of heads, non-zero sizes).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::InvalidConfig(m));
        if self.vocab_size == 0
            || self.hidden_size == 0
            || self.num_layers == 0
            || self.intermediate_size == 0
        {
            return bad(format!("sizes must be non-zero: {self:?}"));
        }
        if self.num_heads == 0
            || self.num_kv_heads == 0
            || !self.num_heads.is_multiple_of(self.num_kv_heads)
        {
            return bad(format!(
                "num_heads ({}) must be a non-zero multiple of num_kv_heads ({})",
                self.num_heads, self.num_kv_heads
            ));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return bad(format!(
                "head_dim ({}) must be even and non-zero",
                self.head_dim
            ));
        }
        if self.max_seq_len == 0 {
            return bad("max_seq_len must be non-zero".into());
        }
        Ok(())
    }
}

/// The subset of a Hugging Face `config.json` this crate reads.
#[derive(Debug, Deserialize)]
pub struct HfConfig {
    /// `llama`, `qwen2` or `mistral`.
    pub model_type: String,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width.
    pub hidden_size: usize,
    /// FFN width.
    pub intermediate_size: usize,
    /// Layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// KV heads.
    pub num_key_value_heads: Option<usize>,
    /// Head dimension (defaults to hidden / heads).
    pub head_dim: Option<usize>,
    /// RoPE base.
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f32,
    /// RMSNorm epsilon.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// Context length.
    #[serde(default = "default_ctx")]
    pub max_position_embeddings: usize,
    /// Tied output projection.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Llama's optional attention bias.
    #[serde(default)]
    pub attention_bias: bool,
    /// BOS id.
    pub bos_token_id: Option<u32>,
    /// EOS id(s).
    pub eos_token_id: Option<EosIds>,
}

/// `eos_token_id` is either one id or a list.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum EosIds {
    /// One id.
    One(u32),
    /// Several ids.
    Many(Vec<u32>),
}

impl EosIds {
    /// As a list.
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            EosIds::One(x) => vec![*x],
            EosIds::Many(v) => v.clone(),
        }
    }
}

fn default_rope_theta() -> f32 {
    10_000.0
}
fn default_eps() -> f64 {
    1e-6
}
fn default_ctx() -> usize {
    4096
}

impl HfConfig {
    /// Parses `config.json` text.
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text)
            .map_err(|e| ModelError::InvalidConfig(format!("config.json: {e}")))
    }

    /// Converts to a validated [`ModelConfig`].
    pub fn to_model_config(&self) -> Result<ModelConfig> {
        let arch = Architecture::parse(&self.model_type)?;
        let heads = self.num_attention_heads;
        let cfg = ModelConfig {
            arch,
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_hidden_layers,
            num_heads: heads,
            num_kv_heads: self.num_key_value_heads.unwrap_or(heads),
            head_dim: self
                .head_dim
                .unwrap_or(self.hidden_size.checked_div(heads).unwrap_or(0)),
            rope_theta: self.rope_theta,
            rope_style: RopeStyle::Half,
            rms_norm_eps: self.rms_norm_eps,
            max_seq_len: self.max_position_embeddings,
            attention_bias: arch == Architecture::Qwen2 || self.attention_bias,
            tie_word_embeddings: self.tie_word_embeddings,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}
