//! Proposers: cheap guesses of the next tokens, checked by the target model.
//!
//! A [`Proposer`] sees the accepted context and proposes up to `k` tokens together with the
//! distributions `q` they were drawn from (empty for deterministic proposers, whose `q` is
//! one-hot). [`DraftModel`] is the draft-model runner: a small [`CausalLm`] with its own KV cache,
//! which it rolls back to the longest prefix it shares with the new context (rejected drafts) and
//! catches up with the tokens it has not seen (the target's correction or bonus token).
//! [`NgramProposer`] proposes from the context itself (prompt lookup), [`FirstNonEmpty`] composes
//! proposers, and [`AdaptiveK`] chooses the draft length per step from measured costs.
#![warn(missing_docs)]

mod adaptive;
mod ngram;

pub use adaptive::{AdaptiveConfig, AdaptiveK, Candidate, StepRecord};
pub use ngram::{FirstNonEmpty, NgramProposer};

use specula_core::{
    CausalLm, CoreError, Distribution, LogitsProcessor, LogitsSelection, Result, Rng, TokenId,
};

/// Tokens proposed for verification.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Proposal {
    /// Proposed tokens, in order.
    pub tokens: Vec<TokenId>,
    /// The distribution each token was sampled from; empty when the proposer is deterministic
    /// (greedy drafting, n-gram lookup), in which case `q` is one-hot on each token.
    pub q: Vec<Distribution>,
    /// Name of the proposer that made the proposal, for per-proposer statistics (empty: the
    /// configured proposer itself).
    pub source: String,
    /// Context tokens the proposer had to process before drafting beyond the usual one or two
    /// (a draft model catching up on a prompt or on steps it skipped). Cost models use it to keep
    /// such one-off work out of the per-token draft cost.
    pub catch_up: usize,
    /// How many leading tokens the proposer gave at least the extension's confidence
    /// ([`Proposer::propose_extended`]; 0 from [`Proposer::propose`]): the adaptive controller
    /// learns from them how often such tokens are accepted.
    pub confident: usize,
}

/// Leave for a draft to run past its planned length while the proposer is sure of its tokens
/// ([`Proposer::propose_extended`]).
///
/// A draft model's probability of its own token predicts acceptance well: on code, with the
/// Qwen2.5 pair, every one of 295 drafted tokens it gave 0.9 or more was accepted, against 64 %
/// of those it gave 0.5-0.7. The adaptive controller plans a length from running averages before
/// any token is drafted; with an extension, a draft whose tokens all came out confident goes on
/// to [`max`](Self::max) instead of stopping at a length planned for average text.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Extension {
    /// The most tokens the draft may reach.
    pub max: usize,
    /// A token past the planned length is proposed only when it and every earlier token of the
    /// draft had at least this probability under the proposer.
    pub min_confidence: f32,
}

/// Something that proposes the next tokens of a sequence.
pub trait Proposer: Send {
    /// Proposes up to `k` tokens following `context` (the prompt and every accepted token).
    /// `sampler` carries the request's sampling settings: with sampling, tokens are drawn from
    /// `sampler.distribution(..)` of the proposer's logits and those distributions are returned.
    fn propose(
        &mut self,
        context: &[TokenId],
        k: usize,
        sampler: &LogitsProcessor,
    ) -> Result<Proposal>;
    /// As [`propose`](Self::propose), and then, while every token so far had at least
    /// `extension.min_confidence` under the proposer, on up to `extension.max` tokens. Default:
    /// [`propose`](Self::propose) (no extension); [`DraftModel`] extends. Never changes the
    /// output: where a draft stops depends on the draft's own tokens only, which keeps the
    /// acceptance rule exact.
    fn propose_extended(
        &mut self,
        context: &[TokenId],
        k: usize,
        extension: Extension,
        sampler: &LogitsProcessor,
    ) -> Result<Proposal> {
        let _ = extension;
        self.propose(context, k, sampler)
    }
    /// A short name for statistics.
    fn name(&self) -> &str;
    /// Forgets all state (called at the start of every request).
    fn reset(&mut self);
    /// Context tokens this proposer would have to process before drafting after `context` (a
    /// draft model: those not in its cache). The adaptive controller weighs that catch-up
    /// against what drafting would save. Default: 0.
    fn pending(&self, context: &[TokenId]) -> usize {
        let _ = context;
        0
    }
    /// True when proposing costs next to nothing (a lookup, no model), so that the adaptive
    /// controller may ask for a proposal first and then decide how much of it to verify.
    /// Default: false.
    fn is_cheap(&self) -> bool {
        false
    }
    /// Measures this proposer's costs once (called by the generator before its first adaptive
    /// request); state is reset afterwards. Default: nothing to measure.
    fn calibrate(&mut self) -> Result<Option<ProposerCosts>> {
        Ok(None)
    }
}

