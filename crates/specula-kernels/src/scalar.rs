//! Portable kernels: the fallback on CPUs without AVX2 and the reference the SIMD kernels are
//! tested against. Integer dot products per block, one f32 accumulation per (weight row,
//! activation row), so results never depend on how many rows share a call.

use crate::blocks::*;

/// `sum(sc * dot)` over Q4_K's eight 32-element sub-blocks, minus the minimums term.
#[inline]
pub(crate) fn dot_q4k(w: &[u8], a: &BlockQ8K) -> f32 {
    let d = f16_at(w, 0);
    let dmin = f16_at(w, 2);
    let (sc, m) = q4k_scales(&w[4..16]);
    let qs = &w[16..144];
    let mut sumi = 0i32;
    for c in 0..4 {
        let q = &qs[32 * c..32 * c + 32];
        let (mut lo, mut hi) = (0i32, 0i32);
        for (l, &b) in q.iter().enumerate() {
            lo += (b & 0x0f) as i32 * a.qs[64 * c + l] as i32;
            hi += (b >> 4) as i32 * a.qs[64 * c + 32 + l] as i32;
        }
        sumi += lo * sc[2 * c] as i32 + hi * sc[2 * c + 1] as i32;
    }
    let summ: i32 = (0..8)
        .map(|s| m[s] as i32 * (a.bsums[2 * s] as i32 + a.bsums[2 * s + 1] as i32))
        .sum();
    d * a.d * sumi as f32 - dmin * a.d * summ as f32
}

/// Q6_K: `d * sum(sc_16 * (q - 32) * a)`.
#[inline]
pub(crate) fn dot_q6k(w: &[u8], a: &BlockQ8K) -> f32 {
    let d = f16_at(w, 208);
    let mut sumi = 0i32;
    for s in 0..16 {
        let sc = w[192 + s] as i8 as i32;
        let part: i32 = (16 * s..16 * s + 16)
            .map(|i| q6k_value(w, i) as i32 * a.qs[i] as i32)
            .sum();
        sumi += sc * (part - 32 * a.bsums[s] as i32);
    }
    d * a.d * sumi as f32
}

/// Q5_0: `d * sum((q - 16) * a)`.
#[inline]
pub(crate) fn dot_q50(w: &[u8], a: &BlockQ8_32) -> f32 {
    let d = f16_at(w, 0);
    let part: i32 = (0..QK32)
        .map(|i| q50_value(w, i) as i32 * a.qs[i] as i32)
        .sum();
    d * a.d * (part - 16 * a.sum) as f32
}

/// Q8_0: `d * sum(q * a)`.
#[inline]
pub(crate) fn dot_q80(w: &[u8], a: &BlockQ8_32) -> f32 {
    let d = f16_at(w, 0);
    let part: i32 = (0..QK32)
        .map(|i| (w[2 + i] as i8) as i32 * a.qs[i] as i32)
        .sum();
    d * a.d * part as f32
}

/// `out[r * n + j] = sum_b dot(w[r, b], acts[j, b])` for every row of `w` in this chunk.
pub(crate) fn rows<A>(
    w: &[u8],
    block_bytes: usize,
    nb: usize,
    acts: &[A],
    n: usize,
    out: &mut [f32],
    dot: impl Fn(&[u8], &A) -> f32,
) {
    let row_bytes = nb * block_bytes;
    for (r, o) in out.chunks_exact_mut(n).enumerate() {
        let wrow = &w[r * row_bytes..(r + 1) * row_bytes];
        for (j, y) in o.iter_mut().enumerate() {
            let arow = &acts[j * nb..(j + 1) * nb];
            *y = wrow
                .chunks_exact(block_bytes)
                .zip(arow)
                .map(|(wb, ab)| dot(wb, ab))
                .sum();
        }
    }
}
