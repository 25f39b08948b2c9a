//! The machine's single-precision FMA ceiling, to state each workload of
//! docs/PERFORMANCE.md as a fraction of what the cores can do.
//!
//! A register-only loop: `CHAINS` independent accumulators (enough to hide the FMA
//! latency on current x86 cores: 4 cycles × 2 ports = 8 in flight, 12 leaves margin),
//! each updated by one fused multiply-add per iteration, on every thread at once. The
//! vector width is chosen at run time: AVX-512 (16 lanes) where the CPU has it, else
//! AVX2 + FMA (8 lanes); `--isa avx2` forces the narrower one on an AVX-512 machine.
//! FLOPs are counted as 2 per lane per FMA.
//!
//! ```sh
//! cargo run --release --example fma_ceiling -- --threads 1
//! cargo run --release --example fma_ceiling -- --threads 2
//! ```

use std::time::Instant;

use clap::{Parser, ValueEnum};

/// Independent accumulator chains per thread.
const CHAINS: usize = 12;

/// Measure the single-precision FMA ceiling of this CPU.
#[derive(Debug, Parser)]
struct Cli {
    /// Threads, each running the loop on its own core.
    #[arg(long, default_value_t = 1)]
    threads: usize,

    /// Iterations of the loop per thread (each is CHAINS vector FMAs).
    #[arg(long, default_value_t = 200_000_000)]
    iterations: u64,

    /// Instruction set: auto (AVX-512 where available), avx512, avx2.
    #[arg(long, value_enum, default_value_t = Isa::Auto)]
    isa: Isa,

    /// Repetitions; the best is reported (the ceiling, not an average under noise).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Isa {
    Auto,
    Avx512,
    Avx2,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    #[cfg(target_arch = "x86_64")]
    {
        let has512 = std::arch::is_x86_feature_detected!("avx512f");
        let has2 = std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma");
        let isa = match cli.isa {
            Isa::Auto if has512 => Isa::Avx512,
            Isa::Auto => Isa::Avx2,
            other => other,
        };
        match isa {
            Isa::Avx512 if !has512 => anyhow::bail!("this CPU has no AVX-512"),
            Isa::Avx2 if !has2 => anyhow::bail!("this CPU has no AVX2 + FMA"),
            _ => {}
        }
        let lanes = if isa == Isa::Avx512 { 16 } else { 8 };
        let mut best = 0f64;
        for _ in 0..cli.repeats.max(1) {
            let start = Instant::now();
            let sums: Vec<f32> = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..cli.threads.max(1))
                    .map(|t| {
                        scope.spawn(move || {
                            let seed = 1.0 + t as f32 * 1e-3;
                            if isa == Isa::Avx512 {
                                // SAFETY: AVX-512F was detected above.
                                unsafe { x86::fma_avx512(cli.iterations, seed) }
                            } else {
                                // SAFETY: AVX2 and FMA were detected above.
                                unsafe { x86::fma_avx2(cli.iterations, seed) }
                            }
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or(f32::NAN))
                    .collect()
            });
            let seconds = start.elapsed().as_secs_f64();
            let flops =
                2.0 * (lanes * CHAINS) as f64 * cli.iterations as f64 * cli.threads.max(1) as f64;
            best = best.max(flops / seconds / 1e9);
            // Printing the sums keeps the loop from being optimised away.
            eprintln!("{seconds:.3} s, checksum {:.3}", sums.iter().sum::<f32>());
        }
        println!(
            "{:?}, {} thread(s), {CHAINS} chains of {lanes} lanes: {best:.1} GFLOP/s (f32 FMA, best of {})",
            isa, cli.threads, cli.repeats
        );
        Ok(())
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = cli;
        anyhow::bail!("only x86-64 is measured here")
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::CHAINS;

    /// `iterations` rounds of CHAINS independent 16-lane FMAs; returns a checksum.
    ///
    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn fma_avx512(iterations: u64, seed: f32) -> f32 {
        let a = _mm512_set1_ps(0.999_999);
        let b = _mm512_set1_ps(1e-7);
        let mut acc = [_mm512_set1_ps(seed); CHAINS];
        for _ in 0..iterations {
            for v in acc.iter_mut() {
                *v = _mm512_fmadd_ps(*v, a, b);
            }
        }
        acc.iter().map(|&v| _mm512_reduce_add_ps(v)).sum()
    }

    /// `iterations` rounds of CHAINS independent 8-lane FMAs; returns a checksum.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fma_avx2(iterations: u64, seed: f32) -> f32 {
        let a = _mm256_set1_ps(0.999_999);
        let b = _mm256_set1_ps(1e-7);
        let mut acc = [_mm256_set1_ps(seed); CHAINS];
        for _ in 0..iterations {
            for v in acc.iter_mut() {
                *v = _mm256_fmadd_ps(*v, a, b);
            }
        }
        let mut out = [0f32; 8];
        let mut total = 0f32;
        for v in acc {
            // SAFETY: `out` holds the 8 lanes written.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
            total += out.iter().sum::<f32>();
        }
        total
    }
}
