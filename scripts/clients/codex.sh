#!/usr/bin/env bash
# Run one non-interactive Codex CLI turn against a FluxRouter base URL, offline.
#
#   codex.sh --base-url http://127.0.0.1:PORT/v1 --key sk-... --dir DIR [--model flux-auto]
#            [--ca CA.pem] [--timeout SECONDS] PROMPT
#
# Writes the offline config of shared/reference/clients/README.md to DIR/codex-home/config.toml
# (DIR must not be under /tmp: Codex refuses to create its helper binaries there), runs
# `codex exec --json` in DIR/work under a minimal environment (env -i) and prints its JSONL
# events on stdout. Exit status is Codex's (124 on timeout). With --ca, Codex trusts that CA
# file for an https:// base URL (CODEX_CA_CERTIFICATE; Codex also reads SSL_CERT_FILE).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
CODEX="${FLUX_CODEX:-$HERE/../../.clients/npm/node_modules/.bin/codex}"

base_url="" key="" dir="" model="flux-auto" timeout_s=120 ca=""
while [ $# -gt 0 ]; do
    case "$1" in
        --base-url) base_url="$2"; shift 2 ;;
        --key) key="$2"; shift 2 ;;
        --dir) dir="$2"; shift 2 ;;
        --model) model="$2"; shift 2 ;;
        --ca) ca="$2"; shift 2 ;;
        --timeout) timeout_s="$2"; shift 2 ;;
        --) shift; break ;;
        -*) echo "codex.sh: unknown option $1" >&2; exit 2 ;;
        *) break ;;
    esac
done
[ $# -eq 1 ] && [ -n "$base_url" ] && [ -n "$key" ] && [ -n "$dir" ] || {
    echo "usage: codex.sh --base-url URL --key KEY --dir DIR [--model M] [--ca CA.pem] [--timeout S] PROMPT" >&2
    exit 2
}
prompt="$1"
[ -x "$CODEX" ] || { echo "codex.sh: $CODEX missing; run scripts/clients/install.sh" >&2; exit 3; }

mkdir -p "$dir/codex-home" "$dir/home" "$dir/work"
dir="$(cd "$dir" && pwd)"
cat >"$dir/codex-home/config.toml" <<TOML
model = "$model"
model_provider = "flux"
check_for_update_on_startup = false

[analytics]
enabled = false

[features]
plugins = false
remote_plugin = false
apps = false

[model_providers.flux]
name = "FluxRouter"
base_url = "$base_url"
env_key = "FLUX_KEY"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0
TOML

ca_env=()
if [ -n "$ca" ]; then
    ca_env=("CODEX_CA_CERTIFICATE=$(cd "$(dirname "$ca")" && pwd)/$(basename "$ca")")
fi

cd "$dir/work"
exec env -i \
    PATH="/usr/local/bin:/usr/bin:/bin" \
    HOME="$dir/home" \
    LANG=C.UTF-8 \
    CODEX_HOME="$dir/codex-home" \
    FLUX_KEY="$key" \
    ${ca_env[@]+"${ca_env[@]}"} \
    timeout --kill-after=5 "$timeout_s" \
    "$CODEX" exec --skip-git-repo-check --ephemeral --sandbox read-only --color never \
        --strict-config --json "$prompt" </dev/null
