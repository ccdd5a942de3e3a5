//! How many vector integer multiplies this core retires per cycle: the ceiling of every
//! quantized kernel once verification makes it compute-bound.
//!
//! ```text
//! cargo run --release -p specula-kernels --example mulport
//! ```
//!
//! Estimates the core clock from a chain of dependent integer adds (one per cycle on every x86
//! core), then times ten independent chains of `vpmaddubsw` (the AVX2 kernels' byte dot
//! product), of `vpmaddwd` (their scale step), of `vpmulld` (the VNNI kernels' scale step)
//! and, where the CPU has AVX-512 VNNI, of ymm `vpdpbusd`, and prints cycles per instruction.
//! Ten chains are enough to hide any of these instructions' latency, so the figure is the
//! throughput: 1.00 means one multiply unit (the AVX2 Zen 2 host of 2026-12-02), 0.50 two
//! (Zen 3). With it, `docs/benchmarks.md` turns a kernel's instruction count per super-block
//! into its floor. Last, it times the AVX2 kernels' step (an activation broadcast, a
//! `vpmaddubsw`, a `vpaddw`): where that step costs well over one multiply, the core's
//! instruction throughput and not its multipliers sets the floor.

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
    // The VNNI kernels' scale step: a chunk's 32-bit dot products times the rows' scales.
    println!("vpmulld ymm:    {:.2} cycles each", ten!("vpmulld"));
    if is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl") {
        // `vpdpbusd` accumulates into its destination: each of the ten is its own chain.
        println!("vpdpbusd ymm:   {:.2} cycles each", ten!("vpdpbusd"));
    }

    // The AVX2 kernels' unit of work: one activation row's four bytes broadcast from memory,
    // multiplied with a plane of weights (`vpmaddubsw`) and added to that row's 16-bit sum
    // (`vpaddw`); ten sums, temporaries rotating over five registers, as in the nine- and
    // five-row tiles. Where this is well above the multiply's own figure, the kernels are bound
    // by how many vector instructions the core issues, not by its multipliers.
    let quads = [1u8; 64];
    macro_rules! step {
        ($sum:literal, $tmp:literal, $off:literal, $bcast:literal) => {
            concat!(
                "vpbroadcastd ymm",
                $tmp,
                ", dword ptr [{q} + ",
                $off,
                "]\n",
                "vpmaddubsw ymm",
                $tmp,
                ", ymm15, ymm",
                $bcast,
                "\n",
                "vpaddw ymm",
                $sum,
                ", ymm",
                $sum,
                ", ymm",
                $tmp,
                "\n",
            )
        };
    }
    macro_rules! ten_steps {
        ($b0:literal, $b1:literal, $b2:literal, $b3:literal, $b4:literal) => {{
            let t = Instant::now();
            for _ in 0..ITERS {
                // SAFETY: AVX2 arithmetic (checked above) and reads of `quads` within its 64
                // bytes; the clobbered registers are declared.
                unsafe {
                    asm!(
                        step!(0, 10, 0, $b0),
                        step!(1, 11, 4, $b1),
                        step!(2, 12, 8, $b2),
                        step!(3, 13, 12, $b3),
                        step!(4, 14, 16, $b4),
                        step!(5, 10, 20, $b0),
                        step!(6, 11, 24, $b1),
                        step!(7, 12, 28, $b2),
                        step!(8, 13, 32, $b3),
                        step!(9, 14, 36, $b4),
                        q = in(reg) quads.as_ptr(),
                        out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
                        out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _,
                        out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
                        out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
                        options(nostack, readonly, preserves_flags),
                    )
                };
            }
            cycles(t.elapsed().as_secs_f64())
        }};
    }
    // With the broadcast's result as the multiply's operand, and (for comparison) with a
    // register that no broadcast writes (`ymm15`: the broadcasts are then dead work).
    let full = ten_steps!(10, 11, 12, 13, 14);
    let no_bcast = ten_steps!(15, 15, 15, 15, 15);
    println!("kernel step (broadcast + vpmaddubsw + vpaddw): {full:.2} cycles each");
    println!("  without the broadcast as operand:             {no_bcast:.2} cycles each");

    // The same step with the activation already spread over the lanes in memory: the multiply
    // takes its second operand straight from a load (no broadcast instruction at all).
    let wide = [1u8; 32 * 10];
    macro_rules! mstep {
        ($sum:literal, $tmp:literal, $off:literal) => {
            concat!(
                "vpmaddubsw ymm",
                $tmp,
                ", ymm15, ymmword ptr [{q} + ",
                $off,
                "]\n",
                "vpaddw ymm",
                $sum,
                ", ymm",
                $sum,
                ", ymm",
                $tmp,
                "\n",
            )
        };
    }
    let t = Instant::now();
    for _ in 0..ITERS {
        // SAFETY: AVX2 arithmetic (checked above) and reads of `wide` within its 320 bytes; the
        // clobbered registers are declared.
        unsafe {
            asm!(
                mstep!(0, 10, 0),
                mstep!(1, 11, 32),
                mstep!(2, 12, 64),
                mstep!(3, 13, 96),
                mstep!(4, 14, 128),
                mstep!(5, 10, 160),
                mstep!(6, 11, 192),
                mstep!(7, 12, 224),
                mstep!(8, 13, 256),
                mstep!(9, 14, 288),
                q = in(reg) wide.as_ptr(),
                out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
                out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _,
                out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
                out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
                options(nostack, readonly, preserves_flags),
            )
        };
    }
    let loaded = cycles(t.elapsed().as_secs_f64());
    println!("  with a pre-spread activation (load operand):  {loaded:.2} cycles each");
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    println!("this example measures x86-64 vector units only");
}
