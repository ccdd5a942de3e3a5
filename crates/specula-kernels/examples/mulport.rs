//! How many vector integer multiplies this core retires per cycle: the ceiling of every
//! quantized kernel once verification makes it compute-bound.
//!
//! ```text
//! cargo run --release -p specula-kernels --example mulport
//! ```
//!
//! Estimates the core clock from a chain of dependent integer adds (one per cycle on every x86
//! core), then times ten independent chains of `vpmaddubsw` (the AVX2 kernels' byte dot
//! product), of `vpmaddwd` (their scale step) and, where the CPU has AVX-512 VNNI, of ymm
//! `vpdpbusd`, and prints cycles per instruction. Ten chains are enough to hide any of these
//! instructions' latency, so the figure is the throughput: 1.00 means one multiply unit (the
//! AVX2 Zen 2 host of 2026-12-02), 0.50 two. With it, `docs/benchmarks.md` turns a kernel's
//! instruction count per super-block into its floor.

#[cfg(target_arch = "x86_64")]
fn main() {
    use std::arch::asm;
    use std::time::Instant;

    if !is_x86_feature_detected!("avx2") {
        println!("this CPU has no AVX2: the kernels run their portable path");
        return;
    }
    const ITERS: u64 = 50_000_000;
    // Four dependent adds per iteration: four cycles on any out-of-order x86 core.
    let t = Instant::now();
    let mut x = 0u64;
    for _ in 0..ITERS {
        // SAFETY: register-only arithmetic.
        unsafe { asm!("add {0}, 1", "add {0}, 1", "add {0}, 1", "add {0}, 1", inout(reg) x) };
    }
    let ghz = 4.0 * ITERS as f64 / t.elapsed().as_secs_f64() / 1e9;
    std::hint::black_box(x);
    println!("core clock: about {ghz:.2} GHz (dependent adds)");

    // Cycles per instruction of a loop that ran ten per iteration for `secs`.
    let cycles = |secs: f64| secs * ghz * 1e9 / (ITERS * 10) as f64;
    macro_rules! ten {
        ($ins:literal) => {{
            let t = Instant::now();
            for _ in 0..ITERS {
                // SAFETY: register-only AVX2 arithmetic (checked above); the clobbered
                // registers are declared.
                unsafe {
                    asm!(
                        concat!($ins, " ymm0, ymm14, ymm15"),
                        concat!($ins, " ymm1, ymm14, ymm15"),
                        concat!($ins, " ymm2, ymm14, ymm15"),
                        concat!($ins, " ymm3, ymm14, ymm15"),
                        concat!($ins, " ymm4, ymm14, ymm15"),
                        concat!($ins, " ymm5, ymm14, ymm15"),
                        concat!($ins, " ymm6, ymm14, ymm15"),
                        concat!($ins, " ymm7, ymm14, ymm15"),
                        concat!($ins, " ymm8, ymm14, ymm15"),
                        concat!($ins, " ymm9, ymm14, ymm15"),
                        out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
                        out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _,
                        out("ymm8") _, out("ymm9") _, out("ymm14") _, out("ymm15") _,
                    )
                };
            }
            cycles(t.elapsed().as_secs_f64())
        }};
    }
    println!("vpmaddubsw ymm: {:.2} cycles each", ten!("vpmaddubsw"));
    println!("vpmaddwd ymm:   {:.2} cycles each", ten!("vpmaddwd"));
    if is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl") {
        // `vpdpbusd` accumulates into its destination: each of the ten is its own chain.
        println!("vpdpbusd ymm:   {:.2} cycles each", ten!("vpdpbusd"));
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    println!("this example measures x86-64 vector units only");
}
