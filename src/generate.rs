//! The `Generator`: prompt in, tokens and text out.

use crate::stream::TextStreamer;
use crate::{Error, Result};
use candle_core::DType;
use serde::Serialize;
use specula_core::{
    CausalLm, CoreError, FinishReason, GenerationMetrics, LogitsProcessor, LogitsSelection,
    SamplingParams, StopStringMatcher, TokenId,
};
use specula_draft::{
    AdaptiveConfig, AdaptiveK, Candidate, DraftModel, NgramProposer, Proposal, Proposer, StepRecord,
};
use specula_models::{ChatMessage, DeviceChoice, LoadOptions, ModelError, ModelSource, Tokenizer};
use specula_verify::AcceptanceStats;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What to generate: sampling, length and stop conditions.
///
/// ```
/// use specula::{GenerateParams, SamplingParams};
/// let p = GenerateParams::new(128)
///     .sampling(SamplingParams { temperature: 0.8, top_p: 0.95, seed: 1, ..Default::default() })
///     .stop("\n\n");
/// assert_eq!(p.max_new_tokens, 128);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GenerateParams {
    /// Sampling parameters (greedy by default).
    pub sampling: SamplingParams,
    /// Maximum new tokens (at least 1).
    pub max_new_tokens: usize,
    /// Generation ends when the text contains one of these (the stop string is not returned).
    pub stop_strings: Vec<String>,
    /// Keep generating past end-of-sequence tokens (for benchmarks of fixed length).
    pub ignore_eos: bool,
}

impl Default for GenerateParams {
    fn default() -> Self {
        Self::new(256)
    }
}

impl GenerateParams {
    /// Greedy generation of at most `max_new_tokens` tokens.
    pub fn new(max_new_tokens: usize) -> Self {
        GenerateParams {
            sampling: SamplingParams::default(),
            max_new_tokens,
            stop_strings: Vec::new(),
            ignore_eos: false,
        }
    }

    /// Sets the sampling parameters.
    pub fn sampling(mut self, sampling: SamplingParams) -> Self {
        self.sampling = sampling;
        self
    }

    /// Adds a stop string.
    pub fn stop(mut self, s: impl Into<String>) -> Self {
        self.stop_strings.push(s.into());
        self
    }

    /// Checks all parameters.
    pub fn validate(&self) -> Result<()> {
        self.sampling.validate()?;
        if self.max_new_tokens == 0 {
            return Err(CoreError::invalid("max_new_tokens", "must be at least 1").into());
        }
        Ok(())
    }
}

/// The result of one request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Generation {
    /// Generated text (without the prompt, the EOS token or the stop string).
    pub text: String,
    /// Generated token ids: for a stop string, up to and including the token that completed it;
    /// an EOS token is not included.
    pub tokens: Vec<TokenId>,
    /// Why generation ended.
    pub finish_reason: FinishReason,
    /// Timing.
    pub metrics: GenerationMetrics,
    /// Speculation statistics (`None` for plain decoding).
    pub speculation: Option<AcceptanceStats>,
    /// Tokens emitted by each target forward, in order (the prefill's first token included; a
    /// forward whose first token was EOS is not listed). All 1 without speculation; with it,
    /// accepted draft tokens + 1, except where a stop or `max_new_tokens` cut the step short.
    /// This is Spec-Bench's `accept_lengths`; its length is Spec-Bench's `decoding_steps`.
    pub step_tokens: Vec<usize>,
}

/// Loads a model and its tokenizer into a [`Generator`].
#[derive(Default)]
pub struct GeneratorBuilder {
    source: Option<ModelSource>,
    device: DeviceChoice,
    dtype: Option<DType>,
    max_seq_len: Option<usize>,
    kv_dtype: Option<candle_core::DType>,
    tokenizer: Option<PathBuf>,
    hub_cache: Option<PathBuf>,
    progress: Option<Box<dyn FnMut(usize, usize)>>,
    draft: Option<ModelSource>,
    draft_len: Option<usize>,
    ngram: Option<NgramProposer>,
    draft_confidence: Option<f32>,
    draft_vocab: Option<usize>,
}

impl GeneratorBuilder {
    /// A draft model for speculative decoding (same tokenizer as the target).
    pub fn draft(mut self, source: ModelSource) -> Self {
        self.draft = Some(source);
        self
    }

