//! GGUF block layouts (byte-exact with llama.cpp's `ggml` formats), scalar dequantisation, and the
//! 8-bit activation blocks the dot products consume.
//!
//! Weights stay in the file's bytes; a block is read through the accessors below, never through a
//! `#[repr(C)]` cast, so alignment never matters.

use half::f16;

/// Elements in a k-quant super-block (Q4_K, Q6_K, and the Q8_K activations).
pub const QK_K: usize = 256;
/// Elements in a Q5_0 / Q8_0 block.
pub const QK32: usize = 32;

/// Bytes of one Q4_K block: `d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128]`.
pub const Q4K_BYTES: usize = 144;
/// Bytes of one Q6_K block: `ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16`.
pub const Q6K_BYTES: usize = 210;
/// Bytes of one Q5_0 block: `d: f16, qh: [u8; 4], qs: [u8; 16]`.
pub const Q50_BYTES: usize = 22;
/// Bytes of one Q8_0 block: `d: f16, qs: [i8; 32]`.
pub const Q80_BYTES: usize = 34;

#[inline(always)]
pub(crate) fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// The eight 6-bit (scale, min) pairs of a Q4_K block, from its 12 packed bytes.
#[inline(always)]
pub(crate) fn q4k_scales(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut m = [0u8; 8];
    for j in 0..8 {
        if j < 4 {
            sc[j] = s[j] & 63;
            m[j] = s[j + 4] & 63;
        } else {
            sc[j] = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
            m[j] = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
        }
    }
    (sc, m)
}

/// Dequantises one Q4_K block (144 bytes) into 256 floats.
pub fn dequantize_q4k(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let (sc, m) = q4k_scales(&b[4..16]);
    let qs = &b[16..144];
    for c in 0..4 {
        let q = &qs[32 * c..32 * c + 32];
        let (d1, m1) = (d * sc[2 * c] as f32, dmin * m[2 * c] as f32);
        let (d2, m2) = (d * sc[2 * c + 1] as f32, dmin * m[2 * c + 1] as f32);
        for l in 0..32 {
            out[64 * c + l] = d1 * (q[l] & 0x0f) as f32 - m1;
            out[64 * c + 32 + l] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

/// The 6-bit unsigned value `i` (0..256) of a Q6_K block, before the `- 32` offset.
#[inline(always)]
pub(crate) fn q6k_value(b: &[u8], i: usize) -> u8 {
    let (half, r) = (i / 128, i % 128);
    let (quarter, l) = (r / 32, r % 32);
    let ql = &b[64 * half..];
    let qh = b[128 + 32 * half + l];
    let low = match quarter {
        0 => ql[l] & 0x0f,
        1 => ql[l + 32] & 0x0f,
        2 => ql[l] >> 4,
        _ => ql[l + 32] >> 4,
    };
    low | (((qh >> (2 * quarter)) & 3) << 4)
}

/// Dequantises one Q6_K block (210 bytes) into 256 floats.
pub fn dequantize_q6k(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 208);
    for (i, o) in out.iter_mut().enumerate().take(QK_K) {
        let sc = b[192 + i / 16] as i8;
        *o = d * sc as f32 * (q6k_value(b, i) as i32 - 32) as f32;
    }
}

/// The 5-bit unsigned value `i` (0..32) of a Q5_0 block, before the `- 16` offset.
#[inline(always)]
pub(crate) fn q50_value(b: &[u8], i: usize) -> u8 {
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let low = if i < 16 {
        b[6 + i] & 0x0f
    } else {
        b[6 + i - 16] >> 4
    };
    low | ((((qh >> i) & 1) as u8) << 4)
}

/// Dequantises one Q5_0 block (22 bytes) into 32 floats.
pub fn dequantize_q50(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    for (i, o) in out.iter_mut().enumerate().take(QK32) {
        *o = d * (q50_value(b, i) as i32 - 16) as f32;
    }
}

/// Dequantises one Q8_0 block (34 bytes) into 32 floats.
pub fn dequantize_q80(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    for (i, o) in out.iter_mut().enumerate().take(QK32) {
        *o = d * (b[2 + i] as i8) as f32;
    }
}

/// 256 activations quantized to 8 bits with one scale, plus the sums of each 16 (for the
/// k-quants' offsets and minimums).
#[derive(Debug, Clone, Copy)]
#[repr(C, align(32))]
pub struct BlockQ8K {
    /// The quants, `x ≈ d * q`.
    pub qs: [i8; QK_K],
    /// Sums of `qs` over each 16 consecutive elements.
    pub bsums: [i16; 16],
    /// Sums of `qs` over each 32 consecutive elements.
    pub csums: [i16; 8],
    /// The scale.
    pub d: f32,
}

impl Default for BlockQ8K {
    fn default() -> Self {
        Self {
            qs: [0; QK_K],
            bsums: [0; 16],
            csums: [0; 8],
            d: 0.0,
        }
    }
}

/// 32 activations quantized to 8 bits with one scale, plus their sum (for Q5_0's offset).
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(32))]
pub struct BlockQ8_32 {
    /// The quants, `x ≈ d * q`.
    pub qs: [i8; QK32],
    /// The scale.
    pub d: f32,
    /// `sum(qs)`.
    pub sum: i32,
}

