//! Sampling parameters and the logits-processing pipeline.
//!
//! The pipeline is the single definition of "the distribution a token is drawn from": repetition
//! penalty, then temperature, then top-k, top-p and min-p filtering, then renormalisation.
//! Speculative decoding computes the target's `p` and the draft's `q` through this same code, so the
//! acceptance test always sees the distributions that plain sampling would use.

use crate::{CoreError, Result, Rng, TokenId};
use serde::{Deserialize, Serialize};

/// How the next token is chosen from the model's logits.
///
/// `temperature == 0` means greedy decoding (argmax after the repetition penalty); the filters are
/// then irrelevant. The defaults are greedy with every filter off.
///
/// ```
/// use specula_core::SamplingParams;
/// let p = SamplingParams { temperature: 0.7, top_p: 0.9, seed: 42, ..Default::default() };
/// p.validate().unwrap();
/// assert!(!p.is_greedy());
/// assert!(SamplingParams { top_p: 1.5, ..p }.validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// Softmax temperature; `0` selects greedy decoding. Must be finite and `>= 0`.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; `0` disables the filter.
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability mass reaches `top_p`; in `(0, 1]`, `1` disables.
    pub top_p: f32,
    /// Drop tokens whose probability is below `min_p` times the most likely one's; in `[0, 1)`, `0` disables.
    pub min_p: f32,
    /// Penalty applied to the logits of tokens seen in the last `repeat_last_n` tokens (CTRL-style:
    /// positive logits are divided by it, negative ones multiplied); `> 0`, `1` disables.
    pub repetition_penalty: f32,
    /// Window of recent tokens (prompt included) the repetition penalty looks at; `0` means all.
    pub repeat_last_n: usize,
    /// Seed of the sampling random number generator.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding with no penalty.
    pub fn greedy() -> Self {
        Self::default()
    }

    /// Sampling at `temperature` with the given seed and no filters.
    pub fn with_temperature(temperature: f32, seed: u64) -> Self {
        SamplingParams {
            temperature,
            seed,
            ..Self::default()
        }
    }

    /// True when tokens are chosen by argmax.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Checks every field's range; the error names the field and the allowed range.
    pub fn validate(&self) -> Result<()> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(CoreError::invalid(
                "temperature",
                format!(
                    "{} is not allowed; use 0 for greedy or a finite value > 0",
                    self.temperature
                ),
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(CoreError::invalid(
                "top_p",
                format!("{} is outside (0, 1]; use 1 to disable", self.top_p),
            ));
        }
        if !(self.min_p >= 0.0 && self.min_p < 1.0) {
            return Err(CoreError::invalid(
                "min_p",
                format!("{} is outside [0, 1); use 0 to disable", self.min_p),
            ));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err(CoreError::invalid(
                "repetition_penalty",
                format!(
                    "{} must be finite and > 0; use 1 to disable",
                    self.repetition_penalty
                ),
            ));
        }
        Ok(())
    }
}

/// A probability distribution over the vocabulary (dense, sums to 1 up to rounding).
#[derive(Debug, Clone, PartialEq)]
pub struct Distribution {
    probs: Vec<f32>,
}

impl Distribution {
    /// Wraps probabilities; they are normalised here. Returns an error if they are all zero,
    /// negative or not finite.
    pub fn from_probs(mut probs: Vec<f32>) -> Result<Self> {
        let total: f64 = probs.iter().map(|&p| p as f64).sum();
        if probs.iter().any(|p| !p.is_finite() || *p < 0.0) || total <= 0.0 {
            return Err(CoreError::invalid(
                "probs",
                "probabilities must be finite, non-negative and not all zero",
            ));
        }
        for p in probs.iter_mut() {
            *p = (*p as f64 / total) as f32;
        }
        Ok(Distribution { probs })
    }

    /// A distribution with all its mass on `token`.
    pub fn one_hot(token: TokenId, vocab: usize) -> Self {
        let mut probs = vec![0.0; vocab];
        if let Some(p) = probs.get_mut(token as usize) {
            *p = 1.0;
        }
        Distribution { probs }
    }

    /// Probability of `token` (0 outside the vocabulary).
    pub fn prob(&self, token: TokenId) -> f32 {
        self.probs.get(token as usize).copied().unwrap_or(0.0)
    }

    /// All probabilities, indexed by token id.
    pub fn probs(&self) -> &[f32] {
        &self.probs
    }

    /// The most likely token (lowest id on ties).
    pub fn argmax(&self) -> TokenId {
        argmax(&self.probs)
    }

    /// Draws a token by inverse-CDF sampling with one uniform draw from `rng`.
    pub fn sample(&self, rng: &mut Rng) -> TokenId {
        let u = rng.next_f64();
        let total: f64 = self.probs.iter().map(|&p| p as f64).sum();
        let mut target = u * total;
        let mut last_nonzero = 0;
        for (i, &p) in self.probs.iter().enumerate() {
            if p > 0.0 {
                last_nonzero = i;
                target -= p as f64;
                if target < 0.0 {
                    return i as TokenId;
                }
            }
        }
        last_nonzero as TokenId
    }
}

