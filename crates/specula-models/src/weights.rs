//! Where weights come from: GGUF (kept quantized) or safetensors (f32/f16/bf16), behind one trait
//! so the decoder is written once. Tensors are named with Hugging Face names; the GGUF source maps
//! them to llama.cpp's names.

use crate::gguf::GgufFile;
use crate::{ModelError, Result};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Storage, Tensor};
use candle_nn::VarBuilder;
use specula_kernels::{Bf16Matrix, KernelError, QMatrix, QuantType};
use std::sync::Arc;

/// A linear layer `y = x W^T (+ b)` whose weight is quantized (GGUF) or dense.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: LinearWeight,
    bias: Option<Tensor>,
}

#[derive(Debug, Clone)]
enum LinearWeight {
    /// Specula's own CPU kernels (Q4_K, Q6_K, Q5_0, Q8_0): batch-invariant for every n.
    Kernel(Arc<QMatrix>),
    /// Specula's bf16 kernel (CPU, `--dtype bf16`): batch-invariant for every n.
    Bf16(Arc<Bf16Matrix>),
    /// candle's quantized matmul (other types, GPU devices).
    Quantized(QMatMul),
    Dense(Tensor),
}

/// Largest number of rows that the layers' `Linear::forward` computes one row at a time when the
/// weight is not on Specula's own kernels (those are batch-invariant for any number of rows).
///
/// candle's CPU kernels pick different code paths for one row and for several (on x86 the Q8_0
/// and Q6_K matmuls repack weights and quantize activations differently when `m > 1`, and the
/// f32 GEMM changes its blocking), so a row's result would depend on how many rows share the
/// call. Speculative verification feeds 2..=9 rows where plain decoding feeds 1; computing small
/// batches row by row makes every row bit-identical to a single-token forward, which greedy
/// losslessness relies on. Prefill (more rows) uses the batched kernels: plain and speculative
/// decoding prefill identically, so exactness between them is unaffected.
pub const BATCH_INVARIANT_MAX_ROWS: usize = 16;