/// Quantizes `x` (a multiple of `qs.len()` long) to symmetric 8 bits: `d = max|x| / 127`,
/// `q = round(x / d)`. Returns `d`. Deterministic and per block, so a row's quantization never
/// depends on the other rows of a batch.
#[inline]
pub(crate) fn quantize_block(x: &[f32], qs: &mut [i8]) -> f32 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let has_nan = x.iter().any(|v| v.is_nan());
    if has_nan || amax == 0.0 || !amax.is_finite() {
        // All zero: exact. Non-finite: a NaN scale, so the output row is NaN, never silently 0.
        qs.iter_mut().for_each(|q| *q = 0);
        return if has_nan || amax != 0.0 {
            f32::NAN
        } else {
            0.0
        };
    }
    let d = amax / 127.0;
    let id = 127.0 / amax;
    for (q, v) in qs.iter_mut().zip(x) {
        *q = (v * id).round().clamp(-127.0, 127.0) as i8;
    }
    d
}

/// Quantizes one row of activations (length a multiple of 256) into Q8_K blocks.
///
/// Uses AVX2 when the CPU has it (the same bytes as the portable code).
pub fn quantize_row_q8k(x: &[f32], out: &mut [BlockQ8K]) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd() {
        // SAFETY: `simd` confirmed AVX2; the loop stops at the shorter of `x`'s blocks and `out`.
        unsafe { crate::avx2_quant::quantize_row_q8k(x, out) };
        return;
    }
    quantize_row_q8k_portable(x, out)
}

/// Sets a Q8_K block's 16- and 32-element sums from its quants.
pub(crate) fn fill_sums_q8k(blk: &mut BlockQ8K) {
    for (s, q) in blk.bsums.iter_mut().zip(blk.qs.chunks_exact(16)) {
        *s = q.iter().map(|&v| v as i16).sum();
    }
    for (c, pair) in blk.csums.iter_mut().zip(blk.bsums.chunks_exact(2)) {
        *c = pair[0] + pair[1];
    }
}

/// Quantizes one row of activations (length a multiple of 32) into 32-element blocks.
///
/// Uses AVX2 when the CPU has it (the same bytes as the portable code).
pub fn quantize_row_q8_32(x: &[f32], out: &mut [BlockQ8_32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd() {
        // SAFETY: as in `quantize_row_q8k`.
        unsafe { crate::avx2_quant::quantize_row_q8_32(x, out) };
        return;
    }
    quantize_row_q8_32_portable(x, out)
}

/// The portable [`quantize_row_q8k`] (also what the tests compare the AVX2 one with).
pub(crate) fn quantize_row_q8k_portable(x: &[f32], out: &mut [BlockQ8K]) {
    for (blk, xs) in out.iter_mut().zip(x.chunks_exact(QK_K)) {
        blk.d = quantize_block(xs, &mut blk.qs);
        fill_sums_q8k(blk);
    }
}

/// The portable [`quantize_row_q8_32`].
pub(crate) fn quantize_row_q8_32_portable(x: &[f32], out: &mut [BlockQ8_32]) {
    for (blk, xs) in out.iter_mut().zip(x.chunks_exact(QK32)) {
        blk.d = quantize_block(xs, &mut blk.qs);
        blk.sum = blk.qs.iter().map(|&v| v as i32).sum();
    }
}
