//! AVX2 + FMA kernels for Q6_K rows in GGUF layout (the other types run interleaved on AVX2, see
//! `avx2_x8.rs`), weight-stationary: each weight block is decoded into registers once and
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
    /// Tiles of up to this many rows run with a compile-time row count ([`tile`]); larger ones
    /// loop over a runtime count ([`tile_dyn`]). Measured: k-quant blocks decode into 17
    /// registers, and past 2 rows the fixed-count code spills worse than the loop (n = 5: 6.8 vs
    /// 5.8 GB/s).
    const FIXED_TILE_MAX: usize;
    unsafe fn decode(blk: &[u8]) -> Self::Decoded;
    unsafe fn apply(w: &Self::Decoded, a: &Self::Act, acc: &mut __m256);
}

/// Runs kernel `K` over one chunk of weight rows: `out[r * n + j] = row r . activation row j`.
/// Inlined into [`drive_avx2`] / [`drive_vnni`], which enable the instruction sets.
#[inline(always)]
unsafe fn drive<K: Kernel>(w: &[u8], nb: usize, acts: &[K::Act], n: usize, out: &mut [f32]) {
    let row_bytes = nb * K::BLOCK_BYTES;
    for (r, o) in out.chunks_exact_mut(n).enumerate() {
        let wrow = &w[r * row_bytes..(r + 1) * row_bytes];
        let mut t0 = 0;
        while t0 < n {
            let t = (n - t0).min(TILE);
            let (a, o) = (&acts[t0 * nb..], &mut o[t0..t0 + t]);
            match t {
                _ if t > K::FIXED_TILE_MAX => tile_dyn::<K>(wrow, nb, a, o),
                1 => tile::<K, 1>(wrow, nb, a, o),
                2 => tile::<K, 2>(wrow, nb, a, o),
                3 => tile::<K, 3>(wrow, nb, a, o),
                4 => tile::<K, 4>(wrow, nb, a, o),
                5 => tile::<K, 5>(wrow, nb, a, o),
                6 => tile::<K, 6>(wrow, nb, a, o),
                7 => tile::<K, 7>(wrow, nb, a, o),
                _ => tile::<K, TILE>(wrow, nb, a, o),
            }
            t0 += t;
        }
    }
}

/// [`drive`] compiled for AVX2.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn drive_avx2<K: Kernel>(w: &[u8], nb: usize, acts: &[K::Act], n: usize, out: &mut [f32]) {
    drive::<K>(w, nb, acts, n, out)
}

/// [`drive`] compiled for AVX2 with AVX-512 VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn drive_vnni<K: Kernel>(w: &[u8], nb: usize, acts: &[K::Act], n: usize, out: &mut [f32]) {
    drive::<K>(w, nb, acts, n, out)
}

/// The f16 at byte `at` of `blk` as f32 in all eight lanes. Converted from a broadcast so that
/// the instruction writes a whole register: a scalar conversion let the compiler insert the
/// half into a register still holding the previous block's scale, which chained every block's
/// decode to the one before it (about 7 of the 15 cycles a Q5_0 block took).
#[inline(always)]
unsafe fn f16_splat(blk: &[u8], at: usize) -> __m256 {
    let bits = u16::from_le_bytes([blk[at], blk[at + 1]]);
    _mm256_cvtph_ps(_mm_set1_epi16(bits as i16))
}

/// Asks for the cache lines [`PREFETCH_AHEAD`] bytes past the start of block `wb`. A hint only: an
/// address past the matrix does not fault (wrapping pointer arithmetic, never dereferenced).
#[inline(always)]
unsafe fn prefetch_ahead<K: Kernel>(wb: &[u8]) {
    for l in 0..K::BLOCK_BYTES.div_ceil(64) {
        let ahead = wb.as_ptr().wrapping_add(PREFETCH_AHEAD + 64 * l);
        _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
    }
}

