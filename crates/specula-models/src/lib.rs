//! Models for Specula: the Llama-family decoder, weight loading and tokenizers.
//!
//! - [`LlamaModel`]: one decoder for Llama, SmolLM, Mistral and Qwen2 (config-driven: q/k/v bias,
//!   GQA, RoPE base and pairing, RMSNorm epsilon, tied or untied output), implementing
//!   [`specula_core::CausalLm`] with a truncatable KV cache and multi-position logits.
//! - Loading from GGUF (weights stay quantized), from safetensors + `config.json` (f32 / f16 /
//!   bf16), or from the Hugging Face hub ([`hub`]); see [`load`].
//! - [`Tokenizer`]: `tokenizer.json`, or rebuilt from GGUF metadata, with BOS/EOS handling and
//!   [`ChatTemplate`] rendering.
//! - [`synthetic`]: tiny random-weight models written to disk, for tests and examples.
//!
//! ```no_run
//! use specula_models::{load, LoadOptions, ModelSource};
//! use specula_core::{CausalLm, LogitsSelection};
//!
//! let loaded = load(&ModelSource::gguf("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"), &LoadOptions::default())?;
//! let mut model = loaded.model;
//! let ids = loaded.tokenizer.encode("def fibonacci(n):")?;
//! let logits = model.forward(&ids, LogitsSelection::Last)?; // (1, vocab)
//! # Ok::<(), specula_models::ModelError>(())
//! ```
#![warn(missing_docs)]

pub mod chat;
pub mod config;
pub mod device;
pub mod error;
pub mod gguf;
pub mod hub;
pub mod llama;
pub mod synthetic;
pub mod tokenizer;
mod weights;

pub use chat::{ChatMessage, ChatTemplate};
pub use config::{Architecture, HfConfig, ModelConfig, RopeStyle};
pub use device::DeviceChoice;
pub use error::{ModelError, Result};
pub use gguf::GgufFile;
pub use hub::HubFile;
pub use llama::LlamaModel;
pub use tokenizer::Tokenizer;
pub use weights::BATCH_INVARIANT_MAX_ROWS;

use candle_core::{DType, Device};
use std::path::{Path, PathBuf};

/// Where `scripts/fetch-models.sh` caches the real models: `$SPECULA_MODELS_DIR`, else
/// `~/.cache/specula/models`.
pub fn models_dir() -> PathBuf {
    match std::env::var_os("SPECULA_MODELS_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/specula/models"),
    }
}

/// Where to load a model from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A GGUF file (weights and tokenizer).
    Gguf(PathBuf),
    /// A directory with `config.json`, `*.safetensors` and `tokenizer.json`.
    Safetensors(PathBuf),
    /// A Hugging Face hub repository: a `.gguf` file in it, or (file `None`) its safetensors
    /// checkpoint.
    Hub {
        /// `owner/name`.
        repo: String,
        /// A `.gguf` file in the repository, or `None` for the safetensors checkpoint.
        file: Option<String>,
        /// Branch, tag or commit.
        revision: String,
    },
}

impl ModelSource {
    /// A GGUF file.
    pub fn gguf(path: impl Into<PathBuf>) -> Self {
        ModelSource::Gguf(path.into())
    }

    /// Guesses the source from a user string: an existing directory (safetensors), an existing
    /// file or any `*.gguf` path (GGUF), else `owner/name` (hub safetensors) or
    /// `owner/name:file.gguf` (a GGUF file on the hub).
    ///
    /// ```
    /// use specula_models::ModelSource;
    /// assert_eq!(ModelSource::parse("models/x.gguf"), ModelSource::gguf("models/x.gguf"));
    /// assert!(matches!(ModelSource::parse("Qwen/Qwen2.5-0.5B:q.gguf"), ModelSource::Hub { file: Some(_), .. }));
    /// ```
    pub fn parse(s: &str) -> Self {
        let p = Path::new(s);
        if p.is_dir() {
            return ModelSource::Safetensors(p.to_path_buf());
        }
        if p.exists() || (s.ends_with(".gguf") && !s.contains(':')) {
            return ModelSource::Gguf(p.to_path_buf());
        }
        let (repo, file) = match s.split_once(':') {
            Some((r, f)) => (r.to_string(), Some(f.to_string())),
            None => (s.to_string(), None),
        };
        ModelSource::Hub {
            repo,
            file,
            revision: "main".into(),
        }
    }
}

