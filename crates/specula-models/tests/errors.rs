//! Every way a model file can be wrong gives a clear error, never a panic.

use candle_core::quantized::GgmlDType;
use specula_models::synthetic::SyntheticSpec;
use specula_models::{load, LoadOptions, ModelError, ModelSource, Tokenizer};
use std::path::Path;

fn load_path(p: &Path) -> Result<specula_models::LoadedModel, ModelError> {
    load(&ModelSource::gguf(p), &LoadOptions::default())
}

fn write_tiny(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("m.gguf");
    SyntheticSpec::tiny_qwen2().write_gguf(&p).unwrap();
    p
}

#[test]
fn missing_file() {
    let err = load_path(Path::new("/nonexistent/model.gguf")).unwrap_err();
    assert!(matches!(err, ModelError::NotFound(_)), "{err}");
    assert!(err.to_string().contains("fetch-models.sh"));
    let err = load(
        &ModelSource::Safetensors("/nonexistent/dir".into()),
        &LoadOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, ModelError::NotFound(_)), "{err}");
}

#[test]
fn truncated_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_tiny(dir.path());
    let bytes = std::fs::read(&p).unwrap();
    for keep in [bytes.len() - 100, bytes.len() / 2] {
        std::fs::write(&p, &bytes[..keep]).unwrap();
        let err = load_path(&p).unwrap_err();
        assert!(matches!(err, ModelError::Truncated { .. }), "{err}");
        assert!(err.to_string().contains("truncated"));
    }
    // Truncated inside the header.
    std::fs::write(&p, &bytes[..64]).unwrap();
    let err = load_path(&p).unwrap_err();
    assert!(matches!(err, ModelError::InvalidGguf { .. }), "{err}");
}

#[test]
fn corrupt_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("junk.gguf");
    std::fs::write(&p, b"this is not a gguf file at all, just text").unwrap();
    let err = load_path(&p).unwrap_err();
    assert!(matches!(err, ModelError::InvalidGguf { .. }), "{err}");
    std::fs::write(&p, b"").unwrap();
    assert!(load_path(&p).is_err());
}

/// Replaces the bytes of `from` with `to` (same length) once.
fn patch(bytes: &mut [u8], from: &[u8], to: &[u8]) {
    let i = bytes
        .windows(from.len())
        .position(|w| w == from)
        .expect("pattern present");
    bytes[i..i + to.len()].copy_from_slice(to);
}

#[test]
fn unsupported_architecture() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_tiny(dir.path());
    let mut bytes = std::fs::read(&p).unwrap();
    // general.architecture = "qwen2" -> "gemm3" (same length).
    let needle = b"\x05\x00\x00\x00\x00\x00\x00\x00qwen2";
    patch(&mut bytes, needle, b"\x05\x00\x00\x00\x00\x00\x00\x00gemm3");
    std::fs::write(&p, &bytes).unwrap();
    let err = load_path(&p).unwrap_err();
    assert!(
        matches!(err, ModelError::UnsupportedArchitecture(ref a) if a == "gemm3"),
        "{err}"
    );
}

#[test]
fn unsupported_quantization() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.gguf");
    let spec = SyntheticSpec {
        quant: GgmlDType::Q8_0,
        ..SyntheticSpec::tiny_qwen2()
    };
    spec.write_gguf(&p).unwrap();
    let mut bytes = std::fs::read(&p).unwrap();
    // The tensor info of `output.weight`: name, n_dims=2, dims (64, 320), dtype Q8_0 (=8).
    let mut info = b"output.weight\x02\x00\x00\x00".to_vec();
    info.extend_from_slice(&64u64.to_le_bytes());
    info.extend_from_slice(&320u64.to_le_bytes());
    let mut from = info.clone();
    from.extend_from_slice(&8u32.to_le_bytes());
    let mut to = info;
    to.extend_from_slice(&16u32.to_le_bytes()); // IQ2_XXS: not readable by candle
    patch(&mut bytes, &from, &to);
    std::fs::write(&p, &bytes).unwrap();
    let err = load_path(&p).unwrap_err();
    assert!(
        matches!(err, ModelError::UnsupportedQuantization(_)),
        "{err}"
    );
}

#[test]
fn tokenizer_larger_than_model_vocabulary() {
    let dir = tempfile::tempdir().unwrap();
    let spec = SyntheticSpec {
        vocab_size: 100, // the synthetic tokenizer has ~290 entries
        ..SyntheticSpec::tiny_qwen2()
    };
    let p = dir.path().join("small-vocab.gguf");
    spec.write_gguf(&p).unwrap();
    let err = load_path(&p).unwrap_err();
    assert!(
        matches!(err, ModelError::VocabMismatch { model: 100, .. }),
        "{err}"
    );
}

#[test]
fn missing_tokenizer_and_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("st");
    SyntheticSpec::tiny_qwen2()
        .write_safetensors(&st, candle_core::DType::F32)
        .unwrap();
    std::fs::write(st.join("config.json"), "{\"model_type\": \"qwen2\"}").unwrap();
    let err = load(
        &ModelSource::Safetensors(st.clone()),
        &LoadOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, ModelError::InvalidConfig(_)), "{err}");
    assert!(matches!(
        Tokenizer::from_file(dir.path().join("none.json")),
        Err(ModelError::NotFound(_))
    ));
}
