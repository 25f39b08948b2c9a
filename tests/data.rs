//! The IDX reader on broken files built here, the real MNIST files when
//! `CANDLE_VAE_DATA` is set, binarization and batching.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use candle_core::{DType, Device};
use candle_vae::data::{
    Binarization, DataLoader, DataLoaderConfig, ImageDataset, Layout, Mnist, Order, idx,
};
use candle_vae::{Error, IdxProblem, NoiseSource};
use flate2::Compression;
use flate2::write::GzEncoder;

/// An IDX header with `magic` and `dims`, followed by `data`.
fn idx_bytes(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut bytes = magic.to_be_bytes().to_vec();
    for d in dims {
        bytes.extend_from_slice(&d.to_be_bytes());
    }
    bytes.extend_from_slice(data);
    bytes
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(bytes)?;
    Ok(encoder.finish()?)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, bytes)?;
    Ok(path)
}

/// Three 2×3 images with pixel values 0..18.
fn small_images() -> Vec<u8> {
    idx_bytes(2051, &[3, 2, 3], &(0..18).collect::<Vec<u8>>())
}

/// The rule an IDX read broke, checking that the message names the file.
fn problem(result: candle_vae::Result<impl std::fmt::Debug>, path: &Path) -> Result<IdxProblem> {
    match result {
        Err(error @ Error::Idx { .. }) => {
            let message = error.to_string();
            if !message.contains(&path.display().to_string()) {
                bail!("message `{message}` does not name {}", path.display());
            }
            match error {
                Error::Idx { problem, .. } => Ok(problem),
                _ => unreachable!(),
            }
        }
        other => bail!(
            "expected an IDX error for {}, got {other:?}",
            path.display()
        ),
    }
}

#[test]
fn reads_plain_and_gzip_identically() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let plain = write(dir.path(), "a-idx3-ubyte", &small_images())?;
    let packed = write(dir.path(), "b-idx3-ubyte.gz", &gzip(&small_images())?)?;
    for path in [plain, packed] {
        let array = idx::read_images(&path)?;
        assert_eq!(array.dims, vec![3, 2, 3]);
        assert_eq!(array.data, (0..18).collect::<Vec<u8>>());
    }
    Ok(())
}

#[test]
fn finds_both_spellings_plain_or_gzip() -> Result<()> {
    let dir = tempfile::tempdir()?;
    write(dir.path(), "train-images.idx3-ubyte", &small_images())?;
    write(
        dir.path(),
        "t10k-images-idx3-ubyte.gz",
        &gzip(&small_images())?,
    )?;
    assert_eq!(
        idx::find(dir.path(), "train-images-idx3-ubyte"),
        Some(dir.path().join("train-images.idx3-ubyte"))
    );
    assert_eq!(
        idx::find(dir.path(), "t10k-images.idx3-ubyte"),
        Some(dir.path().join("t10k-images-idx3-ubyte.gz"))
    );
    assert_eq!(idx::find(dir.path(), "train-labels-idx1-ubyte"), None);
    Ok(())
}

#[test]
fn rejects_wrong_magic() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let labels = write(dir.path(), "labels", &idx_bytes(2049, &[2], &[1, 2]))?;
    assert_eq!(
        problem(idx::read_images(&labels), &labels)?,
        IdxProblem::WrongMagic {
            expected: 2051,
            found: 2049,
            what: "IDX unsigned-byte images"
        }
    );
    let text = write(dir.path(), "text", b"hello, world, not idx")?;
    assert!(matches!(
        problem(idx::read_labels(&text), &text)?,
        IdxProblem::WrongMagic {
            found: 0x6865_6c6c,
            ..
        }
    ));
    Ok(())
}

#[test]
fn rejects_empty_files() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let empty = write(dir.path(), "empty", b"")?;
    assert_eq!(
        problem(idx::read_images(&empty), &empty)?,
        IdxProblem::Empty
    );
    let empty_gz = write(dir.path(), "empty.gz", &gzip(b"")?)?;
    assert_eq!(
        problem(idx::read_images(&empty_gz), &empty_gz)?,
        IdxProblem::Empty
    );
    Ok(())
}

