//! Verification of drafted tokens against the target model.
//!
//! One target forward over the last accepted token plus the `k` drafted tokens yields logits at
//! all `k + 1` positions; an acceptance rule then keeps exactly what the target would have
//! produced on its own:
//!
//! - greedy ([`accept_greedy`]): the longest drafted prefix equal to the target's own greedy
//!   choices, then the target's token at the first mismatch (or the bonus token after a fully
//!   accepted draft), so the output is token-identical to plain greedy decoding;
//! - sampling ([`accept_sampling`]): modified rejection sampling (accept `x` with probability
//!   `min(1, p(x) / q(x))`, on rejection draw from `norm(max(0, p - q))`, bonus from `p`), so every
//!   emitted token is distributed exactly as plain sampling from `p`.
//!
//! [`verify`] runs the target forward, applies the rule with the same [`LogitsProcessor`] that
//! plain decoding uses, and rolls the target's KV cache back to the accepted length.
//! [`AcceptanceStats`] accumulates the per-position acceptance statistics.
#![warn(missing_docs)]

mod stats;

pub use stats::AcceptanceStats;

use specula_core::{
    CausalLm, Distribution, LogitsProcessor, LogitsSelection, Result, Rng, TokenId,
};

/// Outcome of verifying one draft.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// How many drafted tokens were accepted (a prefix of the draft).
    pub accepted: usize,
    /// The token that follows them: the target's correction at the first rejected position, or
    /// the bonus token when the whole draft was accepted.
    pub next: TokenId,
}

/// Greedy acceptance. `target` holds the target's greedy choice at each of the `k + 1`
/// positions (position `i` conditioned on the context plus `drafted[..i]`).
///
/// ```
/// use specula_verify::{accept_greedy, Verdict};
/// assert_eq!(accept_greedy(&[5, 6, 9, 4], &[5, 6, 7]), Verdict { accepted: 2, next: 9 });
/// assert_eq!(accept_greedy(&[5, 6, 7, 4], &[5, 6, 7]), Verdict { accepted: 3, next: 4 });
/// ```
pub fn accept_greedy(target: &[TokenId], drafted: &[TokenId]) -> Verdict {
    let accepted = drafted
        .iter()
        .zip(target)
        .take_while(|(d, t)| d == t)
        .count();
    Verdict {
        accepted,
        next: target[accepted.min(target.len().saturating_sub(1))],
    }
}

/// Modified rejection sampling. `p` holds the target's distributions at the `k + 1` positions,
/// `q` the distributions the `k` drafted tokens were drawn from (one-hot for deterministic
/// proposers), both produced by the same [`LogitsProcessor`] settings.
///
/// Edge cases: `p(x) >= q(x)` always accepts; `q(x) = 0` (a proposer that drafted a token it
/// gave no mass) rejects; an all-zero residual (`p <= q` everywhere, only possible through
/// rounding when `p == q`) falls back to sampling from `p`.
pub fn accept_sampling(
    p: &[Distribution],
    q: &[Distribution],
    drafted: &[TokenId],
    rng: &mut Rng,
) -> Verdict {
    for (i, &x) in drafted.iter().enumerate() {
        let (pi, qi) = (&p[i], &q[i]);
        let (px, qx) = (pi.prob(x) as f64, qi.prob(x) as f64);
        let u = rng.next_f64();
        if qx > 0.0 && u * qx < px {
            continue;
        }
        let residual: Vec<f32> = pi
            .probs()
            .iter()
            .enumerate()
            .map(|(t, &pt)| (pt - qi.prob(t as TokenId)).max(0.0))
            .collect();
        let next = match Distribution::from_probs(residual) {
            Ok(r) => r.sample(rng),
            Err(_) => pi.sample(rng),
        };
        return Verdict { accepted: i, next };
    }
    let k = drafted.len();
    Verdict {
        accepted: k,
        next: p[k].sample(rng),
    }
}

/// The result of [`verify`]: the verdict and the time of the target forward.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verification {
    /// Accepted prefix length and the next token.
    pub verdict: Verdict,
    /// Wall time of the target forward (the rest of `verify` is acceptance and sampling).
    pub forward_time: std::time::Duration,
    /// The target's mean probability of its own most likely token over the positions it
    /// emitted from (`accepted + 1` rows): how predictable the text is, a signal for adaptive
    /// speculation. Computed only by [`verify_with_confidence`] (one softmax per row); `None`
    /// from [`verify`].
    pub confidence: Option<f32>,
}

/// Verifies `drafted` against `target`, whose cache holds the context minus its last token
/// `last` (the invariant of the generation loop: `target.seq_len() + 1 == history.len()`).
///
/// Runs one forward over `[last] + drafted`, decides with `sampler`'s settings (greedy or
/// rejection sampling with `q`), and truncates the target's cache so that it holds the context
/// plus the accepted tokens (the returned `next` token is not yet in it). `history` is the whole
/// context (prompt and generated tokens, `last` included) for the repetition penalty.
pub fn verify(
    target: &mut dyn CausalLm,
    last: TokenId,
    drafted: &[TokenId],
    q: &[Distribution],
    history: &[TokenId],
    sampler: &mut LogitsProcessor,
) -> Result<Verification> {
    run(target, last, drafted, q, history, sampler, false)
}

