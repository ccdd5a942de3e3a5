//! AVX2 kernels for the interleaved layout ([`crate::x8`]): lane `r` of every
//! vector belongs to row `r` of an eight-row group, so a block's integer dot products for all
//! eight rows come out of a few vertical instructions and one scale multiply.
//!
//! Batch invariance: each activation row has its own accumulators and sees the same instruction
//! sequence whatever the tile size or `n`; the integer parts are exact, and the float part is
//! one fused multiply-add per block in block order.

use crate::avx2::PREFETCH_AHEAD;
use crate::blocks::{BlockQ8K, BlockQ8_32, Q50_BYTES, Q6K_BYTES, Q80_BYTES};
use crate::x8::{
    q4k_quants_at, GROUP, Q4K_PACKED_MINS_AT, Q4K_PACKED_SCALES_AT, Q4K_SB_BYTES,
    Q4K_SB_BYTES_PACKED,
};
use std::arch::x86_64::*;

/// Invokes the local macro `$m` for planes 0 to 7, written out so that each plane's offsets are
/// constants (`$m!(0); ... $m!(7);`).
macro_rules! eight_planes {
    ($m:ident) => {
        $m!(0);
        $m!(1);
        $m!(2);
        $m!(3);
        $m!(4);
        $m!(5);
        $m!(6);
        $m!(7);
    };
}

/// One interleaved format.
pub(crate) trait X8 {
    /// The activation block type.
    type Act;
    /// Bytes of a super-block (eight rows by one block).
    const SB_BYTES: usize;
    /// Activation rows per pass over a group's weights (at most 9): as many as keep the live
    /// sums and the decoded weights in the vector registers (measured).
    const TILE: usize;
    /// Adds the super-block's dot products with `T` activation blocks to the accumulators: lane
    /// `r` of `acc[j]` gains row `r` . activation block `j`.
    unsafe fn apply<const T: usize>(sb: *const u8, a: &[&Self::Act; T], acc: &mut [__m256; T]);
}

/// Asks for cache line `line` of the super-block [`PREFETCH_AHEAD`] bytes past `sb` (a hint: an
/// address past the matrix does not fault), and in a tile of several activation rows (`T > 1`)
/// also for the line [`FAR_AHEAD`] bytes past `sb` into L2. The kernels spread these over their
/// work, a line or two per step: issued in one burst per super-block they stalled the loads of
/// the block being computed (Q6_K, n = 5: 14 GB/s in a burst, 24 spread; n = 1: 17 and 28).
#[inline(always)]
unsafe fn prefetch<K: X8, const T: usize>(sb: *const u8, line: usize) {
    if line < K::SB_BYTES.div_ceil(64) {
        let ahead = sb.wrapping_add(PREFETCH_AHEAD + 64 * line);
        _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
        if T > 1 {
            _mm_prefetch::<_MM_HINT_T1>(sb.wrapping_add(FAR_AHEAD + 64 * line) as *const i8);
        }
    }
}

/// How far ahead a tile of several activation rows also prefetches into L2. Such a tile takes
/// several times longer per super-block than a one-row pass, and with the near prefetch alone
/// its lines arrived late: a second, L2-only request 8 KB ahead made the 1.5B five-token forward
/// 0.86-0.88x the time (in-process A/B, three runs; 4 KB ahead into L2 alone 0.92x, into L2
/// instead of L1 0.96x), the nine-token one 0.98-1.00x (compute-bound) and the one-token one
/// (which keeps the near request only) unchanged.
const FAR_AHEAD: usize = 2 * PREFETCH_AHEAD;

/// Activation bytes `4k..4k + 4` (of `qs`) in every lane.
#[inline(always)]
unsafe fn quad(qs: &[i8], k: usize) -> __m256i {
    _mm256_set1_epi32((qs.as_ptr().add(4 * k) as *const i32).read_unaligned())
}

/// `acc[j] += (scales * d_j) * sumi[j]` for the 32-element formats.
#[inline(always)]
unsafe fn scale_into<const T: usize>(
    sb: *const u8,
    sumi: [__m256i; T],
    a: &[&BlockQ8_32; T],
    acc: &mut [__m256; T],
) {
    let scales = _mm256_cvtph_ps(_mm_loadu_si128(sb as *const __m128i));
    for ((acc, s), a) in acc.iter_mut().zip(sumi).zip(a) {
        let d = _mm256_mul_ps(scales, _mm256_broadcast_ss(&a.d));
        *acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), *acc);
    }
}

