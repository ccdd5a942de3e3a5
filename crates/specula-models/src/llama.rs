//! The Llama-family decoder: one implementation for Llama, SmolLM, Mistral and Qwen2, written on
//! candle primitives, with a chunked, truncatable KV cache and logits for any subset of the new
//! positions.

use crate::config::{ModelConfig, RopeStyle};
use crate::weights::{Embedding, Linear, WeightSource, BATCH_INVARIANT_MAX_ROWS};
use crate::{ModelError, Result};
use candle_core::{CpuStorage, DType, Device, Layout, Storage, Tensor};
use specula_core::{CausalLm, CoreError, LogitsSelection, TokenId};
use specula_kernels::{causal_attention, silu_mul, AttentionShape, KvView};
use specula_kv::{KvCache, KvConfig, KvError};

/// Positions allocated at a time by the KV cache.
pub const DEFAULT_KV_CHUNK: usize = 256;

#[derive(Debug, Clone)]
struct Block {
    attn_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ffn_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// Layer weights from which a CPU forward runs on the thread pool ([`specula_kernels::on_hot_pool`]):
/// for smaller models (the tests' synthetic ones) a forward takes well under a millisecond and
/// handing it to the pool would cost more than it saves.
const POOL_FORWARD_MIN_PARAMS: usize = 20_000_000;

/// Weights of the decoder layers' matrices (attention and MLP), from the configuration.
fn layer_weights(c: &ModelConfig) -> usize {
    let kv = c.num_kv_heads * c.head_dim;
    let attn = c.hidden_size * (2 * c.num_heads * c.head_dim + 2 * kv);
    c.num_layers * (attn + 3 * c.hidden_size * c.intermediate_size)
}

/// A Llama-family decoder with its KV cache. Implements [`CausalLm`].
#[derive(Debug, Clone)]
pub struct LlamaModel {
    cfg: ModelConfig,
    embed: Embedding,
    blocks: Vec<Block>,
    norm: Tensor,
    lm_head: Linear,
    /// The output projection limited to the first tokens of the vocabulary
    /// ([`LlamaModel::limit_output_vocab`]); the other logits are `-inf`.
    lm_head_top: Option<(usize, Linear)>,
    /// Ids past the limit that are scored anyway ([`LlamaModel::extend_output_vocab`]).
    lm_head_extra: ExtraOutputs,
    cos: Tensor,
    sin: Tensor,
    cache: KvCache,
    device: Device,
    /// Whether CPU forwards run on the thread pool ([`POOL_FORWARD_MIN_PARAMS`]), fixed at load.
    pool_forward: bool,
    /// Each layer's vectors as plain values, when every layer runs on Specula's CPU kernels: then
    /// decode-size forwards take the host path ([`LlamaModel::forward_host`]).
    host: Option<Vec<HostLayer>>,
    /// Whether the host path is used where it can be ([`LlamaModel::set_host_path`]).
    host_path: bool,
}

/// A layer's norms and biases as f32 values, for [`LlamaModel::forward_host`].
#[derive(Debug, Clone)]
struct HostLayer {
    attn_norm: Vec<f32>,
    ffn_norm: Vec<f32>,
    q_bias: Option<Vec<f32>>,
    k_bias: Option<Vec<f32>>,
    v_bias: Option<Vec<f32>>,
}

impl HostLayer {
    /// The layer's values, if all its matrices run on the CPU kernels.
    fn of(b: &Block) -> candle_core::Result<Option<Self>> {
        let linears = [&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down];
        if !linears.iter().all(|l| l.on_host_kernels()) {
            return Ok(None);
        }
        let values = |t: &Tensor| t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>();
        Ok(Some(HostLayer {
            attn_norm: values(&b.attn_norm)?,
            ffn_norm: values(&b.ffn_norm)?,
            q_bias: b.q.bias_values()?,
            k_bias: b.k.bias_values()?,
            v_bias: b.v.bias_values()?,
        }))
    }
}

impl LlamaModel {
    /// Builds the model from a weight source, with a KV cache of `max_seq_len` positions of
    /// `kv_dtype` ([`crate::LoadOptions::kv_dtype`]). `progress(done, total)` is called once per
    /// layer.
    pub(crate) fn load(
        cfg: ModelConfig,
        src: &mut dyn WeightSource,
        device: &Device,
        (max_seq_len, kv_dtype): (usize, Option<DType>),
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        cfg.validate()?;
        let kv_dtype = match (kv_dtype, device.is_cpu()) {
            (None, true) => DType::F16,
            (None, false) => DType::F32,
            (Some(d @ (DType::F16 | DType::F32)), _) => d,
            (Some(d), false) if d == DType::BF16 => d,
            (Some(d), _) => {
                return Err(ModelError::InvalidConfig(format!(
                    "a KV cache of {d:?} is not supported on this device; use F16 or F32"
                )))
            }
        };
        let (h, hd) = (cfg.hidden_size, cfg.head_dim);
        let (nh, nkv) = (cfg.num_heads, cfg.num_kv_heads);
        let total = cfg.num_layers + 2;
        let embed = src.embedding("model.embed_tokens.weight", cfg.vocab_size, h)?;
        progress(1, total);
        let mut blocks = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("model.layers.{i}");
            let bias = cfg.attention_bias;
            blocks.push(Block {
                attn_norm: src.vector(&format!("{p}.input_layernorm.weight"), h)?,
                q: src.linear(&format!("{p}.self_attn.q_proj"), nh * hd, h, bias)?,
                k: src.linear(&format!("{p}.self_attn.k_proj"), nkv * hd, h, bias)?,
                v: src.linear(&format!("{p}.self_attn.v_proj"), nkv * hd, h, bias)?,
                o: src.linear(&format!("{p}.self_attn.o_proj"), h, nh * hd, false)?,
                ffn_norm: src.vector(&format!("{p}.post_attention_layernorm.weight"), h)?,
                gate: src.linear(
                    &format!("{p}.mlp.gate_proj"),
                    cfg.intermediate_size,
                    h,
                    false,
                )?,
                up: src.linear(&format!("{p}.mlp.up_proj"), cfg.intermediate_size, h, false)?,
                down: src.linear(
                    &format!("{p}.mlp.down_proj"),
                    h,
                    cfg.intermediate_size,
                    false,
                )?,
            });
            progress(i + 2, total);
        }
        let norm = src.vector("model.norm.weight", h)?;
        let lm_head = if !cfg.tie_word_embeddings && src.contains("lm_head.weight") {
            src.linear("lm_head", cfg.vocab_size, h, false)?
        } else {
            src.tied_output("model.embed_tokens.weight", cfg.vocab_size, h)?
        };
        progress(total, total);

