//! Specula's kernels read GGUF bytes exactly as candle (and llama.cpp) lay them out: for every
//! kernel type, a tensor quantized by candle dequantizes to the same floats through our decoder,
//! and our matmul matches candle's dequantized matmul.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use specula_kernels::{Isa, QMatrix, QuantType};

fn random(rows: usize, cols: usize, seed: u64) -> Tensor {
    let mut s = seed | 1;
    let v: Vec<f32> = (0..rows * cols)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0
        })
        .collect();
    Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
}

#[test]
fn kernels_decode_candle_quantized_tensors_exactly() {
    for (gt, qt, cols) in [
        (GgmlDType::Q4K, QuantType::Q4K, 512),
        (GgmlDType::Q6K, QuantType::Q6K, 768),
        (GgmlDType::Q5_0, QuantType::Q5_0, 96),
        (GgmlDType::Q8_0, QuantType::Q8_0, 224),
    ] {
        let rows = 19;
        let w = random(rows, cols, 7 + cols as u64);
        let q = QTensor::quantize(&w, gt).unwrap();
        let theirs: Vec<f32> = q
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let m = QMatrix::new(qt, rows, cols, q.data().unwrap().into_owned()).unwrap();
        let ours = m.dequantize();
        assert_eq!(
            ours, theirs,
            "{gt:?}: dequantized values differ from candle's"
        );

        // The matmul against candle's dequantized weights, for n = 1..=9, on every instruction set.
        let wd = Tensor::from_vec(theirs, (rows, cols), &Device::Cpu).unwrap();
        for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni]
            .into_iter()
            .filter(|i| i.is_supported())
        {
            let m = m.clone().with_isa(isa).unwrap();
            for n in 1..=9 {
                let x = random(n, cols, 100 + n as u64);
                let want: Vec<f32> = x
                    .matmul(&wd.t().unwrap())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
                let mut y = vec![0f32; n * rows];
                m.matmul(&xs, n, &mut y).unwrap();
                for (a, b) in y.iter().zip(&want) {
                    // Activations are quantized to 8 bits: about 1 % of the row's magnitude.
                    assert!(
                        (a - b).abs() <= 0.02 * (cols as f32).sqrt(),
                        "{gt:?} {isa:?} n={n}: {a} vs {b}"
                    );
                }
            }
        }
    }
}
