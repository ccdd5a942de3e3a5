//! Where weights come from: GGUF (kept quantized) or safetensors (f32/f16/bf16), behind one trait
//! so the decoder is written once. Tensors are named with Hugging Face names; the GGUF source maps
//! them to llama.cpp's names.

use crate::gguf::GgufFile;
use crate::{ModelError, Result};
use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use std::sync::Arc;

/// A linear layer `y = x W^T (+ b)` whose weight is quantized (GGUF) or dense.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: LinearWeight,
    bias: Option<Tensor>,
}

#[derive(Debug, Clone)]
enum LinearWeight {
    Quantized(QMatMul),
    Dense(Tensor),
}

/// Largest number of rows that [`Linear::forward`] computes one row at a time.
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
        if rows > 1 && rows <= BATCH_INVARIANT_MAX_ROWS {
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

    fn forward_rows(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = match &self.weight {
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
        Ok(match self.dense {
            Some(dt) => LinearWeight::Dense(q.dequantize(&self.device)?.to_dtype(dt)?),
            None => LinearWeight::Quantized(QMatMul::from_qtensor(q)?),
        })
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
            weight: LinearWeight::Dense(w),
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
            weight: LinearWeight::Dense(self.get(name, &[rows, cols], self.dtype)?),
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
