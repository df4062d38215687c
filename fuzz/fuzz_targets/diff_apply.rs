#![no_main]
//! Fuzz target: see `checks::diff_apply`.

mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::diff_apply(data));
