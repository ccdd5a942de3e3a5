//! Choosing the draft length each step so that speculation is never slower than plain decoding.
//!
//! The expected number of tokens a step with `k` drafted tokens emits is
//! `E(k) = 1 + sum_{i=1..k} prod_{j<=i} a_j`, where `a_j` is the probability that drafted position
//! `j` is accepted given that every earlier one was (estimated online, exponentially weighted).
//! Its cost is `T(k) = draft(k) + verify(k + 1)`, with `verify(n)` the measured time of a target
//! forward of `n` tokens (`verify(1)` is a plain decode step) and `draft(k)` the measured draft
//! cost per token times `k`. [`AdaptiveK::choose`] returns the `k` in `0..=max_k` that maximises
//! `E(k) / T(k)`; `k = 0` is plain decoding, chosen when verification is expensive and acceptance
//! low. Costs not measured yet are assumed equal to the nearest smaller measured one (optimism, so
//! every length gets tried), and after `probe_every` plain steps in a row one short draft is tried
//! to refresh the acceptance estimates.
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

/// Settings of the adaptive draft length.
#[derive(Debug, Clone)]
pub struct AdaptiveConfig {
    /// Longest draft.
    pub max_k: usize,
    /// Weight of a new observation in the running estimates (0..1).
    pub decay: f64,
    /// Acceptance probability assumed before any observation, per position.
    pub prior_acceptance: f64,
    /// After this many plain steps in a row, draft once to re-measure acceptance.
    pub probe_every: usize,
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        AdaptiveConfig {
            max_k: 6,
            decay: 0.1,
            prior_acceptance: 0.6,
            probe_every: 64,
        }
    }
}

/// The draft-length controller (see the module docs).
#[derive(Debug, Clone)]
pub struct AdaptiveK {
    cfg: AdaptiveConfig,
    /// `accept[j]`: P(position j accepted | positions < j accepted).
    accept: Vec<f64>,
    /// `verify_ms[n - 1]`: running time of a target forward of n tokens, once measured.
    verify_ms: Vec<Option<f64>>,
    /// Running draft time per drafted token.
    draft_ms: Option<f64>,
    plain_streak: usize,
}

impl AdaptiveK {
    /// A controller with no measurements yet.
    pub fn new(cfg: AdaptiveConfig) -> Self {
        let max_k = cfg.max_k;
        AdaptiveK {
            accept: vec![cfg.prior_acceptance.clamp(0.0, 1.0); max_k],
            verify_ms: vec![None; max_k + 1],
            draft_ms: None,
            plain_streak: 0,
            cfg,
        }
    }

    /// The settings.
    pub fn config(&self) -> &AdaptiveConfig {
        &self.cfg
    }

    /// Loads a calibration: `verify_ms[n - 1]` for forwards of `n = 1..` tokens, and the draft
    /// cost per token.
    pub fn set_costs(&mut self, verify_ms: &[f64], draft_ms_per_token: f64) {
        for (slot, &v) in self.verify_ms.iter_mut().zip(verify_ms) {
            *slot = Some(v);
        }
        self.draft_ms = Some(draft_ms_per_token);
    }

    /// Current acceptance estimates per draft position (conditional on the earlier ones).
    pub fn acceptance(&self) -> &[f64] {
        &self.accept
    }

    /// Expected tokens emitted by a step drafting `k`.
    pub fn expected_tokens(&self, k: usize) -> f64 {
        let mut reach = 1.0;
        let mut e = 1.0;
        for a in self.accept.iter().take(k) {
            reach *= a;
            e += reach;
        }
        e
    }

    /// Estimated time of a target forward of `n` tokens (`None` before any measurement).
    pub fn verify_cost(&self, n: usize) -> Option<f64> {
        let idx = n.checked_sub(1)?;
        if let Some(Some(v)) = self.verify_ms.get(idx) {
            return Some(*v);
        }
        // Optimistic: the nearest smaller measured length, else the nearest larger one.
        let below = self.verify_ms[..idx.min(self.verify_ms.len())]
            .iter()
            .rev()
            .flatten()
            .next();
        below
            .or_else(|| self.verify_ms.iter().skip(idx).flatten().next())
            .copied()
    }

    /// Estimated time of a step drafting `k` (`None` before any measurement).
    pub fn step_cost(&self, k: usize) -> Option<f64> {
        let verify = self.verify_cost(k + 1)?;
        let draft = if k == 0 {
            0.0
        } else {
            self.draft_ms.unwrap_or(0.0) * k as f64
        };
        Some(verify + draft)
    }

    /// The draft length for the next step, in `0..=max_k`.
    pub fn choose(&mut self) -> usize {
        if self.cfg.max_k == 0 {
            return 0;
        }
        // Nothing measured yet: start with a short draft (it measures both costs).
        let best = if self.verify_cost(1).is_none() {
            self.cfg.max_k.min(2)
        } else {
            let mut best = (0, 0.0);
            for k in 0..=self.cfg.max_k {
                if let Some(t) = self.step_cost(k).filter(|t| *t > 0.0) {
                    let rate = self.expected_tokens(k) / t;
                    if rate > best.1 * (1.0 + 1e-9) {
                        best = (k, rate);
                    }
                }
            }
            best.0
        };
        if best == 0 {
            self.plain_streak += 1;
            if self.plain_streak > self.cfg.probe_every {
                self.plain_streak = 0;
                return 1;
            }
        } else {
            self.plain_streak = 0;
        }
        best
    }

    fn blend(old: Option<f64>, new: f64, w: f64) -> f64 {
        match old {
            Some(o) => o + w * (new - o),
            None => new,
        }
    }

    /// Records a speculative step: `drafted` tokens proposed (taking `draft_ms`), `accepted` of
    /// them accepted, verified by a forward of `drafted + 1` tokens taking `verify_ms`.
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
        let w = self.cfg.decay;
        for j in 0..drafted.min(self.accept.len()) {
            if j > accepted {
                break; // never reached: an earlier position was rejected
            }
            let hit = if j < accepted { 1.0 } else { 0.0 };
            self.accept[j] += w * (hit - self.accept[j]);
        }
        if let Some(slot) = self.verify_ms.get_mut(drafted) {
            *slot = Some(Self::blend(*slot, verify_ms, w.max(0.2)));
        }
        if drafted > 0 && (catch_up == 0 || self.draft_ms.is_none()) {
            // Without any measurement yet, a catch-up step is still the best guess, spread over
            // every token it processed.
            let per_token = draft_ms / (drafted + catch_up) as f64;
            self.draft_ms = Some(Self::blend(self.draft_ms, per_token, w.max(0.2)));
        }
    }

    /// Records a plain decode step of `ms`.
    pub fn observe_plain(&mut self, ms: f64) {
        let w = self.cfg.decay.max(0.2);
        self.verify_ms[0] = Some(Self::blend(self.verify_ms[0], ms, w));
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
        assert_eq!(c.verify_cost(1), Some(100.0));
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
}
