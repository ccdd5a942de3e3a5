//! The interleaved ("x8") layout of Q4_K, Q6_K, Q5_0 and Q8_0 matrices for the AVX2 and AVX-512
//! VNNI kernels.
//!
//! A 32-weight block of these types carries too little work to hide its own decoding: one row at
//! a time, the AVX2 kernel spent about 11 cycles per Q5_0 block (4 GB/s per core, so decode was
//! compute-bound at two threads). Interleaving eight rows turns the per-block work vertical: one
//! 256-bit register holds four consecutive weights of each of the eight rows, an activation quad
//! is broadcast to all lanes, and lane `r` of the accumulator is row `r`'s dot product, with no
//! horizontal sums and one scale multiply per eight blocks.
//!
//! Layout: the rows are stored as groups of eight rows, the last group padded with zero blocks
//! when `rows` is not a multiple of eight (every row then runs the same instructions, so a matrix
//! cut to its first rows, [`crate::QMatrix::top_rows`], gives bit-identical results for them). A
//! group is the sequence of its super-blocks, one per block column ([`sb_bytes`]: as large as the
//! eight GGUF blocks it replaces, 32 bytes more for Q4_K on AVX2). Within a super-block, "vector `k`"
//! means 32 bytes holding weights `4k..4k + 4` of row 0, then of row 1, ..., row 7. A super-block
//! is:
//!
//! * bytes `0..16`: the eight rows' f16 scales (Q4_K: `d`, then `dmin` at `16..32`);
//! * Q8_0, bytes `16..272`: vectors 0..8 (signed bytes);
//! * Q5_0, bytes `16..144`: four 32-byte planes of nibbles, plane `m` holding the low four bits
//!   of vector `2m` (low nibbles) and `2m + 1` (high nibbles) of the unsigned 5-bit values
//!   `q + 16`; bytes `144..176`: one byte per vector position whose bit `k` is the fifth bit of
//!   vector `k` there;
//! * Q4_K on AVX2, bytes `32..96`: the 6-bit scales as bytes, 16 per pair `p` of 32-weight
//!   chunks (row `r`'s scales of chunks `2p`, `2p + 1` at bytes `2r`, `2r + 1`); `96..160`: the
//!   minimums the same way; `160..1184`: 32 planes of nibbles, plane `8c + i` holding vector
//!   `16c + i` (chunk `2c`) in its low and vector `16c + 8 + i` (chunk `2c + 1`) in its high
//!   nibbles;
//! * Q4_K on AVX-512 VNNI (with VBMI), the same 64 scales and 64 minimums in the same order but
//!   packed six bits each (value `i` at bits `6i..6i + 6`): scales at `32..80`, minimums at
//!   `80..128`, then the planes at `128..1152`: as large as the eight GGUF blocks. The kernel
//!   unpacks each set with one byte permute, one multishift and one mask per super-block;
//! * Q6_K, bytes `16..144`: the signed scales, 16 per pair `m` of groups of 16
//!   weights (byte `16 + 16m + 2r + e`: row `r`'s scale of group `2m + e`); `144..1168`: 32 planes of nibbles, plane
//!   `2g + h` holding the low four bits of the unsigned 6-bit values of vector `4g + 2h` (low
//!   nibbles) and `4g + 2h + 1` (high nibbles); `1168..1680`: 16 planes of the top two bits, plane
//!   `g` holding those of vector `4g + i` in bits `2i..2i + 2`. A group's four vectors decode from
//!   three loads, and its dot products (one `vpdpbusd` per vector) take one scale multiply.

use crate::aligned::AlignedBytes;
use crate::blocks::{q4k_scales, Q50_BYTES, Q6K_BYTES, QK32, QK_K};
use crate::{Isa, QuantType};
use rayon::prelude::*;

/// Rows per interleaved group.
pub(crate) const GROUP: usize = 8;

/// Bytes of an interleaved Q4_K super-block on AVX2 (eight blocks are 1152: the scales are stored
/// unpacked, one byte each).
pub(crate) const Q4K_SB_BYTES: usize = 32 + 128 + 1024;

/// Bytes of an interleaved Q4_K super-block on AVX-512 VNNI: the scales packed six bits each, as
/// in the GGUF blocks, so the kernel reads no more than the file holds.
pub(crate) const Q4K_SB_BYTES_PACKED: usize = 32 + 96 + 1024;

