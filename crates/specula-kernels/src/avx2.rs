//! Shared AVX2 helpers of the SIMD kernels: a fixed-order horizontal sum and the prefetch
//! distance. (The quantized kernels live in `avx2_x8.rs`, on the interleaved layout of `x8.rs`.)

use std::arch::x86_64::*;

/// Horizontal sum of eight f32 lanes, in a fixed order.
#[inline(always)]
pub(crate) unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// How far ahead of the block being decoded its rows are prefetched, in bytes. Decode streams
/// the weights from memory once per token; the hardware prefetcher alone leaves the kernel waiting
/// (about 11 GB/s of Q4_K rows on two threads here, 13-16 GB/s with this; 2-8 KB measured alike).
pub(crate) const PREFETCH_AHEAD: usize = 4096;
