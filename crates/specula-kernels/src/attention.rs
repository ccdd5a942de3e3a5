//! Causal attention of a few query rows over a key/value cache, read in place.
//!
//! Used for decode and verification steps (a handful of new tokens against a long cache), with no
//! intermediate tensors. The query heads that share a KV head (grouped-query attention) are
//! computed together: each key and value row is read once for up to [`HEAD_BLOCK`] of them instead
//! of once per head, and each dot product keeps eight independent partial sums, so the loop is
//! limited by arithmetic throughput rather than by the latency of one long chain of additions. On
//! AVX2 machines the scores take eight dot products at a time (two queries by four keys, each key
//! row loaded once for both) reduced together; both builds use fused multiply-adds (`mul_add`,
//! correctly rounded everywhere) and the same order of additions, so they give the same bits.
//!
//! The cache holds `f32` or `half::f16` values ([`KvElem`]): f16 halves the bytes a step reads
//! from the cache (at 1,024 positions the 1.5B's cache is 58 MB in f32, against ~1 GB of
//! weights), and widening f16 is exact, so both builds still agree bit for bit.
//!
//! Batch invariance: every (row, head) pair has its own accumulators and the same instruction
//! sequence whatever the number of rows, the head block it falls in or the split into tasks, so a
//! row's output is bit-identical to a one-row call (as for the matmul kernels).

use crate::KernelError;
use half::f16;
use rayon::prelude::*;
use std::cell::RefCell;

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
}

/// An element type of a key/value cache that [`causal_attention`] reads: `f32` or `half::f16`
/// (widened to f32 exactly; the arithmetic is f32 either way).
pub trait KvElem: Copy + Send + Sync + sealed::Sealed {
    /// The value as f32 (exact).
    fn to_f32(self) -> f32;

    /// Eight values at `p` widened to f32. Safety: `p` must point to eight readable values and
    /// the caller must be compiled with AVX and F16C.
    #[cfg(target_arch = "x86_64")]
    #[doc(hidden)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
}

impl KvElem for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> std::arch::x86_64::__m256 {
        std::arch::x86_64::_mm256_loadu_ps(p)
    }
}

impl KvElem for f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const f16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
}

/// One layer's key or value cache in place: element `(head, position, d)` is at
/// `data[offset + head * head_stride + position * pos_stride + d]`.
#[derive(Debug, Clone, Copy)]
pub struct KvView<'a, E = f32> {
    /// The backing storage.
    pub data: &'a [E],
    /// Index of element `(0, 0, 0)`.
    pub offset: usize,
    /// Distance between heads.
    pub head_stride: usize,
    /// Distance between positions.
    pub pos_stride: usize,
}