impl Linear {
    /// `x`: `(.., in)` f32; returns `(.., out)` f32. Each row's result is independent of the
    /// number of rows when there are at most [`BATCH_INVARIANT_MAX_ROWS`].
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims();
        let inner = dims[dims.len() - 1];
        let rows = x.elem_count() / inner.max(1);
        if rows > 1 && rows <= BATCH_INVARIANT_MAX_ROWS && !self.is_batch_invariant() {
            let flat = x.reshape((rows, inner))?;
            let parts = (0..rows)
                .map(|r| self.forward_rows(&flat.narrow(0, r, 1)?))
                .collect::<candle_core::Result<Vec<_>>>()?;
            let y = Tensor::cat(&parts, 0)?;
            let mut out = dims.to_vec();
            let last = out.len() - 1;
            out[last] = y.dim(1)?;
            return y.reshape(out);
        }
        self.forward_rows(x)
    }

    /// [`Linear::forward`] of one input through several layers (a block's query, key and value
    /// projections, or its gate and up projections), the same results bit for bit. When every
    /// layer runs on Specula's quantized kernels the matrices share one parallel region
    /// ([`QMatrix::matmul_many`]: one activation quantization, one pool sync); otherwise each
    /// layer runs on its own.
    pub fn forward_many<const N: usize>(
        layers: [&Linear; N],
        x: &Tensor,
    ) -> candle_core::Result<[Tensor; N]> {
        let mats = quantized_matrices(&layers);
        let mut out = Vec::with_capacity(N);
        match mats {
            Some(mats) if x.device().is_cpu() => {
                for (l, y) in layers.iter().zip(many_forward(&mats, x)?) {
                    out.push(match &l.bias {
                        Some(b) => y.broadcast_add(b)?,
                        None => y,
                    });
                }
            }
            _ => {
                for l in layers {
                    out.push(l.forward(x)?);
                }
            }
        }
        out.try_into()
            .map_err(|_| candle_core::Error::Msg("forward_many lost an output".into()))
    }

    /// The layer restricted to its first `rows` outputs (for an output projection limited to the
    /// first tokens of the vocabulary), or `None` when its weight cannot be sliced cheaply
    /// (candle's quantized matmul, the bf16 kernel).
    pub fn top_rows(&self, rows: usize) -> Option<Linear> {
        let weight = match &self.weight {
            LinearWeight::Kernel(w) => LinearWeight::Kernel(Arc::new(w.top_rows(rows).ok()?)),
            LinearWeight::Dense(w) => LinearWeight::Dense(w.narrow(0, 0, rows).ok()?),
            LinearWeight::Bf16(_) | LinearWeight::Quantized(_) => return None,
        };
        let bias = match &self.bias {
            Some(b) => Some(b.narrow(0, 0, rows).ok()?),
            None => None,
        };
        Some(Linear { weight, bias })
    }

    /// The layer restricted to the outputs `rows`, in that order (for an output projection that
    /// also scores the rare tokens a context uses), or `None` when its weight cannot be sliced
    /// cheaply (as for [`Linear::top_rows`]) or a row is out of range.
    pub fn select_rows(&self, rows: &[usize]) -> Option<Linear> {
        let index = || {
            let ids: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
            Tensor::new(ids.as_slice(), &candle_core::Device::Cpu)
        };
        let weight = match &self.weight {
            LinearWeight::Kernel(w) => LinearWeight::Kernel(Arc::new(w.select_rows(rows).ok()?)),
            LinearWeight::Dense(w) => {
                let idx = index().ok()?.to_device(w.device()).ok()?;
                LinearWeight::Dense(w.index_select(&idx, 0).ok()?)
            }
            LinearWeight::Bf16(_) | LinearWeight::Quantized(_) => return None,
        };
        let bias = match &self.bias {
            Some(b) => Some(
                b.index_select(&index().ok()?.to_device(b.device()).ok()?, 0)
                    .ok()?,
            ),
            None => None,
        };
        Some(Linear { weight, bias })
    }

    /// Whether the layer runs on Specula's CPU kernels, which take and give plain f32 values
    /// ([`Linear::host_matmul`]).
    pub(crate) fn on_host_kernels(&self) -> bool {
        matches!(self.weight, LinearWeight::Kernel(_) | LinearWeight::Bf16(_))
    }

    /// The bias as f32 values, if the layer has one.
    pub(crate) fn bias_values(&self) -> candle_core::Result<Option<Vec<f32>>> {
        self.bias
            .as_ref()
            .map(|b| b.to_dtype(DType::F32)?.flatten_all()?.to_vec1())
            .transpose()
    }

    /// `ys[i] = x layers[i]^T` (no bias) for `n` rows of f32 on Specula's CPU kernels, the same
    /// values bit for bit as [`Linear::forward_many`] without the bias: the matrices share one
    /// parallel region when all are quantized ([`QMatrix::matmul_many`]). Fails for a layer not
    /// on the kernels ([`Linear::on_host_kernels`]).
    pub(crate) fn host_matmul<const N: usize>(
        layers: [&Linear; N],
        x: &[f32],
        n: usize,
        mut ys: [&mut [f32]; N],
    ) -> candle_core::Result<()> {
        if let Some(mats) = quantized_matrices(&layers) {
            return QMatrix::matmul_many(&mats, x, n, &mut ys).map_err(candle_core::Error::wrap);
        }
        for (l, y) in layers.iter().zip(ys) {
            match &l.weight {
                LinearWeight::Kernel(w) => w.matmul(x, n, y),
                LinearWeight::Bf16(w) => w.matmul(x, n, y),
                _ => candle_core::bail!("this layer does not run on Specula's CPU kernels"),
            }
            .map_err(candle_core::Error::wrap)?;
        }
        Ok(())
    }

    /// Whether one call's rows are independent of each other bit for bit.
    fn is_batch_invariant(&self) -> bool {
        matches!(self.weight, LinearWeight::Kernel(_) | LinearWeight::Bf16(_))
    }

    fn forward_rows(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = match &self.weight {
            LinearWeight::Kernel(w) => kernel_forward(w.as_ref(), x)?,
            LinearWeight::Bf16(w) => kernel_forward(w.as_ref(), x)?,
            LinearWeight::Quantized(w) => w.forward(x)?,
            LinearWeight::Dense(w) => {
                let dims = x.dims().to_vec();
                let inner = dims[dims.len() - 1];
                let rows = x.elem_count() / inner.max(1);
                let y = x
                    .reshape((rows, inner))?
                    .to_dtype(w.dtype())?
                    .matmul(&w.t()?)?;
                let mut out = dims;
                let last = out.len() - 1;
                out[last] = w.dim(0)?;
                y.to_dtype(DType::F32)?.reshape(out)?
            }
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// The layers' matrices if every one runs on Specula's quantized kernels (so that they can share
/// one [`QMatrix::matmul_many`] region).
fn quantized_matrices<'a>(layers: &[&'a Linear]) -> Option<Vec<&'a QMatrix>> {
    layers
        .iter()
        .map(|l| match &l.weight {
            LinearWeight::Kernel(w) => Some(w.as_ref()),
            _ => None,
        })
        .collect()
}

