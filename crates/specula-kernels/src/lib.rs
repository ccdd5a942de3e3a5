//! Quantized matrix kernels for Specula's CPU path.
//!
//! A [`QMatrix`] holds a weight matrix in its GGUF bytes (Q4_K, Q6_K, Q5_0 or Q8_0, the types of
//! the Qwen2.5 Q4_K_M files) and multiplies it by `n` activation rows at once:
//!
//! * **Weight-stationary.** Each weight block is read from memory and unpacked once per call and
//!   applied to every activation row (in tiles of 4 or 8), so verifying `n` drafted tokens costs
//!   far less than `n` single-token forwards — the cost curve speculative decoding lives on.
//! * **Interleaved rows.** On AVX2, matrices of every type are rearranged at load into groups of
//!   eight rows (the `x8` layout: one vector lane per row), so a block's unpacking and scaling is
//!   shared by eight rows and no horizontal sums are needed (the last group is padded with zero
//!   rows). [`QMatrix::dequantize`] and [`QMatrix::top_rows`] see the GGUF bytes either way.
//! * **Batch-invariant.** A row's result is bit-identical whatever `n` is and wherever the row
//!   sits in the batch: activations are quantized per row, each (weight row, activation row) pair
//!   has its own accumulators, and the instruction sequence never depends on `n`. Greedy
//!   speculative decoding is token-identical to plain decoding because of this.
//! * **Runtime dispatch.** AVX-512 VNNI (on 256-bit registers), else AVX2 + FMA, when the CPU has
//!   them (detected at run time, no `-C target-cpu=native` needed), a portable scalar path
//!   otherwise. `SPECULA_KERNELS=scalar` forces the portable path, `SPECULA_KERNELS=avx2` the
//!   AVX2 one.
//!
//! ```
//! use specula_kernels::{QMatrix, QuantType};
//!
//! // A 2 x 32 Q8_0 matrix: per row one block of (f16 scale, 32 signed quants).
//! let mut bytes = Vec::new();
//! for r in 0..2 {
//!     bytes.extend_from_slice(&half::f16::from_f32(0.5).to_le_bytes());
//!     bytes.extend((0..32).map(|i| (i as i8 - 16 * r as i8) as u8));
//! }
//! let w = QMatrix::new(QuantType::Q8_0, 2, 32, bytes)?;
//! let x = vec![1.0f32; 32]; // one activation row
//! let mut y = vec![0.0f32; 2];
//! w.matmul(&x, 1, &mut y)?;
//! assert!((y[0] - 248.0).abs() < 1.0); // 0.5 * (0 + 1 + ... + 31)
//! # Ok::<(), specula_kernels::KernelError>(())
//! ```
#![warn(missing_docs)]

mod aligned;
mod attention;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx2_quant;
#[cfg(target_arch = "x86_64")]
mod avx2_x8;
mod bf16;
mod blocks;
mod elementwise;
mod pool;
mod scalar;
mod x8;

use aligned::AlignedBytes;
pub use attention::{causal_attention, AttentionShape, KvElem, KvView};
pub use bf16::Bf16Matrix;
pub use blocks::{
    dequantize_q4k, dequantize_q50, dequantize_q6k, dequantize_q80, quantize_row_q8_32,
    quantize_row_q8k, BlockQ8K, BlockQ8_32, QK32, QK_K,
};
use blocks::{Q4K_BYTES, Q50_BYTES, Q6K_BYTES, Q80_BYTES};
pub use elementwise::silu_mul;
pub use pool::on_hot_pool;
use rayon::prelude::*;
use std::cell::RefCell;

/// Whether this process runs the AVX2 builds of the ISA-independent helpers (activation
/// quantization, attention): decided once, from [`Isa::detect`] (so `SPECULA_KERNELS=scalar`
/// forces the portable ones).
pub(crate) fn simd() -> bool {
    static SIMD: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SIMD.get_or_init(|| Isa::detect().has_avx2())
}

