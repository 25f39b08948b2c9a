//! Frey Face and Olivetti: the seeded splits, loading the real files when
//! `CANDLE_VAE_DATA` is set, and a short Frey Face training run.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Result, bail, ensure};
use candle_vae::Error;
use candle_vae::data::split::Split;
use candle_vae::data::{FreyFace, ImageDataset, Olivetti};

/// `$CANDLE_VAE_DATA/<name>`, or `None` after saying on stderr that the test is skipped.
fn real_data_dir(name: &str) -> Option<PathBuf> {
    match std::env::var_os("CANDLE_VAE_DATA") {
        Some(root) if !root.is_empty() => Some(PathBuf::from(root).join(name)),
        _ => {
            // Written to stderr directly: libtest captures println!, and a skip must show.
            let _ = writeln!(
                std::io::stderr(),
                "real {name}: skipped: CANDLE_VAE_DATA not set (point it at the datasets folder)"
            );
            None
        }
    }
}

fn pixel_sum(pixels: &[u8]) -> u64 {
    pixels.iter().map(|&v| u64::from(v)).sum()
}

fn label_counts(data: &ImageDataset) -> Vec<usize> {
    let mut counts = vec![0; Olivetti::PEOPLE];
    for &l in data.labels().unwrap_or_default() {
        counts[usize::from(l)] += 1;
    }
    counts
}

// ---- Splits ----------------------------------------------------------------------------

#[test]
fn random_split_is_a_seeded_partition() -> Result<()> {
    let split = Split::random(1_965, 200, 2013)?;
    assert_eq!((split.train.len(), split.test.len()), (1_765, 200));
    ensure!(split.train.is_sorted() && split.test.is_sorted());
    let mut all: Vec<usize> = split.train.iter().chain(&split.test).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..1_965).collect::<Vec<_>>(), "not a partition");
    assert_eq!(Split::random(1_965, 200, 2013)?, split, "not deterministic");
    ensure!(
        Split::random(1_965, 200, 2014)?.test != split.test,
        "another seed gives the same split"
    );
    // A uniform draw of 200 of 1,965: the mean test index is (1964/2) ± σ/√200·√(fpc) with
    // σ = 1965/√12 ≈ 567 and fpc = (1965 − 200)/(1965 − 1): standard error ≈ 38. Allow 5 SE.
    let mean = split.test.iter().sum::<usize>() as f64 / 200.0;
    ensure!((mean - 982.0).abs() < 5.0 * 38.0, "mean test index {mean}");
    Ok(())
}

#[test]
fn stratified_split_takes_the_same_number_of_every_label() -> Result<()> {
    // 5 labels, label k has 4 + k examples, interleaved.
    let mut labels = Vec::new();
    for round in 0..8u8 {
        for k in 0..5u8 {
            if usize::from(round) < 4 + usize::from(k) {
                labels.push(k);
            }
        }
    }
    let split = Split::stratified(&labels, 3, 9)?;
    let count = |idx: &[usize], k: u8| idx.iter().filter(|&&i| labels[i] == k).count();
    for k in 0..5u8 {
        assert_eq!(count(&split.test, k), 3, "label {k} in test");
        assert_eq!(
            count(&split.train, k),
            4 + usize::from(k) - 3,
            "label {k} in train"
        );
    }
    let mut all: Vec<usize> = split.train.iter().chain(&split.test).copied().collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..labels.len()).collect::<Vec<_>>(),
        "not a partition"
    );
    assert_eq!(
        Split::stratified(&labels, 3, 9)?,
        split,
        "not deterministic"
    );
    Ok(())
}

#[test]
fn splits_reject_sizes_that_leave_a_part_empty() -> Result<()> {
    for (len, test) in [(10, 0), (10, 10), (10, 11), (0, 0)] {
        match Split::random(len, test, 1) {
            Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, "test_len"),
            other => bail!("random({len}, {test}): expected InvalidConfig, got {other:?}"),
        }
    }
    // Label 1 has only 2 examples: 2 test images per label would leave none to train on.
    for (labels, k) in [(&[0u8, 0, 0, 1, 1][..], 2), (&[0, 0][..], 0), (&[][..], 1)] {
        match Split::stratified(labels, k, 1) {
            Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, "test_per_label"),
            other => bail!("stratified({labels:?}, {k}): expected InvalidConfig, got {other:?}"),
        }
    }
    Ok(())
}

// ---- Real data -------------------------------------------------------------------------
//
// Golden values from Python on the shared files:
//   b = gzip.open('frey/frey-images-idx3-ubyte.gz').read()
//   b[:16].hex(), list(b[16:26]), sum(b[16:]), sum(b[16:16+560])
//   → 00000803000007ad0000001c00000014, [81, 136, 167, 185, 187, 193, 203, 222, 224, 226],
//     169968741, 86378
//   o = gzip.open('olivetti/olivetti-images-idx3-ubyte.gz').read()
//   → 000008030000019000000040 00000040, [75, 89, 101, 107, 128, 147, 159, 164, 167, 166],
//     216898402, 631263
//   l = gzip.open('olivetti/olivetti-labels-idx1-ubyte.gz').read()[8:]
//   → [l.count(i) for i in range(40)] == [10] * 40, labels sorted: 10 × 0, 10 × 1, …
// and on the splits (the test indices printed by this crate, listed below):
//   sum(sum(b[16+i*560:16+(i+1)*560]) for i in frey_test) → 17338869
//   sum(sum(o[16+i*4096:16+(i+1)*4096]) for i in olivetti_test) → 43716921

