#!/usr/bin/env bash
# Run the whole test suite: unit tests, and integration tests that start the real binary
# against the simulated provider on loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# The real clients (Codex CLI, Claude Code, Python SDKs) for tests/real_clients.rs.
bash scripts/clients/install.sh
exec cargo test --locked "$@"
