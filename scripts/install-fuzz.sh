#!/usr/bin/env bash
# Installs cargo-fuzz (from crates.io) if it is missing. It runs on the stable toolchain
# with `--sanitizer none`; libFuzzer itself is built from source by the libfuzzer-sys
# crate (a C++ compiler is needed: g++ on Debian).
set -euo pipefail
want="0.13.2"
if cargo fuzz --version 2>/dev/null | grep -q "$want"; then exit 0; fi
echo "installing cargo-fuzz $want"
cargo install --quiet --locked cargo-fuzz --version "$want"
