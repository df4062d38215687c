#![no_main]
//! Fuzz target: see `checks::step_context`.

mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::step_context(data));
