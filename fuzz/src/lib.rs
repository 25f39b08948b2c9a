//! The bodies of the fuzz targets, and the seeds they start from.
//!
//! `fuzz_targets/*.rs` call these functions under libFuzzer (`cargo +nightly fuzz run …`);
//! the main crate's `tests/fuzz_corpus.rs` includes this file as a module and runs the
//! same bodies over the committed seeds (`fuzz/seeds/<target>/`) and deterministic
//! mutations of them, so the targets build and run on stable in CI and cannot rot.
//!
//! Each body takes arbitrary bytes and must not panic: a malformed input is a typed
//! error. On success it checks what success promises, and on failure that nothing was
//! changed. It returns whether the input was accepted all the way (every seed is).

use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_vae::data::{ImageDataset, idx};
use candle_vae::train::TrainingState;
use candle_vae::{
    Adam, AdamConfig, Checkpoint, MlpDecoder, MlpDecoderConfig, MlpEncoder, MlpEncoderConfig,
    ParamStore,
};

/// The IDX reader on `data`, as an image file and as a label file: an accepted file's
/// values number the product of its dimensions, and an image file is a dataset.
pub fn idx(data: &[u8]) -> bool {
    let name = Path::new("fuzz-input");
    let mut accepted = false;
    for magic in [idx::IMAGES_MAGIC, idx::LABELS_MAGIC] {
        let Ok(array) = idx::parse_bytes(data, magic, name) else {
            continue;
        };
        assert_eq!(array.dims.len(), (magic & 0xff) as usize, "rank");
        assert_eq!(
            array.data.len(),
            array.dims.iter().product::<usize>(),
            "values of {:?}",
            array.dims
        );
        if magic == idx::IMAGES_MAGIC {
            let (count, height, width) = (array.dims[0], array.dims[1], array.dims[2]);
            let images = ImageDataset::new(array.data, height, width, None)
                .expect("an accepted image file is a dataset");
            assert_eq!(images.len(), count, "image count");
        }
        accepted = true;
    }
    accepted
}

/// The model every checkpoint input is restored into: a 6-4-2 MLP VAE, tensors
/// `enc.fc1`, `enc.fc21`, `enc.fc22`, `dec.fc3`, `dec.fc4` (weights and biases).
pub fn fixture() -> ParamStore {
    let store = ParamStore::new(0);
    let vb = store.var_builder(DType::F32, &Device::Cpu);
    MlpEncoder::new(&MlpEncoderConfig::new(6, &[4], 2), vb.pp("enc")).expect("fixture encoder");
    MlpDecoder::new(&MlpDecoderConfig::new(2, &[4], 6), vb.pp("dec")).expect("fixture decoder");
    store
}

/// Every parameter's values as bits, by name (NaN equal to itself).
fn bits(store: &ParamStore) -> Vec<(String, Vec<u32>)> {
    store
        .named_vars()
        .expect("store lock")
        .into_iter()
        .map(|(name, var)| (name, tensor_bits(var.as_tensor())))
        .collect()
}