/// Errors of the kernels.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The row length is not a whole number of blocks.
    #[error("{ty:?} needs rows of a multiple of {block} elements, got {cols}; keep this tensor in candle's kernels or requantize it")]
    BadColumns {
        /// The quantization type.
        ty: QuantType,
        /// Its block size.
        block: usize,
        /// The row length given.
        cols: usize,
    },
    /// The byte buffer does not match the shape.
    #[error("{ty:?} matrix of {rows} x {cols} needs {expected} bytes, got {got}; the file is truncated or the shape is wrong")]
    BadData {
        /// The quantization type.
        ty: QuantType,
        /// Rows.
        rows: usize,
        /// Columns.
        cols: usize,
        /// Bytes expected.
        expected: usize,
        /// Bytes given.
        got: usize,
    },
    /// More rows were asked of a matrix than it has.
    #[error("cannot take the first {wanted} rows of a matrix with {rows}; ask for at most {rows}")]
    TooManyRows {
        /// Rows asked for.
        wanted: usize,
        /// Rows the matrix has.
        rows: usize,
    },
    /// A row index past the matrix's rows.
    #[error("row {row} of a matrix with {rows} rows does not exist; ask for rows below {rows}")]
    NoSuchRow {
        /// The row asked for.
        row: usize,
        /// Rows the matrix has.
        rows: usize,
    },
    /// [`QMatrix::matmul_many`] got a different number of matrices and outputs.
    #[error("{mats} matrices but {outputs} outputs; pass one output slice per matrix")]
    BadMany {
        /// Matrices given.
        mats: usize,
        /// Output slices given.
        outputs: usize,
    },
    /// A dense matrix's value count does not match its shape.
    #[error("a {rows} x {cols} matrix needs {} values, got {got}", rows * cols)]
    BadDenseData {
        /// Rows.
        rows: usize,
        /// Columns.
        cols: usize,
        /// Values given.
        got: usize,
    },
    /// The activation or output slice has the wrong length.
    #[error("matmul of a {rows} x {cols} matrix with {n} rows needs x of {x_expected} and y of {y_expected} floats, got {x_got} and {y_got}")]
    BadOperands {
        /// Matrix rows.
        rows: usize,
        /// Matrix columns.
        cols: usize,
        /// Activation rows.
        n: usize,
        /// `n * cols`.
        x_expected: usize,
        /// `x.len()`.
        x_got: usize,
        /// `n * rows`.
        y_expected: usize,
        /// `y.len()`.
        y_got: usize,
    },
    /// The operands of an element-wise operation differ in length.
    #[error("element-wise operands differ in length: {left} and {right}")]
    BadElementwise {
        /// The first operand's length.
        left: usize,
        /// The second operand's length.
        right: usize,
    },
    /// The attention operands do not match their shape.
    #[error("attention operands do not match: {0}")]
    BadAttention(String),
    /// The requested instruction set is not available on this CPU.
    #[error("this CPU does not support {0:?}; use Isa::detect()")]
    Unsupported(Isa),
}

/// The weight formats the kernels implement (GGUF / ggml type names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantType {
    /// 4.5 bits per weight: 256-element super-blocks of eight 6-bit scales and minimums.
    Q4K,
    /// 6.56 bits per weight: 256-element super-blocks of sixteen 8-bit scales.
    Q6K,
    /// 5.5 bits per weight: 32-element blocks, one f16 scale, offset 16.
    Q5_0,
    /// 8.5 bits per weight: 32-element blocks, one f16 scale.
    Q8_0,
}

impl QuantType {
    /// Elements per block.
    pub const fn block_elems(self) -> usize {
        match self {
            QuantType::Q4K | QuantType::Q6K => QK_K,
            QuantType::Q5_0 | QuantType::Q8_0 => QK32,
        }
    }

    /// Bytes per block.
    pub const fn block_bytes(self) -> usize {
        match self {
            QuantType::Q4K => Q4K_BYTES,
            QuantType::Q6K => Q6K_BYTES,
            QuantType::Q5_0 => Q50_BYTES,
            QuantType::Q8_0 => Q80_BYTES,
        }
    }

    /// Dequantizes one block (`block_bytes()` bytes) into `block_elems()` floats.
    pub fn dequantize_block(self, block: &[u8], out: &mut [f32]) {
        match self {
            QuantType::Q4K => dequantize_q4k(block, out),
            QuantType::Q6K => dequantize_q6k(block, out),
            QuantType::Q5_0 => dequantize_q50(block, out),
            QuantType::Q8_0 => dequantize_q80(block, out),
        }
    }
}

/// The instruction set a [`QMatrix`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Portable Rust.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C (every AVX2 CPU has the last two).
    Avx2,
    /// [`Isa::Avx2`] plus AVX-512 VNNI on 256-bit registers (AVX-512 F, BW, VL, VNNI and VBMI:
    /// Intel Ice Lake and later, AMD Zen 4 and later; Cascade Lake, which lacks VBMI, runs
    /// `Avx2`): the integer dot products of the quantized kernels take one `vpdpbusd` where AVX2
    /// needs two or three instructions, and Q4_K keeps its scales packed as in the file (VBMI
    /// unpacks them), so its weights stream 2.7 % fewer bytes. Every quantized
    /// type gives `Avx2`'s results bit for bit (the same exact integer sums, the same float
    /// operations). A [`Bf16Matrix`] on a CPU that also
    /// has AVX-512 BF16 rounds its activations to bf16 and multiplies with `vdpbf16ps`
    /// ([`Bf16Matrix::rounds_activations`]), so its results differ from `Avx2`'s in the last bits.
    Avx512Vnni,
}

