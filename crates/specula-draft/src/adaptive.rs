//! Choosing the proposer and the draft length each step so that speculation is never slower
//! than plain decoding.
//!
//! The expected number of tokens a step with `k` drafted tokens emits is
//! `E(k) = 1 + sum_{i=1..k} prod_{j<=i} a_j`, where `a_j` is the probability that drafted position
//! `j` is accepted given that every earlier one was (estimated online per proposer, exponentially
//! weighted). Its cost is `T(k) = draft(k) + verify(k + 1)`, with `verify(n)` the measured time of
//! a target forward of `n` tokens (`verify(1)` is a plain decode step; measured at start-up by
//! the generator's calibration, then refined online) and `draft(k)` the proposer's measured cost
//! per token times `k`. A proposer that must first catch up on context it has not seen (a draft
//! model before its first step: the whole prompt; after plain steps: the tokens it skipped) also
//! pays that one-off work, spread over the tokens still to generate. The multi-token forward
//! and per-token draft costs are kept relative to the plain step measured alongside them and
//! read back at the current plain cost: a longer context or a busier machine slows every
//! forward alike, and a cost measured on a long prompt must not keep an option out of use on the
//! next, short one (it would never be measured again).
//!
//! [`AdaptiveK::plan`] returns the proposer and `k` with the lowest expected time per emitted token,
//! or `None` (plain decoding) when no draft beats a plain step: when verification is expensive,
//! acceptance low, or a catch-up cannot pay for itself in the tokens left (a catch-up counts 1.5
//! times its estimate: it is certain, while the end of sequence may come before the tokens it is
//! spread over). Before a proposer has been observed its acceptance is assumed equal to the target's recent confidence (the mean
//! probability of its own greedy token), which predicts how well any cheaper model can guess the
//! next token. After `probe_every` plain steps in a row one short draft is tried (only with a
//! proposer whose catch-up costs less than a plain step) to refresh the estimates.
//!
//! The plan is made before any token is drafted, from averages. A draft model then knows more:
//! its probability of each token it drafts, which predicts acceptance far better (on code with
//! the Qwen2.5 pair, all 295 tokens the 0.5B drafted at 0.9 or more were accepted, 64 % of those
//! at 0.5-0.7). [`AdaptiveK::extension`] says how far past the planned `k` a draft may run while
//! each of its tokens is that confident ([`Extension`]): as long as each extra token, emitted
//! with the observed acceptance of confident tokens, is worth more than its draft time and
//! verification row at the plan's time per token.
//!
//! The choice never affects what is emitted: greedy output stays token-identical and sampled
//! output keeps the target's distribution (the acceptance rule is exact for every `k`).
//!
//! ```
//! use specula_draft::{AdaptiveConfig, AdaptiveK};
//! let mut c = AdaptiveK::new(AdaptiveConfig { max_k: 6, ..AdaptiveConfig::default() });
//! // Verification nearly free, drafts always accepted: long drafts.
//! c.set_costs(&[10.0, 10.5, 11.0, 11.5, 12.0, 12.5, 13.0], 0.5);
//! for _ in 0..50 { c.observe_step(6, 6, 3.0, 13.0); }
//! assert_eq!(c.choose(), 6);
//! // Verification as expensive as n plain steps, nothing accepted: plain decoding.
//! c.set_costs(&[10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0], 5.0);
//! for _ in 0..50 { c.observe_step(2, 0, 10.0, 30.0); }
//! assert_eq!(c.choose(), 0);
//! ```

use crate::Extension;

/// Settings of the adaptive draft length.
#[derive(Debug, Clone)]
pub struct AdaptiveConfig {
    /// Longest draft.
    pub max_k: usize,
    /// Weight of a new observation in the running estimates (0..1).
    pub decay: f64,
    /// Acceptance probability assumed per position before any observation of a proposer and of
    /// the target's confidence.
    pub prior_acceptance: f64,
    /// After this many plain steps in a row, draft once to re-measure acceptance.
    pub probe_every: usize,
    /// A draft may run past its planned length only through tokens the proposer gave at least
    /// this probability ([`Extension::min_confidence`]; above 1: never). Default 0.7: on code
    /// with the Qwen2.5 pair, 321 of 322 tokens drafted at 0.7 or more were accepted, and 0.7
    /// ran ahead of 0.9 in alternated runs (docs/benchmarks.md).
    pub extend_confidence: f64,
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        AdaptiveConfig {
            max_k: 6,
            decay: 0.1,
            prior_acceptance: 0.6,
            probe_every: 64,
            extend_confidence: 0.7,
        }
    }
}

/// One proposer the controller may draft with in the coming step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// The proposer's index (its statistics are kept per index).
    pub source: usize,
    /// The most tokens it can propose now (an n-gram proposer: the length of its match).
    pub limit: usize,
    /// Context tokens it must process before drafting ([`Proposer::pending`](crate::Proposer::pending)).
    pub pending: usize,
}

/// Running estimates of one proposer.
#[derive(Debug, Clone, Default)]
struct Track {
    /// `accept[j]`: P(position j accepted | positions < j accepted); empty until observed.
    accept: Vec<f64>,
    /// `seen_confidence[j]`: the target's running confidence when position `j` was observed
    /// (same weighting as `accept[j]`); `accept[j] / seen_confidence[j]` is how this proposer's
    /// acceptance scales with the predictability of the text.
    seen_confidence: Vec<f64>,
    /// `observed[j]`: how many steps reached position `j` (sets how fast `accept[j]` leaves the
    /// prior, see [`PRIOR_OBSERVATIONS`]).
    observed: Vec<usize>,
    /// Draft time per drafted token (scaled with the plain step cost).
    token_ms: Option<Scaled>,
    /// Draft time per context token caught up on.
    catch_up_ms: Option<f64>,
    /// P(accepted | the token and every earlier one of its draft were confident), over the
    /// confident prefixes of the proposals ([`Proposal::confident`](crate::Proposal::confident)).
    confident_accept: f64,
    /// How many confident tokens have been observed (weights `confident_accept` as
    /// `observed` weights `accept`).
    confident_observed: usize,
}

