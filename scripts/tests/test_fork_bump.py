"""Tests of `fork.py bump` (scripts/fork_bump.py), with a drill on a real release.

The drill clones the committed repository into a temporary folder, bumps it to the
previous upstream release with `fork.py bump`, follows what the command says when it
stops on a conflict, installs the result and runs the feature and docs tests on it.
"""

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import fork
import fork_backend
import fork_bump
import pytest
from fork_backend import ROOT, ForkBuildError
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from pypi_simple import PYPI_SIMPLE_ENDPOINT

# The drill's release, and the sha256 the package index publishes for its sdist (a
# released file never changes).
DRILL = "0.164.0"
DRILL_SHA256 = "3db1b4b146924d284b33bd6b9ca244c8bd0560d5e3526591447fd3abe4383989"
TIMEOUT = 900
FEATURE_TESTS = "tests/test_dependency_lifespan_scope*.py"
DOCS_TESTS = "tests/test_tutorial/test_lifespan_scoped_dependencies/"


def run(cwd: Path, *command: str | Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [str(c) for c in command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=TIMEOUT,
    )
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, command))} failed (exit code {result.returncode}):\n"
            f"{result.stdout}{result.stderr}",
            pytrace=False,
        )
    return result.stdout


def clean_clone(dest: Path) -> Path:
    """A clone of the repository's committed HEAD."""
    head = fork.git(ROOT, "rev-parse", "HEAD").strip()
    fork.git(dest.parent, "clone", "--quiet", "--no-checkout", str(ROOT), dest.name)
    fork.git(dest, "checkout", "--quiet", "--detach", head)
    return dest


