//! The examples' dataset download (examples/common/download.rs) against a loopback HTTP
//! server started here: no internet needed. The server is the test's; the client is
//! `ureq`, as in the examples. The MNIST tests serve the real files from
//! `$CANDLE_VAE_DATA/mnist` (and say so and skip when they are absent); the rest serve a
//! synthetic gzipped file, so they always run.

#[allow(dead_code)] // the examples' entry point (locate_or_fetch) is not used here
#[path = "../examples/common/download.rs"]
mod download;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use download::{DownloadError, FetchConfig, MNIST, RemoteDataset, RemoteFile};
use flate2::Compression;
use flate2::write::GzEncoder;
use md5::{Digest, Md5};

/// How the server answers for one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    /// 200 with the whole body; 206 from the asked byte for `Range: bytes=N-`.
    Normal,
    /// As `Normal`, but the first response announces the whole length and closes the
    /// connection after this many body bytes.
    CutFirstAt(usize),
    /// Every response closes the connection after at most this many body bytes.
    CutEvery(usize),
    /// Ignores `Range`: always 200 with the whole body; the first response is cut after
    /// this many bytes.
    NoRangeCutFirstAt(usize),
}

#[derive(Debug, Clone)]
struct Served {
    body: Vec<u8>,
    behaviour: Behaviour,
}

/// One request the server saw: the path and the first byte of its `Range`, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    path: String,
    range_from: Option<u64>,
}

/// A one-thread HTTP/1.1 server on 127.0.0.1 (an ephemeral port), `Connection: close`.
struct Server {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    fn start(files: HashMap<String, Served>) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        // The thread ends with the test process (it blocks in accept).
        std::thread::spawn(move || {
            let mut served_once: HashMap<String, usize> = HashMap::new();
            for stream in listener.incoming().flatten() {
                let _ = serve(stream, &files, &mut served_once, &log);
            }
        });
        Ok(Self { addr, seen })
    }

    /// The base URL of the mirror at `/mnist/`.
    fn base(&self) -> String {
        format!("http://{}/mnist/", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

fn serve(
    stream: TcpStream,
    files: &HashMap<String, Served>,
    served_once: &mut HashMap<String, usize>,
    log: &Mutex<Vec<Seen>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_string();
    // Read every header (so that closing the socket sends FIN, not RST).
    let mut range_from = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("range") {
                range_from = value
                    .trim()
                    .strip_prefix("bytes=")
                    .and_then(|r| r.strip_suffix('-'))
                    .and_then(|n| n.parse::<u64>().ok());
            }
        }
    }
    if let Ok(mut l) = log.lock() {
        l.push(Seen {
            path: path.clone(),
            range_from,
        });
    }
    let mut out = stream;
    let Some(file) = files.get(&path) else {
        out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
        return Ok(());
    };
    let count = served_once.entry(path).or_insert(0);
    *count += 1;
    let first = *count == 1;
    let len = file.body.len();
    let honour_range = !matches!(file.behaviour, Behaviour::NoRangeCutFirstAt(_));
    let start = match range_from {
        Some(n) if honour_range => n as usize,
        _ => 0,
    };
    if start >= len && start > 0 {
        write!(
            out,
            "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        return Ok(());
    }
    if start > 0 {
        write!(
            out,
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{}/{len}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            len - 1,
            len - start
        )?;
    } else {
        write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: application/x-gzip\r\nContent-Length: {len}\r\n\
             Accept-Ranges: bytes\r\nConnection: close\r\n\r\n"
        )?;
    }
    let send = match file.behaviour {
        Behaviour::Normal => len - start,
        Behaviour::CutFirstAt(k) | Behaviour::NoRangeCutFirstAt(k) if first => k.min(len),
        Behaviour::CutFirstAt(_) | Behaviour::NoRangeCutFirstAt(_) => len - start,
        Behaviour::CutEvery(k) => k.min(len - start),
    };
    out.write_all(&file.body[start..start + send])?;
    out.flush()?;
    out.shutdown(std::net::Shutdown::Both)
}

fn config() -> FetchConfig {
    FetchConfig {
        attempts: 3,
        retry_wait: Duration::from_millis(10),
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(10),
        verbose: true,
        // The server is on 127.0.0.1: never through a proxy the environment may name.
        env_proxy: false,
    }
}

