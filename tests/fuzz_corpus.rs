//! The fuzz targets' bodies (`fuzz/src/lib.rs`, run by `cargo +nightly fuzz`) as ordinary
//! tests: over the committed seeds in `fuzz/seeds/<target>/`, checked to be the ones the
//! generators make, and over deterministic mutations of them (truncations, byte flips),
//! so that the targets build on stable and their bodies cannot rot.
//!
//! `CANDLE_VAE_WRITE_SEEDS=1 cargo test --release --test fuzz_corpus` rewrites the seeds.

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod bodies;

use std::path::{Path, PathBuf};

use anyhow::{Result, ensure};
use candle_core::Device;
use candle_vae::Checkpoint;
use rand::{Rng, SeedableRng};

type Body = fn(&[u8]) -> bool;

fn seed_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("seeds")
        .join(target)
}

/// The committed seeds of `target`, sorted by name.
fn committed(target: &str) -> Result<Vec<(String, Vec<u8>)>> {
    let mut seeds = std::fs::read_dir(seed_dir(target))?
        .map(|entry| {
            let entry = entry?;
            Ok((
                entry.file_name().to_string_lossy().into_owned(),
                std::fs::read(entry.path())?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    seeds.sort();
    Ok(seeds)
}

/// Writes the generated seeds when `CANDLE_VAE_WRITE_SEEDS` is set.
fn maybe_write(target: &str, seeds: &[(&str, Vec<u8>)]) -> Result<()> {
    if std::env::var_os("CANDLE_VAE_WRITE_SEEDS").is_some() {
        let dir = seed_dir(target);
        std::fs::create_dir_all(&dir)?;
        for (name, bytes) in seeds {
            std::fs::write(dir.join(name), bytes)?;
        }
    }
    Ok(())
}

#[test]
fn committed_seeds_are_the_generated_ones() -> Result<()> {
    let idx = bodies::idx_seeds();
    maybe_write("idx", &idx)?;
    let on_disk = committed("idx")?;
    let mut generated: Vec<(String, Vec<u8>)> =
        idx.into_iter().map(|(n, b)| (n.to_string(), b)).collect();
    generated.sort();
    ensure!(
        on_disk == generated,
        "fuzz/seeds/idx differs from idx_seeds()"
    );

    // safetensors writes its metadata map in hash order: compare contents, not bytes.
    let checkpoints = bodies::checkpoint_seeds();
    maybe_write("checkpoint", &checkpoints)?;
    let on_disk = committed("checkpoint")?;
    ensure!(
        on_disk.len() == checkpoints.len(),
        "{} committed checkpoint seeds, {} generated",
        on_disk.len(),
        checkpoints.len()
    );
    for (name, bytes) in &checkpoints {
        let (_, disk) = on_disk
            .iter()
            .find(|(n, _)| n == name)
            .ok_or_else(|| anyhow::anyhow!("seed {name} is not committed"))?;
        let (a, b) = (
            Checkpoint::from_bytes(disk, name, &Device::Cpu)?,
            Checkpoint::from_bytes(bytes, name, &Device::Cpu)?,
        );
        ensure!(
            a.metadata_entries() == b.metadata_entries(),
            "seed {name}: metadata differs"
        );
        ensure!(
            a.tensors().keys().eq(b.tensors().keys()),
            "seed {name}: tensor names differ"
        );
        for (key, ta) in a.tensors() {
            let tb = &b.tensors()[key];
            let (va, vb) = (
                ta.flatten_all()?.to_vec1::<f32>()?,
                tb.flatten_all()?.to_vec1::<f32>()?,
            );
            ensure!(va == vb, "seed {name}: tensor {key} differs");
        }
    }
    Ok(())
}

#[test]
fn every_seed_is_accepted_all_the_way() -> Result<()> {
    for (target, body) in [
        ("idx", bodies::idx as Body),
        ("checkpoint", bodies::checkpoint),
    ] {
        let seeds = committed(target)?;
        ensure!(!seeds.is_empty(), "no seeds for {target}");
        for (name, bytes) in seeds {
            ensure!(body(&bytes), "{target} seed {name} was rejected");
        }
    }
    Ok(())
}

/// Truncations at 17 lengths, 64 single-byte flips and 16 random overwrites of a header
/// region, from a fixed seed.
fn mutations(bytes: &[u8], seed: u64) -> Vec<Vec<u8>> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::new();
    for i in 0..=16 {
        out.push(bytes[..bytes.len() * i / 17].to_vec());
    }
    for _ in 0..64 {
        let mut m = bytes.to_vec();
        let at = rng.random_range(0..m.len());
        m[at] ^= 1 << rng.random_range(0..8);
        out.push(m);
    }
    for _ in 0..16 {
        let mut m = bytes.to_vec();
        let at = rng.random_range(0..m.len().min(64));
        m[at] = rng.random();
        out.push(m);
    }
    out
}

#[test]
fn mutated_seeds_never_panic_and_some_are_refused() -> Result<()> {
    for (target, body) in [
        ("idx", bodies::idx as Body),
        ("checkpoint", bodies::checkpoint),
    ] {
        let (mut accepted, mut refused) = (0, 0);
        for (i, (_, bytes)) in committed(target)?.into_iter().enumerate() {
            for mutant in mutations(&bytes, i as u64) {
                if body(&mutant) {
                    accepted += 1;
                } else {
                    refused += 1;
                }
            }
        }
        // The mutations reach both outcomes: the bodies test something either way.
        ensure!(
            accepted > 0 && refused > 0,
            "{target}: {accepted} mutants accepted, {refused} refused"
        );
    }
    Ok(())
}
