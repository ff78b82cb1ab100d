//! `on_configure` input: see `ping_auth_fuzz::configuration`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ping_auth_fuzz::configuration(data));
