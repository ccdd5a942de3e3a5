//! AVX2 activation quantization: the same bytes as the portable [`crate::blocks`] code, about ten
//! times faster (the portable loop's rounding does not vectorise well, and at n = 5 quantizing a
//! layer's activations cost as much as a fifth of the extra rows' matmul time).
//!
//! Exactness: `max|x|`, the scale and `x * (127 / max)` are the same float operations; rounding
//! half away from zero is `trunc(p + copysign(0.49999997, p))`, which equals `f32::round` for every
//! `|p| <= 130` (checked exhaustively over all floats when written; here `|p| <= 127`); the block
//! sums are exact integers. Blocks that hold a NaN, an infinity, only zeros or only values so small
//! that `127 / max` overflows go to the portable code, which defines their (rare) results.

use crate::blocks::{quantize_block, BlockQ8K, BlockQ8_32, QK32, QK_K};
use std::arch::x86_64::*;

/// `max |x|` over `x` (a multiple of 8 long), or `None` if `x` holds a NaN or an infinity, is all
/// zeros, or its maximum is so small that `127 / max` overflows (cases left to the portable code).
#[inline(always)]
unsafe fn abs_max(x: &[f32]) -> Option<f32> {
    let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let mut mx = _mm256_setzero_ps();
    let mut bad = _mm256_setzero_ps();
    for c in x.chunks_exact(8) {
        let v = _mm256_and_ps(_mm256_loadu_ps(c.as_ptr()), abs);
        // Unordered (NaN) or infinite: |v| is not below infinity.
        bad = _mm256_or_ps(
            bad,
            _mm256_cmp_ps::<_CMP_NLT_UQ>(v, _mm256_set1_ps(f32::INFINITY)),
        );
        mx = _mm256_max_ps(mx, v);
    }
    if _mm256_movemask_ps(bad) != 0 {
        return None;
    }
    let m = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps::<1>(mx));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_max_ss(m, _mm_movehdup_ps(m));
    let amax = _mm_cvtss_f32(m);
    (amax != 0.0 && (127.0 / amax).is_finite()).then_some(amax)
}

/// Rounds `x[..32] * id` half away from zero, clamps to +-127 and stores the 32 bytes at `qs`.
#[inline(always)]
unsafe fn quantize_32(x: &[f32], id: __m256, qs: *mut i8) {
    let sign = _mm256_set1_ps(-0.0);
    let half = _mm256_set1_ps(f32::from_bits(0.5f32.to_bits() - 1));
    let (lo, hi) = (_mm256_set1_ps(-127.0), _mm256_set1_ps(127.0));
    let mut q = [_mm256_setzero_si256(); 4];
    for (k, q) in q.iter_mut().enumerate() {
        let p = _mm256_mul_ps(_mm256_loadu_ps(x.as_ptr().add(8 * k)), id);
        let h = _mm256_or_ps(_mm256_and_ps(p, sign), half);
        let r = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(_mm256_add_ps(p, h));
        *q = _mm256_cvttps_epi32(_mm256_min_ps(_mm256_max_ps(r, lo), hi));
    }
    // Packing works per 128-bit half; the permute restores element order.
    let w = _mm256_packs_epi16(
        _mm256_packs_epi32(q[0], q[1]),
        _mm256_packs_epi32(q[2], q[3]),
    );
    let w = _mm256_permutevar8x32_epi32(w, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(qs as *mut __m256i, w);
}

/// The sums of bytes 0..8, 8..16, 16..24 and 24..32 of the 32 quants at `qs`.
#[inline(always)]
unsafe fn sums_of_8(qs: *const i8) -> [i32; 4] {
    // As unsigned bytes q + 128, whose sums `vpsadbw` takes against zero.
    let u = _mm256_xor_si256(
        _mm256_loadu_si256(qs as *const __m256i),
        _mm256_set1_epi8(-128),
    );
    let s = _mm256_sad_epu8(u, _mm256_setzero_si256());
    let mut out = [0i64; 4];
    _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, s);
    out.map(|v| v as i32 - 8 * 128)
}

/// [`crate::quantize_row_q8k`] on AVX2. Safety: the CPU must support AVX2; `x` holds
/// `out.len()` blocks of 256.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn quantize_row_q8k(x: &[f32], out: &mut [BlockQ8K]) {
    for (blk, xs) in out.iter_mut().zip(x.chunks_exact(QK_K)) {
        let Some(amax) = abs_max(xs) else {
            blk.d = quantize_block(xs, &mut blk.qs);
            crate::blocks::fill_sums_q8k(blk);
            continue;
        };
        blk.d = amax / 127.0;
        let id = _mm256_set1_ps(127.0 / amax);
        for c in 0..QK_K / 32 {
            let qs = blk.qs.as_mut_ptr().add(32 * c);
            quantize_32(&xs[32 * c..], id, qs);
            let s = sums_of_8(qs);
            blk.bsums[2 * c] = (s[0] + s[1]) as i16;
            blk.bsums[2 * c + 1] = (s[2] + s[3]) as i16;
            blk.csums[c] = (s[0] + s[1] + s[2] + s[3]) as i16;
        }
    }
}

/// [`crate::quantize_row_q8_32`] on AVX2 (safety as [`quantize_row_q8k`], blocks of 32).
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn quantize_row_q8_32(x: &[f32], out: &mut [BlockQ8_32]) {
    for (blk, xs) in out.iter_mut().zip(x.chunks_exact(QK32)) {
        let Some(amax) = abs_max(xs) else {
            blk.d = quantize_block(xs, &mut blk.qs);
            blk.sum = blk.qs.iter().map(|&v| v as i32).sum();
            continue;
        };
        blk.d = amax / 127.0;
        quantize_32(xs, _mm256_set1_ps(127.0 / amax), blk.qs.as_mut_ptr());
        blk.sum = sums_of_8(blk.qs.as_ptr()).iter().sum();
    }
}
