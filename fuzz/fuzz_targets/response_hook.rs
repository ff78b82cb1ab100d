//! A client request, the upstream's and the policy server's replies, response
//! hook on: see `ping_auth_fuzz::response_hook`.
#![no_main]
libfuzzer_sys::fuzz_target!(|story: ping_auth_fuzz::Story| {
    ping_auth_fuzz::response_hook(&story);
});
