//! The error type shared by the model trait, sampling and generation.

/// Errors raised by sampling, stop criteria and model forwards.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// A sampling or generation parameter is out of range.
    #[error("invalid parameter `{name}`: {reason}")]
    InvalidParameter {
        /// Parameter name as users spell it (`temperature`, `top_p`, ...).
        name: &'static str,
        /// What is wrong and what range is allowed.
        reason: String,
    },
    /// The sequence would grow past the model's context window.
    #[error("context length exceeded: {needed} tokens needed but the model's context holds {limit}; shorten the prompt or lower max_new_tokens")]
    ContextExceeded {
        /// Tokens the request needs in the cache.
        needed: usize,
        /// The model's maximum sequence length.
        limit: usize,
    },
    /// The prompt encodes to no tokens at all.
    #[error("the prompt is empty: give at least one token of input")]
    EmptyPrompt,
    /// A token id is not in the model's vocabulary.
    #[error("token id {id} is outside the model's vocabulary of {vocab} entries; the tokenizer does not match the model")]
    TokenOutOfRange {
        /// The offending id.
        id: u32,
        /// The model's vocabulary size.
        vocab: usize,
    },
    /// An error from the tensor backend (candle).
    #[error("tensor backend error: {0}")]
    Backend(#[from] candle_core::Error),
}

/// Result alias using [`CoreError`].
pub type Result<T> = std::result::Result<T, CoreError>;

impl CoreError {
    /// Shorthand for [`CoreError::InvalidParameter`].
    pub fn invalid(name: &'static str, reason: impl Into<String>) -> Self {
        CoreError::InvalidParameter {
            name,
            reason: reason.into(),
        }
    }
}
