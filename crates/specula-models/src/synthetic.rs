//! Tiny random-weight models, written to disk as GGUF or safetensors, with a real byte-level BPE
//! tokenizer. Tests use them to exercise every loader and the decoder in milliseconds; they are
//! public so that downstream crates can do the same.
//!
//! ```
//! use specula_models::synthetic::SyntheticSpec;
//! use specula_models::{load, LoadOptions, ModelSource};
//! let dir = std::env::temp_dir().join(format!("specula-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let path = dir.join("tiny.gguf");
//! SyntheticSpec::tiny_qwen2().write_gguf(&path)?;
//! let loaded = load(&ModelSource::gguf(&path), &LoadOptions::default())?;
//! assert_eq!(loaded.tokenizer.decode(&loaded.tokenizer.encode("hello world")?)?, "hello world");
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::config::Architecture;
use crate::tokenizer::bpe_json;
use crate::{ModelError, Result};
use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use specula_core::Rng;
use std::collections::HashMap;
use std::path::Path;

/// Shape, architecture, storage type and seed of a synthetic model.
#[derive(Debug, Clone)]
pub struct SyntheticSpec {
    /// Architecture (`Qwen2` gets q/k/v biases).
    pub arch: Architecture,
    /// Width (a multiple of 256 for K-quants, of 32 otherwise).
    pub hidden_size: usize,
    /// FFN width (same divisibility).
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// KV heads.
    pub num_kv_heads: usize,
    /// Embedding rows: at least the tokenizer's vocabulary, padded like real models.
    pub vocab_size: usize,
    /// Context length.
    pub max_seq_len: usize,
    /// GGUF storage type of the matrices (F32, F16, Q8_0, Q4_K, ...).
    pub quant: GgmlDType,
    /// Tie the output projection to the embedding.
    pub tied: bool,
    /// Weight seed.
    pub seed: u64,
    /// Scale of the output logits (larger: peakier distributions).
    pub logit_scale: f32,
}

impl SyntheticSpec {
    /// A 2-layer Qwen2-shaped model (GQA 4/2, biases, untied), Q8_0.
    pub fn tiny_qwen2() -> Self {
        SyntheticSpec {
            arch: Architecture::Qwen2,
            hidden_size: 64,
            intermediate_size: 128,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            vocab_size: 320,
            max_seq_len: 512,
            quant: GgmlDType::Q8_0,
            tied: false,
            seed: 1,
            logit_scale: 4.0,
        }
    }

    /// A 2-layer Llama/SmolLM-shaped model (no bias, tied embeddings), Q4_1.
    pub fn tiny_llama() -> Self {
        SyntheticSpec {
            arch: Architecture::Llama,
            num_heads: 4,
            num_kv_heads: 1,
            quant: GgmlDType::Q4_1,
            tied: true,
            seed: 2,
            ..Self::tiny_qwen2()
        }
    }

    fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// All tensors under Hugging Face names, f32, deterministic in `seed`.
    pub fn tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut rng = Rng::new(self.seed);
        let dev = Device::Cpu;
        let mut mat = |rows: usize, cols: usize, scale: f32| -> Result<Tensor> {
            let data: Vec<f32> = (0..rows * cols)
                .map(|_| rng.next_normal() as f32 * scale)
                .collect();
            Ok(Tensor::from_vec(data, (rows, cols), &dev)?)
        };
        let (h, f, hd) = (self.hidden_size, self.intermediate_size, self.head_dim());
        let (qd, kvd) = (self.num_heads * hd, self.num_kv_heads * hd);
        let s = |n: usize| 1.0 / (n as f32).sqrt();
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            mat(self.vocab_size, h, 1.0)?,
        )];
        for i in 0..self.num_layers {
            let p = format!("model.layers.{i}");
            let mut push = |name: &str, t: Tensor| out.push((format!("{p}.{name}"), t));
            push(
                "input_layernorm.weight",
                (mat(1, h, 0.1)?.squeeze(0)? + 1.0)?,
            );
            push("self_attn.q_proj.weight", mat(qd, h, s(h))?);
            push("self_attn.k_proj.weight", mat(kvd, h, s(h))?);
            push("self_attn.v_proj.weight", mat(kvd, h, s(h))?);
            if self.arch == Architecture::Qwen2 {
                push("self_attn.q_proj.bias", mat(1, qd, 0.1)?.squeeze(0)?);
                push("self_attn.k_proj.bias", mat(1, kvd, 0.1)?.squeeze(0)?);
                push("self_attn.v_proj.bias", mat(1, kvd, 0.1)?.squeeze(0)?);
            }
            push("self_attn.o_proj.weight", mat(h, qd, s(qd))?);
            push(
                "post_attention_layernorm.weight",
                (mat(1, h, 0.1)?.squeeze(0)? + 1.0)?,
            );
            push("mlp.gate_proj.weight", mat(f, h, s(h))?);
            push("mlp.up_proj.weight", mat(f, h, s(h))?);
            push("mlp.down_proj.weight", mat(h, f, s(f))?);
        }
        out.push((
            "model.norm.weight".into(),
            (mat(1, h, 0.1)?.squeeze(0)? + 1.0)?,
        ));
        if !self.tied {
            out.push((
                "lm_head.weight".into(),
                mat(self.vocab_size, h, self.logit_scale * s(h))?,
            ));
        }
        Ok(out)
    }

    /// Writes a GGUF file with llama.cpp tensor names, metadata and an embedded tokenizer.
    pub fn write_gguf(&self, path: &Path) -> Result<()> {
        let arch = match self.arch {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
            Architecture::Mistral => "mistral",
        };
        let tok = SyntheticTokenizer::new();
        let mut qtensors = Vec::new();
        for (name, t) in self.tensors()? {
            let dtype = if t.rank() == 1 {
                GgmlDType::F32
            } else {
                self.quant
            };
            qtensors.push((
                crate::weights::gguf_name(&name),
                QTensor::quantize(&t, dtype)?,
            ));
        }
        let k = |s: &str| format!("{arch}.{s}");
        let u32v = |x: usize| Value::U32(x as u32);
        let strings =
            |v: &[String]| Value::Array(v.iter().map(|s| Value::String(s.clone())).collect());
        let meta: Vec<(String, Value)> = vec![
            ("general.architecture".into(), Value::String(arch.into())),
            (
                "general.name".into(),
                Value::String(format!("synthetic-{arch}")),
            ),
            (k("context_length"), u32v(self.max_seq_len)),
            (k("embedding_length"), u32v(self.hidden_size)),
            (k("feed_forward_length"), u32v(self.intermediate_size)),
            (k("block_count"), u32v(self.num_layers)),
            (k("attention.head_count"), u32v(self.num_heads)),
            (k("attention.head_count_kv"), u32v(self.num_kv_heads)),
            (k("rope.freq_base"), Value::F32(10_000.0)),
            (k("attention.layer_norm_rms_epsilon"), Value::F32(1e-6)),
            ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
            (
                "tokenizer.ggml.pre".into(),
                Value::String(
                    if self.arch == Architecture::Qwen2 {
                        "qwen2"
                    } else {
                        "smollm"
                    }
                    .into(),
                ),
            ),
            ("tokenizer.ggml.tokens".into(), strings(&tok.tokens)),
            ("tokenizer.ggml.merges".into(), strings(&tok.merges)),
            (
                "tokenizer.ggml.token_type".into(),
                Value::Array(tok.types.iter().map(|&t| Value::I32(t)).collect()),
            ),
            ("tokenizer.ggml.bos_token_id".into(), u32v(tok.eos as usize)),
            ("tokenizer.ggml.eos_token_id".into(), u32v(tok.eos as usize)),
            ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
            (
                "tokenizer.chat_template".into(),
                Value::String(CHAT_TEMPLATE.into()),
            ),
        ];
        let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tensor_refs: Vec<(&str, &QTensor)> =
            qtensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let mut f = std::fs::File::create(path).map_err(|e| ModelError::io(path, e))?;
        candle_core::quantized::gguf_file::write(&mut f, &meta_refs, &tensor_refs)?;
        Ok(())
    }

    /// Writes `config.json`, `model.safetensors` (in `dtype`), `tokenizer.json` and
    /// `tokenizer_config.json` into `dir`.
    pub fn write_safetensors(&self, dir: &Path, dtype: candle_core::DType) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        let model_type = match self.arch {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
            Architecture::Mistral => "mistral",
        };
        let tok = SyntheticTokenizer::new();
        let config = serde_json::json!({
            "model_type": model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "rope_theta": 10000.0,
            "rms_norm_eps": 1e-6,
            "max_position_embeddings": self.max_seq_len,
            "tie_word_embeddings": self.tied,
            "eos_token_id": tok.eos,
        });
        let write = |name: &str, text: String| -> Result<()> {
            let p = dir.join(name);
            std::fs::write(&p, text).map_err(|e| ModelError::io(&p, e))
        };
        write("config.json", config.to_string())?;
        write("tokenizer.json", tok.json()?.to_string())?;
        write(
            "tokenizer_config.json",
            serde_json::json!({"chat_template": CHAT_TEMPLATE, "eos_token": "<|im_end|>"})
                .to_string(),
        )?;
        let mut map = HashMap::new();
        for (name, t) in self.tensors()? {
            map.insert(name, t.to_dtype(dtype)?);
        }
        candle_core::safetensors::save(&map, dir.join("model.safetensors"))?;
        Ok(())
    }
}

