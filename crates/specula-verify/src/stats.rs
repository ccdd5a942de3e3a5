//! Acceptance statistics of speculative decoding.

use serde::{Deserialize, Serialize};

/// Counts and timings of speculative steps, per request or cumulative.
///
/// "Mean accepted length" counts the target's own token of each step too (as Spec-Bench does):
/// a step that accepts `a` drafted tokens emits `a + 1` tokens.
///
/// ```
/// use specula_verify::AcceptanceStats;
/// let mut s = AcceptanceStats::new(4);
/// s.record_step(4, 2);
/// s.record_step(4, 4);
/// assert_eq!(s.acceptance_rate(), 6.0 / 8.0);
/// assert_eq!(s.mean_accepted_length(), 4.0);
/// assert_eq!(s.position_acceptance(), vec![1.0, 1.0, 0.5, 0.5]);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AcceptanceStats {
    /// Target verification forwards.
    pub target_steps: usize,
    /// Drafted tokens.
    pub drafted: usize,
    /// Accepted drafted tokens.
    pub accepted: usize,
    /// Drafts that reached position `i` (index 0 = first drafted token).
    pub position_drafted: Vec<usize>,
    /// Drafted tokens accepted at position `i`.
    pub position_accepted: Vec<usize>,
    /// `accept_length_histogram[a]` = steps that accepted exactly `a` drafted tokens.
    pub accept_length_histogram: Vec<usize>,
    /// Time spent drafting, in milliseconds.
    pub draft_ms: f64,
    /// Time spent in target verification forwards.
    pub verify_ms: f64,
    /// Time spent computing distributions and acceptance.
    pub sampling_ms: f64,
    /// The same counts for each proposer of a composition (by name), when there are several.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_proposer: Vec<(String, AcceptanceStats)>,
}

impl AcceptanceStats {
    /// Empty statistics for drafts of up to `max_k` tokens.
    pub fn new(max_k: usize) -> Self {
        AcceptanceStats {
            position_drafted: vec![0; max_k],
            position_accepted: vec![0; max_k],
            accept_length_histogram: vec![0; max_k + 1],
            ..Default::default()
        }
    }

    fn grow(&mut self, k: usize) {
        if self.position_drafted.len() < k {
            self.position_drafted.resize(k, 0);
            self.position_accepted.resize(k, 0);
        }
        if self.accept_length_histogram.len() < k + 1 {
            self.accept_length_histogram.resize(k + 1, 0);
        }
    }

    /// Records one verification step that drafted `k` tokens and accepted `accepted` of them.
    pub fn record_step(&mut self, k: usize, accepted: usize) {
        self.grow(k);
        self.target_steps += 1;
        self.drafted += k;
        self.accepted += accepted;
        for i in 0..k {
            self.position_drafted[i] += 1;
            if i < accepted {
                self.position_accepted[i] += 1;
            }
        }
        self.accept_length_histogram[accepted] += 1;
    }

    /// Records a step as [`record_step`](Self::record_step) does, and also under `source`'s own
    /// counts in [`per_proposer`](Self::per_proposer).
    pub fn record_step_by(&mut self, source: &str, k: usize, accepted: usize) {
        self.record_step(k, accepted);
        self.proposer_mut(source).record_step(k, accepted);
    }

    fn proposer_mut(&mut self, source: &str) -> &mut AcceptanceStats {
        let idx = match self.per_proposer.iter().position(|(n, _)| n == source) {
            Some(i) => i,
            None => {
                self.per_proposer
                    .push((source.to_string(), AcceptanceStats::default()));
                self.per_proposer.len() - 1
            }
        };
        &mut self.per_proposer[idx].1
    }

    /// Accepted / drafted (0 when nothing was drafted).
    pub fn acceptance_rate(&self) -> f64 {
        ratio(self.accepted, self.drafted)
    }

    /// Tokens emitted per target step, the target's own token included.
    pub fn mean_accepted_length(&self) -> f64 {
        ratio(self.accepted + self.target_steps, self.target_steps)
    }

    /// Acceptance rate at each draft position (conditional on reaching it).
    pub fn position_acceptance(&self) -> Vec<f64> {
        self.position_drafted
            .iter()
            .zip(&self.position_accepted)
            .map(|(&d, &a)| ratio(a, d))
            .collect()
    }

    /// Adds another request's statistics.
    pub fn merge(&mut self, other: &AcceptanceStats) {
        self.grow(other.position_drafted.len());
        self.grow(other.accept_length_histogram.len().saturating_sub(1));
        self.target_steps += other.target_steps;
        self.drafted += other.drafted;
        self.accepted += other.accepted;
        for (a, b) in self
            .position_drafted
            .iter_mut()
            .zip(&other.position_drafted)
        {
            *a += b;
        }
        for (a, b) in self
            .position_accepted
            .iter_mut()
            .zip(&other.position_accepted)
        {
            *a += b;
        }
        for (a, b) in self
            .accept_length_histogram
            .iter_mut()
            .zip(&other.accept_length_histogram)
        {
            *a += b;
        }
        self.draft_ms += other.draft_ms;
        self.verify_ms += other.verify_ms;
        self.sampling_ms += other.sampling_ms;
        for (name, st) in &other.per_proposer {
            self.proposer_mut(name).merge(st);
        }
    }

    /// One human-readable paragraph.
    pub fn summary(&self) -> String {
        let pos: Vec<String> = self
            .position_acceptance()
            .iter()
            .map(|r| format!("{:.0}%", r * 100.0))
            .collect();
        format!(
            "{} target steps, {} drafted, {} accepted ({:.1}%), mean accepted length {:.2} tokens/step; per position [{}]; accepted-length histogram {:?}; time: draft {:.0} ms, verify {:.0} ms, sampling {:.0} ms",
            self.target_steps,
            self.drafted,
            self.accepted,
            self.acceptance_rate() * 100.0,
            self.mean_accepted_length(),
            pos.join(", "),
            self.accept_length_histogram,
            self.draft_ms,
            self.verify_ms,
            self.sampling_ms
        ) + &self
            .per_proposer
            .iter()
            .map(|(n, st)| {
                format!(
                    "; {n}: {} steps, {} drafted, {:.1}% accepted",
                    st.target_steps,
                    st.drafted,
                    st.acceptance_rate() * 100.0
                )
            })
            .collect::<String>()
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}