    /// Also (or, without a draft model, only) propose by prompt lookup. With a fixed draft length
    /// each step tries the n-gram proposer first and falls back to the draft model when the
    /// context has no match; with the adaptive one ([`AdaptiveK::plan`]) each step uses whichever
    /// is expected to be fastest, or neither.
    pub fn ngram(mut self, ngram: NgramProposer) -> Self {
        self.ngram = Some(ngram);
        self
    }

    /// Stop a draft early once the draft model's confidence in its next token falls below `p`
    /// (default [`DEFAULT_DRAFT_CONFIDENCE`] with the adaptive draft length, 0 with a fixed one).
    pub fn draft_confidence(mut self, p: f32) -> Self {
        self.draft_confidence = Some(p);
        self
    }

    /// Let the draft model score only the first `n` token ids and the rarer ones its context uses
    /// (default [`DEFAULT_DRAFT_VOCAB`]; 0: the whole vocabulary). See
    /// [`DraftModel::with_vocab_limit`]: a cheaper draft step, never a different output; other
    /// rare tokens are no longer proposed.
    pub fn draft_vocab(mut self, n: usize) -> Self {
        self.draft_vocab = Some(n);
        self
    }

    /// A fixed number of tokens drafted per step. Without it the draft length is adaptive
    /// ([`AdaptiveK`], up to [`DEFAULT_MAX_DRAFT_LEN`]): chosen each step from measured costs and
    /// acceptance, down to plain decoding when speculation would not pay.
    pub fn draft_len(mut self, k: usize) -> Self {
        self.draft_len = Some(k);
        self
    }

    /// The model to load (required).
    pub fn model(mut self, source: ModelSource) -> Self {
        self.source = Some(source);
        self
    }

    /// The device (default: auto).
    pub fn device(mut self, device: DeviceChoice) -> Self {
        self.device = device;
        self
    }

    /// Dense weight dtype (safetensors compute dtype; for GGUF, dequantize to it at load).
    pub fn dtype(mut self, dtype: DType) -> Self {
        self.dtype = Some(dtype);
        self
    }

    /// Caps the context length (saves KV memory).
    pub fn max_seq_len(mut self, n: usize) -> Self {
        self.max_seq_len = Some(n);
        self
    }

    /// Element type of the KV caches (default: F16 on the CPU, F32 on accelerators; the CPU
    /// takes F16 or F32). Speculative and plain decoding share it, so either stays lossless.
    pub fn kv_dtype(mut self, dtype: DType) -> Self {
        self.kv_dtype = Some(dtype);
        self
    }

    /// Uses this `tokenizer.json` instead of the model's.
    pub fn tokenizer(mut self, path: impl Into<PathBuf>) -> Self {
        self.tokenizer = Some(path.into());
        self
    }

    /// Hub cache directory.
    pub fn hub_cache(mut self, dir: impl Into<PathBuf>) -> Self {
        self.hub_cache = Some(dir.into());
        self
    }

    /// Called with `(done, total)` while weights load.
    pub fn progress(mut self, f: impl FnMut(usize, usize) + 'static) -> Self {
        self.progress = Some(Box::new(f));
        self
    }