/// Whether `ty` on `isa` keeps its scales packed (Q4_K on AVX-512: VBMI's byte permutes and
/// multishifts unpack them in a few instructions per super-block).
pub(crate) fn packed_scales(ty: QuantType, isa: Isa) -> bool {
    ty == QuantType::Q4K && isa == Isa::Avx512Vnni
}

/// Whether `ty` runs interleaved on `isa`: every type, on AVX2 and above. (Q6_K on AVX2 alone
/// once kept the GGUF layout and a row kernel; on a Zen 3 host without AVX-512 the interleaved
/// kernel measured 1.3-1.9x its speed for two to nine rows, see docs/benchmarks.md.)
pub(crate) fn supports(ty: QuantType, isa: Isa) -> bool {
    match ty {
        QuantType::Q4K | QuantType::Q5_0 | QuantType::Q8_0 | QuantType::Q6K => isa.has_avx2(),
    }
}

/// Bytes of one super-block (eight rows by one block) of an interleaved `ty` on `isa`.
pub(crate) fn sb_bytes(ty: QuantType, isa: Isa) -> usize {
    match ty {
        QuantType::Q4K if packed_scales(ty, isa) => Q4K_SB_BYTES_PACKED,
        QuantType::Q4K => Q4K_SB_BYTES,
        _ => GROUP * ty.block_bytes(),
    }
}

/// Byte offset of group boundary row `r` (a multiple of eight, or the row count: the end).
pub(crate) fn row_offset(ty: QuantType, isa: Isa, cols: usize, r: usize) -> usize {
    r.div_ceil(GROUP) * (cols / ty.block_elems()) * sb_bytes(ty, isa)
}

/// The GGUF bytes of `rows x cols` (row-major blocks) interleaved, the last group padded with
/// zero blocks, in `isa`'s variant of the layout. `ty` must be interleaved on some instruction
/// set ([`supports`]).
pub(crate) fn pack(ty: QuantType, isa: Isa, rows: usize, cols: usize, data: &[u8]) -> AlignedBytes {
    let bb = ty.block_bytes();
    let nb = cols / ty.block_elems();
    let row_bytes = nb * bb;
    let sbb = sb_bytes(ty, isa);
    let packed = packed_scales(ty, isa);
    let mut out = AlignedBytes::zeroed(row_offset(ty, isa, cols, rows));
    let zero = [0u8; Q6K_BYTES];
    // Groups are independent: packing a large model's matrices is a load-time cost worth halving.
    out.par_chunks_mut(nb * sbb)
        .enumerate()
        .for_each(|(g, group)| {
            for (b, sb) in group.chunks_exact_mut(sbb).enumerate() {
                let blocks: [&[u8]; GROUP] = std::array::from_fn(|r| {
                    let row = g * GROUP + r;
                    let at = row * row_bytes + b * bb;
                    if row < rows {
                        &data[at..at + bb]
                    } else {
                        &zero[..bb]
                    }
                });
                match ty {
                    QuantType::Q8_0 => pack_q80(&blocks, sb),
                    QuantType::Q4K => pack_q4k(&blocks, packed, sb),
                    QuantType::Q6K => pack_q6k(&blocks, sb),
                    QuantType::Q5_0 => pack_q50(&blocks, sb),
                }
            }
        });
    out
}

/// The inverse of [`pack`]: plain GGUF bytes of the `rows` rows.
pub(crate) fn unpack(ty: QuantType, isa: Isa, rows: usize, cols: usize, data: &[u8]) -> Vec<u8> {
    let row_bytes = (cols / ty.block_elems()) * ty.block_bytes();
    let mut out = vec![0u8; rows * row_bytes];
    for (r, row) in out.chunks_exact_mut(row_bytes).enumerate() {
        unpack_row(ty, isa, cols, data, r, row);
    }
    out
}

/// The plain GGUF bytes of row `r` of interleaved `data` (`isa`'s variant) into `out` (one row's
/// bytes).
pub(crate) fn unpack_row(
    ty: QuantType,
    isa: Isa,
    cols: usize,
    data: &[u8],
    r: usize,
    out: &mut [u8],
) {
    let bb = ty.block_bytes();
    let sbb = sb_bytes(ty, isa);
    let packed = packed_scales(ty, isa);
    let group = &data[row_offset(ty, isa, cols, r - r % GROUP)..];
    let lane = r % GROUP;
    for (sb, blk) in group.chunks_exact(sbb).zip(out.chunks_exact_mut(bb)) {
        match ty {
            QuantType::Q8_0 => unpack_q80(sb, lane, blk),
            QuantType::Q4K => unpack_q4k(sb, packed, lane, blk),
            QuantType::Q6K => unpack_q6k(sb, lane, blk),
            QuantType::Q5_0 => unpack_q50(sb, lane, blk),
        }
    }
}