/// [`tile`] with a runtime row count `o.len()` (at most [`TILE`]): the same per-row arithmetic.
#[inline(always)]
unsafe fn tile_dyn<K: Kernel>(wrow: &[u8], nb: usize, acts: &[K::Act], o: &mut [f32]) {
    let t = o.len();
    let mut acc = [_mm256_setzero_ps(); TILE];
    for (b, wb) in wrow.chunks_exact(K::BLOCK_BYTES).enumerate() {
        prefetch_ahead::<K>(wb);
        let dec = K::decode(wb);
        for j in 0..t {
            K::apply(&dec, &acts[j * nb + b], &mut acc[j]);
        }
    }
    for j in 0..t {
        o[j] = hsum(acc[j]);
    }
}

/// One weight row against `T` activation rows (a compile-time count, so the accumulators live in
/// registers). Each row's accumulator sees the same instructions in the same order for every `T`.
#[inline(always)]
unsafe fn tile<K: Kernel, const T: usize>(wrow: &[u8], nb: usize, acts: &[K::Act], o: &mut [f32]) {
    let mut acc = [_mm256_setzero_ps(); T];
    for (b, wb) in wrow.chunks_exact(K::BLOCK_BYTES).enumerate() {
        prefetch_ahead::<K>(wb);
        let dec = K::decode(wb);
        for (j, acc) in acc.iter_mut().enumerate() {
            K::apply(&dec, &acts[j * nb + b], acc);
        }
    }
    for (o, acc) in o.iter_mut().zip(acc) {
        *o = hsum(acc);
    }
}

/// How far ahead of the block being decoded its rows are prefetched, in bytes. Decode streams
/// the weights from memory once per token; the hardware prefetcher alone leaves the kernel waiting
/// (about 11 GB/s of Q4_K rows on two threads here, 13-16 GB/s with this; 2-8 KB measured alike).
pub(crate) const PREFETCH_AHEAD: usize = 4096;

/// Q6_K; `V`: with AVX-512 VNNI (`vpdpwssd` fuses each chunk's scale multiply and sum).
struct Q6K<const V: bool>;

/// A decoded k-quant block: 256 unsigned quants as bytes, the i16 scales of each 32-byte chunk,
/// and the i16 multipliers of the activation's 16 partial sums (its 16 scales, for the `- 32`
/// offset).
struct DecodedK {
    q: [__m256i; 8],
    sc: [__m256i; 8],
    bsum_mul: __m256i,
    d: __m256,
}

/// `sum_t madd(maddubs(q[t], a[32t..]), sc[t])`: the integer part of a k-quant block dot
/// (`V`: the multiply-add and sum in one VNNI instruction, the same exact result).
#[inline(always)]
unsafe fn dot_256<const V: bool>(w: &DecodedK, a: &BlockQ8K) -> __m256i {
    let aq = a.qs.as_ptr();
    let mut sumi = _mm256_setzero_si256();
    for t in 0..8 {
        let av = _mm256_loadu_si256(aq.add(32 * t) as *const __m256i);
        let p = _mm256_maddubs_epi16(w.q[t], av);
        sumi = if V {
            _mm256_dpwssd_epi32(sumi, p, w.sc[t])
        } else {
            _mm256_add_epi32(sumi, _mm256_madd_epi16(p, w.sc[t]))
        };
    }
    sumi
}

/// `madd(bsums, bsum_mul)`: eight i32 lanes whose sum is `sum_s mul[s] * bsums[s]`.
#[inline(always)]
unsafe fn bsum_dot(w: &DecodedK, a: &BlockQ8K) -> __m256i {
    let bs = _mm256_loadu_si256(a.bsums.as_ptr() as *const __m256i);
    _mm256_madd_epi16(bs, w.bsum_mul)
}