/// As [`verify`], also measuring [`Verification::confidence`].
pub fn verify_with_confidence(
    target: &mut dyn CausalLm,
    last: TokenId,
    drafted: &[TokenId],
    q: &[Distribution],
    history: &[TokenId],
    sampler: &mut LogitsProcessor,
) -> Result<Verification> {
    run(target, last, drafted, q, history, sampler, true)
}

fn run(
    target: &mut dyn CausalLm,
    last: TokenId,
    drafted: &[TokenId],
    q: &[Distribution],
    history: &[TokenId],
    sampler: &mut LogitsProcessor,
    with_confidence: bool,
) -> Result<Verification> {
    let base = target.seq_len();
    let mut input = Vec::with_capacity(drafted.len() + 1);
    input.push(last);
    input.extend_from_slice(drafted);
    let started = std::time::Instant::now();
    let rows = target
        .forward(&input, LogitsSelection::All)?
        .to_vec2::<f32>()?;
    let forward_time = started.elapsed();
    let mut ctx = history.to_vec();
    let verdict = if sampler.params().is_greedy() {
        let mut choices = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            let choice = sampler.greedy_token(row, &ctx);
            choices.push(choice);
            // Later positions only matter while the draft still agrees.
            match drafted.get(i) {
                Some(&d) if d == choice => ctx.push(d),
                _ => break,
            }
        }
        accept_greedy(&choices, &drafted[..choices.len() - 1])
    } else {
        let mut p = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            p.push(sampler.distribution(row, &ctx));
            if let Some(&d) = drafted.get(i) {
                ctx.push(d);
            }
        }
        let qs: Vec<Distribution> = q.iter().take(drafted.len()).cloned().collect();
        let one_hot: Vec<Distribution>;
        let q = if qs.len() == drafted.len() {
            &qs
        } else {
            // A deterministic proposer: q is one-hot on each drafted token.
            let vocab = rows.first().map_or(0, |r| r.len());
            one_hot = drafted
                .iter()
                .map(|&d| Distribution::one_hot(d, vocab))
                .collect();
            &one_hot
        };
        accept_sampling(&p, q, drafted, sampler.rng_mut())
    };
    target.truncate(base + 1 + verdict.accepted)?;
    let confidence = with_confidence.then(|| {
        let used = &rows[..(verdict.accepted + 1).min(rows.len())];
        used.iter().map(|r| top_probability(r)).sum::<f32>() / used.len().max(1) as f32
    });
    Ok(Verification {
        verdict,
        forward_time,
        confidence,
    })
}

/// The largest softmax probability of a row of logits (0 for an empty or non-finite row).
///
/// ```
/// let p = specula_verify::top_probability(&[0.0, 0.0]);
/// assert!((p - 0.5).abs() < 1e-6);
/// ```
pub fn top_probability(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return 0.0;
    }
    let sum: f32 = logits.iter().map(|&l| (l - max).exp()).sum();
    if sum > 0.0 {
        1.0 / sum
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(p: &[f32]) -> Distribution {
        Distribution::from_probs(p.to_vec()).unwrap()
    }

    #[test]
    fn greedy_rules() {
        assert_eq!(
            accept_greedy(&[1], &[]),
            Verdict {
                accepted: 0,
                next: 1
            }
        );
        assert_eq!(
            accept_greedy(&[2, 3], &[1]),
            Verdict {
                accepted: 0,
                next: 2
            }
        );
        assert_eq!(
            accept_greedy(&[1, 3], &[1]),
            Verdict {
                accepted: 1,
                next: 3
            }
        );
    }

    /// Exact output distribution of one accept_sampling step, by enumeration over many draws.
    fn first_token_freq(p: &[Distribution], q: &Distribution, draws: usize) -> Vec<f64> {
        let vocab = q.probs().len();
        let mut rng = Rng::new(11);
        let mut counts = vec![0usize; vocab];
        for _ in 0..draws {
            let x = q.sample(&mut rng);
            let v = accept_sampling(p, std::slice::from_ref(q), &[x], &mut rng);
            let first = if v.accepted == 1 { x } else { v.next };
            counts[first as usize] += 1;
        }
        counts.iter().map(|&c| c as f64 / draws as f64).collect()
    }

    #[test]
    fn rejection_sampling_preserves_the_target_distribution_in_edge_cases() {
        let p = d(&[0.5, 0.3, 0.2, 0.0]);
        let cases = [
            ("generic", d(&[0.1, 0.6, 0.1, 0.2])),
            ("q(x)=0 where p>0", d(&[0.0, 0.0, 1.0, 0.0])),
            ("p == q", p.clone()),
            ("q mass where p is zero", d(&[0.0, 0.0, 0.0, 1.0])),
            ("one-hot on the mode", Distribution::one_hot(0, 4)),
        ];
        for (name, q) in cases {
            let f = first_token_freq(&[p.clone(), p.clone()], &q, 200_000);
            for (t, &ft) in f.iter().enumerate() {
                let pt = p.prob(t as u32) as f64;
                assert!((ft - pt).abs() < 0.006, "{name}: token {t}: {ft} vs {pt}");
            }
        }
    }

    #[test]
    fn identical_distributions_accept_everything() {
        let p = d(&[0.25, 0.25, 0.5]);
        let mut rng = Rng::new(3);
        for _ in 0..1000 {
            let drafted = [p.sample(&mut rng), p.sample(&mut rng)];
            let v = accept_sampling(
                &[p.clone(), p.clone(), p.clone()],
                &[p.clone(), p.clone()],
                &drafted,
                &mut rng,
            );
            assert_eq!(v.accepted, 2);
        }
    }
}
