//! Speculative decoding is lossless: greedy output is token-identical to plain decoding, sampled
//! output has the target's distribution, and stop conditions inside a draft end generation
//! exactly where plain decoding would.

mod common;

use common::{synthetic_tokenizer, ScriptedLm, SlowLm, TableLm};
use specula::{
    CausalLm, DraftModel, Extension, FinishReason, GenerateParams, Generator, LlamaModel,
    LogitsProcessor, LogitsSelection, ModelSource, Proposal, Proposer, SamplingParams, TokenId,
};
use specula_models::synthetic::{SyntheticSpec, SyntheticTokenizer};
use specula_models::{load, LoadOptions};
use std::collections::HashMap;

fn model(
    spec: &SyntheticSpec,
    dir: &tempfile::TempDir,
    name: &str,
) -> (LlamaModel, specula::Tokenizer) {
    let path = dir.path().join(name);
    spec.write_gguf(&path).unwrap();
    let l = load(&ModelSource::gguf(&path), &LoadOptions::default()).unwrap();
    (l.model, l.tokenizer)
}

/// Proposes the target's runner-up token: never what the target picks (acceptance exactly 0).
struct Contrarian(LlamaModel);

impl Proposer for Contrarian {
    fn propose(
        &mut self,
        context: &[TokenId],
        k: usize,
        sampler: &LogitsProcessor,
    ) -> specula::specula_core::Result<Proposal> {
        self.0.reset();
        let logits = self
            .0
            .forward(context, LogitsSelection::Last)?
            .squeeze(0)?
            .to_vec1::<f32>()?;
        let best = sampler.greedy_token(&logits, context);
        let tokenizer_vocab = SyntheticTokenizer::new().tokens.len();
        let mut second = (0, f32::NEG_INFINITY);
        for (i, &l) in logits.iter().enumerate().take(tokenizer_vocab) {
            if i as TokenId != best && l > second.1 {
                second = (i as TokenId, l);
            }
        }
        Ok(Proposal {
            tokens: vec![second.0; k.min(1)],
            ..Proposal::default()
        })
    }
    fn name(&self) -> &str {
        "contrarian"
    }
    fn reset(&mut self) {
        self.0.reset()
    }
}

/// A draft model asked for one token and leave to run on, through
/// [`Proposer::propose_extended`], up to the step's length while each token has at least the
/// given probability under the draft: where its drafts end depends on what it drafted.
struct Extending(DraftModel, f32);

impl Proposer for Extending {
    fn propose(
        &mut self,
        context: &[TokenId],
        k: usize,
        sampler: &LogitsProcessor,
    ) -> specula::specula_core::Result<Proposal> {
        let extension = Extension {
            max: k,
            min_confidence: self.1,
        };
        self.0.propose_extended(context, 1, extension, sampler)
    }
    fn name(&self) -> &str {
        "extending"
    }
    fn reset(&mut self) {
        self.0.reset()
    }
    fn pending(&self, context: &[TokenId]) -> usize {
        self.0.pending(context)
    }
}

fn greedy(n: usize) -> GenerateParams {
    GenerateParams {
        ignore_eos: true,
        ..GenerateParams::new(n)
    }
}

const PROMPTS: [&str; 3] = ["def hello", "the world and", "for x in self"];

#[test]
fn greedy_speculation_is_token_identical_for_every_draft_length() {
    let dir = tempfile::tempdir().unwrap();
    let (target, tok) = model(&SyntheticSpec::tiny_qwen2(), &dir, "t.gguf");
    let other = SyntheticSpec {
        seed: 5,
        num_layers: 1,
        ..SyntheticSpec::tiny_qwen2()
    };
    let (draft, _) = model(&other, &dir, "d.gguf");
    let mut plain = Generator::new(target.clone(), tok.clone()).unwrap();
    let reference: Vec<_> = PROMPTS
        .iter()
        .map(|p| plain.generate(p, &greedy(40)).unwrap())
        .collect();
    for r in &reference {
        assert_eq!(
            r.step_tokens,
            vec![1; 40],
            "plain decoding emits one token per forward"
        );
    }
    for k in 1..=8 {
        // A different (weaker) draft, a draft identical to the target.
        for (name, d) in [
            ("random draft", draft.clone()),
            ("identical draft", target.clone()),
        ] {
            let mut g = Generator::new(target.clone(), tok.clone())
                .unwrap()
                .with_draft(d, k)
                .unwrap();
            for (p, want) in PROMPTS.iter().zip(&reference) {
                let got = g.generate(p, &greedy(40)).unwrap();
                assert_eq!(got.tokens, want.tokens, "{name}, k={k}, prompt {p:?}");
                assert_eq!(got.text, want.text);
                assert_eq!(got.finish_reason, want.finish_reason);
                assert_eq!(got.metrics.new_tokens, 40);
                assert_eq!(got.step_tokens.iter().sum::<usize>(), 40);
                assert!(got.step_tokens.iter().all(|&n| (1..=k + 1).contains(&n)));
                if name == "identical draft" {
                    // Every step but the first (prefill) and the last (cut by max tokens) is full.
                    let full = &got.step_tokens[1..got.step_tokens.len() - 1];
                    assert!(
                        full.iter().all(|&n| n == k + 1),
                        "k={k}: {:?}",
                        got.step_tokens
                    );
                }
            }
            let stats = g.stats();
            if name == "identical draft" {
                assert_eq!(stats.acceptance_rate(), 1.0, "k={k}: {}", stats.summary());
            } else {
                assert!(stats.acceptance_rate() < 1.0);
            }
            assert_eq!(stats.position_drafted.len(), k);
        }
    }
}

