//! Prompt lookup: propose what followed the most recent earlier occurrence of the context's last
//! n tokens. No model, almost no cost; pays off where the answer copies from the prompt
//! (summarisation, retrieval-augmented answers, code edits) or repeats itself.

use crate::{Extension, Proposal, Proposer};
use specula_core::{CoreError, LogitsProcessor, Result, TokenId};

/// The n-gram (prompt lookup) proposer.
///
/// For `n` from `max_n` down to `min_n`, it looks for the latest earlier occurrence of the last
/// `n` tokens of the context (prompt and generated text) and proposes the up to `k` tokens that
/// followed it (at most `max_len`). Deterministic: `q` is one-hot, which the acceptance rule
/// handles (a token is then accepted with probability `p(token)` when sampling).
///
/// ```
/// use specula_draft::NgramProposer;
/// let ng = NgramProposer::new(1, 3, 8)?;
/// // "a b c d ... a b" -> the continuation after the earlier "a b" is "c d".
/// assert_eq!(ng.lookup(&[1, 2, 3, 4, 9, 1, 2], 2), vec![3, 4]);
/// assert!(ng.lookup(&[5, 6, 7], 4).is_empty());
/// # Ok::<(), specula_core::CoreError>(())
/// ```
#[derive(Debug, Clone)]
pub struct NgramProposer {
    min_n: usize,
    max_n: usize,
    max_len: usize,
}

impl Default for NgramProposer {
    /// Matches of 2 to 4 tokens, proposals of up to 8 tokens.
    fn default() -> Self {
        NgramProposer {
            min_n: 2,
            max_n: 4,
            max_len: 8,
        }
    }
}

impl NgramProposer {
    /// Matches of `min_n..=max_n` tokens, proposals of at most `max_len` tokens.
    pub fn new(min_n: usize, max_n: usize, max_len: usize) -> Result<Self> {
        if min_n == 0 || min_n > max_n {
            return Err(CoreError::invalid(
                "ngram",
                format!("need 1 <= min_n <= max_n, got min_n {min_n}, max_n {max_n}"),
            ));
        }
        if max_len == 0 {
            return Err(CoreError::invalid("ngram", "max_len must be at least 1"));
        }
        Ok(NgramProposer {
            min_n,
            max_n,
            max_len,
        })
    }

    /// The continuation of the longest, latest match (empty when nothing matches).
    pub fn lookup(&self, context: &[TokenId], k: usize) -> Vec<TokenId> {
        let len = context.len();
        let k = k.min(self.max_len);
        if k == 0 {
            return Vec::new();
        }
        for n in (self.min_n..=self.max_n).rev() {
            if len <= n {
                continue;
            }
            let pattern = &context[len - n..];
            // Earlier occurrences that leave at least one token before the suffix itself.
            for start in (0..len - n).rev() {
                if &context[start..start + n] == pattern {
                    let from = start + n;
                    let to = (from + k).min(len);
                    return context[from..to].to_vec();
                }
            }
        }
        Vec::new()
    }
}

impl Proposer for NgramProposer {
    fn propose(
        &mut self,
        context: &[TokenId],
        k: usize,
        _sampler: &LogitsProcessor,
    ) -> Result<Proposal> {
        Ok(Proposal {
            tokens: self.lookup(context, k),
            ..Proposal::default()
        })
    }

    fn name(&self) -> &str {
        "ngram"
    }

    fn reset(&mut self) {}

    fn is_cheap(&self) -> bool {
        true
    }
}

/// Tries its proposers in order each step; the first non-empty proposal is used (for example the
/// n-gram proposer, then the draft model when the context has no match).
pub struct FirstNonEmpty {
    proposers: Vec<Box<dyn Proposer>>,
    name: String,
}

impl std::fmt::Debug for FirstNonEmpty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FirstNonEmpty")
            .field("name", &self.name)
            .finish()
    }
}

impl FirstNonEmpty {
    /// The proposers, in the order they are tried.
    pub fn new(proposers: Vec<Box<dyn Proposer>>) -> Self {
        let name = proposers
            .iter()
            .map(|p| p.name())
            .collect::<Vec<_>>()
            .join("+");
        FirstNonEmpty { proposers, name }
    }
}