impl Isa {
    /// The best instruction set this CPU supports. `SPECULA_KERNELS=scalar` forces the portable
    /// kernels, `SPECULA_KERNELS=avx2` the AVX2 ones (for comparisons).
    pub fn detect() -> Isa {
        if std::env::var("SPECULA_KERNELS").is_ok_and(|v| v.eq_ignore_ascii_case("scalar")) {
            return Isa::Scalar;
        }
        if std::env::var("SPECULA_KERNELS").is_ok_and(|v| v.eq_ignore_ascii_case("avx2")) {
            return Isa::Avx2.checked().unwrap_or(Isa::Scalar);
        }
        [Isa::Avx512Vnni, Isa::Avx2]
            .into_iter()
            .find(|i| i.is_supported())
            .unwrap_or(Isa::Scalar)
    }

    /// Whether `self` includes AVX2, FMA and F16C (every instruction set but the scalar one).
    pub fn has_avx2(self) -> bool {
        self != Isa::Scalar
    }

    /// `self` if this CPU can run it, else [`KernelError::Unsupported`].
    pub fn checked(self) -> Result<Isa, KernelError> {
        if self.is_supported() {
            Ok(self)
        } else {
            Err(KernelError::Unsupported(self))
        }
    }

    /// Whether this CPU can run `self`.
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                Isa::Avx2.is_supported()
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
                    && std::arch::is_x86_feature_detected!("avx512vbmi")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2 | Isa::Avx512Vnni => false,
        }
    }
}

/// A quantized `rows x cols` weight matrix (row-major, each row a whole number of blocks, the
/// layout of a GGUF tensor of shape `(rows, cols)`), multiplied as `y = x W^T`.
#[derive(Debug, Clone)]
pub struct QMatrix {
    ty: QuantType,
    rows: usize,
    cols: usize,
    /// The GGUF bytes, or their interleaved layout ([`x8`]) when `interleaved`.
    data: AlignedBytes,
    /// Whether `data` is in the interleaved layout (Q4_K, Q5_0 and Q8_0 on AVX2).
    interleaved: bool,
    isa: Isa,
}