#[test]
fn a_draft_that_always_disagrees_accepts_nothing_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (target, tok) = model(&SyntheticSpec::tiny_qwen2(), &dir, "t.gguf");
    let mut plain = Generator::new(target.clone(), tok.clone()).unwrap();
    let want = plain.generate(PROMPTS[0], &greedy(20)).unwrap();
    let proposer = Contrarian(target.clone());
    let mut g = Generator::new(target.clone(), tok)
        .unwrap()
        .with_proposer(Box::new(proposer), 1)
        .unwrap();
    let got = g.generate(PROMPTS[0], &greedy(20)).unwrap();
    assert_eq!(got.tokens, want.tokens);
    let s = got.speculation.unwrap();
    assert_eq!(
        (s.accepted, s.acceptance_rate()),
        (0, 0.0),
        "{}",
        s.summary()
    );
    assert_eq!(s.mean_accepted_length(), 1.0);
}

/// A target and an identical scripted draft emitting `script` (EOS appended when `eos`).
fn scripted_pair(text: &str, eos: bool, k: usize) -> (Generator, Generator, Vec<TokenId>) {
    let tok = synthetic_tokenizer();
    let mut script = tok.encode(text).unwrap();
    let expected = script.clone();
    if eos {
        script.push(SyntheticTokenizer::new().eos);
    }
    let plain = Generator::new(ScriptedLm::new(script.clone(), 320), tok.clone()).unwrap();
    let spec = Generator::new(ScriptedLm::new(script.clone(), 320), tok)
        .unwrap()
        .with_draft(ScriptedLm::new(script, 320), k)
        .unwrap();
    (plain, spec, expected)
}

#[test]
fn eos_inside_a_draft_ends_generation_exactly_there() {
    let words = [
        "the", "and", "for", "def", "hello", "world", "return", "self", "in", "on",
    ];
    for len in 1..=words.len() {
        let text = words[..len].join(" ");
        for k in 1..=6 {
            let (mut plain, mut spec, expected) = scripted_pair(&text, true, k);
            let a = plain.generate("x", &GenerateParams::new(50)).unwrap();
            let b = spec.generate("x", &GenerateParams::new(50)).unwrap();
            assert_eq!(b.finish_reason, FinishReason::Eos, "len={len} k={k}");
            assert_eq!(b.tokens, expected);
            assert_eq!(
                (&b.tokens, &b.text, b.finish_reason),
                (&a.tokens, &a.text, a.finish_reason)
            );
            assert_eq!(b.metrics.new_tokens, expected.len(), "no metrics leak");
        }
    }
}

#[test]
fn max_tokens_and_stop_strings_inside_a_draft() {
    let text = "def f(x):\n    return x\n\ndef g(y):\n    return y";
    for k in 1..=6 {
        let (mut plain, mut spec, expected) = scripted_pair(text, false, k);
        for n in 1..=expected.len() {
            let b = spec.generate("x", &GenerateParams::new(n)).unwrap();
            assert_eq!(b.tokens, expected[..n].to_vec(), "n={n} k={k}");
            assert_eq!(b.finish_reason, FinishReason::MaxTokens);
            // The draft is identical, so every drafted token is accepted, and drafting never runs
            // past max_new_tokens: the first token comes from the prefill, each speculative step
            // emits its accepted tokens plus one, and a single remaining token is decoded plainly.
            let s = b.speculation.unwrap();
            assert_eq!(s.drafted, s.accepted, "n={n} k={k}");
            assert!(
                s.accepted + s.target_steps < n,
                "n={n} k={k}: {}",
                s.summary()
            );
        }
        for stop in ["\n\n", "return", "(y", "x\n", "g"] {
            let p = GenerateParams::new(100).stop(stop);
            let mut streamed = String::new();
            let b = spec
                .generate_stream("x", &p, |d| streamed.push_str(d))
                .unwrap();
            let a = plain.generate("x", &p).unwrap();
            assert_eq!(
                b.finish_reason,
                FinishReason::StopString,
                "stop {stop:?} k={k}"
            );
            assert_eq!(
                (&b.tokens, &b.text),
                (&a.tokens, &a.text),
                "stop {stop:?} k={k}"
            );
            assert_eq!(streamed, b.text);
            assert!(!b.text.contains(stop));
        }
    }
}

