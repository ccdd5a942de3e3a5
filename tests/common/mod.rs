//! Test doubles shared by the integration tests.
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use specula::{CausalLm, LogitsSelection, TokenId};
use specula_models::synthetic::SyntheticTokenizer;
use specula_models::Tokenizer;

/// A model that predicts the next token of a fixed script (then repeats the last one), by
/// absolute position after a one-token prompt.
pub struct ScriptedLm {
    script: Vec<TokenId>,
    vocab: usize,
    len: usize,
    prompt_len: usize,
    device: Device,
}

impl ScriptedLm {
    pub fn new(script: Vec<TokenId>, vocab: usize) -> Self {
        ScriptedLm {
            script,
            vocab,
            len: 0,
            prompt_len: 1,
            device: Device::Cpu,
        }
    }
}

impl CausalLm for ScriptedLm {
    fn forward(
        &mut self,
        tokens: &[TokenId],
        sel: LogitsSelection,
    ) -> specula_core::Result<Tensor> {
        let range = sel.range(tokens.len());
        let mut rows = vec![];
        for i in range.clone() {
            let pos = self.len + i; // position of tokens[i]
            let gen_index = (pos + 1).saturating_sub(self.prompt_len);
            let next = self.script[gen_index.min(self.script.len() - 1)];
            let mut row = vec![0.0f32; self.vocab];
            row[next as usize] = 10.0;
            rows.extend(row);
        }
        self.len += tokens.len();
        Ok(Tensor::from_vec(
            rows,
            (range.len(), self.vocab),
            &self.device,
        )?)
    }
    fn seq_len(&self) -> usize {
        self.len
    }
    fn truncate(&mut self, len: usize) -> specula_core::Result<()> {
        self.len = len;
        Ok(())
    }
    fn reset(&mut self) {
        self.len = 0;
    }
    fn vocab_size(&self) -> usize {
        self.vocab
    }
    fn max_seq_len(&self) -> usize {
        64
    }
    fn device(&self) -> &Device {
        &self.device
    }
}

pub fn synthetic_tokenizer() -> Tokenizer {
    let json = SyntheticTokenizer::new().json().unwrap().to_string();
    Tokenizer::new(tokenizers::Tokenizer::from_bytes(json.as_bytes()).unwrap())
}

/// A Markov-chain model: the logits of the next token depend only on the last token, through a
/// fixed `(vocab, vocab)` table. Its exact output distribution is easy to compute, which makes it
/// the model of choice for distribution tests of speculative sampling.
#[derive(Clone)]
pub struct TableLm {
    pub table: Vec<Vec<f32>>,
    pub vocab: usize,
    tokens: Vec<TokenId>,
    device: Device,
}

impl TableLm {
    /// `table[a][b]` is the logit of `b` after `a` for `a, b < table.len()`; every other token of
    /// the `vocab`-sized output gets -inf.
    pub fn new(table: Vec<Vec<f32>>, vocab: usize) -> Self {
        TableLm {
            table,
            vocab,
            tokens: Vec::new(),
            device: Device::Cpu,
        }
    }

    pub fn row(&self, last: TokenId) -> Vec<f32> {
        let mut row = vec![f32::NEG_INFINITY; self.vocab];
        if let Some(r) = self.table.get(last as usize) {
            row[..r.len()].copy_from_slice(r);
        }
        row
    }
}

impl CausalLm for TableLm {
    fn forward(
        &mut self,
        tokens: &[TokenId],
        sel: LogitsSelection,
    ) -> specula_core::Result<Tensor> {
        self.tokens.extend_from_slice(tokens);
        let base = self.tokens.len() - tokens.len();
        let range = sel.range(tokens.len());
        let mut rows = Vec::new();
        for i in range.clone() {
            rows.extend(self.row(self.tokens[base + i]));
        }
        Ok(Tensor::from_vec(
            rows,
            (range.len(), self.vocab),
            &self.device,
        )?)
    }
    fn seq_len(&self) -> usize {
        self.tokens.len()
    }
    fn truncate(&mut self, len: usize) -> specula_core::Result<()> {
        self.tokens.truncate(len);
        Ok(())
    }
    fn reset(&mut self) {
        self.tokens.clear();
    }
    fn vocab_size(&self) -> usize {
        self.vocab
    }
    fn max_seq_len(&self) -> usize {
        1024
    }
    fn device(&self) -> &Device {
        &self.device
    }
}

/// A model whose every forward takes at least `pause` longer, whatever its length: a large
/// target's cost profile (a step dominated by reading the weights, nearly flat in the number of
/// tokens) on a tiny test model, so that an adaptive controller's choices do not hang on how a
/// loaded test machine times tiny forwards.
pub struct SlowLm<M> {
    pub inner: M,
    pub pause: std::time::Duration,
}

impl<M: CausalLm> CausalLm for SlowLm<M> {
    fn forward(
        &mut self,
        tokens: &[TokenId],
        sel: LogitsSelection,
    ) -> specula_core::Result<Tensor> {
        std::thread::sleep(self.pause);
        self.inner.forward(tokens, sel)
    }
    fn seq_len(&self) -> usize {
        self.inner.seq_len()
    }
    fn truncate(&mut self, len: usize) -> specula_core::Result<()> {
        self.inner.truncate(len)
    }
    fn reset(&mut self) {
        self.inner.reset()
    }
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }
    fn max_seq_len(&self) -> usize {
        self.inner.max_seq_len()
    }
    fn device(&self) -> &Device {
        self.inner.device()
    }
}
