//! The key/value cache manager of Specula.
//!
//! One [`KvCache`] holds the keys and values of one sequence for every layer of a model. Storage is
//! preallocated in chunks of [`KvConfig::chunk`] positions, so appending a token never reallocates;
//! when a chunk fills, every layer grows by whole chunks at once, up to the model's context length.
//!
//! Speculative decoding appends several drafted tokens and then rolls back the rejected ones:
//! [`KvCache::truncate`] is O(1) (it moves the length; the stale rows are overwritten by the next
//! append and are never visible through [`KvCache::append`]'s returned views).
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use specula_kv::{KvCache, KvConfig};
//!
//! let dev = Device::Cpu;
//! let mut cache = KvCache::new(KvConfig {
//!     n_layers: 1, n_kv_heads: 2, head_dim: 4, max_len: 64, chunk: 16,
//!     dtype: DType::F32, device: dev.clone(),
//! });
//! let k = Tensor::ones((1, 2, 3, 4), DType::F32, &dev)?;
//! cache.reserve(3)?;
//! let (keys, _values) = cache.append(0, &k, &k)?;
//! cache.commit(3)?;
//! assert_eq!(keys.dims(), &[1, 2, 3, 4]);
//! cache.truncate(1)?; // roll back two tokens
//! assert_eq!(cache.len(), 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs)]

use candle_core::{DType, Device, Tensor};

/// Errors of the KV-cache manager.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The sequence would exceed the context length the cache was built for.
    #[error("KV cache full: {needed} positions needed but the context length is {max_len}; shorten the prompt or lower max_new_tokens")]
    ContextExceeded {
        /// Positions the operation needs.
        needed: usize,
        /// Maximum positions.
        max_len: usize,
    },
    /// `truncate` was asked to grow the cache.
    #[error("cannot truncate the KV cache to {requested} positions: it holds only {len}")]
    TruncateBeyondLength {
        /// The requested length.
        requested: usize,
        /// The current length.
        len: usize,
    },
    /// A tensor with the wrong shape was appended.
    #[error("KV append shape mismatch: expected (1, {heads}, n, {head_dim}), got {got:?}")]
    Shape {
        /// Expected KV heads.
        heads: usize,
        /// Expected head dimension.
        head_dim: usize,
        /// The shape that was passed.
        got: Vec<usize>,
    },
    /// Layer index out of range.
    #[error("layer {layer} does not exist; the cache has {n_layers} layers")]
    NoSuchLayer {
        /// The requested layer.
        layer: usize,
        /// Number of layers.
        n_layers: usize,
    },
    /// Append of more positions than were reserved.
    #[error("append of {n} positions at {len} exceeds the reserved capacity {capacity}; call reserve first")]
    NotReserved {
        /// Positions appended.
        n: usize,
        /// Current length.
        len: usize,
        /// Allocated capacity.
        capacity: usize,
    },
    /// Tensor backend error.
    #[error("tensor backend error in the KV cache: {0}")]
    Backend(#[from] candle_core::Error),
}

/// Result alias with [`KvError`].
pub type Result<T> = std::result::Result<T, KvError>;

/// Shape and placement of a cache.
#[derive(Debug, Clone)]
pub struct KvConfig {
    /// Number of transformer layers.
    pub n_layers: usize,
    /// Number of key/value heads (GQA: fewer than query heads).
    pub n_kv_heads: usize,
    /// Dimension of one head.
    pub head_dim: usize,
    /// Context length: the cache never holds more positions.
    pub max_len: usize,
    /// Allocation granularity in positions.
    pub chunk: usize,
    /// Element type of keys and values.
    pub dtype: DType,
    /// Device holding the buffers.
    pub device: Device,
}

#[derive(Debug, Clone)]
struct LayerBuf {
    k: Tensor,
    v: Tensor,
}

/// Per-sequence, per-layer key/value storage with O(1) rollback.
///
/// Protocol for one forward of `n` tokens: [`reserve`](Self::reserve)`(n)`, then for every layer
/// [`append`](Self::append), then [`commit`](Self::commit)`(n)`. If the forward fails before
/// `commit`, the cache keeps its previous length and contents.
#[derive(Debug, Clone)]
pub struct KvCache {
    cfg: KvConfig,
    layers: Vec<LayerBuf>,
    len: usize,
    capacity: usize,
}