        let max_seq_len = max_seq_len.min(cfg.max_seq_len).max(1);
        let (cos, sin) = rope_tables(cfg.rope_theta, hd, max_seq_len, device)?;
        let cache = KvCache::new(KvConfig {
            n_layers: cfg.num_layers,
            n_kv_heads: nkv,
            head_dim: hd,
            max_len: max_seq_len,
            chunk: DEFAULT_KV_CHUNK,
            dtype: kv_dtype,
            device: device.clone(),
        });
        let pool_forward = device.is_cpu() && layer_weights(&cfg) >= POOL_FORWARD_MIN_PARAMS;
        let host = if device.is_cpu() {
            blocks
                .iter()
                .map(HostLayer::of)
                .collect::<candle_core::Result<Option<Vec<_>>>>()?
        } else {
            None
        };
        Ok(LlamaModel {
            cfg,
            embed,
            blocks,
            norm,
            lm_head,
            lm_head_top: None,
            lm_head_extra: ExtraOutputs::default(),
            cos,
            sin,
            cache,
            device: device.clone(),
            pool_forward,
            host,
            host_path: true,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The KV cache (read-only: length, capacity, memory).
    pub fn cache(&self) -> &KvCache {
        &self.cache
    }

    /// Whether decode-size forwards (up to 16 tokens) on the CPU run their element-wise steps
    /// (norms, biases, RoPE, residuals) on plain buffers between Specula's kernels (the default,
    /// where every matrix runs on them), rather than as candle tensor operations. Both give the
    /// same logits bit for bit; the host path saves the operations' overhead (a microsecond or
    /// two each, some twenty per layer: measured 0.6 % of a 1.5B one-token step and 3 % of a
    /// five- or nine-token one). Off is for comparisons and tests.
    ///
    /// ```no_run
    /// # fn demo(model: &mut specula_models::LlamaModel) {
    /// model.set_host_path(false); // every step through candle's tensor operations
    /// # }
    /// ```
    pub fn set_host_path(&mut self, on: bool) {
        self.host_path = on;
    }

    /// Whether the host path runs decode-size forwards ([`LlamaModel::set_host_path`], and
    /// every matrix on Specula's CPU kernels).
    pub fn uses_host_path(&self) -> bool {
        self.host_path && self.host.is_some()
    }

    fn forward_inner(
        &mut self,
        tokens: &[TokenId],
        select: LogitsSelection,
    ) -> candle_core::Result<Tensor> {
        let n = tokens.len();
        if n <= BATCH_INVARIANT_MAX_ROWS && self.uses_host_path() {
            return self.forward_host(tokens, select);
        }
        let pos = self.cache.len();
        let ids = Tensor::new(tokens, &self.device)?;
        let mut x = self.embed.forward(&ids)?.unsqueeze(0)?; // (1, n, h)
        let cos = self.cos.narrow(0, pos, n)?;
        let sin = self.sin.narrow(0, pos, n)?;
        let total = pos + n;
        let mask = if n > BATCH_INVARIANT_MAX_ROWS {
            let data: Vec<f32> = (0..n)
                .flat_map(|i| {
                    (0..total).map(move |j| if j > pos + i { f32::NEG_INFINITY } else { 0.0 })
                })
                .collect();
            Some(Tensor::from_vec(data, (n, total), &self.device)?)
        } else {
            None
        };
        let (nh, nkv, hd) = (self.cfg.num_heads, self.cfg.num_kv_heads, self.cfg.head_dim);
        let groups = nh / nkv;
        let scale = 1.0 / (hd as f64).sqrt();
        let eps = self.cfg.rms_norm_eps as f32;
        for (layer, b) in self.blocks.iter().enumerate() {
            let residual = x.clone();
            let hs = rms_norm(&x, &b.attn_norm, eps)?;
            let [q, k, v] = Linear::forward_many([&b.q, &b.k, &b.v], &hs)?;
            let q = q.reshape((1, n, nh, hd))?.transpose(1, 2)?.contiguous()?;
            let k = k.reshape((1, n, nkv, hd))?.transpose(1, 2)?.contiguous()?;
            let v = v.reshape((1, n, nkv, hd))?.transpose(1, 2)?;
            let (q, k) = match self.cfg.rope_style {
                RopeStyle::Half => (
                    candle_nn::rotary_emb::rope(&q, &cos, &sin)?,
                    candle_nn::rotary_emb::rope(&k, &cos, &sin)?,
                ),
                RopeStyle::Interleaved => (
                    candle_nn::rotary_emb::rope_i(&q, &cos, &sin)?,
                    candle_nn::rotary_emb::rope_i(&k, &cos, &sin)?,
                ),
            };
            let (k_all, v_all) = self
                .cache
                .append(layer, &k, &v)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            let attn = if n <= BATCH_INVARIANT_MAX_ROWS && self.device.is_cpu() {
                fused_attention(&q, &k_all, &v_all, pos, nkv, scale)?
            } else if n <= BATCH_INVARIANT_MAX_ROWS {
                // One query position at a time over exactly the keys it may see: the same shapes
                // (and so the same kernels) as a single-token forward, hence bit-identical rows.
                let rows = (0..n)
                    .map(|i| {
                        let qi = q.narrow(2, i, 1)?.contiguous()?;
                        let len = pos + i + 1;
                        attention(
                            &qi,
                            &k_all.narrow(2, 0, len)?,
                            &v_all.narrow(2, 0, len)?,
                            groups,
                            1,
                            None,
                            scale,
                        )
                    })
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Tensor::cat(&rows, 1)?
            } else {
                attention(&q, &k_all, &v_all, groups, n, mask.as_ref(), scale)?
            };
            x = (b.o.forward(&attn)? + residual)?;
            let residual = x.clone();
            let hs = rms_norm(&x, &b.ffn_norm, eps)?;
            let [gate, up] = Linear::forward_many([&b.gate, &b.up], &hs)?;
            let gated = swiglu(gate, &up)?;
            x = (b.down.forward(&gated)? + residual)?;
        }
        self.output_logits(x, select)
    }

    /// Logits of the positions `select` picks from the last layer's output `x` `(1, n, h)`.
    fn output_logits(&self, x: Tensor, select: LogitsSelection) -> candle_core::Result<Tensor> {
        let n = x.dim(1)?;
        let eps = self.cfg.rms_norm_eps as f32;
        let range = select.range(n);
        let x = x.narrow(1, range.start, range.len())?;
        let x = rms_norm(&x, &self.norm, eps)?;
        let logits = match &self.lm_head_top {
            Some((rows, head)) => {
                let top = head.forward(&x)?.squeeze(0)?.to_dtype(DType::F32)?; // (selected, rows)
                let vocab = self.cfg.vocab_size;
                let mut all = vec![f32::NEG_INFINITY; top.dim(0)? * vocab];
                for (row, out) in top
                    .to_vec2::<f32>()?
                    .iter()
                    .zip(all.chunks_exact_mut(vocab))
                {
                    out[..*rows].copy_from_slice(row);
                }
                if let Some(extra) = &self.lm_head_extra.head {
                    let e = extra.forward(&x)?.squeeze(0)?.to_dtype(DType::F32)?;
                    for (row, out) in e.to_vec2::<f32>()?.iter().zip(all.chunks_exact_mut(vocab)) {
                        for (&id, &l) in self.lm_head_extra.ids.iter().zip(row) {
                            out[id as usize] = l;
                        }
                    }
                }
                Tensor::from_vec(all, (top.dim(0)?, vocab), x.device())?
            }
            None => self.lm_head.forward(&x)?.squeeze(0)?, // (selected, vocab)
        };
        logits.to_dtype(DType::F32)
    }

    /// [`Self::forward_inner`] of at most [`BATCH_INVARIANT_MAX_ROWS`] tokens with every matrix on
    /// Specula's CPU kernels: the activations stay in plain buffers from the embedding to the
    /// final norm, and the steps between the kernels (norms, biases, RoPE, the residual adds) run
    /// on them directly. Each step computes what candle's operation does in the same order, so
    /// the logits equal [`Self::forward_inner`]'s bit for bit (tested); the KV cache and the
    /// output projection are shared with it.
    fn forward_host(
        &mut self,
        tokens: &[TokenId],
        select: LogitsSelection,
    ) -> candle_core::Result<Tensor> {
        let Some(host) = self.host.as_ref() else {
            candle_core::bail!("the host path needs every matrix on Specula's CPU kernels");
        };
        let cfg = &self.cfg;
        let (n, pos) = (tokens.len(), self.cache.len());
        let (h, nh, nkv, hd) = (
            cfg.hidden_size,
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
        );
        let eps = cfg.rms_norm_eps as f32;
        let scale = (1.0 / (hd as f64).sqrt()) as f32;
        let ids = Tensor::new(tokens, &self.device)?;
        let mut x: Vec<f32> = self.embed.forward(&ids)?.flatten_all()?.to_vec1()?;
        let mut hs = vec![0f32; n * h];
        let (mut q, mut q_heads, mut attn) = (
            vec![0f32; n * nh * hd],
            vec![0f32; n * nh * hd],
            vec![0f32; n * nh * hd],
        );
        let (mut k, mut v) = (vec![0f32; n * nkv * hd], vec![0f32; n * nkv * hd]);
        let mut proj = vec![0f32; n * h];
        let (mut gate, mut up) = (
            vec![0f32; n * cfg.intermediate_size],
            vec![0f32; n * cfg.intermediate_size],
        );
        let (cos_guard, cos_layout) = self.cos.storage_and_layout();
        let (sin_guard, sin_layout) = self.sin.storage_and_layout();
        let half = hd / 2;
        let table = |t: usize| (pos + t) * half;
        // `KvCache::reserve` has checked `pos + n` against the context the tables were built for.
        let rows = |t: &'_ [f32]| -> candle_core::Result<Vec<f32>> {
            match t.get(table(0)..table(n)) {
                Some(r) => Ok(r.to_vec()),
                None => candle_core::bail!("positions {pos}..{} past the RoPE tables", pos + n),
            }
        };
        let cos = &rows(cpu_f32(&cos_guard, cos_layout)?)?;
        let sin = &rows(cpu_f32(&sin_guard, sin_layout)?)?;
        drop((cos_guard, sin_guard));
        for (layer, (b, hl)) in self.blocks.iter().zip(host).enumerate() {
            rms_norm_rows(&x, &hl.attn_norm, eps, &mut hs);
            Linear::host_matmul([&b.q, &b.k, &b.v], &hs, n, [&mut q, &mut k, &mut v])?;
            for (y, bias) in [
                (&mut q, &hl.q_bias),
                (&mut k, &hl.k_bias),
                (&mut v, &hl.v_bias),
            ] {
                if let Some(bias) = bias {
                    for row in y.chunks_exact_mut(bias.len()) {
                        row.iter_mut().zip(bias).for_each(|(y, b)| *y += *b);
                    }
                }
            }
            rope_rows(&mut q, nh, hd, cos, sin, cfg.rope_style);
            rope_rows(&mut k, nkv, hd, cos, sin, cfg.rope_style);
            // The cache takes `(1, kv_heads, n, hd)`; the buffers are token-major.
            let as_heads = |t: &[f32]| -> candle_core::Result<Tensor> {
                Tensor::from_slice(t, (1, n, nkv, hd), &self.device)?.transpose(1, 2)
            };
            let (k_all, v_all) = self
                .cache
                .append(layer, &as_heads(&k)?, &as_heads(&v)?)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            for (t, row) in q.chunks_exact(nh * hd).enumerate() {
                for (head, qh) in row.chunks_exact(hd).enumerate() {
                    q_heads[(head * n + t) * hd..][..hd].copy_from_slice(qh);
                }
            }
            let shape = AttentionShape {
                n,
                heads: nh,
                kv_heads: nkv,
                head_dim: hd,
                pos,
            };
            attend(&q_heads, &k_all, &v_all, shape, scale, &mut attn)?;
            Linear::host_matmul([&b.o], &attn, n, [&mut proj])?;
            add_into(&mut x, &proj);
            rms_norm_rows(&x, &hl.ffn_norm, eps, &mut hs);
            Linear::host_matmul([&b.gate, &b.up], &hs, n, [&mut gate, &mut up])?;
            silu_mul(&mut gate, &up).map_err(candle_core::Error::wrap)?;
            Linear::host_matmul([&b.down], &gate, n, [&mut proj])?;
            add_into(&mut x, &proj);
        }
        self.output_logits(Tensor::from_vec(x, (1, n, h), &self.device)?, select)
    }
}

/// `x[i] = x[i] + y[i]`: a residual add as candle's `y + x` computes it (addition commutes
/// exactly).
fn add_into(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(x, y)| *x += *y);
}

/// Each `alpha.len()`-wide row of `x` RMS-normalised into `out` (`x / rms * alpha`, as candle's
/// `rms_norm`). The sum of squares runs over eight partial sums (element `i` into `i % 8`) added
/// pairwise at the end, which the compiler vectorizes; a row's result depends only on the row.
fn rms_norm_rows(x: &[f32], alpha: &[f32], eps: f32, out: &mut [f32]) {
    let dim = alpha.len();
    for (row, out) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let mut part = [0f32; 8];
        let chunks = row.chunks_exact(8);
        let tail = chunks.remainder();
        for c in chunks {
            for (p, &v) in part.iter_mut().zip(c) {
                *p += v * v;
            }
        }
        for (p, &v) in part.iter_mut().zip(tail) {
            *p += v * v;
        }
        let sum2 = ((part[0] + part[1]) + (part[2] + part[3]))
            + ((part[4] + part[5]) + (part[6] + part[7]));
        let m = (sum2 / dim as f32 + eps).sqrt();
        for ((o, &v), &a) in out.iter_mut().zip(row).zip(alpha) {
            *o = v / m * a;
        }
    }
}