impl<E: KvElem> KvView<'_, E> {
    #[inline]
    fn row(&self, head: usize, pos: usize, hd: usize) -> &[E] {
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

/// Partial sums per dot product (one AVX2 register).
const LANES: usize = 8;

/// Up to this many query heads of one KV group share each pass over the keys and values.
const HEAD_BLOCK: usize = 4;

thread_local! {
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `out[i, h, :] = softmax(scale * q[h, i] . K[h / g, 0..=pos+i]) V[h / g, 0..=pos+i]`.
///
/// `q` is `(heads, n, head_dim)` contiguous; `out` is `(n, heads * head_dim)`.
pub fn causal_attention<E: KvElem>(
    q: &[f32],
    k: KvView<'_, E>,
    v: KvView<'_, E>,
    s: AttentionShape,
    scale: f32,
    out: &mut [f32],
) -> Result<(), KernelError> {
    attention_on(crate::simd(), q, k, v, s, scale, out)
}

/// [`causal_attention`] on the AVX2 build (`simd`, which the caller must have checked the CPU
/// supports) or the portable one.
pub(crate) fn attention_on<E: KvElem>(
    simd: bool,
    q: &[f32],
    k: KvView<'_, E>,
    v: KvView<'_, E>,
    s: AttentionShape,
    scale: f32,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let hd = s.head_dim;
    let len = s.pos + s.n;
    let ok = s.kv_heads > 0
        && hd > 0
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
    if s.n == 0 || s.heads == 0 {
        return Ok(());
    }
    let groups = s.heads / s.kv_heads;
    let per_task = heads_per_task(groups, s.n * s.kv_heads, rayon::current_num_threads());
    let tasks_per_row = s.heads / per_task;
    out.par_chunks_mut(per_task * hd)
        .enumerate()
        .for_each(|(idx, o)| {
            let (i, first) = (idx / tasks_per_row, (idx % tasks_per_row) * per_task);
            let visible = s.pos + i + 1;
            let kvh = first / groups;
            let query = |h: usize| &q[(h * s.n + i) * hd..(h * s.n + i + 1) * hd];
            let block = Block {
                k,
                v,
                kvh,
                visible,
                hd,
                scale,
                cold: std::cell::Cell::new(true),
            };
            crate::with_buf(&SCORES, HEAD_BLOCK * visible, |scores| {
                let mut done = 0;
                while done < per_task {
                    let h = first + done;
                    let o = &mut o[done * hd..];
                    done += match per_task - done {
                        1 => block.run(simd, [query(h)], scores, o),
                        2 => block.run(simd, [query(h), query(h + 1)], scores, o),
                        3 => block.run(simd, [query(h), query(h + 1), query(h + 2)], scores, o),
                        _ => block.run(
                            simd,
                            [query(h), query(h + 1), query(h + 2), query(h + 3)],
                            scores,
                            o,
                        ),
                    };
                }
            });
        });
    Ok(())
}

/// Query heads per task: the whole group of a KV head when there are at least as many
/// (row, KV head) pairs as threads, else the group split (into a divisor of its size) so every
/// thread has work. Only the scheduling changes with it, never a row's arithmetic.
fn heads_per_task(groups: usize, pairs: usize, threads: usize) -> usize {
    let splits = threads.div_ceil(pairs.max(1)).clamp(1, groups);
    let want = groups.div_ceil(splits);
    (1..=want)
        .rev()
        .find(|d| groups.is_multiple_of(*d))
        .unwrap_or(1)
}

/// One (row, KV head) pair and the part of the cache its row may see.
struct Block<'a, E> {
    k: KvView<'a, E>,
    v: KvView<'a, E>,
    kvh: usize,
    visible: usize,
    hd: usize,
    scale: f32,
    /// Whether the block's keys and values may still be in memory rather than in a cache: the
    /// first pass over the keys then prefetches both ([`avx2_scores`]).
    cold: std::cell::Cell<bool>,
}

impl<E: KvElem> Block<'_, E> {
    /// Attention of `G` query heads of this KV head into `o[..G * hd]`; returns `G`.
    fn run<const G: usize>(
        &self,
        simd: bool,
        qs: [&[f32]; G],
        scores: &mut [f32],
        o: &mut [f32],
    ) -> usize {
        let (hd, n) = (self.hd, self.visible);
        let scores = &mut scores[..G * n];
        let qs = qs.map(|q| &q[..hd]);
        let o = &mut o[..G * hd];
        #[cfg(target_arch = "x86_64")]
        if simd && hd.is_multiple_of(2 * LANES) {
            // SAFETY: `simd` is true only when `Isa::detect` found AVX2, FMA and F16C; the
            // slices were cut to the lengths the kernels read (`hd` a multiple of 16).
            unsafe {
                let mut g = 0;
                while g + 2 <= G {
                    let (a, b) = scores[g * n..(g + 2) * n].split_at_mut(n);
                    avx2_scores::<2, 4, E>([qs[g], qs[g + 1]], self, [a, b]);
                    g += 2;
                }
                if g < G {
                    avx2_scores::<1, 8, E>([qs[g]], self, [&mut scores[g * n..(g + 1) * n]]);
                }
                let sums = avx2_softmax::<G>(scores, n);
                // Eight accumulator chains where the head dimension allows (two FMAs per cycle at
                // four cycles' latency; with four the loop waits on them).
                let (v, kvh) = (self.v, self.kvh);
                match G {
                    1 if hd.is_multiple_of(8 * LANES) => {
                        avx2_weighted_sum::<G, 8, E>(scores, n, v, kvh, hd, o)
                    }
                    2 if hd.is_multiple_of(4 * LANES) => {
                        avx2_weighted_sum::<G, 4, E>(scores, n, v, kvh, hd, o)
                    }
                    _ => avx2_weighted_sum::<G, 2, E>(scores, n, v, kvh, hd, o),
                }
                normalize(o, hd, sums);
            }
            return G;
        }
        let _ = simd;
        for t in 0..n {
            let d = dots(&qs, self.k.row(self.kvh, t, hd));
            for g in 0..G {
                scores[g * n + t] = self.scale * d[g];
            }
        }
        let sums = softmax::<G>(scores, n);
        o.fill(0.0);
        for t in 0..n {
            let vt = self.v.row(self.kvh, t, hd);
            for (g, og) in o.chunks_exact_mut(hd).enumerate() {
                let p = scores[g * n + t];
                for (x, y) in og.iter_mut().zip(vt) {
                    *x = p.mul_add(y.to_f32(), *x);
                }
            }
        }
        normalize(o, hd, sums);
        G
    }
}

