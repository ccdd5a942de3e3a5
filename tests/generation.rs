//! Plain generation on synthetic models and on a scripted model: stop conditions, streaming,
//! sampling, metrics and input errors.

mod common;

use common::{synthetic_tokenizer, ScriptedLm};
use specula::{
    CausalLm, Error, FinishReason, GenerateParams, Generator, LogitsSelection, ModelSource,
    SamplingParams, TokenId,
};
use specula_core::CoreError;
use specula_models::synthetic::{SyntheticSpec, SyntheticTokenizer};

fn scripted(text: &str, then_eos: bool) -> (Generator, Vec<TokenId>) {
    let tok = synthetic_tokenizer();
    let mut script = tok.encode(text).unwrap();
    let expected = script.clone();
    if then_eos {
        script.push(SyntheticTokenizer::new().eos);
    }
    (
        Generator::new(ScriptedLm::new(script, 320), tok).unwrap(),
        expected,
    )
}

fn synthetic_generator(dir: &tempfile::TempDir) -> Generator {
    let path = dir.path().join("m.gguf");
    SyntheticSpec::tiny_qwen2().write_gguf(&path).unwrap();
    Generator::builder()
        .model(ModelSource::gguf(&path))
        .build()
        .unwrap()
}

#[test]
fn eos_ends_generation_and_is_not_returned() {
    let (mut g, expected) = scripted("hello world", true);
    let out = g.generate("x", &GenerateParams::new(50)).unwrap();
    assert_eq!(out.finish_reason, FinishReason::Eos);
    assert_eq!(out.tokens, expected);
    assert_eq!(out.text, "hello world");
    assert_eq!(out.metrics.new_tokens, expected.len());
    // ignore_eos keeps going until max tokens.
    let p = GenerateParams {
        ignore_eos: true,
        ..GenerateParams::new(20)
    };
    let out = g.generate("x", &p).unwrap();
    assert_eq!(
        (out.finish_reason, out.tokens.len()),
        (FinishReason::MaxTokens, 20)
    );
}

#[test]
fn max_new_tokens_is_exact() {
    let (mut g, expected) = scripted("the and for the and", false);
    for n in 1..=expected.len() {
        let out = g.generate("x", &GenerateParams::new(n)).unwrap();
        assert_eq!(out.tokens, expected[..n].to_vec());
        assert_eq!(out.finish_reason, FinishReason::MaxTokens);
        assert_eq!(out.metrics.inter_token_ms.len(), n - 1);
    }
}

#[test]
fn stop_strings_end_generation_and_never_stream() {
    let (mut g, _) = scripted("def f(x):\n    return x\n\ndef g():", false);
    let p = GenerateParams::new(100).stop("\n\n");
    let mut streamed = String::new();
    let out = g
        .generate_stream("x", &p, |d| streamed.push_str(d))
        .unwrap();
    assert_eq!(out.finish_reason, FinishReason::StopString);
    assert_eq!(out.text, "def f(x):\n    return x");
    assert_eq!(streamed, out.text);
    // A stop string split across tokens ("retu" + "rn").
    let p = GenerateParams::new(100).stop("turn");
    let out = g.generate("x", &p).unwrap();
    assert_eq!(out.text, "def f(x):\n    re");
}

#[test]
fn streaming_never_splits_a_character() {
    // The synthetic vocabulary has no multi-byte merges: every non-ASCII char spans tokens.
    let text = "héllo wörld → 世界 🎉";
    let (mut g, expected) = scripted(text, true);
    assert!(expected.len() > text.chars().count());
    let mut deltas = vec![];
    let out = g
        .generate_stream("x", &GenerateParams::new(100), |d| {
            deltas.push(d.to_string())
        })
        .unwrap();
    assert_eq!(out.text, text);
    assert_eq!(deltas.concat(), text);
    assert!(deltas.iter().all(|d| !d.contains('\u{FFFD}')), "{deltas:?}");
}

#[test]
fn greedy_generation_matches_a_full_recompute_argmax_loop() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = synthetic_generator(&dir);
    let out = g
        .generate(
            "def hello",
            &GenerateParams {
                ignore_eos: true,
                ..GenerateParams::new(24)
            },
        )
        .unwrap();
    assert_eq!(out.tokens.len(), 24);
    // Reference: recompute the whole sequence from scratch for every token.
    let path = dir.path().join("m.gguf");
    let mut m = specula_models::load(&ModelSource::gguf(&path), &Default::default())
        .unwrap()
        .model;
    let mut seq = g.tokenizer().encode("def hello").unwrap();
    for &t in &out.tokens {
        m.reset();
        let logits = m
            .forward(&seq, LogitsSelection::Last)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(specula_core::sampling::argmax(&logits), t);
        seq.push(t);
    }
    assert_eq!(out.text, g.tokenizer().decode(&out.tokens).unwrap());
}

