//! AVX2 kernels for the interleaved Q5_0 / Q8_0 layout ([`crate::x8`]): lane `r` of every
//! vector belongs to row `r` of an eight-row group, so a block's integer dot products for all
//! eight rows come out of a few vertical instructions and one scale multiply.
//!
//! Batch invariance: each activation row has its own accumulators and sees the same instruction
//! sequence whatever the tile size or `n`; the integer parts are exact, and the float part is
//! one fused multiply-add per block in block order.

use crate::avx2::PREFETCH_AHEAD;
use crate::blocks::{BlockQ8_32, Q50_BYTES, Q80_BYTES};
use crate::x8::GROUP;
use std::arch::x86_64::*;

/// Activation rows per pass over a group's weights (four keeps the integer sums, the float
/// accumulators and the decoded weights in the sixteen vector registers).
const TILE: usize = 4;

/// One interleaved format.
trait X8 {
    /// Bytes of a super-block (eight rows by one 32-weight block).
    const SB_BYTES: usize;
    /// The super-block's integer dot products with `T` activation blocks: lane `r` of result
    /// `j` is `sum_i q[r][i] * a[j][i]`, the weights with their zero point removed.
    unsafe fn dots<const T: usize>(sb: *const u8, a: &[&BlockQ8_32; T]) -> [__m256i; T];
}

/// Activation bytes `4k..4k + 4` in every lane.
#[inline(always)]
unsafe fn quad(a: &BlockQ8_32, k: usize) -> __m256i {
    _mm256_set1_epi32((a.qs.as_ptr().add(4 * k) as *const i32).read_unaligned())
}

struct Q80;
struct Q50;

impl X8 for Q80 {
    const SB_BYTES: usize = GROUP * Q80_BYTES;

    #[inline(always)]
    unsafe fn dots<const T: usize>(sb: *const u8, a: &[&BlockQ8_32; T]) -> [__m256i; T] {
        let ones = _mm256_set1_epi16(1);
        let mut sumi = [_mm256_setzero_si256(); T];
        for k in 0..8 {
            let w = _mm256_loadu_si256(sb.add(16 + 32 * k) as *const __m256i);
            let aw = _mm256_abs_epi8(w);
            for (s, a) in sumi.iter_mut().zip(a) {
                // |w| * sign(a, w) = w * a with an unsigned first operand; pair sums fit i16.
                let p = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(quad(a, k), w));
                *s = _mm256_add_epi32(*s, _mm256_madd_epi16(p, ones));
            }
        }
        sumi
    }
}

/// Bit `k` of every byte of `h`, moved to bit 4 (the fifth bit of a Q5_0 value).
#[inline(always)]
unsafe fn fifth_bit(h: __m256i, k: usize) -> __m256i {
    // 16-bit shifts: the bits that cross into the neighbouring byte are masked off.
    let moved = match k {
        0 => _mm256_slli_epi16::<4>(h),
        1 => _mm256_slli_epi16::<3>(h),
        2 => _mm256_slli_epi16::<2>(h),
        3 => _mm256_slli_epi16::<1>(h),
        4 => h,
        5 => _mm256_srli_epi16::<1>(h),
        6 => _mm256_srli_epi16::<2>(h),
        _ => _mm256_srli_epi16::<3>(h),
    };
    _mm256_and_si256(moved, _mm256_set1_epi8(0x10))
}

impl X8 for Q50 {
    const SB_BYTES: usize = GROUP * Q50_BYTES;