impl Track {
    /// [`Track::confident_accept`], or its prior before any observation.
    fn confident_acceptance(&self) -> f64 {
        if self.confident_observed == 0 {
            CONFIDENT_PRIOR
        } else {
            self.confident_accept
        }
    }
}

/// One speculative step, for [`AdaptiveK::observe`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepRecord {
    /// The proposer's index.
    pub source: usize,
    /// The draft length the controller planned ([`AdaptiveK::plan`]); `drafted` may exceed it
    /// through an [`Extension`], and positions past it do not enter the per-position estimates
    /// (they were drafted only because the proposer was sure of them).
    pub planned: usize,
    /// Tokens proposed and verified.
    pub drafted: usize,
    /// Of them, accepted.
    pub accepted: usize,
    /// The proposal's leading tokens given at least the extension's confidence
    /// ([`Proposal::confident`](crate::Proposal::confident)).
    pub confident: usize,
    /// Time to draft.
    pub draft_ms: f64,
    /// Time of the target's forward of `drafted + 1` tokens.
    pub verify_ms: f64,
    /// Context tokens the proposer caught up on first ([`Proposal::catch_up`](crate::Proposal::catch_up)).
    pub catch_up: usize,
}

/// A cost measured while a plain decode step cost `plain` ms: read back in proportion to the
/// plain step's cost now. A longer context or a busier machine slows every forward alike, and the
/// plain step is measured all the time, while a verification of `n` tokens or a draft token is
/// measured only when it is used; without the scaling a cost measured on a long prompt would stay
/// inflated on the next, short one, and the option would never be tried again.
#[derive(Debug, Clone, Copy)]
struct Scaled {
    ms: f64,
    plain: Option<f64>,
}

impl Scaled {
    /// The cost when a plain step costs `plain_now`.
    fn at(self, plain_now: Option<f64>) -> f64 {
        match (self.plain, plain_now) {
            (Some(then), Some(now)) if then > 0.0 => self.ms * now / then,
            _ => self.ms,
        }
    }

    /// `old` moved towards a new measurement `ms` (taken at plain cost `plain`) by weight `w`.
    fn blend(old: Option<Scaled>, ms: f64, plain: Option<f64>, w: f64) -> Scaled {
        match old {
            None => Scaled { ms, plain },
            Some(o) => {
                // The new measurement, expressed at the old one's plain cost.
                let ms = match (o.plain, plain) {
                    (Some(then), Some(now)) if now > 0.0 => ms * then / now,
                    _ => ms,
                };
                Scaled {
                    ms: o.ms + w * (ms - o.ms),
                    plain: o.plain.or(plain),
                }
            }
        }
    }
}

/// How many observations the prior acceptance of a position is worth: the `n`-th observation of
/// a position gets weight `max(decay, 1 / (n + PRIOR_OBSERVATIONS))`, so the estimate is the
/// running mean of the prior and the first observations and only then a decaying average. With
/// the decay's weight alone the prior (the target's confidence, about 0.97 on code) outlived a
/// proposer's real record for dozens of steps: the n-gram lookup, which proposes rarely on code
/// completions, still counted at 0.62-0.70 for its first position after 20 steps of which it won
/// 8 (five code prompts, quantized pair), and kept being chosen over the draft model.
const PRIOR_OBSERVATIONS: f64 = 2.0;

/// Acceptance assumed for a confident drafted token before any was observed (worth
/// [`PRIOR_OBSERVATIONS`] observations). Measured: on code with the Qwen2.5 pair, 321 of the 322
/// tokens the 0.5B drafted with a probability of 0.7 or more were accepted.
const CONFIDENT_PRIOR: f64 = 0.9;

/// Catch-up work below this many tokens is part of every normal step (the target's correction or
/// bonus token, and the draft's own last token).
const ROUTINE_CATCH_UP: usize = 2;

/// Catch-ups at least this long update the measured cost per caught-up token.
const MEASURED_CATCH_UP: usize = 16;

/// A catch-up is a certain cost, while the tokens it is spread over are not (the end of sequence
/// may come first): it counts this much more than its estimate.
const CATCH_UP_MARGIN: f64 = 0.5;

/// The draft-length controller (see the module docs).
#[derive(Debug, Clone)]
pub struct AdaptiveK {
    cfg: AdaptiveConfig,
    tracks: Vec<Track>,
    /// Running time of a plain decode step (a target forward of one token), once measured.
    plain_ms: Option<f64>,
    /// `verify_ms[n - 2]`: running time of a target forward of `n >= 2` tokens, once measured.
    verify_ms: Vec<Option<Scaled>>,
    /// Running mean of the target's probability of its own greedy token.
    confidence: Option<f64>,
    plain_streak: usize,
    /// Confidence observations since [`AdaptiveK::begin_request`] (a running mean until there
    /// are `1 / decay` of them, then exponentially weighted).
    confidence_seen: usize,
    /// Running mean length of the previous requests' outputs (see [`AdaptiveK::expected_left`]).
    typical_len: Option<f64>,
    /// The last plan's expected time per emitted token: what a token gained by an
    /// [`extension`](AdaptiveK::extension) is worth.
    plan_ms_per_token: Option<f64>,
}

impl AdaptiveK {
    /// A controller with no measurements yet.
    pub fn new(cfg: AdaptiveConfig) -> Self {
        AdaptiveK {
            tracks: vec![Track::default()],
            plain_ms: None,
            verify_ms: vec![None; cfg.max_k],
            confidence: None,
            plain_streak: 0,
            confidence_seen: 0,
            typical_len: None,
            plan_ms_per_token: None,
            cfg,
        }
    }

    /// The settings.
    pub fn config(&self) -> &AdaptiveConfig {
        &self.cfg
    }

    fn track_mut(&mut self, source: usize) -> &mut Track {
        if self.tracks.len() <= source {
            self.tracks.resize_with(source + 1, Track::default);
        }
        &mut self.tracks[source]
    }

