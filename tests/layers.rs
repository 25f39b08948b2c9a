//! The layering of `src/` that docs/ARCHITECTURE.md draws: every `crate::…` path in the
//! library's code (tests and comments aside) points to a lower layer, so the folders have
//! no dependency cycle. A new edge upwards fails here with the file that makes it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Each layer's rank: a module may use only modules of a lower rank.
const RANKS: &[(&str, u32)] = &[
    ("error", 0),
    ("ops", 1),
    ("noise", 1),
    ("shape", 1),
    ("device", 1),
    ("fused", 2),
    ("data", 2),
    ("viz", 2),
    ("probability", 3),
    ("networks", 4),
    ("vae", 4),
    // Uses networks and vae (rank 4), so one above them; beside objective, so it may
    // not use objective (or train).
    ("discrete", 5),
    ("objective", 5),
    ("train", 6),
];

/// The old module paths, re-exported at the crate root, and the layer each lives in.
const REEXPORTS: &[(&str, &str)] = &[
    ("component", "probability"),
    ("distribution", "probability"),
    ("flow", "probability"),
    ("likelihood", "probability"),
    ("prior", "probability"),
    ("reparameterize", "probability"),
    ("conv", "networks"),
    ("layers", "networks"),
    ("mlp", "networks"),
    ("estimate", "objective"),
    ("loss", "objective"),
    ("checkpoint", "train"),
    ("finite", "train"),
    ("optim", "train"),
    ("params", "train"),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            rust_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// The `crate::x` names (modules, or items re-exported at the root) used by the code of `source` (before its unit tests,
/// comments removed).
fn crate_paths(source: &str) -> Vec<String> {
    let code = source.split("\n#[cfg(test)]").next().unwrap_or("");
    let mut names = Vec::new();
    for line in code.lines() {
        let line = line.split("//").next().unwrap_or("");
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                names.push(name);
            }
        }
    }
    names
}

#[test]
fn every_module_uses_only_lower_layers() -> Result<()> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let rank: BTreeMap<&str, u32> = RANKS.iter().copied().collect();
    let layer_of = |name: &str| -> String {
        REEXPORTS
            .iter()
            .find(|(module, _)| *module == name)
            .map_or(name, |(_, layer)| layer)
            .to_string()
    };
    let mut files = Vec::new();
    rust_files(&src, &mut files)?;
    let mut upward = Vec::new();
    let mut edges = 0;
    for file in &files {
        let relative = file.strip_prefix(&src)?;
        if relative == Path::new("lib.rs") {
            continue;
        }
        let first = relative
            .components()
            .next()
            .context("empty path")?
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        let from = rank
            .get(first.as_str())
            .with_context(|| format!("{} is in no layer of RANKS", relative.display()))?;
        for used in crate_paths(&std::fs::read_to_string(file)?) {
            if used.starts_with(|c: char| c.is_ascii_uppercase()) {
                // A root re-export hides its layer: only the base's error types may be
                // named that way.
                if used != "Error" && used != "Result" {
                    upward.push(format!(
                        "{} uses crate::{used}: name it by its module",
                        relative.display()
                    ));
                }
                continue;
            }
            let layer = layer_of(&used);
            if layer == first {
                continue;
            }
            let Some(to) = rank.get(layer.as_str()) else {
                continue; // a doc-only module (`crate::guide`)
            };
            edges += 1;
            if to >= from {
                upward.push(format!(
                    "{} ({first}, rank {from}) uses crate::{used} ({layer}, rank {to})",
                    relative.display()
                ));
            }
        }
    }
    anyhow::ensure!(
        edges > 50,
        "only {edges} cross-layer uses found: is the parser broken?"
    );
    anyhow::ensure!(
        upward.is_empty(),
        "uses of a layer that is not lower:\n{}",
        upward.join("\n")
    );
    Ok(())
}