/// Turns each head's `n` scores (`scores[g * n..]`) into unnormalised weights `exp(s - max)`
/// ([`exp_neg`]) and returns their sums, each over [`LANES`] partial sums (element `t` into
/// lane `t % 8`) added as in [`dots`]: the order [`avx2_softmax`] computes in, so the same bits.
#[inline(always)]
fn softmax<const G: usize>(scores: &mut [f32], n: usize) -> [f32; G] {
    let mut sums = [0f32; G];
    for (sc, sum) in scores.chunks_exact_mut(n).zip(sums.iter_mut()) {
        let max = sc.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        let mut part = [0f32; LANES];
        for (t, x) in sc.iter_mut().enumerate() {
            *x = exp_neg(*x - max);
            part[t % LANES] += *x;
        }
        *sum = lane_sum(part);
    }
    sums
}

/// `((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))`.
#[inline(always)]
fn lane_sum(a: [f32; LANES]) -> f32 {
    ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))
}

/// [`softmax`] eight scores at a time (the exponentials were a sixth of a decode step's
/// attention as calls to the C library's `expf`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_softmax<const G: usize>(scores: &mut [f32], n: usize) -> [f32; G] {
    use std::arch::x86_64::*;
    let mut sums = [0f32; G];
    let whole = n / LANES * LANES;
    for (sc, sum) in scores.chunks_exact_mut(n).zip(sums.iter_mut()) {
        // The maximum does not depend on the order it is taken in.
        let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
        for c in sc[..whole].chunks_exact(LANES) {
            m = _mm256_max_ps(m, _mm256_loadu_ps(c.as_ptr()));
        }
        let mut lanes = [0f32; LANES];
        _mm256_storeu_ps(lanes.as_mut_ptr(), m);
        let max = sc[whole..]
            .iter()
            .chain(&lanes)
            .fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        let (vmax, mut acc) = (_mm256_set1_ps(max), _mm256_setzero_ps());
        for c in sc[..whole].chunks_exact_mut(LANES) {
            let e = avx2_exp_neg(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), vmax));
            _mm256_storeu_ps(c.as_mut_ptr(), e);
            acc = _mm256_add_ps(acc, e);
        }
        let mut part = [0f32; LANES];
        _mm256_storeu_ps(part.as_mut_ptr(), acc);
        for (t, x) in sc[whole..].iter_mut().enumerate() {
            *x = exp_neg(*x - max);
            part[t] += *x;
        }
        *sum = lane_sum(part);
    }
    sums
}

/// How far ahead (in bytes of a key row) the first pass over a block's keys prefetches.
const KV_PREFETCH_BYTES: usize = 2048;

/// Below this `exp_neg` returns `exp(EXP_MIN)`, the smallest result that is still a normal float
/// (a softmax weight that small adds nothing next to the maximum's 1).
const EXP_MIN: f32 = -87.0;
/// `1.5 * 2^23`: adding it rounds a float of magnitude below 2^22 to an integer (to nearest, ties
/// to even) in the same way in both builds.
const ROUNDER: f32 = 12_582_912.0;
/// ln 2 split into a part exact in a few bits and the rest (Cody and Waite).
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// exp(r) ~ 1 + r + r^2 P(r) on |r| <= ln 2 / 2 (the Cephes `expf` coefficients, relative error
/// about 1e-7).
const EXP_P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

/// `exp(x)` for `x <= 0` (a softmax weight): `2^k exp(r)` with `k = round(x / ln 2)`, the same
/// operations (fused multiply-adds included) as [`avx2_exp_neg`], so the same bits.
#[inline(always)]
fn exp_neg(x: f32) -> f32 {
    let x = x.max(EXP_MIN);
    let k = (x * std::f32::consts::LOG2_E + ROUNDER) - ROUNDER;
    let r = k.mul_add(-LN2_LO, k.mul_add(-LN2_HI, x));
    let p = EXP_P[1..].iter().fold(EXP_P[0], |p, &c| p.mul_add(r, c));
    let y = p.mul_add(r * r, r) + 1.0;
    y * f32::from_bits(((k as i32 + 127) as u32) << 23)
}

