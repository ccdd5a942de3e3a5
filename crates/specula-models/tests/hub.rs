//! The hub code path, offline: a local hub cache built in a temp dir resolves like a download.

use specula_core::{CausalLm, LogitsSelection};
use specula_models::synthetic::SyntheticSpec;
use specula_models::{hub, load, HubFile, LoadOptions, ModelSource};
use std::path::Path;

/// Lays files out the way `hf-hub` caches them:
/// `models--owner--name/{refs/main, snapshots/<commit>/<file>}`.
fn make_cache(cache: &Path, repo: &str, files: &[(&str, &Path)]) {
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let root = cache.join(format!("models--{}", repo.replace('/', "--")));
    std::fs::create_dir_all(root.join("refs")).unwrap();
    std::fs::write(root.join("refs").join("main"), commit).unwrap();
    let snap = root.join("snapshots").join(commit);
    std::fs::create_dir_all(&snap).unwrap();
    for (name, src) in files {
        std::fs::copy(src, snap.join(name)).unwrap();
    }
}

#[test]
fn gguf_resolves_through_a_local_hub_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("tiny.gguf");
    SyntheticSpec::tiny_qwen2().write_gguf(&model).unwrap();
    let cache = tmp.path().join("hub");
    make_cache(&cache, "specula/tiny-qwen2", &[("tiny-q8_0.gguf", &model)]);

    let path = hub::resolve(
        &HubFile::new("specula/tiny-qwen2", "tiny-q8_0.gguf"),
        Some(cache.clone()),
    )
    .unwrap();
    assert!(path.starts_with(&cache));

    let source = ModelSource::parse("specula/tiny-qwen2:tiny-q8_0.gguf");
    let opts = LoadOptions {
        hub_cache: Some(cache.clone()),
        ..Default::default()
    };
    let mut m = load(&source, &opts).unwrap().model;
    let hub_logits = m
        .forward(&[1, 2, 3], LogitsSelection::Last)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let mut direct = load(&ModelSource::gguf(&model), &LoadOptions::default())
        .unwrap()
        .model;
    let direct_logits = direct
        .forward(&[1, 2, 3], LogitsSelection::Last)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert_eq!(hub_logits, direct_logits);
}

#[test]
fn safetensors_checkpoint_resolves_through_a_local_hub_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let st = tmp.path().join("st");
    SyntheticSpec::tiny_llama()
        .write_safetensors(&st, candle_core::DType::F32)
        .unwrap();
    let files = [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors",
    ];
    let paths: Vec<_> = files.iter().map(|f| st.join(f)).collect();
    let pairs: Vec<(&str, &Path)> = files
        .iter()
        .copied()
        .zip(paths.iter().map(|p| p.as_path()))
        .collect();
    let cache = tmp.path().join("hub");
    make_cache(&cache, "specula/tiny-llama", &pairs);
    let opts = LoadOptions {
        hub_cache: Some(cache),
        ..Default::default()
    };
    let loaded = load(&ModelSource::parse("specula/tiny-llama"), &opts).unwrap();
    assert_eq!(loaded.model.config().num_layers, 2);
    assert!(loaded.tokenizer.chat_template().is_some());
}

/// Without the `download` feature a cache miss is an immediate error naming the feature.
/// (With it, a miss goes to the network, which tests must not touch.)
#[cfg(not(feature = "download"))]
#[test]
fn missing_hub_file_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    make_cache(&cache, "specula/empty", &[]);
    let err = hub::resolve(&HubFile::new("specula/empty", "absent.gguf"), Some(cache)).unwrap_err();
    assert!(err.to_string().contains("`download` feature"), "{err}");
}
