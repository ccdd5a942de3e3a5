//! A bf16 weight matrix times f32 activations: the full-precision target path.
//!
//! Decode at n = 1 is memory-bound (two bytes per weight), so verifying n drafted tokens in one
//! weight-stationary pass costs about one decode step — the reason speculation pays most on a
//! full-precision target. Each weight chunk is widened to f32 once and applied to every activation
//! row of a tile; every (weight row, activation row) pair has one accumulator and a fixed order, so
//! results are batch-invariant.
//!
//! On a CPU with AVX-512 BF16 (Intel Cooper Lake / Sapphire Rapids, AMD Zen 4 and later; used at
//! the [`Isa::Avx512Vnni`] level) the activations are rounded to bf16 once per call, as a bf16
//! checkpoint's compute does, and `vdpbf16ps` multiplies 32 weight-activation pairs per
//! instruction into f32 sums (twice the products per instruction of widening and `vfmadd`, and no
//! widening): a verification or a prompt, compute-bound on the f32 path, costs half as much. The
//! rounding makes these results differ from the other instruction sets' in the last bits; they are
//! still batch-invariant (each row's rounding and sums do not depend on n).

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

    /// Whether this matrix multiplies with AVX-512 BF16 dot products (activations rounded to
    /// bf16; see the module documentation): on the [`Isa::Avx512Vnni`] level of a CPU that has
    /// them.
    pub fn rounds_activations(&self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            self.isa == Isa::Avx512Vnni && std::arch::is_x86_feature_detected!("avx512bf16")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// `y = x W^T` for `n` activation rows; row `j` of `y` depends only on row `j` of `x`.
    pub fn matmul(&self, x: &[f32], n: usize, y: &mut [f32]) -> Result<(), KernelError> {
        crate::check_operands(self.rows, self.cols, n, x, y)?;
        if n == 0 || self.rows == 0 {
            return Ok(());
        }
        #[cfg(target_arch = "x86_64")]
        if self.rounds_activations() {
            crate::with_act_bf16(x.len(), |xb| {
                // SAFETY (both calls): `rounds_activations` checked AVX-512 F and BF16; `xb`
                // is as long as `x`, and the shapes were checked above.
                unsafe { dot_bf16::round(x, xb) };
                self.par_rows(n, y, |w, out| unsafe {
                    dot_bf16::rows(w, self.cols, xb, n, out)
                });
            });
            return Ok(());
        }
        self.par_rows(n, y, |w, out| self.rows_kernel(w, x, n, out));
        Ok(())
    }

    /// Runs `kernel(weights, out)` over chunks of rows in parallel (`out[r * n + j]` for the
    /// chunk's rows), each chunk storing its columns of `y` ([`crate::Columns`]).
    fn par_rows(&self, n: usize, y: &mut [f32], kernel: impl Fn(&[bf16], &mut [f32]) + Sync) {
        let threads = rayon::current_num_threads().max(1);
        let chunk = self.rows.div_ceil(threads * 4).max(16);
        let y = crate::Columns::new(y, n);
        (0..self.rows.div_ceil(chunk))
            .into_par_iter()
            .for_each(|c| {
                let r0 = c * chunk;
                let len = chunk.min(self.rows - r0);
                let w = &self.data[r0 * self.cols..(r0 + len) * self.cols];
                // SAFETY: the chunks are disjoint.
                unsafe { y.fill(r0, len, false, |out| kernel(w, out)) };
            });
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

    /// `T` activation rows (starting at row `j0` of `x`) against `R` weight rows (`w[i]`, results
    /// into `o[i]`): each activation load serves every weight row. A (weight row, activation row)
    /// pair's sums are the same instructions in the same order whatever `R`, `T` and `j0` are.
    #[inline(always)]
    unsafe fn tile<const R: usize, const T: usize>(
        w: [&[bf16]; R],
        x: &[f32],
        cols: usize,
        j0: usize,
        o: [&mut [f32]; R],
    ) {
        let mut acc = [[_mm256_setzero_ps(); T]; R];
        let main = cols / 16 * 16;
        let mut c = 0;
        while c < main {
            let mut wv = [(_mm256_setzero_ps(), _mm256_setzero_ps()); R];
            for (i, wr) in w.iter().enumerate() {
                // Stream the weights ahead of use (as the quantized kernels do); a hint only.
                let ahead = wr.as_ptr().add(c).cast::<u8>().wrapping_add(PREFETCH_AHEAD);
                _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
                wv[i] = widen(wr.as_ptr().add(c));
            }
            for j in 0..T {
                let xp = x.as_ptr().add((j0 + j) * cols + c);
                let (x0, x1) = (_mm256_loadu_ps(xp), _mm256_loadu_ps(xp.add(8)));
                for (acc, (w0, w1)) in acc.iter_mut().zip(&wv) {
                    acc[j] = _mm256_fmadd_ps(*w0, x0, acc[j]);
                    acc[j] = _mm256_fmadd_ps(*w1, x1, acc[j]);
                }
            }
            c += 16;
        }
        for (i, o) in o.into_iter().enumerate() {
            for j in 0..T {
                let xr = &x[(j0 + j) * cols..(j0 + j + 1) * cols];
                let tail: f32 = (main..cols).map(|k| w[i][k].to_f32() * xr[k]).sum();
                o[j0 + j] = hsum(acc[i][j]) + tail;
            }
        }
    }

    /// Every weight row of `w` against every activation row of `x`: `out[r * n + j]`, two weight
    /// rows at a time in tiles of up to five activation rows (one row by six when `n = 1`, the
    /// memory-bound decode step; a lone last row the same way).
    ///
    /// Two weight rows share each activation load: with one, a five-row verification re-read
    /// 10 activation vectors per 16 weights from L2 whenever the activations outgrew L1 (five
    /// rows of 1536 floats nearly fill it), and the 1.5B bf16 five-token forward took 1.49x the
    /// one-token one on a Zen 3 host.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn rows(w: &[bf16], cols: usize, x: &[f32], n: usize, out: &mut [f32]) {
        let mut pairs = out.chunks_exact_mut(2 * n);
        let mut r = 0;
        if n > 1 {
            for o in pairs.by_ref() {
                let (o0, o1) = o.split_at_mut(n);
                let (w0, w1) = (
                    &w[r * cols..(r + 1) * cols],
                    &w[(r + 1) * cols..(r + 2) * cols],
                );
                for (j0, t) in crate::tiles(n, 5) {
                    let (w2, o2) = ([w0, w1], [&mut *o0, &mut *o1]);
                    match t {
                        1 => tile::<2, 1>(w2, x, cols, j0, o2),
                        2 => tile::<2, 2>(w2, x, cols, j0, o2),
                        3 => tile::<2, 3>(w2, x, cols, j0, o2),
                        4 => tile::<2, 4>(w2, x, cols, j0, o2),
                        _ => tile::<2, 5>(w2, x, cols, j0, o2),
                    }
                }
                r += 2;
            }
        }
        let rest = out.len() / n - r;
        for (k, o) in out[r * n..].chunks_exact_mut(n).enumerate().take(rest) {
            let wr = &w[(r + k) * cols..(r + k + 1) * cols];
            for (j0, t) in crate::tiles(n, 6) {
                match t {
                    1 => tile::<1, 1>([wr], x, cols, j0, [&mut *o]),
                    2 => tile::<1, 2>([wr], x, cols, j0, [&mut *o]),
                    3 => tile::<1, 3>([wr], x, cols, j0, [&mut *o]),
                    4 => tile::<1, 4>([wr], x, cols, j0, [&mut *o]),
                    5 => tile::<1, 5>([wr], x, cols, j0, [&mut *o]),
                    _ => tile::<1, 6>([wr], x, cols, j0, [&mut *o]),
                }
            }
        }
    }
}