/// RMS norm of `x` `(.., h)` with weight `alpha` `(h,)`: [`rms_norm_rows`] for f32 on the CPU
/// (so the tensor path and the host path give the same bits), candle's op elsewhere.
fn rms_norm(x: &Tensor, alpha: &Tensor, eps: f32) -> candle_core::Result<Tensor> {
    if !x.device().is_cpu() || x.dtype() != DType::F32 || alpha.dtype() != DType::F32 {
        return candle_nn::ops::rms_norm(x, alpha, eps);
    }
    let x = x.contiguous()?;
    let mut out = vec![0f32; x.elem_count()];
    {
        let (xs, xl) = x.storage_and_layout();
        let alpha = alpha.contiguous()?;
        let (als, all) = alpha.storage_and_layout();
        rms_norm_rows(cpu_f32(&xs, xl)?, cpu_f32(&als, all)?, eps, &mut out);
    }
    Tensor::from_vec(out, x.dims(), x.device())
}

/// RoPE in place on token-major rows of `heads` heads of `hd` values; `cos` / `sin` hold
/// `hd / 2` values per token. The same products in the same order as candle's `rope` /
/// `rope_i`.
fn rope_rows(x: &mut [f32], heads: usize, hd: usize, cos: &[f32], sin: &[f32], style: RopeStyle) {
    let half = hd / 2;
    for (t, row) in x.chunks_exact_mut(heads * hd).enumerate() {
        let (cos, sin) = (&cos[t * half..][..half], &sin[t * half..][..half]);
        for head in row.chunks_exact_mut(hd) {
            for i in 0..half {
                let (a, b) = match style {
                    RopeStyle::Half => (i, i + half),
                    RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                };
                let (x1, x2) = (head[a], head[b]);
                head[a] = x1 * cos[i] - x2 * sin[i];
                head[b] = x1 * sin[i] + x2 * cos[i];
            }
        }
    }
}