thread_local! {
    static ACT_K: RefCell<Vec<BlockQ8K>> = const { RefCell::new(Vec::new()) };
    static ACT_32: RefCell<Vec<BlockQ8_32>> = const { RefCell::new(Vec::new()) };
    static TASK_OUT: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static ACT_BF16: RefCell<Vec<half::bf16>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on a thread-local buffer of at least `len` elements, or on a fresh one if the
/// thread's buffer is already in use (a nested call from a pool worker).
fn with_buf<T: Clone + Default, R>(
    key: &'static std::thread::LocalKey<RefCell<Vec<T>>>,
    len: usize,
    f: impl FnOnce(&mut [T]) -> R,
) -> R {
    let mut f = Some(f);
    let reused = key.with(|cell| {
        let mut buf = cell.try_borrow_mut().ok()?;
        if buf.len() < len {
            buf.resize(len, T::default());
        }
        let f = f.take()?;
        Some(f(&mut buf[..len]))
    });
    match (reused, f) {
        (Some(r), _) => r,
        (None, Some(f)) => f(&mut vec![T::default(); len]),
        (None, None) => unreachable!("the closure ran but returned nothing"),
    }
}

impl QMatrix {
    /// Wraps `data` (the tensor's bytes in GGUF layout) as a `rows x cols` matrix of type `ty`,
    /// running on [`Isa::detect`]'s instruction set.
    pub fn new(
        ty: QuantType,
        rows: usize,
        cols: usize,
        data: Vec<u8>,
    ) -> Result<Self, KernelError> {
        if cols == 0 || !cols.is_multiple_of(ty.block_elems()) {
            return Err(KernelError::BadColumns {
                ty,
                block: ty.block_elems(),
                cols,
            });
        }
        let expected = rows * (cols / ty.block_elems()) * ty.block_bytes();
        if data.len() != expected {
            return Err(KernelError::BadData {
                ty,
                rows,
                cols,
                expected,
                got: data.len(),
            });
        }
        Ok(Self::laid_out(ty, rows, cols, data, Isa::detect()))
    }

    /// The matrix from GGUF bytes (already checked), in the layout `isa`'s kernels read.
    fn laid_out(ty: QuantType, rows: usize, cols: usize, data: Vec<u8>, isa: Isa) -> Self {
        let interleaved = x8::supports(ty, isa);
        let data = if interleaved {
            x8::pack(ty, isa, rows, cols, &data)
        } else {
            AlignedBytes::copy_of(&data)
        };
        Self {
            ty,
            rows,
            cols,
            data,
            interleaved,
            isa,
        }
    }

    /// The weights in plain GGUF layout.
    fn gguf_bytes(&self) -> std::borrow::Cow<'_, [u8]> {
        if self.interleaved {
            std::borrow::Cow::Owned(x8::unpack(
                self.ty, self.isa, self.rows, self.cols, &self.data,
            ))
        } else {
            std::borrow::Cow::Borrowed(&self.data)
        }
    }

    /// The first `rows` rows as a matrix of their own (for example an output projection limited
    /// to the most frequent tokens of a vocabulary). Errors if `rows` exceeds the matrix's rows.
    pub fn top_rows(&self, rows: usize) -> Result<Self, KernelError> {
        if rows > self.rows {
            return Err(KernelError::TooManyRows {
                wanted: rows,
                rows: self.rows,
            });
        }
        let row_bytes = (self.cols / self.ty.block_elems()) * self.ty.block_bytes();
        let data = self.gguf_bytes()[..rows * row_bytes].to_vec();
        Ok(Self::laid_out(self.ty, rows, self.cols, data, self.isa))
    }

    /// The given rows, in the given order, as a matrix of their own (for example the rows of an
    /// output projection for the rare tokens a context uses). Each row gives bit for bit what it
    /// gives in `self`. Reads only the chosen rows, so it is cheap for a few hundred of them.
    /// Errors if a row index is out of range.
    ///
    /// ```
    /// use specula_kernels::{QMatrix, QuantType};
    /// // Q8_0: one block of 32 values is a 2-byte f16 scale and 32 signed bytes.
    /// let mut data = Vec::new();
    /// for r in 0..3u8 {
    ///     data.extend_from_slice(&half::f16::from_f32(1.0).to_le_bytes());
    ///     data.extend(std::iter::repeat(r).take(32));
    /// }
    /// let m = QMatrix::new(QuantType::Q8_0, 3, 32, data).unwrap();
    /// let picked = m.select_rows(&[2, 0]).unwrap();
    /// let mut y = [0f32; 2];
    /// picked.matmul(&[1.0; 32], 1, &mut y).unwrap();
    /// assert_eq!(y, [64.0, 0.0]);
    /// ```
    pub fn select_rows(&self, rows: &[usize]) -> Result<Self, KernelError> {
        let row_bytes = (self.cols / self.ty.block_elems()) * self.ty.block_bytes();
        let mut data = vec![0u8; rows.len() * row_bytes];
        for (&r, out) in rows.iter().zip(data.chunks_exact_mut(row_bytes)) {
            if r >= self.rows {
                return Err(KernelError::NoSuchRow {
                    row: r,
                    rows: self.rows,
                });
            }
            if self.interleaved {
                x8::unpack_row(self.ty, self.isa, self.cols, &self.data, r, out);
            } else {
                out.copy_from_slice(&self.data[r * row_bytes..(r + 1) * row_bytes]);
            }
        }
        Ok(Self::laid_out(
            self.ty,
            rows.len(),
            self.cols,
            data,
            self.isa,
        ))
    }

    /// The same matrix on instruction set `isa` (for tests and benchmarks).
    pub fn with_isa(self, isa: Isa) -> Result<Self, KernelError> {
        let isa = isa.checked()?;
        let data = self.gguf_bytes().into_owned();
        Ok(Self::laid_out(self.ty, self.rows, self.cols, data, isa))
    }

    /// The quantization type.
    pub fn quant_type(&self) -> QuantType {
        self.ty
    }

    /// `(rows, cols)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// The instruction set in use.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Bytes of weights.
    pub fn size_in_bytes(&self) -> usize {
        self.data.len()
    }

    /// The matrix as f32, row-major `rows x cols`.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        let be = self.ty.block_elems();
        for (blk, o) in self
            .gguf_bytes()
            .chunks_exact(self.ty.block_bytes())
            .zip(out.chunks_exact_mut(be))
        {
            self.ty.dequantize_block(blk, o);
        }
        out
    }

    /// `y = x W^T`: `x` is `n` rows of `cols` floats, `y` receives `n` rows of `rows` floats.
    ///
    /// Row `j` of `y` depends only on row `j` of `x` (bit for bit), whatever `n` is. The work is
    /// split over weight rows on rayon's pool.
    pub fn matmul(&self, x: &[f32], n: usize, y: &mut [f32]) -> Result<(), KernelError> {
        check_operands(self.rows, self.cols, n, x, y)?;
        if n == 0 || self.rows == 0 {
            return Ok(());
        }
        let nb = self.cols / self.ty.block_elems();
        match self.ty {
            QuantType::Q4K | QuantType::Q6K => with_buf(&ACT_K, n * nb, |acts| {
                for (xr, ar) in x.chunks_exact(self.cols).zip(acts.chunks_exact_mut(nb)) {
                    quantize_row_q8k(xr, ar);
                }
                self.run(acts, nb, n, y)
            }),
            QuantType::Q5_0 | QuantType::Q8_0 => with_buf(&ACT_32, n * nb, |acts| {
                for (xr, ar) in x.chunks_exact(self.cols).zip(acts.chunks_exact_mut(nb)) {
                    quantize_row_q8_32(xr, ar);
                }
                self.run(acts, nb, n, y)
            }),
        }
        Ok(())
    }

    /// [`QMatrix::matmul`] of one input by several matrices of its width (a layer's query, key
    /// and value projections, or its gate and up projections) in one parallel region: the input
    /// is quantized once per activation format and the pool syncs once instead of once per
    /// matrix, and small matrices share the pool with large ones. `ys[i]` receives
    /// `x mats[i]^T`, bit for bit what `mats[i].matmul` gives.
    ///
    /// ```
    /// use specula_kernels::{QMatrix, QuantType};
    /// let block = |v: u8| {
    ///     let mut b = half::f16::from_f32(1.0).to_le_bytes().to_vec();
    ///     b.extend(std::iter::repeat(v).take(32));
    ///     b
    /// };
    /// let a = QMatrix::new(QuantType::Q8_0, 1, 32, block(1)).unwrap();
    /// let b = QMatrix::new(QuantType::Q8_0, 2, 32, [block(2), block(3)].concat()).unwrap();
    /// let (mut ya, mut yb) = ([0f32; 1], [0f32; 2]);
    /// QMatrix::matmul_many(&[&a, &b], &[1.0; 32], 1, &mut [&mut ya, &mut yb]).unwrap();
    /// assert_eq!((ya, yb), ([32.0], [64.0, 96.0]));
    /// ```
    pub fn matmul_many(
        mats: &[&QMatrix],
        x: &[f32],
        n: usize,
        ys: &mut [&mut [f32]],
    ) -> Result<(), KernelError> {
        if mats.len() != ys.len() {
            return Err(KernelError::BadMany {
                mats: mats.len(),
                outputs: ys.len(),
            });
        }
        for (m, y) in mats.iter().zip(ys.iter()) {
            check_operands(m.rows, m.cols, n, x, y)?;
        }
        let Some(cols) = mats.first().map(|m| m.cols) else {
            return Ok(());
        };
        if n == 0 {
            return Ok(());
        }
        let k_quant = |m: &&QMatrix| matches!(m.ty, QuantType::Q4K | QuantType::Q6K);
        let (nb_k, nb_32) = (cols / QK_K, cols / QK32);
        let len_k = if mats.iter().any(k_quant) {
            n * nb_k
        } else {
            0
        };
        let len_32 = if mats.iter().all(k_quant) {
            0
        } else {
            n * nb_32
        };
        with_buf(&ACT_K, len_k, |acts_k| {
            with_buf(&ACT_32, len_32, |acts_32| {
                let acts_k = &mut acts_k[..len_k];
                let acts_32 = &mut acts_32[..len_32];
                // (A width that is not a multiple of 256 has no K-quant matrix: nothing to do.)
                if len_k > 0 {
                    for (xr, ar) in x.chunks_exact(cols).zip(acts_k.chunks_exact_mut(nb_k)) {
                        quantize_row_q8k(xr, ar);
                    }
                }
                if len_32 > 0 {
                    for (xr, ar) in x.chunks_exact(cols).zip(acts_32.chunks_exact_mut(nb_32)) {
                        quantize_row_q8_32(xr, ar);
                    }
                }
                let (acts_k, acts_32) = (&*acts_k, &*acts_32);
                // One task per chunk of every matrix: n = 1 writes the matrix's outputs
                // directly, more rows go through the task's buffer into `y`'s columns.
                let run = |m: &QMatrix, r0: usize, out: &mut [f32]| {
                    if k_quant(&m) {
                        m.rows_from(r0, acts_k, nb_k, n, out);
                    } else {
                        m.rows_from(r0, acts_32, nb_32, n, out);
                    }
                };
                if n == 1 {
                    let mut tasks: Vec<(&QMatrix, usize, &mut [f32])> = Vec::new();
                    for (m, y) in mats.iter().zip(ys.iter_mut()) {
                        let chunk = m.chunk_rows();
                        for (c, o) in y.chunks_mut(chunk).enumerate() {
                            tasks.push((*m, c * chunk, o));
                        }
                    }
                    tasks
                        .into_par_iter()
                        .with_max_len(1)
                        .for_each(|(m, r0, out)| run(m, r0, out));
                } else {
                    let outs: Vec<Columns<'_>> =
                        ys.iter_mut().map(|y| Columns::new(y, n)).collect();
                    let mut tasks: Vec<(&QMatrix, usize, usize, &Columns<'_>)> = Vec::new();
                    for (m, y) in mats.iter().zip(&outs) {
                        let chunk = m.chunk_rows();
                        for r0 in (0..m.rows).step_by(chunk) {
                            tasks.push((*m, r0, chunk.min(m.rows - r0), y));
                        }
                    }
                    tasks
                        .into_par_iter()
                        .with_max_len(1)
                        // SAFETY: the tasks of one output cover disjoint row ranges.
                        .for_each(|(m, r0, len, y)| unsafe {
                            y.fill(r0, len, m.interleaved, |out| run(m, r0, out))
                        });
                }
            })
        });
        Ok(())
    }

    /// Computes `y` in parallel chunks of weight rows (each through its task's buffer when
    /// `n > 1`, see [`Columns`]).
    fn run<A: Sync>(&self, acts: &[A], nb: usize, n: usize, y: &mut [f32])
    where
        Self: RowKernel<A>,
    {
        let chunk = self.chunk_rows();
        if n == 1 {
            y.par_chunks_mut(chunk)
                .with_max_len(1)
                .enumerate()
                .for_each(|(c, out)| {
                    self.rows_from(c * chunk, acts, nb, 1, out);
                });
            return;
        }
        let y = Columns::new(y, n);
        (0..self.rows.div_ceil(chunk))
            .into_par_iter()
            .with_max_len(1)
            .for_each(|c| {
                let r0 = c * chunk;
                let len = chunk.min(self.rows - r0);
                // SAFETY: the chunks are disjoint.
                unsafe {
                    y.fill(r0, len, self.interleaved, |out| {
                        self.rows_from(r0, acts, nb, n, out)
                    })
                };
            });
    }

    /// Rows per parallel task: whole interleaved groups, sixteen tasks per thread (at least 16
    /// rows each), each its own rayon job (`with_max_len(1)`). A product ends when its last
    /// thread does; rayon's adaptive splitting had handed a product out in a few large pieces,
    /// and per-task timestamps showed one thread idle ~19 us at the end of each (2 ms of a 1.5B
    /// token). With small jobs the threads end together: 1.5B forwards of 1 / 5 / 9 tokens
    /// 0.975-0.991x / 0.969-0.998x / 0.974-0.987x the time in three in-process A/B runs (4 tasks
    /// per thread, or 16 without the job split, measured no faster).
    fn chunk_rows(&self) -> usize {
        let threads = rayon::current_num_threads().max(1);
        self.rows
            .div_ceil(threads * 16)
            .max(16)
            .next_multiple_of(x8::GROUP)
    }

    /// Rows `r0..r0 + out.len() / n` (`r0` a multiple of [`x8::GROUP`]) times the `n`
    /// activation rows into `out`: `out[j * rows + r]` for an interleaved matrix, else
    /// `out[r * n + j]` (the same for `n = 1`).
    fn rows_from<A>(&self, r0: usize, acts: &[A], nb: usize, n: usize, out: &mut [f32])
    where
        Self: RowKernel<A>,
    {
        let at = |r: usize| {
            if self.interleaved {
                x8::row_offset(self.ty, self.isa, self.cols, r)
            } else {
                r * nb * self.ty.block_bytes()
            }
        };
        let w = &self.data[at(r0)..at(r0 + out.len() / n)];
        self.chunk_kernel(w, nb, acts, n, out);
    }

    /// Runs one chunk of rows (weights `w`, results `out`) on the kernel of the matrix's layout.
    fn chunk_kernel<A>(&self, w: &[u8], nb: usize, acts: &[A], n: usize, out: &mut [f32])
    where
        Self: RowKernel<A>,
    {
        if self.interleaved {
            self.x8_kernel(w, nb, acts, n, out);
        } else {
            self.rows_kernel(w, nb, acts, n, out);
        }
    }
}

