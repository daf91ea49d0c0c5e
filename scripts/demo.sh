#!/usr/bin/env bash
# Run FluxRouter on its embedded default: the built-in simulated provider and a fresh demo
# key, printed with a ready curl line. Extra arguments go to the binary (e.g. --listen).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec cargo run --release --locked --quiet -- --demo "$@"
