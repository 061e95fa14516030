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
# 4. Our tooling's own tests (scripts/tests/), among them the install test: the fork
#    installed from a fresh clone with empty caches by the newest pip, build and uv.
# 5. The upstream pull request check (scripts/fork.py pr-check): each commit of the
#    PR, in order on pristine upstream, imports, passes upstream's lint (ty: no new
#    diagnostic) and the tests it adds or changes; the last one passes upstream's
#    whole suite with the PR's tests, upstream's settings and its coverage rule,
#    without the packages upstream's tests don't install.
# 6. Lint as upstream's scripts/lint.sh does, on the assembled package (mypy, ruff
#    check, ruff format --check), and on our tooling.
# 7. The benchmark in quick mode: it runs and writes its table (no timing asserted).
# 8. Coverage: every line of our new modules and of our patches is run, and the
#    package total is not below pristine upstream's.
#
# Every step runs, even after one has failed; the summary at the end lists each
# step (ok or FAILED, and its duration) and the pytest counts, and the exit status
# is non-zero if any step failed.
#
# Extra arguments go to both pytest runs (e.g. -x, or -k to narrow them down).
set -uo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# Upstream fastapi 0.165.0 supports Python 3.11 and newer: say so before anything.
if ! found=$("$PYTHON" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3]); sys.exit(sys.version_info < (3, 11))' 2>/dev/null); then
    [ -n "$found" ] && found="is Python $found" || found="was not found or did not run"
    echo "scripts/test.sh: fastapi 0.165.0 needs Python 3.11 or newer, but PYTHON=$PYTHON $found; run it with PYTHON=/path/to/python3.11 (or newer)." >&2
    exit 2
fi
BUILD=build/test
# The PostgreSQL tests (a server from the pinned pgserver wheel) fail here rather
# than skip when the server cannot start: a green run has run them.
export FASTAPI_FORK_REQUIRE_POSTGRESQL=1
FORK_PY=$PWD/$BUILD/venv-fork/bin/python
UPSTREAM_PY=$PWD/$BUILD/venv-upstream/bin/python
START=$(date +%s)
rm -rf "$BUILD"
mkdir -p "$BUILD"

SUMMARY=()
FAILED=0
# run_step NAME COMMAND [ARG...]: run the command in a subshell that stops at its
# first error, record the outcome and its duration, and go on.
run_step() {
    local name=$1 began status outcome
    shift
    began=$(date +%s)
    printf '\n=== %s (%ss)\n' "$name" "$((began - START))"
    (
        set -e
        "$@"
    )
    status=$?
    outcome=ok
    if [ "$status" -ne 0 ]; then
        outcome=FAILED
        FAILED=$((FAILED + 1))
    fi
    SUMMARY+=("$(printf '%-6s %5ss  %s' "$outcome" "$(($(date +%s) - began))" "$name")")
}

environments() {
    "$PYTHON" -m venv "$BUILD/venv-fork"
    "$PYTHON" -m venv "$BUILD/venv-upstream"
    "$FORK_PY" -m pip install --quiet -r requirements-tests.txt ".[all,standard]"
    "$FORK_PY" -m pip check
    local sdist
    sdist=$("$FORK_PY" scripts/fork.py upstream-sdist)
    "$UPSTREAM_PY" -m pip install --quiet -r requirements-tests.txt "fastapi[all,standard] @ file://$sdist"
    "$UPSTREAM_PY" -m pip check
    "$BUILD/venv-fork/bin/fastapi" --version
    "$FORK_PY" - <<'EOF'
import importlib.metadata, re, sys, fastapi
sys.path.insert(0, "scripts")
import fork_backend
pinned = re.escape(fork_backend.read_upstream().version)
version = importlib.metadata.version("fastapi")
assert re.fullmatch(rf"{pinned}\+lifespan\.\d+", version), version
assert fastapi.__version__ == version, (fastapi.__version__, version)
assert "site-packages" in fastapi.__file__, fastapi.__file__
print(f"installed fork: fastapi {version}")
EOF
}

test_folders() {
    "$FORK_PY" scripts/fork.py testdir "$BUILD/upstream" --pristine
    "$FORK_PY" scripts/fork.py testdir "$BUILD/fork"
}