/// Options for [`load`].
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Device to place weights and cache on.
    pub device: Device,
    /// Dense dtype for the weights: for safetensors the compute dtype (default: F32); for GGUF,
    /// `Some(dtype)` dequantizes every matrix at load (e.g. BF16), `None` keeps them quantized.
    pub dtype: Option<DType>,
    /// Cap on the context length (default: the model's own).
    pub max_seq_len: Option<usize>,
    /// Element type of the KV cache (default: F16 on the CPU, half the bytes a decode step reads
    /// from the cache, as llama.cpp's default; F32 on accelerators). The CPU takes F16 or F32.
    pub kv_dtype: Option<DType>,
    /// A `tokenizer.json` overriding the one of the model.
    pub tokenizer: Option<PathBuf>,
    /// Hub cache directory (default `$HF_HOME/hub`).
    pub hub_cache: Option<PathBuf>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            device: Device::Cpu,
            dtype: None,
            max_seq_len: None,
            kv_dtype: None,
            tokenizer: None,
            hub_cache: None,
        }
    }
}

/// A model with its tokenizer.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    /// The decoder.
    pub model: LlamaModel,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
}

/// Loads a model and its tokenizer.
pub fn load(source: &ModelSource, opts: &LoadOptions) -> Result<LoadedModel> {
    load_with_progress(source, opts, &mut |_, _| {})
}