#[test]
fn seeded_sampling_is_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = synthetic_generator(&dir);
    let sampling = SamplingParams {
        temperature: 0.9,
        top_p: 0.95,
        top_k: 40,
        seed: 7,
        ..Default::default()
    };
    let p = GenerateParams {
        ignore_eos: true,
        ..GenerateParams::new(16)
    }
    .sampling(sampling.clone());
    let a = g.generate("hello", &p).unwrap();
    let b = g.generate("hello", &p).unwrap();
    assert_eq!(a.tokens, b.tokens);
    let other = p.clone().sampling(SamplingParams {
        seed: 8,
        ..sampling
    });
    let c = g.generate("hello", &other).unwrap();
    assert_ne!(a.tokens, c.tokens);
}

#[test]
fn metrics_are_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = synthetic_generator(&dir);
    let out = g
        .generate(
            "def hello",
            &GenerateParams {
                ignore_eos: true,
                ..GenerateParams::new(10)
            },
        )
        .unwrap();
    let m = &out.metrics;
    assert_eq!(
        m.prompt_tokens,
        g.tokenizer().encode("def hello").unwrap().len()
    );
    assert_eq!(m.new_tokens, 10);
    assert_eq!(m.inter_token_ms.len(), 9);
    assert!(m.ttft_ms >= m.prefill_ms && m.total_ms >= m.ttft_ms);
    assert!(
        m.inter_token.p50_ms <= m.inter_token.p95_ms
            && m.inter_token.p95_ms <= m.inter_token.p99_ms
    );
    assert!(m.decode_tokens_per_s > 0.0 && m.prefill_tokens_per_s > 0.0);
    let json = serde_json::to_value(&out).unwrap();
    assert_eq!(json["finish_reason"], "max_tokens");
    assert!(json["metrics"]["inter_token"]["p99_ms"].is_number());
}

#[test]
fn input_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = synthetic_generator(&dir);
    assert!(matches!(
        g.generate("", &GenerateParams::new(4)),
        Err(Error::Core(CoreError::EmptyPrompt))
    ));
    let long = "hello world ".repeat(400); // > 512 context of the tiny model
    let err = g.generate(&long, &GenerateParams::new(4)).unwrap_err();
    assert!(
        matches!(err, Error::Core(CoreError::ContextExceeded { .. })),
        "{err}"
    );
    for bad in [
        SamplingParams {
            temperature: -0.5,
            ..Default::default()
        },
        SamplingParams {
            top_p: 2.0,
            ..Default::default()
        },
        SamplingParams {
            min_p: -0.1,
            ..Default::default()
        },
        SamplingParams {
            repetition_penalty: f32::INFINITY,
            ..Default::default()
        },
    ] {
        let err = g
            .generate("hi", &GenerateParams::new(4).sampling(bad))
            .unwrap_err();
        assert!(
            matches!(err, Error::Core(CoreError::InvalidParameter { .. })),
            "{err}"
        );
    }
    let err = g.generate("hi", &GenerateParams::new(0)).unwrap_err();
    assert!(err.to_string().contains("max_new_tokens"));
    // A tokenizer with more ids than the model has rows.
    let err = Generator::new(ScriptedLm::new(vec![1], 100), synthetic_tokenizer()).unwrap_err();
    assert!(
        matches!(err, Error::Model(specula::ModelError::VocabMismatch { .. })),
        "{err}"
    );
    assert!(Generator::builder().build().is_err());
}

#[test]
fn context_full_is_a_finish_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    SyntheticSpec::tiny_qwen2().write_gguf(&path).unwrap();
    let mut g = Generator::builder()
        .model(ModelSource::gguf(&path))
        .max_seq_len(12)
        .build()
        .unwrap();
    let p = GenerateParams {
        ignore_eos: true,
        ..GenerateParams::new(100)
    };
    let out = g.generate("hello", &p).unwrap();
    assert_eq!(out.finish_reason, FinishReason::ContextFull);
    let prompt_len = g.tokenizer().encode("hello").unwrap().len();
    assert_eq!(prompt_len + out.tokens.len(), 12);
}

#[test]
fn chat_template_renders() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = synthetic_generator(&dir);
    let msgs = [specula::ChatMessage::user("hello")];
    let prompt = g.tokenizer().apply_chat_template(&msgs).unwrap();
    assert_eq!(
        prompt,
        "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    );
    let ids = g.tokenizer().encode(&prompt).unwrap();
    assert!(
        ids.contains(&SyntheticTokenizer::new().eos),
        "special tokens are recognised"
    );
    g.generate_chat(&msgs, &GenerateParams::new(4), |_| {})
        .unwrap();
}
