//! Decoder and loader correctness on synthetic random-weight models.

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Tensor};
use specula_core::{CausalLm, LogitsSelection};
use specula_models::synthetic::SyntheticSpec;
use specula_models::{load, Architecture, LlamaModel, LoadOptions, ModelSource};

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn gguf_model(spec: &SyntheticSpec, dir: &tempfile::TempDir) -> LlamaModel {
    let path = dir.path().join("m.gguf");
    spec.write_gguf(&path).unwrap();
    load(&ModelSource::gguf(&path), &LoadOptions::default())
        .unwrap()
        .model
}

fn st_model(spec: &SyntheticSpec, dir: &tempfile::TempDir, dtype: DType) -> LlamaModel {
    let d = dir.path().join("st");
    spec.write_safetensors(&d, dtype).unwrap();
    let opts = LoadOptions {
        dtype: Some(dtype),
        ..Default::default()
    };
    load(&ModelSource::Safetensors(d), &opts).unwrap().model
}

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_vec2::<f32>().unwrap()
}

fn argmax(v: &[f32]) -> usize {
    specula_core::sampling::argmax(v) as usize
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

const SEQ: [u32; 12] = [5, 77, 12, 300, 9, 41, 41, 260, 3, 199, 18, 64];

/// Logits of every position of SEQ computed one token at a time through the cache.
fn incremental(m: &mut LlamaModel) -> Vec<Vec<f32>> {
    m.reset();
    SEQ.iter()
        .map(|&t| rows(&m.forward(&[t], LogitsSelection::Last).unwrap()).remove(0))
        .collect()
}

/// Logits of every position from one full forward of the whole sequence.
fn full(m: &mut LlamaModel) -> Vec<Vec<f32>> {
    m.reset();
    rows(&m.forward(&SEQ, LogitsSelection::All).unwrap())
}

fn all_models() -> Vec<(String, LlamaModel, tempfile::TempDir)> {
    let mut out = vec![];
    let k_quant = SyntheticSpec {
        hidden_size: 256,
        intermediate_size: 512,
        quant: GgmlDType::Q4K,
        ..SyntheticSpec::tiny_qwen2()
    };
    let q6 = SyntheticSpec {
        quant: GgmlDType::Q6K,
        arch: Architecture::Llama,
        ..k_quant.clone()
    };
    let q5 = SyntheticSpec {
        quant: GgmlDType::Q5_0,
        ..SyntheticSpec::tiny_qwen2()
    };
    for (name, spec) in [
        ("qwen2-q8_0", SyntheticSpec::tiny_qwen2()),
        ("llama-q4_1-tied", SyntheticSpec::tiny_llama()),
        ("qwen2-q4_k", k_quant),
        ("llama-q6_k", q6),
        ("qwen2-q5_0", q5),
    ] {
        let dir = tmp();
        let m = gguf_model(&spec, &dir);
        out.push((format!("gguf {name}"), m, dir));
    }
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let dir = tmp();
        let m = st_model(&SyntheticSpec::tiny_qwen2(), &dir, dtype);
        out.push((format!("safetensors {dtype:?}"), m, dir));
    }
    out
}

#[test]
fn incremental_decoding_equals_full_recompute() {
    for (name, mut m, _dir) in all_models() {
        let inc = incremental(&mut m);
        let full = full(&mut m);
        let tol = if name.contains("BF16") {
            0.25
        } else if name.contains("F16") {
            5e-2
        } else {
            1e-3
        };
        for (i, (a, b)) in inc.iter().zip(&full).enumerate() {
            let d = max_abs_diff(a, b);
            assert!(d < tol, "{name}: position {i} differs by {d}");
            // Argmax must agree unless the top two logits are within the dtype's rounding.
            let mut sorted = b.clone();
            sorted.sort_by(|x, y| y.total_cmp(x));
            if sorted[0] - sorted[1] > tol {
                assert_eq!(
                    argmax(a),
                    argmax(b),
                    "{name}: argmax differs at position {i}"
                );
            }
        }
    }
}