/// Offset of weight `i` (0..32) of row `r` inside a super-block's vectors: vector `i / 4`, lane
/// group `r`, byte `i % 4`.
fn slot(r: usize, i: usize) -> (usize, usize) {
    (i / 4, 4 * r + i % 4)
}

fn pack_q80(blocks: &[&[u8]; GROUP], sb: &mut [u8]) {
    for (r, blk) in blocks.iter().enumerate() {
        sb[2 * r..2 * r + 2].copy_from_slice(&blk[..2]);
        for k in 0..8 {
            let at = 16 + 32 * k + 4 * r;
            sb[at..at + 4].copy_from_slice(&blk[2 + 4 * k..6 + 4 * k]);
        }
    }
}

fn unpack_q80(sb: &[u8], r: usize, blk: &mut [u8]) {
    blk[..2].copy_from_slice(&sb[2 * r..2 * r + 2]);
    for k in 0..8 {
        let at = 16 + 32 * k + 4 * r;
        blk[2 + 4 * k..6 + 4 * k].copy_from_slice(&sb[at..at + 4]);
    }
}

fn pack_q50(blocks: &[&[u8]; GROUP], sb: &mut [u8]) {
    for (r, blk) in blocks.iter().enumerate() {
        sb[2 * r..2 * r + 2].copy_from_slice(&blk[..2]);
        let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
        let qs = &blk[6..22];
        for b in 0..4 {
            let at = 4 * r + b;
            // Plane m: weight 8m + b in the low nibble, 8m + 4 + b in the high one (weights
            // 0..16 are the low nibbles of `qs`, 16..32 the high ones).
            for m in 0..2 {
                let (x, y) = (qs[8 * m + b], qs[8 * m + 4 + b]);
                sb[16 + 32 * m + at] = (x & 0x0f) | (y << 4);
                sb[16 + 32 * (m + 2) + at] = (x >> 4) | (y & 0xf0);
            }
            // Bit k: the fifth bit of weight 4k + b.
            sb[144 + at] = (0..8).fold(0u8, |h, k| h | ((((qh >> (4 * k + b)) & 1) as u8) << k));
        }
    }
}

fn unpack_q50(sb: &[u8], r: usize, blk: &mut [u8]) {
    blk[..Q50_BYTES].fill(0);
    blk[..2].copy_from_slice(&sb[2 * r..2 * r + 2]);
    let mut qh = 0u32;
    for i in 0..QK32 {
        let (k, at) = slot(r, i);
        let low = (sb[16 + 32 * (k / 2) + at] >> (4 * (k % 2))) & 0x0f;
        let high = (sb[16 + 128 + at] >> k) & 1;
        qh |= (high as u32) << i;
        blk[6 + i % 16] |= low << (4 * (i / 16));
    }
    blk[2..6].copy_from_slice(&qh.to_le_bytes());
}

/// Index (0..64) of row `r`'s scale (or minimum) of chunk `t` among a Q4_K super-block's 64:
/// 16 per pair of chunks, row `r`'s two at `2r`, `2r + 1`.
fn q4k_scale_slot(r: usize, t: usize) -> usize {
    16 * (t / 2) + 2 * r + t % 2
}

/// Offset of the packed scales in a packed-variant Q4_K super-block (48 bytes).
pub(crate) const Q4K_PACKED_SCALES_AT: usize = 32;

/// Offset of the packed minimums in a packed-variant Q4_K super-block (48 bytes).
pub(crate) const Q4K_PACKED_MINS_AT: usize = Q4K_PACKED_SCALES_AT + 48;

/// Offset of a Q4_K super-block's quant planes (after the scales, one byte or six bits each).
pub(crate) const fn q4k_quants_at(packed: bool) -> usize {
    if packed {
        Q4K_PACKED_MINS_AT + 48
    } else {
        160
    }
}

/// Writes 6-bit value `v` as value `i` of the bit stream `bits` (bits `6i..6i + 6`, little
/// endian).
fn put6(bits: &mut [u8], i: usize, v: u8) {
    let word = u16::from(v & 63) << ((6 * i) % 8);
    let at = 6 * i / 8;
    bits[at] |= word as u8;
    if let Some(next) = bits.get_mut(at + 1) {
        *next |= (word >> 8) as u8;
    }
}