/// Checks that `x` holds `n` rows of `cols` and `y` `n` rows of `rows` floats.
pub(crate) fn check_operands(
    rows: usize,
    cols: usize,
    n: usize,
    x: &[f32],
    y: &[f32],
) -> Result<(), KernelError> {
    if x.len() != n * cols || y.len() != n * rows {
        return Err(KernelError::BadOperands {
            rows,
            cols,
            n,
            x_expected: n * cols,
            x_got: x.len(),
            y_expected: n * rows,
            y_got: y.len(),
        });
    }
    Ok(())
}

/// The tiles `(first row, rows)` that cover `n` activation rows in as few passes of at most
/// `max` rows as possible, of balanced sizes (n = 9 with tiles of up to 8: 5 + 4, not 8 + 1,
/// whose one-row pass costs nearly as much as the eight-row one). A row's arithmetic must not
/// depend on its tile, so any tiling gives the same results.
pub(crate) fn tiles(n: usize, max: usize) -> impl Iterator<Item = (usize, usize)> {
    let passes = n.div_ceil(max.max(1));
    (0..passes).scan(0, move |j0, p| {
        let t = (n - *j0) / (passes - p);
        let tile = (*j0, t);
        *j0 += t;
        Some(tile)
    })
}

/// Runs `f` on the thread's buffer for activations rounded to bf16.
pub(crate) fn with_act_bf16<R>(len: usize, f: impl FnOnce(&mut [half::bf16]) -> R) -> R {
    with_buf(&ACT_BF16, len, f)
}