    /// Loads everything.
    pub fn build(self) -> Result<Generator> {
        let source = self
            .source
            .ok_or_else(|| Error::Config("no model given; call .model(ModelSource::...)".into()))?;
        let opts = LoadOptions {
            device: self.device.open()?,
            dtype: self.dtype,
            max_seq_len: self.max_seq_len,
            kv_dtype: self.kv_dtype,
            tokenizer: self.tokenizer,
            hub_cache: self.hub_cache,
        };
        let mut progress = self.progress.unwrap_or_else(|| Box::new(|_, _| {}));
        let loaded = specula_models::load_with_progress(&source, &opts, &mut *progress)?;
        let mut generator = Generator::new(loaded.model, loaded.tokenizer)?;
        let adaptive = self.draft_len.is_none();
        let mut proposers: Vec<Box<dyn Proposer>> = Vec::new();
        if let Some(ng) = self.ngram {
            proposers.push(Box::new(ng));
        }
        if let Some(draft) = self.draft {
            // The draft keeps its weights as stored (quantized); only the target honours `dtype`.
            let draft_opts = LoadOptions {
                dtype: None,
                tokenizer: None,
                ..opts
            };
            let d = specula_models::load_with_progress(&draft, &draft_opts, &mut *progress)?;
            check_compatible(&generator.tokenizer, &d.tokenizer)?;
            let vocab = generator.model.vocab_size();
            let confidence = self.draft_confidence.unwrap_or(if adaptive {
                DEFAULT_DRAFT_CONFIDENCE
            } else {
                0.0
            });
            let mut drafter = DraftModel::new(d.model, vocab).with_min_confidence(confidence);
            match self.draft_vocab.unwrap_or(DEFAULT_DRAFT_VOCAB) {
                0 => {}
                n => drafter = drafter.with_vocab_limit(n),
            }
            proposers.push(Box::new(drafter));
        }
        if !proposers.is_empty() {
            let k = self.draft_len.unwrap_or(DEFAULT_MAX_DRAFT_LEN);
            generator = generator.with_proposers(proposers, k)?;
            if adaptive {
                generator.set_adaptive(Some(AdaptiveConfig {
                    max_k: k,
                    ..AdaptiveConfig::default()
                }))?;
            }
        }
        Ok(generator)
    }
}

/// Draft length of [`Generator::with_draft`]-style fixed speculation when none is given.
pub const DEFAULT_DRAFT_LEN: usize = 4;

/// Token ids a draft model scores by default ([`GeneratorBuilder::draft_vocab`]), besides the
/// rarer ones of its context; 0 = all. A BPE vocabulary's first 32,768 ids cover about 94 % of
/// code tokens and 92 % of Spec-Bench's (Qwen2.5; 97.6 % and 95 % with the context's ids), and
/// scoring only them takes 80 % off the output projection of the Qwen2.5 0.5B draft (a third of
/// its bytes): on the Qwen pair, fixed k = 4, Spec-Bench 1.28x plain instead of 1.08x, code
/// prompts 1.53-1.73x against 1.54x, 48-50 speculative tokens/s against 42-45
/// (docs/benchmarks.md).
pub const DEFAULT_DRAFT_VOCAB: usize = 32_768;

/// Longest draft the adaptive draft length considers by default.
pub const DEFAULT_MAX_DRAFT_LEN: usize = 6;

/// Draft-model confidence below which an adaptive draft stops early.
pub const DEFAULT_DRAFT_CONFIDENCE: f32 = 0.3;

/// Largest draft length: a verification forward of `k + 1` rows must stay within the rows that
/// the model computes batch-invariantly (`specula_models::BATCH_INVARIANT_MAX_ROWS`).
pub const MAX_DRAFT_LEN: usize = specula_models::BATCH_INVARIANT_MAX_ROWS - 1;

/// Checks that a draft's tokenizer agrees with the target's on every id both can emit and on the
/// end-of-sequence tokens.
pub fn check_compatible(target: &Tokenizer, draft: &Tokenizer) -> Result<()> {
    let incompatible = |m: String| Err(Error::IncompatibleDraft(m));
    let t_vocab = target.inner().get_vocab(true);
    let mut mismatches = 0usize;
    let mut example = None;
    for (token, &id) in draft.inner().get_vocab(true).iter() {
        match t_vocab.get(token) {
            Some(&tid) if tid == id => {}
            _ if (id as usize) >= target.vocab_size() => {}
            other => {
                mismatches += 1;
                example.get_or_insert_with(|| format!("draft `{token}` = {id}, target {other:?}"));
            }
        }
    }
    if mismatches > 0 {
        return incompatible(format!(
            "{mismatches} tokens differ between the draft and target vocabularies (e.g. {}); use a draft from the same model family",
            example.unwrap_or_default()
        ));
    }
    if target.eos_token_ids().first() != draft.eos_token_ids().first() {
        return incompatible(format!(
            "end-of-sequence tokens differ: target {:?}, draft {:?}",
            target.eos_token_ids(),
            draft.eos_token_ids()
        ));
    }
    Ok(())
}

