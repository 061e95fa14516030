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
import tempfile
import time
from collections.abc import Iterator
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


def completed(
    cwd: Path, *command: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=TIMEOUT,
    )


def run(cwd: Path, *command: str | Path, env: dict[str, str] | None = None) -> str:
    result = completed(cwd, *command, env=env)
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


def bump(
    clone: Path, env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    return completed(clone, sys.executable, "scripts/fork.py", "bump", *args, env=env)


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


@pytest.fixture
def venv() -> Iterator[Path]:
    """
    Where the drill's venv goes: not below pytest's temporary folder, whose top
    (/tmp/pytest-of-USER) any pytest run that starts meanwhile makes private again,
    while PostgreSQL, which pgserver runs as a user of its own when the tests run
    as root, must reach its binaries in the venv.
    """
    with tempfile.TemporaryDirectory(prefix="fastapi-fork-drill-") as folder:
        yield Path(folder) / "venv"


def test_bump_to_the_previous_release_drill(tmp_path: Path, venv: Path) -> None:
    """
    `fork.py bump` to the previous upstream release on a clean clone, then what it
    says to do if it stops, then the feature and docs tests on the installed result.
    """
    began = time.monotonic()
    old = fork_backend.read_upstream().version
    clone = clean_clone(tmp_path / "fork")
    env = bump_env(tmp_path)
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
        before = fork_backend.patch_files(clone)[
            : fork_backend.patch_files(clone).index(patch)
        ]
        for earlier in before[1:]:
            assert re.search(rf"^  {re.escape(earlier.name)}: applied ", output, re.M)
        assert "git am --3way said:\n    Applying: " in output
        assert re.search(
            r"^Its hunks that do not apply as they are \([1-9]", output, re.M
        )
        assert re.search(r"^    @@ -\d+,\d+ \+\d+,\d+ @@", output, re.M), output
        assert "What upstream changed there, lines " in output, output
        assert f"git diff upstream-{old} upstream -- " in output
        for step in (
            "git am --continue",
            "scripts/fork.py export",
            "scripts/fork.py check",
        ):
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
            continued = completed(
                tree, "git", "am", "--continue", env={**os.environ, **fork.TOOL_ENV}
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
    first = fork_backend.patch_files(clone)[0].read_text()
    assert f'+__version__ = "{DRILL}+lifespan.1"' in first, first

    # The result installed in the venv the requirements were resolved in.
    python = venv / "bin" / "python"
    # Its build requirements (pdm-backend, patch-ng) are among the test requirements.
    install = ["install", "--quiet", "--no-deps", "--no-build-isolation", "."]
    run(clone, python, "-m", "pip", *install, env=env)
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
    suite = completed(
        tests,
        python,
        "-m",
        "pytest",
        "-n",
        "auto",
        "-p",
        "no:cacheprovider",
        "-q",
        *sorted(str(p.relative_to(tests)) for p in tests.glob(FEATURE_TESTS)),
        DOCS_TESTS,
        env={**env, "PYTHONPATH": "./docs_src", "FASTAPI_FORK_REQUIRE_POSTGRESQL": "1"},
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


def test_the_index_publishes_the_pinned_digest() -> None:
    pinned = fork_backend.read_upstream()
    release = fork_bump.find_release("fastapi", pinned.version, PYPI_SIMPLE_ENDPOINT)
    assert (release.version, release.sha256) == (pinned.version, pinned.sha256)
    drill = fork_bump.find_release("fastapi", DRILL, PYPI_SIMPLE_ENDPOINT)
    assert (drill.sha256, drill.yanked) == (DRILL_SHA256, False)
    newest = fork_bump.find_release("fastapi", "newest", PYPI_SIMPLE_ENDPOINT)
    assert fork_bump.Version(newest.version) >= fork_bump.Version(pinned.version)
    assert not fork_bump.Version(newest.version).is_prerelease


def test_an_unknown_version_is_refused_with_the_newest_releases() -> None:
    with pytest.raises(ForkBuildError) as raised:
        fork_bump.find_release("fastapi", "0.0.999", PYPI_SIMPLE_ENDPOINT)
    message = str(raised.value)
    assert message.startswith(
        "fastapi 0.0.999 is not on the package index https://pypi.org/simple/; "
        "its newest releases there: "
    )
    listed = [
        fork_bump.Version(v) for v in message.rpartition("there: ")[2].split(", ")
    ]
    assert len(listed) == 5 and listed == sorted(listed, reverse=True)
    assert listed[0] >= fork_bump.Version(fork_backend.read_upstream().version)
    with pytest.raises(ForkBuildError, match="'latest' is not a version: give a"):
        fork_bump.find_release("fastapi", "latest", "http://127.0.0.1:9/never-asked/")


def test_an_unreachable_index_is_reported() -> None:
    with pytest.raises(
        ForkBuildError, match="could not read the project page of fastapi"
    ):
        fork_bump.find_release("fastapi", DRILL, "http://127.0.0.1:9/simple/")


DRILL_RELEASE = fork_bump.Release("fastapi", DRILL, DRILL_SHA256, yanked=False)


def test_a_download_failure_is_reported(
    links: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The index found the release, then pip cannot reach it (here: a closed port).
    monkeypatch.delenv("PIP_NO_INDEX")
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple/")
    monkeypatch.setenv("PIP_RETRIES", "0")
    with pytest.raises(ForkBuildError) as raised:
        fork_bump.fetch_release(DRILL_RELEASE)
    assert str(raised.value).startswith(
        f"the sdist of fastapi {DRILL} could not be fetched with the sha256 the "
        f"package index publishes for it ({DRILL_SHA256}):\ncould not download"
    )
    assert ": the package index could not be reached." in str(raised.value)
    assert not (links.parent / "empty-cache" / f"fastapi-{DRILL}.tar.gz").exists()


def test_a_file_that_is_not_the_published_one_is_refused(links: Path) -> None:
    (links / f"fastapi-{DRILL}.tar.gz").write_bytes(b"not the release")
    with pytest.raises(ForkBuildError) as raised:
        fork_bump.fetch_release(DRILL_RELEASE)
    message = str(raised.value)
    assert f"the sha256 the package index publishes for it ({DRILL_SHA256})" in message
    assert "the file the package index serves does not have the sha256" in message
    assert "DO NOT MATCH THE HASHES" in message


def test_a_dirty_repository_is_refused(tmp_path: Path) -> None:
    clone = clean_clone(tmp_path / "fork")
    (clone / "notes.txt").write_text("work in progress\n")
    result = bump(clone, bump_env(tmp_path), DRILL)
    assert result.returncode == 1
    assert result.stderr.startswith("error: the repository has uncommitted changes")
    assert "?? notes.txt" in result.stderr
    assert fork.git(clone, "status", "--porcelain") == "?? notes.txt\n"


def test_a_work_tree_with_unexported_work_is_kept(tmp_path: Path) -> None:
    clone = clean_clone(tmp_path / "fork")
    env = bump_env(tmp_path)
    run(clone, sys.executable, "scripts/fork.py", "prepare", "--no-venv", env=env)
    tree = clone / ".work" / "fastapi"
    (tree / "fastapi" / "dependencies" / "lifespan.py").write_text("# mine\n")
    fork.git(tree, "commit", "-q", "-am", "work in progress")
    result = bump(clone, env, DRILL)
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"error: {tree} holds work that is not in the repository ("
    )
    assert (
        "export it first (python scripts/fork.py export), or pass --force"
        in result.stderr
    )
    assert fork.git(tree, "log", "-1", "--format=%s").strip() == "work in progress"
    assert not fork.git(clone, "status", "--porcelain")


def test_the_version_mark_is_redone_with_its_message_and_author(tmp_path: Path) -> None:
    # Redone on the pinned release itself, it is the committed patch at N = 1.
    tree = tmp_path / "fastapi"
    fork._pristine_repository(tree, ROOT)
    first = fork_backend.patch_files()[0]
    version = fork_backend.read_upstream().version
    assert (
        fork_bump.mark_version(tree, first, version, version) == f"{version}+lifespan.1"
    )
    out = tmp_path / "out"
    fork.git(tree, *fork.FORMAT_PATCH, "-o", str(out), "upstream..HEAD")
    (redone,) = out.iterdir()
    assert redone.name == first.name
    expected = re.sub(r"\+lifespan\.\d+", "+lifespan.1", first.read_text())
    index = re.compile(r"^index \w+\.\.\w+ ", re.MULTILINE)
    assert index.sub("index ", redone.read_text()) == index.sub("index ", expected)


def test_a_version_mark_with_other_changes_is_refused(tmp_path: Path) -> None:
    first = fork_backend.patch_files()[0]
    patch = tmp_path / first.name
    patch.write_text(
        first.read_text()
        .replace(
            " from starlette import status as status\n",
            " from starlette import status as status\n+import os\n",
        )
        .replace("@@ -1,6 +1,6 @@", "@@ -1,6 +1,7 @@")
    )
    with pytest.raises(ForkBuildError) as raised:
        fork_bump.check_version_mark(patch)
    assert str(raised.value).startswith(
        f"{first.name} is not only the version mark (fastapi/__init__.py: 'import os')"
    )


def test_lines_are_mapped_through_the_earlier_patches() -> None:
    pristine = [f"{n}\n" for n in "abcdefgh"]
    # An earlier patch added two lines after b and removed f.
    patched = [f"{n}\n" for n in ["a", "b", "x", "y", "c", "d", "e", "g", "h"]]
    assert fork_bump.to_pristine(pristine, patched, 5, 6) == (3, 4)  # c, d
    assert fork_bump.to_pristine(pristine, patched, 3, 4) == (2, 3)  # x, y: b..c
    assert fork_bump.to_pristine(pristine, patched, 7, 8) == (5, 7)  # e, (f), g


def test_the_pin_is_written_and_the_rest_of_pyproject_kept(tmp_path: Path) -> None:
    shutil.copyfile(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    fork_bump.write_pin(tmp_path, DRILL_RELEASE)
    pinned = fork_backend.read_upstream()
    before = (ROOT / "pyproject.toml").read_text()
    expected = before.replace(
        f'version = "{pinned.version}"', f'version = "{DRILL}"', 1
    )
    expected = expected.replace(pinned.sha256, DRILL_SHA256)
    assert (tmp_path / "pyproject.toml").read_text() == expected
    assert fork_backend.read_upstream(tmp_path).version == DRILL


def test_requirements_tests_txt_is_what_bump_writes() -> None:
    text = (ROOT / "requirements-tests.txt").read_text()
    version = fork_backend.read_upstream().version
    extras = " and ".join(f'"{extra}"' for extra in fork.PR_TEST_EXTRAS)
    header = fork_bump.HEADER.format(version=version, extras=extras)
    assert text.startswith(header)
    lines = text[len(header) :].splitlines()
    assert lines == sorted(lines, key=str.lower)
    pinned = {
        canonicalize_name(Requirement(line).name): Requirement(line) for line in lines
    }
    assert all(
        len(r.specifier) == 1 and "==" in str(r.specifier) for r in pinned.values()
    )
    for requirement in fork_bump.our_test_requirements(ROOT):
        name = canonicalize_name(requirement.name)
        if name == "pip":
            continue
        assert name in pinned, f"{requirement} is not pinned in requirements-tests.txt"
        assert pinned[name].specifier.contains(
            next(iter(pinned[name].specifier)).version
        )
        assert requirement.specifier.contains(
            next(iter(pinned[name].specifier)).version
        ), (requirement, pinned[name])
        assert pinned[name].marker == requirement.marker