/// The f32 values of a contiguous CPU tensor's storage.
fn cpu_f32<'a>(storage: &'a Storage, layout: &Layout) -> candle_core::Result<&'a [f32]> {
    let (Storage::Cpu(cpu), Some((start, end))) = (storage, layout.contiguous_offsets()) else {
        candle_core::bail!("expected a contiguous CPU tensor");
    };
    Ok(&cpu.as_slice::<f32>()?[start..end])
}

/// Token ids scored past a limited output vocabulary, and their rows of the output projection.
#[derive(Debug, Clone, Default)]
struct ExtraOutputs {
    /// In the order of `head`'s rows.
    ids: Vec<TokenId>,
    known: std::collections::HashSet<TokenId>,
    head: Option<Linear>,
}

/// `silu(gate) * up`: on the CPU by Specula's element-wise kernel (on the matmuls' thread pool;
/// candle's own pool spins beside it from 64K elements on), elsewhere by candle's ops.
fn swiglu(gate: Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
    if !gate.device().is_cpu() || gate.dtype() != DType::F32 || up.dtype() != DType::F32 {
        return candle_nn::ops::silu(&gate)? * up;
    }
    let dims = gate.dims().to_vec();
    let mut g = gate.flatten_all()?.to_vec1::<f32>()?;
    {
        let up = up.contiguous()?;
        let (storage, layout) = up.storage_and_layout();
        let (Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets())
        else {
            candle_core::bail!("swiglu: up projection not in contiguous CPU memory");
        };
        silu_mul(&mut g, &cpu.as_slice::<f32>()?[start..end]).map_err(candle_core::Error::wrap)?;
    }
    Tensor::from_vec(g, dims, gate.device())
}

