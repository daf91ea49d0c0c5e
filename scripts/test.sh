#!/usr/bin/env bash
# Run the whole test suite: unit tests, and integration tests that start the real binary
# against the simulated provider on loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# Fleet mode's tests (tests/fleet.rs) start their own redis-server on loopback ports; the
# console's browser tests (tests/console.rs) drive Debian's headless Chromium with chromedriver.
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium chromium-driver)
bash scripts/apt-install.sh ${need[@]+"${need[@]}"}
# The real clients (Codex CLI, Claude Code, Python SDKs) for tests/real_clients.rs.
bash scripts/clients/install.sh
cargo test --locked "$@"
# The per-stage clock's own tests exist only in builds with its feature (benches/load.sh
# STAGES=1 uses it); the library alone is rebuilt for them.
if [ $# -eq 0 ]; then
  cargo test --locked --lib --features stage-timing stages
fi
