#!/usr/bin/env bash
# Install Debian packages with apt-get (with sudo unless root), quietly; nothing to do
# without arguments. Used by bootstrap.sh and test.sh for what a fresh machine lacks.
set -euo pipefail
[ $# -gt 0 ] || exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo=sudo
echo "installing $* (apt-get)" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