/// Attention of `q` `(1, heads, n, hd)` over `k`/`v` `(1, kv_heads, len, hd)`; returns
/// `(1, n, heads * hd)`. GQA without copying K/V: the query heads that share a KV head are folded
/// into rows of one matmul.
/// Decode / verification attention on the CPU: the new rows of `q` (`(1, heads, n, hd)`) against
/// the cache views `k_all`, `v_all` (`(1, kv_heads, pos + n, hd)`), read in place by Specula's
/// kernel; batch-invariant like the per-row path it replaces, without its per-row tensor ops.
fn fused_attention(
    q: &Tensor,
    k_all: &Tensor,
    v_all: &Tensor,
    pos: usize,
    kv_heads: usize,
    scale: f64,
) -> candle_core::Result<Tensor> {
    let (_, heads, n, hd) = q.dims4()?;
    let q = q.to_dtype(DType::F32)?.contiguous()?;
    let mut out = vec![0f32; n * heads * hd];
    {
        let (qs, ql) = q.storage_and_layout();
        let shape = AttentionShape {
            n,
            heads,
            kv_heads,
            head_dim: hd,
            pos,
        };
        attend(
            cpu_f32(&qs, ql)?,
            k_all,
            v_all,
            shape,
            scale as f32,
            &mut out,
        )?;
    }
    Tensor::from_vec(out, (1, n, heads * hd), q.device())
}