/// [`exp_neg`] of eight values.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn avx2_exp_neg(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let x = _mm256_max_ps(x, _mm256_set1_ps(EXP_MIN));
    let rounder = _mm256_set1_ps(ROUNDER);
    let t = _mm256_add_ps(
        _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        rounder,
    );
    let k = _mm256_sub_ps(t, rounder);
    let r = _mm256_fnmadd_ps(k, _mm256_set1_ps(LN2_HI), x);
    let r = _mm256_fnmadd_ps(k, _mm256_set1_ps(LN2_LO), r);
    let mut p = _mm256_set1_ps(EXP_P[0]);
    for &c in &EXP_P[1..] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let y = _mm256_add_ps(
        _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r),
        _mm256_set1_ps(1.0),
    );
    let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(k),
        _mm256_set1_epi32(127),
    ));
    _mm256_mul_ps(y, _mm256_castsi256_ps(bits))
}

/// Divides each head's output row by its softmax sum.
#[inline(always)]
fn normalize<const G: usize>(o: &mut [f32], hd: usize, sums: [f32; G]) {
    for (og, s) in o.chunks_exact_mut(hd).zip(sums) {
        let inv = 1.0 / s;
        og.iter_mut().for_each(|x| *x *= inv);
    }
}

/// The dot products of `G` queries with one key row, each over [`LANES`] partial sums (lane `l`
/// takes the elements `l, l + 8, ...`, one fused multiply-add each) added pairwise at the end:
/// `((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))`, the order of [`avx2_scores`].
#[inline(always)]
fn dots<const G: usize, E: KvElem>(qs: &[&[f32]; G], k: &[E]) -> [f32; G] {
    let hd = k.len();
    let mut acc = [[0f32; LANES]; G];
    let whole = hd / LANES * LANES;
    for c in (0..whole).step_by(LANES) {
        let kc = &k[c..c + LANES];
        for g in 0..G {
            let qc = &qs[g][c..c + LANES];
            for l in 0..LANES {
                acc[g][l] = qc[l].mul_add(kc[l].to_f32(), acc[g][l]);
            }
        }
    }
    for c in whole..hd {
        for g in 0..G {
            acc[g][c - whole] = qs[g][c].mul_add(k[c].to_f32(), acc[g][c - whole]);
        }
    }
    acc.map(|a| ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7])))
}

/// `out[g][t] = scale * q[g] . key t` over the block's visible keys, for `Q` queries, `K` keys at
/// a time (`Q * K = 8` accumulators: each key row loaded once for the `Q` queries), with
/// [`dots`]'s lanes, fused multiply-adds and final order, so the same bits. Each query holds `hd`
/// floats, a multiple of 8.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_scores<const Q: usize, const K: usize, E: KvElem>(
    qs: [&[f32]; Q],
    blk: &Block<'_, E>,
    mut out: [&mut [f32]; Q],
) {
    use std::arch::x86_64::*;
    const { assert!(Q * K == 8) };
    let (hd, n, scale) = (blk.hd, blk.visible, blk.scale);
    let key = |t: usize| blk.k.row(blk.kvh, t, hd);
    let s = _mm256_set1_ps(scale);
    let blocks = n / K;
    // The first pass over a block's keys reads them (and then the values) from memory in a
    // decode step: the weights streamed since the cache was last read have evicted them, and
    // waiting on each row's misses made attention three times slower than from cache (1.5B
    // shape, 256 positions, f16: 41 against 13 us per layer). So it asks for the rows `ahead`
    // positions on, keys and values, as it goes (41 -> 31 us; 1,024 positions 134 -> 105 us).
    let cold = blk.cold.replace(false);
    let row_bytes = hd * std::mem::size_of::<E>();
    let ahead = (KV_PREFETCH_BYTES / row_bytes).max(1);
    let fetch = |t: usize| {
        if t < n {
            for view in [&blk.k, &blk.v] {
                let row = view.row(blk.kvh, t, hd).as_ptr() as *const i8;
                for line in (0..row_bytes).step_by(64) {
                    _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(line));
                }
            }
        }
    };
    if cold {
        (0..ahead).for_each(fetch);
    }
    for b in 0..blocks {
        let t0 = b * K;
        if cold {
            (t0 + ahead..t0 + ahead + K).for_each(fetch);
        }
        let rows: [&[E]; K] = std::array::from_fn(|i| key(t0 + i));
        let mut acc = [_mm256_setzero_ps(); 8];
        for c in (0..hd).step_by(LANES) {
            let kc: [__m256; K] = std::array::from_fn(|i| E::load8(rows[i].as_ptr().add(c)));
            for (g, q) in qs.iter().enumerate() {
                let qc = _mm256_loadu_ps(q.as_ptr().add(c));
                for i in 0..K {
                    acc[g * K + i] = _mm256_fmadd_ps(qc, kc[i], acc[g * K + i]);
                }
            }
        }
        // Lane j of `sums`: accumulator j's ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7)).
        let h01 = _mm256_hadd_ps(acc[0], acc[1]);
        let h23 = _mm256_hadd_ps(acc[2], acc[3]);
        let h45 = _mm256_hadd_ps(acc[4], acc[5]);
        let h67 = _mm256_hadd_ps(acc[6], acc[7]);
        let (lo4, hi4) = (_mm256_hadd_ps(h01, h23), _mm256_hadd_ps(h45, h67));
        let sums = _mm256_add_ps(
            _mm256_permute2f128_ps::<0x20>(lo4, hi4),
            _mm256_permute2f128_ps::<0x31>(lo4, hi4),
        );
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_mul_ps(s, sums));
        for (g, o) in out.iter_mut().enumerate() {
            o[t0..t0 + K].copy_from_slice(&lanes[g * K..(g + 1) * K]);
        }
    }
    if cold {
        (blocks * K + ahead..n + ahead).for_each(fetch);
    }
    for t in blocks * K..n {
        let d = dots(&qs, key(t));
        for (o, d) in out.iter_mut().zip(d) {
            o[t] = scale * d;
        }
    }
}