/// Q8_0; `V`: with AVX-512 VNNI (the same integer sums in fewer instructions).
pub(crate) struct Q80<const V: bool>;
/// Q5_0; `V` as for [`Q80`].
pub(crate) struct Q50<const V: bool>;

impl<const V: bool> X8 for Q80<V> {
    type Act = BlockQ8_32;
    const SB_BYTES: usize = GROUP * Q80_BYTES;
    const TILE: usize = 4;

    #[inline(always)]
    unsafe fn apply<const T: usize>(sb: *const u8, a: &[&BlockQ8_32; T], acc: &mut [__m256; T]) {
        let ones = _mm256_set1_epi16(1);
        let mut sumi = [_mm256_setzero_si256(); T];
        for k in 0..8 {
            prefetch::<Self, T>(sb, k);
            let w = _mm256_loadu_si256(sb.add(16 + 32 * k) as *const __m256i);
            let aw = _mm256_abs_epi8(w);
            for (s, a) in sumi.iter_mut().zip(a) {
                // |w| * sign(a, w) = w * a with an unsigned first operand; pair sums fit i16.
                let sa = _mm256_sign_epi8(quad(&a.qs, k), w);
                *s = if V {
                    _mm256_dpbusd_epi32(*s, aw, sa)
                } else {
                    _mm256_add_epi32(*s, _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sa), ones))
                };
            }
        }
        scale_into(sb, sumi, a, acc)
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

impl<const V: bool> X8 for Q50<V> {
    type Act = BlockQ8_32;
    const SB_BYTES: usize = GROUP * Q50_BYTES;
    const TILE: usize = 4;

    #[inline(always)]
    unsafe fn apply<const T: usize>(sb: *const u8, a: &[&BlockQ8_32; T], acc: &mut [__m256; T]) {
        let m4 = _mm256_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        let h = _mm256_loadu_si256(sb.add(144) as *const __m256i);
        let mut sumi = [_mm256_setzero_si256(); T];
        for half in 0..2 {
            prefetch::<Self, T>(sb, 2 * half);
            prefetch::<Self, T>(sb, 2 * half + 1);
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
                if V {
                    for (i, u) in u.iter().enumerate() {
                        *s = _mm256_dpbusd_epi32(*s, *u, quad(&a.qs, k0 + i));
                    }
                    continue;
                }
                // Pair sums reach 2 * 31 * 127, four of them 31496: exact in i16.
                let p = _mm256_add_epi16(
                    _mm256_add_epi16(
                        _mm256_maddubs_epi16(u[0], quad(&a.qs, k0)),
                        _mm256_maddubs_epi16(u[1], quad(&a.qs, k0 + 1)),
                    ),
                    _mm256_add_epi16(
                        _mm256_maddubs_epi16(u[2], quad(&a.qs, k0 + 2)),
                        _mm256_maddubs_epi16(u[3], quad(&a.qs, k0 + 3)),
                    ),
                );
                *s = _mm256_add_epi32(*s, _mm256_madd_epi16(p, ones));
            }
        }
        // sum((u - 16) * a) = sum(u * a) - 16 * sum(a).
        for (s, a) in sumi.iter_mut().zip(a) {
            *s = _mm256_sub_epi32(*s, _mm256_set1_epi32(a.sum << 4));
        }
        scale_into(sb, sumi, a, acc)
    }
}

/// Copies the first (`odd` false) or second i16 of each 32-bit lane over both halves:
/// `(x0, x1) -> (x0, x0)` or `(x1, x1)`.
#[inline(always)]
unsafe fn dup_lanes(v: __m256i, odd: bool) -> __m256i {
    let ctrl = if odd {
        _mm256_setr_epi8(
            2, 3, 2, 3, 6, 7, 6, 7, 10, 11, 10, 11, 14, 15, 14, 15, 2, 3, 2, 3, 6, 7, 6, 7, 10, 11,
            10, 11, 14, 15, 14, 15,
        )
    } else {
        _mm256_setr_epi8(
            0, 1, 0, 1, 4, 5, 4, 5, 8, 9, 8, 9, 12, 13, 12, 13, 0, 1, 0, 1, 4, 5, 4, 5, 8, 9, 8, 9,
            12, 13, 12, 13,
        )
    };
    _mm256_shuffle_epi8(v, ctrl)
}

/// Q4_K; `V` as for [`Q80`] (and with it the layout's variant: packed scales).
pub(crate) struct Q4K<const V: bool>;