    /// Loads a calibration of proposer 0: `verify_ms[n - 1]` for forwards of `n = 1..` tokens,
    /// and the draft cost per token.
    pub fn set_costs(&mut self, verify_ms: &[f64], draft_ms_per_token: f64) {
        self.set_verify_costs(verify_ms);
        let plain = self.plain_ms;
        self.track_mut(0).token_ms = Some(Scaled {
            ms: draft_ms_per_token,
            plain,
        });
    }

    /// Loads the target's verification curve: `verify_ms[n - 1]` for forwards of `n = 1..` tokens.
    pub fn set_verify_costs(&mut self, verify_ms: &[f64]) {
        let Some((&plain, rest)) = verify_ms.split_first() else {
            return;
        };
        self.plain_ms = Some(plain);
        for (slot, &v) in self.verify_ms.iter_mut().zip(rest) {
            *slot = Some(Scaled {
                ms: v,
                plain: Some(plain),
            });
        }
    }

    /// Loads a calibration of proposer `source`: its time per drafted token and per context token
    /// caught up on.
    pub fn set_source_costs(&mut self, source: usize, token_ms: f64, catch_up_ms: f64) {
        let plain = self.plain_ms;
        let t = self.track_mut(source);
        t.token_ms = Some(Scaled {
            ms: token_ms,
            plain,
        });
        t.catch_up_ms = Some(catch_up_ms);
    }

    /// The acceptance assumed for a proposer not observed yet.
    fn prior(&self) -> f64 {
        self.confidence
            .unwrap_or(self.cfg.prior_acceptance)
            .clamp(0.0, 1.0)
    }

    /// Current acceptance estimates of proposer 0 per draft position (conditional on the earlier
    /// ones).
    pub fn acceptance(&self) -> Vec<f64> {
        self.acceptance_of(0)
    }

    /// Current acceptance estimates of proposer `source` per draft position: its observed
    /// acceptance, scaled by the target's confidence now relative to when it was observed (text
    /// the target finds predictable is predictable for proposers too); before any observation,
    /// the target's confidence (or the configured prior).
    pub fn acceptance_of(&self, source: usize) -> Vec<f64> {
        (0..self.cfg.max_k)
            .map(|j| self.position_acceptance(source, j))
            .collect()
    }

    fn position_acceptance(&self, source: usize, j: usize) -> f64 {
        let prior = self.prior();
        let Some(t) = self.tracks.get(source) else {
            return prior;
        };
        match (t.accept.get(j), t.seen_confidence.get(j), self.confidence) {
            (Some(&a), Some(&seen), Some(now)) if seen > 1e-3 => (a * now / seen).clamp(0.0, 1.0),
            (Some(&a), _, _) => a,
            _ => prior,
        }
    }

    /// The target's running confidence (mean probability of its greedy token), once observed.
    pub fn confidence(&self) -> Option<f64> {
        self.confidence
    }

    /// Expected tokens emitted by a step drafting `k` with proposer 0.
    pub fn expected_tokens(&self, k: usize) -> f64 {
        self.expected_tokens_of(0, k)
    }

    /// Expected tokens emitted by a step drafting `k` with proposer `source`.
    pub fn expected_tokens_of(&self, source: usize, k: usize) -> f64 {
        let mut reach = 1.0;
        let mut e = 1.0;
        for j in 0..k {
            reach *= self.position_acceptance(source, j);
            e += reach;
        }
        e
    }

    /// Estimated time of a target forward of `n` tokens (`None` before any measurement): a
    /// measured multi-token cost is scaled to the current plain step cost (see `Scaled`), and
    /// never less than the estimate for fewer tokens. The estimates of different lengths come
    /// from different moments (the calibration's best of two at a one-token context, running
    /// averages of whichever lengths were used since), and without that floor they crossed: on a
    /// busy host a three-token verification read 59 ms against a 66 ms plain step, which made
    /// every short draft, the n-gram lookup's above all, look cheaper than plain decoding.
    pub fn verify_cost(&self, n: usize) -> Option<f64> {
        (1..=n)
            .filter_map(|m| self.measured_verify_cost(m))
            .reduce(f64::max)
    }

    /// [`verify_cost`](Self::verify_cost) from length `n`'s own estimate alone.
    fn measured_verify_cost(&self, n: usize) -> Option<f64> {
        if n == 0 {
            return None;
        }
        let plain = self.plain_ms;
        if n == 1 {
            if plain.is_some() {
                return plain;
            }
            // Not measured yet: a longer forward's cost is an upper bound.
            return self.verify_ms.iter().flatten().next().map(|v| v.ms);
        }
        let idx = n - 2;
        if let Some(Some(v)) = self.verify_ms.get(idx) {
            return Some(v.at(plain));
        }
        // Optimistic: the nearest smaller measured length, else the nearest larger one.
        let below = self.verify_ms[..idx.min(self.verify_ms.len())]
            .iter()
            .rev()
            .flatten()
            .next()
            .map(|v| v.at(plain));
        below.or(plain).or_else(|| {
            self.verify_ms
                .iter()
                .skip(idx)
                .flatten()
                .next()
                .map(|v| v.at(plain))
        })
    }

    /// Estimated time of a step drafting `k` with proposer 0 (`None` before any measurement).
    pub fn step_cost(&self, k: usize) -> Option<f64> {
        self.step_cost_of(0, k)
    }

    /// Estimated time of a step drafting `k` with proposer `source` (`None` before any
    /// measurement of the target); an unmeasured draft cost counts as free (optimism: it gets
    /// tried, and measured).
    pub fn step_cost_of(&self, source: usize, k: usize) -> Option<f64> {
        let verify = self.verify_cost(k + 1)?;
        let per_token = self
            .tracks
            .get(source)
            .and_then(|t| t.token_ms)
            .map_or(0.0, |c| c.at(self.plain_ms));
        Some(verify + per_token * k as f64)
    }

    /// Estimated one-off time for proposer `source` to catch up on `pending` context tokens.
    pub fn catch_up_cost(&self, source: usize, pending: usize) -> f64 {
        let extra = pending.saturating_sub(ROUTINE_CATCH_UP) as f64;
        let t = self.tracks.get(source);
        let per = t
            .and_then(|t| t.catch_up_ms)
            .or_else(|| t.and_then(|t| t.token_ms).map(|c| c.at(self.plain_ms)))
            .unwrap_or(0.0);
        extra * per
    }