/// Measured costs of a proposer ([`Proposer::calibrate`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProposerCosts {
    /// Milliseconds per drafted token.
    pub token_ms: f64,
    /// Milliseconds per context token caught up on (a batched prefill).
    pub catch_up_ms: f64,
}

/// The draft-model runner.
pub struct DraftModel {
    model: Box<dyn CausalLm + Send>,
    /// Tokens whose keys and values are in the draft's cache, in order.
    cached: Vec<TokenId>,
    rng: Rng,
    /// Ids at or above this are never proposed (the target has no embedding for them).
    max_token: usize,
    /// Drafting stops once the draft's probability of its own next token falls below this.
    min_confidence: f32,
    /// Logits computed only for ids below this ([`DraftModel::with_vocab_limit`]).
    vocab_limit: Option<usize>,
}

impl std::fmt::Debug for DraftModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DraftModel")
            .field("cached", &self.cached.len())
            .finish()
    }
}

impl DraftModel {
    /// Wraps a draft model; `target_vocab` is the target's vocabulary size.
    pub fn new(model: impl CausalLm + Send + 'static, target_vocab: usize) -> Self {
        DraftModel {
            model: Box::new(model),
            cached: Vec::new(),
            rng: Rng::new(0x5EED_D4AF),
            max_token: target_vocab,
            min_confidence: 0.0,
            vocab_limit: None,
        }
    }

    /// Stops a draft early once the draft model's probability of the token it would propose next
    /// falls below `p` (0 = never; the first token is always proposed). Saves draft and
    /// verification work on tokens likely to be rejected; never changes the output.
    pub fn with_min_confidence(mut self, p: f32) -> Self {
        self.min_confidence = p.clamp(0.0, 1.0);
        self
    }

    /// Lets the draft model compute logits only for the first `rows` token ids
    /// ([`CausalLm::limit_output_vocab`]): in BPE vocabularies those are the frequent tokens, and
    /// a small model's output projection is a large share of its per-token cost. Rarer tokens are
    /// proposed only once they occur in the context (the prompt or the text so far, through
    /// [`CausalLm::extend_output_vocab`]; forgotten on [`Proposer::reset`]), since a prompt's rare
    /// identifiers are what code repeats; others are never proposed (the target still emits them:
    /// the output never changes). Without support in the model this does nothing;
    /// [`vocab_limit`](Self::vocab_limit) tells.
    pub fn with_vocab_limit(mut self, rows: usize) -> Self {
        self.vocab_limit = self.model.limit_output_vocab(rows).then_some(rows);
        self
    }

    /// The output vocabulary limit in effect, if any.
    pub fn vocab_limit(&self) -> Option<usize> {
        self.vocab_limit.filter(|&r| r < self.model.vocab_size())
    }

    /// Number of tokens in the draft's cache.
    pub fn cached_len(&self) -> usize {
        self.cached.len()
    }

    /// How much of the cache serves `context`: the longest prefix shared with it, keeping at
    /// least one token to feed so that the forward yields the logits after the context.
    fn reusable(&self, context: &[TokenId]) -> usize {
        let shared = self
            .cached
            .iter()
            .zip(context)
            .take_while(|(a, b)| a == b)
            .count();
        shared.min(context.len().saturating_sub(1))
    }

    /// The wrapped model.
    pub fn model(&self) -> &dyn CausalLm {
        &*self.model
    }
}

/// `softmax(logits)[token]`, computed stably.
fn softmax_prob(logits: &[f32], token: TokenId) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|&l| (l - max).exp()).sum();
    logits
        .get(token as usize)
        .map_or(0.0, |&l| (l - max).exp() / sum)
}

