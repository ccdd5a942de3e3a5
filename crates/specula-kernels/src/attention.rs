//! Causal attention of a few query rows over a key/value cache, read in place.
//!
//! Used for decode and verification steps (a handful of new tokens against a long cache): one
//! pass per (query row, head) with no intermediate tensors, in parallel over heads and rows. Every
//! (row, head) pair is computed the same way whatever the number of rows, so a row's output is
//! bit-identical to a one-row call (batch invariance, as for the matmul kernels).

use crate::KernelError;
use rayon::prelude::*;
use std::cell::RefCell;

/// One layer's key or value cache in place: element `(head, position, d)` is at
/// `data[offset + head * head_stride + position * pos_stride + d]`.
#[derive(Debug, Clone, Copy)]
pub struct KvView<'a> {
    /// The backing storage.
    pub data: &'a [f32],
    /// Index of element `(0, 0, 0)`.
    pub offset: usize,
    /// Distance between heads.
    pub head_stride: usize,
    /// Distance between positions.
    pub pos_stride: usize,
}

impl KvView<'_> {
    #[inline]
    fn row(&self, head: usize, pos: usize, hd: usize) -> &[f32] {
        let at = self.offset + head * self.head_stride + pos * self.pos_stride;
        &self.data[at..at + hd]
    }

    fn check(&self, heads: usize, len: usize, hd: usize) -> bool {
        heads == 0
            || len == 0
            || self.offset + (heads - 1) * self.head_stride + (len - 1) * self.pos_stride + hd
                <= self.data.len()
    }
}

/// Shape of a [`causal_attention`] call.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    /// Query rows (new tokens).
    pub n: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (`heads` must be a multiple).
    pub kv_heads: usize,
    /// Head dimension.
    pub head_dim: usize,
    /// Cache positions before the first query row; row `i` attends to positions `0..=pos + i`.
    pub pos: usize,
}

thread_local! {
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `out[i, h, :] = softmax(scale * q[h, i] . K[h / g, 0..=pos+i]) V[h / g, 0..=pos+i]`.
///
/// `q` is `(heads, n, head_dim)` contiguous; `out` is `(n, heads * head_dim)`.
pub fn causal_attention(
    q: &[f32],
    k: KvView<'_>,
    v: KvView<'_>,
    s: AttentionShape,
    scale: f32,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let hd = s.head_dim;
    let len = s.pos + s.n;
    let ok = s.kv_heads > 0
        && s.heads.is_multiple_of(s.kv_heads)
        && q.len() == s.heads * s.n * hd
        && out.len() == s.n * s.heads * hd
        && k.check(s.kv_heads, len, hd)
        && v.check(s.kv_heads, len, hd);
    if !ok {
        return Err(KernelError::BadAttention(format!(
            "{s:?}: q has {} values, out {}, caches {} / {}",
            q.len(),
            out.len(),
            k.data.len(),
            v.data.len()
        )));
    }
    let groups = s.heads / s.kv_heads;
    out.par_chunks_mut(hd).enumerate().for_each(|(idx, o)| {
        let (i, h) = (idx / s.heads, idx % s.heads);
        let kvh = h / groups;
        let qi = &q[(h * s.n + i) * hd..(h * s.n + i + 1) * hd];
        let visible = s.pos + i + 1;
        SCORES.with(|cell| {
            let mut fresh = Vec::new();
            let mut borrowed = cell.try_borrow_mut();
            let scores = match borrowed.as_mut() {
                Ok(b) => &mut **b,
                Err(_) => &mut fresh,
            };
            scores.clear();
            let mut max = f32::NEG_INFINITY;
            for t in 0..visible {
                let kt = k.row(kvh, t, hd);
                let sc = scale * qi.iter().zip(kt).map(|(a, b)| a * b).sum::<f32>();
                max = max.max(sc);
                scores.push(sc);
            }
            let mut sum = 0f32;
            for sc in scores.iter_mut() {
                *sc = (*sc - max).exp();
                sum += *sc;
            }
            o.iter_mut().for_each(|x| *x = 0.0);
            for (t, p) in scores.iter().enumerate() {
                let vt = v.row(kvh, t, hd);
                for (x, y) in o.iter_mut().zip(vt) {
                    *x += p * y;
                }
            }
            let inv = 1.0 / sum;
            o.iter_mut().for_each(|x| *x *= inv);
        });
    });
    Ok(())
}