    /// The draft length for the next step with proposer 0 alone, in `0..=max_k`.
    pub fn choose(&mut self) -> usize {
        let all = Candidate {
            source: 0,
            limit: self.cfg.max_k,
            pending: 0,
        };
        self.plan(&[all], usize::MAX).map_or(0, |(_, k)| k)
    }

    /// Chooses the proposer and draft length for the next step among `candidates`, with
    /// `remaining` tokens still expected (over which a catch-up is spread; the generator passes
    /// [`expected_left`](Self::expected_left)): `Some((source, k))` with `1 <= k <= limit`, or
    /// `None` for a plain decoding step.
    pub fn plan(&mut self, candidates: &[Candidate], remaining: usize) -> Option<(usize, usize)> {
        let usable = |c: &&Candidate| c.limit.min(self.cfg.max_k) > 0;
        let Some(plain) = self.verify_cost(1) else {
            // Nothing measured yet: a short draft measures both costs.
            return candidates
                .iter()
                .find(usable)
                .map(|c| (c.source, c.limit.min(self.cfg.max_k).min(2)));
        };
        let spread = remaining.max(1) as f64;
        let mut best: Option<(usize, usize)> = None;
        let mut best_ms = plain * (1.0 - 1e-9);
        for c in candidates.iter().filter(usable) {
            let catch_up =
                self.catch_up_cost(c.source, c.pending) * (1.0 + CATCH_UP_MARGIN) / spread;
            for k in 1..=c.limit.min(self.cfg.max_k) {
                let Some(t) = self.step_cost_of(c.source, k) else {
                    continue;
                };
                let ms = t / self.expected_tokens_of(c.source, k) + catch_up;
                if ms < best_ms {
                    best = Some((c.source, k));
                    best_ms = ms;
                }
            }
        }
        if best.is_some() {
            self.plain_streak = 0;
            self.plan_ms_per_token = Some(best_ms);
            return best;
        }
        self.plain_streak += 1;
        if self.plain_streak > self.cfg.probe_every {
            // Probe with the proposer whose catch-up is cheapest, if it costs less than a step.
            let probe = candidates
                .iter()
                .filter(usable)
                .map(|c| (c.source, self.catch_up_cost(c.source, c.pending)))
                .filter(|&(_, cost)| cost <= plain)
                .min_by(|a, b| a.1.total_cmp(&b.1));
            if let Some((source, _)) = probe {
                self.plain_streak = 0;
                return Some((source, 1));
            }
        }
        None
    }

    /// How far a draft by `source` planned at `k` tokens may run on, at most `limit`, while each
    /// token is confident ([`Extension`]): the longest length whose every token past `k` is
    /// worth its cost. Such a token, given that it and every earlier one were confident, is
    /// emitted with probability `c^(j + 1)` at position `j` (`c`: the observed acceptance of
    /// confident tokens) and costs one draft token and the verification's extra row; it is worth
    /// the last plan's time per emitted token. Returns `k` when nothing is measured yet.
    ///
    /// ```
    /// use specula_draft::{AdaptiveConfig, AdaptiveK, Candidate};
    /// let mut c = AdaptiveK::new(AdaptiveConfig { max_k: 6, ..AdaptiveConfig::default() });
    /// // Plain step 100 ms, each verified row 5 ms more, draft tokens 20 ms.
    /// c.set_costs(&[100.0, 105.0, 110.0, 115.0, 120.0, 125.0, 130.0], 20.0);
    /// let all = Candidate { source: 0, limit: 6, pending: 0 };
    /// let (_, k) = c.plan(&[all], 100).unwrap();
    /// assert!(c.extension(0, k, 6) >= k);
    /// ```
    pub fn extension(&self, source: usize, k: usize, limit: usize) -> usize {
        let limit = limit.min(self.cfg.max_k);
        let Some(value) = self.plan_ms_per_token else {
            return k;
        };
        let Some(t) = self.tracks.get(source) else {
            return k;
        };
        let Some(per_token) = t.token_ms.map(|c| c.at(self.plain_ms)) else {
            return k;
        };
        let c = t.confident_acceptance();
        let mut reach = c.powi(k as i32);
        let mut m = k;
        while m < limit {
            let (Some(now), Some(next)) = (self.verify_cost(m + 1), self.verify_cost(m + 2)) else {
                break;
            };
            reach *= c;
            if reach * value < per_token + (next - now) {
                break;
            }
            m += 1;
        }
        m
    }

    /// The extension a draft by `source` planned at `k` may take ([`extension`](Self::extension)),
    /// with the configured confidence.
    pub fn extension_for(&self, source: usize, k: usize, limit: usize) -> Extension {
        Extension {
            max: self.extension(source, k, limit),
            min_confidence: self.cfg.extend_confidence as f32,
        }
    }

    fn blend(old: Option<f64>, new: f64, w: f64) -> f64 {
        match old {
            Some(o) => o + w * (new - o),
            None => new,
        }
    }

    /// Records a speculative step of proposer 0: `drafted` tokens proposed (taking `draft_ms`),
    /// `accepted` of them accepted, verified by a forward of `drafted + 1` tokens taking
    /// `verify_ms`.
    pub fn observe_step(&mut self, drafted: usize, accepted: usize, draft_ms: f64, verify_ms: f64) {
        self.observe_step_with_catch_up(drafted, accepted, draft_ms, verify_ms, 0)
    }

    /// As [`observe_step`](Self::observe_step), for a proposal that first had to catch up on
    /// `catch_up` context tokens ([`Proposal::catch_up`](crate::Proposal::catch_up)): such a
    /// step's draft time is mostly one-off work (a prompt prefill, tokens skipped during plain
    /// steps), so it does not update the per-token draft cost once that is known.
    pub fn observe_step_with_catch_up(
        &mut self,
        drafted: usize,
        accepted: usize,
        draft_ms: f64,
        verify_ms: f64,
        catch_up: usize,
    ) {
        self.observe_source(0, drafted, accepted, draft_ms, verify_ms, catch_up)
    }