/// Specula's attention kernel on `q` (`(heads, n, hd)` values) and the cache views `k_all`,
/// `v_all` (f16 or f32 storage, read in place) into `out` (`(n, heads * hd)`).
fn attend(
    q: &[f32],
    k_all: &Tensor,
    v_all: &Tensor,
    shape: AttentionShape,
    scale: f32,
    out: &mut [f32],
) -> candle_core::Result<()> {
    let (ks, kl) = k_all.storage_and_layout();
    let (vs, vl) = v_all.storage_and_layout();
    let (Storage::Cpu(ks), Storage::Cpu(vs)) = (&*ks, &*vs) else {
        candle_core::bail!("fused attention runs on the CPU only");
    };
    if kl.stride()[3] != 1 || vl.stride()[3] != 1 {
        candle_core::bail!("the KV cache rows must be contiguous");
    }
    match (ks, vs) {
        (CpuStorage::F16(k), CpuStorage::F16(v)) => {
            causal_attention(q, kv_view(k, kl), kv_view(v, vl), shape, scale, out)
        }
        _ => {
            let (kv, vv) = (kv_view(ks.as_slice()?, kl), kv_view(vs.as_slice()?, vl));
            causal_attention::<f32>(q, kv, vv, shape, scale, out)
        }
    }
    .map_err(candle_core::Error::wrap)
}

