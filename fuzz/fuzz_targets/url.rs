//! URL, query and path normalisation: see `ping_auth_fuzz::urls`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ping_auth_fuzz::urls(data));
