//! AVX2 + FMA kernels, weight-stationary: each weight block is decoded into registers once and
//! applied to every activation row of a tile (up to [`TILE`] rows), so a verification forward of n
//! tokens reads and unpacks the weights once instead of n times.
//!
//! Batch invariance: the instructions that produce `out[r, j]` are the same whatever `n` is and
//! whichever tile row `j` falls in (each row has its own accumulators), so a row's result is
//! bit-identical to a one-row call.

use crate::blocks::*;
use std::arch::x86_64::*;

/// Activation rows processed per pass over a weight row.
pub(crate) const TILE: usize = 8;

/// Horizontal sum of eight f32 lanes, in a fixed order.
#[inline(always)]
pub(crate) unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// One weight format: how to decode a block into registers, and how to apply the decoded block to
/// one activation block (adding to that activation row's vector accumulator).
trait Kernel {
    type Act;
    type Decoded;
    const BLOCK_BYTES: usize;
    unsafe fn decode(blk: &[u8]) -> Self::Decoded;
    unsafe fn apply(w: &Self::Decoded, a: &Self::Act, acc: &mut __m256);
}

/// Runs kernel `K` over one chunk of weight rows: `out[r * n + j] = row r . activation row j`.
#[target_feature(enable = "avx2,fma")]
unsafe fn drive<K: Kernel>(w: &[u8], nb: usize, acts: &[K::Act], n: usize, out: &mut [f32]) {
    let row_bytes = nb * K::BLOCK_BYTES;
    for (r, o) in out.chunks_exact_mut(n).enumerate() {
        let wrow = &w[r * row_bytes..(r + 1) * row_bytes];
        let mut t0 = 0;
        while t0 < n {
            let t = (n - t0).min(TILE);
            let mut acc = [_mm256_setzero_ps(); TILE];
            for (b, wb) in wrow.chunks_exact(K::BLOCK_BYTES).enumerate() {
                let dec = K::decode(wb);
                for j in 0..t {
                    K::apply(&dec, &acts[(t0 + j) * nb + b], &mut acc[j]);
                }
            }
            for j in 0..t {
                o[t0 + j] = hsum(acc[j]);
            }
            t0 += t;
        }
    }
}

struct Q4K;
struct Q6K;
struct Q50;
struct Q80;

/// A decoded k-quant block: 256 unsigned quants as bytes, the i16 scales of each 32-byte chunk,
/// and the i16 multipliers of the activation's 16 partial sums (Q4_K: its minimums, each twice;
/// Q6_K: its 16 scales, for the `- 32` offset).
struct DecodedK {
    q: [__m256i; 8],
    sc: [__m256i; 8],
    bsum_mul: __m256i,
    d: f32,
    dmin: f32,
}

/// `sum_t madd(maddubs(q[t], a[32t..]), sc[t])`: the integer part of a k-quant block dot.
#[inline(always)]
unsafe fn dot_256(w: &DecodedK, a: &BlockQ8K) -> __m256i {
    let aq = a.qs.as_ptr();
    let mut sumi = _mm256_setzero_si256();
    for t in 0..8 {
        let av = _mm256_loadu_si256(aq.add(32 * t) as *const __m256i);
        let p = _mm256_maddubs_epi16(w.q[t], av);
        sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, w.sc[t]));
    }
    sumi
}

/// `madd(bsums, bsum_mul)`: eight i32 lanes whose sum is `sum_s mul[s] * bsums[s]`.
#[inline(always)]
unsafe fn bsum_dot(w: &DecodedK, a: &BlockQ8K) -> __m256i {
    let bs = _mm256_loadu_si256(a.bsums.as_ptr() as *const __m256i);
    _mm256_madd_epi16(bs, w.bsum_mul)
}

impl Kernel for Q4K {
    type Act = BlockQ8K;
    type Decoded = DecodedK;
    const BLOCK_BYTES: usize = Q4K_BYTES;