impl<const V: bool> X8 for Q4K<V> {
    type Act = BlockQ8K;
    const SB_BYTES: usize = if V { Q4K_SB_BYTES_PACKED } else { Q4K_SB_BYTES };
    /// AVX2: [`TILE_Q4K_AVX2`]. VNNI (32 vector
    /// registers): nine, a k = 8 verification in one pass (n = 9: 115 ns per super-block on one
    /// core, 120 as 5 + 4 rows, 126 as 8 + 1).
    const TILE: usize = if V { 9 } else { TILE_Q4K_AVX2 };

    #[inline(always)]
    unsafe fn apply<const T: usize>(sb: *const u8, a: &[&BlockQ8K; T], acc: &mut [__m256; T]) {
        let (sumi, summ) = if V {
            q4k_sums_vnni::<T, V>(sb, a)
        } else {
            q4k_sums_avx2::<T, V>(sb, a)
        };
        let d = _mm256_cvtph_ps(_mm_loadu_si128(sb as *const __m128i));
        let dmin = _mm256_cvtph_ps(_mm_loadu_si128(sb.add(16) as *const __m128i));
        for j in 0..T {
            let ad = _mm256_broadcast_ss(&a[j].d);
            let x = _mm256_fmadd_ps(_mm256_mul_ps(d, ad), _mm256_cvtepi32_ps(sumi[j]), acc[j]);
            acc[j] = _mm256_fnmadd_ps(_mm256_mul_ps(dmin, ad), _mm256_cvtepi32_ps(summ[j]), x);
        }
    }
}

/// Q6_K; `V` as for [`Q80`].
pub(crate) struct Q6K8<const V: bool>;

impl<const V: bool> X8 for Q6K8<V> {
    type Act = BlockQ8K;
    const SB_BYTES: usize = GROUP * Q6K_BYTES;
    /// Nine. VNNI: n = 9 took 144 ns per super-block on one core, 166 as 5 + 4 rows. AVX2 (16
    /// vector registers, so some sums spill at nine): one pass of nine as fast as 5 + 4 or
    /// 3 + 3 + 3 (Zen 3, L3-resident 8960 x 1536), and n = 5 in one pass of five.
    const TILE: usize = 9;

    #[inline(always)]
    unsafe fn apply<const T: usize>(sb: *const u8, a: &[&BlockQ8K; T], acc: &mut [__m256; T]) {
        if !V {
            return q6k_apply_avx2::<T>(sb, a, acc);
        }
        let mut sumi = [_mm256_setzero_si256(); T];
        for m in 0..8 {
            // Lane r: row r's scales of groups 2m and 2m + 1, as two i16.
            let sc = _mm256_cvtepi8_epi16(_mm_loadu_si128(sb.add(16 + 16 * m) as *const __m128i));
            let sc_lanes = [
                _mm256_srai_epi32::<16>(_mm256_slli_epi32::<16>(sc)),
                _mm256_srai_epi32::<16>(sc),
            ];
            for (e, sc_g) in sc_lanes.iter().enumerate() {
                let g = 2 * m + e;
                prefetch::<Self, T>(sb, 2 * g);
                prefetch::<Self, T>(sb, 2 * g + 1);
                let q = q6k_group(sb, g);
                for j in 0..T {
                    let mut s = _mm256_setzero_si256();
                    for (v, q) in q.iter().enumerate() {
                        s = _mm256_dpbusd_epi32(s, *q, quad(&a[j].qs, 4 * g + v));
                    }
                    sumi[j] = _mm256_add_epi32(sumi[j], _mm256_mullo_epi32(s, *sc_g));
                }
            }
            // The offset as in `q6k_offset`, each row's multiply-add and subtraction in one
            // `vpdpwssd` with the negated scales (in-process A/B on a Zen 4 host, 8960 x 1536,
            // nine rows: 0.933-0.975x the time; summing each group's four dot products row by
            // row or vector by vector measured the same).
            let neg_sc32 = _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16::<5>(sc));
            for j in 0..T {
                let bs = (a[j].bsums.as_ptr().add(2 * m) as *const i32).read_unaligned();
                sumi[j] = _mm256_dpwssd_epi32(sumi[j], neg_sc32, _mm256_set1_epi32(bs));
            }
        }
        q6k_finish(sb, a, &sumi, acc);
    }
}

/// Q6_K's `- 32` offset for the pair `m` of groups, taken off the integer sums:
/// sum(sc * (q - 32) * a) = sum(sc * q * a) - sum(32 sc * bsum), the last over the pair of groups
/// in one multiply-add (32 * 128 fits i16). `sc`: lane r holds row r's scales of groups 2m and
/// 2m + 1 as two i16.
#[inline(always)]
unsafe fn q6k_offset<const T: usize>(
    sc: __m256i,
    m: usize,
    a: &[&BlockQ8K; T],
    sumi: &mut [__m256i; T],
) {
    let sc32 = _mm256_slli_epi16::<5>(sc);
    for j in 0..T {
        let bs = (a[j].bsums.as_ptr().add(2 * m) as *const i32).read_unaligned();
        let off = _mm256_madd_epi16(sc32, _mm256_set1_epi32(bs));
        sumi[j] = _mm256_sub_epi32(sumi[j], off);
    }
}