#[test]
fn context_limit_with_speculation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    SyntheticSpec::tiny_qwen2().write_gguf(&path).unwrap();
    let build = |draft: bool| {
        let mut b = Generator::builder()
            .model(ModelSource::gguf(&path))
            .max_seq_len(20);
        if draft {
            b = b.draft(ModelSource::gguf(&path)).draft_len(6);
        }
        b.build().unwrap()
    };
    let (mut plain, mut spec) = (build(false), build(true));
    let a = plain.generate("hello", &greedy(100)).unwrap();
    let b = spec.generate("hello", &greedy(100)).unwrap();
    assert_eq!(b.finish_reason, FinishReason::ContextFull);
    assert_eq!(a.tokens, b.tokens);
}

#[test]
fn incompatible_draft_is_rejected() {
    let tok = synthetic_tokenizer();
    let mut swapped = SyntheticTokenizer::new();
    swapped.tokens.swap(66, 67); // 'c' <-> 'd'
    let json = swapped.json().unwrap().to_string();
    let other =
        specula::Tokenizer::new(tokenizers::Tokenizer::from_bytes(json.as_bytes()).unwrap());
    assert!(specula::check_compatible(&tok, &tok).is_ok());
    let err = specula::check_compatible(&tok, &other).unwrap_err();
    assert!(err.to_string().contains("differ"), "{err}");
    let g = Generator::new(ScriptedLm::new(vec![1], 320), tok).unwrap();
    assert!(g.with_draft(ScriptedLm::new(vec![1], 320), 0).is_err());
}

/// Exact distribution of the first two tokens of plain sampling from the table model.
fn exact_pairs(
    target: &TableLm,
    params: &SamplingParams,
    prompt: &[TokenId],
) -> HashMap<(TokenId, TokenId), f64> {
    let proc = LogitsProcessor::new(params.clone()).unwrap();
    let mut out = HashMap::new();
    let d1 = proc.distribution(&target.row(*prompt.last().unwrap()), prompt);
    for (a, &pa) in d1.probs().iter().enumerate() {
        if pa == 0.0 {
            continue;
        }
        let mut h = prompt.to_vec();
        h.push(a as TokenId);
        let d2 = proc.distribution(&target.row(a as TokenId), &h);
        for (b, &pb) in d2.probs().iter().enumerate() {
            if pb > 0.0 {
                out.insert((a as TokenId, b as TokenId), pa as f64 * pb as f64);
            }
        }
    }
    out
}

/// Exact distribution of the second and third tokens of plain sampling from the table model.
fn exact_later_pairs(
    target: &TableLm,
    params: &SamplingParams,
    prompt: &[TokenId],
) -> HashMap<(TokenId, TokenId), f64> {
    let proc = LogitsProcessor::new(params.clone()).unwrap();
    let d1 = proc.distribution(&target.row(*prompt.last().unwrap()), prompt);
    let mut out = HashMap::new();
    for (a, &pa) in d1.probs().iter().enumerate() {
        if pa == 0.0 {
            continue;
        }
        let mut h = prompt.to_vec();
        h.push(a as TokenId);
        for (key, p) in exact_pairs(target, params, &h) {
            *out.entry(key).or_default() += pa as f64 * p;
        }
    }
    out
}

/// Total variation between exact pair probabilities and the empirical frequencies of `n` draws.
fn total_variation(
    exact: &HashMap<(TokenId, TokenId), f64>,
    counts: &HashMap<(TokenId, TokenId), usize>,
    n: usize,
) -> f64 {
    let mut keys: Vec<_> = exact.keys().chain(counts.keys()).copied().collect();
    keys.sort();
    keys.dedup();
    keys.iter()
        .map(|key| {
            let e = exact.get(key).copied().unwrap_or(0.0);
            let o = counts.get(key).copied().unwrap_or(0) as f64 / n as f64;
            (e - o).abs()
        })
        .sum::<f64>()
        / 2.0
}

