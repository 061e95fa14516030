#!/usr/bin/env bash
# The README's main command: install the fork into build/venv-demo (from this
# repository, exactly as a user's `pip install ".[standard]"` would) and serve the
# demo (scripts/demo.py) on http://127.0.0.1:${PORT:-8000} until Ctrl-C.
# DATABASE_URL=postgresql+psycopg://user:password@host/db uses PostgreSQL instead of
# the SQLite file build/demo.db.
# The install is skipped when nothing it depends on changed since the last one:
# build/venv-demo/fork-build-inputs holds a digest of the build's inputs
# (scripts/fork.py build-inputs) and of the requirements.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# Upstream fastapi 0.165.0 supports Python 3.11 and newer: say so before anything.
if ! found=$("$PYTHON" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3]); sys.exit(sys.version_info < (3, 11))' 2>/dev/null); then
    [ -n "$found" ] && found="is Python $found" || found="was not found or did not run"
    echo "scripts/run.sh: fastapi 0.165.0 needs Python 3.11 or newer, but PYTHON=$PYTHON $found; run it with PYTHON=/path/to/python3.11 (or newer)." >&2
    exit 2
fi
VENV=build/venv-demo
STAMP=$VENV/fork-build-inputs
PORT=${PORT:-8000}
requirements=(".[standard]" "SQLAlchemy==2.1.9")
case "${DATABASE_URL:-}" in
    postgresql*) requirements+=("psycopg[binary]==3.3.9") ;;
esac
inputs=$("$PYTHON" scripts/fork.py build-inputs -- "${requirements[@]}")
if [ -x "$VENV/bin/python" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$inputs" ]; then
    echo "$VENV is up to date (no change to the fork's build inputs or the requirements since it was installed)"
else
    if [ ! -x "$VENV/bin/python" ]; then
        echo "creating $VENV with $("$PYTHON" --version 2>&1)"
        "$PYTHON" -m venv "$VENV"
    fi
    echo "installing into $VENV: pip install ${requirements[*]}"
    echo "(the build fetches upstream fastapi 0.165.0, applies the patches and builds the wheel; about half a minute the first time; later starts skip it until something changes)"
    rm -f "$STAMP"
    began=$(date +%s)
    "$VENV/bin/python" -m pip install --quiet "${requirements[@]}"
    echo "$inputs" >"$STAMP"
    echo "installed in $(($(date +%s) - began)) s"
fi
mkdir -p build
echo "fastapi $("$VENV/bin/python" -c 'import fastapi; print(fastapi.__version__)') installed in $VENV"
echo "interactive docs: http://127.0.0.1:$PORT/docs (Ctrl-C to stop)"
exec "$VENV/bin/uvicorn" --app-dir scripts demo:app --host 127.0.0.1 --port "$PORT"