const CHAT_TEMPLATE: &str = "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// The synthetic models' tokenizer: the 256 byte tokens, a few dozen merges of common English and
/// code fragments, and three control tokens.
#[derive(Debug, Clone)]
pub struct SyntheticTokenizer {
    /// Token texts in GPT-2 byte-level form, by id.
    pub tokens: Vec<String>,
    /// Merges, `"a b"`.
    pub merges: Vec<String>,
    /// llama.cpp token types (1 normal, 3 control).
    pub types: Vec<i32>,
    /// Id of `<|im_end|>`.
    pub eos: u32,
}

impl Default for SyntheticTokenizer {
    fn default() -> Self {
        Self::new()
    }
}

impl SyntheticTokenizer {
    /// Builds the vocabulary.
    pub fn new() -> Self {
        let byte_chars = gpt2_byte_chars();
        let mut tokens: Vec<String> = (0..=255u8)
            .map(|b| byte_chars[b as usize].to_string())
            .collect();
        let mut merges = Vec::new();
        let words = [
            "Ġthe", "Ġand", "Ġdef", "Ġreturn", "in", "er", "on", "Ġfor", "Ġhello", "Ġworld", "ĠĠĠ",
            "self", "Ġ=",
        ];
        for w in words {
            // Merge left to right: w[..2], then (w[..2], w[2]), ...
            let chars: Vec<char> = w.chars().collect();
            let mut left = chars[0].to_string();
            for c in &chars[1..] {
                let right = c.to_string();
                let merged = format!("{left}{right}");
                if !tokens.contains(&merged) {
                    merges.push(format!("{left} {right}"));
                    tokens.push(merged.clone());
                }
                left = merged;
            }
        }
        let mut types = vec![1; tokens.len()];
        for special in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] {
            tokens.push(special.to_string());
            types.push(3);
        }
        let eos = (tokens.len() - 1) as u32;
        SyntheticTokenizer {
            tokens,
            merges,
            types,
            eos,
        }
    }

    /// The `tokenizer.json` document.
    pub fn json(&self) -> Result<serde_json::Value> {
        let tokens: Vec<&str> = self.tokens.iter().map(String::as_str).collect();
        let merges: Vec<&str> = self.merges.iter().map(String::as_str).collect();
        let types: Vec<i64> = self.types.iter().map(|&t| t as i64).collect();
        bpe_json(&tokens, &merges, &types, "qwen2")
    }
}

/// GPT-2's reversible byte-to-character map used by byte-level BPE vocabularies.
pub fn gpt2_byte_chars() -> Vec<char> {
    let mut map = vec!['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        let c = if printable {
            b
        } else {
            n += 1;
            255 + n
        };
        map[b as usize] = char::from_u32(c).unwrap_or('?');
    }
    map
}