fn tensor_bits(tensor: &Tensor) -> Vec<u32> {
    tensor
        .to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .expect("readable tensor")
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

/// A file of this process and thread for the bodies that need a path.
fn scratch(tag: &str) -> PathBuf {
    let thread = format!("{:?}", std::thread::current().id());
    let thread: String = thread.chars().filter(char::is_ascii_digit).collect();
    std::env::temp_dir().join(format!(
        "candle-vae-fuzz-{tag}-{}-{thread}.safetensors",
        std::process::id()
    ))
}

/// A checkpoint from `data`: loaded, restored into [`fixture`] (all or nothing: an
/// accepted restore sets every parameter to the file's values, a refused one changes
/// none), then resumed as a training run (`TrainingState::resume`, a `String` config),
/// which also changes nothing unless it succeeds. Accepted all the way: restored, and
/// resumed unless the file holds no training state.
pub fn checkpoint(data: &[u8]) -> bool {
    let device = Device::Cpu;
    let Ok(loaded) = Checkpoint::from_bytes(data, "fuzz-input", &device) else {
        return false;
    };
    let store = fixture();
    let before = bits(&store);
    let restored = match loaded.restore(&store) {
        Ok(()) => {
            for (name, values) in bits(&store) {
                let saved = loaded
                    .tensor(&name)
                    .expect("a restored tensor is in the file");
                assert_eq!(values, tensor_bits(saved), "restored `{name}`");
            }
            true
        }
        Err(_) => {
            assert_eq!(bits(&store), before, "a failed restore changed the store");
            false
        }
    };

    let path = scratch("resume");
    std::fs::write(&path, data).expect("scratch file");
    let store = fixture();
    let mut adam = Adam::from_store(&store, AdamConfig::default()).expect("optimiser");
    let before = bits(&store);
    let resumed = TrainingState::resume::<String, _, _>(&path, &device, &store, &mut adam);
    let _ = std::fs::remove_file(&path);
    match resumed {
        Ok(_) => {
            assert!(restored, "a resume succeeded where the restore failed");
            for (name, values) in bits(&store) {
                let saved = loaded
                    .tensor(&name)
                    .expect("a resumed tensor is in the file");
                assert_eq!(values, tensor_bits(saved), "resumed `{name}`");
            }
            true
        }
        Err(_) => {
            assert_eq!(bits(&store), before, "a failed resume changed the store");
            // A model-only file is accepted all the way once restored.
            restored && loaded.metadata(candle_vae::train::STATE_KEY).is_none()
        }
    }
}

/// An IDX file: `magic`, the dimensions, the values.
fn idx_file(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut bytes = magic.to_be_bytes().to_vec();
    for d in dims {
        bytes.extend_from_slice(&d.to_be_bytes());
    }
    bytes.extend_from_slice(data);
    bytes
}

/// The seeds of the `idx` target, by file name: small valid files of both kinds, plain
/// and gzipped.
pub fn idx_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let images = idx_file(idx::IMAGES_MAGIC, &[3, 2, 3], &(0..18).collect::<Vec<u8>>());
    let labels = idx_file(idx::LABELS_MAGIC, &[3], &[7, 0, 9]);
    let empty = idx_file(idx::IMAGES_MAGIC, &[0, 28, 28], &[]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&images).expect("gzip in memory");
    let gzipped = gz.finish().expect("gzip in memory");
    vec![
        ("images-3x2x3", images),
        ("images-3x2x3.gz", gzipped),
        ("images-0x28x28", empty),
        ("labels-3", labels),
    ]
}

/// The seeds of the `checkpoint` target, by file name: the fixture's parameters alone,
/// and a whole training checkpoint (parameters, Adam's moments after one step, the
/// training state, config `"fuzz-seed"`).
pub fn checkpoint_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let store = fixture();
    let params = scratch("seed-params");
    Checkpoint::from_params(&store)
        .and_then(|c| c.save(&params))
        .expect("seed checkpoint");
    let mut adam = Adam::from_store(&store, AdamConfig::new(1e-2)).expect("optimiser");
    let loss = store
        .vars()
        .expect("store lock")
        .iter()
        .map(|v| v.as_tensor().sqr().and_then(|t| t.sum_all()))
        .reduce(|a, b| a.and_then(|a| b.and_then(|b| a + b)))
        .expect("parameters")
        .expect("loss");
    adam.backward_step(&loss).expect("one step");
    let mut state = TrainingState::new(3);
    state.epoch = 1;
    state.step = 1;
    let full = scratch("seed-state");
    state
        .save(&full, &store, &adam, "fuzz-seed")
        .expect("seed training checkpoint");
    let read = |path: &Path| {
        let bytes = std::fs::read(path).expect("seed file");
        let _ = std::fs::remove_file(path);
        bytes
    };
    vec![("params", read(&params)), ("training-state", read(&full))]
}