run_suite() { # run_suite NAME PYTHON [pytest args...]
    local name=$1 python=$2
    shift 2
    cd "$BUILD/$name"
    export PYTHONPATH=./docs_src
    "$python" -m coverage erase
    set +e
    "$python" -m pytest -n auto --dist loadgroup tests scripts/tests/ \
        --cov --cov-report= -p no:sugar -q -rsx "$@" 2>&1 | tee pytest.log
    status=${PIPESTATUS[0]}
    set -e
    "$python" -m coverage combine --quiet || true
    return "$status"
}

run_suite_concurrent() { # [pytest args...]: the same, set-ups forced concurrent
    local plugins=$PWD/scripts/plugins
    cd "$BUILD/fork"
    export PYTHONPATH="./docs_src:$plugins"
    "$FORK_PY" -m pytest -n auto --dist loadgroup tests \
        --ignore=tests/test_dependency_lifespan_scope_servers \
        -p concurrent_lifespan_dependencies -p no:sugar -p no:cacheprovider -q -rsx \
        "$@" 2>&1 | tee pytest-concurrent.log
    return "${PIPESTATUS[0]}"
}

tooling_tests() {
    "$BUILD/venv-fork/bin/pytest" -q -p no:sugar -p no:cacheprovider -rs scripts/tests 2>&1 |
        tee "$BUILD/tooling-pytest.log"
}

pr_check() {
    "$FORK_PY" scripts/fork.py pr-check --python "$FORK_PY" --workdir "$BUILD/pr-check"
}

lint() {
    (
        cd "$BUILD/fork-src"
        "$FORK_PY" -m mypy fastapi
        "$FORK_PY" -m ruff check fastapi tests docs_src scripts
        "$FORK_PY" -m ruff format fastapi tests --check
    )
    "$FORK_PY" -m ruff check scripts
    "$FORK_PY" -m ruff format scripts --check
    "$FORK_PY" -m mypy
}

benchmark() {
    "$FORK_PY" scripts/benchmark.py --quick --fork-python "$FORK_PY" \
        --upstream-python "$UPSTREAM_PY" --output "$BUILD/bench"
    grep -q "^## 3. Scale" "$BUILD/bench/results.md"
    test -s "$BUILD/bench/results.png"
}

coverage() {
    "$FORK_PY" scripts/fork.py coverage "$BUILD/fork/coverage/.coverage" \
        --baseline "$BUILD/upstream/coverage/.coverage"
}

run_step "environments" environments
run_step "series check" "$FORK_PY" scripts/fork.py check
run_step "test folders" test_folders
run_step "upstream's suite on pristine upstream" run_suite upstream "$UPSTREAM_PY" "$@"
run_step "upstream's suite and ours on the fork" run_suite fork "$FORK_PY" "$@"
run_step "the same, every app's lifespan dependencies set up concurrently" run_suite_concurrent "$@"
run_step "tooling tests (with the install test)" tooling_tests
run_step "upstream PR check (scripts/fork.py pr-check)" pr_check
run_step "lint (upstream's scripts/lint.sh on the assembled package; our tooling)" lint
run_step "benchmark, quick mode (runs and writes its table; timings not asserted)" benchmark
run_step "coverage" coverage

printf '\n=== summary\n'
printf '%s\n' "${SUMMARY[@]}"
for name in upstream fork fork-concurrent tooling pr-check; do
    case $name in
        fork-concurrent) log=$BUILD/fork/pytest-concurrent.log ;;
        tooling) log=$BUILD/tooling-pytest.log ;;
        pr-check) log=$BUILD/pr-check/pytest.log ;;
        *) log=$BUILD/$name/pytest.log ;;
    esac
    counts=$(grep -E '^[0-9]+ (passed|failed|errors?|skipped|deselected)|^no tests ran' "$log" 2>/dev/null | tail -1)
    echo "$name: ${counts:-no pytest summary (its step did not get to run the tests)}"
done
echo "total wall time: $(($(date +%s) - START))s"
if [ "$FAILED" -ne 0 ]; then
    echo "$FAILED of ${#SUMMARY[@]} steps FAILED" >&2
    exit 1
fi
