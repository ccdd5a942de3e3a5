//! Incremental detokenisation that never emits a broken UTF-8 character.

use crate::Result;
use specula_core::TokenId;
use specula_models::Tokenizer;

/// Turns a growing token sequence into text deltas.
///
/// A character split across tokens (byte-level BPE does this for most non-ASCII text) decodes to
/// U+FFFD until its last byte arrives; the streamer holds such a tail back until it is complete,
/// so the concatenation of all deltas equals `tokenizer.decode(all tokens)`.
#[derive(Debug, Clone, Default)]
pub struct TextStreamer {
    tokens: Vec<TokenId>,
    prefix: usize,
    read: usize,
}

impl TextStreamer {
    /// An empty streamer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Tokens pushed so far.
    pub fn tokens(&self) -> &[TokenId] {
        &self.tokens
    }

    /// Adds a token and returns the text that became final (possibly empty).
    pub fn push(&mut self, tokenizer: &Tokenizer, token: TokenId) -> Result<String> {
        self.tokens.push(token);
        let before = tokenizer.decode(&self.tokens[self.prefix..self.read])?;
        let after = tokenizer.decode(&self.tokens[self.prefix..])?;
        if after.len() > before.len() && !after.ends_with('\u{FFFD}') && after.starts_with(&before)
        {
            let delta = after[before.len()..].to_string();
            self.prefix = self.read;
            self.read = self.tokens.len();
            Ok(delta)
        } else {
            Ok(String::new())
        }
    }

    /// Returns whatever is still held back (an incomplete character decodes as U+FFFD).
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> Result<String> {
        let before = tokenizer.decode(&self.tokens[self.prefix..self.read])?;
        let after = tokenizer.decode(&self.tokens[self.prefix..])?;
        self.prefix = self.tokens.len();
        self.read = self.tokens.len();
        Ok(after.get(before.len()..).unwrap_or_default().to_string())
    }
}
