//! The IDX reader on arbitrary bytes (see `candle_vae_fuzz::idx`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    candle_vae_fuzz::idx(data);
});