/// A weight matrix on Specula's CPU kernels.
trait CpuMatmul {
    /// `(out_features, in_features)`.
    fn shape(&self) -> (usize, usize);
    /// `y = x W^T` for `n` rows.
    fn matmul(&self, x: &[f32], n: usize, y: &mut [f32]) -> std::result::Result<(), KernelError>;
}

impl CpuMatmul for QMatrix {
    fn shape(&self) -> (usize, usize) {
        QMatrix::shape(self)
    }
    fn matmul(&self, x: &[f32], n: usize, y: &mut [f32]) -> std::result::Result<(), KernelError> {
        QMatrix::matmul(self, x, n, y)
    }
}

impl CpuMatmul for Bf16Matrix {
    fn shape(&self) -> (usize, usize) {
        Bf16Matrix::shape(self)
    }
    fn matmul(&self, x: &[f32], n: usize, y: &mut [f32]) -> std::result::Result<(), KernelError> {
        Bf16Matrix::matmul(self, x, n, y)
    }
}

/// A dense weight as Specula's bf16 kernel when it is bf16 on the CPU, else as a candle tensor.
fn dense_weight(w: Tensor) -> Result<LinearWeight> {
    if let (Device::Cpu, DType::BF16, [rows, cols], true) =
        (w.device(), w.dtype(), w.dims(), own_kernels())
    {
        let (rows, cols) = (*rows, *cols);
        let values = w.flatten_all()?.to_vec1::<half::bf16>()?;
        let m = Bf16Matrix::new(rows, cols, values).map_err(candle_core::Error::wrap)?;
        return Ok(LinearWeight::Bf16(Arc::new(m)));
    }
    Ok(LinearWeight::Dense(w))
}

/// Runs `f` on the values of `x`, a contiguous f32 tensor on the CPU, read in place.
fn with_cpu_f32<R>(
    x: &Tensor,
    f: impl FnOnce(&[f32]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let (storage, layout) = x.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("Specula's quantized kernels run on the CPU only");
    };
    let all = cpu.as_slice::<f32>()?;
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("activations must be contiguous");
    };
    f(&all[start..end])
}

/// `x W^T` on Specula's kernels: reads `x` in place (f32, CPU) and writes a fresh output.
fn kernel_forward(w: &dyn CpuMatmul, x: &Tensor) -> candle_core::Result<Tensor> {
    let (out_features, in_features) = w.shape();
    let x = x.to_dtype(DType::F32)?.contiguous()?;
    let mut dims = x.dims().to_vec();
    let rows = x.elem_count() / in_features.max(1);
    let mut y = vec![0f32; rows * out_features];
    with_cpu_f32(&x, |all| {
        w.matmul(all, rows, &mut y)
            .map_err(candle_core::Error::wrap)
    })?;
    if let Some(last) = dims.last_mut() {
        *last = out_features;
    }
    Tensor::from_vec(y, dims, x.device())
}

/// [`QMatrix::matmul_many`] on a tensor: `x` `(.., in)`, one `(.., out_i)` f32 tensor per matrix
/// (no bias).
fn many_forward(mats: &[&QMatrix], x: &Tensor) -> candle_core::Result<Vec<Tensor>> {
    let x = x.to_dtype(DType::F32)?.contiguous()?;
    let dims = x.dims().to_vec();
    let in_features = mats.first().map_or(1, |m| m.shape().1);
    let rows = x.elem_count() / in_features.max(1);
    let mut ys: Vec<Vec<f32>> = mats
        .iter()
        .map(|m| vec![0f32; rows * m.shape().0])
        .collect();
    with_cpu_f32(&x, |all| {
        let mut outs: Vec<&mut [f32]> = ys.iter_mut().map(|y| y.as_mut_slice()).collect();
        QMatrix::matmul_many(mats, all, rows, &mut outs).map_err(candle_core::Error::wrap)
    })?;
    mats.iter()
        .zip(ys)
        .map(|(m, y)| {
            let mut d = dims.clone();
            if let Some(last) = d.last_mut() {
                *last = m.shape().0;
            }
            Tensor::from_vec(y, d, x.device())
        })
        .collect()
}

/// Whether matrices go to Specula's own CPU kernels; `SPECULA_KERNELS=candle` keeps every matrix
/// on candle's kernels (for comparisons; small batches then run row by row).
fn own_kernels() -> bool {
    !std::env::var("SPECULA_KERNELS").is_ok_and(|v| v.eq_ignore_ascii_case("candle"))
}