/// Q6_K's float step, the same on every instruction set: `acc[j] += d * a[j].d * sumi[j]`, one
/// fused multiply-add per super-block.
#[inline(always)]
unsafe fn q6k_finish<const T: usize>(
    sb: *const u8,
    a: &[&BlockQ8K; T],
    sumi: &[__m256i; T],
    acc: &mut [__m256; T],
) {
    let d = _mm256_cvtph_ps(_mm_loadu_si128(sb as *const __m128i));
    for j in 0..T {
        let ad = _mm256_broadcast_ss(&a[j].d);
        acc[j] = _mm256_fmadd_ps(_mm256_mul_ps(d, ad), _mm256_cvtepi32_ps(sumi[j]), acc[j]);
    }
}

/// The unsigned 6-bit values of group `g` of a Q6_K super-block: vector `v` holds values
/// `4v..4v + 4` of the group in each row's lane.
#[inline(always)]
unsafe fn q6k_group(sb: *const u8, g: usize) -> [__m256i; 4] {
    let m4 = _mm256_set1_epi8(0x0f);
    let m30 = _mm256_set1_epi8(0x30);
    let v0 = _mm256_loadu_si256(sb.add(144 + 64 * g) as *const __m256i);
    let v1 = _mm256_loadu_si256(sb.add(176 + 64 * g) as *const __m256i);
    let h = _mm256_loadu_si256(sb.add(1168 + 32 * g) as *const __m256i);
    // 16-bit shifts: the bits that cross into the neighbouring byte are masked off.
    [
        _mm256_or_si256(
            _mm256_and_si256(v0, m4),
            _mm256_and_si256(_mm256_slli_epi16::<4>(h), m30),
        ),
        _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16::<4>(v0), m4),
            _mm256_and_si256(_mm256_slli_epi16::<2>(h), m30),
        ),
        _mm256_or_si256(_mm256_and_si256(v1, m4), _mm256_and_si256(h, m30)),
        _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16::<4>(v1), m4),
            _mm256_and_si256(_mm256_srli_epi16::<2>(h), m30),
        ),
    ]
}

/// [`Q6K8`] on AVX2: each group's four products per row pair-summed in i16 (`maddubs`, two at a
/// time: 2 * 2 * 63 * 127 = 32004 fits), then times the group's scale into i32 (`madd`). The
/// same exact integers as the VNNI kernel.
#[inline(always)]
unsafe fn q6k_apply_avx2<const T: usize>(sb: *const u8, a: &[&BlockQ8K; T], acc: &mut [__m256; T]) {
    let mut sumi = [_mm256_setzero_si256(); T];
    for m in 0..8 {
        // Lane r: row r's scales of groups 2m and 2m + 1, as two i16.
        let sc = _mm256_cvtepi8_epi16(_mm_loadu_si128(sb.add(16 + 16 * m) as *const __m128i));
        for e in 0..2 {
            let g = 2 * m + e;
            let sc_g = dup_lanes(sc, e == 1);
            prefetch::<Q6K8<false>, T>(sb, 2 * g);
            prefetch::<Q6K8<false>, T>(sb, 2 * g + 1);
            let q = q6k_group(sb, g);
            for j in 0..T {
                let qs = &a[j].qs;
                let p01 = _mm256_add_epi16(
                    _mm256_maddubs_epi16(q[0], quad(qs, 4 * g)),
                    _mm256_maddubs_epi16(q[1], quad(qs, 4 * g + 1)),
                );
                let p23 = _mm256_add_epi16(
                    _mm256_maddubs_epi16(q[2], quad(qs, 4 * g + 2)),
                    _mm256_maddubs_epi16(q[3], quad(qs, 4 * g + 3)),
                );
                let s =
                    _mm256_add_epi32(_mm256_madd_epi16(p01, sc_g), _mm256_madd_epi16(p23, sc_g));
                sumi[j] = _mm256_add_epi32(sumi[j], s);
            }
        }
        q6k_offset(sc, m, a, &mut sumi);
    }
    q6k_finish(sb, a, &sumi, acc);
}