/// Generates text with a causal language model, optionally speculating with a [`Proposer`].
pub struct Generator {
    model: Box<dyn CausalLm + Send>,
    tokenizer: Tokenizer,
    /// Proposers in order of preference (a fixed draft length uses the first non-empty
    /// proposal; the adaptive controller picks among them).
    proposers: Vec<Box<dyn Proposer>>,
    draft_len: usize,
    adaptive: Option<AdaptiveK>,
    /// True once the adaptive controller holds start-up measurements.
    calibrated: bool,
    stats: AcceptanceStats,
}

impl std::fmt::Debug for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator")
            .field("vocab_size", &self.model.vocab_size())
            .field("max_seq_len", &self.model.max_seq_len())
            .finish()
    }
}

impl Generator {
    /// A builder that loads a model from a [`ModelSource`].
    pub fn builder() -> GeneratorBuilder {
        GeneratorBuilder::default()
    }

    /// Wraps an already loaded model; errors if the tokenizer can produce ids the model lacks.
    pub fn new(model: impl CausalLm + Send + 'static, tokenizer: Tokenizer) -> Result<Self> {
        if tokenizer.vocab_size() > model.vocab_size() {
            return Err(ModelError::VocabMismatch {
                tokenizer: tokenizer.vocab_size(),
                model: model.vocab_size(),
            }
            .into());
        }
        Ok(Generator {
            model: Box::new(model),
            tokenizer,
            proposers: Vec::new(),
            draft_len: 0,
            adaptive: None,
            calibrated: false,
            stats: AcceptanceStats::default(),
        })
    }

    /// Speculates with `proposer`, drafting up to `k` tokens per step (1..=[`MAX_DRAFT_LEN`]).
    pub fn with_proposer(self, proposer: Box<dyn Proposer>, k: usize) -> Result<Self> {
        self.with_proposers(vec![proposer], k)
    }

    /// Speculates with several proposers in order of preference, drafting up to `k` tokens per
    /// step: with a fixed draft length each step uses the first non-empty proposal (as
    /// [`FirstNonEmpty`](crate::FirstNonEmpty)); with the adaptive one ([`set_adaptive`](Self::set_adaptive)) each step
    /// uses the proposer and length expected to be fastest, or none. Statistics are kept per
    /// proposer.
    pub fn with_proposers(mut self, proposers: Vec<Box<dyn Proposer>>, k: usize) -> Result<Self> {
        if proposers.is_empty() {
            return Err(Error::Config(
                "no proposer given; use without_speculation() for plain decoding".into(),
            ));
        }
        self.set_draft_len(k)?;
        self.proposers = proposers;
        self.stats = AcceptanceStats::new(k);
        Ok(self)
    }

    /// Speculates with a draft model (its tokenizer must match; see [`check_compatible`]).
    pub fn with_draft(self, draft: impl CausalLm + Send + 'static, k: usize) -> Result<Self> {
        let vocab = self.model.vocab_size();
        self.with_proposer(Box::new(DraftModel::new(draft, vocab)), k)
    }

    /// Removes the proposer: plain decoding.
    pub fn without_speculation(mut self) -> Self {
        self.proposers.clear();
        self.draft_len = 0;
        self.adaptive = None;
        self
    }

    /// Chooses the draft length per step with [`AdaptiveK`] (`Some`, its `max_k` within
    /// 1..=[`MAX_DRAFT_LEN`]), or drafts a fixed [`set_draft_len`](Self::set_draft_len) (`None`).
    pub fn set_adaptive(&mut self, config: Option<AdaptiveConfig>) -> Result<()> {
        match config {
            Some(c) => {
                self.set_max_draft_len(c.max_k)?;
                self.adaptive = Some(AdaptiveK::new(c));
                self.calibrated = false;
            }
            None => self.adaptive = None,
        }
        Ok(())
    }

    /// The adaptive controller, when the draft length is adaptive.
    pub fn adaptive(&self) -> Option<&AdaptiveK> {
        self.adaptive.as_ref()
    }

    /// Drafts a fixed `k` tokens per step with the configured proposer (turns adaptive off).
    pub fn set_draft_len(&mut self, k: usize) -> Result<()> {
        self.adaptive = None;
        self.set_max_draft_len(k)
    }

    fn set_max_draft_len(&mut self, k: usize) -> Result<()> {
        if k == 0 || k > MAX_DRAFT_LEN {
            return Err(CoreError::invalid(
                "draft_len",
                format!("{k} is outside 1..={MAX_DRAFT_LEN}"),
            )
            .into());
        }
        self.draft_len = k;
        Ok(())
    }

