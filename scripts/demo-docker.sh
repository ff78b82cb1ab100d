#!/usr/bin/env bash
# The ping_auth demo with Kong 3.9.3 in docker-compose (examples/docker-compose.yml): starts
# the policy server, the echo upstream and Kong in the background, waits until Kong is ready,
# then prints the walkthrough of examples/README.md.
#
#   make build && scripts/demo-docker.sh         # or: make demo
#   scripts/demo-docker.sh --run                 # also run the walkthrough's curl commands
#   docker-compose -f examples/docker-compose.yml down    # or: make demo-down
#
# Ready means Kong's status endpoint GET /status/ready answers 200 (published on
# 127.0.0.1:8100): the declarative kong.yml is loaded and the router and plugins are built.
# Environment: COMPOSE (default docker-compose), DEMO_WAIT_SECONDS (default 180).
set -euo pipefail

cd "$(dirname "$0")/.."

RUN=0
case "${1:-}" in
  "") ;;
  --run) RUN=1 ;;
  *) echo "usage: $0 [--run]" >&2; exit 2 ;;
esac

COMPOSE=${COMPOSE:-docker-compose}
FILE=examples/docker-compose.yml
WAIT=${DEMO_WAIT_SECONDS:-180}
READY=http://127.0.0.1:8100/status/ready

for f in dist/ping_auth.wasm dist/ping_auth.meta.json; do
  if [ ! -f "$f" ]; then
    echo "$f not found: run 'make build' first" >&2
    exit 1
  fi
done
if ! command -v curl >/dev/null; then
  echo "curl not found: needed to wait for Kong's status endpoint" >&2
  exit 1
fi

# BuildKit (default in Compose v2; opted into here for docker-compose v1) reads
# examples/Dockerfile.dockerignore, which keeps target/ out of the build context.
# Kong starts once the two helper services report healthy (depends_on in the compose file).
COMPOSE_DOCKER_CLI_BUILD=1 DOCKER_BUILDKIT=1 $COMPOSE -f "$FILE" up -d --build

echo "Waiting up to ${WAIT}s for Kong ($READY)..."
deadline=$((SECONDS + WAIT))
until curl -fsS -o /dev/null --max-time 2 "$READY" 2>/dev/null; do
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "Kong was not ready within ${WAIT}s. Its last log lines:" >&2
    $COMPOSE -f "$FILE" ps >&2 || true
    $COMPOSE -f "$FILE" logs --tail=50 kong >&2 || true
    exit 1
  fi
  sleep 2
done

# shellcheck source=scripts/walkthrough.sh
. scripts/walkthrough.sh

echo
echo "ping_auth demo running (Kong 3.9.3): proxy http://127.0.0.1:8000 (route /echo)"
echo "  Admin API       http://127.0.0.1:8001 (curl -s localhost:8001/routes/echo/plugins)"
echo "  sideband-server http://127.0.0.1:9443 (policy examples/demo-policy.json)"
echo "  echo-upstream   http://127.0.0.1:9000"
echo "  logs            $COMPOSE -f $FILE logs -f"
echo "  stop            $COMPOSE -f $FILE down   (or: make demo-down)"
echo
print_walkthrough

if [ "$RUN" = 1 ]; then
  run_walkthrough
fi