    /// As [`observe_step_with_catch_up`](Self::observe_step_with_catch_up), for proposer
    /// `source`. With the per-token cost known, a catch-up step measures the catch-up cost.
    pub fn observe_source(
        &mut self,
        source: usize,
        drafted: usize,
        accepted: usize,
        draft_ms: f64,
        verify_ms: f64,
        catch_up: usize,
    ) {
        self.observe(&StepRecord {
            source,
            planned: drafted,
            drafted,
            accepted,
            confident: 0,
            draft_ms,
            verify_ms,
            catch_up,
        })
    }

    /// Records a speculative step (see [`StepRecord`]): the per-position acceptance of its
    /// planned positions, the acceptance of its confident tokens, and its costs.
    pub fn observe(&mut self, r: &StepRecord) {
        let &StepRecord {
            source,
            planned,
            drafted,
            accepted,
            confident,
            draft_ms,
            verify_ms,
            catch_up,
        } = r;
        let w = self.cfg.decay;
        let prior = self.prior();
        let now = self.confidence.unwrap_or(prior);
        let max_k = self.cfg.max_k;
        let plain = self.plain_ms;
        let t = self.track_mut(source);
        if t.accept.is_empty() && drafted > 0 {
            t.accept = vec![prior; max_k];
            t.seen_confidence = vec![now; max_k];
            t.observed = vec![0; max_k];
        }
        for j in 0..drafted.min(planned).min(t.accept.len()) {
            if j > accepted {
                break; // never reached: an earlier position was rejected
            }
            let hit = if j < accepted { 1.0 } else { 0.0 };
            t.observed[j] += 1;
            let wj = w.max(1.0 / (t.observed[j] as f64 + PRIOR_OBSERVATIONS));
            t.accept[j] += wj * (hit - t.accept[j]);
            t.seen_confidence[j] += wj * (now - t.seen_confidence[j]);
        }
        for j in 0..confident.min(drafted) {
            if j > accepted {
                break;
            }
            let hit = if j < accepted { 1.0 } else { 0.0 };
            if t.confident_observed == 0 {
                t.confident_accept = CONFIDENT_PRIOR;
            }
            t.confident_observed += 1;
            let wj = w.max(1.0 / (t.confident_observed as f64 + PRIOR_OBSERVATIONS));
            t.confident_accept += wj * (hit - t.confident_accept);
        }
        let wc = w.max(0.2);
        if drafted > 0 {
            match t.token_ms {
                Some(per) if catch_up > 0 => {
                    // Only a long catch-up (a prefill) measures the cost per caught-up token: a
                    // few extra tokens ride along nearly free in a memory-bound forward.
                    if catch_up >= MEASURED_CATCH_UP {
                        let per = per.at(plain);
                        let rest = (draft_ms - per * drafted as f64).max(0.0) / catch_up as f64;
                        t.catch_up_ms = Some(Self::blend(t.catch_up_ms, rest, wc));
                    }
                }
                _ => {
                    // Without any measurement yet, a catch-up step is still the best guess,
                    // spread over every token it processed.
                    let per_token = draft_ms / (drafted + catch_up) as f64;
                    t.token_ms = Some(Scaled::blend(t.token_ms, per_token, plain, wc));
                }
            }
        }
        match drafted.checked_sub(1) {
            None => self.observe_plain(verify_ms),
            Some(idx) => {
                if let Some(slot) = self.verify_ms.get_mut(idx) {
                    *slot = Some(Scaled::blend(*slot, verify_ms, plain, wc));
                }
            }
        }
    }

    /// Records a plain decode step of `ms`.
    pub fn observe_plain(&mut self, ms: f64) {
        let w = self.cfg.decay.max(0.2);
        self.plain_ms = Some(Self::blend(self.plain_ms, ms, w));
    }

    /// Records the target's probability of its own greedy token at one position (the prior for
    /// proposers not observed yet).
    pub fn observe_confidence(&mut self, p: f64) {
        if p.is_finite() {
            let p = p.clamp(0.0, 1.0);
            self.confidence_seen += 1;
            let w = self.cfg.decay.max(1.0 / self.confidence_seen as f64);
            self.confidence = Some(Self::blend(self.confidence, p, w));
        }
    }

    /// Starts a new request: the target's confidence is re-learnt from this request's text (the
    /// previous request's text says little about this one's: a chat answer after a code
    /// completion), as a running mean of its first observations. Costs and the proposers'
    /// acceptance tracks are kept (the tracks are read relative to the confidence).
    pub fn begin_request(&mut self) {
        self.confidence_seen = 0;
    }

    /// Ends a request that produced `generated` tokens: its length updates the typical output
    /// length that [`expected_left`](Self::expected_left) predicts from.
    pub fn end_request(&mut self, generated: usize) {
        self.typical_len = Some(Self::blend(self.typical_len, generated as f64, 0.3));
    }

