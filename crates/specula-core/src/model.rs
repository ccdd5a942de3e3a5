//! The causal language model trait: the forward contract speculation relies on.

use crate::{Result, TokenId};
use candle_core::{Device, Tensor};

/// Which positions of a forward pass need logits.
///
/// Computing the output projection is expensive for large vocabularies, so a prefill asks only
/// for the last position while a speculative verification asks for all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsSelection {
    /// Logits of every new position.
    All,
    /// Logits of the last new position only.
    Last,
    /// Logits of the last `n` new positions (clamped to the number of new tokens).
    LastN(usize),
}

impl LogitsSelection {
    /// The range of positions (within the `n_new` new tokens) that this selection covers.
    pub fn range(self, n_new: usize) -> std::ops::Range<usize> {
        match self {
            LogitsSelection::All => 0..n_new,
            LogitsSelection::Last => n_new.saturating_sub(1)..n_new,
            LogitsSelection::LastN(k) => n_new.saturating_sub(k)..n_new,
        }
    }
}

/// A decoder-only language model with a key/value cache that can be rolled back.
///
/// The contract:
/// - [`forward`](CausalLm::forward) appends `tokens` at position [`seq_len`](CausalLm::seq_len),
///   advances the cache by `tokens.len()`, and returns `f32` logits of shape
///   `(selected positions, vocab_size)`, row `i` predicting the token after the `i`-th selected
///   position;
/// - a forward of `n` tokens gives the same logits as `n` forwards of one token (see
///   ARCHITECTURE.md for which backends make this bit-exact);
/// - [`truncate`](CausalLm::truncate) rolls the cache back to a shorter length, after which the
///   model behaves exactly as if the dropped tokens had never been seen.
pub trait CausalLm {
    /// Runs `tokens` through the model at the current cache position.
    fn forward(&mut self, tokens: &[TokenId], logits: LogitsSelection) -> Result<Tensor>;
    /// Number of tokens in the cache.
    fn seq_len(&self) -> usize;
    /// Rolls the cache back to `len` tokens (`len <= seq_len()`).
    fn truncate(&mut self, len: usize) -> Result<()>;
    /// Empties the cache.
    fn reset(&mut self);
    /// Size of the output vocabulary (rows of the logits).
    fn vocab_size(&self) -> usize;
    /// Maximum number of tokens the cache may hold.
    fn max_seq_len(&self) -> usize;
    /// Device the model runs on.
    fn device(&self) -> &Device;
    /// Computes logits only for token ids below `rows` (the others `-inf`) when the model can do
    /// so more cheaply; returns whether it did. For draft models (a proposer's vocabulary may
    /// be narrower than the target's without changing the output). Default: not supported.
    fn limit_output_vocab(&mut self, rows: usize) -> bool {
        let _ = rows;
        false
    }
    /// While the output vocabulary is limited ([`limit_output_vocab`](CausalLm::limit_output_vocab),
    /// which forgets these again), also computes the logits of `ids` past the limit (for a
    /// draft model: the rare tokens of its context); returns whether they are scored. Default:
    /// true when no limit can be in effect, i.e. when `limit_output_vocab` is not supported.
    fn extend_output_vocab(&mut self, ids: &[TokenId]) -> bool {
        let _ = ids;
        true
    }
}

impl<T: CausalLm + ?Sized> CausalLm for Box<T> {
    fn forward(&mut self, tokens: &[TokenId], logits: LogitsSelection) -> Result<Tensor> {
        (**self).forward(tokens, logits)
    }
    fn seq_len(&self) -> usize {
        (**self).seq_len()
    }
    fn truncate(&mut self, len: usize) -> Result<()> {
        (**self).truncate(len)
    }
    fn reset(&mut self) {
        (**self).reset()
    }
    fn vocab_size(&self) -> usize {
        (**self).vocab_size()
    }
    fn max_seq_len(&self) -> usize {
        (**self).max_seq_len()
    }
    fn device(&self) -> &Device {
        (**self).device()
    }
    fn limit_output_vocab(&mut self, rows: usize) -> bool {
        (**self).limit_output_vocab(rows)
    }
    fn extend_output_vocab(&mut self, ids: &[TokenId]) -> bool {
        (**self).extend_output_vocab(ids)
    }
}
