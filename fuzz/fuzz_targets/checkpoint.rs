//! Checkpoint load → restore → resume on arbitrary bytes (see
//! `candle_vae_fuzz::checkpoint`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    candle_vae_fuzz::checkpoint(data);
});
