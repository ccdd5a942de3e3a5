//! The interleaved ("x8") layout of Q5_0 and Q8_0 matrices for the AVX2 kernels.
//!
//! A 32-weight block of these types carries too little work to hide its own decoding: one row at
//! a time, the AVX2 kernel spent about 11 cycles per Q5_0 block (4 GB/s per core, so decode was
//! compute-bound at two threads). Interleaving eight rows turns the per-block work vertical: one
//! 256-bit register holds four consecutive weights of each of the eight rows, an activation quad
//! is broadcast to all lanes, and lane `r` of the accumulator is row `r`'s dot product, with no
//! horizontal sums and one scale multiply per eight blocks.
//!
//! Layout: the matrix's first `rows / 8 * 8` rows are stored as groups of eight rows; a group is
//! the sequence of its super-blocks, one per block column, each exactly as large as the eight GGUF
//! blocks it replaces (so a row still occupies `row_bytes` and row offsets are unchanged). Any
//! remaining rows (`rows % 8`) follow in GGUF layout. A super-block is:
//!
//! * bytes `0..16`: the eight rows' f16 scales;
//! * Q8_0, bytes `16..272`: eight 32-byte vectors, vector `k` holding weights `4k..4k + 4` of row
//!   0, then of row 1, ..., row 7 (signed bytes);
//! * Q5_0, bytes `16..144`: four 32-byte planes of nibbles, plane `m` holding the low four bits
//!   of vector `2m` (low nibbles) and `2m + 1` (high nibbles), vectors laid out as for Q8_0 but
//!   with the unsigned 5-bit values `q + 16`; bytes `144..176`: one byte per vector position whose
//!   bit `k` is the fifth bit of vector `k` there.

use crate::blocks::{q50_value, Q50_BYTES, Q80_BYTES, QK32};
use crate::QuantType;

/// Rows per interleaved group.
pub(crate) const GROUP: usize = 8;

/// Whether `ty` has an interleaved layout.
pub(crate) fn supports(ty: QuantType) -> bool {
    matches!(ty, QuantType::Q5_0 | QuantType::Q8_0)
}

/// Rows of a `rows`-row matrix that the interleaved layout covers.
pub(crate) fn grouped_rows(rows: usize) -> usize {
    rows / GROUP * GROUP
}

/// The GGUF bytes of `rows x cols` (row-major blocks) with the first `grouped_rows(rows)` rows
/// interleaved. `ty` must satisfy [`supports`].
pub(crate) fn pack(ty: QuantType, rows: usize, cols: usize, data: &[u8]) -> Vec<u8> {
    let bb = ty.block_bytes();
    let nb = cols / QK32;
    let row_bytes = nb * bb;
    let mut out = data.to_vec();
    let mut sb = vec![0u8; GROUP * bb];
    for g in 0..grouped_rows(rows) / GROUP {
        let base = g * GROUP * row_bytes;
        for b in 0..nb {
            let blocks: [&[u8]; GROUP] = std::array::from_fn(|r| {
                let at = base + r * row_bytes + b * bb;
                &data[at..at + bb]
            });
            match ty {
                QuantType::Q8_0 => pack_q80(&blocks, &mut sb),
                _ => pack_q50(&blocks, &mut sb),
            }
            out[base + b * GROUP * bb..base + (b + 1) * GROUP * bb].copy_from_slice(&sb);
        }
    }
    out
}

/// The inverse of [`pack`]: plain GGUF bytes.
pub(crate) fn unpack(ty: QuantType, rows: usize, cols: usize, data: &[u8]) -> Vec<u8> {
    let bb = ty.block_bytes();
    let nb = cols / QK32;
    let row_bytes = nb * bb;
    let mut out = data.to_vec();
    let mut blocks = [[0u8; Q80_BYTES]; GROUP];
    for g in 0..grouped_rows(rows) / GROUP {
        let base = g * GROUP * row_bytes;
        for b in 0..nb {
            let sb = &data[base + b * GROUP * bb..base + (b + 1) * GROUP * bb];
            for (r, blk) in blocks.iter_mut().enumerate() {
                match ty {
                    QuantType::Q8_0 => unpack_q80(sb, r, &mut blk[..bb]),
                    _ => unpack_q50(sb, r, &mut blk[..bb]),
                }
                let at = base + r * row_bytes + b * bb;
                out[at..at + bb].copy_from_slice(&blk[..bb]);
            }
        }
    }
    out
}

/// Offset of weight `i` (0..32) of row `r` inside a super-block's vectors: vector `i / 4`, lane
/// group `r`, byte `i % 4`.
fn slot(r: usize, i: usize) -> (usize, usize) {
    (i / 4, 4 * r + i % 4)
}

fn pack_q80(blocks: &[&[u8]; GROUP], sb: &mut [u8]) {
    for (r, blk) in blocks.iter().enumerate() {
        sb[2 * r..2 * r + 2].copy_from_slice(&blk[..2]);
        for i in 0..QK32 {
            let (k, at) = slot(r, i);
            sb[16 + 32 * k + at] = blk[2 + i];
        }
    }
}

fn unpack_q80(sb: &[u8], r: usize, blk: &mut [u8]) {
    blk[..2].copy_from_slice(&sb[2 * r..2 * r + 2]);
    for i in 0..QK32 {
        let (k, at) = slot(r, i);
        blk[2 + i] = sb[16 + 32 * k + at];
    }
}

fn pack_q50(blocks: &[&[u8]; GROUP], sb: &mut [u8]) {
    sb[16..].fill(0);
    for (r, blk) in blocks.iter().enumerate() {
        sb[2 * r..2 * r + 2].copy_from_slice(&blk[..2]);
        for i in 0..QK32 {
            let u = q50_value(blk, i);
            let (k, at) = slot(r, i);
            sb[16 + 32 * (k / 2) + at] |= (u & 0x0f) << (4 * (k % 2));
            sb[16 + 128 + at] |= ((u >> 4) & 1) << k;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Packing then unpacking returns the bytes, for row counts with and without a remainder.
    #[test]
    fn unpack_inverts_pack() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for ty in [QuantType::Q5_0, QuantType::Q8_0] {
            for (rows, cols) in [(8, 32), (19, 96), (3, 64), (64, 224)] {
                let len = rows * cols / QK32 * ty.block_bytes();
                let data: Vec<u8> = (0..len)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        state as u8
                    })
                    .collect();
                let packed = pack(ty, rows, cols, &data);
                assert_eq!(packed.len(), data.len());
                if rows >= GROUP {
                    assert_ne!(packed, data, "{ty:?} {rows}x{cols} was not rearranged");
                }
                assert_eq!(
                    unpack(ty, rows, cols, &packed),
                    data,
                    "{ty:?} {rows}x{cols}"
                );
            }
        }
    }
}
