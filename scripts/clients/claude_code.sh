#!/usr/bin/env bash
# Run one non-interactive Claude Code turn (`claude -p`) against a FluxRouter base URL, offline.
#
#   claude_code.sh --base-url http://127.0.0.1:PORT/anthropic --key sk-... --dir DIR
#                  [--auth x-api-key|bearer] [--model flux-auto] [--small-model flux-fast]
#                  [--allowed-tools "Read Bash(echo:*)"] [--ca CA.pem] [--max-retries N] [--timeout SECONDS]
#                  PROMPT
#
# Runs under `env -i` with the settings of shared/reference/clients/README.md: a fresh HOME and
# CLAUDE_CONFIG_DIR under DIR, every DISABLE_* variable that stops outside traffic, and the key
# as ANTHROPIC_API_KEY (sent as x-api-key) or ANTHROPIC_AUTH_TOKEN (sent as Bearer). The
# working directory is DIR/work. Prints Claude Code's JSON result on stdout; exit status is
# Claude Code's (124 on timeout). With --ca, Claude Code trusts that CA file besides its
# built-in roots for an https:// base URL (NODE_EXTRA_CA_CERTS, as for any Node program).
# --max-retries sets CLAUDE_CODE_MAX_RETRIES (Claude Code's own default retries for minutes).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
CLAUDE="${FLUX_CLAUDE:-$HERE/../../.clients/npm/node_modules/.bin/claude}"

base_url="" key="" dir="" auth="x-api-key" model="flux-auto" small="flux-fast" tools="" timeout_s=120 ca="" retries=""
while [ $# -gt 0 ]; do
    case "$1" in
        --base-url) base_url="$2"; shift 2 ;;
        --key) key="$2"; shift 2 ;;
        --dir) dir="$2"; shift 2 ;;
        --auth) auth="$2"; shift 2 ;;
        --model) model="$2"; shift 2 ;;
        --small-model) small="$2"; shift 2 ;;
        --allowed-tools) tools="$2"; shift 2 ;;
        --ca) ca="$2"; shift 2 ;;
        --max-retries) retries="$2"; shift 2 ;;
        --timeout) timeout_s="$2"; shift 2 ;;
        --) shift; break ;;
        -*) echo "claude_code.sh: unknown option $1" >&2; exit 2 ;;
        *) break ;;
    esac
done
[ $# -eq 1 ] && [ -n "$base_url" ] && [ -n "$key" ] && [ -n "$dir" ] || {
    echo "usage: claude_code.sh --base-url URL --key KEY --dir DIR [--auth x-api-key|bearer] [--allowed-tools T] [--ca CA.pem] [--max-retries N] [--timeout S] PROMPT" >&2
    exit 2
}
prompt="$1"
case "$auth" in
    x-api-key) key_var=ANTHROPIC_API_KEY ;;
    bearer) key_var=ANTHROPIC_AUTH_TOKEN ;;
    *) echo "claude_code.sh: --auth must be x-api-key or bearer" >&2; exit 2 ;;
esac
[ -x "$CLAUDE" ] || { echo "claude_code.sh: $CLAUDE missing; run scripts/clients/install.sh" >&2; exit 3; }

mkdir -p "$dir/home" "$dir/claude-config" "$dir/work"
dir="$(cd "$dir" && pwd)"
args=(-p "$prompt" --model "$model" --output-format json)
[ -n "$tools" ] && args+=(--allowedTools "$tools")

extra_env=()
if [ -n "$ca" ]; then
    extra_env=("NODE_EXTRA_CA_CERTS=$(cd "$(dirname "$ca")" && pwd)/$(basename "$ca")")
fi
if [ -n "$retries" ]; then
    extra_env+=("CLAUDE_CODE_MAX_RETRIES=$retries")
fi

cd "$dir/work"
exec env -i \
    PATH="/usr/local/bin:/usr/bin:/bin" \
    HOME="$dir/home" \
    LANG=C.UTF-8 \
    CLAUDE_CONFIG_DIR="$dir/claude-config" \
    ANTHROPIC_BASE_URL="$base_url" \
    "$key_var=$key" \
    ANTHROPIC_MODEL="$model" \
    ANTHROPIC_DEFAULT_SONNET_MODEL="$model" \
    ANTHROPIC_DEFAULT_OPUS_MODEL="$model" \
    ANTHROPIC_DEFAULT_HAIKU_MODEL="$small" \
    ANTHROPIC_SMALL_FAST_MODEL="$small" \
    DISABLE_TELEMETRY=1 \
    DISABLE_ERROR_REPORTING=1 \
    DISABLE_AUTOUPDATER=1 \
    DISABLE_BUG_COMMAND=1 \
    CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 \
    DISABLE_NON_ESSENTIAL_MODEL_CALLS=1 \
    CLAUDE_CODE_DISABLE_FEEDBACK_SURVEY=1 \
    API_TIMEOUT_MS=60000 \
    ${extra_env[@]+"${extra_env[@]}"} \
    timeout --kill-after=5 "$timeout_s" \
    "$CLAUDE" "${args[@]}" </dev/null
