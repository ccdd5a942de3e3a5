//! Errors raised while loading models and tokenizers.

use std::path::PathBuf;

/// Everything that can go wrong loading or running a model; every message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The model file or directory does not exist.
    #[error("model file {0} does not exist; check the path, or run scripts/fetch-models.sh for the project's real models")]
    NotFound(PathBuf),
    /// Reading a file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not a valid GGUF file (bad magic, corrupt header, ...).
    #[error("{path} is not a valid GGUF file ({reason}); re-download it and check its sha256")]
    InvalidGguf {
        /// The file.
        path: PathBuf,
        /// What the parser reported.
        reason: String,
    },
    /// The file ends before the tensor data it declares.
    #[error("{path} is truncated: tensor `{tensor}` needs bytes up to {needed} but the file has {actual}; the download was incomplete, fetch it again")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// First tensor found to lie past the end.
        tensor: String,
        /// Bytes needed.
        needed: u64,
        /// File size.
        actual: u64,
    },
    /// The architecture is not a Llama-family decoder this crate implements.
    #[error(
        "unsupported architecture `{0}`; supported: llama, qwen2, mistral (Llama-family decoders)"
    )]
    UnsupportedArchitecture(String),
    /// A tensor is stored in a quantization type the backend cannot read.
    #[error("unsupported quantization: {0}; re-quantize the model to one of F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q8_K")]
    UnsupportedQuantization(String),
    /// A required tensor is missing.
    #[error("tensor `{0}` is missing from the weights; the file is not a complete model of the declared architecture")]
    MissingTensor(String),
    /// A required metadata key is missing or has the wrong type.
    #[error("metadata `{0}` is missing or has the wrong type")]
    MissingMetadata(String),
    /// A tensor has an unexpected shape.
    #[error("tensor `{tensor}` has shape {got:?}, expected {expected:?}; the weights do not match the configuration")]
    ShapeMismatch {
        /// The tensor.
        tensor: String,
        /// Expected dims.
        expected: Vec<usize>,
        /// Actual dims.
        got: Vec<usize>,
    },
    /// The model configuration is invalid.
    #[error("invalid model configuration: {0}")]
    InvalidConfig(String),
    /// The tokenizer could not be loaded or built.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    /// The tokenizer can produce ids the model has no embedding for.
    #[error("tokenizer vocabulary ({tokenizer} ids) does not fit the model's vocabulary ({model}); use the tokenizer that was trained with this model")]
    VocabMismatch {
        /// Ids the tokenizer can produce.
        tokenizer: usize,
        /// Rows of the embedding.
        model: usize,
    },
    /// The chat template failed to parse or render.
    #[error("chat template error: {0}")]
    ChatTemplate(String),
    /// A file could not be resolved from the Hugging Face hub.
    #[error("hub error: {0}")]
    Hub(String),
    /// The requested device is not available.
    #[error("device error: {0}")]
    Device(String),
    /// An error from sampling or a model forward.
    #[error(transparent)]
    Core(#[from] specula_core::CoreError),
    /// Tensor backend error.
    #[error("tensor backend error: {0}")]
    Backend(#[from] candle_core::Error),
}

/// Result alias with [`ModelError`].
pub type Result<T> = std::result::Result<T, ModelError>;

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            ModelError::NotFound(path)
        } else {
            ModelError::Io { path, source }
        }
    }
}
