//! Kernels against the f64 reference (dequantized weights . dequantized activations), scalar
//! against SIMD, and batch invariance for n = 1..=9 and beyond one tile.

use super::*;
use half::f16;

/// Xorshift: reproducible pseudo-random test data for every kernel test in the crate.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Random bytes with every f16 scale set to a finite value of realistic size.
fn random_matrix(ty: QuantType, rows: usize, cols: usize, rng: &mut Rng) -> Vec<u8> {
    let bb = ty.block_bytes();
    let blocks = rows * cols / ty.block_elems();
    let mut data: Vec<u8> = (0..blocks * bb).map(|_| rng.next() as u8).collect();
    for blk in data.chunks_exact_mut(bb) {
        let mut put =
            |at: usize, v: f32| blk[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
        match ty {
            QuantType::Q4K => {
                put(0, 0.001 + 0.01 * rng.f32());
                put(2, 0.001 + 0.01 * rng.f32());
            }
            QuantType::Q6K => put(208, 0.0005 + 0.002 * rng.f32()),
            QuantType::Q5_0 | QuantType::Q8_0 => put(0, 0.001 + 0.02 * rng.f32()),
        }
    }
    data
}

fn random_x(len: usize, rng: &mut Rng) -> Vec<f32> {
    (0..len).map(|_| (rng.f32() - 0.5) * 4.0).collect()
}

/// The activations as the kernels see them: quantized per row, then dequantized.
fn quantized_x(ty: QuantType, x: &[f32]) -> Vec<f32> {
    match ty {
        QuantType::Q4K | QuantType::Q6K => {
            let mut b = vec![BlockQ8K::default(); x.len() / QK_K];
            quantize_row_q8k(x, &mut b);
            b.iter()
                .flat_map(|b| b.qs.iter().map(move |&q| q as f32 * b.d))
                .collect()
        }
        _ => {
            let mut b = vec![BlockQ8_32::default(); x.len() / QK32];
            quantize_row_q8_32(x, &mut b);
            b.iter()
                .flat_map(|b| b.qs.iter().map(move |&q| q as f32 * b.d))
                .collect()
        }
    }
}

const TYPES: [QuantType; 4] = [
    QuantType::Q4K,
    QuantType::Q6K,
    QuantType::Q5_0,
    QuantType::Q8_0,
];

fn isas() -> Vec<Isa> {
    [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni]
        .into_iter()
        .filter(|i| i.is_supported())
        .collect()
}

fn shapes(ty: QuantType) -> Vec<(usize, usize)> {
    match ty {
        // Row counts that are not multiples of anything; 3 and 7 blocks per row.
        QuantType::Q4K | QuantType::Q6K => vec![(1, 256), (7, 768), (37, 1792), (130, 256)],
        _ => vec![(1, 32), (5, 96), (37, 896), (130, 224)],
    }
}

#[test]
fn matmul_matches_f64_reference_for_every_type_isa_and_n() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for ty in TYPES {
        for (rows, cols) in shapes(ty) {
            let data = random_matrix(ty, rows, cols, &mut rng);
            let m = QMatrix::new(ty, rows, cols, data).unwrap();
            let w = m.dequantize();
            for n in (1..=9).chain([17]) {
                let x = random_x(n * cols, &mut rng);
                let xq = quantized_x(ty, &x);
                for isa in isas() {
                    let m = m.clone().with_isa(isa).unwrap();
                    let mut y = vec![0f32; n * rows];
                    m.matmul(&x, n, &mut y).unwrap();
                    for j in 0..n {
                        for r in 0..rows {
                            let (mut exact, mut scale) = (0f64, 0f64);
                            for c in 0..cols {
                                let p = w[r * cols + c] as f64 * xq[j * cols + c] as f64;
                                exact += p;
                                scale += p.abs();
                            }
                            let got = y[j * rows + r] as f64;
                            assert!(
                                (got - exact).abs() <= 1e-5 * scale + 1e-6,
                                "{ty:?} {isa:?} {rows}x{cols} n={n} row {r} act {j}: {got} vs {exact}"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn quantized_activations_are_close_to_the_floats() {
    let mut rng = Rng(7);
    let x = random_x(4 * QK_K, &mut rng);
    for ty in TYPES {
        let xq = quantized_x(ty, &x);
        for block in x.chunks(ty.block_elems()).zip(xq.chunks(ty.block_elems())) {
            let amax = block.0.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (a, b) in block.0.iter().zip(block.1) {
                assert!((a - b).abs() <= amax / 127.0 * 0.5 + 1e-6);
            }
        }
    }
}

#[test]
fn every_row_is_bit_identical_to_a_one_row_call() {
    let mut rng = Rng(42);
    for ty in TYPES {
        let (rows, cols) = shapes(ty)[2];
        let m = QMatrix::new(ty, rows, cols, random_matrix(ty, rows, cols, &mut rng)).unwrap();
        for isa in isas() {
            let m = m.clone().with_isa(isa).unwrap();
            for n in (1..=9).chain([16, 17, 40]) {
                let x = random_x(n * cols, &mut rng);
                let mut y = vec![0f32; n * rows];
                m.matmul(&x, n, &mut y).unwrap();
                for j in 0..n {
                    let mut single = vec![0f32; rows];
                    m.matmul(&x[j * cols..(j + 1) * cols], 1, &mut single)
                        .unwrap();
                    let got = &y[j * rows..(j + 1) * rows];
                    assert!(
                        got.iter()
                            .zip(&single)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{ty:?} {isa:?} n={n}: row {j} differs from its one-row result"
                    );
                }
            }
        }
    }
}

#[test]
fn simd_agrees_with_scalar() {
    if !Isa::Avx2.is_supported() {
        return;
    }
    let mut rng = Rng(3);
    for ty in TYPES {
        for (rows, cols) in shapes(ty) {
            let m = QMatrix::new(ty, rows, cols, random_matrix(ty, rows, cols, &mut rng)).unwrap();
            let x = random_x(3 * cols, &mut rng);
            let mut a = vec![0f32; 3 * rows];
            let mut b = vec![0f32; 3 * rows];
            m.clone()
                .with_isa(Isa::Scalar)
                .unwrap()
                .matmul(&x, 3, &mut a)
                .unwrap();
            m.clone()
                .with_isa(Isa::Avx2)
                .unwrap()
                .matmul(&x, 3, &mut b)
                .unwrap();
            for (p, q) in a.iter().zip(&b) {
                assert!(
                    (p - q).abs() <= 1e-4 * (1.0 + p.abs()),
                    "{ty:?}: {p} vs {q}"
                );
            }
        }
    }
}

/// The AVX-512 VNNI kernels compute the same exact integer sums as the AVX2 ones (Q6_K: `vpdpbusd`
/// against `maddubs` pairs times the scale by `madd`) and apply the same float operations, so the
/// two agree bit for bit for every type.
#[test]
fn vnni_matches_avx2_bit_for_bit() {
    if !Isa::Avx512Vnni.is_supported() {
        return;
    }
    let mut rng = Rng(11);
    for ty in TYPES {
        for (rows, cols) in shapes(ty) {
            let m = QMatrix::new(ty, rows, cols, random_matrix(ty, rows, cols, &mut rng)).unwrap();
            for n in [1, 2, 4, 5, 6, 9, 17] {
                let x = random_x(n * cols, &mut rng);
                let run = |isa| {
                    let mut y = vec![0f32; n * rows];
                    m.clone()
                        .with_isa(isa)
                        .unwrap()
                        .matmul(&x, n, &mut y)
                        .unwrap();
                    y
                };
                let (a, b) = (run(Isa::Avx2), run(Isa::Avx512Vnni));
                assert_eq!(a, b, "{ty:?} {rows}x{cols} n={n}");
            }
        }
    }
}

#[test]
fn dequantize_matches_hand_decoded_blocks() {
    // Q8_0: scale 0.5, quants 0..32 -> 0, 0.5, ..., 15.5.
    let mut b = f16::from_f32(0.5).to_le_bytes().to_vec();
    b.extend(0..32u8);
    let mut out = [0f32; 32];
    dequantize_q80(&b, &mut out);
    assert_eq!(out[31], 15.5);
    // Q5_0: scale 1, low nibbles 0, high bits set for odd elements -> (16 or 0) - 16.
    let mut b = f16::from_f32(1.0).to_le_bytes().to_vec();
    b.extend(0xaaaa_aaaau32.to_le_bytes());
    b.extend([0u8; 16]);
    dequantize_q50(&b, &mut out);
    assert_eq!(&out[..4], &[-16.0, 0.0, -16.0, 0.0]);
    // Q4_K: d 1, dmin 1, scale j = 1, min j = 2 for j < 4 (6-bit fields), quants all 0x21.
    let mut b = f16::from_f32(1.0).to_le_bytes().to_vec();
    b.extend(f16::from_f32(1.0).to_le_bytes());
    b.extend([1, 1, 1, 1, 2, 2, 2, 2, 0, 0, 0, 0]);
    b.extend([0x21u8; 128]);
    let mut out = [0f32; 256];
    dequantize_q4k(&b, &mut out);
    assert_eq!((out[0], out[32]), (1.0 * 1.0 - 2.0, 1.0 * 2.0 - 2.0));
    // Q6_K: all quants 32 + 1 (low 1, high bits 2), scales 3, d 0.25 -> 0.75.
    let mut b = vec![0x11u8; 128];
    b.extend([0xaau8; 64]);
    b.extend([3u8; 16]);
    b.extend(f16::from_f32(0.25).to_le_bytes());
    dequantize_q6k(&b, &mut out);
    assert!(out.iter().all(|&v| v == 0.75));
}

#[test]
fn shape_errors_say_what_is_wrong() {
    let e = QMatrix::new(QuantType::Q4K, 2, 100, vec![]).unwrap_err();
    assert!(e.to_string().contains("multiple of 256"), "{e}");
    let e = QMatrix::new(QuantType::Q8_0, 2, 32, vec![0; 10]).unwrap_err();
    assert!(e.to_string().contains("needs 68 bytes"), "{e}");
    let m = QMatrix::new(QuantType::Q8_0, 2, 32, vec![0; 68]).unwrap();
    let e = m.matmul(&[0.0; 31], 1, &mut [0.0; 2]).unwrap_err();
    assert!(matches!(e, KernelError::BadOperands { .. }), "{e}");
}

#[test]
fn zero_and_non_finite_activations() {
    let m = QMatrix::new(QuantType::Q8_0, 1, 32, {
        let mut b = f16::from_f32(1.0).to_le_bytes().to_vec();
        b.extend([1u8; 32]);
        b
    })
    .unwrap();
    let mut y = [1f32];
    m.matmul(&[0.0; 32], 1, &mut y).unwrap();
    assert_eq!(y[0], 0.0);
    let mut x = [0.0f32; 32];
    x[3] = f32::NAN;
    m.matmul(&x, 1, &mut y).unwrap();
    assert!(y[0].is_nan(), "a NaN activation must not vanish");
}

#[test]
fn bf16_matmul_matches_reference_and_is_batch_invariant() {
    let mut rng = Rng(11);
    let mut rounded = false;
    for (rows, cols) in [(1, 16), (7, 40), (37, 1536), (130, 100)] {
        let data: Vec<half::bf16> = (0..rows * cols)
            .map(|_| half::bf16::from_f32(rng.f32() - 0.5))
            .collect();
        let m = Bf16Matrix::new(rows, cols, data.clone()).unwrap();
        for isa in isas() {
            let m = m.clone().with_isa(isa).unwrap();
            rounded |= m.rounds_activations();
            for n in (1..=9).chain([13]) {
                let x = random_x(n * cols, &mut rng);
                let mut y = vec![0f32; n * rows];
                m.matmul(&x, n, &mut y).unwrap();
                for j in 0..n {
                    let mut single = vec![0f32; rows];
                    m.matmul(&x[j * cols..(j + 1) * cols], 1, &mut single)
                        .unwrap();
                    // With AVX-512 BF16 the activations are rounded to bf16 first.
                    let xv = |i: usize| match m.rounds_activations() {
                        true => half::bf16::from_f32(x[i]).to_f64(),
                        false => x[i] as f64,
                    };
                    for r in 0..rows {
                        let (mut exact, mut scale) = (0f64, 0f64);
                        for c in 0..cols {
                            let p = data[r * cols + c].to_f64() * xv(j * cols + c);
                            exact += p;
                            scale += p.abs();
                        }
                        let got = y[j * rows + r];
                        assert!(
                            (got as f64 - exact).abs() <= 1e-5 * scale + 1e-6,
                            "{isa:?} {rows}x{cols} n={n}"
                        );
                        assert_eq!(
                            got.to_bits(),
                            single[r].to_bits(),
                            "{isa:?} n={n} row {j} not batch-invariant"
                        );
                    }
                }
            }
        }
    }
    // The AVX-512 BF16 path ran wherever the CPU has it.
    #[cfg(target_arch = "x86_64")]
    if Isa::Avx512Vnni.is_supported() && std::arch::is_x86_feature_detected!("avx512bf16") {
        assert!(rounded, "the AVX-512 BF16 kernel was not tested");
    }
    assert!(Bf16Matrix::new(2, 3, vec![half::bf16::ZERO; 5]).is_err());
}

#[test]
fn attention_matches_naive_softmax_and_is_batch_invariant() {
    let mut rng = Rng(5);
    // (heads, kv_heads, head_dim): a head dimension the AVX2 build does not take (8, 20), groups
    // of 2, 6 (the 1.5B: a block of 4 and one of 2), 7 (the 0.5B) and 5 (4 + 1: a lone head),
    // and the real 128.
    // Caches of f32 and of f16 (widened exactly: the same checks hold against its values).
    for (heads, kv_heads, hd) in [(4, 2, 8), (12, 2, 32), (7, 1, 20), (14, 2, 128), (5, 1, 64)] {
        attention_case(heads, kv_heads, hd, &mut rng, |x| x);
        attention_case(heads, kv_heads, hd, &mut rng, half::f16::from_f32);
    }
}

fn attention_case<E: KvElem>(
    heads: usize,
    kv_heads: usize,
    hd: usize,
    rng: &mut Rng,
    conv: fn(f32) -> E,
) {
    let cap = 32;
    let k: Vec<E> = random_x(kv_heads * cap * hd, rng)
        .into_iter()
        .map(conv)
        .collect();
    let v: Vec<E> = random_x(kv_heads * cap * hd, rng)
        .into_iter()
        .map(conv)
        .collect();
    let kv = |d| KvView {
        data: d,
        offset: 0,
        head_stride: cap * hd,
        pos_stride: hd,
    };
    let isas: Vec<bool> = if Isa::Avx2.is_supported() {
        vec![false, true]
    } else {
        vec![false]
    };
    let pool = |threads| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
    };
    let (one_thread, many_threads) = (pool(1), pool(8));
    for (pos, n) in [(0, 1), (5, 1), (5, 4), (10, 9), (20, 9)] {
        let q = random_x(heads * n * hd, rng);
        let shape = AttentionShape {
            n,
            heads,
            kv_heads,
            head_dim: hd,
            pos,
        };
        let run = |simd: bool, q: &[f32], shape: AttentionShape| {
            let mut out = vec![0f32; shape.n * heads * hd];
            attention::attention_on(simd, q, kv(&k), kv(&v), shape, 0.35, &mut out).unwrap();
            out
        };
        let out = one_thread.install(|| run(false, &q, shape));
        // The AVX2 build and any split into tasks give the portable build's bits.
        for &simd in &isas {
            for p in [&one_thread, &many_threads] {
                let got = p.install(|| run(simd, &q, shape));
                assert_eq!(
                    got, out,
                    "{heads}/{kv_heads}x{hd} pos {pos} n {n} simd {simd}"
                );
            }
        }
        for i in 0..n {
            for h in 0..heads {
                let kvh = h / (heads / kv_heads);
                let qi = &q[(h * n + i) * hd..(h * n + i + 1) * hd];
                let at = |base: &[E], t: usize| -> Vec<f32> {
                    base[kvh * cap * hd + t * hd..][..hd]
                        .iter()
                        .map(|x| x.to_f32())
                        .collect()
                };
                let s: Vec<f64> = (0..=pos + i)
                    .map(|t| {
                        0.35 * qi
                            .iter()
                            .zip(at(&k, t))
                            .map(|(a, b)| (a * b) as f64)
                            .sum::<f64>()
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                for d in 0..hd {
                    let want: f64 = s
                        .iter()
                        .enumerate()
                        .map(|(t, x)| (x - m).exp() / z * at(&v, t)[d] as f64)
                        .sum();
                    let got = out[i * heads * hd + h * hd + d] as f64;
                    assert!(
                        (got - want).abs() < 1e-4,
                        "pos {pos} n {n} row {i} head {h}: {got} vs {want}"
                    );
                }
            }
            // The row alone (its query, same position) gives the same bits.
            let qi: Vec<f32> = (0..heads)
                .flat_map(|h| q[(h * n + i) * hd..(h * n + i + 1) * hd].to_vec())
                .collect();
            let one = AttentionShape {
                n: 1,
                pos: pos + i,
                ..shape
            };
            for &simd in &isas {
                let single = many_threads.install(|| run(simd, &qi, one));
                assert_eq!(single, out[i * heads * hd..(i + 1) * heads * hd].to_vec());
            }
        }
    }
    let shape = AttentionShape {
        n: 1,
        heads,
        kv_heads,
        head_dim: hd,
        pos: cap,
    };
    let e = causal_attention(&[0.0; 32], kv(&k), kv(&v), shape, 1.0, &mut [0.0; 32]).unwrap_err();
    assert!(matches!(e, KernelError::BadAttention(_)));
}

/// One input times several matrices in one parallel region (`matmul_many`, a layer's q/k/v or
/// gate/up) gives each matrix bit for bit its own `matmul`, for every mix of types, instruction
/// set and n (including a prompt-sized one); mismatched operands are errors.
#[test]
fn matmul_many_matches_separate_matmuls_bit_for_bit() {
    let mut rng = Rng(21);
    let cols = 512;
    let mixes: [&[(QuantType, usize)]; 3] = [
        &[
            (QuantType::Q4K, 40),
            (QuantType::Q4K, 9),
            (QuantType::Q6K, 9),
        ],
        &[
            (QuantType::Q8_0, 3),
            (QuantType::Q6K, 130),
            (QuantType::Q5_0, 17),
        ],
        &[(QuantType::Q5_0, 64)],
    ];
    for mix in mixes {
        let base: Vec<QMatrix> = mix
            .iter()
            .map(|&(ty, rows)| {
                QMatrix::new(ty, rows, cols, random_matrix(ty, rows, cols, &mut rng)).unwrap()
            })
            .collect();
        for isa in isas() {
            let mats: Vec<QMatrix> = base
                .iter()
                .map(|m| m.clone().with_isa(isa).unwrap())
                .collect();
            let refs: Vec<&QMatrix> = mats.iter().collect();
            for n in [1, 2, 5, 9, 17] {
                let x = random_x(n * cols, &mut rng);
                let mut got: Vec<Vec<f32>> =
                    mats.iter().map(|m| vec![0f32; n * m.shape().0]).collect();
                let mut outs: Vec<&mut [f32]> = got.iter_mut().map(|v| v.as_mut_slice()).collect();
                QMatrix::matmul_many(&refs, &x, n, &mut outs).unwrap();
                for (m, g) in mats.iter().zip(&got) {
                    let mut want = vec![0f32; n * m.shape().0];
                    m.matmul(&x, n, &mut want).unwrap();
                    assert!(
                        g.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{:?} {isa:?} n={n}: fused result differs",
                        m.quant_type()
                    );
                }
            }
        }
    }
    let m = QMatrix::new(
        QuantType::Q8_0,
        2,
        32,
        random_matrix(QuantType::Q8_0, 2, 32, &mut rng),
    )
    .unwrap();
    let (mut a, mut b) = (vec![0f32; 2], vec![0f32; 3]);
    let x = vec![1f32; 32];
    assert!(matches!(
        QMatrix::matmul_many(&[&m, &m], &x, 1, &mut [&mut a, &mut b]),
        Err(KernelError::BadOperands { .. })
    ));
    assert!(matches!(
        QMatrix::matmul_many(&[&m], &x, 1, &mut [&mut a, &mut b[..2]]),
        Err(KernelError::BadMany {
            mats: 1,
            outputs: 2
        })
    ));
    QMatrix::matmul_many(&[], &x, 1, &mut []).unwrap();
}

/// A matrix cut to its first rows (`top_rows`, a vocabulary-limited output projection) or to
/// rows picked in any order, with repeats (`select_rows`, the rare tokens of a draft's context),
/// gives those rows bit for bit what the full matrix gives, in every layout; a row past the end
/// is an error.
#[test]
fn cut_and_selected_rows_match_the_full_matrix_bit_for_bit() {
    let mut rng = Rng(13);
    for ty in TYPES {
        let (rows, cols) = shapes(ty)[3];
        let m = QMatrix::new(ty, rows, cols, random_matrix(ty, rows, cols, &mut rng)).unwrap();
        for isa in isas() {
            let m = m.clone().with_isa(isa).unwrap();
            let x = random_x(3 * cols, &mut rng);
            let mut full = vec![0f32; 3 * rows];
            m.matmul(&x, 3, &mut full).unwrap();
            let mut cases: Vec<(Vec<usize>, QMatrix)> = [1, 7, 8, 9, 100, rows]
                .into_iter()
                .map(|keep| ((0..keep).collect(), m.top_rows(keep).unwrap()))
                .collect();
            for pick in [
                vec![rows - 1],
                vec![9, 3, 3, 0, rows - 2],
                (0..rows).rev().step_by(3).collect(),
                Vec::new(),
            ] {
                let sel = m.select_rows(&pick).unwrap();
                cases.push((pick, sel));
            }
            for (pick, sub) in cases {
                assert_eq!(sub.shape(), (pick.len(), cols));
                let mut y = vec![0f32; 3 * pick.len()];
                sub.matmul(&x, 3, &mut y).unwrap();
                for j in 0..3 {
                    for (i, &r) in pick.iter().enumerate() {
                        let (a, b) = (y[j * pick.len() + i], full[j * rows + r]);
                        assert_eq!(a.to_bits(), b.to_bits(), "{ty:?} {isa:?}: row {r}");
                    }
                }
            }
            assert!(matches!(
                m.select_rows(&[0, rows]),
                Err(KernelError::NoSuchRow { row, .. }) if row == rows
            ));
        }
    }
}

/// The AVX2 activation quantizers write the portable code's bytes, including rounding ties,
/// values at the clamp, zeros, NaN and infinities.
#[test]
fn avx2_quantization_matches_the_portable_code() {
    if !crate::simd() {
        return;
    }
    let mut rng = Rng(17);
    let mut rows: Vec<Vec<f32>> = (0..50).map(|_| random_x(2 * QK_K, &mut rng)).collect();
    // Ties: multiples of 0.5 whose block maximum is 127 make x * 127 / max exact halves.
    rows.push(
        (0..2 * QK_K)
            .map(|i| (i % 255) as f32 * 0.5 - 63.5)
            .collect(),
    );
    rows.push(
        (0..2 * QK_K)
            .map(|i| ((i * 7) % 256) as f32 - 127.0)
            .collect(),
    );
    let mut special = random_x(2 * QK_K, &mut rng);
    special[3] = f32::NAN;
    special[QK_K + 40] = f32::INFINITY;
    rows.push(special);
    rows.push(vec![0.0; 2 * QK_K]);
    let mut tiny = vec![0.0; 2 * QK_K];
    tiny[7] = -1e-30;
    tiny[300] = f32::MIN_POSITIVE;
    rows.push(tiny);
    for x in &rows {
        let mut a = vec![BlockQ8K::default(); 2];
        let mut b = vec![BlockQ8K::default(); 2];
        quantize_row_q8k(x, &mut a);
        crate::blocks::quantize_row_q8k_portable(x, &mut b);
        for (a, b) in a.iter().zip(&b) {
            assert_eq!(a.qs, b.qs);
            assert_eq!(a.bsums, b.bsums);
            assert_eq!(a.csums, b.csums);
            assert_eq!(a.d.to_bits(), b.d.to_bits());
        }
        let mut a = vec![BlockQ8_32::default(); 2 * QK_K / QK32];
        let mut b = a.clone();
        quantize_row_q8_32(x, &mut a);
        crate::blocks::quantize_row_q8_32_portable(x, &mut b);
        for (a, b) in a.iter().zip(&b) {
            assert_eq!((a.qs, a.sum, a.d.to_bits()), (b.qs, b.sum, b.d.to_bits()));
        }
    }
}
