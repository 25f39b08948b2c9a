//! Finding a dataset's directory: `--data`, `$CANDLE_VAE_DATA/<name>`, `./data/<name>`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

use super::idx;

/// The environment variable naming the directory that holds one folder per dataset.
pub const DATA_ENV: &str = "CANDLE_VAE_DATA";

/// Where a dataset's files are and where to get them: what [`resolve_data_dir`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetFiles {
    /// The dataset's folder name under `$CANDLE_VAE_DATA` and `./data` (e.g. `mnist`).
    pub name: &'static str,
    /// IDX file stems that must be present (each found by [`idx::find`], so either
    /// spelling, plain or `.gz`).
    pub stems: &'static [&'static str],
    /// Where to download them (shown when they are missing).
    pub source: &'static str,
}

impl DatasetFiles {
    /// Whether `dir` holds every file.
    pub fn present_in(&self, dir: &Path) -> bool {
        self.stems.iter().all(|stem| idx::find(dir, stem).is_some())
    }

    /// The stems of the files `dir` lacks, in order.
    pub fn missing_in(&self, dir: &Path) -> Vec<String> {
        self.stems
            .iter()
            .filter(|stem| idx::find(dir, stem).is_none())
            .map(|stem| stem.to_string())
            .collect()
    }

    /// The error for `dir` holding only some (or none) of the files: it lists only the
    /// missing ones.
    pub(crate) fn not_found_in(&self, dir: &Path) -> Error {
        let missing = self.missing_in(dir);
        let hint = if missing.len() < self.stems.len() {
            format!(
                "{} holds the other file(s) but lacks {} (or .gz, or spelled with .idx); on a \
                 machine with internet, download them from {}",
                dir.display(),
                missing.join(", "),
                self.source
            )
        } else {
            format!(
                "On a machine with internet, download the files from {}",
                self.source
            )
        };
        Error::DataNotFound {
            dataset: self.name.to_string(),
            searched: vec![dir.to_path_buf()],
            files: missing,
            hint,
        }
    }
}

/// The directory that holds a dataset's files: `explicit` if given; otherwise the first of
/// `$CANDLE_VAE_DATA/<name>` and `./data/<name>` that holds every file.
///
/// # Errors
/// [`Error::DataNotFound`] listing the directories searched, the files expected and
/// where to download them, if no candidate holds every file.
pub fn resolve_data_dir(explicit: Option<&Path>, files: &DatasetFiles) -> Result<PathBuf> {
    let env = std::env::var_os(DATA_ENV);
    let candidates = candidate_dirs(explicit, env, files.name);
    if let Some(dir) = candidates.iter().find(|dir| files.present_in(dir)) {
        return Ok(dir.clone());
    }
    // A directory holding some of the files is almost certainly the one meant: name only
    // what it lacks.
    let partial = candidates
        .iter()
        .map(|dir| (dir, files.missing_in(dir)))
        .filter(|(_, missing)| missing.len() < files.stems.len())
        .min_by_key(|(_, missing)| missing.len());
    let (listed, partly) = match partial {
        Some((dir, missing)) => (
            missing,
            format!(
                "{} holds the other file(s) of {}. ",
                dir.display(),
                files.name
            ),
        ),
        None => (
            files.stems.iter().map(|s| s.to_string()).collect(),
            String::new(),
        ),
    };
    Err(Error::DataNotFound {
        dataset: files.name.to_string(),
        searched: candidates,
        files: listed,
        hint: format!(
            "{partly}Give the directory with --data DIR, or set {DATA_ENV}=DIR with a `{}` \
             folder inside; on a machine with internet, download the files from {}",
            files.name, files.source
        ),
    })
}

/// The directories [`resolve_data_dir`] searches, in order.
pub(crate) fn candidate_dirs(
    explicit: Option<&Path>,
    env: Option<OsString>,
    name: &str,
) -> Vec<PathBuf> {
    if let Some(dir) = explicit {
        return vec![dir.to_path_buf()];
    }
    let mut dirs = Vec::new();
    if let Some(root) = env.filter(|v| !v.is_empty()) {
        dirs.push(PathBuf::from(root).join(name));
    }
    dirs.push(Path::new("data").join(name));
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_follow_explicit_env_default() {
        let explicit = candidate_dirs(Some(Path::new("/x")), Some("/env".into()), "mnist");
        assert_eq!(explicit, vec![PathBuf::from("/x")]);
        let env = candidate_dirs(None, Some("/env".into()), "mnist");
        assert_eq!(
            env,
            vec![PathBuf::from("/env/mnist"), PathBuf::from("data/mnist")]
        );
        let default = candidate_dirs(None, None, "frey");
        assert_eq!(default, vec![PathBuf::from("data/frey")]);
    }

    #[test]
    fn spellings_cover_both_names_and_gzip() {
        assert_eq!(
            idx::spellings("train-images-idx3-ubyte"),
            vec![
                "train-images-idx3-ubyte",
                "train-images-idx3-ubyte.gz",
                "train-images.idx3-ubyte",
                "train-images.idx3-ubyte.gz"
            ]
        );
    }
}