    #[inline(always)]
    unsafe fn decode(blk: &[u8]) -> DecodedK {
        let mask = _mm256_set1_epi8(0x0f);
        let (sc, m) = q4k_scales(&blk[4..16]);
        let qs = blk[16..144].as_ptr();
        let mut q = [_mm256_setzero_si256(); 8];
        let mut scv = [_mm256_setzero_si256(); 8];
        for c in 0..4 {
            let raw = _mm256_loadu_si256(qs.add(32 * c) as *const __m256i);
            q[2 * c] = _mm256_and_si256(raw, mask);
            q[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), mask);
            scv[2 * c] = _mm256_set1_epi16(sc[2 * c] as i16);
            scv[2 * c + 1] = _mm256_set1_epi16(sc[2 * c + 1] as i16);
        }
        let mut mins = [0i16; 16];
        for (s, v) in mins.iter_mut().enumerate() {
            *v = m[s / 2] as i16;
        }
        DecodedK {
            q,
            sc: scv,
            bsum_mul: _mm256_loadu_si256(mins.as_ptr() as *const __m256i),
            d: f16_at(blk, 0),
            dmin: f16_at(blk, 2),
        }
    }

    #[inline(always)]
    unsafe fn apply(w: &DecodedK, a: &BlockQ8K, acc: &mut __m256) {
        let sumi = dot_256(w, a);
        let summ = bsum_dot(w, a);
        let x = _mm256_fmadd_ps(_mm256_set1_ps(w.d * a.d), _mm256_cvtepi32_ps(sumi), *acc);
        *acc = _mm256_fnmadd_ps(_mm256_set1_ps(w.dmin * a.d), _mm256_cvtepi32_ps(summ), x);
    }
}

impl Kernel for Q6K {
    type Act = BlockQ8K;
    type Decoded = DecodedK;
    const BLOCK_BYTES: usize = Q6K_BYTES;

    #[inline(always)]
    unsafe fn decode(blk: &[u8]) -> DecodedK {
        let m4 = _mm256_set1_epi8(0x0f);
        let m30 = _mm256_set1_epi8(0x30);
        let p = blk.as_ptr();
        let mut q = [_mm256_setzero_si256(); 8];
        for h in 0..2 {
            let l0 = _mm256_loadu_si256(p.add(64 * h) as *const __m256i);
            let l1 = _mm256_loadu_si256(p.add(64 * h + 32) as *const __m256i);
            let hh = _mm256_loadu_si256(p.add(128 + 32 * h) as *const __m256i);
            q[4 * h] = _mm256_or_si256(
                _mm256_and_si256(l0, m4),
                _mm256_and_si256(_mm256_slli_epi16(hh, 4), m30),
            );
            q[4 * h + 1] = _mm256_or_si256(
                _mm256_and_si256(l1, m4),
                _mm256_and_si256(_mm256_slli_epi16(hh, 2), m30),
            );
            q[4 * h + 2] = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                _mm256_and_si256(hh, m30),
            );
            q[4 * h + 3] = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                _mm256_and_si256(_mm256_srli_epi16(hh, 2), m30),
            );
        }
        let mut sc16 = [0i16; 16];
        for (s, v) in sc16.iter_mut().enumerate() {
            *v = blk[192 + s] as i8 as i16;
        }
        let mut sc = [_mm256_setzero_si256(); 8];
        for (t, v) in sc.iter_mut().enumerate() {
            *v = _mm256_set_m128i(_mm_set1_epi16(sc16[2 * t + 1]), _mm_set1_epi16(sc16[2 * t]));
        }
        DecodedK {
            q,
            sc,
            bsum_mul: _mm256_loadu_si256(sc16.as_ptr() as *const __m256i),
            d: f16_at(blk, 208),
            dmin: 0.0,
        }
    }

    #[inline(always)]
    unsafe fn apply(w: &DecodedK, a: &BlockQ8K, acc: &mut __m256) {
        // sum(sc * (q - 32) * a) = sum(sc * q * a) - 32 * sum(sc * bsums).
        let sumi = _mm256_sub_epi32(dot_256(w, a), _mm256_slli_epi32(bsum_dot(w, a), 5));
        *acc = _mm256_fmadd_ps(_mm256_set1_ps(w.d * a.d), _mm256_cvtepi32_ps(sumi), *acc);
    }
}

