#!/usr/bin/env bash
# The ping_auth demo without Docker: the demo Sideband policy server, the echo upstream and
# kong-emu (a local stand-in for Kong's Wasm host running dist/ping_auth.wasm), all on
# 127.0.0.1. Prints the walkthrough of examples/README.md and runs until Ctrl-C.
#
#   make build && scripts/demo-local.sh          # or: make demo-local
#   scripts/demo-local.sh --run                  # run the walkthrough's curl commands, then stop
#
# Ports: 8000 (kong-emu, the "proxy"), 9443 (sideband-server, plain HTTP), 9000 (echo-upstream).
# Logs: target/demo-local/*.log.
set -euo pipefail

cd "$(dirname "$0")/.."

RUN=0
case "${1:-}" in
  "") ;;
  --run) RUN=1 ;;
  *) echo "usage: $0 [--run]" >&2; exit 2 ;;
esac

WASM=dist/ping_auth.wasm
if [ ! -f "$WASM" ]; then
  echo "$WASM not found: run 'make build' first" >&2
  exit 1
fi

echo "Building the demo programs..."
cargo build --release --quiet -p ping-auth-harness \
  --bin sideband-server --bin echo-upstream --bin kong-emu
BIN=target/release
LOGS=target/demo-local
mkdir -p "$LOGS"

# The plugin configuration of examples/kong.yml, with the policy server on 127.0.0.1.
CONFIG=$LOGS/ping_auth.config.json
cat >"$CONFIG" <<'JSON'
{
  "service_url": "http://127.0.0.1:9443/",
  "shared_secret": "demo-secret",
  "secret_header_name": "CLIENT-TOKEN",
  "connection_timeout_ms": 5000,
  "enable_debug_logging": true,
  "enable_response_hook": true
}
JSON

PIDS=()
NAMES=()
stop_all() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start() { # name, program and arguments
  local name=$1
  shift
  "$@" >"$LOGS/$name.log" 2>&1 &
  PIDS+=("$!")
  NAMES+=("$name")
}

wait_for() { # name, pid, port
  local name=$1 pid=$2 port=$3 i
  for i in $(seq 1 100); do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "$name exited; its log ($LOGS/$name.log):" >&2
      cat "$LOGS/$name.log" >&2
      exit 1
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  echo "$name did not listen on 127.0.0.1:$port within 10 s; see $LOGS/$name.log" >&2
  exit 1
}

start sideband-server "$BIN/sideband-server" --policy examples/demo-policy.json --listen 127.0.0.1:9443
start echo-upstream "$BIN/echo-upstream" --listen 127.0.0.1:9000
wait_for sideband-server "${PIDS[0]}" 9443
wait_for echo-upstream "${PIDS[1]}" 9000
# --strip-path: Kong's default for routes (examples/kong.yml), /echo/x reaches the upstream as /x.
start kong-emu "$BIN/kong-emu" --wasm "$WASM" --listen 127.0.0.1:8000 \
  --service http://127.0.0.1:9000 --route /echo --strip-path --config "$CONFIG"
wait_for kong-emu "${PIDS[2]}" 8000

# shellcheck source=scripts/walkthrough.sh
. scripts/walkthrough.sh

echo
echo "ping_auth demo running: proxy http://127.0.0.1:8000 (route /echo)"
echo "  sideband-server http://127.0.0.1:9443 (policy examples/demo-policy.json)"
echo "  echo-upstream   http://127.0.0.1:9000"
echo "  logs            $LOGS/{kong-emu,sideband-server,echo-upstream}.log"
echo
print_walkthrough

if [ "$RUN" = 1 ]; then
  run_walkthrough
  exit $?
fi

echo
echo "Press Ctrl-C to stop."
while true; do
  for i in "${!PIDS[@]}"; do
    if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
      echo "${NAMES[$i]} stopped; its log: $LOGS/${NAMES[$i]}.log" >&2
      exit 1
    fi
  done
  sleep 1
done