impl KvCache {
    /// An empty cache; no memory is allocated until the first [`reserve`](Self::reserve).
    pub fn new(cfg: KvConfig) -> Self {
        let chunk = cfg.chunk.max(1);
        KvCache {
            cfg: KvConfig { chunk, ..cfg },
            layers: Vec::new(),
            len: 0,
            capacity: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &KvConfig {
        &self.cfg
    }

    /// Number of positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no position is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions allocated (a multiple of the chunk size, at most `max_len`).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Maximum positions (the context length).
    pub fn max_len(&self) -> usize {
        self.cfg.max_len
    }

    /// Bytes allocated for keys and values across all layers.
    pub fn memory_bytes(&self) -> usize {
        2 * self.cfg.n_layers
            * self.cfg.n_kv_heads
            * self.capacity
            * self.cfg.head_dim
            * self.cfg.dtype.size_in_bytes()
    }

    /// Ensures room for `n` more positions, growing by whole chunks; errors if the context length
    /// would be exceeded.
    pub fn reserve(&mut self, n: usize) -> Result<()> {
        let needed = self.len + n;
        if needed > self.cfg.max_len {
            return Err(KvError::ContextExceeded {
                needed,
                max_len: self.cfg.max_len,
            });
        }
        if needed <= self.capacity {
            return Ok(());
        }
        let new_cap = (needed.div_ceil(self.cfg.chunk) * self.cfg.chunk).min(self.cfg.max_len);
        let shape = (1, self.cfg.n_kv_heads, new_cap, self.cfg.head_dim);
        let mut layers = Vec::with_capacity(self.cfg.n_layers);
        for i in 0..self.cfg.n_layers {
            let k = Tensor::zeros(shape, self.cfg.dtype, &self.cfg.device)?;
            let v = Tensor::zeros(shape, self.cfg.dtype, &self.cfg.device)?;
            if let Some(old) = self.layers.get(i) {
                if self.len > 0 {
                    k.slice_set(&old.k.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
                    v.slice_set(&old.v.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
                }
            }
            layers.push(LayerBuf { k, v });
        }
        self.layers = layers;
        self.capacity = new_cap;
        Ok(())
    }

    /// Writes `k` and `v` of shape `(1, n_kv_heads, n, head_dim)` for `layer` at positions
    /// `len()..len()+n` and returns views of all keys and values `0..len()+n` of that layer.
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let n_layers = self.cfg.n_layers;
        let (heads, head_dim) = (self.cfg.n_kv_heads, self.cfg.head_dim);
        let n = match k.dims() {
            &[1, h, n, d] if h == heads && d == head_dim && v.dims() == k.dims() => n,
            other => {
                return Err(KvError::Shape {
                    heads,
                    head_dim,
                    got: other.to_vec(),
                })
            }
        };
        if self.len + n > self.capacity {
            return Err(KvError::NotReserved {
                n,
                len: self.len,
                capacity: self.capacity,
            });
        }
        let buf = self
            .layers
            .get(layer)
            .ok_or(KvError::NoSuchLayer { layer, n_layers })?;
        buf.k
            .slice_set(&k.to_dtype(self.cfg.dtype)?.contiguous()?, 2, self.len)?;
        buf.v
            .slice_set(&v.to_dtype(self.cfg.dtype)?.contiguous()?, 2, self.len)?;
        Ok((
            buf.k.narrow(2, 0, self.len + n)?,
            buf.v.narrow(2, 0, self.len + n)?,
        ))
    }

    /// Advances the length by `n` after every layer has appended `n` positions.
    pub fn commit(&mut self, n: usize) -> Result<()> {
        if self.len + n > self.capacity {
            return Err(KvError::NotReserved {
                n,
                len: self.len,
                capacity: self.capacity,
            });
        }
        self.len += n;
        Ok(())
    }

    /// Rolls back to `len` positions (rejected draft tokens are forgotten).
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        if len > self.len {
            return Err(KvError::TruncateBeyondLength {
                requested: len,
                len: self.len,
            });
        }
        self.len = len;
        Ok(())
    }

    /// Forgets every position but keeps the allocation for the next sequence.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Forgets every position and frees the buffers.
    pub fn release(&mut self) {
        self.len = 0;
        self.capacity = 0;
        self.layers.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::D;
    use proptest::prelude::*;

    const H: usize = 2;
    const HD: usize = 3;

    fn cache(max_len: usize, chunk: usize) -> KvCache {
        KvCache::new(KvConfig {
            n_layers: 2,
            n_kv_heads: H,
            head_dim: HD,
            max_len,
            chunk,
            dtype: DType::F32,
            device: Device::Cpu,
        })
    }

    /// Rows for `n` positions starting at a seed, shape (1, H, n, HD).
    fn rows(seed: usize, n: usize) -> Tensor {
        let data: Vec<f32> = (0..H * n * HD)
            .map(|i| (((seed * 131 + i * 17) % 97) as f32 - 48.0) / 16.0)
            .collect();
        Tensor::from_vec(data, (1, H, n, HD), &Device::Cpu).unwrap()
    }

    fn attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Vec<f32> {
        let s = q.matmul(&k.t().unwrap()).unwrap();
        let p = candle_nn::ops::softmax_last_dim(&s).unwrap();
        p.matmul(v)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    fn push(c: &mut KvCache, seed: usize, n: usize) -> Result<Vec<(Tensor, Tensor)>> {
        c.reserve(n)?;
        let mut out = vec![];
        for layer in 0..2 {
            let k = rows(seed + layer, n);
            let v = rows(seed + 7 + layer, n);
            out.push(c.append(layer, &k, &v)?);
        }
        c.commit(n)?;
        Ok(out)
    }

    #[test]
    fn grows_in_chunks_and_reports_memory() {
        let mut c = cache(100, 8);
        assert_eq!((c.capacity(), c.memory_bytes()), (0, 0));
        push(&mut c, 0, 5).unwrap();
        assert_eq!(c.capacity(), 8);
        push(&mut c, 1, 4).unwrap();
        assert_eq!(c.capacity(), 16);
        assert_eq!(c.memory_bytes(), 2 * 2 * H * 16 * HD * 4);
        assert_eq!(c.len(), 9);
    }

    #[test]
    fn context_limit_is_a_clear_error() {
        let mut c = cache(10, 8);
        push(&mut c, 0, 8).unwrap();
        assert_eq!(c.capacity(), 8);
        push(&mut c, 0, 2).unwrap();
        assert_eq!(c.capacity(), 10);
        let err = push(&mut c, 0, 1).unwrap_err();
        assert!(
            matches!(
                err,
                KvError::ContextExceeded {
                    needed: 11,
                    max_len: 10
                }
            ),
            "{err}"
        );
        assert_eq!(c.len(), 10, "a failed reserve leaves the cache unchanged");
    }

    #[test]
    fn misuse_is_reported() {
        let mut c = cache(10, 4);
        assert!(matches!(
            c.truncate(1),
            Err(KvError::TruncateBeyondLength { .. })
        ));
        let k = rows(0, 1);
        assert!(matches!(
            c.append(0, &k, &k),
            Err(KvError::NotReserved { .. })
        ));
        c.reserve(1).unwrap();
        assert!(matches!(
            c.append(5, &k, &k),
            Err(KvError::NoSuchLayer { .. })
        ));
        let bad = Tensor::zeros((1, 3, 1, HD), DType::F32, &Device::Cpu).unwrap();
        assert!(matches!(
            c.append(0, &bad, &bad),
            Err(KvError::Shape { .. })
        ));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Append(usize),
        Truncate(usize),
        Clear,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (1usize..6).prop_map(Op::Append),
            2 => (0usize..30).prop_map(Op::Truncate),
            1 => Just(Op::Clear),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// After any sequence of appends, truncations and clears, attention over the cache equals
        /// attention recomputed from scratch over the surviving prefix.
        #[test]
        fn rollback_equals_recompute(ops in proptest::collection::vec(op(), 1..25), chunk in 1usize..9) {
            let mut c = cache(40, chunk);
            // Reference: the surviving (k, v) row tensors per layer, one (1,H,1,HD) per position.
            let mut reference: Vec<Vec<(Tensor, Tensor)>> = vec![vec![], vec![]];
            for (step, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Append(n) => {
                        let before = c.len();
                        match push(&mut c, step * 3, n) {
                            Ok(views) => {
                                for layer in 0..2 {
                                    let k = rows(step * 3 + layer, n);
                                    let v = rows(step * 3 + 7 + layer, n);
                                    for i in 0..n {
                                        reference[layer].push((k.narrow(2, i, 1).unwrap(), v.narrow(2, i, 1).unwrap()));
                                    }
                                    let q = rows(step + 100, 2);
                                    let (rk, rv): (Vec<_>, Vec<_>) = reference[layer].iter().cloned().unzip();
                                    let rk = Tensor::cat(&rk, 2).unwrap();
                                    let rv = Tensor::cat(&rv, 2).unwrap();
                                    let got = attention(&q, &views[layer].0, &views[layer].1);
                                    let want = attention(&q, &rk, &rv);
                                    for (a, b) in got.iter().zip(&want) {
                                        prop_assert!((a - b).abs() <= 1e-5, "{a} vs {b}");
                                    }
                                }
                            }
                            Err(KvError::ContextExceeded { .. }) => prop_assert_eq!(c.len(), before),
                            Err(e) => return Err(TestCaseError::fail(e.to_string())),
                        }
                    }
                    Op::Truncate(len) => {
                        let len = len.min(c.len());
                        c.truncate(len).unwrap();
                        for r in reference.iter_mut() { r.truncate(len); }
                    }
                    Op::Clear => {
                        c.clear();
                        for r in reference.iter_mut() { r.clear(); }
                    }
                }
                prop_assert_eq!(c.len(), reference[0].len());
                prop_assert!(c.capacity() >= c.len());
            }
            // The values stored for the surviving prefix are exactly the reference rows.
            if !c.is_empty() {
                let n = c.len();
                c.reserve(0).unwrap();
                let views = {
                    let z = Tensor::zeros((1, H, 0, HD), DType::F32, &Device::Cpu).unwrap();
                    c.append(1, &z, &z).unwrap()
                };
                let (rk, _): (Vec<_>, Vec<_>) = reference[1].iter().cloned().unzip();
                let rk = Tensor::cat(&rk, 2).unwrap();
                let diff = (views.0 - rk).unwrap().abs().unwrap().max(D::Minus1).unwrap()
                    .flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
                prop_assert_eq!(diff, 0.0);
                prop_assert_eq!(views.1.dim(2).unwrap(), n);
            }
        }
    }
}