#[test]
fn rejects_truncated_header() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let two = write(dir.path(), "two", &[0, 0])?;
    assert_eq!(
        problem(idx::read_images(&two), &two)?,
        IdxProblem::TruncatedHeader {
            expected: 16,
            found: 2
        }
    );
    let ten = write(dir.path(), "ten", &small_images()[..10])?;
    assert_eq!(
        problem(idx::read_images(&ten), &ten)?,
        IdxProblem::TruncatedHeader {
            expected: 16,
            found: 10
        }
    );
    Ok(())
}

#[test]
fn rejects_header_promising_more_than_present() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let bytes = small_images();
    let short = write(dir.path(), "short", &bytes[..bytes.len() - 5])?;
    assert_eq!(
        problem(idx::read_images(&short), &short)?,
        IdxProblem::Truncated {
            expected: 18,
            found: 13
        }
    );
    // The same inside a valid gzip stream.
    let short_gz = write(dir.path(), "short.gz", &gzip(&bytes[..bytes.len() - 5])?)?;
    assert_eq!(
        problem(idx::read_images(&short_gz), &short_gz)?,
        IdxProblem::Truncated {
            expected: 18,
            found: 13
        }
    );
    // A header that claims 60,000 images over a file with one.
    let liar = write(
        dir.path(),
        "liar",
        &idx_bytes(2051, &[60_000, 28, 28], &[0; 784]),
    )?;
    assert_eq!(
        problem(idx::read_images(&liar), &liar)?,
        IdxProblem::Truncated {
            expected: 60_000 * 784,
            found: 784
        }
    );
    Ok(())
}

#[test]
fn rejects_trailing_bytes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut bytes = small_images();
    bytes.extend_from_slice(&[9, 9, 9]);
    let long = write(dir.path(), "long", &bytes)?;
    assert_eq!(
        problem(idx::read_images(&long), &long)?,
        IdxProblem::TrailingBytes {
            expected: 18,
            extra: 3
        }
    );
    let long_gz = write(dir.path(), "long.gz", &gzip(&bytes)?)?;
    assert_eq!(
        problem(idx::read_images(&long_gz), &long_gz)?,
        IdxProblem::TrailingBytes {
            expected: 18,
            extra: 3
        }
    );
    Ok(())
}

#[test]
fn rejects_corrupt_gzip() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let packed = gzip(&small_images())?;

    // Cut short: the stream ends before its end marker and checksum.
    let cut = write(dir.path(), "cut.gz", &packed[..packed.len() - 6])?;
    assert!(matches!(
        problem(idx::read_images(&cut), &cut)?,
        IdxProblem::CorruptGzip { .. }
    ));

    // A wrong CRC-32 in the trailer: the data decompresses, the checksum does not match.
    let mut bad_crc = packed.clone();
    let at = bad_crc.len() - 8;
    bad_crc[at] ^= 0xff;
    let bad_crc = write(dir.path(), "crc.gz", &bad_crc)?;
    assert!(matches!(
        problem(idx::read_images(&bad_crc), &bad_crc)?,
        IdxProblem::CorruptGzip { .. }
    ));

    // Garbage after a complete gzip member.
    let mut trailing = packed.clone();
    trailing.extend_from_slice(b"garbage");
    let trailing = write(dir.path(), "trailing.gz", &trailing)?;
    assert!(matches!(
        problem(idx::read_images(&trailing), &trailing)?,
        IdxProblem::CorruptGzip { .. }
    ));

    // Only the gzip magic.
    let stub = write(dir.path(), "stub.gz", &[0x1f, 0x8b, 8])?;
    assert!(matches!(
        problem(idx::read_images(&stub), &stub)?,
        IdxProblem::CorruptGzip { .. }
    ));
    Ok(())
}

#[test]
fn rejects_overflowing_and_zero_dimensions() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let huge = [u32::MAX, u32::MAX, u32::MAX];
    let overflow = write(dir.path(), "overflow", &idx_bytes(2051, &huge, &[]))?;
    assert_eq!(
        problem(idx::read_images(&overflow), &overflow)?,
        IdxProblem::DimensionsOverflow {
            dims: huge.to_vec(),
            bits: usize::BITS
        }
    );
    let zero = write(dir.path(), "zero", &idx_bytes(2051, &[1, 0, 28], &[]))?;
    assert_eq!(
        problem(idx::read_images(&zero), &zero)?,
        IdxProblem::ZeroDimension {
            dims: vec![1, 0, 28]
        }
    );
    Ok(())
}