#[test]
fn sampling_speculation_preserves_the_target_distribution() {
    // 6 live tokens; the draft disagrees with the target in structured ways: mass where the
    // target has none (q > 0, p = 0), none where the target has some (q = 0, p > 0), and an
    // identical row (p = q).
    let t = vec![
        vec![1.0, 0.5, 0.0, -1.0, 0.3, 2.0],
        vec![0.2, 1.5, 0.9, 0.1, -0.5, 0.0],
        vec![2.0, 2.0, 0.0, 1.0, 0.5, -2.0],
        vec![0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        vec![-1.0, 3.0, 0.5, 0.5, 1.0, 0.2],
        vec![0.7, 0.1, 1.9, -0.3, 0.0, 1.1],
    ];
    let ninf = f32::NEG_INFINITY;
    let dr = vec![
        vec![3.0, ninf, 0.0, 2.0, 0.3, 0.0],
        t[1].clone(),
        vec![ninf, ninf, ninf, ninf, ninf, 0.0],
        vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
        vec![1.0, 0.0, 0.5, 0.5, 1.0, 0.2],
        vec![0.7, 0.1, 1.9, -0.3, 0.0, 1.1],
    ];
    let configs = [
        SamplingParams {
            temperature: 1.0,
            ..Default::default()
        },
        SamplingParams {
            temperature: 0.6,
            top_k: 3,
            ..Default::default()
        },
        SamplingParams {
            temperature: 1.3,
            top_p: 0.8,
            ..Default::default()
        },
        SamplingParams {
            temperature: 0.9,
            min_p: 0.2,
            repetition_penalty: 1.3,
            ..Default::default()
        },
    ];
    let tok = synthetic_tokenizer();
    let prompt = [2 as TokenId];
    let n = 40_000;
    for (ci, params) in configs.iter().enumerate() {
        let exact = exact_pairs(&TableLm::new(t.clone(), 320), params, &prompt);
        for k in [1usize, 3] {
            let mut g = Generator::new(TableLm::new(t.clone(), 320), tok.clone())
                .unwrap()
                .with_draft(TableLm::new(dr.clone(), 320), k)
                .unwrap();
            let mut counts: HashMap<(TokenId, TokenId), usize> = HashMap::new();
            for seed in 0..n {
                // Token 1 comes from the prefill, token 2 from a speculative step.
                let p = GenerateParams {
                    ignore_eos: true,
                    ..GenerateParams::new(3)
                }
                .sampling(SamplingParams {
                    seed: seed as u64,
                    ..params.clone()
                });
                let out = g.generate_from_ids(&prompt, &p, |_| {}).unwrap();
                *counts.entry((out.tokens[0], out.tokens[1])).or_default() += 1;
            }
            let tv = total_variation(&exact, &counts, n);
            // Sampling noise of the TV estimate here is about 0.01; a 2% bias in any token's
            // probability would push it past the bound.
            assert!(tv < 0.02, "config {ci}, k={k}: total variation {tv:.4}");
            assert!(
                counts.keys().all(|key| exact.contains_key(key)),
                "config {ci}: impossible pair sampled"
            );
            assert!(g.stats().acceptance_rate() > 0.0 && g.stats().acceptance_rate() < 1.0);
        }
    }
}

/// The n-gram proposer (deterministic, one-hot q), a composition (n-gram, then a sampling draft
/// model) and the adaptive draft length with the draft's early stop all keep the target's
/// distribution when sampling.
#[test]
fn ngram_composed_and_adaptive_sampling_preserve_the_target_distribution() {
    use specula::{AdaptiveConfig, FirstNonEmpty, NgramProposer};
    let t = vec![
        vec![1.0, 0.5, 0.0, -1.0, 0.3, 2.0],
        vec![0.2, 1.5, 0.9, 0.1, -0.5, 0.0],
        vec![2.0, 2.0, 0.0, 1.0, 0.5, -2.0],
        vec![0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        vec![-1.0, 3.0, 0.5, 0.5, 1.0, 0.2],
        vec![0.7, 0.1, 1.9, -0.3, 0.0, 1.1],
    ];
    let dr = vec![
        vec![3.0, 0.0, 0.0, 2.0, 0.3, 0.0],
        t[1].clone(),
        vec![0.0, 0.0, 0.0, 0.0, 0.0, 4.0],
        vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
        vec![1.0, 0.0, 0.5, 0.5, 1.0, 0.2],
        vec![0.7, 0.1, 1.9, -0.3, 0.0, 1.1],
    ];
    let configs = [
        SamplingParams {
            temperature: 1.0,
            ..Default::default()
        },
        SamplingParams {
            temperature: 0.9,
            min_p: 0.2,
            repetition_penalty: 1.3,
            ..Default::default()
        },
    ];
    let tok = synthetic_tokenizer();
    // The likely first tokens (0, 1) occur in the prompt, so the n-gram proposer proposes what
    // followed them.
    let prompt = [0 as TokenId, 1, 2];
    let n = 30_000;
    let ngram = || NgramProposer::new(1, 2, 4).unwrap();
    for (ci, params) in configs.iter().enumerate() {
        let exact = exact_pairs(&TableLm::new(t.clone(), 320), params, &prompt);
        let target = || TableLm::new(t.clone(), 320);
        let variants: Vec<(&str, Generator)> = vec![
            (
                "ngram",
                Generator::new(target(), tok.clone())
                    .unwrap()
                    .with_proposer(Box::new(ngram()), 3)
                    .unwrap(),
            ),
            (
                "ngram+draft",
                Generator::new(target(), tok.clone())
                    .unwrap()
                    .with_proposer(
                        Box::new(FirstNonEmpty::new(vec![
                            Box::new(ngram()),
                            Box::new(DraftModel::new(TableLm::new(dr.clone(), 320), 320)),
                        ])),
                        2,
                    )
                    .unwrap(),
            ),
            ("vocab-limited draft", {
                // A draft that scores only the first ids (the rest -inf, as
                // `limit_output_vocab` makes them): q is zero past them.
                let limited: Vec<Vec<f32>> = dr
                    .iter()
                    .map(|r| {
                        let mut r = r.clone();
                        r[4..].fill(f32::NEG_INFINITY);
                        r
                    })
                    .collect();
                Generator::new(target(), tok.clone())
                    .unwrap()
                    .with_proposer(
                        Box::new(DraftModel::new(TableLm::new(limited, 320), 320)),
                        3,
                    )
                    .unwrap()
            }),
            (
                "extending draft",
                Generator::new(target(), tok.clone())
                    .unwrap()
                    .with_proposer(
                        Box::new(Extending(
                            DraftModel::new(TableLm::new(dr.clone(), 320), 320),
                            0.5,
                        )),
                        3,
                    )
                    .unwrap(),
            ),
            ("adaptive n-gram + draft", {
                let drafter =
                    DraftModel::new(TableLm::new(dr.clone(), 320), 320).with_min_confidence(0.4);
                let mut g = Generator::new(target(), tok.clone())
                    .unwrap()
                    .with_proposers(vec![Box::new(ngram()), Box::new(drafter)], 3)
                    .unwrap();
                g.set_adaptive(Some(AdaptiveConfig {
                    max_k: 3,
                    ..Default::default()
                }))
                .unwrap();
                g
            }),
            ("adaptive", {
                // With the draft's early stop on low confidence, as the builder's default sets it.
                let drafter =
                    DraftModel::new(TableLm::new(dr.clone(), 320), 320).with_min_confidence(0.4);
                let mut g = Generator::new(target(), tok.clone())
                    .unwrap()
                    .with_proposer(Box::new(drafter), 3)
                    .unwrap();
                g.set_adaptive(Some(AdaptiveConfig {
                    max_k: 3,
                    ..Default::default()
                }))
                .unwrap();
                g
            }),
        ];
        // The extending draft is checked on the second and third tokens: its first step plans
        // one token (the second) and may run on to the third.
        let later = exact_later_pairs(&TableLm::new(t.clone(), 320), params, &prompt);
        for (name, mut g) in variants {
            let extending = name == "extending draft";
            let (exact, first, len) = if extending {
                (&later, 1, 5)
            } else {
                (&exact, 0, 3)
            };
            let mut counts: HashMap<(TokenId, TokenId), usize> = HashMap::new();
            for seed in 0..n {
                let p = GenerateParams {
                    ignore_eos: true,
                    ..GenerateParams::new(len)
                }
                .sampling(SamplingParams {
                    seed: seed as u64,
                    ..params.clone()
                });
                let out = g.generate_from_ids(&prompt, &p, |_| {}).unwrap();
                *counts
                    .entry((out.tokens[first], out.tokens[first + 1]))
                    .or_default() += 1;
            }
            let tv = total_variation(exact, &counts, n);
            assert!(tv < 0.02, "config {ci}, {name}: total variation {tv:.4}");
            assert!(
                counts.keys().all(|key| exact.contains_key(key)),
                "{name}: impossible pair"
            );
            let st = g.stats();
            assert!(
                st.drafted > 0,
                "{name}: nothing was drafted: {}",
                st.summary()
            );
            if name == "extending draft" {
                // Asked for one token each, it drafted more where it was confident.
                assert!(st.drafted > st.target_steps, "{name}: {}", st.summary());
            }
            if name == "ngram+draft" {
                let names: Vec<&str> = st.per_proposer.iter().map(|(n, _)| n.as_str()).collect();
                assert!(names.contains(&"ngram"), "{name}: {names:?}");
            }
        }
    }
}

/// Greedy output with the n-gram proposer, a composition, and the adaptive draft length (with an
/// early-stopping draft) is token-identical to plain decoding.
#[test]
fn ngram_composed_and_adaptive_greedy_are_token_identical() {
    use specula::{AdaptiveConfig, FirstNonEmpty, NgramProposer};
    let dir = tempfile::tempdir().unwrap();
    let (target, tok) = model(&SyntheticSpec::tiny_qwen2(), &dir, "t.gguf");
    let other = SyntheticSpec {
        seed: 5,
        num_layers: 1,
        ..SyntheticSpec::tiny_qwen2()
    };
    let (draft, _) = model(&other, &dir, "d.gguf");
    let prompts = [
        "def hello",
        "the world and the world and the",
        "for x in self for x in",
    ];
    let mut plain = Generator::new(target.clone(), tok.clone()).unwrap();
    let reference: Vec<_> = prompts
        .iter()
        .map(|p| plain.generate(p, &greedy(40)).unwrap())
        .collect();
    let vocab = target.vocab_size();
    let build = |mode: &str| -> Generator {
        // The target made slow (a large model's flat step cost), so that drafting pays whatever
        // the machine's timing of tiny forwards: the adaptive modes must draft, not only match.
        let slow = SlowLm {
            inner: target.clone(),
            pause: std::time::Duration::from_millis(4),
        };
        let g = Generator::new(slow, tok.clone()).unwrap();
        let drafter = || Box::new(DraftModel::new(draft.clone(), vocab).with_min_confidence(0.2));
        match mode {
            "ngram" => g
                .with_proposer(Box::new(NgramProposer::default()), 5)
                .unwrap(),
            "ngram+draft" => g
                .with_proposer(
                    Box::new(FirstNonEmpty::new(vec![
                        Box::new(NgramProposer::default()),
                        drafter(),
                    ])),
                    4,
                )
                .unwrap(),
            "extending" => g
                .with_proposer(
                    Box::new(Extending(DraftModel::new(draft.clone(), vocab), 0.05)),
                    6,
                )
                .unwrap(),
            "adaptive ngram+draft" => {
                let mut g = g
                    .with_proposers(vec![Box::new(NgramProposer::default()), drafter()], 6)
                    .unwrap();
                g.set_adaptive(Some(AdaptiveConfig {
                    max_k: 6,
                    probe_every: 2,
                    ..Default::default()
                }))
                .unwrap();
                g
            }
            _ => {
                let mut g = g.with_proposer(drafter(), 6).unwrap();
                g.set_adaptive(Some(AdaptiveConfig {
                    max_k: 6,
                    probe_every: 2,
                    ..Default::default()
                }))
                .unwrap();
                g
            }
        }
    };
    for mode in [
        "ngram",
        "ngram+draft",
        "extending",
        "adaptive",
        "adaptive ngram+draft",
    ] {
        let mut g = build(mode);
        for (p, want) in prompts.iter().zip(&reference) {
            let got = g.generate(p, &greedy(40)).unwrap();
            assert_eq!(got.tokens, want.tokens, "{mode}, prompt {p:?}");
            assert_eq!(got.text, want.text);
            assert_eq!(got.step_tokens.iter().sum::<usize>(), 40);
        }
        let st = g.stats();
        assert!(st.drafted > 0, "{mode}: {}", st.summary());
        if mode == "extending" {
            // Drafts of one token, of six, and of lengths between: the stop rule did its work.
            let lens = &st.accept_length_histogram;
            assert!(st.drafted > st.target_steps, "{mode}: {}", st.summary());
            assert!(
                st.position_drafted
                    .get(5)
                    .is_some_and(|&n| n < st.target_steps),
                "{mode}: {lens:?} {:?}",
                st.position_drafted
            );
        }
    }
}

/// A draft model runs past the planned length only through tokens it is confident of, reports
/// how many leading tokens were, and without an extension drafts exactly the planned length.
#[test]
fn a_draft_model_extends_only_through_confident_tokens() {
    // 0 -> 1 -> 2 -> 3 with near certainty, then a flat row (3 -> 0 at about 0.29).
    let table = vec![
        vec![0.0, 12.0, 0.0, 0.0],
        vec![0.0, 0.0, 12.0, 0.0],
        vec![0.0, 0.0, 0.0, 12.0],
        vec![1.0, 0.9, 0.8, 0.7],
    ];
    let mut d = DraftModel::new(TableLm::new(table, 4), 4);
    let greedy = LogitsProcessor::new(SamplingParams::default()).unwrap();
    let ext = |max, min_confidence| Extension {
        max,
        min_confidence,
    };
    let p = d.propose_extended(&[0], 1, ext(6, 0.9), &greedy).unwrap();
    assert_eq!(p.tokens, vec![1, 2, 3]);
    assert_eq!(p.confident, 3);
    // The planned length is drafted whatever the confidence; past it, only while confident.
    let p = d.propose_extended(&[0], 5, ext(6, 0.9), &greedy).unwrap();
    assert_eq!(p.tokens, vec![1, 2, 3, 0, 1]);
    assert_eq!(p.confident, 3);
    let p = d.propose_extended(&[0], 2, ext(6, 0.1), &greedy).unwrap();
    assert_eq!(p.tokens, vec![1, 2, 3, 0, 1, 2]);
    assert_eq!(p.confident, 6);
    let p = d.propose(&[0], 2, &greedy).unwrap();
    assert_eq!(p.tokens, vec![1, 2]);
    assert_eq!(p.confident, 0);
    // Sampling: the confidence is the drawn token's probability under the draft.
    let sampling = LogitsProcessor::new(SamplingParams {
        temperature: 1.0,
        ..Default::default()
    })
    .unwrap();
    let p = d.propose_extended(&[0], 1, ext(6, 0.9), &sampling).unwrap();
    assert_eq!(p.tokens, vec![1, 2, 3]);
    assert_eq!(p.q.len(), 3);
}

#[test]
fn the_confidence_is_measured_only_on_request_and_changes_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let (target, tok) = model(&SyntheticSpec::tiny_qwen2(), &dir, "t.gguf");
    let mut oracle = DraftModel::new(target.clone(), target.vocab_size());
    let sampler = LogitsProcessor::new(SamplingParams::greedy()).unwrap();
    let history = tok.encode("def hello world").unwrap();
    let mut proposal = oracle.propose(&history, 4, &sampler).unwrap().tokens;
    // Accept two, then the target's correction.
    proposal[2] = (proposal[2] + 1) % target.vocab_size() as TokenId;
    let last = history[history.len() - 1];
    let run = |with: bool| {
        let mut t = target.clone();
        t.reset();
        t.forward(&history[..history.len() - 1], LogitsSelection::Last)
            .unwrap();
        let mut s = LogitsProcessor::new(SamplingParams::greedy()).unwrap();
        let f = if with {
            specula_verify::verify_with_confidence
        } else {
            specula_verify::verify
        };
        let v = f(&mut t, last, &proposal, &[], &history, &mut s).unwrap();
        (v, t.seq_len())
    };
    let (plain, len_plain) = run(false);
    let (scored, len_scored) = run(true);
    assert_eq!(plain.verdict, scored.verdict);
    assert_eq!(scored.verdict.accepted, 2);
    assert_eq!(len_plain, len_scored);
    assert_eq!(plain.confidence, None);
    // The mean top probability of the three rows the step emitted from.
    let mut t = target.clone();
    t.reset();
    let mut input = history.clone();
    input.extend_from_slice(&proposal[..2]);
    let rows = t
        .forward(&input, LogitsSelection::All)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let want = rows[rows.len() - 3..]
        .iter()
        .map(|r| specula_verify::top_probability(r))
        .sum::<f32>()
        / 3.0;
    let got = scored.confidence.unwrap();
    assert!(
        (got - want).abs() < 1e-4,
        "confidence {got}, expected {want}"
    );
    assert!(got > 0.0 && got <= 1.0);
}

mod rollback {
    use super::*;
    use proptest::prelude::*;

    fn last_logits(m: &mut LlamaModel, history: &[TokenId]) -> Vec<f32> {
        // Logits after `history` given a cache that holds `history[..len-1]`, restoring the cache.
        let n = m.seq_len();
        let row = m
            .forward(&history[history.len() - 1..], LogitsSelection::Last)
            .unwrap();
        m.truncate(n).unwrap();
        row.squeeze(0).unwrap().to_vec1::<f32>().unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        /// Random acceptance patterns (a correct draft corrupted at a random position) leave the
        /// target's cache equal to a fresh recompute of the accepted sequence, and the draft's
        /// rolled-back cache proposing exactly what a fresh draft would.
        #[test]
        fn caches_stay_consistent(steps in proptest::collection::vec((1usize..7, 0usize..8, 0u32..280), 1..10)) {
            let dir = tempfile::tempdir().unwrap();
            let (mut target, tok) = model(&SyntheticSpec::tiny_qwen2(), &dir, "t.gguf");
            let (draft_model, _) = model(&SyntheticSpec { seed: 9, ..SyntheticSpec::tiny_qwen2() }, &dir, "d.gguf");
            let vocab = target.vocab_size();
            let mut oracle = DraftModel::new(target.clone(), vocab);
            let mut draft = DraftModel::new(draft_model.clone(), vocab);
            let mut sampler = LogitsProcessor::new(SamplingParams::greedy()).unwrap();
            let mut history = tok.encode("def hello world").unwrap();
            target.forward(&history[..history.len() - 1], LogitsSelection::Last).unwrap();
            for (k, cut, junk) in steps {
                // The target's own continuation, corrupted at position `cut` (if < k).
                let mut proposal = oracle.propose(&history, k, &sampler).unwrap().tokens;
                let corrupted = cut < proposal.len() && proposal[cut] != junk;
                if corrupted {
                    proposal[cut] = junk;
                }
                let last = history[history.len() - 1];
                let v = specula_verify::verify(&mut target, last, &proposal, &[], &history, &mut sampler).unwrap().verdict;
                let expected = if corrupted { cut } else { proposal.len() };
                prop_assert_eq!(v.accepted, expected, "accepts exactly the uncorrupted prefix");
                history.extend_from_slice(&proposal[..v.accepted]);
                history.push(v.next);
                prop_assert_eq!(target.seq_len(), history.len() - 1);
                // Target cache == fresh recompute.
                let mut fresh = target.clone();
                fresh.reset();
                fresh.forward(&history[..history.len() - 1], LogitsSelection::Last).unwrap();
                let (a, b) = (last_logits(&mut target, &history), last_logits(&mut fresh, &history));
                let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
                prop_assert!(diff < 1e-3, "target cache diverged by {}", diff);
                // The rolled-back draft proposes exactly what a fresh draft proposes.
                let mut fresh_draft = DraftModel::new(draft_model.clone(), vocab);
                let got = draft.propose(&history, k, &sampler).unwrap().tokens;
                let want = fresh_draft.propose(&history, k, &sampler).unwrap().tokens;
                prop_assert_eq!(got, want);
                prop_assert!(draft.cached_len() < history.len() + k);
            }
        }
    }
}

/// Greedy speculation stays token-identical on every weight format Specula's CPU kernels run:
/// Q4_K, Q6_K, Q5_0, Q8_0 and bf16 (dequantized at load), with k = 1..=6.
#[test]
fn greedy_speculation_is_token_identical_on_every_kernel_format() {
    use candle_core::quantized::GgmlDType;
    let dir = tempfile::tempdir().unwrap();
    for (quant, dtype) in [
        (GgmlDType::Q4K, None),
        (GgmlDType::Q6K, None),
        (GgmlDType::Q5_0, None),
        (GgmlDType::Q8_0, None),
        (GgmlDType::Q8_0, Some(candle_core::DType::BF16)),
    ] {
        let base = SyntheticSpec {
            hidden_size: 256,
            intermediate_size: 512,
            quant,
            ..SyntheticSpec::tiny_qwen2()
        };
        let draft_spec = SyntheticSpec {
            seed: 9,
            num_layers: 1,
            ..base.clone()
        };
        let opts = LoadOptions {
            dtype,
            ..LoadOptions::default()
        };
        let load_one = |spec: &SyntheticSpec, name: &str| {
            let path = dir.path().join(name);
            spec.write_gguf(&path).unwrap();
            load(&ModelSource::gguf(&path), &opts).unwrap()
        };
        let t = load_one(&base, &format!("t-{quant:?}.gguf"));
        let d = load_one(&draft_spec, &format!("d-{quant:?}.gguf"));
        let mut plain = Generator::new(t.model.clone(), t.tokenizer.clone()).unwrap();
        // A draft scoring only the first 100 ids: those logits bit-identical to the full
        // draft's, the rest -inf (the bf16 kernel cannot be sliced: no limit there).
        let mut limited = d.model.clone();
        assert_eq!(limited.limit_output_vocab(100), dtype.is_none());
        if dtype.is_none() {
            let rows = |m: &mut LlamaModel| {
                m.reset();
                m.forward(&[1, 2, 3], LogitsSelection::All)
                    .unwrap()
                    .to_vec2::<f32>()
                    .unwrap()
            };
            let (full, part) = (rows(&mut d.model.clone()), rows(&mut limited));
            for (f, p) in full.iter().zip(&part) {
                assert_eq!(f[..100], p[..100], "{quant:?}: limited logits differ");
                assert!(p[100..].iter().all(|&v| v == f32::NEG_INFINITY));
            }
            // Ids past the limit that a context uses are scored too, bit for bit; asking for the
            // limit again forgets them.
            let mut extended = limited.clone();
            assert!(extended.extend_output_vocab(&[250, 120, 5, 250, 319]));
            assert!(extended.extend_output_vocab(&[121]));
            let scored = |id: usize| id < 100 || [120, 121, 250, 319].contains(&id);
            for (f, p) in full.iter().zip(&rows(&mut extended)) {
                for (id, (a, b)) in f.iter().zip(p).enumerate() {
                    let want = if scored(id) { *a } else { f32::NEG_INFINITY };
                    assert_eq!(b.to_bits(), want.to_bits(), "{quant:?}: id {id}");
                }
            }
            assert!(extended.limit_output_vocab(100));
            assert_eq!(rows(&mut extended), part);
            limited.reset();
        }
        for k in 1..=6 {
            for (name, draft) in [
                ("random", d.model.clone()),
                ("identical", t.model.clone()),
                ("vocab-limited identical", {
                    let mut m = t.model.clone();
                    m.limit_output_vocab(100);
                    m
                }),
                ("vocab-limited random", limited.clone()),
            ] {
                let g = Generator::new(t.model.clone(), t.tokenizer.clone()).unwrap();
                let mut g = if name.starts_with("vocab-limited") && dtype.is_none() {
                    // Through the draft runner's own limit: it also scores the context's ids.
                    let drafter = DraftModel::new(draft, 320).with_vocab_limit(100);
                    assert_eq!(drafter.vocab_limit(), Some(100));
                    g.with_proposer(Box::new(drafter), k).unwrap()
                } else {
                    g.with_draft(draft, k).unwrap()
                };
                for p in PROMPTS {
                    let want = plain.generate(p, &greedy(24)).unwrap();
                    let got = g.generate(p, &greedy(24)).unwrap();
                    assert_eq!(
                        got.tokens, want.tokens,
                        "{quant:?} {dtype:?} {name} draft, k={k}, {p:?}"
                    );
                }
            }
        }
    }
}
