#!/usr/bin/env bash
# Runs the coverage-guided fuzz targets in fuzz/ (cargo-fuzz + libFuzzer, stable toolchain).
#
#   scripts/fuzz.sh [--seconds N | --runs N] [--merge] [TARGET ...]
#
#   --seconds N   fuzz each target for N seconds (default 60; FUZZ_SECONDS)
#   --runs N      or for N executions each (FUZZ_RUNS), e.g. 10000000
#   --merge       add the new inputs that reach new coverage to fuzz/corpus/TARGET
#                 (minimised: only inputs that add coverage are kept)
#   TARGET        some of: config request_decision response_hook url client_cert wasm
#                 (default: all)
#
# The committed corpus (fuzz/corpus/TARGET) is read, never written, unless --merge: new
# inputs go to target/fuzz-work/TARGET. The reproducers of crashes found earlier
# (fuzz/regressions/TARGET/) are replayed first. A crash stops the run and is saved in
# fuzz/artifacts/TARGET/; the script then exits 1. Each target's line in the summary
# gives libFuzzer's own count of executions and the time. See docs/fuzzing.md.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-60}"
runs="${FUZZ_RUNS:-}"
merge=0
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) seconds="$2"; runs=""; shift 2 ;;
        --runs) runs="$2"; shift 2 ;;
        --merge) merge=1; shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) targets+=("$1"); shift ;;
    esac
done
[ ${#targets[@]} -gt 0 ] || targets=(config request_decision response_hook url client_cert wasm)

scripts/install-fuzz.sh

# The wasm target drives the built filter through the emulator.
for t in "${targets[@]}"; do
    if [ "$t" = wasm ]; then
        cargo build --quiet --release -p ping-auth --target wasm32-wasip1
        export PING_AUTH_WASM="$PWD/target/wasm32-wasip1/release/ping_auth.wasm"
    fi
done

# --sanitizer none: no nightly-only flag, so the stable toolchain builds them. -O with
# --debug-assertions: optimised, with overflow checks and debug assertions on.
(cd fuzz && cargo fuzz build --sanitizer none -O --debug-assertions --fuzz-dir .)

bin_dir="fuzz/target/x86_64-unknown-linux-gnu/release"
summary=()
status=0
for t in "${targets[@]}"; do
    work="target/fuzz-work/$t"
    mkdir -p "$work" "fuzz/artifacts/$t" "fuzz/corpus/$t"
    limit=(-max_total_time="$seconds")
    [ -n "$runs" ] && limit=(-runs="$runs")
    dict=()
    [ -f "fuzz/dict/$t.dict" ] && dict=(-dict="fuzz/dict/$t.dict")
    # The project's own fixtures are seeds too (read, never written).
    seeds=()
    case "$t" in
        config) seeds=(schema/fixtures/valid schema/fixtures/invalid) ;;
        client_cert) seeds=(tests/fixtures/certs) ;;
    esac
    log="target/fuzz-work/$t.log"
    # Every crash found so far, replayed first (each file once).
    if compgen -G "fuzz/regressions/$t/*" >/dev/null; then
        if ! "$bin_dir/$t" fuzz/regressions/"$t"/* >"$log.replay" 2>&1; then
            summary+=("$t: a committed reproducer fails again (see $log.replay)")
            status=1
            continue
        fi
        echo "== $t: $(ls fuzz/regressions/"$t" | wc -l) reproducer(s) replayed"
    fi
    echo "== $t: ${limit[*]}"
    set +e
    "$bin_dir/$t" "$work" "fuzz/corpus/$t" "${seeds[@]}" "${limit[@]}" "${dict[@]}" \
        -artifact_prefix="fuzz/artifacts/$t/" -timeout=10 -rss_limit_mb=2048 -max_len=16384 \
        -print_final_stats=1 >"$log" 2>&1
    rc=$?
    set -e
    done_line=$(grep -E '^Done [0-9]+ runs in [0-9]+ second' "$log" | tail -1 || true)
    execs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}' | tail -1)
    if [ $rc -ne 0 ]; then
        status=1
        summary+=("$t: CRASH after ${execs:-?} executions (see $log and fuzz/artifacts/$t/)")
        grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" | head -5 || true
    else
        summary+=("$t: ${execs:-?} executions, 0 crashes (${done_line:-no summary line})")
    fi
    if [ $merge -eq 1 ] && [ $rc -eq 0 ]; then
        "$bin_dir/$t" -merge=1 "fuzz/corpus/$t" "$work" -max_len=2048 >"$log.merge" 2>&1 || true
    fi
done
echo "== fuzz summary"
printf '%s\n' "${summary[@]}"
exit $status