    /// How many more tokens a request that has produced `generated` tokens, and may produce
    /// `remaining` more, is expected to produce: the horizon a catch-up is spread over. Before any
    /// request has ended, `remaining`; after, the typical length still to go, or (past the typical
    /// length) as many again as so far, never more than `remaining`. Short answers (a translation
    /// that stops after 8 tokens) must not wake a draft model that would first read the prompt.
    pub fn expected_left(&self, generated: usize, remaining: usize) -> usize {
        match self.typical_len {
            None => remaining,
            Some(t) => {
                let left = (t - generated as f64).max(generated as f64).max(1.0);
                (left.round() as usize).clamp(1, remaining.max(1))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(base: f64, per_row: f64, n: usize) -> Vec<f64> {
        (0..n).map(|i| base + per_row * i as f64).collect()
    }

    #[test]
    fn expensive_verification_and_low_acceptance_mean_plain_decoding() {
        let mut c = AdaptiveK::new(AdaptiveConfig {
            max_k: 8,
            ..Default::default()
        });
        // CPU without batching gains: n rows cost n single forwards; the draft costs half.
        c.set_costs(&curve(100.0, 95.0, 9), 50.0);
        for _ in 0..40 {
            c.observe_step(4, 1, 200.0, 385.0);
        }
        assert_eq!(c.choose(), 0);
    }

    #[test]
    fn cheap_verification_and_high_acceptance_mean_long_drafts() {
        let mut c = AdaptiveK::new(AdaptiveConfig {
            max_k: 8,
            ..Default::default()
        });
        c.set_costs(&curve(100.0, 8.0, 9), 10.0);
        for _ in 0..60 {
            c.observe_step(8, 8, 80.0, 164.0);
        }
        assert_eq!(c.choose(), 8);
        // Acceptance collapsing after position 2 shortens the draft.
        for _ in 0..60 {
            c.observe_step(8, 2, 80.0, 164.0);
        }
        let k = c.choose();
        assert!(
            (2..=3).contains(&k),
            "k = {k}, acceptance {:?}",
            c.acceptance()
        );
    }

    #[test]
    fn a_free_proposer_with_some_acceptance_always_drafts() {
        let mut c = AdaptiveK::new(AdaptiveConfig {
            max_k: 4,
            ..Default::default()
        });
        c.set_costs(&curve(100.0, 15.0, 5), 0.0);
        for _ in 0..40 {
            c.observe_step(4, 1, 0.0, 145.0);
        }
        assert!(c.choose() >= 1);
    }

    #[test]
    fn probes_after_a_plain_streak() {
        let cfg = AdaptiveConfig {
            max_k: 4,
            probe_every: 3,
            ..Default::default()
        };
        let mut c = AdaptiveK::new(cfg);
        assert_eq!(c.choose(), 2, "the first step drafts, to measure");
        c.set_costs(&[100.0, 200.0, 300.0, 400.0, 500.0], 50.0);
        for _ in 0..20 {
            c.observe_step(2, 0, 100.0, 300.0);
        }
        // Plain is best; every 4th choice is a one-token probe.
        let picks: Vec<usize> = (0..8).map(|_| c.choose()).collect();
        assert_eq!(picks, vec![0, 0, 0, 1, 0, 0, 0, 1]);
    }

    #[test]
    fn unmeasured_lengths_borrow_the_nearest_smaller_measurement() {
        let mut c = AdaptiveK::new(AdaptiveConfig {
            max_k: 4,
            ..Default::default()
        });
        assert_eq!(c.verify_cost(1), None);
        c.observe_plain(100.0);
        c.observe_step(2, 1, 60.0, 300.0);
        assert!((c.verify_cost(1).unwrap_or(0.0) - 100.0).abs() < 1.0);
        assert_eq!(c.verify_cost(2), Some(100.0));
        assert_eq!(c.verify_cost(3), Some(300.0));
        assert_eq!(c.verify_cost(5), Some(300.0));
        assert_eq!(c.step_cost(2), Some(360.0));
    }

    #[test]
    fn catch_up_work_stays_out_of_the_per_token_draft_cost() {
        let mut c = AdaptiveK::new(AdaptiveConfig {
            max_k: 4,
            ..Default::default()
        });
        c.observe_plain(100.0);
        c.observe_step(4, 4, 40.0, 130.0); // 10 ms per drafted token
                                           // A 500-token catch-up inside the draft's next step must not make drafting look dearer.
        c.observe_step_with_catch_up(4, 4, 2040.0, 130.0, 500);
        assert_eq!(c.step_cost(4), Some(130.0 + 40.0));
        // With nothing measured yet, the catch-up step is spread over all the tokens it processed.
        let mut fresh = AdaptiveK::new(AdaptiveConfig {
            max_k: 4,
            ..Default::default()
        });
        fresh.observe_step_with_catch_up(2, 1, 1020.0, 130.0, 100);
        assert_eq!(fresh.step_cost(2), Some(130.0 + 2.0 * 10.0));
    }

    #[test]
    fn expected_tokens_follow_the_chain_rule() {
        let mut c = AdaptiveK::new(AdaptiveConfig {
            max_k: 3,
            prior_acceptance: 0.5,
            ..Default::default()
        });
        assert_eq!(c.expected_tokens(0), 1.0);
        assert!((c.expected_tokens(3) - (1.0 + 0.5 + 0.25 + 0.125)).abs() < 1e-12);
        c.observe_step(3, 3, 1.0, 1.0);
        assert!(c.acceptance().iter().all(|&a| a > 0.5));
    }

    /// One step of proposer 0 planned at `planned`, `drafted` proposed, `accepted` accepted, the
    /// first `confident` of them confident; 20 ms per draft token, verification 100 ms plus 5 per
    /// drafted token.
    fn step(planned: usize, drafted: usize, accepted: usize, confident: usize) -> StepRecord {
        costed(planned, drafted, accepted, confident, 20.0, 5.0)
    }

    /// As [`step`], with `token_ms` per draft token and `row_ms` per verified row past the first.
    fn costed(
        planned: usize,
        drafted: usize,
        accepted: usize,
        confident: usize,
        token_ms: f64,
        row_ms: f64,
    ) -> StepRecord {
        StepRecord {
            source: 0,
            planned,
            drafted,
            accepted,
            confident,
            draft_ms: token_ms * drafted as f64,
            verify_ms: 100.0 + row_ms * drafted as f64,
            catch_up: 0,
        }
    }

    #[test]
    fn confident_drafts_run_on_while_their_tokens_pay() {
        let mut c = AdaptiveK::new(AdaptiveConfig {
            max_k: 6,
            ..Default::default()
        });
        // Plain step 100 ms, 5 ms per verified row, 20 ms per draft token.
        c.set_costs(&curve(100.0, 5.0, 7), 20.0);
        let all = [Candidate {
            source: 0,
            limit: 6,
            pending: 0,
        }];
        assert_eq!(c.extension(0, 2, 6), 2, "nothing planned yet: no extension");
        // Middling acceptance per position: the plan stays short.
        for _ in 0..30 {
            c.observe(&step(2, 2, 1, 0));
        }
        let (_, k) = c.plan(&all, 100).unwrap();
        assert!(k <= 3, "k = {k}");
        // Confident tokens are always accepted: a confident draft may run to the limit.
        for _ in 0..10 {
            c.observe(&step(k, k, k, k));
        }
        assert_eq!(c.extension(0, k, 6), 6);
        assert_eq!(c.extension(0, k, 4), 4, "never past the caller's limit");
        // The extension's tokens stay out of the per-position estimates.
        let before = c.acceptance();
        for _ in 0..10 {
            c.observe(&step(k, 6, 6, 6));
        }
        assert_eq!(c.acceptance()[k..], before[k..]);
        // Confident tokens that keep failing end the extensions.
        for _ in 0..10 {
            c.observe(&step(k, 6, 0, 6));
        }
        assert_eq!(c.extension(0, k, 6), k);
    }

    #[test]
    fn an_extension_stops_where_verification_gets_dear() {
        let mut c = AdaptiveK::new(AdaptiveConfig {
            max_k: 6,
            ..Default::default()
        });
        // Up to four verified rows cost little, a fifth costs a plain step more.
        c.set_costs(&[100.0, 105.0, 110.0, 115.0, 215.0, 220.0, 225.0], 20.0);
        // The planned positions are accepted half the time, confident tokens always.
        for _ in 0..20 {
            c.observe(&StepRecord {
                verify_ms: 105.0,
                ..step(1, 1, 0, 0)
            });
            c.observe(&StepRecord {
                verify_ms: 105.0,
                ..step(1, 1, 1, 1)
            });
        }
        let all = [Candidate {
            source: 0,
            limit: 6,
            pending: 0,
        }];
        let (_, k) = c.plan(&all, 100).expect("drafting pays");
        assert!(k < 3, "k = {k}");
        // Drafts of up to three tokens verify cheaply enough for a confident token; the jump to
        // five rows does not pay.
        assert_eq!(c.extension(0, k, 6), 3);
    }

    fn draft(source: usize, pending: usize) -> Candidate {
        Candidate {
            source,
            limit: 4,
            pending,
        }
    }

    #[test]
    fn a_catch_up_that_cannot_pay_for_itself_means_plain_decoding() {
        let mut c = AdaptiveK::new(AdaptiveConfig {
            max_k: 4,
            ..Default::default()
        });
        c.set_verify_costs(&curve(100.0, 10.0, 5));
        c.set_source_costs(0, 20.0, 5.0);
        for _ in 0..30 {
            c.observe_confidence(0.95);
        }
        // A 1000-token prompt to prefill (5 s) with 10 tokens left: not worth it.
        assert_eq!(c.plan(&[draft(0, 1000)], 10), None);
        // With 10,000 tokens to go it is; and once caught up, drafting is clearly better.
        assert!(matches!(c.plan(&[draft(0, 1000)], 10_000), Some((0, k)) if k >= 2));
        assert!(matches!(c.plan(&[draft(0, 1)], 10), Some((0, k)) if k >= 2));
    }

    #[test]
    fn costs_measured_on_a_long_context_follow_the_plain_step_back_down() {
        let mut c = AdaptiveK::new(AdaptiveConfig {
            max_k: 4,
            ..Default::default()
        });
        c.set_verify_costs(&curve(100.0, 20.0, 5));
        c.set_source_costs(0, 40.0, 10.0);
        // A long prompt: every forward and draft token costs three times as much.
        for _ in 0..30 {
            c.observe_plain(300.0);
        }
        for _ in 0..30 {
            c.observe_plain(300.0);
            c.observe_source(0, 3, 0, 360.0, 480.0, 0);
        }
        assert!((c.verify_cost(4).unwrap_or(0.0) - 480.0).abs() < 1.0);
        assert!((c.step_cost_of(0, 3).unwrap_or(0.0) - 840.0).abs() < 2.0);
        // Back on a short prompt, only plain steps are measured; the multi-token and draft costs
        // scale back with them instead of staying at their long-context values.
        for _ in 0..30 {
            c.observe_plain(100.0);
        }
        assert!((c.verify_cost(4).unwrap_or(0.0) - 160.0).abs() < 1.0);
        assert!((c.step_cost_of(0, 3).unwrap_or(0.0) - 280.0).abs() < 2.0);
        assert!((c.verify_cost(1).unwrap_or(0.0) - 100.0).abs() < 1.0);
    }

    #[test]
    fn each_request_relearns_the_confidence_from_its_own_text() {
        let mut c = AdaptiveK::new(AdaptiveConfig::default());
        for _ in 0..100 {
            c.observe_confidence(0.3);
        }
        // Within a request one confident token barely moves the estimate...
        c.observe_confidence(0.9);
        assert!(c.confidence().unwrap_or(0.0) < 0.4);
        // ...but a new request starts from its own first observations.
        c.begin_request();
        c.observe_confidence(0.9);
        assert!((c.confidence().unwrap_or(0.0) - 0.9).abs() < 1e-9);
        c.observe_confidence(0.7);
        assert!((c.confidence().unwrap_or(0.0) - 0.8).abs() < 1e-9);
    }

    #[test]
    fn the_catch_up_horizon_follows_the_typical_output_length() {
        let mut c = AdaptiveK::new(AdaptiveConfig::default());
        assert_eq!(c.expected_left(0, 96), 96);
        for _ in 0..20 {
            c.end_request(8);
        }
        assert_eq!(c.expected_left(0, 96), 8);
        assert_eq!(c.expected_left(6, 90), 6);
        assert_eq!(c.expected_left(40, 56), 40);
        assert_eq!(c.expected_left(0, 3), 3);
        // With 8-token answers, a 100-token prompt to catch up on keeps the draft asleep even
        // though it would pay over the 96 tokens the request may still produce.
        c.set_verify_costs(&curve(100.0, 10.0, 5));
        c.set_source_costs(0, 20.0, 5.0);
        for _ in 0..30 {
            c.observe_confidence(0.95);
        }
        let draft = Candidate {
            source: 0,
            limit: 4,
            pending: 100,
        };
        assert!(c.plan(&[draft], 96).is_some());
        assert_eq!(c.plan(&[draft], c.expected_left(0, 96)), None);
    }

    #[test]
    fn only_long_catch_ups_measure_the_catch_up_cost() {
        let mut c = AdaptiveK::new(AdaptiveConfig {
            max_k: 4,
            ..Default::default()
        });
        c.set_source_costs(0, 50.0, 15.0);
        // Three extra tokens cost next to nothing in one forward: not a prefill measurement.
        for _ in 0..20 {
            c.observe_source(0, 2, 2, 101.0, 150.0, 3);
        }
        assert_eq!(c.catch_up_cost(0, 102), 100.0 * 15.0);
        // A 200-token catch-up taking 2.1 s (100 ms of drafting) is one.
        c.observe_source(0, 2, 2, 2100.0, 150.0, 200);
        let per = c.catch_up_cost(0, 102) / 100.0;
        assert!((per - (15.0 + 0.2 * (10.0 - 15.0))).abs() < 1e-9, "{per}");
    }

    #[test]
    fn unobserved_proposers_follow_the_target_confidence() {
        let mut c = AdaptiveK::new(AdaptiveConfig {
            max_k: 4,
            ..Default::default()
        });
        // A draft costing 40 % of a target step, verification 15 % per extra row.
        c.set_verify_costs(&curve(100.0, 15.0, 5));
        c.set_source_costs(0, 40.0, 5.0);
        for _ in 0..40 {
            c.observe_confidence(0.95);
        }
        assert!(
            c.plan(&[draft(0, 1)], 100).is_some(),
            "predictable text: draft"
        );
        for _ in 0..40 {
            c.observe_confidence(0.4);
        }
        assert_eq!(
            c.plan(&[draft(0, 1)], 100),
            None,
            "unpredictable text: plain"
        );
    }

    #[test]
    fn observed_acceptance_scales_with_the_target_confidence() {
        let mut c = AdaptiveK::new(AdaptiveConfig {
            max_k: 2,
            decay: 0.5,
            ..Default::default()
        });
        for _ in 0..40 {
            c.observe_confidence(0.8);
            c.observe_source(1, 2, 1, 10.0, 100.0, 0);
        }
        let a = c.acceptance_of(1);
        assert!((a[0] - 1.0).abs() < 1e-6 && a[1] < 1e-6, "{a:?}");
        for _ in 0..60 {
            c.observe_confidence(0.4);
        }
        let a = c.acceptance_of(1);
        assert!(
            (a[0] - 0.5).abs() < 1e-3,
            "halved with the confidence: {a:?}"
        );
        // Proposer 0 was never observed: the confidence itself.
        assert!((c.acceptance_of(0)[0] - 0.4).abs() < 1e-3);
    }

    #[test]
    fn the_proposer_with_the_best_expected_rate_wins() {
        let mut c = AdaptiveK::new(AdaptiveConfig {
            max_k: 4,
            ..Default::default()
        });
        c.set_verify_costs(&curve(100.0, 10.0, 5));
        c.set_source_costs(0, 0.0, 0.0); // a free lookup
        c.set_source_costs(1, 30.0, 5.0); // a draft model
        for _ in 0..40 {
            c.observe_source(0, 4, 0, 0.0, 150.0, 0); // the lookup is always wrong
            c.observe_source(1, 4, 4, 120.0, 150.0, 0); // the draft always right
        }
        let lookup = Candidate {
            source: 0,
            limit: 3,
            pending: 0,
        };
        assert!(matches!(c.plan(&[lookup, draft(1, 1)], 100), Some((1, _))));
        for _ in 0..60 {
            c.observe_source(0, 4, 4, 0.0, 150.0, 0);
        }
        assert!(matches!(c.plan(&[lookup, draft(1, 1)], 100), Some((0, 3))));
        // An empty lookup (no match) is never chosen.
        let none = Candidate { limit: 0, ..lookup };
        assert!(matches!(c.plan(&[none, draft(1, 1)], 100), Some((1, _))));
    }

    #[test]
    fn a_proposer_that_keeps_failing_loses_its_prior_within_a_few_steps() {
        let mut c = AdaptiveK::new(AdaptiveConfig::default());
        c.set_verify_costs(&curve(100.0, 10.0, 7));
        for _ in 0..20 {
            c.observe_confidence(0.97);
        }
        // Unobserved: the target's confidence.
        assert!((c.acceptance_of(1)[0] - 0.97).abs() < 1e-9);
        // Three first-position rejections: a running mean with the prior worth two
        // observations (0.97 * 2 / 5), not three small steps of the decay (0.97 * 0.9^3 = 0.71).
        for _ in 0..3 {
            c.observe_source(1, 4, 0, 0.0, 110.0, 0);
        }
        let a = c.acceptance_of(1);
        assert!((a[0] - 0.97 * 2.0 / 5.0).abs() < 1e-9, "{a:?}");
        // Positions never reached keep the prior.
        assert!((a[1] - 0.97).abs() < 1e-9, "{a:?}");
        // Later observations fall back to the decay's weight (0.1 from the eighth on).
        for _ in 0..20 {
            c.observe_source(1, 1, 1, 0.0, 110.0, 0);
        }
        let after = c.acceptance_of(1)[0];
        assert!(after > 0.8 && after < 1.0, "{after}");
    }

    #[test]
    fn a_longer_verification_never_reads_cheaper_than_a_shorter_one() {
        let mut c = AdaptiveK::new(AdaptiveConfig::default());
        // Estimates from different moments that cross: three tokens below one.
        c.set_verify_costs(&[66.0, 70.0, 59.0, 75.0]);
        assert_eq!(c.verify_cost(1), Some(66.0));
        assert_eq!(c.verify_cost(2), Some(70.0));
        assert_eq!(c.verify_cost(3), Some(70.0));
        assert_eq!(c.verify_cost(4), Some(75.0));
        // So a free two-token draft (a three-token forward) is priced at 70 ms, not 59.
        assert_eq!(c.step_cost_of(0, 2), Some(70.0));
    }
}