impl FirstNonEmpty {
    fn first(
        &mut self,
        context: &[TokenId],
        k: usize,
        extension: Option<Extension>,
        sampler: &LogitsProcessor,
    ) -> Result<Proposal> {
        for p in &mut self.proposers {
            let mut proposal = match extension {
                Some(e) => p.propose_extended(context, k, e, sampler)?,
                None => p.propose(context, k, sampler)?,
            };
            if !proposal.tokens.is_empty() {
                if proposal.source.is_empty() {
                    proposal.source = p.name().to_string();
                }
                return Ok(proposal);
            }
        }
        Ok(Proposal::default())
    }
}

impl Proposer for FirstNonEmpty {
    fn propose(
        &mut self,
        context: &[TokenId],
        k: usize,
        sampler: &LogitsProcessor,
    ) -> Result<Proposal> {
        self.first(context, k, None, sampler)
    }

    fn propose_extended(
        &mut self,
        context: &[TokenId],
        k: usize,
        extension: Extension,
        sampler: &LogitsProcessor,
    ) -> Result<Proposal> {
        self.first(context, k, Some(extension), sampler)
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn reset(&mut self) {
        self.proposers.iter_mut().for_each(|p| p.reset());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use specula_core::SamplingParams;

    #[test]
    fn longest_latest_match_wins() {
        let ng = NgramProposer::new(1, 3, 8).unwrap();
        // "7" alone occurs twice; the 2-gram "6 7" only once (followed by 1 2).
        let ctx = [6, 7, 1, 2, 9, 7, 3, 4, 6, 7];
        assert_eq!(ng.lookup(&ctx, 2), vec![1, 2]);
        // Only the unigram matches: its latest occurrence (followed by 3 4).
        assert_eq!(ng.lookup(&[7, 3, 4, 5, 7], 2), vec![3, 4]);
        // The continuation stops at the end of the context, and at max_len / k.
        assert_eq!(ng.lookup(&[1, 2, 1], 5), vec![2, 1]);
        let short = NgramProposer::new(1, 2, 1).unwrap();
        assert_eq!(short.lookup(&ctx, 4), vec![1]);
        assert!(ng.lookup(&ctx, 0).is_empty());
        assert!(ng.lookup(&[], 3).is_empty());
        assert_eq!(ng.lookup(&[2, 4, 2, 4], 2), vec![2, 4]);
        assert_eq!(ng.lookup(&[2, 4, 2, 2], 2), vec![2], "the repeat itself");
    }

    #[test]
    fn bad_settings_are_rejected() {
        assert!(NgramProposer::new(0, 2, 4).is_err());
        assert!(NgramProposer::new(3, 2, 4).is_err());
        assert!(NgramProposer::new(1, 2, 0).is_err());
    }

    #[test]
    fn composition_falls_back_and_names_the_source() {
        struct Fixed(Vec<TokenId>);
        impl Proposer for Fixed {
            fn propose(
                &mut self,
                _: &[TokenId],
                k: usize,
                _: &LogitsProcessor,
            ) -> Result<Proposal> {
                Ok(Proposal {
                    tokens: self.0.iter().copied().take(k).collect(),
                    ..Proposal::default()
                })
            }
            fn name(&self) -> &str {
                "fixed"
            }
            fn reset(&mut self) {}
        }
        let sampler = LogitsProcessor::new(SamplingParams::greedy()).unwrap();
        let mut c = FirstNonEmpty::new(vec![
            Box::new(NgramProposer::default()),
            Box::new(Fixed(vec![5, 5, 5])),
        ]);
        assert_eq!(c.name(), "ngram+fixed");
        let p = c.propose(&[1, 2, 3, 1, 2], 2, &sampler).unwrap();
        assert_eq!((p.tokens, p.source.as_str()), (vec![3, 1], "ngram"));
        let p = c.propose(&[1, 2, 3], 2, &sampler).unwrap();
        assert_eq!((p.tokens, p.source.as_str()), (vec![5, 5], "fixed"));
    }
}
