//! A client request and the policy server's replies, response hook off: see
//! `ping_auth_fuzz::request_decision`.
#![no_main]
libfuzzer_sys::fuzz_target!(|story: ping_auth_fuzz::Story| {
    ping_auth_fuzz::request_decision(&story);
});