/// Rows per pass of the AVX2 Q4_K kernel: nine, a k = 8 verification in one pass over the
/// weights; tiles of more than [`Q4K_PAIRED_MAX`] rows go chunk by chunk
/// ([`q4k_sums_avx2_by_chunk`]). On a Zen 3 host (L3-resident 8960 x 1536, one thread, best of
/// three alternations) nine rows in one pass ran 1.06x, seven 1.09x the speed of 5 + 4 and 4 + 3
/// rows two chunks at a time; the chunk-by-chunk order for five rows or fewer was no faster.
const TILE_Q4K_AVX2: usize = 9;

/// The largest tile [`q4k_sums_avx2`] runs two chunks at a time (`2T` live 16-bit sums plus the
/// plane's two halves fit the 16 vector registers up to five rows).
const Q4K_PAIRED_MAX: usize = 5;

/// Lane `r` of `sums[j]`: row `r`'s scale-weighted quant dot with activation block `j`; of
/// `mins[j]`: its minimum-weighted chunk sums (Q4_K's two integer parts).
type Q4KSums<const T: usize> = ([__m256i; T], [__m256i; T]);

/// Plane `8p + i` of a Q4_K super-block (`V`: the packed-scales variant) split into its low
/// nibbles (vector `16p + i`, chunk `2p`) and high ones (vector `16p + 8 + i`, chunk `2p + 1`).
#[inline(always)]
unsafe fn q4k_plane<const V: bool>(sb: *const u8, p: usize, i: usize) -> (__m256i, __m256i) {
    let m4 = _mm256_set1_epi8(0x0f);
    let at = q4k_quants_at(V);
    let v = _mm256_loadu_si256(sb.add(at + 256 * p + 32 * i) as *const __m256i);
    (
        _mm256_and_si256(v, m4),
        _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4),
    )
}

/// [`Q4KSums`] on AVX2: 16-bit pair sums per chunk, scaled by `madd`; the minimums' part after
/// the main loop, so that fewer sums are live in it. Each pass's eight planes are written out
/// (`plane!`), so their activation offsets are constants.
#[inline(always)]
unsafe fn q4k_sums_avx2<const T: usize, const V: bool>(
    sb: *const u8,
    a: &[&BlockQ8K; T],
) -> Q4KSums<T> {
    let mut sumi = [_mm256_setzero_si256(); T];
    if T > Q4K_PAIRED_MAX {
        q4k_sums_avx2_by_chunk::<T, V>(sb, a, &mut sumi);
    }
    for p in 0..4 {
        if T > Q4K_PAIRED_MAX {
            break;
        }
        let mut even = [_mm256_setzero_si256(); T];
        let mut odd = [_mm256_setzero_si256(); T];
        let qs: [*const i8; T] = std::array::from_fn(|j| a[j].qs.as_ptr().add(64 * p));
        macro_rules! plane {
            ($i:literal) => {
                prefetch::<Q4K<V>, T>(sb, 8 * p + $i);
                let (lo, hi) = q4k_plane::<V>(sb, p, $i);
                for j in 0..T {
                    // Pair sums reach 2 * 15 * 127; eight of them 30480: exact in i16.
                    let b_lo =
                        _mm256_set1_epi32((qs[j].add(4 * $i) as *const i32).read_unaligned());
                    let b_hi =
                        _mm256_set1_epi32((qs[j].add(32 + 4 * $i) as *const i32).read_unaligned());
                    even[j] = _mm256_add_epi16(even[j], _mm256_maddubs_epi16(lo, b_lo));
                    odd[j] = _mm256_add_epi16(odd[j], _mm256_maddubs_epi16(hi, b_hi));
                }
            };
        }
        eight_planes!(plane);
        // Lane pair r: row r's scales of chunks 2p and 2p + 1.
        let sc = _mm256_cvtepu8_epi16(_mm_loadu_si128(sb.add(32 + 16 * p) as *const __m128i));
        let (sc_even, sc_odd) = (dup_lanes(sc, false), dup_lanes(sc, true));
        for j in 0..T {
            let s = _mm256_add_epi32(
                _mm256_madd_epi16(even[j], sc_even),
                _mm256_madd_epi16(odd[j], sc_odd),
            );
            sumi[j] = _mm256_add_epi32(sumi[j], s);
        }
    }
    let mut summ = [_mm256_setzero_si256(); T];
    for p in 0..4 {
        // Lane pair r: row r's minimums of chunks 2p and 2p + 1 as two u16.
        let mn = _mm256_cvtepu8_epi16(_mm_loadu_si128(sb.add(96 + 16 * p) as *const __m128i));
        for j in 0..T {
            // (csum of chunk 2p, of chunk 2p + 1) in every lane pair.
            let cs = (a[j].csums.as_ptr().add(2 * p) as *const i32).read_unaligned();
            summ[j] = _mm256_add_epi32(summ[j], _mm256_madd_epi16(mn, _mm256_set1_epi32(cs)));
        }
    }
    (sumi, summ)
}

