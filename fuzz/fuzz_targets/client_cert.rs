//! Client-certificate PEM → JWK: see `ping_auth_fuzz::client_certificate`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ping_auth_fuzz::client_certificate(data));