#[test]
fn rejects_label_count_mismatch() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let images = write(dir.path(), "images", &small_images())?;
    let labels = write(dir.path(), "labels", &idx_bytes(2049, &[2], &[4, 5]))?;
    assert_eq!(
        problem(ImageDataset::from_idx(&images, Some(&labels)), &labels)?,
        IdxProblem::CountMismatch {
            labels: 2,
            images: 3,
            images_path: images.clone()
        }
    );
    let good = write(dir.path(), "good", &idx_bytes(2049, &[3], &[4, 5, 6]))?;
    let data = ImageDataset::from_idx(&images, Some(&good))?;
    assert_eq!((data.len(), data.height(), data.width()), (3, 2, 3));
    assert_eq!(data.image(1), Some(&[6u8, 7, 8, 9, 10, 11][..]));
    assert_eq!(data.labels(), Some(&[4u8, 5, 6][..]));
    Ok(())
}

#[test]
fn a_missing_file_is_an_io_error_naming_it() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let missing = dir.path().join("nope");
    match idx::read_images(&missing) {
        Err(error @ Error::Io { .. }) => {
            assert!(error.to_string().contains("nope"));
            Ok(())
        }
        other => bail!("expected Error::Io, got {other:?}"),
    }
}

#[test]
fn missing_data_says_what_to_put_where() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let message = match Mnist::locate(Some(dir.path())) {
        Err(error @ Error::DataNotFound { .. }) => error.to_string(),
        other => bail!("expected Error::DataNotFound, got {other:?}"),
    };
    for needle in [
        "train-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
        "https://",
        "CANDLE_VAE_DATA",
        "--data",
        &dir.path().display().to_string(),
    ] {
        assert!(message.contains(needle), "`{needle}` not in: {message}");
    }
    // With the four files present (any spelling) the directory is accepted.
    for name in [
        "train-images-idx3-ubyte",
        "train-labels.idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte",
    ] {
        write(dir.path(), name, b"")?;
    }
    assert_eq!(Mnist::locate(Some(dir.path()))?, dir.path());
    Ok(())
}

/// The real MNIST files, when `CANDLE_VAE_DATA` points at them.
fn real_mnist_dir() -> Option<PathBuf> {
    match std::env::var_os("CANDLE_VAE_DATA") {
        Some(root) if !root.is_empty() => Some(PathBuf::from(root).join("mnist")),
        _ => {
            // Written to stderr directly: libtest captures println!, and a skip must show.
            let _ = writeln!(
                std::io::stderr(),
                "real_mnist: skipped: CANDLE_VAE_DATA not set (point it at the datasets folder)"
            );
            None
        }
    }
}

