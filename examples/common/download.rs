//! Fetching a dataset the examples need when it is nowhere on this machine, as
//! torchvision's `download=True` does: from public mirrors into a cache folder, each file's
//! md5 checked before it gets its final name.
//!
//! - **Where:** `$CANDLE_VAE_CACHE/<dataset>`, else `$XDG_CACHE_HOME/candle-vae/<dataset>`,
//!   else `$HOME/.cache/candle-vae/<dataset>` (`%LOCALAPPDATA%` on Windows when `HOME` is
//!   unset) — see [`cache_root_from`].
//! - **When:** only when `--data`, `$CANDLE_VAE_DATA/<dataset>` and `./data/<dataset>` all
//!   lack the files (the library's [`candle_vae::data::resolve_data_dir`]) and the cache does
//!   too; `--data DIR` never downloads (the folder is the user's), `--offline` never does.
//! - **How:** each file is written to `<name>.part` beside its final name; a transfer cut
//!   mid-file is resumed with an HTTP `Range` request (a server that ignores it sends the
//!   whole file again and the part file starts over), up to [`FetchConfig::attempts`] times
//!   per mirror; a part file left by an earlier run is resumed too. When the body is
//!   complete the part file is fsynced, its **uncompressed** bytes are md5-checked, and only
//!   then is it renamed to the final name (and the folder fsynced). A wrong md5 deletes the
//!   part file: nothing unverified ever carries a final name.
//! - **Errors:** [`DownloadError`], typed; [`DownloadError::Unreachable`] (no mirror could
//!   be connected to) makes [`locate_or_fetch`] give the "no data found" message of a
//!   machine without internet.
//!
//! The HTTP client is `ureq`, the md5 RustCrypto's `md-5`: dev-dependencies, so the
//! library itself has no network code.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use md5::{Digest, Md5};

/// The environment variable naming the download cache (a folder per dataset inside).
pub const CACHE_ENV: &str = "CANDLE_VAE_CACHE";

/// One file of a dataset on a mirror: its name (the same on every mirror and on disk) and
/// the md5 of its **uncompressed** bytes (mirrors may gzip differently; the content is what
/// is checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteFile {
    /// File name under the mirror's base URL and in the cache folder.
    pub name: &'static str,
    /// md5 of the gunzipped bytes, lower-case hex.
    pub md5: &'static str,
}

/// A dataset that can be downloaded: its folder name, its mirrors in the order tried, and
/// its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteDataset {
    /// Folder name in the cache (the same as under `$CANDLE_VAE_DATA`).
    pub name: &'static str,
    /// Base URLs, tried in order; a file's URL is the base joined with its name.
    pub mirrors: &'static [&'static str],
    /// The files, each checked by md5.
    pub files: &'static [RemoteFile],
}

/// MNIST from the mirrors torchvision uses (the AWS copy first, then LeCun's site). The md5
/// values are those of the uncompressed IDX files, as usually quoted for the original
/// release (and as in `../shared/datasets/README.md`).
pub const MNIST: RemoteDataset = RemoteDataset {
    name: "mnist",
    mirrors: &[
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ],
    files: &[
        RemoteFile {
            name: "train-images-idx3-ubyte.gz",
            md5: "6bbc9ace898e44ae57da46a324031adb",
        },
        RemoteFile {
            name: "train-labels-idx1-ubyte.gz",
            md5: "a25bea736e30d166cdddb491f175f624",
        },
        RemoteFile {
            name: "t10k-images-idx3-ubyte.gz",
            md5: "2646ac647ad5339dbf082846283269ea",
        },
        RemoteFile {
            name: "t10k-labels-idx1-ubyte.gz",
            md5: "27ae3e4e09519cfbb04c329615203637",
        },
    ],
};

