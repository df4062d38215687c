#![no_main]
//! Fuzz target: see `checks::actions_toml`.

mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::actions_toml(data));