/// AVX-512 BF16 dot products: 32 weight-activation pairs per `vdpbf16ps`.
#[cfg(target_arch = "x86_64")]
mod dot_bf16 {
    use crate::avx2::PREFETCH_AHEAD;
    use half::bf16;
    use std::arch::x86_64::*;

    /// `x` rounded to bf16 into `out` (as long as `x`): to nearest, ties to even, as
    /// `half::bf16::from_f32` does (which rounds the last `x.len() % 32` values).
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn round(x: &[f32], out: &mut [bf16]) {
        let main = x.len() / 32 * 32;
        for (src, dst) in x[..main].chunks_exact(32).zip(out.chunks_exact_mut(32)) {
            let lo = _mm512_loadu_ps(src.as_ptr());
            let hi = _mm512_loadu_ps(src.as_ptr().add(16));
            let v = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_storeu_si512(dst.as_mut_ptr() as *mut __m512i, v);
        }
        for (s, d) in x[main..].iter().zip(&mut out[main..]) {
            *d = bf16::from_f32(*s);
        }
    }

    /// 32 bf16 at `p` (64 bytes) as a vector of bf16 pairs.
    #[inline(always)]
    unsafe fn load(p: *const bf16) -> __m512bh {
        // SAFETY (of the transmute): both are 64 bytes of plain data.
        std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(p as *const __m512i))
    }

    /// `T` activation rows (from row `j0` of `x`, bf16) against one weight row.
    #[inline(always)]
    unsafe fn tile<const T: usize>(w: &[bf16], x: &[bf16], cols: usize, j0: usize, o: &mut [f32]) {
        let mut acc = [_mm512_setzero_ps(); T];
        let main = cols / 32 * 32;
        let mut c = 0;
        while c < main {
            let ahead = w.as_ptr().add(c).cast::<u8>().wrapping_add(PREFETCH_AHEAD);
            _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
            let wv = load(w.as_ptr().add(c));
            for (j, a) in acc.iter_mut().enumerate() {
                *a = _mm512_dpbf16_ps(*a, wv, load(x.as_ptr().add((j0 + j) * cols + c)));
            }
            c += 32;
        }
        for (j, a) in acc.iter().enumerate() {
            let xr = &x[(j0 + j) * cols..(j0 + j + 1) * cols];
            // A product of two bf16 is exact in f32.
            let tail: f32 = (main..cols).map(|i| w[i].to_f32() * xr[i].to_f32()).sum();
            o[j0 + j] = _mm512_reduce_add_ps(*a) + tail;
        }
    }

    /// Every weight row of `w` against every activation row of `x` (bf16): `out[r * n + j]`, in
    /// tiles of up to eight activation rows.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn rows(w: &[bf16], cols: usize, x: &[bf16], n: usize, out: &mut [f32]) {
        for (r, o) in out.chunks_exact_mut(n).enumerate() {
            let wr = &w[r * cols..(r + 1) * cols];
            for (j0, t) in crate::tiles(n, 8) {
                match t {
                    1 => tile::<1>(wr, x, cols, j0, o),
                    2 => tile::<2>(wr, x, cols, j0, o),
                    3 => tile::<3>(wr, x, cols, j0, o),
                    4 => tile::<4>(wr, x, cols, j0, o),
                    5 => tile::<5>(wr, x, cols, j0, o),
                    6 => tile::<6>(wr, x, cols, j0, o),
                    7 => tile::<7>(wr, x, cols, j0, o),
                    _ => tile::<8>(wr, x, cols, j0, o),
                }
            }
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use half::bf16;

    /// The vector rounding gives `half::bf16::from_f32`'s bits (ties to even, infinities,
    /// overflow to infinity, signed zeros; NaN stays NaN) in the vector part and the tail alike.
    #[test]
    fn rounding_to_bf16_matches_half() {
        if !std::arch::is_x86_feature_detected!("avx512bf16") {
            eprintln!("skipped: this CPU has no AVX-512 BF16");
            return;
        }
        let mut x: Vec<f32> = vec![
            0.0,
            -0.0,
            1.0,
            -2.5,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            -f32::MAX,
            f32::MIN_POSITIVE,
            // Ties: halfway between two bf16 values, with even and odd lower neighbours.
            f32::from_bits(0x3f80_8000),
            f32::from_bits(0x3f81_8000),
            f32::from_bits(0x3f80_8001),
            f32::from_bits(0x3f80_7fff),
            f32::NAN,
        ];
        let mut state = 0x9e37_79b9u32;
        while x.len() < 32 * 5 + 7 {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let v = f32::from_bits(state);
            if v.is_finite() && v.abs() > f32::MIN_POSITIVE {
                x.push(v);
            }
        }
        // The same values once in the vector part and once in the tail.
        let tail: Vec<f32> = x[..14].to_vec();
        x.extend(&tail);
        let mut out = vec![bf16::ZERO; x.len()];
        // SAFETY: AVX-512 BF16 checked above (it implies AVX-512 F); `out` is as long as `x`.
        unsafe { super::dot_bf16::round(&x, &mut out) };
        for (v, got) in x.iter().zip(&out) {
            let want = bf16::from_f32(*v);
            if v.is_nan() {
                assert!(got.is_nan());
            } else {
                assert_eq!(got.to_bits(), want.to_bits(), "{v:e}");
            }
        }
    }
}