/// A forward of n tokens returns the same logits as n single-token forwards (argmax identical,
/// values close) and, on CPU, bit-exact: `Linear` computes small batches row by row
/// (see `BATCH_INVARIANT_MAX_ROWS` and ARCHITECTURE.md).
#[test]
fn multi_token_forward_equals_single_steps() {
    for (name, mut m, _dir) in all_models() {
        let mut max_diff = 0.0f32;
        let prefix = &SEQ[..4];
        m.reset();
        m.forward(prefix, LogitsSelection::Last).unwrap();
        let mut singles = vec![];
        for &t in &SEQ[4..9] {
            singles.push(rows(&m.forward(&[t], LogitsSelection::Last).unwrap()).remove(0));
        }
        m.truncate(4).unwrap();
        let multi = rows(&m.forward(&SEQ[4..9], LogitsSelection::All).unwrap());
        assert_eq!(m.seq_len(), 9);
        let mut exact = true;
        for (a, b) in singles.iter().zip(&multi) {
            exact &= a == b;
            max_diff = max_diff.max(max_abs_diff(a, b));
            assert!(max_abs_diff(a, b) < 5e-2, "{name}: {}", max_abs_diff(a, b));
            assert_eq!(argmax(a), argmax(b), "{name}");
        }
        assert!(
            exact,
            "{name}: CPU forward must be batch-invariant (bit-exact), see ARCHITECTURE.md"
        );
        eprintln!("{name}: n-token forward bit-exact = {exact} (max |diff| {max_diff:e})");
    }
}

/// Decode-size forwards on the host path (plain buffers between Specula's kernels) give the
/// logits of candle's tensor operations bit for bit, for one token and for several, on every
/// format whose matrices all run on the kernels (both RoPE styles, with and without biases).
#[test]
fn host_path_gives_the_tensor_path_logits_bit_for_bit() {
    for (name, mut m, _dir) in all_models() {
        let on_kernels = ["q8_0", "q4_k", "q6_k", "q5_0", "BF16"]
            .iter()
            .any(|f| name.contains(f));
        assert_eq!(m.uses_host_path(), on_kernels, "{name}");
        let mut run = |host: bool| {
            m.set_host_path(host);
            m.reset();
            let mut out = rows(&m.forward(&SEQ[..3], LogitsSelection::All).unwrap());
            for &t in &SEQ[3..6] {
                out.extend(rows(&m.forward(&[t], LogitsSelection::Last).unwrap()));
            }
            out.extend(rows(&m.forward(&SEQ[6..12], LogitsSelection::All).unwrap()));
            out
        };
        let (host, tensors) = (run(true), run(false));
        assert_eq!(host.len(), 12);
        for (i, (a, b)) in host.iter().zip(&tensors).enumerate() {
            let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(
                same,
                "{name}: position {i} differs by {}",
                max_abs_diff(a, b)
            );
        }
    }
}

#[test]
fn logits_selection_and_rollback() {
    let dir = tmp();
    let mut m = gguf_model(&SyntheticSpec::tiny_qwen2(), &dir);
    let all = full(&mut m);
    m.reset();
    let last3 = rows(&m.forward(&SEQ, LogitsSelection::LastN(3)).unwrap());
    assert_eq!(last3.len(), 3);
    assert_eq!(last3, all[SEQ.len() - 3..].to_vec());
    // Roll back 5 tokens, feed different ones, roll back again, re-feed the originals.
    m.truncate(7).unwrap();
    m.forward(&[1, 2, 3], LogitsSelection::Last).unwrap();
    m.truncate(7).unwrap();
    let again = rows(&m.forward(&SEQ[7..], LogitsSelection::All).unwrap());
    assert_eq!(again, all[7..].to_vec());
    assert!(m.truncate(100).is_err());
}

#[test]
fn gguf_f32_and_safetensors_f32_agree() {
    let spec = SyntheticSpec {
        quant: GgmlDType::F32,
        ..SyntheticSpec::tiny_qwen2()
    };
    let (d1, d2) = (tmp(), tmp());
    let mut a = gguf_model(&spec, &d1);
    let mut b = st_model(&spec, &d2, DType::F32);
    let (x, y) = (full(&mut a), full(&mut b));
    for (p, q) in x.iter().zip(&y) {
        assert!(max_abs_diff(p, q) < 1e-4);
    }
}

#[test]
fn context_limit_is_an_error() {
    let dir = tmp();
    let path = dir.path().join("m.gguf");
    SyntheticSpec::tiny_qwen2().write_gguf(&path).unwrap();
    let opts = LoadOptions {
        max_seq_len: Some(8),
        ..Default::default()
    };
    let mut m = load(&ModelSource::gguf(&path), &opts).unwrap().model;
    m.forward(&SEQ[..6], LogitsSelection::Last).unwrap();
    let err = m.forward(&SEQ[..3], LogitsSelection::Last).unwrap_err();
    assert!(err.to_string().contains("context length exceeded"), "{err}");
    assert_eq!(m.seq_len(), 6);
    let err = m.forward(&[999], LogitsSelection::Last).unwrap_err();
    assert!(
        err.to_string().contains("outside the model's vocabulary"),
        "{err}"
    );
}

