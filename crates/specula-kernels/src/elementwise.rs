//! Element-wise operations of a transformer layer on plain slices, run on rayon's pool (the one
//! the matmuls use).
//!
//! candle's element-wise CPU ops hand tensors of 64K elements or more to a pool of their own whose
//! threads spin after each use: on a two-core machine they then take the cores from the matmul
//! workers (a forward of 8 tokens, whose MLP activations cross that size, cost 30 % more than one
//! of 7). Each element's result depends on that element alone, so these are batch-invariant.

use crate::KernelError;
use rayon::prelude::*;

/// Elements per parallel task: large enough to amortise scheduling.
const CHUNK: usize = 8 * 1024;

/// `gate[i] = silu(gate[i]) * up[i]` (the SwiGLU of a gated MLP), with
/// `silu(x) = x / (1 + exp(-x))`. Errors if the lengths differ.
///
/// ```
/// let mut gate = vec![0.0f32, 1.0, -2.0];
/// specula_kernels::silu_mul(&mut gate, &[5.0, 2.0, 1.0])?;
/// assert_eq!(gate[0], 0.0);
/// assert!((gate[1] - 2.0 * 0.7310586).abs() < 1e-6);
/// # Ok::<(), specula_kernels::KernelError>(())
/// ```
pub fn silu_mul(gate: &mut [f32], up: &[f32]) -> Result<(), KernelError> {
    if gate.len() != up.len() {
        return Err(KernelError::BadElementwise {
            left: gate.len(),
            right: up.len(),
        });
    }
    let run = |(g, u): (&mut [f32], &[f32])| {
        for (g, u) in g.iter_mut().zip(u) {
            *g = *g / (1.0 + (-*g).exp()) * u;
        }
    };
    if gate.len() <= CHUNK {
        run((gate, up));
    } else {
        gate.par_chunks_mut(CHUNK)
            .zip(up.par_chunks(CHUNK))
            .for_each(run);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silu_mul_matches_the_formula_at_every_size() {
        for len in [0, 1, 7, CHUNK, CHUNK + 3, 5 * CHUNK + 1] {
            let g0: Vec<f32> = (0..len).map(|i| (i % 97) as f32 / 8.0 - 6.0).collect();
            let up: Vec<f32> = (0..len).map(|i| (i % 13) as f32 - 6.0).collect();
            let mut g = g0.clone();
            silu_mul(&mut g, &up).unwrap();
            for i in 0..len {
                let want = g0[i] / (1.0 + (-g0[i]).exp()) * up[i];
                assert_eq!(g[i].to_bits(), want.to_bits(), "len {len}, element {i}");
            }
        }
        assert!(silu_mul(&mut [1.0], &[1.0, 2.0]).is_err());
    }
}