    /// True when a proposer is configured.
    pub fn is_speculative(&self) -> bool {
        !self.proposers.is_empty()
    }

    /// Measures what the adaptive controller needs before its first request: the target's
    /// forward time for `n = 1..=max_k + 1` tokens (the verification curve) and each proposer's
    /// own costs ([`Proposer::calibrate`]). Called by the first adaptive request; call it earlier
    /// to keep it out of that request's latency. A no-op without the adaptive draft length.
    pub fn calibrate(&mut self) -> Result<()> {
        let Some(max_k) = self.adaptive.as_ref().map(|c| c.config().max_k) else {
            return Ok(());
        };
        let rows = (max_k + 1).min(self.model.max_seq_len().saturating_sub(2));
        let vocab = self.model.vocab_size().max(1);
        let tokens: Vec<TokenId> = (0..rows + 1).map(|i| (i % vocab) as TokenId).collect();
        let mut curve = Vec::with_capacity(rows);
        if rows > 0 {
            self.model.reset();
            // Warm up, then time each length twice past a one-token prefix; keep the faster.
            self.model.forward(&tokens[..1], LogitsSelection::Last)?;
            self.model.forward(&tokens[1..2], LogitsSelection::Last)?;
            self.model.truncate(1)?;
            for n in 1..=rows {
                let mut best = f64::INFINITY;
                for _ in 0..2 {
                    let t0 = Instant::now();
                    self.model
                        .forward(&tokens[1..1 + n], LogitsSelection::All)?;
                    best = best.min(t0.elapsed().as_secs_f64() * 1e3);
                    self.model.truncate(1)?;
                }
                curve.push(best);
            }
            self.model.reset();
        }
        let mut costs = Vec::with_capacity(self.proposers.len());
        for p in &mut self.proposers {
            costs.push(p.calibrate()?);
            p.reset();
        }
        if let Some(ctl) = self.adaptive.as_mut() {
            ctl.set_verify_costs(&curve);
            for (i, c) in costs.iter().enumerate() {
                if let Some(c) = c {
                    ctl.set_source_costs(i, c.token_ms, c.catch_up_ms);
                }
            }
        }
        self.calibrated = true;
        Ok(())
    }