def bump_env(tmp_path: Path) -> dict[str, str]:
    """The environment, with an empty sdist cache of the fork's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTAPI_FORK_")}
    env["FASTAPI_FORK_CACHE"] = str(tmp_path / "sdists")
    return env


def bump(clone: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "scripts/fork.py", "bump", *args],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=TIMEOUT,
    )


# A conflict as `git checkout --conflict=diff3` writes it: ours, base, theirs.
CONFLICT = re.compile(
    r"^<<<<<<< [^\n]*\n(.*?)^\|\|\|\|\|\|\| [^\n]*\n(.*?)^=======\n(.*?)^>>>>>>> [^\n]*\n",
    re.DOTALL | re.MULTILINE,
)


def resolve_insertions(tree: Path, rel: str) -> int:
    """
    Resolve, as a maintainer would, the conflicts of a file where the patch only
    adds lines next to lines upstream changed (git merges no change that touches
    another): upstream's side, and the patch's lines added before or after it.
    Any other conflict fails the test, with the conflict. Return their count.
    """
    fork.git(tree, "checkout", "--conflict=diff3", "--", rel)

    def resolve(conflict: re.Match[str]) -> str:
        ours, base, theirs = conflict.groups()
        if theirs.startswith(base):
            return ours + theirs[len(base) :]
        if theirs.endswith(base):
            return theirs[: len(theirs) - len(base)] + ours
        pytest.fail(
            f"a conflict in {rel} that is more than the patch adding lines next to "
            f"upstream's change; the series needs a hand:\n{conflict.group(0)}",
            pytrace=False,
        )

    resolved, count = CONFLICT.subn(resolve, (tree / rel).read_text())
    assert count, f"{rel} is unmerged but has no conflict markers"
    (tree / rel).write_text(resolved)
    fork.git(tree, "add", "--", rel)
    return count


def test_bump_to_the_previous_release_drill(tmp_path: Path) -> None:
    """
    `fork.py bump` to the previous upstream release on a clean clone, then what it
    says to do if it stops, then the feature and docs tests on the installed result.
    """
    began = time.monotonic()
    old = fork_backend.read_upstream().version
    clone = clean_clone(tmp_path / "fork")
    env = bump_env(tmp_path)
    venv = tmp_path / "venv"
    result = bump(clone, env, DRILL, "--venv", str(venv))
    output = result.stdout + result.stderr
    bumped = time.monotonic()

    # Pinned with the index's digest, which is the downloaded file's.
    upstream = fork_backend.read_upstream(clone)
    assert (upstream.version, upstream.sha256) == (DRILL, DRILL_SHA256), output
    sdist = tmp_path / "sdists" / upstream.sdist_name
    assert hashlib.sha256(sdist.read_bytes()).hexdigest() == DRILL_SHA256
    requirements = (clone / "requirements-tests.txt").read_text()
    assert f"upstream fastapi {DRILL}'s dependencies" in requirements
    tree = clone / ".work" / "fastapi"
    changed = fork.git(clone, "status", "--porcelain").splitlines()
    stops = []
    if result.returncode != 0:
        # It stopped on a patch, said why and what to do, and left the work tree
        # in the middle of git am with the conflicts.
        stopped = re.search(
            rf"^error: bump {re.escape(old)} -> {re.escape(DRILL)}: (patches/\S+\.patch) "
            rf"does not apply to fastapi {re.escape(DRILL)}\.$",
            output,
            re.MULTILINE,
        )
        assert stopped, output
        patch = clone / stopped.group(1)
        assert patch.is_file(), output
        before = fork_backend.patch_files(clone)[: fork_backend.patch_files(clone).index(patch)]
        for earlier in before[1:]:
            assert re.search(rf"^  {re.escape(earlier.name)}: applied ", output, re.M)
        assert "git am --3way said:\n    Applying: " in output
        assert re.search(r"^Its hunks that do not apply as they are \([1-9]", output, re.M)
        assert re.search(r"^    @@ -\d+,\d+ \+\d+,\d+ @@", output, re.M), output
        assert f"What upstream changed there, lines " in output, output
        assert f"git diff upstream-{old} upstream -- " in output
        for step in ("git am --continue", "scripts/fork.py export", "scripts/fork.py check"):
            assert step in output
        assert (tree / ".git" / "rebase-apply").is_dir()
        assert sorted(changed) == [" M pyproject.toml", " M requirements-tests.txt"]
        # What it says: resolve, git am --continue (again for each patch that
        # stops), export, check.
        patches = fork_backend.patch_files(clone)
        for _ in patches:
            unmerged = fork.git(tree, "diff", "--name-only", "--diff-filter=U").split()
            assert unmerged, "git am stopped without conflicts to resolve"
            for rel in unmerged:
                assert rel in output or stops, output
                stops.append(f"{rel} ({resolve_insertions(tree, rel)} conflicts)")
            continued = subprocess.run(
                ["git", "am", "--continue"],
                cwd=tree,
                env={**os.environ, **fork.TOOL_ENV},
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
            )
            if continued.returncode == 0:
                break
        else:
            pytest.fail("git am --continue never finished")
        run(clone, sys.executable, "scripts/fork.py", "export", env=env)
        run(clone, sys.executable, "scripts/fork.py", "check", "--work-tree", env=env)
        changed = fork.git(clone, "status", "--porcelain").splitlines()
    else:
        assert "series and new files reproduce the tree" in output, output
    assert {line[3:].partition("/")[0] for line in changed} <= {
        "pyproject.toml",
        "requirements-tests.txt",
        "patches",
    }, changed
    marked = (clone / "patches").glob(f"0001-*{DRILL}.patch")
    assert len(list(marked)) == 1, sorted(p.name for p in (clone / "patches").iterdir())

    # The result installed in the venv the requirements were resolved in.
    python = venv / "bin" / "python"
    run(clone, python, "-m", "pip", "install", "--quiet", "--no-deps", ".", env=env)
    installed = run(
        tmp_path,
        python,
        "-c",
        "import importlib.metadata, fastapi; "
        "print(importlib.metadata.version('fastapi'), fastapi.__version__)",
    )
    assert installed.split() == [f"{DRILL}+lifespan.1"] * 2
    tests = tmp_path / "tests"
    run(clone, python, "scripts/fork.py", "testdir", tests, env=env)
    suite = subprocess.run(
        [
            str(python),
            "-m",
            "pytest",
            "-n",
            "auto",
            "-p",
            "no:cacheprovider",
            "-q",
            *sorted(str(p.relative_to(tests)) for p in tests.glob(FEATURE_TESTS)),
            DOCS_TESTS,
        ],
        cwd=tests,
        env={**env, "PYTHONPATH": "./docs_src", "FASTAPI_FORK_REQUIRE_POSTGRESQL": "1"},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=TIMEOUT,
    )
    counts = suite.stdout.strip().rpartition("\n")[2]
    assert suite.returncode == 0, suite.stdout[-6000:] + suite.stderr[-3000:]
    assert re.fullmatch(r"\d+ passed in .*", counts), counts
    print(
        f"bump {old} -> {DRILL}: "
        + (f"stopped, resolved {', '.join(stops)}" if stops else "applied")
        + f"; bump {bumped - began:.0f}s, all {time.monotonic() - began:.0f}s; "
        f"feature and docs tests: {counts}"
    )
