//! Tokenizers: from `tokenizer.json`, or rebuilt from the vocabulary a GGUF file carries.

use crate::chat::{ChatMessage, ChatTemplate};
use crate::gguf::GgufFile;
use crate::{ModelError, Result};
use serde_json::{json, Value};
use specula_core::TokenId;
use std::path::Path;

/// Split regex of Qwen2's pre-tokenizer (`tokenizer.ggml.pre = qwen2`).
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Split regex of Llama 3's pre-tokenizer (`llama-bpe`).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Token texts that end a turn or a document in common chat models.
const END_MARKERS: &[&str] = &[
    "<|endoftext|>",
    "<|im_end|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "</s>",
    "<end_of_turn>",
    "<|end|>",
];

/// A tokenizer plus what generation needs to know about it: BOS handling, end-of-sequence ids and
/// the chat template.
///
/// ```no_run
/// use specula_models::Tokenizer;
/// let tok = Tokenizer::from_file("tokenizer.json")?;
/// let ids = tok.encode("def fibonacci(n):")?;
/// assert_eq!(tok.decode(&ids)?, "def fibonacci(n):");
/// # Ok::<(), specula_models::ModelError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<TokenId>,
    add_bos: bool,
    eos: Vec<TokenId>,
    chat_template: Option<ChatTemplate>,
}

fn tok_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(e.to_string())
}

impl Tokenizer {
    /// Wraps a `tokenizers` tokenizer. End-of-sequence ids are taken from the known end markers
    /// present in its vocabulary; use [`Self::with_eos`] to set them explicitly.
    pub fn new(inner: tokenizers::Tokenizer) -> Self {
        let eos = END_MARKERS
            .iter()
            .filter_map(|m| inner.token_to_id(m))
            .collect();
        Tokenizer {
            inner,
            bos: None,
            add_bos: false,
            eos,
            chat_template: None,
        }
    }

    /// Loads a Hugging Face `tokenizer.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if !path.exists() {
            return Err(ModelError::NotFound(path.to_path_buf()));
        }
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))?;
        Ok(Self::new(inner))
    }

    /// Builds the tokenizer stored in a GGUF file's metadata (`tokenizer.ggml.*`): byte-level BPE
    /// (`gpt2` model) with the pre-tokenizer named by `tokenizer.ggml.pre`, control tokens as
    /// special added tokens, BOS/EOS ids, and the chat template.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let model = gguf.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(ModelError::Tokenizer(format!(
                "GGUF tokenizer model `{model}` is not supported (only byte-level BPE, `gpt2`); pass a tokenizer.json instead"
            )));
        }
        let tokens = gguf.get_str_array("tokenizer.ggml.tokens")?;
        let merges = gguf.get_str_array("tokenizer.ggml.merges")?;
        let types = gguf
            .get_int_array("tokenizer.ggml.token_type")
            .unwrap_or_default();
        let pre = gguf.get_str("tokenizer.ggml.pre").unwrap_or("default");
        let json = bpe_json(&tokens, &merges, &types, pre)?;
        let inner =
            tokenizers::Tokenizer::from_bytes(json.to_string().as_bytes()).map_err(tok_err)?;

        let id = |key: &str| gguf.get_u64(key).ok().map(|x| x as TokenId);
        let bos = id("tokenizer.ggml.bos_token_id");
        let add_bos = gguf
            .get_bool("tokenizer.ggml.add_bos_token")
            .unwrap_or(false)
            && bos.is_some();
        let mut eos: Vec<TokenId> = [
            id("tokenizer.ggml.eos_token_id"),
            id("tokenizer.ggml.eot_token_id"),
        ]
        .into_iter()
        .flatten()
        .collect();
        for m in END_MARKERS {
            if let Some(t) = inner.token_to_id(m) {
                if !eos.contains(&t) {
                    eos.push(t);
                }
            }
        }
        let token_text = |t: Option<TokenId>| {
            t.and_then(|t| tokens.get(t as usize))
                .map(|s| s.to_string())
        };
        let chat_template = match gguf.get_str("tokenizer.chat_template") {
            Ok(src) => Some(ChatTemplate::new(
                src,
                token_text(bos),
                token_text(id("tokenizer.ggml.eos_token_id")),
            )?),
            Err(_) => None,
        };
        Ok(Tokenizer {
            inner,
            bos,
            add_bos,
            eos,
            chat_template,
        })
    }

    /// Sets the end-of-sequence ids.
    pub fn with_eos(mut self, eos: Vec<TokenId>) -> Self {
        self.eos = eos;
        self
    }

    /// Sets the chat template.
    pub fn with_chat_template(mut self, template: ChatTemplate) -> Self {
        self.chat_template = Some(template);
        self
    }

    /// Prepends `bos` to every encoding.
    pub fn with_bos(mut self, bos: TokenId) -> Self {
        self.bos = Some(bos);
        self.add_bos = true;
        self
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Ids that end generation.
    pub fn eos_token_ids(&self) -> &[TokenId] {
        &self.eos
    }

    /// The BOS id, if the model has one.
    pub fn bos_token_id(&self) -> Option<TokenId> {
        self.bos
    }

    /// The chat template, if any.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// Number of ids the tokenizer can produce (largest id + 1, added tokens included).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Encodes text (special tokens written in the text are recognised), prepending BOS when the
    /// model expects it.
    pub fn encode(&self, text: &str) -> Result<Vec<TokenId>> {
        let enc = self.inner.encode(text, false).map_err(tok_err)?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if self.add_bos {
            if let Some(b) = self.bos {
                ids.push(b);
            }
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Decodes ids to text, dropping special tokens.
    pub fn decode(&self, ids: &[TokenId]) -> Result<String> {
        self.inner.decode(ids, true).map_err(tok_err)
    }

    /// Renders `messages` with the chat template, ending with the assistant's turn prompt.
    pub fn apply_chat_template(&self, messages: &[ChatMessage]) -> Result<String> {
        match &self.chat_template {
            Some(t) => t.render(messages, true),
            None => Err(ModelError::ChatTemplate(
                "this model has no chat template; pass a plain prompt instead".into(),
            )),
        }
    }
}

/// The `tokenizer.json` document of a byte-level BPE tokenizer.
pub(crate) fn bpe_json(
    tokens: &[&str],
    merges: &[&str],
    types: &[i64],
    pre: &str,
) -> Result<Value> {
    let mut vocab = serde_json::Map::with_capacity(tokens.len());
    let mut added = Vec::new();
    for (id, tok) in tokens.iter().enumerate() {
        vocab.entry(tok.to_string()).or_insert(json!(id));
        // llama.cpp token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
        let ty = types.get(id).copied().unwrap_or(1);
        if ty == 3 || ty == 4 {
            added.push(json!({
                "id": id, "content": tok, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": ty == 3,
            }));
        }
    }
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let split = |re: &str| json!({"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false});
    let (normalizer, pre_tokenizer) = match pre {
        "qwen2" => (
            json!({"type": "NFC"}),
            json!({"type": "Sequence", "pretokenizers": [split(QWEN2_SPLIT), byte_level(false)]}),
        ),
        "llama-bpe" | "llama3" => (
            Value::Null,
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_SPLIT), byte_level(false)]}),
        ),
        "smollm" => (
            Value::Null,
            json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        ),
        "gpt2" | "default" | "gpt-2" => (Value::Null, byte_level(true)),
        other => {
            return Err(ModelError::Tokenizer(format!(
                "GGUF pre-tokenizer `{other}` is not supported (qwen2, llama-bpe, smollm, gpt2); pass a tokenizer.json instead"
            )))
        }
    };
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges,
        }
    }))
}
