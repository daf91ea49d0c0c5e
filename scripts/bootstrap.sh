#!/usr/bin/env bash
# Install what a fresh machine lacks to build FluxRouter: cmake (Pingora's zlib-ng build
# needs it even with rustls), a C compiler, and the CA roots rustls trusts.
set -euo pipefail
need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
# A C toolchain and make: zlib-ng, SQLite and jemalloc are built from source.
{ command -v cc >/dev/null 2>&1 && command -v make >/dev/null 2>&1; } || need+=(build-essential)
[ -e /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates)
bash "$(dirname "$0")/apt-install.sh" ${need[@]+"${need[@]}"}
if ! command -v cargo >/dev/null 2>&1; then
  echo "bootstrap: cargo not found; install the Rust toolchain (rustup) first" >&2
  exit 1
fi