/// The output `y` of a product of `n` activation rows (`n` rows of `rows` floats) shared by
/// parallel tasks, each of which computes some weight rows for every activation row.
///
/// Each task computes its weight rows into its thread's buffer, still in cache, and stores its
/// columns of `y` itself (a copy per activation row from the interleaved kernels, which write
/// activation-major; a transpose from the row kernels, which write `out[r * n + j]`), instead
/// of one thread transposing the whole product after the parallel region (2-3 % of a 5- or
/// 9-token forward, the other thread idle meanwhile).
pub(crate) struct Columns<'a> {
    ptr: *mut f32,
    rows: usize,
    n: usize,
    _y: std::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: `Columns` is a `&mut [f32]` shared by tasks that write disjoint parts of it (the
// contract of `fill`).
unsafe impl Send for Columns<'_> {}
// SAFETY: as above.
unsafe impl Sync for Columns<'_> {}

impl<'a> Columns<'a> {
    /// `y` as `n` rows (its length a multiple of `n`, which the callers checked).
    pub(crate) fn new(y: &'a mut [f32], n: usize) -> Self {
        Columns {
            ptr: y.as_mut_ptr(),
            rows: y.len() / n.max(1),
            n,
            _y: std::marker::PhantomData,
        }
    }

    /// Runs `f` on a buffer for weight rows `r0..r0 + len`, then stores it as
    /// `y[j * rows + r0 + r]`. The buffer is activation-major (`out[j * len + r]`: each
    /// activation row's values one copy) when `act_major`, else weight-row-major
    /// (`out[r * n + j]`). A range past the end of `y` is cut to it.
    ///
    /// # Safety
    /// Calls running at the same time must have disjoint row ranges.
    pub(crate) unsafe fn fill(
        &self,
        r0: usize,
        len: usize,
        act_major: bool,
        f: impl FnOnce(&mut [f32]),
    ) {
        let len = len.min(self.rows.saturating_sub(r0));
        let n = self.n;
        with_buf(&TASK_OUT, len * n, |out| {
            f(out);
            for j in 0..n {
                // SAFETY: `j * rows + r0 + len <= n * rows`, the length of `y`; no other call
                // writes these rows.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(self.ptr.add(j * self.rows + r0), len)
                };
                if act_major {
                    dst.copy_from_slice(&out[j * len..(j + 1) * len]);
                } else {
                    for (d, v) in dst.iter_mut().zip(out[j..].iter().step_by(n)) {
                        *d = *v;
                    }
                }
            }
        });
    }
}

