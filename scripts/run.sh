#!/usr/bin/env bash
# The README's main command: install the fork into build/venv-demo (from this
# repository, exactly as a user's `pip install ".[standard]"` would) and serve the
# demo app on http://127.0.0.1:${PORT:-8000} until Ctrl-C.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=build/venv-demo
PORT=${PORT:-8000}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet ".[standard]"
echo "fastapi $("$VENV/bin/python" -c 'import fastapi; print(fastapi.__version__)') installed in $VENV"
echo "interactive docs: http://127.0.0.1:$PORT/docs (Ctrl-C to stop)"
exec "$VENV/bin/fastapi" run scripts/demo.py --host 127.0.0.1 --port "$PORT"
