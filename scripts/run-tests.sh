#!/usr/bin/env bash
# Runs the tap suite and ends with one plain summary line: "tests: N passed, N failed, N skipped".
set -uo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
npx tap --reporter=tap "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
summary=$(grep -E '^# \{ total:' "$log" | tail -n 1)
num() { sed -nE "s/.*$1: ([0-9]+).*/\1/p" <<<"$summary"; }
pass=$(num pass); fail=$(num fail); skip=$(num skip); todo=$(num todo)
if grep -qE '^\s*ok [0-9]+ .*# SKIP' "$log"; then
  echo "SKIPPED TESTS (read the reasons above):"; grep -E '# SKIP' "$log"
fi
echo "tests: ${pass:-0} passed, ${fail:-0} failed, ${skip:-0} skipped"
[ -z "$summary" ] && { echo "no test summary found: the runner did not finish"; exit 1; }
exit "$status"