#[test]
fn real_mnist_headers_and_first_labels() -> Result<()> {
    let Some(dir) = real_mnist_dir() else {
        return Ok(());
    };
    let Some(path) = idx::find(&dir, "train-images-idx3-ubyte") else {
        bail!("CANDLE_VAE_DATA is set but {} has no MNIST", dir.display());
    };
    let train_images = idx::read_images(path)?;
    assert_eq!(train_images.dims, vec![60_000, 28, 28]);

    let mnist = Mnist::load(&dir)?;
    assert_eq!((mnist.train.len(), mnist.test.len()), (60_000, 10_000));
    assert_eq!((mnist.train.height(), mnist.train.width()), (28, 28));
    let first = |d: &ImageDataset| d.labels().map(|l| l[..10].to_vec());
    assert_eq!(
        first(&mnist.train),
        Some(vec![5, 0, 4, 1, 9, 2, 1, 3, 1, 4])
    );
    assert_eq!(first(&mnist.test), Some(vec![7, 2, 1, 0, 4, 1, 4, 9, 5, 9]));
    // Golden sums from Python:
    //   b = gzip.open('train-images-idx3-ubyte.gz').read(); sum(b[16:]), sum(b[16:16+784])
    //   → 1567298545 27525 (train), 264923200 18454 (t10k)
    let sum = |p: &[u8]| p.iter().map(|&v| u64::from(v)).sum::<u64>();
    assert_eq!(sum(mnist.train.pixels()), 1_567_298_545);
    assert_eq!(sum(mnist.test.pixels()), 264_923_200);
    assert_eq!(mnist.train.image(0).map(sum), Some(27_525));
    // Label counts: [list(b[8:]).count(i) for i in range(10)] on the train labels.
    let mut counts = [0usize; 10];
    for &l in mnist.train.labels().unwrap_or_default() {
        counts[usize::from(l)] += 1;
    }
    assert_eq!(
        counts,
        [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    );
    Ok(())
}

/// `n` 4×4 images whose pixels cycle through 0..=255.
fn ramp_dataset(n: usize) -> Result<ImageDataset> {
    let pixels = (0..n * 16).map(|i| (i * 37 % 256) as u8).collect();
    let labels = (0..n).map(|i| (i % 10) as u8).collect();
    Ok(ImageDataset::new(pixels, 4, 4, Some(labels))?)
}

#[test]
fn tensors_hold_pixels_over_255_in_both_layouts() -> Result<()> {
    let data = ramp_dataset(3)?;
    let flat = data.to_tensor(&[2, 0], Layout::Flat, DType::F32, &Device::Cpu)?;
    assert_eq!(flat.dims(), &[2, 16]);
    let rows = flat.to_vec2::<f32>()?;
    assert_eq!(
        rows[0][0],
        f32::from(data.image(2).unwrap_or_default()[0]) / 255.0
    );
    assert_eq!(rows[1][5], 185.0 / 255.0); // pixel 5 of image 0: 5·37 mod 256
    let image = data.to_tensor(&[1], Layout::Image, DType::F64, &Device::Cpu)?;
    assert_eq!(image.dims(), &[1, 1, 4, 4]);
    assert_eq!(
        image.flatten_all()?.to_vec1::<f64>()?[3],
        f64::from((19 * 37 % 256) as u8) / 255.0
    );
    let labels = data.labels_tensor(&[2, 0], &Device::Cpu)?;
    assert_eq!(
        labels.map(|l| l.to_vec1::<u32>()).transpose()?,
        Some(vec![2, 0])
    );
    assert!(
        data.to_tensor(&[3], Layout::Flat, DType::F32, &Device::Cpu)
            .is_err()
    );
    Ok(())
}

#[test]
fn threshold_binarization_is_exact() -> Result<()> {
    let data = ImageDataset::new(vec![0, 127, 128, 255], 2, 2, None)?;
    let binary = data.binarized(Binarization::Threshold(0.5))?;
    assert_eq!(binary.pixels(), &[0, 0, 255, 255]);
    assert!(data.binarized(Binarization::Threshold(1.0)).is_err());
    assert!(data.binarized(Binarization::Dynamic).is_err());
    Ok(())
}

/// Mean over pixels and its Monte-Carlo standard error for Bernoulli(p) draws.
fn expected_mean_and_se(data: &ImageDataset) -> (f64, f64) {
    let n = data.pixels().len() as f64;
    let ps = data.pixels().iter().map(|&p| f64::from(p) / 255.0);
    let mean = ps.clone().sum::<f64>() / n;
    let var = ps.map(|p| p * (1.0 - p)).sum::<f64>() / (n * n);
    (mean, var.sqrt())
}

#[test]
fn fixed_binarization_is_one_seeded_bernoulli_draw() -> Result<()> {
    let data = ramp_dataset(500)?; // 8,000 pixels
    let a = data.binarized(Binarization::Fixed { seed: 3 })?;
    let b = data.binarized(Binarization::Fixed { seed: 3 })?;
    let c = data.binarized(Binarization::Fixed { seed: 4 })?;
    assert_eq!(a, b);
    assert_ne!(a.pixels(), c.pixels());
    assert!(a.pixels().iter().all(|&p| p == 0 || p == 255));
    // Pixels at 0 stay 0, pixels at 255 stay 255.
    for (&p, &q) in data.pixels().iter().zip(a.pixels()) {
        if p == 0 || p == 255 {
            assert_eq!(p, q);
        }
    }
    // The fraction of ones matches the mean intensity within 4 standard errors.
    let (mean, se) = expected_mean_and_se(&data);
    let ones = a.pixels().iter().filter(|&&p| p == 255).count() as f64 / 8000.0;
    assert!((ones - mean).abs() < 4.0 * se, "{ones} vs {mean} ± {se}");
    Ok(())
}

#[test]
fn dynamic_binarization_draws_afresh_every_epoch() -> Result<()> {
    let data = ramp_dataset(500)?;
    let loader = DataLoader::new(
        data.clone(),
        DataLoaderConfig::new(100)
            .with_order(Order::Sequential)
            .with_binarization(Binarization::Dynamic),
    )?;
    let mut noise = NoiseSource::new(11);
    let mut epochs = Vec::new();
    for _ in 0..2 {
        let mut values = Vec::new();
        for batch in loader.epoch(&mut noise, &Device::Cpu) {
            values.extend(batch?.images.flatten_all()?.to_vec1::<f32>()?);
        }
        epochs.push(values);
    }
    assert_ne!(epochs[0], epochs[1]);
    let (mean, se) = expected_mean_and_se(&data);
    for values in &epochs {
        assert!(values.iter().all(|&v| v == 0.0 || v == 1.0));
        let ones = values.iter().sum::<f32>() as f64 / values.len() as f64;
        assert!((ones - mean).abs() < 4.0 * se, "{ones} vs {mean} ± {se}");
    }
    // The same seed repeats the same draws.
    let mut again = NoiseSource::new(11);
    let first: Vec<f32> = loader
        .epoch(&mut again, &Device::Cpu)
        .map(|b| Ok(b?.images.flatten_all()?.to_vec1::<f32>()?))
        .collect::<Result<Vec<_>>>()?
        .concat();
    assert_eq!(first, epochs[0]);
    Ok(())
}

#[test]
fn shuffled_epochs_are_seeded_permutations_keeping_the_last_batch() -> Result<()> {
    let data = ramp_dataset(10)?;
    let loader = DataLoader::new(data, DataLoaderConfig::new(4))?;
    assert_eq!(loader.batches(), 3);
    let mut noise = NoiseSource::new(5);
    let epoch = |noise: &mut NoiseSource| -> Result<Vec<Vec<usize>>> {
        let batches = loader.epoch(noise, &Device::Cpu);
        assert_eq!(batches.len(), 3);
        batches.map(|b| Ok(b?.indices)).collect()
    };
    let first = epoch(&mut noise)?;
    let second = epoch(&mut noise)?;
    assert_eq!(
        first.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![4, 4, 2]
    );
    for order in [&first, &second] {
        let seen: HashSet<usize> = order.iter().flatten().copied().collect();
        assert_eq!(seen, (0..10).collect());
    }
    assert_ne!(first, second, "a new permutation each epoch");
    assert_ne!(first.concat(), (0..10).collect::<Vec<_>>());
    let mut replay = NoiseSource::new(5);
    assert_eq!(epoch(&mut replay)?, first, "same seed, same order");

    let sequential = DataLoader::new(
        ramp_dataset(10)?,
        DataLoaderConfig::new(4).with_order(Order::Sequential),
    )?;
    let order: Vec<usize> = sequential
        .epoch(&mut NoiseSource::new(0), &Device::Cpu)
        .map(|b| Ok(b?.indices))
        .collect::<Result<Vec<_>>>()?
        .concat();
    assert_eq!(order, (0..10).collect::<Vec<_>>());
    Ok(())
}

#[test]
fn batches_carry_their_labels_and_layout() -> Result<()> {
    let data = ramp_dataset(6)?;
    let loader = DataLoader::new(
        data.clone(),
        DataLoaderConfig::new(4).with_layout(Layout::Image),
    )?;
    let mut noise = NoiseSource::new(2);
    for batch in loader.epoch(&mut noise, &Device::Cpu) {
        let batch = batch?;
        assert_eq!(&batch.images.dims()[1..], &[1, 4, 4]);
        let labels = batch
            .labels
            .as_ref()
            .map(|l| l.to_vec1::<u32>())
            .transpose()?;
        let expected: Vec<u32> = batch.indices.iter().map(|&i| (i % 10) as u32).collect();
        assert_eq!(labels, Some(expected));
        let direct = data.to_tensor(&batch.indices, Layout::Image, DType::F32, &Device::Cpu)?;
        assert_eq!(
            batch.images.flatten_all()?.to_vec1::<f32>()?,
            direct.flatten_all()?.to_vec1::<f32>()?
        );
    }
    assert!(DataLoader::new(data, DataLoaderConfig::new(0)).is_err());
    Ok(())
}

// ---- MNIST folders ------------------------------------------------------------------------

/// Writes MNIST's four files into `dir`: `train` and `test` images of `rows × cols`
/// (labels 0, 1, 2, …).
fn write_mnist(dir: &Path, train: u32, test: u32, rows: u32, cols: u32) -> Result<()> {
    for (stem, count) in [("train", train), ("t10k", test)] {
        let pixels = vec![7u8; (count * rows * cols) as usize];
        write(
            dir,
            &format!("{stem}-images-idx3-ubyte"),
            &idx_bytes(2051, &[count, rows, cols], &pixels),
        )?;
        let labels: Vec<u8> = (0..count).map(|i| (i % 10) as u8).collect();
        write(
            dir,
            &format!("{stem}-labels-idx1-ubyte"),
            &idx_bytes(2049, &[count], &labels),
        )?;
    }
    Ok(())
}

#[test]
fn mnist_images_of_another_size_are_an_error_naming_the_file() -> Result<()> {
    // 14 × 56 has MNIST's 784 pixels per image (it trained silently); 20 × 20 does not
    // (it failed after a whole epoch with a shape error naming no file).
    for (rows, cols) in [(14u32, 56u32), (20, 20)] {
        let dir = tempfile::tempdir()?;
        write_mnist(dir.path(), 3, 2, 28, 28)?;
        let bad = write(
            dir.path(),
            "t10k-images-idx3-ubyte",
            &idx_bytes(
                2051,
                &[2, rows, cols],
                &vec![7u8; (2 * rows * cols) as usize],
            ),
        )?;
        match Mnist::load(dir.path()).map(|m| (m.train.len(), m.test.len())) {
            Err(err @ Error::Data { .. }) => {
                let message = err.to_string();
                let wanted = [
                    bad.display().to_string(),
                    "28 × 28".to_string(),
                    format!("{rows} × {cols}"),
                ];
                for needle in &wanted {
                    anyhow::ensure!(
                        message.contains(needle.as_str()),
                        "`{needle}` not in: {message}"
                    );
                }
            }
            other => bail!("{rows} × {cols}: expected Error::Data, got {other:?}"),
        }
    }
    // MNIST-sized files load.
    let dir = tempfile::tempdir()?;
    write_mnist(dir.path(), 3, 2, 28, 28)?;
    let mnist = Mnist::load(dir.path())?;
    assert_eq!((mnist.train.len(), mnist.test.len()), (3, 2));
    Ok(())
}

#[test]
fn an_mnist_file_of_zero_images_is_an_error_naming_it() -> Result<()> {
    let dir = tempfile::tempdir()?;
    write_mnist(dir.path(), 3, 0, 28, 28)?;
    match Mnist::load(dir.path()).map(|m| (m.train.len(), m.test.len())) {
        Err(err @ Error::Data { .. }) => {
            let message = err.to_string();
            anyhow::ensure!(
                message.contains("t10k-images-idx3-ubyte") && message.contains("0 images"),
                "message: {message}"
            );
        }
        other => bail!("expected Error::Data, got {other:?}"),
    }
    Ok(())
}

#[test]
fn a_folder_with_some_mnist_files_lists_only_the_missing_ones() -> Result<()> {
    let dir = tempfile::tempdir()?;
    write_mnist(dir.path(), 3, 2, 28, 28)?;
    std::fs::remove_file(dir.path().join("t10k-images-idx3-ubyte"))?;
    std::fs::remove_file(dir.path().join("t10k-labels-idx1-ubyte"))?;
    for (what, result) in [
        ("locate", Mnist::locate(Some(dir.path())).map(|_| ())),
        ("load", Mnist::load(dir.path()).map(|_| ())),
    ] {
        let message = match result {
            Err(err @ Error::DataNotFound { .. }) => err.to_string(),
            other => bail!("{what}: expected Error::DataNotFound, got {other:?}"),
        };
        for needle in ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"] {
            anyhow::ensure!(
                message.contains(needle),
                "{what}: `{needle}` not in: {message}"
            );
        }
        for present in ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"] {
            anyhow::ensure!(
                !message.contains(present),
                "{what}: `{present}` is there but listed: {message}"
            );
        }
    }
    Ok(())
}