/// The scale-weighted part of [`q4k_sums_avx2`] for more rows than the registers hold as two
/// chunks at a time: one chunk at a time (its eight planes read twice, for the low nibbles and
/// then the high ones), so that `T` 16-bit sums are live instead of `2T`. The same exact
/// integers.
#[inline(always)]
unsafe fn q4k_sums_avx2_by_chunk<const T: usize, const V: bool>(
    sb: *const u8,
    a: &[&BlockQ8K; T],
    sumi: &mut [__m256i; T],
) {
    let m4 = _mm256_set1_epi8(0x0f);
    let at = q4k_quants_at(V);
    for p in 0..4 {
        let qs: [*const i8; T] = std::array::from_fn(|j| a[j].qs.as_ptr().add(64 * p));
        // Lane pair r: row r's scales of chunks 2p and 2p + 1.
        let sc = _mm256_cvtepu8_epi16(_mm_loadu_si128(sb.add(32 + 16 * p) as *const __m128i));
        macro_rules! chunk {
            ($hi:literal) => {
                let mut s16 = [_mm256_setzero_si256(); T];
                macro_rules! plane {
                    ($i:literal) => {
                        if $hi == 0 {
                            prefetch::<Q4K<V>, T>(sb, 8 * p + $i);
                        }
                        let v =
                            _mm256_loadu_si256(sb.add(at + 256 * p + 32 * $i) as *const __m256i);
                        let q = if $hi == 0 {
                            _mm256_and_si256(v, m4)
                        } else {
                            _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4)
                        };
                        for j in 0..T {
                            let b = _mm256_set1_epi32(
                                (qs[j].add(32 * $hi + 4 * $i) as *const i32).read_unaligned(),
                            );
                            s16[j] = _mm256_add_epi16(s16[j], _mm256_maddubs_epi16(q, b));
                        }
                    };
                }
                eight_planes!(plane);
                let sc_chunk = dup_lanes(sc, $hi == 1);
                for j in 0..T {
                    sumi[j] = _mm256_add_epi32(sumi[j], _mm256_madd_epi16(s16[j], sc_chunk));
                }
            };
        }
        chunk!(0);
        chunk!(1);
    }
}

/// [`Q4KSums`] with AVX-512 VNNI: each chunk's dot products in i32 lanes (`vpdpbusd`), then
/// times the lane's scale; the minimums' part after the main loop, so that fewer sums are live in
/// it. The same exact integers as [`q4k_sums_avx2`]. Each pair's eight planes are written out
/// (`plane!`), so that the activation offsets are constants (22-24 instructions per plane at
/// nine rows instead of 38 as a loop): in-process A/B on a Zen 4 host, 8960 x 1536, nine rows,
/// 0.958-0.974x the time (with the `vpdpwssd` minimums); writing out the four pairs as well
/// made it 1.43x, one chunk at a time (nine live sums instead of 18) 1.21x.
#[inline(always)]
unsafe fn q4k_sums_vnni<const T: usize, const V: bool>(
    sb: *const u8,
    a: &[&BlockQ8K; T],
) -> Q4KSums<T> {
    let mut sumi = [_mm256_setzero_si256(); T];
    let scales = unpack6(sb.add(Q4K_PACKED_SCALES_AT));
    for p in 0..4 {
        let mut even = [_mm256_setzero_si256(); T];
        let mut odd = [_mm256_setzero_si256(); T];
        let qs: [*const i8; T] = std::array::from_fn(|j| a[j].qs.as_ptr().add(64 * p));
        macro_rules! plane {
            ($i:literal) => {
                // One activation row streams the weights as fast as memory gives them, and
                // there the hardware prefetchers (not stopped at page boundaries since the
                // weights lie on huge pages) did better alone: 1.5B one-token forward
                // 0.953-0.983x the time without these, where the five- and nine-row forwards
                // need them (1.07x and 1.30x the time without).
                if T > 1 {
                    prefetch::<Q4K<V>, T>(sb, 8 * p + $i);
                }
                let (lo, hi) = q4k_plane::<V>(sb, p, $i);
                for j in 0..T {
                    let b_lo =
                        _mm256_set1_epi32((qs[j].add(4 * $i) as *const i32).read_unaligned());
                    let b_hi =
                        _mm256_set1_epi32((qs[j].add(32 + 4 * $i) as *const i32).read_unaligned());
                    even[j] = _mm256_dpbusd_epi32(even[j], lo, b_lo);
                    odd[j] = _mm256_dpbusd_epi32(odd[j], hi, b_hi);
                }
            };
        }
        eight_planes!(plane);
        // Lane r: row r's scale of chunk 2p (`sc_even`), of chunk 2p + 1 (`sc_odd`).
        let sc_even = pick(&Q4K_PICK.even[p], 0x1111_1111, scales);
        let sc_odd = pick(&Q4K_PICK.odd[p], 0x1111_1111, scales);
        for j in 0..T {
            let s = _mm256_add_epi32(
                _mm256_mullo_epi32(even[j], sc_even),
                _mm256_mullo_epi32(odd[j], sc_odd),
            );
            sumi[j] = _mm256_add_epi32(sumi[j], s);
        }
    }
    let mut summ = [_mm256_setzero_si256(); T];
    let mins = unpack6(sb.add(Q4K_PACKED_MINS_AT));
    for p in 0..4 {
        // Lane pair r: row r's minimums of chunks 2p and 2p + 1 as two u16.
        let mn = pick(&Q4K_PICK.mins[p], 0x5555_5555, mins);
        for j in 0..T {
            // `vpdpwssd`: the multiply-add of the AVX2 kernel and its sum in one instruction.
            let cs = (a[j].csums.as_ptr().add(2 * p) as *const i32).read_unaligned();
            summ[j] = _mm256_dpwssd_epi32(summ[j], mn, _mm256_set1_epi32(cs));
        }
    }
    (sumi, summ)
}