    #[inline(always)]
    unsafe fn dots<const T: usize>(sb: *const u8, a: &[&BlockQ8_32; T]) -> [__m256i; T] {
        let m4 = _mm256_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        let h = _mm256_loadu_si256(sb.add(144) as *const __m256i);
        let mut sumi = [_mm256_setzero_si256(); T];
        for half in 0..2 {
            let p0 = _mm256_loadu_si256(sb.add(16 + 64 * half) as *const __m256i);
            let p1 = _mm256_loadu_si256(sb.add(48 + 64 * half) as *const __m256i);
            let k0 = 4 * half;
            // The unsigned values q + 16 (0..=31) of vectors k0..k0 + 4.
            let u = [
                _mm256_or_si256(_mm256_and_si256(p0, m4), fifth_bit(h, k0)),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(p0), m4),
                    fifth_bit(h, k0 + 1),
                ),
                _mm256_or_si256(_mm256_and_si256(p1, m4), fifth_bit(h, k0 + 2)),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(p1), m4),
                    fifth_bit(h, k0 + 3),
                ),
            ];
            for (s, a) in sumi.iter_mut().zip(a) {
                // Pair sums reach 2 * 31 * 127, four of them 31496: exact in i16.
                let p = _mm256_add_epi16(
                    _mm256_add_epi16(
                        _mm256_maddubs_epi16(u[0], quad(a, k0)),
                        _mm256_maddubs_epi16(u[1], quad(a, k0 + 1)),
                    ),
                    _mm256_add_epi16(
                        _mm256_maddubs_epi16(u[2], quad(a, k0 + 2)),
                        _mm256_maddubs_epi16(u[3], quad(a, k0 + 3)),
                    ),
                );
                *s = _mm256_add_epi32(*s, _mm256_madd_epi16(p, ones));
            }
        }
        // sum((u - 16) * a) = sum(u * a) - 16 * sum(a).
        for (s, a) in sumi.iter_mut().zip(a) {
            *s = _mm256_sub_epi32(*s, _mm256_set1_epi32(a.sum << 4));
        }
        sumi
    }
}

/// Runs kernel `K` over whole groups: `out[r * n + j]` = row `r` . activation row `j`, for the
/// `out.len() / n` rows (a multiple of eight) whose interleaved bytes are `w`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn drive<K: X8>(w: &[u8], nb: usize, acts: &[BlockQ8_32], n: usize, out: &mut [f32]) {
    let group_bytes = nb * K::SB_BYTES;
    for (gw, o) in w
        .chunks_exact(group_bytes)
        .zip(out.chunks_exact_mut(GROUP * n))
    {
        let mut t0 = 0;
        while t0 < n {
            let t = (n - t0).min(TILE);
            match t {
                1 => tile::<K, 1>(gw, nb, acts, n, t0, o),
                2 => tile::<K, 2>(gw, nb, acts, n, t0, o),
                3 => tile::<K, 3>(gw, nb, acts, n, t0, o),
                _ => tile::<K, TILE>(gw, nb, acts, n, t0, o),
            }
            t0 += t;
        }
    }
}

/// One group against activation rows `t0..t0 + T`.
#[inline(always)]
unsafe fn tile<K: X8, const T: usize>(
    gw: &[u8],
    nb: usize,
    acts: &[BlockQ8_32],
    n: usize,
    t0: usize,
    o: &mut [f32],
) {
    let mut acc = [_mm256_setzero_ps(); T];
    for (b, sb) in gw.chunks_exact(K::SB_BYTES).enumerate() {
        for l in 0..K::SB_BYTES.div_ceil(64) {
            let ahead = sb.as_ptr().wrapping_add(PREFETCH_AHEAD + 64 * l);
            _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
        }
        let a: [&BlockQ8_32; T] = std::array::from_fn(|j| &acts[(t0 + j) * nb + b]);
        let sumi = K::dots::<T>(sb.as_ptr(), &a);
        let scales = _mm256_cvtph_ps(_mm_loadu_si128(sb.as_ptr() as *const __m128i));
        for ((acc, s), a) in acc.iter_mut().zip(sumi).zip(a) {
            let d = _mm256_mul_ps(scales, _mm256_broadcast_ss(&a.d));
            *acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), *acc);
        }
    }
    for (j, acc) in acc.iter().enumerate() {
        let mut lanes = [0f32; GROUP];
        _mm256_storeu_ps(lanes.as_mut_ptr(), *acc);
        for (r, v) in lanes.iter().enumerate() {
            o[r * n + t0 + j] = *v;
        }
    }
}

/// Interleaved Q5_0 groups times 32-element activation blocks. Safety: the CPU must support
/// AVX2, FMA and F16C; `w` holds `out.len() / n` rows (a multiple of eight) of `nb` blocks in the
/// interleaved layout and `acts` `n` rows of `nb` blocks.
pub(crate) unsafe fn rows_q50(w: &[u8], nb: usize, acts: &[BlockQ8_32], n: usize, out: &mut [f32]) {
    drive::<Q50>(w, nb, acts, n, out)
}

/// Interleaved Q8_0 groups times 32-element activation blocks (safety as [`rows_q50`]).
pub(crate) unsafe fn rows_q80(w: &[u8], nb: usize, acts: &[BlockQ8_32], n: usize, out: &mut [f32]) {
    drive::<Q80>(w, nb, acts, n, out)
}