/// [`load`] with a progress callback `(done, total)` called as layers load.
pub fn load_with_progress(
    source: &ModelSource,
    opts: &LoadOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<LoadedModel> {
    match source {
        ModelSource::Gguf(path) => load_gguf(path, opts, progress),
        ModelSource::Safetensors(dir) => load_safetensors(dir, opts, progress),
        ModelSource::Hub {
            repo,
            file,
            revision,
        } => {
            let get = |f: &str| {
                hub::resolve(
                    &HubFile {
                        repo: repo.clone(),
                        file: f.to_string(),
                        revision: revision.clone(),
                    },
                    opts.hub_cache.clone(),
                )
            };
            match file {
                Some(f) => load_gguf(&get(f)?, opts, progress),
                None => {
                    let config = get("config.json")?;
                    let dir = config
                        .parent()
                        .ok_or_else(|| ModelError::Hub("bad cache path".into()))?
                        .to_path_buf();
                    get("tokenizer.json")?;
                    let _ = get("tokenizer_config.json");
                    match get("model.safetensors.index.json") {
                        Ok(index) => {
                            for shard in shard_names(&index)? {
                                get(&shard)?;
                            }
                        }
                        Err(_) => {
                            get("model.safetensors")?;
                        }
                    }
                    load_safetensors(&dir, opts, progress)
                }
            }
        }
    }
}

fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(|e| ModelError::io(index, e))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ModelError::InvalidConfig(format!("{}: {e}", index.display())))?;
    let mut names: Vec<String> = v["weight_map"]
        .as_object()
        .map(|m| {
            m.values()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.dedup();
    Ok(names)
}

/// Reads the model configuration from GGUF metadata.
pub fn gguf_config(g: &GgufFile) -> Result<ModelConfig> {
    let arch_name = g.get_str("general.architecture")?.to_string();
    let arch = Architecture::parse(&arch_name)?;
    let key = |s: &str| format!("{arch_name}.{s}");
    let heads = g.get_u64(&key("attention.head_count"))? as usize;
    let hidden = g.get_u64(&key("embedding_length"))? as usize;
    let embd = g
        .content
        .tensor_infos
        .get("token_embd.weight")
        .ok_or_else(|| ModelError::MissingTensor("token_embd.weight".into()))?;
    let vocab = embd.shape.dims().first().copied().unwrap_or(0);
    let cfg = ModelConfig {
        arch,
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: g.get_u64(&key("feed_forward_length"))? as usize,
        num_layers: g.get_u64(&key("block_count"))? as usize,
        num_heads: heads,
        num_kv_heads: g
            .get_u64(&key("attention.head_count_kv"))
            .map(|x| x as usize)
            .unwrap_or(heads),
        head_dim: g
            .get_u64(&key("attention.key_length"))
            .map(|x| x as usize)
            .unwrap_or(hidden.checked_div(heads).unwrap_or(0)),
        rope_theta: g.get_f64(&key("rope.freq_base")).unwrap_or(10_000.0) as f32,
        rope_style: if arch == Architecture::Qwen2 {
            RopeStyle::Half
        } else {
            RopeStyle::Interleaved
        },
        rms_norm_eps: g
            .get_f64(&key("attention.layer_norm_rms_epsilon"))
            .unwrap_or(1e-5),
        max_seq_len: g
            .get_u64(&key("context_length"))
            .map(|x| x as usize)
            .unwrap_or(4096),
        attention_bias: g.content.tensor_infos.contains_key("blk.0.attn_q.bias"),
        tie_word_embeddings: !g.content.tensor_infos.contains_key("output.weight"),
    };
    cfg.validate()?;
    Ok(cfg)
}

fn check_vocab(tokenizer: &Tokenizer, model_vocab: usize) -> Result<()> {
    let tv = tokenizer.vocab_size();
    if tv > model_vocab {
        return Err(ModelError::VocabMismatch {
            tokenizer: tv,
            model: model_vocab,
        });
    }
    Ok(())
}

fn load_gguf(
    path: &Path,
    opts: &LoadOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<LoadedModel> {
    let mut file = GgufFile::open(path)?;
    let cfg = gguf_config(&file)?;
    let tokenizer = match &opts.tokenizer {
        Some(p) => Tokenizer::from_file(p)?,
        None => Tokenizer::from_gguf(&file)?,
    };
    check_vocab(&tokenizer, cfg.vocab_size)?;
    let max = opts.max_seq_len.unwrap_or(cfg.max_seq_len);
    let mut src = weights::GgufSource {
        file: &mut file,
        device: opts.device.clone(),
        dense: opts.dtype,
    };
    let model = LlamaModel::load(cfg, &mut src, &opts.device, (max, opts.kv_dtype), progress)?;
    Ok(LoadedModel { model, tokenizer })
}

fn load_safetensors(
    dir: &Path,
    opts: &LoadOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<LoadedModel> {
    if !dir.is_dir() {
        return Err(ModelError::NotFound(dir.to_path_buf()));
    }
    let config_path = dir.join("config.json");
    let text =
        std::fs::read_to_string(&config_path).map_err(|e| ModelError::io(&config_path, e))?;
    let hf = HfConfig::from_json(&text)?;
    let cfg = hf.to_model_config()?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| ModelError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(ModelError::NotFound(dir.join("model.safetensors")));
    }
    let tok_path = opts
        .tokenizer
        .clone()
        .unwrap_or_else(|| dir.join("tokenizer.json"));
    let mut tokenizer = Tokenizer::from_file(&tok_path)?;
    if let Some(eos) = &hf.eos_token_id {
        tokenizer = tokenizer.with_eos(eos.to_vec());
    }
    if let Some(t) = read_chat_template(dir)? {
        tokenizer = tokenizer.with_chat_template(t);
    }
    check_vocab(&tokenizer, cfg.vocab_size)?;
    let dtype = opts.dtype.unwrap_or(DType::F32);
    // SAFETY: the files are memory-mapped read-only; they must not be modified while loading.
    let vb = unsafe { candle_nn::VarBuilder::from_mmaped_safetensors(&files, dtype, &opts.device) }
        .map_err(|e| {
            ModelError::InvalidConfig(format!("cannot read safetensors in {}: {e}", dir.display()))
        })?;
    let mut src = weights::SafetensorsSource { vb, dtype };
    let max = opts.max_seq_len.unwrap_or(cfg.max_seq_len);
    let model = LlamaModel::load(cfg, &mut src, &opts.device, (max, opts.kv_dtype), progress)?;
    Ok(LoadedModel { model, tokenizer })
}

fn read_chat_template(dir: &Path) -> Result<Option<ChatTemplate>> {
    let path = dir.join("tokenizer_config.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ModelError::InvalidConfig(format!("{}: {e}", path.display())))?;
    let token = |k: &str| match &v[k] {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
        _ => None,
    };
    match v["chat_template"].as_str() {
        Some(src) => Ok(Some(ChatTemplate::new(
            src,
            token("bos_token"),
            token("eos_token"),
        )?)),
        None => Ok(None),
    }
}