impl QMatrix {
    /// Interleaved rows `w` run on the GGUF-layout kernel (no interleaved kernel for this type
    /// and instruction set), results activation-major as [`RowKernel::x8_kernel`] gives them.
    fn unpacked_rows<A>(&self, w: &[u8], nb: usize, acts: &[A], n: usize, out: &mut [f32])
    where
        Self: RowKernel<A>,
    {
        let rows = out.len() / n;
        let plain = x8::unpack(self.ty, self.isa, rows, self.cols, w);
        let mut by_row = vec![0f32; out.len()];
        self.rows_kernel(&plain, nb, acts, n, &mut by_row);
        for (r, vals) in by_row.chunks_exact(n).enumerate() {
            for (j, v) in vals.iter().enumerate() {
                out[j * rows + r] = *v;
            }
        }
    }
}

/// Dispatch of one chunk of rows to the kernel of the matrix's type and instruction set.
trait RowKernel<A> {
    /// Rows in GGUF layout, results weight-row-major (`out[r * n + j]`).
    fn rows_kernel(&self, w: &[u8], nb: usize, acts: &[A], n: usize, out: &mut [f32]);
    /// Rows in the interleaved layout (AVX2 only), results activation-major
    /// (`out[j * rows + r]`).
    fn x8_kernel(&self, w: &[u8], nb: usize, acts: &[A], n: usize, out: &mut [f32]);
}