/// Value `i` of a bit stream written by [`put6`].
fn get6(bits: &[u8], i: usize) -> u8 {
    let at = 6 * i / 8;
    let word = u16::from(bits[at]) | (u16::from(bits.get(at + 1).copied().unwrap_or(0)) << 8);
    ((word >> ((6 * i) % 8)) & 63) as u8
}

/// Interleaves eight Q4_K blocks into `sb` (zeroed: packed values are or-ed in).
fn pack_q4k(blocks: &[&[u8]; GROUP], packed: bool, sb: &mut [u8]) {
    let qs_at = q4k_quants_at(packed);
    for (r, blk) in blocks.iter().enumerate() {
        sb[2 * r..2 * r + 2].copy_from_slice(&blk[..2]);
        sb[16 + 2 * r..18 + 2 * r].copy_from_slice(&blk[2..4]);
        let (sc, m) = q4k_scales(&blk[4..16]);
        for t in 0..8 {
            let i = q4k_scale_slot(r, t);
            if packed {
                put6(&mut sb[Q4K_PACKED_SCALES_AT..Q4K_PACKED_MINS_AT], i, sc[t]);
                put6(&mut sb[Q4K_PACKED_MINS_AT..qs_at], i, m[t]);
            } else {
                sb[32 + i] = sc[t];
                sb[96 + i] = m[t];
            }
        }
        // Plane 8c + k holds, per row, bytes 4k..4k + 4 of the row's 32-byte run c of quants:
        // their low nibbles are vector 16c + k (chunk 2c), their high ones vector 16c + 8 + k.
        for c in 0..4 {
            for k in 0..8 {
                let at = qs_at + 32 * (8 * c + k) + 4 * r;
                let from = 16 + 32 * c + 4 * k;
                sb[at..at + 4].copy_from_slice(&blk[from..from + 4]);
            }
        }
    }
}

fn unpack_q4k(sb: &[u8], packed: bool, r: usize, blk: &mut [u8]) {
    let qs_at = q4k_quants_at(packed);
    blk[..2].copy_from_slice(&sb[2 * r..2 * r + 2]);
    blk[2..4].copy_from_slice(&sb[16 + 2 * r..18 + 2 * r]);
    let scale = |t: usize, unpacked_at: usize, packed_at: usize| {
        let i = q4k_scale_slot(r, t);
        if packed {
            get6(&sb[packed_at..packed_at + 48], i)
        } else {
            sb[unpacked_at + i]
        }
    };
    let sc: [u8; 8] = std::array::from_fn(|t| scale(t, 32, Q4K_PACKED_SCALES_AT));
    let m: [u8; 8] = std::array::from_fn(|t| scale(t, 96, Q4K_PACKED_MINS_AT));
    // The inverse of `q4k_scales`: chunks 0..4 in the low six bits of bytes 0..8, chunks 4..8
    // split into nibbles (bytes 8..12) and top bits (bits 6, 7 of bytes 0..8).
    for j in 0..4 {
        blk[4 + j] = sc[j] | ((sc[j + 4] >> 4) << 6);
        blk[8 + j] = m[j] | ((m[j + 4] >> 4) << 6);
        blk[12 + j] = (sc[j + 4] & 0x0f) | ((m[j + 4] & 0x0f) << 4);
    }
    for c in 0..4 {
        for k in 0..8 {
            let at = qs_at + 32 * (8 * c + k) + 4 * r;
            let to = 16 + 32 * c + 4 * k;
            blk[to..to + 4].copy_from_slice(&sb[at..at + 4]);
        }
    }
}

/// Byte `at` of a Q6_K super-block holding weight `i` (0..256) of row `r`: (nibble plane byte,
/// nibble shift, top-bits plane byte, top-bits shift).
fn q6k_slot(r: usize, i: usize) -> (usize, u32, usize, u32) {
    let (k, b) = (i / 4, i % 4);
    let (g, v) = (k / 4, k % 4);
    let lane = 4 * r + b;
    (
        144 + 32 * (2 * g + v / 2) + lane,
        4 * (v % 2) as u32,
        1168 + 32 * g + lane,
        2 * v as u32,
    )
}

