#!/usr/bin/env bash
# The test command (make test, .ci/run): all tests, slow ones included; exit code 5 (no tests
# collected) is a failure here, since this suite always has tests.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${VENV:-.venv}/bin
export PYTHONUNBUFFERED=1
"$BIN/python" -m pytest -ra --durations=15 "$@" tests
code=$?
if [ "$code" -eq 5 ]; then
  echo "pytest collected no tests: that is an error for this suite" >&2
  exit 1
fi
exit "$code"
