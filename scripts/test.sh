#!/usr/bin/env bash
# The fork's whole test run: the README's test command, and what CI runs.
#
# 1. Two fresh venvs from the registries: the fork, installed from this repository
#    with `pip install ".[all,standard]"` (no editable install, no source folder on
#    the path), and pristine upstream from the pinned sdist, each with
#    requirements-tests.txt.
# 2. The series check (scripts/fork.py check).
# 3. Upstream's complete suite (tests/ and scripts/tests/, its docs_src/ and pytest
#    settings) on pristine upstream, then upstream's suite together with ours on the
#    fork, both under coverage, run from folders that hold no fastapi/ source.
# 4. Our tooling's own tests (scripts/tests/).
# 5. Lint as upstream's scripts/lint.sh does, on the assembled package (mypy, ruff
#    check, ruff format --check), and on our tooling.
# 6. The benchmark in quick mode: it runs and writes its table (no timing asserted).
# 7. Coverage: every line of our new modules and of our patches is run, and the
#    package total is not below pristine upstream's.
#
# Extra arguments go to both pytest runs (e.g. -x, or -k to narrow them down).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
BUILD=build/test
START=$(date +%s)
rm -rf "$BUILD"
mkdir -p "$BUILD"

step() { printf '\n=== %s (%ss)\n' "$1" "$(($(date +%s) - START))"; }

step "environments"
"$PYTHON" -m venv "$BUILD/venv-fork"
"$PYTHON" -m venv "$BUILD/venv-upstream"
FORK_PY=$PWD/$BUILD/venv-fork/bin/python
UPSTREAM_PY=$PWD/$BUILD/venv-upstream/bin/python
"$FORK_PY" -m pip install --quiet -r requirements-tests.txt ".[all,standard]"
"$FORK_PY" -m pip check
SDIST=$("$FORK_PY" scripts/fork.py upstream-sdist)
"$UPSTREAM_PY" -m pip install --quiet -r requirements-tests.txt "fastapi[all,standard] @ file://$SDIST"
"$UPSTREAM_PY" -m pip check
"$BUILD/venv-fork/bin/fastapi" --version
"$FORK_PY" - <<'EOF'
import importlib.metadata, re, fastapi
version = importlib.metadata.version("fastapi")
assert re.fullmatch(r"0\.165\.0\+lifespan\.\d+", version), version
assert fastapi.__version__ == version, (fastapi.__version__, version)
assert "site-packages" in fastapi.__file__, fastapi.__file__
print(f"installed fork: fastapi {version}")
EOF

step "series check"
"$FORK_PY" scripts/fork.py check

step "test folders"
"$FORK_PY" scripts/fork.py testdir "$BUILD/upstream" --pristine
"$FORK_PY" scripts/fork.py testdir "$BUILD/fork"

run_suite() { # run_suite NAME PYTHON [pytest args...]
    local name=$1 python=$2
    shift 2
    (
        cd "$BUILD/$name"
        export PYTHONPATH=./docs_src
        "$python" -m coverage erase
        set +e
        "$python" -m pytest -n auto --dist loadgroup tests scripts/tests/ \
            --cov --cov-report= -p no:sugar -q -rsx "$@" 2>&1 | tee pytest.log
        status=${PIPESTATUS[0]}
        set -e
        "$python" -m coverage combine --quiet || true
        exit "$status"
    )
}

step "upstream's suite on pristine upstream $(basename "$SDIST")"
run_suite upstream "$UPSTREAM_PY" "$@"

step "upstream's suite and ours on the fork"
run_suite fork "$FORK_PY" "$@"

step "tooling tests"
"$BUILD/venv-fork/bin/pytest" -q -p no:sugar -p no:cacheprovider scripts/tests

step "lint (upstream's scripts/lint.sh on the assembled package; our tooling)"
(
    cd "$BUILD/fork-src"
    "$FORK_PY" -m mypy fastapi
    "$FORK_PY" -m ruff check fastapi tests docs_src scripts
    "$FORK_PY" -m ruff format fastapi tests --check
)
"$FORK_PY" -m ruff check scripts
"$FORK_PY" -m ruff format scripts --check
"$FORK_PY" -m mypy

step "benchmark, quick mode (runs and writes its table; timings not asserted)"
"$FORK_PY" scripts/benchmark.py --quick --fork-python "$FORK_PY" \
    --upstream-python "$UPSTREAM_PY" --output "$BUILD/bench"
grep -q "^## 3. Scale" "$BUILD/bench/results.md"
test -s "$BUILD/bench/results.png"

step "coverage"
"$FORK_PY" scripts/fork.py coverage "$BUILD/fork/coverage/.coverage" \
    --baseline "$BUILD/upstream/coverage/.coverage"

step "summary"
for name in upstream fork; do
    echo "$name: $(grep -E '^[0-9]+ (passed|failed)' "$BUILD/$name/pytest.log" | tail -1)"
done
echo "total wall time: $(($(date +%s) - START))s"