/// Byte indices for [`pick`]ing a Q4_K super-block's scales and minimums, per pair `p` of
/// chunks, out of the 64 values [`unpack6`] spreads (value `16p + 2r + e`: row `r`, chunk
/// `2p + e`).
struct Q4kPick {
    /// Byte `4r`: row `r`'s value of chunk `2p` (a u32 lane once the rest is zeroed).
    even: [[u8; 64]; 4],
    /// Byte `4r`: row `r`'s value of chunk `2p + 1`.
    odd: [[u8; 64]; 4],
    /// Byte `2k`: value `16p + k` (u16 lanes: row `r`'s two at lanes `2r`, `2r + 1`).
    mins: [[u8; 64]; 4],
}

static Q4K_PICK: Q4kPick = {
    let mut t = Q4kPick {
        even: [[0; 64]; 4],
        odd: [[0; 64]; 4],
        mins: [[0; 64]; 4],
    };
    let mut p = 0;
    while p < 4 {
        let mut r = 0;
        while r < 8 {
            t.even[p][4 * r] = (16 * p + 2 * r) as u8;
            t.odd[p][4 * r] = (16 * p + 2 * r + 1) as u8;
            t.mins[p][4 * r] = (16 * p + 2 * r) as u8;
            t.mins[p][4 * r + 2] = (16 * p + 2 * r + 1) as u8;
            r += 1;
        }
        p += 1;
    }
    t
};

/// Qword `q` of the result: bytes `6q..6q + 8` of the input, so that its eight 6-bit fields
/// (bits `48q..48q + 48` of the stream) start at bit `6j` of the qword.
static SPREAD6: [u8; 64] = {
    let mut t = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        t[i] = (6 * (i / 8) + i % 8) as u8;
        i += 1;
    }
    t
};

/// The 64 six-bit values of a packed Q4_K scale stream (48 bytes at `p`, value `i` at bits
/// `6i..6i + 6`; the 16 bytes read past it lie in the same super-block), one per byte: a byte
/// permute puts each qword's eight fields in place, a multishift moves field `j` to byte `j`,
/// and a mask clears the neighbours' bits.
#[inline(always)]
unsafe fn unpack6(p: *const u8) -> __m512i {
    let raw = _mm512_loadu_si512(p as *const __m512i);
    let spread =
        _mm512_permutexvar_epi8(_mm512_loadu_si512(SPREAD6.as_ptr() as *const __m512i), raw);
    let shifts = _mm512_set1_epi64(0x2a24_1e18_120c_0600);
    _mm512_and_si512(
        _mm512_multishift_epi64_epi8(shifts, spread),
        _mm512_set1_epi8(63),
    )
}

/// The bytes of `v` at `idx`'s indices in the lanes of `keep` (the rest zero), as 256 bits.
#[inline(always)]
unsafe fn pick(idx: &[u8; 64], keep: u64, v: __m512i) -> __m256i {
    let idx = _mm512_loadu_si512(idx.as_ptr() as *const __m512i);
    _mm512_castsi512_si256(_mm512_maskz_permutexvar_epi8(keep, idx, v))
}