/// A `(1, kv_heads, len, hd)` cache tensor's storage as the kernel's strided view.
fn kv_view<'a, E>(data: &'a [E], l: &Layout) -> KvView<'a, E> {
    KvView {
        data,
        offset: l.start_offset(),
        head_stride: l.stride()[1],
        pos_stride: l.stride()[2],
    }
}

fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    groups: usize,
    n: usize,
    mask: Option<&Tensor>,
    scale: f64,
) -> candle_core::Result<Tensor> {
    let (_, heads, _, hd) = q.dims4()?;
    let kv_heads = heads / groups;
    let len = k.dim(2)?;
    // The cache may hold another dtype (f16 on the CPU); compute in the queries'.
    let (k, v) = (&k.to_dtype(q.dtype())?, &v.to_dtype(q.dtype())?);
    let q = q.reshape((1, kv_heads, groups * n, hd))?;
    let scores = (q.matmul(&k.t()?)? * scale)?; // (1, kv_heads, groups*n, len)
    let scores = match mask {
        Some(m) => scores
            .reshape((1, kv_heads, groups, n, len))?
            .broadcast_add(m)?
            .reshape((1, kv_heads, groups * n, len))?,
        None => scores,
    };
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    probs
        .matmul(v)? // (1, kv_heads, groups*n, hd)
        .reshape((1, heads, n, hd))?
        .transpose(1, 2)?
        .reshape((1, n, heads * hd))
}

