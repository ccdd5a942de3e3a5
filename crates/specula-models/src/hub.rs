//! Resolving model files through the Hugging Face hub cache (and downloading them when the
//! `download` feature is on).

use crate::{ModelError, Result};
use hf_hub::{Cache, Repo, RepoType};
use std::path::PathBuf;

/// A file in a hub model repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubFile {
    /// `owner/name`.
    pub repo: String,
    /// Path of the file in the repository.
    pub file: String,
    /// Branch, tag or commit (default `main`).
    pub revision: String,
}

impl HubFile {
    /// A file at revision `main`.
    pub fn new(repo: impl Into<String>, file: impl Into<String>) -> Self {
        HubFile {
            repo: repo.into(),
            file: file.into(),
            revision: "main".into(),
        }
    }
}

/// Where hub files are cached: `cache_dir`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
pub fn hub_cache(cache_dir: Option<PathBuf>) -> Cache {
    match cache_dir {
        Some(dir) => Cache::new(dir),
        None => Cache::from_env(),
    }
}

/// Returns the local path of `file`: from the hub cache when present (no network), otherwise
/// downloaded into the cache (feature `download`).
pub fn resolve(file: &HubFile, cache_dir: Option<PathBuf>) -> Result<PathBuf> {
    let cache = hub_cache(cache_dir);
    let repo = Repo::with_revision(file.repo.clone(), RepoType::Model, file.revision.clone());
    if let Some(path) = cache.repo(repo.clone()).get(&file.file) {
        return Ok(path);
    }
    download(cache, repo, file)
}

#[cfg(feature = "download")]
fn download(cache: Cache, repo: Repo, file: &HubFile) -> Result<PathBuf> {
    let api = hf_hub::api::sync::ApiBuilder::from_cache(cache)
        .with_progress(true)
        .build()
        .map_err(|e| ModelError::Hub(e.to_string()))?;
    api.repo(repo).get(&file.file).map_err(|e| {
        ModelError::Hub(format!(
            "cannot download {}/{} (revision {}): {e}; check the repository name and your network, or set HF_HUB_OFFLINE and place the file in the cache",
            file.repo, file.file, file.revision
        ))
    })
}

#[cfg(not(feature = "download"))]
fn download(cache: Cache, _repo: Repo, file: &HubFile) -> Result<PathBuf> {
    Err(ModelError::Hub(format!(
        "{}/{} (revision {}) is not in the hub cache at {} and this build cannot download; enable the `download` feature",
        file.repo,
        file.file,
        file.revision,
        cache.path().display()
    )))
}
