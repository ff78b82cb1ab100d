# shellcheck shell=bash
# The walkthrough of examples/README.md, shared by scripts/demo-local.sh (kong-emu) and
# scripts/demo-docker.sh (Kong in docker-compose): both serve the proxy on 127.0.0.1:8000.
# Sourced, not run: defines STEPS ("title|command") and two functions.

STEPS=(
  "Allowed: the policy adds x-user: demo; the response loses X-Powered-By|curl -si http://127.0.0.1:8000/echo/hello"
  "Allowed with a body|curl -si http://127.0.0.1:8000/echo/orders -H 'content-type: application/json' -d '{\"item\":\"book\",\"qty\":2}'"
  "Response redaction: the ssn is replaced by ***|curl -si http://127.0.0.1:8000/echo/json/person"
  "Denied by the deny-admin rule|curl -si http://127.0.0.1:8000/echo/admin/users"
  "Denied by the default decision (no rule matches /echo)|curl -si http://127.0.0.1:8000/echo"
)

print_walkthrough() {
  local n=0 step
  echo "Walkthrough (expected results in examples/README.md):"
  for step in "${STEPS[@]}"; do
    n=$((n + 1))
    echo "  $n. ${step%%|*}"
    echo "     ${step#*|}"
  done
}

run_walkthrough() {
  local n=0 step
  if ! command -v curl >/dev/null; then
    echo "curl not found: cannot run the walkthrough" >&2
    return 1
  fi
  for step in "${STEPS[@]}"; do
    n=$((n + 1))
    echo
    echo "=== $n. ${step%%|*}"
    echo "\$ ${step#*|}"
    bash -c "${step#*|}" || echo "(curl exited with $?)"
    echo
  done
}
