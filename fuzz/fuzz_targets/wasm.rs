//! The built `.wasm` through the emulator with arbitrary requests and answers:
//! see `ping_auth_fuzz::wasm`. Needs `target/wasm32-wasip1/release/ping_auth.wasm`
//! (or `PING_AUTH_WASM`); `scripts/fuzz.sh` builds it.
#![no_main]
libfuzzer_sys::fuzz_target!(|story: ping_auth_fuzz::wasm::WasmStory| {
    ping_auth_fuzz::wasm::run(&story);
});