/// Specula's kernel type for a GGUF type, if it has one and own kernels are enabled.
fn kernel_type(dt: GgmlDType) -> Option<QuantType> {
    if !own_kernels() {
        return None;
    }
    match dt {
        GgmlDType::Q4K => Some(QuantType::Q4K),
        GgmlDType::Q6K => Some(QuantType::Q6K),
        GgmlDType::Q5_0 => Some(QuantType::Q5_0),
        GgmlDType::Q8_0 => Some(QuantType::Q8_0),
        _ => None,
    }
}

/// The token embedding table.
#[derive(Debug, Clone)]
pub enum Embedding {
    /// Rows gathered from a quantized table (dequantized per lookup).
    Quantized(Arc<QTensor>),
    /// A dense table.
    Dense(Tensor),
}

impl Embedding {
    /// Rows for `ids` (shape `(n,)` u32), as f32 `(n, hidden)`.
    pub fn forward(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Embedding::Quantized(q) => q.embedding(ids)?.to_dtype(DType::F32),
            Embedding::Dense(t) => t.index_select(ids, 0)?.to_dtype(DType::F32),
        }
    }
}

/// A source of named weights.
pub(crate) trait WeightSource {
    fn contains(&self, name: &str) -> bool;
    /// A linear layer of shape `(out, inp)`, with an optional `(out,)` bias.
    fn linear(&mut self, name: &str, out: usize, inp: usize, bias: bool) -> Result<Linear>;
    /// A 1-D f32 tensor of length `len`.
    fn vector(&mut self, name: &str, len: usize) -> Result<Tensor>;
    fn embedding(&mut self, name: &str, rows: usize, cols: usize) -> Result<Embedding>;
    /// The output projection tied to the embedding `name`.
    fn tied_output(&mut self, name: &str, rows: usize, cols: usize) -> Result<Linear>;
}

fn check_shape(name: &str, got: &[usize], expected: &[usize]) -> Result<()> {
    if got != expected {
        return Err(ModelError::ShapeMismatch {
            tensor: name.to_string(),
            expected: expected.to_vec(),
            got: got.to_vec(),
        });
    }
    Ok(())
}

/// Maps a Hugging Face tensor name to llama.cpp's GGUF name.
pub(crate) fn gguf_name(hf: &str) -> String {
    let fixed = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
    ];
    if let Some((_, g)) = fixed.iter().find(|(h, _)| *h == hf) {
        return g.to_string();
    }
    let Some(rest) = hf.strip_prefix("model.layers.") else {
        return hf.to_string();
    };
    let (layer, rest) = rest.split_once('.').unwrap_or((rest, ""));
    let parts = [
        ("input_layernorm", "attn_norm"),
        ("self_attn.q_proj", "attn_q"),
        ("self_attn.k_proj", "attn_k"),
        ("self_attn.v_proj", "attn_v"),
        ("self_attn.o_proj", "attn_output"),
        ("post_attention_layernorm", "ffn_norm"),
        ("mlp.gate_proj", "ffn_gate"),
        ("mlp.up_proj", "ffn_up"),
        ("mlp.down_proj", "ffn_down"),
    ];
    for (h, g) in parts {
        if let Some(suffix) = rest.strip_prefix(h) {
            return format!("blk.{layer}.{g}{suffix}");
        }
    }
    format!("blk.{layer}.{rest}")
}

/// Weights from a GGUF file; matrices stay quantized unless `dense` asks for a dtype.
pub(crate) struct GgufSource<'a> {
    pub file: &'a mut GgufFile,
    pub device: Device,
    pub dense: Option<DType>,
}

impl GgufSource<'_> {
    fn qtensor(&mut self, hf: &str, expected: &[usize]) -> Result<QTensor> {
        let name = gguf_name(hf);
        if !self.file.content.tensor_infos.contains_key(&name) {
            return Err(ModelError::MissingTensor(name));
        }
        let q = self
            .file
            .content
            .tensor(&mut self.file.reader, &name, &self.device)
            .map_err(|e| ModelError::InvalidGguf {
                path: self.file.path.clone(),
                reason: format!("reading tensor `{name}`: {e}"),
            })?;
        check_shape(&name, q.shape().dims(), expected)?;
        Ok(q)
    }

    fn matrix(&self, q: QTensor) -> Result<LinearWeight> {
        if let Some(dt) = self.dense {
            return dense_weight(q.dequantize(&self.device)?.to_dtype(dt)?);
        }
        if let (Device::Cpu, Some(ty), [rows, cols]) =
            (&self.device, kernel_type(q.dtype()), q.shape().dims())
        {
            if let Ok(m) = QMatrix::new(ty, *rows, *cols, q.data()?.into_owned()) {
                return Ok(LinearWeight::Kernel(Arc::new(m)));
            }
        }
        Ok(LinearWeight::Quantized(QMatMul::from_qtensor(q)?))
    }
}