impl RowKernel<BlockQ8K> for QMatrix {
    fn rows_kernel(&self, w: &[u8], nb: usize, acts: &[BlockQ8K], n: usize, out: &mut [f32]) {
        match (self.ty, self.isa) {
            // Every type is interleaved on AVX2 (`x8_kernel`); plain rows only ever run on the
            // portable kernels.
            (QuantType::Q4K, _) => scalar::rows(w, Q4K_BYTES, nb, acts, n, out, scalar::dot_q4k),
            _ => scalar::rows(w, Q6K_BYTES, nb, acts, n, out, scalar::dot_q6k),
        }
    }

    fn x8_kernel(&self, w: &[u8], nb: usize, acts: &[BlockQ8K], n: usize, out: &mut [f32]) {
        match (self.ty, self.isa) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: rows are interleaved only when `isa` is Avx2, which `Isa::is_supported`
            // confirmed; `w` holds whole groups (the last one padded): chunks start at multiples
            // of eight rows.
            (QuantType::Q4K, Isa::Avx2 | Isa::Avx512Vnni) => unsafe {
                avx2_x8::rows::<avx2_x8::Q4K<false>, avx2_x8::Q4K<true>>(
                    self.isa == Isa::Avx512Vnni,
                    w,
                    nb,
                    acts,
                    n,
                    out,
                )
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            (QuantType::Q6K, Isa::Avx2 | Isa::Avx512Vnni) => unsafe {
                avx2_x8::rows::<avx2_x8::Q6K8<false>, avx2_x8::Q6K8<true>>(
                    self.isa == Isa::Avx512Vnni,
                    w,
                    nb,
                    acts,
                    n,
                    out,
                )
            },
            // Never reached: only AVX2 matrices are interleaved. Unpacking keeps the result right
            // should that ever change.
            _ => self.unpacked_rows(w, nb, acts, n, out),
        }
    }
}

impl RowKernel<BlockQ8_32> for QMatrix {
    fn rows_kernel(&self, w: &[u8], nb: usize, acts: &[BlockQ8_32], n: usize, out: &mut [f32]) {
        match self.ty {
            QuantType::Q5_0 => scalar::rows(w, Q50_BYTES, nb, acts, n, out, scalar::dot_q50),
            _ => scalar::rows(w, Q80_BYTES, nb, acts, n, out, scalar::dot_q80),
        }
    }

    fn x8_kernel(&self, w: &[u8], nb: usize, acts: &[BlockQ8_32], n: usize, out: &mut [f32]) {
        match (self.ty, self.isa) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: rows are interleaved only when `isa` is Avx2, which `Isa::is_supported`
            // confirmed; `w` holds whole groups (the last one padded): chunks start at multiples
            // of eight rows.
            (QuantType::Q5_0, Isa::Avx2 | Isa::Avx512Vnni) => unsafe {
                avx2_x8::rows::<avx2_x8::Q50<false>, avx2_x8::Q50<true>>(
                    self.isa == Isa::Avx512Vnni,
                    w,
                    nb,
                    acts,
                    n,
                    out,
                )
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            (QuantType::Q8_0, Isa::Avx2 | Isa::Avx512Vnni) => unsafe {
                avx2_x8::rows::<avx2_x8::Q80<false>, avx2_x8::Q80<true>>(
                    self.isa == Isa::Avx512Vnni,
                    w,
                    nb,
                    acts,
                    n,
                    out,
                )
            },
            // Never reached: only AVX2 matrices are interleaved. Unpacking keeps the result right
            // should that ever change.
            _ => self.unpacked_rows(w, nb, acts, n, out),
        }
    }
}

#[cfg(test)]
mod tests;