    /// Speculation statistics accumulated over every request of this generator.
    pub fn stats(&self) -> &AcceptanceStats {
        &self.stats
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The model.
    pub fn model(&self) -> &dyn CausalLm {
        &*self.model
    }

    /// Generates a completion of `prompt`.
    pub fn generate(&mut self, prompt: &str, params: &GenerateParams) -> Result<Generation> {
        self.generate_stream(prompt, params, |_| {})
    }

    /// Generates a completion of `prompt`, calling `on_text` with each new piece of text as soon
    /// as it is final (never a partial UTF-8 character, never part of a stop string).
    pub fn generate_stream(
        &mut self,
        prompt: &str,
        params: &GenerateParams,
        on_text: impl FnMut(&str),
    ) -> Result<Generation> {
        params.validate()?;
        let ids = self.tokenizer.encode(prompt)?;
        self.generate_from_ids(&ids, params, on_text)
    }

    /// Renders `messages` with the model's chat template, then generates the assistant's reply.
    pub fn generate_chat(
        &mut self,
        messages: &[ChatMessage],
        params: &GenerateParams,
        on_text: impl FnMut(&str),
    ) -> Result<Generation> {
        let prompt = self.tokenizer.apply_chat_template(messages)?;
        self.generate_stream(&prompt, params, on_text)
    }

    /// Generates from already tokenized input.
    pub fn generate_from_ids(
        &mut self,
        prompt: &[TokenId],
        params: &GenerateParams,
        mut on_text: impl FnMut(&str),
    ) -> Result<Generation> {
        params.validate()?;
        if prompt.is_empty() {
            return Err(CoreError::EmptyPrompt.into());
        }
        let limit = self.model.max_seq_len();
        if prompt.len() >= limit {
            return Err(CoreError::ContextExceeded {
                needed: prompt.len() + 1,
                limit,
            }
            .into());
        }
        let eos: Vec<TokenId> = if params.ignore_eos {
            Vec::new()
        } else {
            self.tokenizer.eos_token_ids().to_vec()
        };
        let stops = StopStringMatcher::new(params.stop_strings.clone());
        let mut sampler = LogitsProcessor::new(params.sampling.clone())?;

        if self.adaptive.is_some() && !self.calibrated && !self.proposers.is_empty() {
            self.calibrate()?;
        }
        let start = Instant::now();
        self.model.reset();
        let logits = self.model.forward(prompt, LogitsSelection::Last)?;
        let prefill = start.elapsed();

        let mut history = prompt.to_vec();
        let mut out = Output::new(&self.tokenizer, stops);
        let mut token_times: Vec<Duration> = Vec::new();
        let mut spec = (!self.proposers.is_empty()).then(|| AcceptanceStats::new(self.draft_len));
        for p in &mut self.proposers {
            p.reset();
        }
        let row: Vec<f32> = logits
            .squeeze(0)
            .map_err(CoreError::from)?
            .to_vec1()
            .map_err(CoreError::from)?;
        if let Some(ctl) = self.adaptive.as_mut() {
            ctl.begin_request();
            ctl.observe_confidence(f64::from(specula_verify::top_probability(&row)));
        }
        let mut batch = vec![sampler.sample(&row, &history)];
        let mut step_tokens: Vec<usize> = Vec::new();
        let finish = 'outer: loop {
            // Emit the tokens of the last step in order; anything after a stop is discarded.
            for (i, &token) in batch.iter().enumerate() {
                if eos.contains(&token) {
                    break 'outer FinishReason::Eos;
                }
                if i == 0 {
                    step_tokens.push(0);
                }
                if let Some(n) = step_tokens.last_mut() {
                    *n += 1;
                }
                token_times.push(start.elapsed());
                history.push(token);
                if out.push(token, &mut on_text)? {
                    break 'outer FinishReason::StopString;
                }
                if out.tokens.len() >= params.max_new_tokens {
                    break 'outer FinishReason::MaxTokens;
                }
            }
            // Invariant: the cache holds every token of `history` but the last.
            let room = limit.saturating_sub(history.len());
            if room == 0 {
                break FinishReason::ContextFull;
            }
            let last = history[history.len() - 1];
            // Never draft past what may still be emitted or what the context can hold.
            let remaining = params.max_new_tokens - out.tokens.len();
            let max_k = self.draft_len.min(remaining - 1).min(room - 1);
            // The horizon a proposer's catch-up is spread over: the tokens this request is
            // expected to produce still (learnt from earlier requests), at most `remaining`.
            let horizon = self
                .adaptive
                .as_ref()
                .map_or(remaining, |c| c.expected_left(out.tokens.len(), remaining));
            let step = match spec.as_mut() {
                Some(_) if max_k > 0 => Self::propose(
                    &mut self.proposers,
                    self.adaptive.as_mut(),
                    &history,
                    max_k,
                    horizon,
                    &sampler,
                )?,
                _ => None,
            };
            batch = match (step, spec.as_mut()) {
                (
                    Some(Draft {
                        source,
                        proposal,
                        planned,
                        ms: draft_ms,
                    }),
                    Some(stats),
                ) => {
                    let t1 = Instant::now();
                    // The confidence costs a softmax per row; only the adaptive policy reads it.
                    let verify = if self.adaptive.is_some() {
                        specula_verify::verify_with_confidence
                    } else {
                        specula_verify::verify
                    };
                    let v = verify(
                        &mut *self.model,
                        last,
                        &proposal.tokens,
                        &proposal.q,
                        &history,
                        &mut sampler,
                    )?;
                    let verify_time = t1.elapsed();
                    let (drafted, accepted) = (proposal.tokens.len(), v.verdict.accepted);
                    let forward_ms = v.forward_time.as_secs_f64() * 1e3;
                    if proposal.source.is_empty() && self.proposers.len() == 1 {
                        stats.record_step(drafted, accepted);
                    } else if proposal.source.is_empty() {
                        let name = self.proposers[source].name().to_string();
                        stats.record_step_by(&name, drafted, accepted);
                    } else {
                        stats.record_step_by(&proposal.source, drafted, accepted);
                    }
                    if let Some(ctl) = self.adaptive.as_mut() {
                        if let Some(c) = v.confidence {
                            ctl.observe_confidence(f64::from(c));
                        }
                        ctl.observe(&StepRecord {
                            source,
                            planned,
                            drafted,
                            accepted,
                            confident: proposal.confident,
                            draft_ms,
                            verify_ms: forward_ms,
                            catch_up: proposal.catch_up,
                        });
                    }
                    stats.draft_ms += draft_ms;
                    stats.verify_ms += forward_ms;
                    stats.sampling_ms +=
                        verify_time.saturating_sub(v.forward_time).as_secs_f64() * 1e3;
                    let mut next = proposal.tokens[..v.verdict.accepted].to_vec();
                    next.push(v.verdict.next);
                    next
                }
                _ => {
                    let t0 = Instant::now();
                    let logits = self.model.forward(&[last], LogitsSelection::Last)?;
                    let ms = t0.elapsed().as_secs_f64() * 1e3;
                    let row: Vec<f32> = logits
                        .squeeze(0)
                        .map_err(CoreError::from)?
                        .to_vec1()
                        .map_err(CoreError::from)?;
                    if let Some(ctl) = self.adaptive.as_mut() {
                        ctl.observe_plain(ms);
                        ctl.observe_confidence(f64::from(specula_verify::top_probability(&row)));
                    }
                    vec![sampler.sample(&row, &history)]
                }
            };
        };
        if let Some(ctl) = self.adaptive.as_mut() {
            ctl.end_request(out.tokens.len());
        }
        let text = out.finish(finish, &mut on_text)?;
        let metrics =
            GenerationMetrics::from_timings(prompt.len(), prefill, &token_times, start.elapsed());
        if let Some(s) = &spec {
            self.stats.merge(s);
        }
        Ok(Generation {
            text,
            tokens: out.tokens,
            finish_reason: finish,
            metrics,
            speculation: spec,
            step_tokens,
        })
    }