impl<const V: bool> Kernel for Q6K<V> {
    type Act = BlockQ8K;
    type Decoded = DecodedK;
    const BLOCK_BYTES: usize = Q6K_BYTES;
    const FIXED_TILE_MAX: usize = 2;

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
        // The 16 signed scales widened to i16 (lane 0: scales 0..8, lane 1: 8..16); chunk t of
        // 32 quants spans scales 2t (its low 16 bytes) and 2t + 1.
        let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(192) as *const __m128i));
        let lanes = [
            _mm256_permute2x128_si256(sc16, sc16, 0x00),
            _mm256_permute2x128_si256(sc16, sc16, 0x11),
        ];
        let mut sc = [_mm256_setzero_si256(); 8];
        for (t, v) in sc.iter_mut().enumerate() {
            let (lo, hi) = (((2 * t) % 8) as i16, ((2 * t + 1) % 8) as i16);
            let ctrl = _mm256_set_m128i(
                _mm_set1_epi16((2 * hi) | ((2 * hi + 1) << 8)),
                _mm_set1_epi16((2 * lo) | ((2 * lo + 1) << 8)),
            );
            *v = _mm256_shuffle_epi8(lanes[t / 4], ctrl);
        }
        DecodedK {
            q,
            sc,
            bsum_mul: sc16,
            d: f16_splat(blk, 208),
        }
    }

    #[inline(always)]
    unsafe fn apply(w: &DecodedK, a: &BlockQ8K, acc: &mut __m256) {
        Self::finish(w, a, dot_256::<V>(w, a), acc)
    }
}

impl<const V: bool> Q6K<V> {
    /// Adds `d * (sumi - 32 * (scales . partial sums))` (scaled by the activation's scale).
    #[inline(always)]
    unsafe fn finish(w: &DecodedK, a: &BlockQ8K, sumi: __m256i, acc: &mut __m256) {
        // sum(sc * (q - 32) * a) = sum(sc * q * a) - 32 * sum(sc * bsums).
        let sumi = _mm256_sub_epi32(sumi, _mm256_slli_epi32(bsum_dot(w, a), 5));
        let d = _mm256_mul_ps(w.d, _mm256_broadcast_ss(&a.d));
        *acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), *acc);
    }
}

/// Q6_K rows times Q8_K activations. Safety: the CPU must support AVX2, FMA and F16C, and
/// AVX-512 F, BW, VL and VNNI when `vnni`; `w` holds `out.len() / n` rows of `nb` blocks and
/// `acts` `n` rows of `nb` blocks.
pub(crate) unsafe fn rows_q6k(
    vnni: bool,
    w: &[u8],
    nb: usize,
    acts: &[BlockQ8K],
    n: usize,
    out: &mut [f32],
) {
    if vnni {
        drive_vnni::<Q6K<true>>(w, nb, acts, n, out)
    } else {
        drive_avx2::<Q6K<false>>(w, nb, acts, n, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lanes(v: __m256i) -> [i16; 16] {
        let mut out = [0i16; 16];
        // SAFETY: `out` is 32 bytes; an unaligned store.
        unsafe { _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, v) };
        out
    }

    /// Q6_K's register-built scale vectors equal the scales spelled out from the block, for
    /// random bytes in every scale position.
    #[test]
    fn scale_vectors_match_the_scalar_unpacking() {
        if !crate::Isa::Avx2.is_supported() {
            return;
        }
        let mut rng = crate::tests::Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..2000 {
            let mut blk = [0u8; Q6K_BYTES];
            blk.iter_mut().for_each(|b| *b = rng.next() as u8);
            // Lanes 0..8 of sc[t] hold scale 2t, lanes 8..16 scale 2t + 1.
            // SAFETY: AVX2, FMA and F16C were detected above; the block has Q6K_BYTES bytes.
            let dec = unsafe { Q6K::<false>::decode(&blk) };
            let s16: Vec<i16> = (0..16).map(|s| blk[192 + s] as i8 as i16).collect();
            assert_eq!(lanes(dec.bsum_mul).to_vec(), s16);
            for t in 0..8 {
                let mut want = [s16[2 * t]; 16];
                want[8..].fill(s16[2 * t + 1]);
                assert_eq!(lanes(dec.sc[t]), want);
            }
        }
    }
}
