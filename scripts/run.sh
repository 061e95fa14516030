#!/usr/bin/env bash
# The README's main command: install the fork into build/venv-demo (from this
# repository, exactly as a user's `pip install ".[standard]"` would) and serve the
# demo (scripts/demo.py) on http://127.0.0.1:${PORT:-8000} until Ctrl-C.
# DATABASE_URL=postgresql+psycopg://user:password@host/db uses PostgreSQL instead of
# the SQLite file build/demo.db.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=build/venv-demo
PORT=${PORT:-8000}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
extra=()
case "${DATABASE_URL:-}" in
    postgresql*) extra=("psycopg[binary]==3.3.9") ;;
esac
"$VENV/bin/python" -m pip install --quiet ".[standard]" "SQLAlchemy==2.1.9" "${extra[@]}"
mkdir -p build
echo "fastapi $("$VENV/bin/python" -c 'import fastapi; print(fastapi.__version__)') installed in $VENV"
echo "interactive docs: http://127.0.0.1:$PORT/docs (Ctrl-C to stop)"
exec "$VENV/bin/uvicorn" --app-dir scripts demo:app --host 127.0.0.1 --port "$PORT"