impl WeightSource for GgufSource<'_> {
    fn contains(&self, name: &str) -> bool {
        self.file
            .content
            .tensor_infos
            .contains_key(&gguf_name(name))
    }

    fn linear(&mut self, name: &str, out: usize, inp: usize, bias: bool) -> Result<Linear> {
        let q = self.qtensor(&format!("{name}.weight"), &[out, inp])?;
        let weight = self.matrix(q)?;
        let bias = if bias {
            Some(self.vector(&format!("{name}.bias"), out)?)
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }

    fn vector(&mut self, name: &str, len: usize) -> Result<Tensor> {
        let q = self.qtensor(name, &[len])?;
        Ok(q.dequantize(&self.device)?.to_dtype(DType::F32)?)
    }

    fn embedding(&mut self, name: &str, rows: usize, cols: usize) -> Result<Embedding> {
        let q = self.qtensor(name, &[rows, cols])?;
        // Quantized row gather needs whole blocks per row; otherwise keep a dense table.
        if self.dense.is_none() && cols.is_multiple_of(q.dtype().block_size()) {
            Ok(Embedding::Quantized(Arc::new(q)))
        } else {
            let dt = self.dense.unwrap_or(DType::F32);
            Ok(Embedding::Dense(q.dequantize(&self.device)?.to_dtype(dt)?))
        }
    }

    fn tied_output(&mut self, name: &str, rows: usize, cols: usize) -> Result<Linear> {
        let q = self.qtensor(name, &[rows, cols])?;
        Ok(Linear {
            weight: self.matrix(q)?,
            bias: None,
        })
    }
}

/// Weights from safetensors files through a candle `VarBuilder`, kept in `dtype`.
pub(crate) struct SafetensorsSource<'a> {
    pub vb: VarBuilder<'a>,
    pub dtype: DType,
}

impl SafetensorsSource<'_> {
    fn get(&self, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        if !self.vb.contains_tensor(name) {
            return Err(ModelError::MissingTensor(name.to_string()));
        }
        let t = self.vb.get_unchecked_dtype(name, dtype)?;
        check_shape(name, t.dims(), shape)?;
        Ok(t)
    }
}

impl WeightSource for SafetensorsSource<'_> {
    fn contains(&self, name: &str) -> bool {
        self.vb.contains_tensor(name)
    }

    fn linear(&mut self, name: &str, out: usize, inp: usize, bias: bool) -> Result<Linear> {
        let w = self.get(&format!("{name}.weight"), &[out, inp], self.dtype)?;
        let bias = if bias {
            Some(self.get(&format!("{name}.bias"), &[out], DType::F32)?)
        } else {
            None
        };
        Ok(Linear {
            weight: dense_weight(w)?,
            bias,
        })
    }

    fn vector(&mut self, name: &str, len: usize) -> Result<Tensor> {
        self.get(name, &[len], DType::F32)
    }

    fn embedding(&mut self, name: &str, rows: usize, cols: usize) -> Result<Embedding> {
        Ok(Embedding::Dense(self.get(
            name,
            &[rows, cols],
            self.dtype,
        )?))
    }

    fn tied_output(&mut self, name: &str, rows: usize, cols: usize) -> Result<Linear> {
        Ok(Linear {
            weight: dense_weight(self.get(name, &[rows, cols], self.dtype)?)?,
            bias: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::gguf_name;

    #[test]
    fn names_map_to_llama_cpp() {
        assert_eq!(gguf_name("model.embed_tokens.weight"), "token_embd.weight");
        assert_eq!(
            gguf_name("model.layers.3.self_attn.q_proj.bias"),
            "blk.3.attn_q.bias"
        );
        assert_eq!(
            gguf_name("model.layers.11.mlp.down_proj.weight"),
            "blk.11.ffn_down.weight"
        );
        assert_eq!(
            gguf_name("model.layers.0.post_attention_layernorm.weight"),
            "blk.0.ffn_norm.weight"
        );
        assert_eq!(gguf_name("lm_head.weight"), "output.weight");
    }
}