    /// Asks the proposers for the next step's draft (up to `max_k` tokens, `horizon` tokens
    /// expected still): the adaptive controller picks the proposer and length (and lets a
    /// draft model run on while it is confident, [`AdaptiveK::extension`]), a fixed draft
    /// length takes the first non-empty proposal. `None`: a plain step.
    fn propose(
        proposers: &mut [Box<dyn Proposer>],
        adaptive: Option<&mut AdaptiveK>,
        history: &[TokenId],
        max_k: usize,
        horizon: usize,
        sampler: &LogitsProcessor,
    ) -> Result<Option<Draft>> {
        let Some(ctl) = adaptive else {
            let t0 = Instant::now();
            for (i, p) in proposers.iter_mut().enumerate() {
                let proposal = p.propose(history, max_k, sampler)?;
                if !proposal.tokens.is_empty() {
                    return Ok(Some(Draft {
                        source: i,
                        planned: proposal.tokens.len(),
                        proposal,
                        ms: t0.elapsed().as_secs_f64() * 1e3,
                    }));
                }
            }
            return Ok(None);
        };
        // Cheap proposers (lookups) propose first, so that the controller knows what they offer.
        let mut ready: Vec<Option<(Proposal, f64)>> = Vec::with_capacity(proposers.len());
        let mut candidates = Vec::with_capacity(proposers.len());
        for (i, p) in proposers.iter_mut().enumerate() {
            if p.is_cheap() {
                let t0 = Instant::now();
                let proposal = p.propose(history, max_k, sampler)?;
                let ms = t0.elapsed().as_secs_f64() * 1e3;
                candidates.push(Candidate {
                    source: i,
                    limit: proposal.tokens.len(),
                    pending: 0,
                });
                ready.push(Some((proposal, ms)));
            } else {
                candidates.push(Candidate {
                    source: i,
                    limit: max_k,
                    pending: p.pending(history),
                });
                ready.push(None);
            }
        }
        let planned = ctl.plan(&candidates, horizon);
        if tracing::enabled!(tracing::Level::DEBUG) {
            trace_plan(ctl, &candidates, planned, horizon);
        }
        let Some((source, k)) = planned else {
            return Ok(None);
        };
        let k = k.min(max_k);
        let (mut proposal, ms, cap) = match ready.get_mut(source).and_then(Option::take) {
            Some((p, ms)) => (p, ms, k),
            None => {
                let extension = ctl.extension_for(source, k, max_k);
                let t0 = Instant::now();
                let p = proposers[source].propose_extended(history, k, extension, sampler)?;
                (
                    p,
                    t0.elapsed().as_secs_f64() * 1e3,
                    extension.max.clamp(k, max_k),
                )
            }
        };
        proposal.tokens.truncate(cap);
        proposal.q.truncate(cap);
        proposal.confident = proposal.confident.min(cap);
        Ok((!proposal.tokens.is_empty()).then_some(Draft {
            source,
            planned: k,
            proposal,
            ms,
        }))
    }
}