/// cos/sin tables of shape `(max_len, head_dim / 2)`.
fn rope_tables(
    theta: f32,
    head_dim: usize,
    max_len: usize,
    device: &Device,
) -> candle_core::Result<(Tensor, Tensor)> {
    let half = head_dim / 2;
    let inv: Vec<f32> = (0..half)
        .map(|i| 1.0 / theta.powf(2.0 * i as f32 / head_dim as f32))
        .collect();
    let inv = Tensor::from_vec(inv, (1, half), device)?;
    let t = Tensor::arange(0u32, max_len as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((max_len, 1))?;
    let freqs = t.broadcast_mul(&inv)?;
    Ok((freqs.cos()?, freqs.sin()?))
}

impl LlamaModel {
    /// Computes logits only for the first `rows` token ids (the rest are `-inf`), or for all of
    /// them again with `rows >= vocab_size`. Meant for draft models: BPE vocabularies number
    /// tokens roughly by merge order, so the first ids are the frequent ones, and the output
    /// projection is a large part of a small model's per-token cost (about a third of Qwen2.5
    /// 0.5B's bytes). The target verifies every proposal, so this never changes the output; it
    /// only makes tokens past `rows` impossible to propose. Returns false (and changes nothing)
    /// when the projection cannot be sliced (candle's quantized or the bf16 kernel) or
    /// `rows` is 0.
    ///
    /// Also forgets the ids [`extend_output_vocab`](Self::extend_output_vocab) added; asking again
    /// for the limit in effect does only that (cheaply).
    pub fn limit_output_vocab(&mut self, rows: usize) -> bool {
        if rows == 0 {
            return false;
        }
        self.lm_head_extra = ExtraOutputs::default();
        if rows >= self.cfg.vocab_size {
            self.lm_head_top = None;
            return true;
        }
        if matches!(self.lm_head_top, Some((r, _)) if r == rows) {
            return true;
        }
        match self.lm_head.top_rows(rows) {
            Some(head) => {
                self.lm_head_top = Some((rows, head));
                true
            }
            None => false,
        }
    }

    /// While the output vocabulary is limited ([`limit_output_vocab`](Self::limit_output_vocab)),
    /// also computes the logits of `ids` past the limit from now on: for a draft model, the rare
    /// tokens of the context it drafts for (identifiers a prompt names are the tokens a model
    /// repeats). Ids already scored, out of range or below the limit are skipped. Returns whether
    /// the ids are scored now: true without a limit (every id is), false when the projection
    /// cannot be sliced.
    pub fn extend_output_vocab(&mut self, ids: &[TokenId]) -> bool {
        let Some((rows, _)) = &self.lm_head_top else {
            return true;
        };
        let vocab = self.cfg.vocab_size;
        let extra = &mut self.lm_head_extra;
        let before = extra.ids.len();
        for &id in ids {
            if (*rows..vocab).contains(&(id as usize)) && extra.known.insert(id) {
                extra.ids.push(id);
            }
        }
        if extra.ids.len() == before {
            return true;
        }
        let rows: Vec<usize> = extra.ids.iter().map(|&id| id as usize).collect();
        match self.lm_head.select_rows(&rows) {
            Some(head) => {
                extra.head = Some(head);
                true
            }
            None => {
                *extra = ExtraOutputs::default();
                false
            }
        }
    }
}

impl CausalLm for LlamaModel {
    fn forward(
        &mut self,
        tokens: &[TokenId],
        logits: LogitsSelection,
    ) -> specula_core::Result<Tensor> {
        if tokens.is_empty() {
            return Err(CoreError::EmptyPrompt);
        }
        let vocab = self.cfg.vocab_size;
        if let Some(&id) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(CoreError::TokenOutOfRange { id, vocab });
        }
        self.cache.reserve(tokens.len()).map_err(|e| match e {
            KvError::ContextExceeded { needed, max_len } => CoreError::ContextExceeded {
                needed,
                limit: max_len,
            },
            other => CoreError::Backend(candle_core::Error::Msg(other.to_string())),
        })?;
        let out = if !self.pool_forward {
            self.forward_inner(tokens, logits)?
        } else if tokens.len() > BATCH_INVARIANT_MAX_ROWS {
            // A prompt: on a pool thread, the other workers left to sleep between kernels
            // (candle's element-wise ops at this size bring threads of their own).
            rayon::scope(|_| self.forward_inner(tokens, logits))?
        } else {
            // Decoding and verification: on a pool thread with the other workers awake, so each
            // of the forward's parallel kernels (a few hundred) is shared at once and no sleeping
            // caller is woken after.
            specula_kernels::on_hot_pool(|| self.forward_inner(tokens, logits))?
        };
        self.cache
            .commit(tokens.len())
            .map_err(|e| CoreError::Backend(candle_core::Error::Msg(e.to_string())))?;
        Ok(out)
    }

    fn seq_len(&self) -> usize {
        self.cache.len()
    }

    fn truncate(&mut self, len: usize) -> specula_core::Result<()> {
        self.cache
            .truncate(len)
            .map_err(|e| CoreError::invalid("len", e.to_string()))
    }

    fn reset(&mut self) {
        self.cache.clear();
    }

    fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }

    fn max_seq_len(&self) -> usize {
        self.cache.max_len()
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn limit_output_vocab(&mut self, rows: usize) -> bool {
        LlamaModel::limit_output_vocab(self, rows)
    }

    fn extend_output_vocab(&mut self, ids: &[TokenId]) -> bool {
        LlamaModel::extend_output_vocab(self, ids)
    }
}