#[test]
fn dequantized_gguf_runs_in_bf16() {
    let dir = tmp();
    let path = dir.path().join("m.gguf");
    SyntheticSpec::tiny_qwen2().write_gguf(&path).unwrap();
    let mut q = load(&ModelSource::gguf(&path), &LoadOptions::default())
        .unwrap()
        .model;
    let opts = LoadOptions {
        dtype: Some(DType::BF16),
        ..Default::default()
    };
    let mut b = load(&ModelSource::gguf(&path), &opts).unwrap().model;
    let (x, y) = (full(&mut q), full(&mut b));
    let agree = x
        .iter()
        .zip(&y)
        .filter(|(p, q)| argmax(p) == argmax(q))
        .count();
    assert!(agree >= SEQ.len() - 1, "{agree}");
}

/// A limited output vocabulary ([`LlamaModel::limit_output_vocab`]) extended by a context's ids
/// ([`LlamaModel::extend_output_vocab`]) scores exactly the first ids and the added ones, with the
/// full model's values (bit for bit through Specula's kernels), on every model whose projection
/// can be sliced; the others say so and keep scoring everything.
#[test]
fn limited_output_vocab_scores_its_ids_and_the_added_ones() {
    for (name, mut m, _dir) in all_models() {
        let want = full(&mut m);
        let mut limited = m.clone();
        if !limited.limit_output_vocab(100) {
            // Candle's Q4_1 matmul and the bf16 kernel cannot be sliced.
            assert!(
                name.contains("q4_1") || name.contains("BF16"),
                "{name}: not sliced"
            );
            assert_eq!(full(&mut limited), want);
            continue;
        }
        assert!(limited.extend_output_vocab(&[250, 120, 3, 250, 9999]));
        let got = full(&mut limited);
        let exact = name.starts_with("gguf");
        for (w, g) in want.iter().zip(&got) {
            for (id, (a, b)) in w.iter().zip(g).enumerate() {
                if id < 100 || id == 120 || id == 250 {
                    let close = if exact { a == b } else { (a - b).abs() < 1e-3 };
                    assert!(close, "{name}: id {id}: {b} vs {a}");
                } else {
                    assert_eq!(*b, f32::NEG_INFINITY, "{name}: id {id} scored");
                }
            }
        }
        // Lifting the limit scores everything again, and forgets the added ids.
        assert!(limited.limit_output_vocab(usize::MAX));
        assert!(limited.limit_output_vocab(100));
        assert!(full(&mut limited)
            .iter()
            .all(|r| r[120] == f32::NEG_INFINITY));
    }
}

/// The KV cache is f16 on the CPU unless asked otherwise; f32 and f16 caches give close logits
/// (f16 rounds each cached value by at most 2^-11 relative; this random model's layers amplify
/// that to about 1 % of its largest logit), and a dtype the CPU attention cannot
/// read is refused with a message saying what to use.
#[test]
fn kv_cache_dtype_defaults_to_f16_and_is_checked() {
    let dir = tmp();
    let path = dir.path().join("m.gguf");
    SyntheticSpec::tiny_qwen2().write_gguf(&path).unwrap();
    let with = |kv_dtype| {
        let opts = LoadOptions {
            kv_dtype,
            ..Default::default()
        };
        load(&ModelSource::gguf(&path), &opts)
    };
    let mut half = with(None).unwrap().model;
    let mut single = with(Some(DType::F32)).unwrap().model;
    assert_eq!(half.cache().config().dtype, DType::F16);
    assert_eq!(single.cache().config().dtype, DType::F32);
    let (a, b) = (incremental(&mut half), incremental(&mut single));
    for (x, y) in a.iter().zip(&b) {
        let scale = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = max_abs_diff(x, y);
        assert!(d <= 0.03 * scale, "{d} against logits up to {scale}");
    }
    let agree = a
        .iter()
        .zip(&b)
        .filter(|(x, y)| argmax(x) == argmax(y))
        .count();
    assert!(agree >= SEQ.len() - 1, "{agree}");
    let err = with(Some(DType::BF16)).unwrap_err().to_string();
    assert!(err.contains("use F16 or F32"), "{err}");
}