#[test]
fn real_frey_face_loads_and_splits() -> Result<()> {
    let Some(dir) = real_data_dir("frey") else {
        return Ok(());
    };
    let all = FreyFace::load_all(&dir)?;
    assert_eq!((all.len(), all.height(), all.width()), (1_965, 28, 20));
    assert_eq!(
        all.image(0).map(|p| p[..10].to_vec()),
        Some(vec![81, 136, 167, 185, 187, 193, 203, 222, 224, 226])
    );
    assert_eq!(pixel_sum(all.pixels()), 169_968_741);
    assert_eq!(all.image(0).map(pixel_sum), Some(86_378));
    ensure!(all.labels().is_none(), "Frey Face has no labels");

    let frey = FreyFace::load(&dir)?;
    assert_eq!((frey.train.len(), frey.test.len()), (1_765, 200));
    assert_eq!((frey.test.height(), frey.test.width()), (28, 20));
    assert_eq!(frey.split, Split::random(1_965, 200, FreyFace::SPLIT_SEED)?);
    assert_eq!(&frey.split.test[..8], &[11, 14, 36, 45, 66, 75, 85, 103]);
    assert_eq!(pixel_sum(frey.test.pixels()), 17_338_869);
    assert_eq!(
        pixel_sum(frey.train.pixels()),
        169_968_741 - 17_338_869,
        "the two parts do not add up to the file"
    );
    assert_eq!(frey.test.image(0), all.image(11));
    Ok(())
}

#[test]
fn real_olivetti_loads_and_splits_by_person() -> Result<()> {
    let Some(dir) = real_data_dir("olivetti") else {
        return Ok(());
    };
    let all = Olivetti::load_all(&dir)?;
    assert_eq!((all.len(), all.height(), all.width()), (400, 64, 64));
    assert_eq!(
        all.image(0).map(|p| p[..10].to_vec()),
        Some(vec![75, 89, 101, 107, 128, 147, 159, 164, 167, 166])
    );
    assert_eq!(pixel_sum(all.pixels()), 216_898_402);
    assert_eq!(all.image(0).map(pixel_sum), Some(631_263));
    assert_eq!(label_counts(&all), vec![10; 40]);
    assert_eq!(
        all.labels().map(|l| l[..12].to_vec()),
        Some(vec![0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1])
    );

    let faces = Olivetti::load(&dir)?;
    assert_eq!((faces.train.len(), faces.test.len()), (320, 80));
    assert_eq!(label_counts(&faces.train), vec![8; 40]);
    assert_eq!(label_counts(&faces.test), vec![2; 40]);
    assert_eq!(&faces.split.test[..6], &[7, 8, 11, 17, 23, 24]);
    assert_eq!(pixel_sum(faces.test.pixels()), 43_716_921);
    assert_eq!(
        pixel_sum(faces.train.pixels()),
        216_898_402 - 43_716_921,
        "the two parts do not add up to the files"
    );
    Ok(())
}

#[test]
fn missing_face_data_says_what_to_put_where() -> Result<()> {
    let dir = tempfile::tempdir()?;
    for result in [
        FreyFace::locate(Some(dir.path())).map(|_| ()),
        Olivetti::locate(Some(dir.path())).map(|_| ()),
        FreyFace::load(dir.path()).map(|_| ()),
        Olivetti::load(dir.path()).map(|_| ()),
    ] {
        match result {
            Err(error @ Error::DataNotFound { .. }) => {
                let message = error.to_string();
                ensure!(
                    message.contains("idx3-ubyte")
                        && message.contains(&dir.path().display().to_string()),
                    "unhelpful message: {message}"
                );
            }
            other => bail!("expected DataNotFound, got {other:?}"),
        }
    }
    Ok(())
}

#[test]
fn a_file_of_the_wrong_size_is_a_data_error() -> Result<()> {
    // A valid IDX file of 3 images of 28 × 20: a Frey file must hold 1,965.
    let dir = tempfile::tempdir()?;
    let mut bytes = 2051u32.to_be_bytes().to_vec();
    for d in [3u32, 28, 20] {
        bytes.extend_from_slice(&d.to_be_bytes());
    }
    bytes.extend(std::iter::repeat_n(7u8, 3 * 560));
    std::fs::write(dir.path().join("frey-images-idx3-ubyte"), &bytes)?;
    match FreyFace::load(dir.path()) {
        Err(Error::Data { reason, .. }) => ensure!(
            reason.contains("1965 images of 28 × 20") && reason.contains("found 3"),
            "{reason}"
        ),
        other => bail!("expected a Data error, got {other:?}"),
    }
    Ok(())
}