fn md5_hex(bytes: &[u8]) -> String {
    download::hex(&Md5::digest(bytes))
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    gz.write_all(bytes)?;
    Ok(gz.finish()?)
}

fn gunzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes).read_to_end(&mut out)?;
    Ok(out)
}

/// A synthetic file: 300,000 pseudo-random bytes (so gzip cannot shrink it much), gzipped,
/// and the md5 of the plain bytes.
fn synthetic() -> Result<(Vec<u8>, String)> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let plain: Vec<u8> = (0..300_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    Ok((gzip(&plain)?, md5_hex(&plain)))
}

/// The real MNIST folder, or `None` (with a message) when `$CANDLE_VAE_DATA/mnist` lacks
/// the gzipped files.
fn mnist_dir(test: &str) -> Option<PathBuf> {
    let Some(root) = std::env::var_os("CANDLE_VAE_DATA") else {
        eprintln!("skipping {test}: CANDLE_VAE_DATA is unset (it serves $CANDLE_VAE_DATA/mnist)");
        return None;
    };
    let dir = PathBuf::from(root).join("mnist");
    if let Some(f) = MNIST.files.iter().find(|f| !dir.join(f.name).is_file()) {
        eprintln!("skipping {test}: {} is absent", dir.join(f.name).display());
        return None;
    }
    Some(dir)
}

fn mnist_served(dir: &Path) -> Result<HashMap<String, Served>> {
    MNIST
        .files
        .iter()
        .map(|f| {
            let body = std::fs::read(dir.join(f.name))
                .with_context(|| format!("reading {}", dir.join(f.name).display()))?;
            Ok((
                format!("/mnist/{}", f.name),
                Served {
                    body,
                    behaviour: Behaviour::Normal,
                },
            ))
        })
        .collect()
}

/// The md5 of the uncompressed MNIST files, pasted from `../shared/datasets/README.md`.
const README_MD5: [(&str, &str); 4] = [
    (
        "train-images-idx3-ubyte.gz",
        "6bbc9ace898e44ae57da46a324031adb",
    ),
    (
        "train-labels-idx1-ubyte.gz",
        "a25bea736e30d166cdddb491f175f624",
    ),
    (
        "t10k-images-idx3-ubyte.gz",
        "2646ac647ad5339dbf082846283269ea",
    ),
    (
        "t10k-labels-idx1-ubyte.gz",
        "27ae3e4e09519cfbb04c329615203637",
    ),
];

fn files_in(dir: &Path) -> Result<Vec<String>> {
    let mut names = std::fs::read_dir(dir)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<Vec<_>>>()?;
    names.sort();
    Ok(names)
}

/// A port on 127.0.0.1 with nothing listening (bound, then released).
fn closed_port() -> Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

#[test]
fn mnist_comes_whole_from_a_local_mirror_with_the_readme_md5_and_loads() -> Result<()> {
    let Some(src) = mnist_dir("mnist_comes_whole_from_a_local_mirror") else {
        return Ok(());
    };
    let server = Server::start(mnist_served(&src)?)?;
    let cache = tempfile::tempdir()?;
    let dir = cache.path().join("mnist");
    download::fetch_dataset(&MNIST, &[server.base()], &dir, &config())?;

    let mut expected_names: Vec<String> = MNIST.files.iter().map(|f| f.name.to_string()).collect();
    expected_names.sort();
    assert_eq!(files_in(&dir)?, expected_names, "no .part file is left");
    for (name, md5) in README_MD5 {
        assert_eq!(download::gunzipped_md5(&dir.join(name))?, md5, "{name}");
        assert_eq!(
            std::fs::read(dir.join(name))?,
            std::fs::read(src.join(name))?
        );
    }
    let seen = server.seen();
    assert_eq!(seen.len(), 4);
    assert!(seen.iter().all(|s| s.range_from.is_none()), "{seen:?}");

    let mnist = candle_vae::data::Mnist::load(&dir)?;
    assert_eq!((mnist.train.len(), mnist.test.len()), (60_000, 10_000));

    // A second call finds every file and asks for nothing.
    download::fetch_dataset(&MNIST, &[server.base()], &dir, &config())?;
    assert_eq!(server.seen().len(), 4);
    Ok(())
}