/// A step's draft ([`Generator::propose`]).
struct Draft {
    /// The proposer's index.
    source: usize,
    /// The proposal.
    proposal: Proposal,
    /// The length planned for it (the adaptive controller's; fewer or, extended, more tokens
    /// may have been proposed).
    planned: usize,
    /// Time spent proposing, ms.
    ms: f64,
}

/// Logs the adaptive controller's view of each candidate at `debug` level: acceptance per
/// position, and the estimated cost / expected tokens of drafting 1..=4 with it.
fn trace_plan(
    ctl: &AdaptiveK,
    candidates: &[Candidate],
    planned: Option<(usize, usize)>,
    horizon: usize,
) {
    for c in candidates {
        let costs: Vec<String> = (1..=4)
            .map(|k| {
                let ms = ctl.step_cost_of(c.source, k).unwrap_or(f64::NAN);
                format!("{ms:.0}/{:.2}", ctl.expected_tokens_of(c.source, k))
            })
            .collect();
        tracing::debug!(
            plan = ?planned,
            plain_ms = ?ctl.verify_cost(1),
            confidence = ?ctl.confidence(),
            horizon,
            source = c.source,
            limit = c.limit,
            pending = c.pending,
            catch_up_ms = ctl.catch_up_cost(c.source, c.pending),
            acceptance = ?ctl.acceptance_of(c.source),
            steps = %costs.join(" "),
            "adaptive plan"
        );
    }
}

/// Accumulates generated tokens into text, applying stop strings and streaming what is final.
struct Output<'a> {
    tokenizer: &'a Tokenizer,
    stops: StopStringMatcher,
    streamer: TextStreamer,
    tokens: Vec<TokenId>,
    text: String,
    sent: usize,
    stopped_at: Option<usize>,
}

impl<'a> Output<'a> {
    fn new(tokenizer: &'a Tokenizer, stops: StopStringMatcher) -> Self {
        Output {
            tokenizer,
            stops,
            streamer: TextStreamer::new(),
            tokens: Vec::new(),
            text: String::new(),
            sent: 0,
            stopped_at: None,
        }
    }

    /// Adds a token; returns true when a stop string has appeared.
    fn push(&mut self, token: TokenId, on_text: &mut impl FnMut(&str)) -> Result<bool> {
        self.tokens.push(token);
        let delta = self.streamer.push(self.tokenizer, token)?;
        if delta.is_empty() {
            return Ok(false);
        }
        // A stop string can only start within the new text or the held-back tail before it.
        let search_from = self.sent.min(self.text.len());
        self.text.push_str(&delta);
        if let Some(i) = self.stops.find(&self.text[search_from..]) {
            self.stopped_at = Some(search_from + i);
            return Ok(true);
        }
        let safe = self.stops.safe_len(&self.text);
        if safe > self.sent {
            on_text(&self.text[self.sent..safe]);
            self.sent = safe;
        }
        Ok(false)
    }

    /// Flushes the rest and returns the final text.
    fn finish(&mut self, reason: FinishReason, on_text: &mut impl FnMut(&str)) -> Result<String> {
        if reason != FinishReason::StopString {
            let rest = self.streamer.finish(self.tokenizer)?;
            self.text.push_str(&rest);
            if let Some(i) = self
                .stops
                .find(&self.text[self.sent.min(self.text.len())..])
            {
                self.stopped_at = Some(self.sent + i);
            }
        }
        let end = self.stopped_at.unwrap_or(self.text.len());
        if end > self.sent {
            on_text(&self.text[self.sent..end]);
            self.sent = end;
        }
        self.text.truncate(end);
        Ok(std::mem::take(&mut self.text))
    }
}
