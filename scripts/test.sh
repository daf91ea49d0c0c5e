#!/usr/bin/env bash
# Run the whole test suite: unit tests, and integration tests that start the real binary
# against the simulated provider on loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec cargo test --locked "$@"