#[test]
fn a_corrupted_mnist_file_is_a_checksum_error_and_nothing_is_kept_under_its_name() -> Result<()> {
    let Some(src) = mnist_dir("a_corrupted_mnist_file_is_a_checksum_error") else {
        return Ok(());
    };
    let mut files = mnist_served(&src)?;
    // The training labels with the first label (5) changed to 6, gzipped again: a valid
    // gzip file whose content is wrong.
    let name = "train-labels-idx1-ubyte.gz";
    let mut labels = gunzip(&std::fs::read(src.join(name))?)?;
    ensure!(
        labels[8] == 5,
        "the first MNIST training label is 5, found {}",
        labels[8]
    );
    labels[8] = 6;
    let corrupted_md5 = md5_hex(&labels);
    files.insert(
        format!("/mnist/{name}"),
        Served {
            body: gzip(&labels)?,
            behaviour: Behaviour::Normal,
        },
    );
    let server = Server::start(files)?;
    let cache = tempfile::tempdir()?;
    let dir = cache.path().join("mnist");
    match download::fetch_dataset(&MNIST, &[server.base()], &dir, &config()) {
        Err(DownloadError::Checksum {
            url,
            file,
            expected,
            found,
        }) => {
            assert_eq!(url, format!("{}{name}", server.base()));
            assert_eq!(file, dir.join(format!("{name}.part")));
            assert_eq!(expected, "a25bea736e30d166cdddb491f175f624");
            assert_eq!(found, corrupted_md5);
        }
        other => bail!("expected a checksum error for {name}, got {other:?}"),
    }
    // The file before it (train-images) was verified and kept; the bad one is gone under
    // both names; the two after it were not tried.
    assert_eq!(
        files_in(&dir)?,
        vec!["train-images-idx3-ubyte.gz".to_string()]
    );
    assert_eq!(server.seen().len(), 2);
    Ok(())
}

#[test]
fn an_mnist_transfer_cut_mid_file_is_resumed_from_the_byte_it_reached() -> Result<()> {
    let Some(src) = mnist_dir("an_mnist_transfer_cut_mid_file_is_resumed") else {
        return Ok(());
    };
    let mut files = mnist_served(&src)?;
    let name = "t10k-images-idx3-ubyte.gz";
    let cut = 700_001;
    if let Some(f) = files.get_mut(&format!("/mnist/{name}")) {
        f.behaviour = Behaviour::CutFirstAt(cut);
    }
    let server = Server::start(files)?;
    let cache = tempfile::tempdir()?;
    let dir = cache.path().join("mnist");
    download::fetch_dataset(&MNIST, &[server.base()], &dir, &config())?;

    let path = format!("/mnist/{name}");
    let ranges: Vec<Option<u64>> = server
        .seen()
        .into_iter()
        .filter(|s| s.path == path)
        .map(|s| s.range_from)
        .collect();
    assert_eq!(ranges, vec![None, Some(cut as u64)]);
    assert_eq!(
        download::gunzipped_md5(&dir.join(name))?,
        "2646ac647ad5339dbf082846283269ea"
    );
    assert_eq!(
        std::fs::read(dir.join(name))?,
        std::fs::read(src.join(name))?
    );
    assert!(!dir.join(format!("{name}.part")).exists());
    assert_eq!(server.seen().len(), 5, "four files, one of them twice");
    Ok(())
}

/// A one-file dataset on the synthetic data.
const SYNTHETIC: &str = "synthetic.gz";

fn synthetic_server(body: Vec<u8>, behaviour: Behaviour) -> Result<Server> {
    Server::start(HashMap::from([(
        format!("/mnist/{SYNTHETIC}"),
        Served { body, behaviour },
    )]))
}

fn fetch_synthetic(mirrors: &[String], md5: &str, dir: &Path) -> Result<PathBuf, DownloadError> {
    let config = config();
    download::fetch_file(
        &download::agent(&config),
        mirrors,
        SYNTHETIC,
        md5,
        dir,
        &config,
    )
}

#[test]
fn a_part_file_left_by_an_earlier_run_is_resumed_not_fetched_again() -> Result<()> {
    let (body, md5) = synthetic()?;
    let server = synthetic_server(body.clone(), Behaviour::Normal)?;
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join(format!("{SYNTHETIC}.part")),
        &body[..123_456],
    )?;
    let path = fetch_synthetic(&[server.base()], &md5, dir.path())?;
    assert_eq!(std::fs::read(&path)?, body);
    assert_eq!(server.seen().len(), 1);
    assert_eq!(server.seen()[0].range_from, Some(123_456));
    assert_eq!(files_in(dir.path())?, vec![SYNTHETIC.to_string()]);
    Ok(())
}

