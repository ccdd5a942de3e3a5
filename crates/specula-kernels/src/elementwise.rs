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
/// With AVX2, `exp` is a vectorised polynomial (relative error about 2e-7, within a few units in
/// the last place of `f32::exp`) applied to every element alike, the last partial vector padded,
/// so an element's result never depends on where it sits; the portable path uses `f32::exp`.
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
        #[cfg(target_arch = "x86_64")]
        if crate::simd() {
            // SAFETY: `simd` confirmed AVX2 and FMA; the slices have equal lengths.
            unsafe { avx2::silu_mul(g, u) };
            return;
        }
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

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// `exp(x)` for eight lanes: `2^k * p(r)` with `k = round(x / ln 2)`, `r = x - k ln 2` (in two
    /// parts) and Cephes' degree-7 polynomial for `exp(r)` on `|r| <= ln 2 / 2`. Inputs are
    /// clamped to +-87.3 (so that `2^k` is a normal float; SwiGLU only needs `exp` to saturate
    /// there); a NaN stays NaN.
    #[inline(always)]
    unsafe fn exp(x: __m256) -> __m256 {
        let xc = _mm256_min_ps(
            _mm256_max_ps(x, _mm256_set1_ps(-87.3)),
            _mm256_set1_ps(87.3),
        );
        let k = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(xc, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693_359_4), xc);
        let r = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            0.166_666_65,
            0.5,
        ] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let p = _mm256_fmadd_ps(
            p,
            _mm256_mul_ps(r, r),
            _mm256_add_ps(r, _mm256_set1_ps(1.0)),
        );
        // 2^k from its exponent bits (|k| <= 126).
        let two_k = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(k),
            _mm256_set1_epi32(127),
        )));
        let y = _mm256_mul_ps(p, two_k);
        // NaN in, NaN out (the clamp would have made it a number).
        _mm256_blendv_ps(y, x, _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x))
    }

    /// `silu(g) * u` for eight lanes.
    #[inline(always)]
    unsafe fn silu_mul8(g: __m256, u: __m256) -> __m256 {
        let e = exp(_mm256_sub_ps(_mm256_setzero_ps(), g));
        _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0), e)), u)
    }

    /// [`super::silu_mul`] on AVX2 + FMA. Safety: the CPU must support both; `g` and `u` have
    /// the same length.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn silu_mul(g: &mut [f32], u: &[f32]) {
        let mut gc = g.chunks_exact_mut(8);
        let mut uc = u.chunks_exact(8);
        for (g, u) in (&mut gc).zip(&mut uc) {
            let v = silu_mul8(_mm256_loadu_ps(g.as_ptr()), _mm256_loadu_ps(u.as_ptr()));
            _mm256_storeu_ps(g.as_mut_ptr(), v);
        }
        let (gt, ut) = (gc.into_remainder(), uc.remainder());
        if !gt.is_empty() {
            // The same vector code on a padded copy.
            let (mut gb, mut ub) = ([0f32; 8], [0f32; 8]);
            gb[..gt.len()].copy_from_slice(gt);
            ub[..ut.len()].copy_from_slice(ut);
            let v = silu_mul8(_mm256_loadu_ps(gb.as_ptr()), _mm256_loadu_ps(ub.as_ptr()));
            _mm256_storeu_ps(gb.as_mut_ptr(), v);
            gt.copy_from_slice(&gb[..gt.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silu_mul_matches_the_formula_at_every_size() {
        for len in [0, 1, 7, 9, CHUNK, CHUNK + 3, 5 * CHUNK + 1] {
            let g0: Vec<f32> = (0..len).map(|i| (i % 97) as f32 / 8.0 - 6.0).collect();
            let up: Vec<f32> = (0..len).map(|i| (i % 13) as f32 - 6.0).collect();
            let mut g = g0.clone();
            silu_mul(&mut g, &up).unwrap();
            for i in 0..len {
                let want = g0[i] as f64 / (1.0 + (-g0[i] as f64).exp()) * up[i] as f64;
                let err = (g[i] as f64 - want).abs();
                assert!(
                    err <= 1e-6 * want.abs().max(1e-30),
                    "len {len} [{i}]: {} vs {want}",
                    g[i]
                );
            }
        }
        assert!(silu_mul(&mut [1.0], &[1.0, 2.0]).is_err());
    }

    /// Extremes: overflowing and underflowing `exp`, zeros, infinity, NaN.
    #[test]
    fn silu_mul_handles_extremes() {
        let g0 = [
            -1000.0,
            -100.0,
            -88.0,
            -20.0,
            -0.0,
            0.0,
            20.0,
            88.5,
            100.0,
            f32::INFINITY,
        ];
        let mut g = g0;
        silu_mul(&mut g, &[1.0; 10]).unwrap();
        for (x, y) in g0.iter().zip(&g) {
            let want = *x as f64 / (1.0 + (-*x as f64).exp());
            let err = (*y as f64 - want).abs();
            assert!(
                err <= 1e-6 * want.abs() + 1e-30 || *y as f64 == want,
                "{x}: {y} vs {want}"
            );
        }
        let mut nan = [f32::NAN];
        silu_mul(&mut nan, &[1.0]).unwrap();
        assert!(nan[0].is_nan());
    }

    /// An element's result does not depend on its position (vector lane or padded tail) or on the
    /// slice's length.
    #[test]
    fn silu_mul_is_position_independent() {
        let base: Vec<f32> = (0..37).map(|i| (i as f32 - 18.0) / 3.0).collect();
        let up: Vec<f32> = (0..37).map(|i| 1.0 + i as f32 / 10.0).collect();
        let mut whole = base.clone();
        silu_mul(&mut whole, &up).unwrap();
        for start in 0..37 {
            for len in 1..=(37 - start).min(11) {
                let mut part = base[start..start + len].to_vec();
                silu_mul(&mut part, &up[start..start + len]).unwrap();
                assert_eq!(part, whole[start..start + len]);
            }
        }
    }
}