/// `o[g, :] = sum_t w[g * n + t] * V[t, :]` in t order, `W` vectors of columns at a time held in
/// registers (the same fused multiply-adds, in the same order, as the portable loop, whatever
/// `W`). `hd` must be a multiple of `8 W`; `o` is `G * hd` long and `v` holds `n` positions of
/// head `kvh`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_weighted_sum<const G: usize, const W: usize, E: KvElem>(
    w: &[f32],
    n: usize,
    v: KvView<'_, E>,
    kvh: usize,
    hd: usize,
    o: &mut [f32],
) {
    use std::arch::x86_64::*;
    for c in (0..hd).step_by(W * LANES) {
        let mut acc = [[_mm256_setzero_ps(); W]; G];
        for t in 0..n {
            let vt = v.row(kvh, t, hd).as_ptr().add(c);
            let vs: [__m256; W] = std::array::from_fn(|i| E::load8(vt.add(i * LANES)));
            for (g, acc) in acc.iter_mut().enumerate() {
                let p = _mm256_set1_ps(*w.get_unchecked(g * n + t));
                for (a, x) in acc.iter_mut().zip(vs) {
                    *a = _mm256_fmadd_ps(p, x, *a);
                }
            }
        }
        for (g, acc) in acc.iter().enumerate() {
            for (i, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(o.as_mut_ptr().add(g * hd + c + i * LANES), *a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `exp_neg` is within a few ulp of the true exponential on the whole range a softmax
    /// feeds it, and the AVX2 version gives its bits.
    #[test]
    fn exp_neg_is_accurate_and_both_builds_agree() {
        let xs: Vec<f32> = (0..=200_000)
            .map(|i| -87.0 * i as f32 / 200_000.0)
            .chain([
                0.0,
                -0.0,
                -1e-30,
                -0.346_573_6,
                -0.346_573_62,
                -86.999,
                -87.0,
            ])
            .collect();
        for &x in &xs {
            let (got, want) = (exp_neg(x) as f64, (x as f64).exp());
            assert!(
                ((got - want) / want).abs() < 4e-7,
                "exp({x}) = {got}, want {want}"
            );
        }
        // Below the range: the smallest normal result, never 0, NaN or a denormal.
        for x in [-88.0, -1e4, f32::NEG_INFINITY] {
            assert_eq!(exp_neg(x), exp_neg(EXP_MIN));
        }
        #[cfg(target_arch = "x86_64")]
        if crate::Isa::Avx2.is_supported() {
            for c in xs.chunks(8).filter(|c| c.len() == 8) {
                let mut out = [0f32; 8];
                // SAFETY: AVX2 and FMA were detected just above.
                unsafe {
                    use std::arch::x86_64::*;
                    #[target_feature(enable = "avx2,fma")]
                    unsafe fn run(c: &[f32], out: &mut [f32; 8]) {
                        _mm256_storeu_ps(
                            out.as_mut_ptr(),
                            avx2_exp_neg(_mm256_loadu_ps(c.as_ptr())),
                        );
                    }
                    run(c, &mut out);
                }
                for (x, y) in c.iter().zip(out) {
                    assert_eq!(exp_neg(*x).to_bits(), y.to_bits(), "exp({x})");
                }
            }
        }
    }
}
