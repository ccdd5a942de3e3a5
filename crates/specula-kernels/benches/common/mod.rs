//! Shared by the `matmul` bench and the `stream` example: pseudo-random weight matrices.

use specula_kernels::{KernelError, QMatrix, QuantType};

/// A `rows x cols` matrix of type `ty` with pseudo-random quants (xorshift from `seed`) and small
/// finite f16 scales, so every kernel path runs on realistic bit patterns.
pub fn random_matrix(
    ty: QuantType,
    rows: usize,
    cols: usize,
    seed: u64,
) -> Result<QMatrix, KernelError> {
    let blocks = rows * cols / ty.block_elems();
    let mut state = 0x2545_f491_4f6c_dd1du64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut data: Vec<u8> = (0..blocks * ty.block_bytes())
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    // Finite f16 scales (0x2000 is about 0.0078).
    let at: &[usize] = match ty {
        QuantType::Q6K => &[208],
        QuantType::Q4K => &[0, 2],
        _ => &[0],
    };
    for blk in data.chunks_exact_mut(ty.block_bytes()) {
        for &a in at {
            blk[a..a + 2].copy_from_slice(&0x2000u16.to_le_bytes());
        }
    }
    QMatrix::new(ty, rows, cols, data)
}