/// The dot of Q5_0 and Q8_0: 32 signed weight quants (`w.0`), their absolute values (`w.1`) and the
/// scale (`w.2`); `maddubs(|w|, sign(a, w))` is `w * a` with an unsigned first operand.
#[inline(always)]
unsafe fn apply_signed(w: &(__m256i, __m256i, f32), a: &BlockQ8_32, acc: &mut __m256) {
    let av = _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i);
    let prod = _mm256_maddubs_epi16(w.1, _mm256_sign_epi8(av, w.0));
    let sumi = _mm256_madd_epi16(prod, _mm256_set1_epi16(1));
    *acc = _mm256_fmadd_ps(_mm256_set1_ps(w.2 * a.d), _mm256_cvtepi32_ps(sumi), *acc);
}

impl Kernel for Q50 {
    type Act = BlockQ8_32;
    type Decoded = (__m256i, __m256i, f32);
    const BLOCK_BYTES: usize = Q50_BYTES;

    #[inline(always)]
    unsafe fn decode(blk: &[u8]) -> Self::Decoded {
        let m4 = _mm_set1_epi8(0x0f);
        // Byte k of the result takes byte k / 8 of qh; the mask then picks bit k % 8.
        let shuf = _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3,
            3, 3, 3,
        );
        let bm = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
        let q = _mm_loadu_si128(blk[6..22].as_ptr() as *const __m128i);
        let low = _mm256_set_m128i(
            _mm_and_si128(_mm_srli_epi16(q, 4), m4),
            _mm_and_si128(q, m4),
        );
        let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(qh as i32), shuf);
        let hb = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bm), bm);
        let wv = _mm256_or_si256(low, _mm256_and_si256(hb, _mm256_set1_epi8(0x10)));
        let wv = _mm256_sub_epi8(wv, _mm256_set1_epi8(16));
        (wv, _mm256_abs_epi8(wv), f16_at(blk, 0))
    }

    #[inline(always)]
    unsafe fn apply(w: &Self::Decoded, a: &BlockQ8_32, acc: &mut __m256) {
        apply_signed(w, a, acc)
    }
}

impl Kernel for Q80 {
    type Act = BlockQ8_32;
    type Decoded = (__m256i, __m256i, f32);
    const BLOCK_BYTES: usize = Q80_BYTES;

    #[inline(always)]
    unsafe fn decode(blk: &[u8]) -> Self::Decoded {
        let wq = _mm256_loadu_si256(blk[2..34].as_ptr() as *const __m256i);
        (wq, _mm256_abs_epi8(wq), f16_at(blk, 0))
    }

    #[inline(always)]
    unsafe fn apply(w: &Self::Decoded, a: &BlockQ8_32, acc: &mut __m256) {
        apply_signed(w, a, acc)
    }
}

/// Q4_K rows times Q8_K activations. Safety: the CPU must support AVX2 and FMA; `w` holds
/// `out.len() / n` rows of `nb` blocks and `acts` `n` rows of `nb` blocks.
pub(crate) unsafe fn rows_q4k(w: &[u8], nb: usize, acts: &[BlockQ8K], n: usize, out: &mut [f32]) {
    drive::<Q4K>(w, nb, acts, n, out)
}

/// Q6_K rows times Q8_K activations (safety as [`rows_q4k`]).
pub(crate) unsafe fn rows_q6k(w: &[u8], nb: usize, acts: &[BlockQ8K], n: usize, out: &mut [f32]) {
    drive::<Q6K>(w, nb, acts, n, out)
}

/// Q5_0 rows times 32-element activation blocks (safety as [`rows_q4k`]).
pub(crate) unsafe fn rows_q50(w: &[u8], nb: usize, acts: &[BlockQ8_32], n: usize, out: &mut [f32]) {
    drive::<Q50>(w, nb, acts, n, out)
}

/// Q8_0 rows times 32-element activation blocks (safety as [`rows_q4k`]).
pub(crate) unsafe fn rows_q80(w: &[u8], nb: usize, acts: &[BlockQ8_32], n: usize, out: &mut [f32]) {
    drive::<Q80>(w, nb, acts, n, out)
}