#[test]
fn a_complete_part_file_left_by_a_killed_run_is_checked_after_a_416_and_kept() -> Result<()> {
    // A run killed between the fsync and the rename leaves the whole file as `.part`: the
    // range request from its end gets 416, and the file is checked and renamed.
    let (body, md5) = synthetic()?;
    let server = synthetic_server(body.clone(), Behaviour::Normal)?;
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join(format!("{SYNTHETIC}.part")), &body)?;
    let path = fetch_synthetic(&[server.base()], &md5, dir.path())?;
    assert_eq!(std::fs::read(&path)?, body);
    let ranges: Vec<_> = server.seen().into_iter().map(|s| s.range_from).collect();
    assert_eq!(ranges, vec![Some(body.len() as u64)]);
    assert_eq!(files_in(dir.path())?, vec![SYNTHETIC.to_string()]);
    Ok(())
}

#[test]
fn a_stale_part_file_of_other_bytes_fails_the_check_and_is_fetched_again_whole() -> Result<()> {
    // A part file from another mirror or version: resumed, the whole fails the md5, so it
    // is downloaded once more from the start (not reported as a bad mirror).
    let (body, md5) = synthetic()?;
    let server = synthetic_server(body.clone(), Behaviour::Normal)?;
    let dir = tempfile::tempdir()?;
    let mut stale = body[..100_000].to_vec();
    stale[50_000] ^= 0xff;
    std::fs::write(dir.path().join(format!("{SYNTHETIC}.part")), &stale)?;
    let path = fetch_synthetic(&[server.base()], &md5, dir.path())?;
    assert_eq!(std::fs::read(&path)?, body);
    let ranges: Vec<_> = server.seen().into_iter().map(|s| s.range_from).collect();
    assert_eq!(ranges, vec![Some(100_000), None]);
    assert_eq!(files_in(dir.path())?, vec![SYNTHETIC.to_string()]);
    Ok(())
}

#[test]
fn a_server_that_ignores_range_sends_the_whole_file_again_and_the_result_is_right() -> Result<()> {
    let (body, md5) = synthetic()?;
    let server = synthetic_server(body.clone(), Behaviour::NoRangeCutFirstAt(50_000))?;
    let dir = tempfile::tempdir()?;
    let path = fetch_synthetic(&[server.base()], &md5, dir.path())?;
    assert_eq!(std::fs::read(&path)?, body);
    let ranges: Vec<_> = server.seen().into_iter().map(|s| s.range_from).collect();
    assert_eq!(ranges, vec![None, Some(50_000)]);
    assert_eq!(download::gunzipped_md5(&path)?, md5);
    Ok(())
}

#[test]
fn a_transfer_that_keeps_breaking_gives_up_after_the_attempts_with_nothing_final() -> Result<()> {
    let (body, md5) = synthetic()?;
    let server = synthetic_server(body.clone(), Behaviour::CutEvery(10_000))?;
    let dir = tempfile::tempdir()?;
    match fetch_synthetic(&[server.base()], &md5, dir.path()) {
        Err(DownloadError::Interrupted {
            url,
            attempts,
            received,
            expected,
            ..
        }) => {
            assert_eq!(url, format!("{}{SYNTHETIC}", server.base()));
            assert_eq!(attempts, 3);
            assert_eq!(received, 30_000);
            assert_eq!(expected, format!("{} bytes", body.len()));
        }
        other => bail!("expected an interrupted transfer, got {other:?}"),
    }
    let ranges: Vec<_> = server.seen().into_iter().map(|s| s.range_from).collect();
    assert_eq!(ranges, vec![None, Some(10_000), Some(20_000)]);
    // The bytes so far stay under the part name only, for the next run to resume.
    assert_eq!(files_in(dir.path())?, vec![format!("{SYNTHETIC}.part")]);
    assert_eq!(
        std::fs::read(dir.path().join(format!("{SYNTHETIC}.part")))?,
        &body[..30_000]
    );
    Ok(())
}

