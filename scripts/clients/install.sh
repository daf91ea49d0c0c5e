#!/usr/bin/env bash
# Install the real clients that tests/real_clients.rs drives, into the git-ignored folder
# .clients/ at the repo root:
#   .clients/npm/   npm packages @openai/codex and @anthropic-ai/claude-code (with their native
#                   binaries, which come from the packages' optionalDependencies)
#   .clients/venv/  a Python venv with the openai and anthropic SDKs, and h2 (which their HTTP
#                   client, httpx2, needs for http2=True)
# Idempotent: what is already there at the right version is kept, so a re-run takes a second.
# Needs node/npm and python3; installs python3-venv with apt when venv cannot be created.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD/.clients"

CODEX_VERSION=0.169.0
CLAUDE_VERSION=2.1.330
OPENAI_PY_VERSION=3.54.0
ANTHROPIC_PY_VERSION=2.12.0
H2_PY_VERSION=4.4.1

NPM_DIR="$ROOT/npm"
VENV="$ROOT/venv"
CODEX="$NPM_DIR/node_modules/.bin/codex"
CLAUDE="$NPM_DIR/node_modules/.bin/claude"
CLAUDE_PKG="$NPM_DIR/node_modules/@anthropic-ai/claude-code"

mkdir -p "$ROOT"

have_codex() {
    [ -x "$CODEX" ] && "$CODEX" --version 2>/dev/null | grep -qx "codex-cli $CODEX_VERSION"
}
have_claude() {
    [ -x "$CLAUDE" ] && "$CLAUDE" --version 2>/dev/null | grep -q "^$CLAUDE_VERSION (Claude Code)"
}

# --- npm clients ---------------------------------------------------------------------------
if have_codex && have_claude; then
    echo "clients: codex $CODEX_VERSION and claude $CLAUDE_VERSION already installed"
else
    command -v npm >/dev/null || { echo "clients: npm not found (node 20+ is needed)" >&2; exit 1; }
    mkdir -p "$NPM_DIR"
    [ -f "$NPM_DIR/package.json" ] || echo '{"name":"fluxrouter-clients","private":true}' >"$NPM_DIR/package.json"
    echo "clients: npm install @openai/codex@$CODEX_VERSION @anthropic-ai/claude-code@$CLAUDE_VERSION (about 800 MB of native binaries)"
    # --include=optional: the native binaries are optional dependencies and must come along.
    npm install --prefix "$NPM_DIR" --no-audit --no-fund --include=optional --save-exact \
        "@openai/codex@$CODEX_VERSION" "@anthropic-ai/claude-code@$CLAUDE_VERSION"
    if ! have_claude && [ -f "$CLAUDE_PKG/install.cjs" ]; then
        # The postinstall copies the native binary over bin/claude.exe; npm may skip it.
        echo "clients: running claude-code's install.cjs by hand"
        (cd "$CLAUDE_PKG" && node install.cjs)
    fi
    have_codex || { echo "clients: codex $CODEX_VERSION did not install: $("$CODEX" --version 2>&1 || true)" >&2; exit 1; }
    have_claude || { echo "clients: claude $CLAUDE_VERSION did not install: $("$CLAUDE" --version 2>&1 || true)" >&2; exit 1; }
fi

# --- Python SDKs ---------------------------------------------------------------------------
have_sdks() {
    [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - <<PY 2>/dev/null
import openai, anthropic, h2
assert openai.__version__ == "$OPENAI_PY_VERSION", openai.__version__
assert anthropic.__version__ == "$ANTHROPIC_PY_VERSION", anthropic.__version__
assert h2.__version__ == "$H2_PY_VERSION", h2.__version__
PY
}
if have_sdks; then
    echo "clients: openai $OPENAI_PY_VERSION, anthropic $ANTHROPIC_PY_VERSION and h2 $H2_PY_VERSION already installed"
else
    PY="$(command -v python3)" || { echo "clients: python3 not found" >&2; exit 1; }
    if [ ! -x "$VENV/bin/python" ]; then
        if ! "$PY" -m venv "$VENV" 2>/dev/null; then
            # Debian's python3 has no ensurepip without python3-venv.
            rm -rf "$VENV"
            echo "clients: installing python3-venv with apt"
            sudo=""
            [ "$(id -u)" -eq 0 ] || sudo=sudo
            $sudo apt-get update -qq
            DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
            "$PY" -m venv "$VENV"
        fi
    fi
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "openai==$OPENAI_PY_VERSION" "anthropic==$ANTHROPIC_PY_VERSION" "h2==$H2_PY_VERSION"
    have_sdks || { echo "clients: the Python SDKs did not install" >&2; exit 1; }
fi

echo "clients: codex  $CODEX"
echo "clients: claude $CLAUDE"
echo "clients: python $VENV/bin/python (openai $OPENAI_PY_VERSION, anthropic $ANTHROPIC_PY_VERSION, h2 $H2_PY_VERSION)"