fn pack_q6k(blocks: &[&[u8]; GROUP], sb: &mut [u8]) {
    for (r, blk) in blocks.iter().enumerate() {
        sb[2 * r..2 * r + 2].copy_from_slice(&blk[208..210]);
        for g in 0..16 {
            sb[16 + 16 * (g / 2) + 2 * r + g % 2] = blk[192 + g];
        }
        // The 6-bit values in order: half h, position l of 32, quarter q is weight 128h + 32q + l.
        let mut q = [0u8; QK_K];
        for h in 0..2 {
            for l in 0..32 {
                let (lo, hi) = (blk[64 * h + l], blk[64 * h + l + 32]);
                let top = blk[128 + 32 * h + l];
                q[128 * h + l] = (lo & 0x0f) | ((top & 3) << 4);
                q[128 * h + 32 + l] = (hi & 0x0f) | (((top >> 2) & 3) << 4);
                q[128 * h + 64 + l] = (lo >> 4) | (((top >> 4) & 3) << 4);
                q[128 * h + 96 + l] = (hi >> 4) | ((top >> 6) << 4);
            }
        }
        for g in 0..16 {
            for b in 0..4 {
                let lane = 4 * r + b;
                // Weight 4k + b of vector k = 4g + v.
                let w = |v: usize| q[4 * (4 * g + v) + b];
                sb[144 + 64 * g + lane] = (w(0) & 0x0f) | (w(1) << 4);
                sb[176 + 64 * g + lane] = (w(2) & 0x0f) | (w(3) << 4);
                sb[1168 + 32 * g + lane] =
                    (w(0) >> 4) | ((w(1) >> 4) << 2) | ((w(2) >> 4) << 4) | ((w(3) >> 4) << 6);
            }
        }
    }
}

fn unpack_q6k(sb: &[u8], r: usize, blk: &mut [u8]) {
    blk.fill(0);
    blk[208..210].copy_from_slice(&sb[2 * r..2 * r + 2]);
    for g in 0..16 {
        blk[192 + g] = sb[16 + 16 * (g / 2) + 2 * r + g % 2];
    }
    // The inverse of `q6k_value`: weight `i` of half `i / 128`, quarter `(i % 128) / 32`.
    for i in 0..QK_K {
        let (lo, ls, hi, hs) = q6k_slot(r, i);
        let q = ((sb[lo] >> ls) & 0x0f) | (((sb[hi] >> hs) & 3) << 4);
        let (half, rest) = (i / 128, i % 128);
        let (quarter, l) = (rest / 32, rest % 32);
        let ql = 64 * half + l + 32 * (quarter % 2);
        blk[ql] |= (q & 0x0f) << (4 * (quarter / 2));
        blk[128 + 32 * half + l] |= (q >> 4) << (2 * quarter);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Packing then unpacking returns the bytes, for row counts with and without a remainder, in
    /// both variants of the layout (Q4_K's scales one per byte and packed).
    #[test]
    fn unpack_inverts_pack() {
        let mut rng = crate::tests::Rng(0x2545_f491_4f6c_dd1d);
        for isa in [Isa::Avx2, Isa::Avx512Vnni] {
            for ty in [
                QuantType::Q4K,
                QuantType::Q6K,
                QuantType::Q5_0,
                QuantType::Q8_0,
            ] {
                for (rows, cols) in [(8, 256), (19, 768), (3, 512), (64, 256)] {
                    let len = rows * cols / ty.block_elems() * ty.block_bytes();
                    let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                    let packed = pack(ty, isa, rows, cols, &data);
                    assert_eq!(packed.len(), row_offset(ty, isa, cols, rows));
                    assert_ne!(
                        packed[..data.len()],
                        data,
                        "{ty:?} {rows}x{cols} not rearranged"
                    );
                    assert_eq!(
                        unpack(ty, isa, rows, cols, &packed),
                        data,
                        "{ty:?} {isa:?} {rows}x{cols}"
                    );
                }
            }
        }
    }

    /// The packed Q4_K variant is exactly as large as the GGUF blocks it holds.
    #[test]
    fn packed_q4k_scales_take_the_file_bytes() {
        assert_eq!(
            sb_bytes(QuantType::Q4K, Isa::Avx512Vnni),
            GROUP * QuantType::Q4K.block_bytes()
        );
        let mut bits = [0u8; 48];
        for i in 0..64 {
            put6(&mut bits, i, (i * 37 % 64) as u8);
        }
        for i in 0..64 {
            assert_eq!(get6(&bits, i), (i * 37 % 64) as u8);
        }
    }
}