#[test]
fn a_file_that_is_not_gzip_is_a_corrupt_error_and_is_deleted() -> Result<()> {
    let (mut body, md5) = synthetic()?;
    body[0] = b'P'; // no longer the gzip magic 1f 8b
    let server = synthetic_server(body, Behaviour::Normal)?;
    let dir = tempfile::tempdir()?;
    match fetch_synthetic(&[server.base()], &md5, dir.path()) {
        Err(DownloadError::Corrupt { url, file, .. }) => {
            assert_eq!(url, format!("{}{SYNTHETIC}", server.base()));
            assert_eq!(file, dir.path().join(format!("{SYNTHETIC}.part")));
        }
        other => bail!("expected a corrupt-file error, got {other:?}"),
    }
    assert!(files_in(dir.path())?.is_empty());
    Ok(())
}

#[test]
fn mirrors_are_tried_in_order_past_unreachable_missing_and_bad_ones() -> Result<()> {
    let (body, md5) = synthetic()?;
    let good = synthetic_server(body.clone(), Behaviour::Normal)?;
    // A mirror that answers 404 for everything, and one that serves wrong content.
    let missing = Server::start(HashMap::new())?;
    let (wrong, _) = {
        let mut plain = gunzip(&body)?;
        plain[0] ^= 1;
        (gzip(&plain)?, ())
    };
    let bad = synthetic_server(wrong, Behaviour::Normal)?;
    let down = format!("http://{}/mnist/", closed_port()?);
    let dir = tempfile::tempdir()?;
    let mirrors = [down, missing.base(), bad.base(), good.base()];
    let path = fetch_synthetic(&mirrors, &md5, dir.path())?;
    assert_eq!(std::fs::read(&path)?, body);
    assert_eq!(
        (missing.seen().len(), bad.seen().len(), good.seen().len()),
        (1, 1, 1)
    );
    assert_eq!(files_in(dir.path())?, vec![SYNTHETIC.to_string()]);

    // Without the good mirror the first mirror that answered gives the error: 404.
    let dir = tempfile::tempdir()?;
    match fetch_synthetic(&mirrors[..3], &md5, dir.path()) {
        Err(DownloadError::Status { url, status }) => {
            assert_eq!(status, 404);
            assert_eq!(url, format!("{}{SYNTHETIC}", missing.base()));
        }
        other => bail!("expected the 404 of the second mirror, got {other:?}"),
    }
    assert!(files_in(dir.path())?.is_empty());
    Ok(())
}

#[test]
fn no_reachable_mirror_is_an_unreachable_error_naming_the_url() -> Result<()> {
    let a = format!("http://{}/mnist/", closed_port()?);
    let b = format!("http://{}/mnist/", closed_port()?);
    let dir = tempfile::tempdir()?;
    let cache_dir = dir.path().join("mnist");
    let dataset = RemoteDataset {
        name: "mnist",
        mirrors: &[],
        files: &[RemoteFile {
            name: SYNTHETIC,
            md5: "00000000000000000000000000000000",
        }],
    };
    match download::fetch_dataset(&dataset, &[a, b.clone()], &cache_dir, &config()) {
        Err(DownloadError::Unreachable { url, reason }) => {
            assert_eq!(url, format!("{b}{SYNTHETIC}"));
            assert!(!reason.is_empty());
        }
        other => bail!("expected an unreachable error, got {other:?}"),
    }
    assert!(files_in(&cache_dir)?.is_empty());
    Ok(())
}

#[test]
fn the_cache_folder_is_candle_vae_cache_then_xdg_then_home() -> Result<()> {
    use download::cache_root_from;
    let some = |s: &str| Some(std::ffi::OsString::from(s));
    assert_eq!(
        cache_root_from(some("/c"), some("/x"), some("/h"), some("/l")),
        Some(PathBuf::from("/c"))
    );
    assert_eq!(
        cache_root_from(some(""), some("/x"), some("/h"), None),
        Some(PathBuf::from("/x/candle-vae"))
    );
    assert_eq!(
        cache_root_from(None, None, some("/h"), some("/l")),
        Some(PathBuf::from("/h/.cache/candle-vae"))
    );
    assert_eq!(
        cache_root_from(None, None, None, some("/l")),
        Some(PathBuf::from("/l/candle-vae"))
    );
    assert_eq!(cache_root_from(None, some(""), None, None), None);
    assert_eq!(
        download::file_url("http://h/mnist", "a.gz"),
        download::file_url("http://h/mnist/", "a.gz")
    );
    Ok(())
}