/// Runs kernel `K` over groups: `out[j * rows + r]` = row `r` . activation row `j`, for the
/// `rows = out.len() / n` rows whose interleaved groups are `w` (the last group may be padded:
/// only its real rows are written). Activation-major, unlike the row kernels (`out[r * n + j]`):
/// a tile's eight rows then store with one vector per activation row. Inlined into [`drive_avx2`] / [`drive_vnni`], which enable the
/// instruction sets.
#[inline(always)]
unsafe fn drive<K: X8>(w: &[u8], nb: usize, acts: &[K::Act], n: usize, out: &mut [f32]) {
    let group_bytes = nb * K::SB_BYTES;
    let rows = out.len() / n;
    // As few passes over a group's weights as the tile allows, of balanced sizes. A row's
    // arithmetic is the same in any tile.
    const { assert!(K::TILE >= 1 && K::TILE <= 9) };
    for (g, gw) in w.chunks_exact(group_bytes).enumerate() {
        let r0 = g * GROUP;
        for (t0, t) in crate::tiles(n, K::TILE) {
            match t {
                1 => tile::<K, 1>(gw, nb, acts, t0, rows, r0, out),
                2 => tile::<K, 2>(gw, nb, acts, t0, rows, r0, out),
                3 => tile::<K, 3>(gw, nb, acts, t0, rows, r0, out),
                4 => tile::<K, 4>(gw, nb, acts, t0, rows, r0, out),
                5 => tile::<K, 5>(gw, nb, acts, t0, rows, r0, out),
                6 => tile::<K, 6>(gw, nb, acts, t0, rows, r0, out),
                7 => tile::<K, 7>(gw, nb, acts, t0, rows, r0, out),
                8 => tile::<K, 8>(gw, nb, acts, t0, rows, r0, out),
                _ => tile::<K, 9>(gw, nb, acts, t0, rows, r0, out),
            }
        }
    }
}

/// [`drive`] compiled for AVX2.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn drive_avx2<K: X8>(w: &[u8], nb: usize, acts: &[K::Act], n: usize, out: &mut [f32]) {
    drive::<K>(w, nb, acts, n, out)
}

/// [`drive`] compiled for AVX2 with AVX-512 VNNI (and the sixteen extra vector registers of
/// AVX-512 VL).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
unsafe fn drive_vnni<K: X8>(w: &[u8], nb: usize, acts: &[K::Act], n: usize, out: &mut [f32]) {
    drive::<K>(w, nb, acts, n, out)
}

/// One group against activation rows `t0..t0 + T`.
#[inline(always)]
unsafe fn tile<K: X8, const T: usize>(
    gw: &[u8],
    nb: usize,
    acts: &[K::Act],
    t0: usize,
    rows: usize,
    r0: usize,
    out: &mut [f32],
) {
    let mut acc = [_mm256_setzero_ps(); T];
    for (b, sb) in gw.chunks_exact(K::SB_BYTES).enumerate() {
        let a: [&K::Act; T] = std::array::from_fn(|j| &acts[(t0 + j) * nb + b]);
        K::apply::<T>(sb.as_ptr(), &a, &mut acc);
    }
    // Activation row j's results for the group's rows are contiguous: one store each.
    let real = GROUP.min(rows - r0);
    for (j, acc) in acc.iter().enumerate() {
        let dst = &mut out[(t0 + j) * rows + r0..][..real];
        if real == GROUP {
            _mm256_storeu_ps(dst.as_mut_ptr(), *acc);
        } else {
            let mut lanes = [0f32; GROUP];
            _mm256_storeu_ps(lanes.as_mut_ptr(), *acc);
            dst.copy_from_slice(&lanes[..real]);
        }
    }
}

/// Interleaved groups times activation blocks: [`drive_vnni`] with kernel `V` when `vnni`, else
/// [`drive_avx2`] with `A` (the same format, e.g. `Q4K<false>` and `Q4K<true>`). Safety: the CPU
/// must support AVX2, FMA and F16C, and AVX-512 F, BW, VL and VNNI when `vnni`; `w` holds the
/// interleaved groups of `out.len() / n` rows of `nb` blocks and `acts` `n` rows of `nb` blocks.
pub(crate) unsafe fn rows<A: X8, V: X8<Act = A::Act>>(
    vnni: bool,
    w: &[u8],
    nb: usize,
    acts: &[A::Act],
    n: usize,
    out: &mut [f32],
) {
    if vnni {
        drive_vnni::<V>(w, nb, acts, n, out)
    } else {
        drive_avx2::<A>(w, nb, acts, n, out)
    }
}