/// Index of the largest value, lowest index on ties; NaN never wins.
pub fn argmax(values: &[f32]) -> TokenId {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in values.iter().enumerate() {
        if v > best_v {
            best_v = v;
            best = i;
        }
    }
    best as TokenId
}

/// Turns logits into the next token (or into the exact distribution it would be drawn from).
///
/// ```
/// use specula_core::{LogitsProcessor, SamplingParams};
/// let mut greedy = LogitsProcessor::new(SamplingParams::greedy()).unwrap();
/// assert_eq!(greedy.sample(&[0.1, 2.0, -1.0], &[]), 1);
///
/// let params = SamplingParams { temperature: 1.0, top_k: 1, ..Default::default() };
/// let sampler = LogitsProcessor::new(params).unwrap();
/// let d = sampler.distribution(&[0.1, 2.0, -1.0], &[]);
/// assert_eq!(d.prob(1), 1.0);
/// ```
#[derive(Debug, Clone)]
pub struct LogitsProcessor {
    params: SamplingParams,
    rng: Rng,
}

impl LogitsProcessor {
    /// Validates `params` and seeds the generator with `params.seed`.
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        let rng = Rng::new(params.seed);
        Ok(LogitsProcessor { params, rng })
    }

    /// The parameters in use.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The random generator (speculative acceptance draws its uniforms from the same stream).
    pub fn rng_mut(&mut self) -> &mut Rng {
        &mut self.rng
    }

    /// Applies the repetition penalty in place; `history` is the whole context so far.
    pub fn apply_penalty(&self, logits: &mut [f32], history: &[TokenId]) {
        let penalty = self.params.repetition_penalty;
        if penalty == 1.0 || history.is_empty() {
            return;
        }
        let start = match self.params.repeat_last_n {
            0 => 0,
            n => history.len().saturating_sub(n),
        };
        // Each distinct token in the window is penalised once; dedup the (short) window rather
        // than allocating a vocabulary-sized mask on every token.
        let mut window = history[start..].to_vec();
        window.sort_unstable();
        window.dedup();
        for t in window {
            if let Some(l) = logits.get_mut(t as usize) {
                *l = if *l >= 0.0 {
                    *l / penalty
                } else {
                    *l * penalty
                };
            }
        }
    }

    /// The greedy choice: argmax of the penalised logits.
    pub fn greedy_token(&self, logits: &[f32], history: &[TokenId]) -> TokenId {
        if self.params.repetition_penalty == 1.0 {
            return argmax(logits);
        }
        let mut l = logits.to_vec();
        self.apply_penalty(&mut l, history);
        argmax(&l)
    }

    /// The exact distribution the next token is drawn from. For greedy parameters this is the
    /// one-hot distribution on [`Self::greedy_token`].
    pub fn distribution(&self, logits: &[f32], history: &[TokenId]) -> Distribution {
        let vocab = logits.len();
        if self.params.is_greedy() {
            return Distribution::one_hot(self.greedy_token(logits, history), vocab);
        }
        let mut l = logits.to_vec();
        self.apply_penalty(&mut l, history);
        let inv_t = 1.0 / self.params.temperature as f64;
        for v in l.iter_mut() {
            if v.is_nan() {
                *v = f32::NEG_INFINITY;
            }
        }

        // Candidate set, in descending logit order when a rank-based filter needs it.
        let p = &self.params;
        let mut cand: Vec<u32> = (0..vocab as u32).collect();
        let by_logit_desc = |a: &u32, b: &u32| {
            l[*b as usize]
                .total_cmp(&l[*a as usize])
                .then_with(|| a.cmp(b))
        };
        if p.top_k > 0 && p.top_k < vocab {
            cand.select_nth_unstable_by(p.top_k - 1, by_logit_desc);
            cand.truncate(p.top_k);
        }
        let sorted = p.top_p < 1.0 || (p.top_k > 0 && p.top_k < vocab);
        if sorted {
            cand.sort_unstable_by(by_logit_desc);
        }

        let max_l = cand
            .iter()
            .map(|&i| l[i as usize])
            .fold(f32::NEG_INFINITY, f32::max) as f64;
        let mut weights: Vec<f64> = cand
            .iter()
            .map(|&i| ((l[i as usize] as f64 - max_l) * inv_t).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        for w in weights.iter_mut() {
            *w /= total;
        }

        let mut keep = cand.len();
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            for (j, w) in weights.iter().enumerate() {
                acc += w;
                if acc >= p.top_p as f64 {
                    keep = j + 1;
                    break;
                }
            }
        }
        let mut probs = vec![0.0f32; vocab];
        let max_w = weights.iter().take(keep).fold(0.0f64, |a, &b| a.max(b));
        let floor = p.min_p as f64 * max_w;
        let kept_total: f64 = weights[..keep].iter().filter(|&&w| w >= floor).sum();
        for (j, &w) in weights.iter().enumerate().take(keep) {
            if w >= floor {
                probs[cand[j] as usize] = (w / kept_total) as f32;
            }
        }
        Distribution { probs }
    }

    /// Chooses the next token: argmax when greedy, otherwise a draw from [`Self::distribution`].
    pub fn sample(&mut self, logits: &[f32], history: &[TokenId]) -> TokenId {
        if self.params.is_greedy() {
            return self.greedy_token(logits, history);
        }
        let d = self.distribution(logits, history);
        d.sample(&mut self.rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc(p: SamplingParams) -> LogitsProcessor {
        LogitsProcessor::new(p).unwrap()
    }

    #[test]
    fn validation_names_the_field() {
        let bad = [
            SamplingParams {
                temperature: -1.0,
                ..Default::default()
            },
            SamplingParams {
                temperature: f32::NAN,
                ..Default::default()
            },
            SamplingParams {
                top_p: 0.0,
                ..Default::default()
            },
            SamplingParams {
                min_p: 1.0,
                ..Default::default()
            },
            SamplingParams {
                repetition_penalty: 0.0,
                ..Default::default()
            },
        ];
        let names = [
            "temperature",
            "temperature",
            "top_p",
            "min_p",
            "repetition_penalty",
        ];
        for (p, name) in bad.iter().zip(names) {
            let err = LogitsProcessor::new(p.clone()).unwrap_err();
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    #[test]
    fn greedy_is_argmax_lowest_index_on_ties() {
        let p = proc(SamplingParams::greedy());
        assert_eq!(p.greedy_token(&[1.0, 3.0, 3.0, 0.0], &[]), 1);
        assert_eq!(
            p.distribution(&[1.0, 3.0, 3.0], &[]).probs(),
            &[0.0, 1.0, 0.0]
        );
    }

    #[test]
    fn softmax_with_temperature() {
        let p = proc(SamplingParams::with_temperature(2.0, 0));
        let d = p.distribution(&[0.0, 2.0_f32.ln() * 2.0], &[]);
        assert!((d.prob(0) - 1.0 / 3.0).abs() < 1e-6);
        assert!((d.prob(1) - 2.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn top_k_top_p_min_p() {
        let logits = [4.0f32.ln(), 3.0f32.ln(), 2.0f32.ln(), 1.0f32.ln()]; // probs .4 .3 .2 .1
        let d = proc(SamplingParams {
            temperature: 1.0,
            top_k: 2,
            ..Default::default()
        })
        .distribution(&logits, &[]);
        assert!((d.prob(0) - 4.0 / 7.0).abs() < 1e-6 && d.prob(2) == 0.0);
        let d = proc(SamplingParams {
            temperature: 1.0,
            top_p: 0.75,
            ..Default::default()
        })
        .distribution(&logits, &[]);
        assert!((d.prob(2) - 0.2 / 0.9).abs() < 1e-6 && d.prob(3) == 0.0);
        let d = proc(SamplingParams {
            temperature: 1.0,
            min_p: 0.6,
            ..Default::default()
        })
        .distribution(&logits, &[]);
        assert!((d.prob(1) - 0.3 / 0.7).abs() < 1e-6 && d.prob(2) == 0.0);
    }

    #[test]
    fn repetition_penalty_changes_greedy_choice() {
        let p = proc(SamplingParams {
            repetition_penalty: 2.0,
            ..Default::default()
        });
        assert_eq!(p.greedy_token(&[1.0, 1.5, -1.0], &[1]), 0);
        let mut l = [1.0, 1.5, -1.0];
        p.apply_penalty(&mut l, &[2, 2, 1]);
        assert_eq!(l, [1.0, 0.75, -2.0]);
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_follows_the_distribution() {
        let logits = [0.0f32, 1.0, 2.0];
        let params = SamplingParams::with_temperature(1.0, 9);
        let mut a = proc(params.clone());
        let mut b = proc(params);
        let xs: Vec<_> = (0..50).map(|_| a.sample(&logits, &[])).collect();
        let ys: Vec<_> = (0..50).map(|_| b.sample(&logits, &[])).collect();
        assert_eq!(xs, ys);
        let d = a.distribution(&logits, &[]);
        let n = 40_000;
        let mut counts = [0usize; 3];
        for _ in 0..n {
            counts[a.sample(&logits, &[]) as usize] += 1;
        }
        for (t, &count) in counts.iter().enumerate() {
            let f = count as f32 / n as f32;
            let p = d.prob(t as u32);
            assert!((f - p).abs() < 0.01, "{t}: {f} vs {p}");
        }
    }

    #[test]
    fn distribution_from_probs_rejects_garbage() {
        assert!(Distribution::from_probs(vec![0.0, 0.0]).is_err());
        assert!(Distribution::from_probs(vec![f32::NAN, 1.0]).is_err());
        let d = Distribution::from_probs(vec![1.0, 3.0]).unwrap();
        assert_eq!(d.probs(), &[0.25, 0.75]);
    }
}