/// Why a download failed. Every variant names the URL or the file.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// No connection could be made (name resolution, refused, timed out before any
    /// response): the machine is offline, or the mirror is down.
    #[error("cannot reach {url}: {reason}")]
    Unreachable {
        /// The URL asked for.
        url: String,
        /// What the client said.
        reason: String,
    },
    /// The server answered with a status other than 200, 206 or (to a range request) 416.
    #[error("{url}: HTTP status {status}; expected 200 (or 206 to a range request)")]
    Status {
        /// The URL asked for.
        url: String,
        /// The status received.
        status: u16,
    },
    /// The transfer kept breaking: every attempt on this mirror ended early.
    #[error(
        "{url}: the transfer broke {attempts} time(s), the last at byte {received} of \
         {expected}: {reason}"
    )]
    Interrupted {
        /// The URL asked for.
        url: String,
        /// Attempts made on this mirror.
        attempts: usize,
        /// Bytes in the part file after the last attempt.
        received: u64,
        /// The file's size, as the server announced it ("unknown" if it did not).
        expected: String,
        /// What broke the last attempt.
        reason: String,
    },
    /// The complete file's uncompressed bytes have another md5 than expected. The part file
    /// was deleted.
    #[error(
        "{url}: md5 of the uncompressed bytes is {found}, expected {expected}; the download \
         ({file}) was deleted"
    )]
    Checksum {
        /// The URL it came from.
        url: String,
        /// The part file that was checked (and deleted).
        file: PathBuf,
        /// The md5 expected.
        expected: String,
        /// The md5 found.
        found: String,
    },
    /// The complete file is not a gzip stream (or a damaged one). The part file was deleted.
    #[error("{url}: not a valid gzip file ({reason}); the download ({file}) was deleted")]
    Corrupt {
        /// The URL it came from.
        url: String,
        /// The part file that was read (and deleted).
        file: PathBuf,
        /// What the decoder said.
        reason: String,
    },
    /// A local file could not be created, written, synced or renamed.
    #[error("{path}: {source}")]
    Io {
        /// The local file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

impl DownloadError {
    fn io(path: &Path, source: io::Error) -> Self {
        DownloadError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// How hard to try.
#[derive(Debug, Clone, PartialEq)]
pub struct FetchConfig {
    /// Requests per file and mirror before giving up on that mirror (the first and each
    /// resumption after a broken transfer or a server error).
    pub attempts: usize,
    /// Wait before the second attempt, doubled before each later one.
    pub retry_wait: Duration,
    /// Limit on connecting to a mirror.
    pub connect_timeout: Duration,
    /// Limit on each read from the connection (a stalled transfer counts as broken).
    pub read_timeout: Duration,
    /// Whether to print what it is doing on stderr.
    pub verbose: bool,
    /// Whether to go through the proxy named by `ALL_PROXY`/`HTTPS_PROXY`/`HTTP_PROXY`
    /// (with `NO_PROXY`), as ureq does by default; off for a test's loopback server.
    pub env_proxy: bool,
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            attempts: 5,
            retry_wait: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(20),
            read_timeout: Duration::from_secs(60),
            verbose: true,
            env_proxy: true,
        }
    }
}

/// The cache root from the values of `$CANDLE_VAE_CACHE`, `$XDG_CACHE_HOME`, `$HOME` and
/// (Windows) `%LOCALAPPDATA%`, in that order of precedence; empty values count as unset.
/// `None` when all are unset.
pub fn cache_root_from(
    candle_vae_cache: Option<OsString>,
    xdg_cache_home: Option<OsString>,
    home: Option<OsString>,
    local_app_data: Option<OsString>,
) -> Option<PathBuf> {
    let set = |v: Option<OsString>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
    set(candle_vae_cache)
        .or_else(|| set(xdg_cache_home).map(|d| d.join("candle-vae")))
        .or_else(|| set(home).map(|d| d.join(".cache").join("candle-vae")))
        .or_else(|| set(local_app_data).map(|d| d.join("candle-vae")))
}

/// The cache root of this process's environment (see [`cache_root_from`]).
pub fn cache_root() -> Option<PathBuf> {
    cache_root_from(
        std::env::var_os(CACHE_ENV),
        std::env::var_os("XDG_CACHE_HOME"),
        std::env::var_os("HOME"),
        std::env::var_os("LOCALAPPDATA"),
    )
}

/// A file's URL on a mirror: the base and the name, one `/` between them.
pub fn file_url(base: &str, name: &str) -> String {
    format!("{}/{}", base.trim_end_matches('/'), name)
}

/// The md5 (lower-case hex) of the gunzipped bytes of `path`.
///
/// # Errors
/// The I/O or gzip error of reading it.
pub fn gunzipped_md5(path: &Path) -> io::Result<String> {
    let file = File::open(path)?;
    let mut gz = flate2::read::GzDecoder::new(BufReader::new(file));
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = gz.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The agent used for every request: timeouts and proxy from `config`, statuses handled
/// here, no transparent decompression (the `.gz` files are stored as served).
pub fn agent(config: &FetchConfig) -> ureq::Agent {
    let proxy = if config.env_proxy {
        ureq::Proxy::try_from_env()
    } else {
        None
    };
    ureq::Agent::config_builder()
        .proxy(proxy)
        .timeout_connect(Some(config.connect_timeout))
        .timeout_recv_response(Some(config.read_timeout))
        .timeout_per_read(Some(config.read_timeout))
        .http_status_as_error(false)
        .user_agent(concat!("candle-vae-examples/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent()
}

/// Downloads every file of `dataset` that `dir` lacks (a file already under its final name
/// is kept: it was checked when it was written), trying `mirrors` in order for each.
/// `mirrors` is a parameter (normally `dataset.mirrors`) so that tests can point it at a
/// local server.
///
/// # Errors
/// See [`fetch_file`]; the first file that fails stops it (those already verified stay).
pub fn fetch_dataset(
    dataset: &RemoteDataset,
    mirrors: &[String],
    dir: &Path,
    config: &FetchConfig,
) -> Result<(), DownloadError> {
    fs::create_dir_all(dir).map_err(|e| DownloadError::io(dir, e))?;
    let agent = agent(config);
    for file in dataset.files {
        if dir.join(file.name).is_file() {
            continue;
        }
        fetch_file(&agent, mirrors, file.name, file.md5, dir, config)?;
    }
    Ok(())
}

/// Downloads `name` into `dir/name` from the first of `mirrors` that gives a file whose
/// uncompressed md5 is `md5`, through `dir/name.part` (resumed if present).
///
/// # Errors
/// When every mirror fails: [`DownloadError::Unreachable`] if none could be connected to,
/// else the error of the first mirror that answered ([`DownloadError::Checksum`],
/// [`DownloadError::Corrupt`], [`DownloadError::Status`] or
/// [`DownloadError::Interrupted`]); [`DownloadError::Io`] at once for a local file error.
pub fn fetch_file(
    agent: &ureq::Agent,
    mirrors: &[String],
    name: &str,
    md5: &str,
    dir: &Path,
    config: &FetchConfig,
) -> Result<PathBuf, DownloadError> {
    let target = dir.join(name);
    let part = dir.join(format!("{name}.part"));
    let mut first_answered: Option<DownloadError> = None;
    let mut last_unreachable: Option<DownloadError> = None;
    for base in mirrors {
        let url = file_url(base, name);
        match fetch_from(agent, &url, md5, &part, config) {
            Ok(()) => {
                fs::rename(&part, &target).map_err(|e| DownloadError::io(&target, e))?;
                // Make the rename itself durable (where a folder can be opened: not on
                // Windows, whose renames are not undone this way anyway).
                if let Ok(folder) = File::open(dir) {
                    let _ = folder.sync_all();
                }
                if config.verbose {
                    eprintln!(
                        "  saved {} (md5 of the uncompressed bytes {md5}, as expected)",
                        target.display()
                    );
                }
                return Ok(target);
            }
            Err(e @ DownloadError::Io { .. }) => return Err(e),
            Err(e) => {
                if config.verbose {
                    eprintln!("  {e}");
                }
                match e {
                    DownloadError::Unreachable { .. } => last_unreachable = Some(e),
                    e => {
                        first_answered.get_or_insert(e);
                    }
                }
            }
        }
    }
    Err(first_answered
        .or(last_unreachable)
        .unwrap_or_else(|| DownloadError::Unreachable {
            url: name.to_string(),
            reason: "no mirror given".to_string(),
        }))
}

/// What one request achieved.
enum Transfer {
    /// The body arrived whole: the part file holds the complete file.
    Complete,
    /// The server answered 416 to a range request: the part file may already be complete.
    RangeNotSatisfiable,
    /// The transfer broke (or the server failed with 5xx): worth another attempt.
    Broken(String),
}

/// One mirror: up to `config.attempts` requests, resuming the part file, then the check.
fn fetch_from(
    agent: &ureq::Agent,
    url: &str,
    md5: &str,
    part: &Path,
    config: &FetchConfig,
) -> Result<(), DownloadError> {
    let mut answered = false;
    let mut wait = config.retry_wait;
    let mut expected_len: Option<u64> = None;
    let mut last_reason = String::new();
    let mut fresh_restarts = 0;
    let mut attempt = 0;
    while attempt < config.attempts.max(1) {
        attempt += 1;
        if attempt > 1 {
            std::thread::sleep(wait);
            wait = wait.saturating_mul(2);
        }
        let have = part_len(part)?;
        let transfer = match request(agent, url, part, have, &mut expected_len, config) {
            Ok(t) => t,
            Err(RequestError::Connect(reason)) if !answered => {
                return Err(DownloadError::Unreachable {
                    url: url.to_string(),
                    reason,
                });
            }
            Err(RequestError::Connect(reason)) => Transfer::Broken(reason),
            Err(RequestError::Fatal(e)) => return Err(e),
        };
        answered = true;
        let resumed = have > 0;
        match transfer {
            Transfer::Broken(reason) => {
                let received = part_len(part)?;
                if config.verbose {
                    eprintln!(
                        "  {url}: transfer broke at byte {received} of {} ({reason}); {}",
                        describe_len(expected_len),
                        if attempt < config.attempts {
                            "resuming"
                        } else {
                            "giving up on this mirror"
                        }
                    );
                }
                last_reason = reason;
                continue;
            }
            Transfer::Complete | Transfer::RangeNotSatisfiable => {}
        }
        sync(part)?;
        match verify(url, md5, part) {
            Ok(()) => return Ok(()),
            // A part file resumed from an earlier run (possibly of another mirror or
            // version) or answered 416: start over once before calling the file bad.
            Err(e @ (DownloadError::Checksum { .. } | DownloadError::Corrupt { .. }))
                if resumed && fresh_restarts == 0 =>
            {
                fresh_restarts += 1;
                if config.verbose {
                    eprintln!("  {e}; downloading it again from the start");
                }
                attempt = attempt.saturating_sub(1);
                continue;
            }
            Err(e) => return Err(e),
        }
    }
    Err(DownloadError::Interrupted {
        url: url.to_string(),
        attempts: config.attempts.max(1),
        received: part_len(part)?,
        expected: describe_len(expected_len),
        reason: last_reason,
    })
}

/// How a request failed before it could be read.
enum RequestError {
    /// No response: could not resolve, connect, or send.
    Connect(String),
    /// Give up on this mirror at once.
    Fatal(DownloadError),
}

/// One GET, from byte `have` of the part file on (a `Range` request when `have > 0`),
/// appended to the part file.
fn request(
    agent: &ureq::Agent,
    url: &str,
    part: &Path,
    have: u64,
    expected_len: &mut Option<u64>,
    config: &FetchConfig,
) -> Result<Transfer, RequestError> {
    let mut req = agent.get(url);
    if have > 0 {
        req = req.header("Range", format!("bytes={have}-"));
    }
    let response = match req.call() {
        Ok(r) => r,
        Err(e) => return Err(RequestError::Connect(e.to_string())),
    };
    let status = response.status().as_u16();
    let fatal = |e: DownloadError| RequestError::Fatal(e);
    let io_err = |e: io::Error| RequestError::Fatal(DownloadError::io(part, e));
    let (start, total) = match status {
        200 => (0, response.body().content_length()),
        206 => {
            let range = response
                .headers()
                .get("content-range")
                .and_then(|v| v.to_str().ok())
                .and_then(parse_content_range);
            match range {
                Some((start, total)) if start == have => (start, total),
                // A range we did not ask for: drop the part file and start over.
                _ => {
                    discard(part).map_err(io_err)?;
                    return Ok(Transfer::Broken(format!(
                        "answered 206 with Content-Range {:?} to a request from byte {have}",
                        response.headers().get("content-range")
                    )));
                }
            }
        }
        416 if have > 0 => return Ok(Transfer::RangeNotSatisfiable),
        500..=599 => return Ok(Transfer::Broken(format!("HTTP status {status}"))),
        _ => {
            return Err(fatal(DownloadError::Status {
                url: url.to_string(),
                status,
            }));
        }
    };
    if total.is_some() {
        *expected_len = total;
    }
    if config.verbose {
        if start > 0 {
            eprintln!(
                "  {url}: resuming at byte {start} of {}",
                describe_len(*expected_len)
            );
        } else {
            eprintln!("  {url} ({})", describe_len(*expected_len));
        }
    }
    let mut out = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(part)
        .map_err(io_err)?;
    if start == 0 {
        out.set_len(0).map_err(io_err)?;
    }
    out.seek(SeekFrom::Start(start)).map_err(io_err)?;
    let mut body = response.into_body().into_reader();
    let mut buf = vec![0u8; 1 << 16];
    let mut written = start;
    // Quarters of a large file reported so far (a line at 25, 50 and 75 %).
    let mut quarters = written.saturating_mul(4) / expected_len.unwrap_or(u64::MAX).max(1);
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                out.flush().map_err(io_err)?;
                return Ok(Transfer::Broken(e.to_string()));
            }
        };
        out.write_all(&buf[..n]).map_err(io_err)?;
        written += n as u64;
        if let Some(total) = expected_len.filter(|&t| config.verbose && t >= 1 << 20) {
            let quarter = written.saturating_mul(4) / total;
            if quarter > quarters && quarter < 4 {
                quarters = quarter;
                eprintln!("    {}% of {total} bytes", 25 * quarter);
            }
        }
    }
    out.flush().map_err(io_err)?;
    match *expected_len {
        Some(total) if written < total => Ok(Transfer::Broken(format!(
            "the connection closed after {written} of {total} bytes"
        ))),
        Some(total) if written > total => {
            discard(part).map_err(io_err)?;
            Ok(Transfer::Broken(format!(
                "received {written} bytes, more than the {total} announced"
            )))
        }
        _ => Ok(Transfer::Complete),
    }
}

/// `bytes START-END/TOTAL` → (START, TOTAL if known).
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    let start = start.trim().parse().ok()?;
    let total = total.trim().parse().ok();
    Some((start, total))
}