#[test]
fn an_io_error_prints_its_cause_once() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let err = match idx::read_images(dir.path().join("nope")) {
        Err(err @ Error::Io { .. }) => err,
        other => bail!("expected Error::Io, got {other:?}"),
    };
    // What anyhow's `{:?}` prints: the message, then every source in turn.
    let mut chain = vec![err.to_string()];
    let mut source = std::error::Error::source(&err);
    while let Some(inner) = source {
        chain.push(inner.to_string());
        source = inner.source();
    }
    let cause = std::io::Error::from(std::io::ErrorKind::NotFound).to_string();
    let os = "No such file or directory";
    let printed = chain.join("\n");
    anyhow::ensure!(printed.contains("nope"), "the path is not named: {printed}");
    anyhow::ensure!(
        printed.matches(os).count() + printed.matches(cause.as_str()).count() == 1,
        "the cause is printed {} times:\n{printed}",
        printed.matches(os).count() + printed.matches(cause.as_str()).count()
    );
    Ok(())
}

#[test]
fn a_tensor_loader_batches_rows_with_their_labels_and_shuffles_by_the_seed() -> Result<()> {
    use candle_vae::data::{BatchSource, TensorLoader};
    let rows: Vec<f32> = (0..50 * 3).map(|v| v as f32).collect();
    let data = candle_core::Tensor::from_vec(rows, (50, 3), &candle_core::Device::Cpu)?;
    let labels = candle_core::Tensor::from_vec(
        (0..50u32).map(|i| i * 7).collect::<Vec<_>>(),
        50,
        &candle_core::Device::Cpu,
    )?;
    let loader = TensorLoader::new(data, Some(labels), 16, Order::Shuffled)?;
    anyhow::ensure!((loader.examples(), loader.batches()) == (50, 4));
    let epoch = |seed| -> Result<Vec<usize>> {
        let mut noise = NoiseSource::new(seed);
        let mut seen = Vec::new();
        let mut sizes = Vec::new();
        for batch in loader.epoch(&mut noise, &candle_core::Device::Cpu) {
            let batch = batch?;
            let x = batch.images.to_vec2::<f32>()?;
            let y = batch
                .labels
                .as_ref()
                .map(|l| l.to_vec1::<u32>())
                .transpose()?;
            for (j, &i) in batch.indices.iter().enumerate() {
                anyhow::ensure!(
                    x[j] == [3.0 * i as f32, 3.0 * i as f32 + 1.0, 3.0 * i as f32 + 2.0]
                );
                anyhow::ensure!(y.as_ref().map(|y| y[j]) == Some(7 * i as u32));
            }
            sizes.push(batch.len());
            seen.extend(batch.indices);
        }
        anyhow::ensure!(sizes == [16, 16, 16, 2], "{sizes:?}");
        Ok(seen)
    };
    let first = epoch(1)?;
    let mut sorted = first.clone();
    sorted.sort_unstable();
    anyhow::ensure!(sorted == (0..50).collect::<Vec<_>>(), "not a permutation");
    anyhow::ensure!(first == epoch(1)?, "the same seed gave another order");
    anyhow::ensure!(first != epoch(2)?, "another seed gave the same order");
    let bad = candle_core::Tensor::zeros(4, candle_core::DType::U32, &candle_core::Device::Cpu)?;
    let data = loader.data().clone();
    anyhow::ensure!(TensorLoader::new(data.clone(), None, 0, Order::Sequential).is_err());
    anyhow::ensure!(TensorLoader::new(data, Some(bad), 8, Order::Sequential).is_err());
    Ok(())
}