impl DraftModel {
    /// Drafts `k` tokens, then (with `extension`) on while the draft is confident; see
    /// [`Proposer::propose_extended`].
    fn draft(
        &mut self,
        context: &[TokenId],
        k: usize,
        extension: Option<Extension>,
        sampler: &LogitsProcessor,
    ) -> Result<Proposal> {
        if context.is_empty() {
            return Err(CoreError::EmptyPrompt);
        }
        let keep = self.reusable(context);
        self.model.truncate(keep)?;
        self.cached.truncate(keep);
        let room = self.model.max_seq_len().saturating_sub(context.len());
        let k = k.min(room);
        if k == 0 {
            return Ok(Proposal::default());
        }
        // Past `k`, tokens are drafted only while every one so far was confident.
        let (limit, extend_at) = match extension {
            Some(e) => (e.max.max(k).min(room), e.min_confidence),
            None => (k, f32::INFINITY),
        };
        let mut all_confident = extension.is_some();
        let feed = &context[keep..];
        if self.vocab_limit.is_some() {
            // The context's rare tokens stay proposable (a prompt's identifiers recur).
            self.model.extend_output_vocab(feed);
        }
        let mut logits = self.model.forward(feed, LogitsSelection::Last)?;
        self.cached.extend_from_slice(feed);
        // After an accepted step the draft sees the target's token (and maybe its own last one).
        let catch_up = feed.len().saturating_sub(2);

        let mut history = context.to_vec();
        let mut out = Proposal {
            catch_up,
            ..Proposal::default()
        };
        let greedy = sampler.params().is_greedy();
        for i in 0..limit {
            let row: Vec<f32> = logits.squeeze(0)?.to_vec1()?;
            let (token, confidence) = if greedy {
                let t = sampler.greedy_token(&row, &history);
                let c = if all_confident || (self.min_confidence > 0.0 && i > 0) {
                    softmax_prob(&row, t)
                } else {
                    1.0
                };
                (t, c)
            } else {
                let q = sampler.distribution(&row, &history);
                let t = q.sample(&mut self.rng);
                let c = q.prob(t);
                out.q.push(q);
                (t, c)
            };
            all_confident &= confidence >= extend_at;
            if (i > 0 && confidence < self.min_confidence) || (i >= k && !all_confident) {
                out.q.truncate(out.tokens.len());
                break;
            }
            if token as usize >= self.max_token {
                out.q.truncate(out.tokens.len());
                break;
            }
            out.tokens.push(token);
            history.push(token);
            if all_confident {
                out.confident += 1;
            }
            // The next token's logits, unless the draft ends here.
            if i + 1 < k || (i + 1 < limit && all_confident) {
                logits = self.model.forward(&[token], LogitsSelection::Last)?;
                self.cached.push(token);
            }
        }
        Ok(out)
    }
}

impl Proposer for DraftModel {
    fn propose(
        &mut self,
        context: &[TokenId],
        k: usize,
        sampler: &LogitsProcessor,
    ) -> Result<Proposal> {
        self.draft(context, k, None, sampler)
    }

    fn propose_extended(
        &mut self,
        context: &[TokenId],
        k: usize,
        extension: Extension,
        sampler: &LogitsProcessor,
    ) -> Result<Proposal> {
        self.draft(context, k, Some(extension), sampler)
    }

    fn name(&self) -> &str {
        "draft-model"
    }

    fn reset(&mut self) {
        self.model.reset();
        self.cached.clear();
        if let Some(rows) = self.vocab_limit {
            // Forgets the previous context's rare tokens (cheap: the limit stays).
            self.model.limit_output_vocab(rows);
        }
    }

    fn pending(&self, context: &[TokenId]) -> usize {
        context.len() - self.reusable(context)
    }

    fn calibrate(&mut self) -> Result<Option<ProposerCosts>> {
        const PREFILL: usize = 32;
        let vocab = self.max_token.min(self.model.vocab_size()).max(1);
        let tokens: Vec<TokenId> = (0..PREFILL).map(|i| (i % vocab) as TokenId).collect();
        if self.model.max_seq_len() < PREFILL + 8 {
            return Ok(None);
        }
        self.reset();
        // Warm up (first touches of the weights), then time one prefill and single-token steps.
        self.model.forward(&tokens[..2], LogitsSelection::Last)?;
        self.model.reset();
        let t0 = std::time::Instant::now();
        self.model.forward(&tokens, LogitsSelection::Last)?;
        let prefill = t0.elapsed().as_secs_f64() * 1e3;
        // A drafting step as in `propose`: the first forward usually feeds two tokens (the
        // target's correction and the draft's own last one), the next ones one token each, and
        // each row is read back. Timed as a four-token step (best of two), per token.
        const STEP: usize = 4;
        let mut token_ms = f64::INFINITY;
        for _ in 0..2 {
            self.model.truncate(PREFILL)?;
            let t0 = std::time::Instant::now();
            let mut input: &[TokenId] = &tokens[..2];
            for _ in 0..STEP {
                let row: Vec<f32> = self
                    .model
                    .forward(input, LogitsSelection::Last)?
                    .squeeze(0)?
                    .to_vec1()?;
                std::hint::black_box(row);
                input = &tokens[2..3];
            }
            token_ms = token_ms.min(t0.elapsed().as_secs_f64() * 1e3 / STEP as f64);
        }
        self.reset();
        Ok(Some(ProposerCosts {
            token_ms,
            catch_up_ms: prefill / PREFILL as f64,
        }))
    }
}