/// The md5 check of a complete part file; a bad one is deleted.
fn verify(url: &str, md5: &str, part: &Path) -> Result<(), DownloadError> {
    match gunzipped_md5(part) {
        Ok(found) if found == md5 => Ok(()),
        Ok(found) => {
            remove(part)?;
            Err(DownloadError::Checksum {
                url: url.to_string(),
                file: part.to_path_buf(),
                expected: md5.to_string(),
                found,
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(DownloadError::io(part, e)),
        Err(e) => {
            remove(part)?;
            Err(DownloadError::Corrupt {
                url: url.to_string(),
                file: part.to_path_buf(),
                reason: e.to_string(),
            })
        }
    }
}

fn part_len(part: &Path) -> Result<u64, DownloadError> {
    match fs::metadata(part) {
        Ok(m) => Ok(m.len()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(DownloadError::io(part, e)),
    }
}

/// Deletes the part file if there is one.
fn discard(part: &Path) -> io::Result<()> {
    match fs::remove_file(part) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn remove(part: &Path) -> Result<(), DownloadError> {
    discard(part).map_err(|e| DownloadError::io(part, e))
}

fn sync(part: &Path) -> Result<(), DownloadError> {
    File::options()
        .append(true)
        .open(part)
        .and_then(|f| f.sync_all())
        .map_err(|e| DownloadError::io(part, e))
}

fn describe_len(len: Option<u64>) -> String {
    match len {
        Some(n) => format!("{n} bytes"),
        None => "unknown size".to_string(),
    }
}

/// The `--offline` flag of the examples that can download their data.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FetchArgs {
    /// Never download: when the data is in none of --data, $CANDLE_VAE_DATA/<dataset>,
    /// ./data/<dataset> and the download cache ($CANDLE_VAE_CACHE, else
    /// $XDG_CACHE_HOME/candle-vae, else ~/.cache/candle-vae), say where to put it.
    #[arg(long)]
    pub offline: bool,
}

/// The data directory of an example: the library's [`candle_vae::data::resolve_data_dir`]
/// (`--data`, `$CANDLE_VAE_DATA/<name>`, `./data/<name>`), else the download cache if it
/// holds every file, else — unless `--data` was given or `offline` — the cache after
/// downloading the files from `remote`'s mirrors.
///
/// # Errors
/// The library's "no data found" error when offline, when `--data` names a folder that
/// lacks the files, when there is no cache folder, or when no mirror can be reached; a
/// [`DownloadError`] naming the file and URL when a download fails otherwise.
pub fn locate_or_fetch(
    explicit: Option<&Path>,
    files: &candle_vae::data::DatasetFiles,
    remote: &RemoteDataset,
    args: &FetchArgs,
) -> anyhow::Result<PathBuf> {
    let not_found = match candle_vae::data::resolve_data_dir(explicit, files) {
        Ok(dir) => return Ok(dir),
        Err(e) => e,
    };
    if explicit.is_some() {
        return Err(not_found.into());
    }
    let Some(root) = cache_root() else {
        eprintln!(
            "{}: no download cache folder ({CACHE_ENV}, XDG_CACHE_HOME and HOME are unset)",
            files.name
        );
        return Err(not_found.into());
    };
    let dir = root.join(remote.name);
    if files.present_in(&dir) {
        return Ok(dir);
    }
    if args.offline {
        eprintln!(
            "{}: --offline, so not downloading into the cache {}",
            files.name,
            dir.display()
        );
        return Err(not_found.into());
    }
    eprintln!(
        "{}: no data found; downloading into {} (set {CACHE_ENV} to choose the folder, \
         --offline to skip)",
        files.name,
        dir.display()
    );
    let mirrors: Vec<String> = remote.mirrors.iter().map(|m| m.to_string()).collect();
    match fetch_dataset(remote, &mirrors, &dir, &FetchConfig::default()) {
        Ok(()) => Ok(dir),
        Err(DownloadError::Unreachable { .. }) => {
            eprintln!("{}: no mirror could be reached", files.name);
            Err(not_found.into())
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!(
            "downloading {} into {}",
            files.name,
            dir.display()
        ))),
    }
}
