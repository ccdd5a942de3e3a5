//! A bf16 weight matrix times f32 activations: the full-precision target path.
//!
//! Decode at n = 1 is memory-bound (two bytes per weight), so verifying n drafted tokens in one
//! weight-stationary pass costs about one decode step — the reason speculation pays most on a
//! full-precision target. Each weight chunk is widened to f32 once and applied to every activation
//! row of a tile; every (weight row, activation row) pair has one accumulator and a fixed order, so
//! results are batch-invariant.

use crate::{Isa, KernelError};
use half::bf16;
use rayon::prelude::*;

/// A `rows x cols` bf16 matrix (row-major), multiplied as `y = x W^T` with f32 activations.
#[derive(Debug, Clone)]
pub struct Bf16Matrix {
    rows: usize,
    cols: usize,
    data: Vec<bf16>,
    isa: Isa,
}

impl Bf16Matrix {
    /// Wraps `data` (`rows * cols` values, row-major).
    pub fn new(rows: usize, cols: usize, data: Vec<bf16>) -> Result<Self, KernelError> {
        if data.len() != rows * cols {
            return Err(KernelError::BadDenseData {
                rows,
                cols,
                got: data.len(),
            });
        }
        Ok(Self {
            rows,
            cols,
            data,
            isa: Isa::detect(),
        })
    }

    /// The same matrix on instruction set `isa`.
    pub fn with_isa(mut self, isa: Isa) -> Result<Self, KernelError> {
        self.isa = isa.checked()?;
        Ok(self)
    }

    /// `(rows, cols)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// `y = x W^T` for `n` activation rows; row `j` of `y` depends only on row `j` of `x`.
    pub fn matmul(&self, x: &[f32], n: usize, y: &mut [f32]) -> Result<(), KernelError> {
        crate::check_operands(self.rows, self.cols, n, x, y)?;
        if n == 0 || self.rows == 0 {
            return Ok(());
        }
        let threads = rayon::current_num_threads().max(1);
        let chunk = self.rows.div_ceil(threads * 4).max(16);
        crate::with_out_t(n * self.rows, |out_t| {
            out_t
                .par_chunks_mut(chunk * n)
                .enumerate()
                .for_each(|(c, out)| {
                    let r0 = c * chunk;
                    let w = &self.data[r0 * self.cols..(r0 + out.len() / n) * self.cols];
                    self.rows_kernel(w, x, n, out);
                });
            crate::transpose_into(out_t, n, self.rows, y);
        });
        Ok(())
    }

    fn rows_kernel(&self, w: &[bf16], x: &[f32], n: usize, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if self.isa.has_avx2() {
            // SAFETY: Avx2 is set only after `Isa::is_supported`; shapes checked in `matmul`.
            unsafe { avx2::rows(w, self.cols, x, n, out) };
            return;
        }
        for (r, o) in out.chunks_exact_mut(n).enumerate() {
            let wr = &w[r * self.cols..(r + 1) * self.cols];
            for (j, v) in o.iter_mut().enumerate() {
                let xr = &x[j * self.cols..(j + 1) * self.cols];
                *v = wr.iter().zip(xr).map(|(a, b)| a.to_f32() * b).sum();
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use crate::avx2::{hsum, PREFETCH_AHEAD};
    use half::bf16;
    use std::arch::x86_64::*;

    /// Widens 16 bf16 (32 bytes at `p`) to two vectors of 8 f32.
    #[inline(always)]
    unsafe fn widen(p: *const bf16) -> (__m256, __m256) {
        let raw = _mm256_loadu_si256(p as *const __m256i);
        let lo = _mm256_cvtepu16_epi32(_mm256_castsi256_si128(raw));
        let hi = _mm256_cvtepu16_epi32(_mm256_extracti128_si256(raw, 1));
        (
            _mm256_castsi256_ps(_mm256_slli_epi32(lo, 16)),
            _mm256_castsi256_ps(_mm256_slli_epi32(hi, 16)),
        )
    }

    /// `T` activation rows (starting at row `j0` of `x`) against one weight row.
    #[inline(always)]
    unsafe fn tile<const T: usize>(w: &[bf16], x: &[f32], cols: usize, j0: usize, o: &mut [f32]) {
        let mut acc = [_mm256_setzero_ps(); T];
        let main = cols / 16 * 16;
        let mut c = 0;
        while c < main {
            // Stream the weights ahead of use (as the quantized kernels do); a hint only.
            let ahead = w.as_ptr().add(c).cast::<u8>().wrapping_add(PREFETCH_AHEAD);
            _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
            let (w0, w1) = widen(w.as_ptr().add(c));
            for (j, a) in acc.iter_mut().enumerate() {
                let xp = x.as_ptr().add((j0 + j) * cols + c);
                *a = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xp), *a);
                *a = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xp.add(8)), *a);
            }
            c += 16;
        }
        for (j, a) in acc.iter().enumerate() {
            let xr = &x[(j0 + j) * cols..(j0 + j + 1) * cols];
            let tail: f32 = (main..cols).map(|i| w[i].to_f32() * xr[i]).sum();
            o[j0 + j] = hsum(*a) + tail;
        }
    }

    /// Every weight row of `w` against every activation row of `x`: `out[r * n + j]`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn rows(w: &[bf16], cols: usize, x: &[f32], n: usize, out: &mut [f32]) {
        for (r, o) in out.chunks_exact_mut(n).enumerate() {
            let wr = &w[r * cols..(r + 1) * cols];
            let mut j0 = 0;
            while j0 < n {
                let t = (n - j0).min(6);
                match t {
                    1 => tile::<1>(wr, x, cols, j0, o),
                    2 => tile::<2>(wr, x, cols, j0, o),
                    3 => tile::<3>(wr, x, cols, j0, o),
                    4 => tile::<4>(wr, x, cols, j0, o),
                    5 => tile::<5>(wr, x, cols, j0, o),
                    _ => tile::<6>(wr, x, cols, j0, o),
                }
                j0 += t;
            }
        }
    }
}
