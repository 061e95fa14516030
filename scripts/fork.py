"""Developer commands for the fork (run with the Python that will run the tests).

python scripts/fork.py prepare [--force] [--no-venv]
    Build the editable work tree in .work/fastapi: a git repository whose first
    commit is the pristine upstream sdist (tag "upstream"), then our new files
    (modules, tests, examples, docs), then one commit per patch (git am).
    Unless --no-venv, install it editable into .venv with the test requirements.
python scripts/fork.py export [--force]
    Write the work tree back: our new files as the commit that adds them has them,
    and the commits after it, as patches/ (git format-patch): a patch may change
    upstream files and our new files (a fork-only patch on the files the upstream
    pull request adds).
    Refused if the repository's series or files changed since prepare (that
    would undo them), unless --force.
python scripts/fork.py check [--work-tree]
    Fail if the series and files do not reproduce the tree: the series must apply
    with git am to the pristine sdist, give the same tree as the build
    (patch-ng), and export back to exactly what is in the repository. With
    --work-tree, the prepared work tree must also have nothing left unexported.
python scripts/fork.py pr [--output dist/pr] [--author "NAME <EMAIL>"] [--date DATE]
    Write the upstream pull request: the change as a git am-able series on
    upstream's source (the patches without those marked "Upstream-Status: not
    for upstream", the new module added just before the first patch that uses
    it, then the tests and the docs, without the files listed as fork-only in
    pyproject.toml and the parts of the docs pages between <!-- fork-only -->
    and <!-- /fork-only -->), authored by your git identity (or --author) at
    the current time (or --date), and its description, PR.md (from
    docs/pr/PR.md).
python scripts/fork.py pr-check [--python PY] [--workdir DIR] [--upstream-tests FILE]
    Check the upstream pull request as a FastAPI maintainer's CI would, with PY
    (default: this Python; it needs requirements-tests.txt, ty among them): its
    format-patch applies with git am --3way to pristine upstream and git diff
    --check is clean; its size is within the limits of pyproject.toml's
    [tool.fork.pr.limits] (changed lines, in all and per folder) and its tests
    have no larger share of "pragma: no cover" lines than upstream's; each
    commit, in order, imports, passes upstream's lint (mypy, ruff; ty with no
    diagnostic pristine upstream lacks) and the tests it adds or changes; the
    last one passes upstream's whole suite with the PR's tests, with upstream's
    pytest and coverage settings, and runs every line the PR adds. Packages that
    upstream's tests don't install can't be imported in its test runs. Its files
    go to a temporary folder, or to DIR (kept). With --upstream-tests FILE (node
    ids, one a line, such as the tests during which an app's lifespan ran on the
    fork: see CONTRIBUTING.md), the last commit runs the PR's tests and only
    those of FILE's upstream tests that its tree has, instead of the whole suite.
python scripts/fork.py testdir DEST [--pristine]
    Lay out the folder the test suite runs from: the assembled (or pristine)
    tests/, docs_src/, scripts/, docs/ and pyproject.toml, without fastapi/, so
    that the installed package is the one under test; and the whole tree in
    DEST-src, for lint.
python scripts/fork.py coverage DATA_FILE [--baseline BASELINE_DATA_FILE | --baseline-total PERCENT]
    Check coverage of our lines: every line of our new modules and every line
    our patches add or change must be run, and the fastapi package's total must
    not fall below the pristine upstream run's (its data file, or its total as
    recorded in scripts/upstream-baseline/).
python scripts/fork.py upstream-sdist
    Print the path of the verified upstream sdist (downloading it if needed).
python scripts/fork.py build-inputs [EXTRA ...]
    Print a digest of everything the build reads from this repository (the pin,
    the backend, the series, our files) and of the EXTRA strings: scripts/run.sh
    reinstalls the fork only when it changes.
python scripts/fork.py bump VERSION [--index-url URL] [--force] [--venv DIR]
    Move the fork to upstream release VERSION ("newest": the newest final
    release): pin its sdist with the sha256 the package index publishes
    (PIP_INDEX_URL, or --index-url; default pypi.org), regenerate
    requirements-tests.txt, move the series onto it with git am --3way in
    .work/fastapi (the version mark becomes VERSION+lifespan.1), export and
    check. On a conflict it stops in the middle of git am, shows the patch, its
    failing hunks and what upstream changed there, and says what to do next.
    Needs a clean repository; --force replaces a work tree with unexported work.
    The requirements are resolved in a throw-away venv, or in DIR, kept (with
    requirements-tests.txt installed). See scripts/fork_bump.py.
"""

from __future__ import annotations

import argparse
import difflib
import filecmp
import hashlib
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fork_backend
from fork_backend import ROOT, ForkBuildError

WORK_TREE = ROOT / ".work" / "fastapi"
VENV = ROOT / ".venv"
UPSTREAM_TAG = "upstream"
# Fixed identity and dates for the commits the tooling makes, so that exports are
# byte-stable whoever runs them.
TOOL_ENV = {
    "GIT_AUTHOR_NAME": "fastapi fork tooling",
    "GIT_AUTHOR_EMAIL": "tooling@fastapi-fork.invalid",
    "GIT_COMMITTER_NAME": "fastapi fork tooling",
    "GIT_COMMITTER_EMAIL": "tooling@fastapi-fork.invalid",
    "GIT_AUTHOR_DATE": "2000-01-01T00:00:00Z",
    "GIT_COMMITTER_DATE": "2000-01-01T00:00:00Z",
    # A developer's own git settings (diff.noprefix, diff.algorithm, am.threeWay,
    # format.headers, ...) must not change what the tooling writes or applies.
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}
FORMAT_PATCH = [
    "format-patch",
    "--zero-commit",
    "--no-signature",
    "--no-numbered",
    "--no-renames",
    "--diff-algorithm=myers",
    "--src-prefix=a/",
    "--dst-prefix=b/",
]
NOT_FOR_UPSTREAM = "Upstream-Status: not for upstream"
# Where the work tree records which committed series and files it was built
# from, so that export never silently undoes commits it has not seen.
FINGERPRINT = Path(".git") / "fork-fingerprint"
# Files that running tests or tools in the work tree leaves behind.
WORK_TREE_EXCLUDES = (
    "__pycache__/\n*.py[co]\n.coverage*\ncoverage/\nhtmlcov/\n"
    ".pytest_cache/\n.mypy_cache/\n.ruff_cache/\n.hypothesis/\n"
    # Written by upstream's docs_src examples when their tests run.
    "/log.txt\n"
)
NEW_FILES_MESSAGE = "Add the new files (the patches that follow hook them in)"
# The commits of the upstream pull request that add new files (the others are the
# patches, with their own messages).
PR_MODULE_MESSAGE = """\
✨ Add `fastapi.dependencies.lifespan`, to set up lifespan-scoped dependencies

The set-up and teardown of `Depends(..., scope="lifespan")` (the next
commit hooks it into the app):

* `lifespan_dependencies_app()` wraps the app's ASGI lifespan. When the
  app's own startup is complete, the lifespan-scoped dependencies declared
  in its route tree are set up, once per callable, as each route's requests
  resolve them with `dependency_overrides` (checked there first), and their
  values go into the lifespan state under a key of the app's own. When the
  server asks for shutdown, they are torn down in reverse order, each as if
  nothing failed, before the app's own shutdown code.
* A set-up failure tears down what was set up, unwinds the app's own
  lifespan as at a shutdown, and fails the startup at the server with the
  original exception, with a note naming the dependency.
"""
PR_TESTS_MESSAGE = """\
✅ Add tests for lifespan-scoped dependencies

One set-up per run shared by every HTTP and WebSocket request, every place
a dependency can be declared, the declaration errors, overrides at startup
(and the error when they changed since), set-up and teardown failures with
any shape of the app's own lifespan, requests when the lifespan did not
run, servers without lifespan state.
"""
PR_DOCS_MESSAGE = """\
📝 Add docs for lifespan-scoped dependencies

A tutorial page after "Dependencies with yield" (in the nav too), with
three tested examples in `docs_src/lifespan_scoped_dependencies/`
(`Annotated` and `_non_an` variants) and their tests under
`tests/test_tutorial/`.
"""
# The docs nav is in docs/en/mkdocs.yml, which the sdist lacks. The PR's docs
# commit adds our pages to it, after this entry; the pristine repository of the
# PR has the lines around it, as upstream's main branch has them (2026), so that
# the commit applies to upstream's repository with `git am --3way` and to ours.
NAV_FILE = "docs/en/mkdocs.yml"
DOCS_PAGES = "docs/en/docs/"
NAV_AFTER = "tutorial/dependencies/dependencies-with-yield.md"
NAV_EXCERPT = """\
      - tutorial/dependencies/dependencies-in-path-operation-decorators.md
      - tutorial/dependencies/global-dependencies.md
      - tutorial/dependencies/dependencies-with-yield.md
    - "":
      - tutorial/security/index.md
      - tutorial/security/first-steps.md
"""
# What the test suite needs beside tests/ (upstream's pyproject.toml carries the
# pytest settings: warnings as errors, strict markers, timeouts).
TEST_TREE = (
    "tests",
    "docs_src",
    "scripts",
    "docs/en/docs/img/favicon.png",
    "pyproject.toml",
)


def git(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        ["git", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **TOOL_ENV, **(env or {})},
    )
    if result.returncode != 0:
        raise ForkBuildError(
            f"git {' '.join(args)} failed in {cwd}:\n{result.stdout}{result.stderr}"
        )
    return result.stdout


def _commit_all(tree: Path, message: str, env: dict[str, str] | None = None) -> None:
    git(tree, "add", "-A")
    if git(tree, "status", "--porcelain").strip():
        git(tree, "commit", "-q", "-m", message, env=env)


def _digest(root: Path, files: Iterable[str], extra: Iterable[str] = ()) -> str:
    digest = hashlib.sha256()
    for rel in files:
        digest.update(rel.encode() + b"\0" + (root / rel).read_bytes() + b"\0")
    for item in extra:
        digest.update(b"extra\0" + item.encode() + b"\0")
    return digest.hexdigest()


def layout_fingerprint(root: Path) -> str:
    """A digest of the committed series and new files of a repository layout."""
    files = [p.relative_to(root).as_posix() for p in fork_backend.patch_files(root)]
    return _digest(root, sorted(files + fork_backend.overlay_files(root)))


def build_inputs(root: Path = ROOT) -> list[str]:
    """What the build reads from a repository, as paths relative to it."""
    fixed = ["pyproject.toml", "scripts/fork_backend.py"]
    patches = [p.relative_to(root).as_posix() for p in fork_backend.patch_files(root)]
    return fixed + patches + fork_backend.overlay_files(root)


def build_inputs_digest(root: Path = ROOT, extra: Iterable[str] = ()) -> str:
    return _digest(root, build_inputs(root), extra)


def _pristine_repository(dest: Path, root: Path, *, nav: bool = False) -> None:
    """
    A git repository of the pristine sdist, tagged "upstream"; with `nav`, also
    the lines of upstream's docs nav that the PR changes (`NAV_EXCERPT`).
    """
    upstream = fork_backend.read_upstream(root)
    dest.mkdir(parents=True)
    fork_backend.unpack_sdist(fork_backend.fetch_sdist(upstream), dest)
    message = f"{upstream.name} {upstream.version}, the pristine sdist"
    if nav:
        # Lines before and after the excerpt, as in upstream's file, so that the
        # PR's hunk is not anchored to the file's start or end.
        (dest / NAV_FILE).write_text(
            f"# An excerpt of upstream's {NAV_FILE} (not in the sdist): the nav\n"
            "# around the place of the PR's page.\n"
            f"nav:\n{NAV_EXCERPT}# ...\n"
        )
        message += f", and an excerpt of upstream's {NAV_FILE} (not in the sdist)"
    git(dest, "init", "-q", "-b", "main")
    (dest / ".git" / "info").mkdir(parents=True, exist_ok=True)
    (dest / ".git" / "info" / "exclude").write_text(WORK_TREE_EXCLUDES)
    _commit_all(dest, message)
    git(dest, "tag", UPSTREAM_TAG)


def add_to_nav(tree: Path, pages: Iterable[str]) -> None:
    """Add docs pages (paths under docs/en/docs/) to the nav, after `NAV_AFTER`."""
    lines = (tree / NAV_FILE).read_text().splitlines(keepends=True)
    after = next(
        (i for i, line in enumerate(lines) if line.strip() == f"- {NAV_AFTER}"), None
    )
    if after is None:
        raise ForkBuildError(f"{NAV_FILE} has no nav entry {NAV_AFTER}")
    indent = lines[after][: len(lines[after]) - len(lines[after].lstrip())]
    lines[after + 1 : after + 1] = [f"{indent}- {page}\n" for page in pages]
    (tree / NAV_FILE).write_text("".join(lines))


def _apply(dest: Path, patches: list[Path], env: dict[str, str] | None = None) -> None:
    for patch in patches:
        try:
            git(dest, "am", "--quiet", str(patch))
        except ForkBuildError as exc:
            raise ForkBuildError(
                f"the series does not apply cleanly to the pristine sdist: {exc}"
            ) from None
        if env is not None:
            git(dest, "commit", "-q", "--amend", "--no-edit", "--reset-author", env=env)


def build_work_tree(dest: Path, root: Path = ROOT) -> None:
    """Pristine sdist, our new files, then the series (git am)."""
    _pristine_repository(dest, root)
    (dest / FINGERPRINT).write_text(layout_fingerprint(root))
    new_files = fork_backend.overlay_files(root)
    _copy_new_files(root, dest, new_files)
    _commit_all(dest, _files_message(NEW_FILES_MESSAGE, new_files))
    _apply(dest, fork_backend.patch_files(root))


def _pr_settings(root: Path) -> dict[str, Any]:
    """pyproject.toml's [tool.fork.pr]: the upstream pull request's settings."""
    with (root / "pyproject.toml").open("rb") as f:
        settings: dict[str, Any] = tomllib.load(f)["tool"]["fork"]["pr"]
    return settings


def fork_only_files(root: Path = ROOT) -> list[str]:
    """Our files that stay out of the upstream pull request (pyproject.toml)."""
    prefixes = _pr_settings(root)["fork-only"]
    return [
        rel
        for rel in fork_backend.overlay_files(root)
        if any(rel == prefix or rel.startswith(prefix) for prefix in prefixes)
    ]


def _module_name(rel: str) -> str:
    return rel.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def build_pr_tree(dest: Path, env: dict[str, str], root: Path = ROOT) -> None:
    """
    The upstream pull request as commits on the pristine sdist: the series without
    fork packaging, our new modules added just before the first patch that imports
    them, then the tests, then the docs (examples, their tests, the page), all
    without what is fork-only: the files listed in pyproject.toml, the pages'
    fork-only blocks.
    """
    _pristine_repository(dest, root, nav=True)
    new_files = [
        f for f in fork_backend.overlay_files(root) if f not in fork_only_files(root)
    ]
    modules = [f for f in new_files if f.startswith("fastapi/")]
    names = [_module_name(f) for f in modules]
    patches = [
        p
        for p in fork_backend.patch_files(root)
        if NOT_FOR_UPSTREAM not in p.read_text()
    ]
    first_user = next(
        (i for i, p in enumerate(patches) if any(n in p.read_text() for n in names)),
        len(patches),
    )
    _apply(dest, patches[:first_user], env)
    _copy_new_files(root, dest, modules)
    _commit_all(dest, PR_MODULE_MESSAGE, env)
    _apply(dest, patches[first_user:], env)
    docs = [
        f
        for f in new_files
        if f.startswith(("docs/", "docs_src/", "tests/test_tutorial/"))
    ]
    tests = [f for f in new_files if f not in modules and f not in docs]
    _copy_new_files(root, dest, tests)
    _commit_all(dest, PR_TESTS_MESSAGE, env)
    _copy_new_files(root, dest, docs)
    for page in (f for f in docs if f.endswith(".md")):
        path = dest / page
        path.write_text(without_fork_only_blocks(path.read_text(), page))
    pages = [
        f.removeprefix(DOCS_PAGES)
        for f in docs
        if f.startswith(DOCS_PAGES) and f.endswith(".md")
    ]
    add_to_nav(dest, pages)
    _commit_all(dest, PR_DOCS_MESSAGE, env)


# A docs page's part that stays in the fork, out of the pull request (it shows a
# fork-only example, say): the lines from FORK_ONLY_BEGIN to FORK_ONLY_END, each
# marker alone on its line.
FORK_ONLY_BEGIN = "<!-- fork-only -->"
FORK_ONLY_END = "<!-- /fork-only -->"


def without_fork_only_blocks(text: str, name: str) -> str:
    """
    The page without its fork-only blocks: each block's lines, markers included,
    and the blank line after it, so that the text around it joins as if it had
    never been there. Unbalanced markers stop the export.
    """
    kept: list[str] = []
    opened: int | None = None
    after_block = False
    for number, line in enumerate(text.splitlines(keepends=True), start=1):
        marker = line.strip()
        if marker == FORK_ONLY_BEGIN:
            if opened is not None:
                raise ForkBuildError(
                    f"{name}, line {number}: {FORK_ONLY_BEGIN} inside the fork-only "
                    f"block opened on line {opened}"
                )
            opened = number
        elif marker == FORK_ONLY_END:
            if opened is None:
                raise ForkBuildError(
                    f"{name}, line {number}: {FORK_ONLY_END} closes no fork-only block"
                )
            opened = None
            after_block = True
        elif opened is None:
            if not (after_block and not marker):
                kept.append(line)
            after_block = False
    if opened is not None:
        raise ForkBuildError(
            f"{name}, line {opened}: the fork-only block is never closed "
            f"with {FORK_ONLY_END}"
        )
    return "".join(kept)


def _files_message(subject: str, files: list[str]) -> str:
    return subject + "\n\n" + "".join(f"- {rel}\n" for rel in files)


def _copy_new_files(src: Path, dest: Path, files: Iterable[str]) -> None:
    for rel in files:
        if (dest / rel).exists():
            raise ForkBuildError(f"{rel} is an upstream file: change it with a patch")
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, dest / rel)


def export_work_tree(tree: Path, out: Path) -> None:
    """Write the work tree's change into ``out`` in this repository's layout."""
    if git(tree, "status", "--porcelain", "--untracked-files=all").strip():
        raise ForkBuildError(
            f"{tree} has uncommitted changes: commit them (one concern per commit) "
            "before exporting"
        )
    diff = ["diff", "--name-only", "-z", "--no-renames", UPSTREAM_TAG, "HEAD"]
    added = git(tree, *diff, "--diff-filter=A").split("\0")[:-1]
    changed = git(tree, *diff, "--diff-filter=a").split("\0")[:-1]
    strays = [
        f
        for f in added
        if not any(f.startswith(f"{top}/") for top in fork_backend.OVERLAY_DIRS)
    ]
    if strays:
        raise ForkBuildError(
            f"new files outside {', '.join(fork_backend.OVERLAY_DIRS)}: {strays}"
        )
    # Our new files are what their commit adds; later commits (fork-only
    # patches) may change them, and those changes are patches like the others.
    base = _new_files_commit(tree)
    ours: list[str] = []
    if base is not None:
        listed = git(tree, "ls-tree", "-r", "--name-only", "-z", base).split("\0")
        ours = [f for f in added if f in listed]
    patches_dir = out / fork_backend.PATCHES_DIR
    patches_dir.mkdir(parents=True, exist_ok=True)
    if changed or ours:
        git(
            tree,
            *FORMAT_PATCH,
            "-o",
            str(patches_dir),
            f"{base or UPSTREAM_TAG}..HEAD",
            "--",
            *changed,
            *ours,
        )
    _copy_new_files(tree, out, [f for f in added if f not in ours])
    for rel in ours:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(_show(tree, f"{base}:{rel}"))


def _new_files_commit(tree: Path) -> str | None:
    """The work tree's commit that adds our new files (NEW_FILES_MESSAGE), if any."""
    subject = NEW_FILES_MESSAGE.splitlines()[0]
    for line in git(
        tree, "log", "--format=%H %s", f"{UPSTREAM_TAG}..HEAD"
    ).splitlines():
        commit, _, message = line.partition(" ")
        if message == subject:
            return commit
    return None


def _show(tree: Path, spec: str) -> bytes:
    """A file's bytes at a commit (`git show COMMIT:PATH`)."""
    return subprocess.run(
        ["git", "show", spec],
        cwd=tree,
        capture_output=True,
        check=True,
        env={**os.environ, **TOOL_ENV},
    ).stdout


def _tree_files(top: Path) -> set[str]:
    return {
        p.relative_to(top).as_posix()
        for p in top.rglob("*")
        if p.is_file() and ".git" not in p.relative_to(top).parts
    }


def compare_trees(expected: Path, actual: Path) -> list[str]:
    """Paths that differ between two trees (missing on either side or not equal)."""
    left, right = _tree_files(expected), _tree_files(actual)
    differing = sorted(left ^ right)
    differing += sorted(
        f
        for f in left & right
        if not filecmp.cmp(expected / f, actual / f, shallow=False)
    )
    return differing


def committed_layout(root: Path, out: Path) -> None:
    """Copy this repository's series and new files into ``out`` for comparison."""
    for patch in fork_backend.patch_files(root):
        (out / fork_backend.PATCHES_DIR).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(patch, out / fork_backend.PATCHES_DIR / patch.name)
    _copy_new_files(root, out, fork_backend.overlay_files(root))


def cmd_prepare(args: argparse.Namespace) -> None:
    if WORK_TREE.exists():
        if not args.force:
            raise ForkBuildError(
                f"{WORK_TREE} exists: export it, or pass --force to rebuild"
            )
        shutil.rmtree(WORK_TREE)
    build_work_tree(WORK_TREE)
    print(f"work tree: {WORK_TREE} (git log {UPSTREAM_TAG}..HEAD shows the series)")
    if args.no_venv:
        return
    if not VENV.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "-r", str(ROOT / "requirements-tests.txt")], check=True)
    subprocess.run([*pip, "--no-deps", "-e", str(WORK_TREE)], check=True)
    print(f"editable install in {VENV}: run the suite from {WORK_TREE}")


def cmd_export(args: argparse.Namespace) -> None:
    fingerprint = WORK_TREE / FINGERPRINT
    built_from = fingerprint.read_text() if fingerprint.exists() else "unknown"
    if built_from != layout_fingerprint(ROOT) and not args.force:
        raise ForkBuildError(
            "the repository's series or files changed since the work tree was "
            "prepared (a pull, a checkout?): exporting would undo those changes. "
            "Rebuild it with 'prepare --force' and redo your commits on it, or "
            "pass --force to overwrite the repository with the work tree."
        )
    with tempfile.TemporaryDirectory() as tmp:
        export_work_tree(WORK_TREE, Path(tmp))
        for patch in fork_backend.patch_files(ROOT):
            patch.unlink()
        for rel in fork_backend.overlay_files(ROOT):
            (ROOT / rel).unlink()
        for top in fork_backend.OVERLAY_DIRS:
            if (Path(tmp) / top).exists():
                shutil.copytree(Path(tmp) / top, ROOT / top, dirs_exist_ok=True)
        for patch in fork_backend.patch_files(Path(tmp)):
            shutil.copyfile(patch, ROOT / fork_backend.PATCHES_DIR / patch.name)
    (WORK_TREE / FINGERPRINT).write_text(layout_fingerprint(ROOT))
    print("exported: review with git status / git diff, then commit")


def cmd_check(args: argparse.Namespace) -> None:
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        built, worked = base / "built", base / "worked"
        built.mkdir()
        fork_backend.assemble(built)
        build_work_tree(worked)
        for rel in compare_trees(built, worked):
            problems.append(f"build (patch-ng) and git am trees differ: {rel}")
        committed, exported = base / "committed", base / "exported"
        committed_layout(ROOT, committed)
        export_work_tree(worked, exported)
        for rel in compare_trees(committed, exported):
            problems.append(f"series does not export back to what is committed: {rel}")
        if args.work_tree:
            mine = base / "mine"
            export_work_tree(WORK_TREE, mine)
            for rel in compare_trees(committed, mine):
                problems.append(
                    f"{WORK_TREE} differs from the repository ({rel}): export "
                    "it, or, if the repository moved on, 'prepare --force'"
                )
    if problems:
        raise ForkBuildError("\n".join(problems))
    print("series and new files reproduce the tree")


def pr_identity(author: str | None, date: str | None) -> dict[str, str]:
    """
    Who the pull request's commits are from, and when: `author` ("Name
    <email>") or the user's own git identity, at `date` or now.
    """
    if author is None:
        ident = subprocess.run(
            ["git", "var", "GIT_AUTHOR_IDENT"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if ident.returncode != 0:
            raise ForkBuildError(
                "no git identity to author the pull request with: set git's "
                "user.name and user.email, or pass --author 'Name <email>'"
            )
        author = ident.stdout.rsplit(" ", 2)[0]
    name, _, email = author.partition(" <")
    if not name or not email.endswith(">"):
        raise ForkBuildError(f"--author must be 'Name <email>', not {author!r}")
    identity = {"NAME": name, "EMAIL": email[:-1]}
    identity["DATE"] = date or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        f"GIT_{who}_{what}": value
        for who in ("AUTHOR", "COMMITTER")
        for what, value in identity.items()
    }


def cmd_pr(args: argparse.Namespace) -> None:
    out = Path(args.output).resolve()
    if out.exists():
        shutil.rmtree(out)
    env = pr_identity(args.author, args.date)
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "fastapi"
        build_pr_tree(tree, env)
        git(tree, *FORMAT_PATCH, "--numbered", "-o", str(out), f"{UPSTREAM_TAG}..HEAD")
    shutil.copyfile(ROOT / "docs" / "pr" / "PR.md", out / "PR.md")
    print(f"{out}: apply with 'git am {out}/*.patch' on fastapi's 0.165.0 source")


# The pull request check (pr-check): the PR's commits, built with a fixed identity
# so that the check's tree is the same whoever runs it.
PR_CHECK_AUTHOR = "FastAPI fork check <check@example.invalid>"
PR_CHECK_DATE = "2026-01-01T00:00:00Z"
# Upstream's scripts/lint.sh, but for `ty check`, which pristine upstream does not
# pass either: the PR may add no diagnostic of its own (see ty_diagnostics()).
PR_LINT = {
    "mypy": ["-m", "mypy", "fastapi"],
    "ruff check": ["-m", "ruff", "check", "fastapi", "tests", "docs_src", "scripts"],
    "ruff format": ["-m", "ruff", "format", "fastapi", "tests", "--check"],
}
TY = ["-m", "ty", "check", "--output-format", "concise", "--color", "never"]
# Upstream's scripts/test-cov.sh: its scripts/test.sh (PYTHONPATH=./docs_src) with
# --cov --cov-context=test; its pyproject.toml has the pytest and coverage settings.
PR_SUITE = [
    "-m",
    "pytest",
    "-n",
    "auto",
    "--dist",
    "loadgroup",
    "tests",
    "scripts/tests/",
    "--cov",
    "--cov-context=test",
]
PYTEST_QUIET = ["-p", "no:cacheprovider", "-p", "no:sugar", "-q"]
# What upstream's tests may import: its "tests" dependency group, fastapi's own
# dependencies and the extras the test command installs, with what they need.
PR_TEST_EXTRAS = ("all", "standard")
# Also importable: a venv's own installers, and the optional packages that upstream's
# tests use when they are installed (tests/utils.py: needs_orjson, needs_ujson) and
# whose branches upstream's coverage counts (requirements-tests.txt has them too).
ALSO_IMPORTABLE = ("pip", "setuptools", "wheel", "orjson", "ujson")
# Run by the Python under test: the installed distributions that the requirements
# (JSON argument: {"roots": [...], "allow": [...]}) do not need, their top-level
# modules (those no needed distribution shares) and their pytest plugins.
UNNEEDED_DISTRIBUTIONS = """\
import json, sys
from importlib import metadata
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

given = json.loads(sys.argv[1])
dists = {}
for dist in metadata.distributions():
    dists.setdefault(canonicalize_name(dist.metadata["Name"]), dist)
seen = set()
todo = [Requirement(r) for r in given["roots"]]
while todo:
    req = todo.pop()
    name = canonicalize_name(req.name)
    for extra in sorted(req.extras) or [""]:
        if (name, extra) in seen or name not in dists:
            continue
        seen.add((name, extra))
        for spec in dists[name].requires or []:
            sub = Requirement(spec)
            if sub.marker is None or sub.marker.evaluate({"extra": extra}):
                todo.append(sub)
needed = {name for name, _ in seen} | {canonicalize_name(n) for n in given["allow"]}
unneeded = set(dists) - needed
modules = [
    module
    for module, names in metadata.packages_distributions().items()
    if all(canonicalize_name(n) in unneeded for n in names)
]
plugins = [
    ep.name
    for ep in metadata.entry_points(group="pytest11")
    if ep.dist is not None and canonicalize_name(ep.dist.name) in unneeded
]
print(json.dumps({"distributions": sorted(unneeded), "modules": sorted(modules),
                  "plugins": sorted(plugins)}))
"""
# On PYTHONPATH for every test run of the check (and the processes they start):
# the modules of the distributions upstream's tests do not install are not found,
# as if they were not installed.
BLOCKER = '''\
"""Written by scripts/fork.py pr-check: what upstream's tests don't install."""

import sys
from importlib.machinery import PathFinder

BLOCKED = frozenset({modules!r})


class _PathFinderWithoutBlocked(PathFinder):
    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname.partition(".")[0] in BLOCKED:
            return None
        return super().find_spec(fullname, path, target)


sys.meta_path[:] = [
    _PathFinderWithoutBlocked if finder is PathFinder else finder
    for finder in sys.meta_path
]
'''
# Imports the modules named in its arguments from the current folder (the tree).
IMPORT_CHECK = """\
import importlib, sys
from pathlib import Path

for name in sys.argv[1:]:
    module = importlib.import_module(name)
    where = Path(module.__file__).resolve()
    assert where.is_relative_to(Path.cwd().resolve()), f"{name} from {where}"
"""
_TY_LOCATION = re.compile(r"^(?P<path>[^:\s]+):\d+:\d+: (?P<what>.*)$")
_TY_SUMMARY = re.compile(r"^(Found \d+ diagnostics?|All checks passed!)$")
_HUNK = re.compile(r"^@@ -\S+ \+(\d+)(?:,(\d+))? @@")


def ty_diagnostics(output: str) -> Counter[str]:
    """
    `ty check --output-format concise` diagnostics, as "path: severity[rule]
    message" without line and column, so that a commit that moves code keeps them.
    """
    found: Counter[str] = Counter()
    for line in output.splitlines():
        line = line.rstrip()
        if not line or _TY_SUMMARY.match(line):
            continue
        match = _TY_LOCATION.match(line)
        found[f"{match['path']}: {match['what']}" if match else line] += 1
    return found


def new_diagnostics(baseline: Counter[str], found: Counter[str]) -> list[str]:
    """What `found` has more of than `baseline`."""
    return sorted((found - baseline).elements())


def changed_test_files(names: Iterable[str]) -> list[str]:
    """The test modules among the paths a commit adds or changes."""
    return sorted(
        name
        for name in names
        if name.startswith("tests/")
        and name.rpartition("/")[2].startswith("test_")
        and name.endswith(".py")
    )


def final_selection(
    tree: Path, pr_tests: Iterable[str], listed: Iterable[str]
) -> tuple[list[str], int]:
    """
    What the final suite runs when it is narrowed to a list: the PR's test files,
    then the listed node ids of the other test files that the tree has; and how
    many listed node ids are of files the tree lacks (the fork's own).
    """
    files = set(pr_tests)
    paths = {node: node.partition("::")[0] for node in listed}
    kept = sorted(
        node
        for node, path in paths.items()
        if path not in files and (tree / path).is_file()
    )
    missing = sum(not (tree / path).is_file() for path in paths.values())
    return [*sorted(files), *kept], missing


def changed_modules(names: Iterable[str]) -> list[str]:
    """The fastapi modules among the paths a commit adds or changes."""
    return sorted(
        _module_name(name)
        for name in names
        if name.startswith("fastapi/") and name.endswith(".py")
    )


def added_lines(diff: str) -> dict[str, set[int]]:
    """Line numbers that a `git diff -U0` adds or changes, per file (new side)."""
    lines: dict[str, set[int]] = {}
    current: set[int] | None = None
    for line in diff.splitlines():
        if line.startswith("+++ "):
            current = None
            if line.startswith("+++ b/"):
                current = lines.setdefault(line[len("+++ b/") :], set())
        elif current is not None and (hunk := _HUNK.match(line)):
            start, count = int(hunk[1]), int(hunk[2] or "1")
            current.update(range(start, start + count))
    return lines


# The PR's size (pr-check): its changed lines, in all (TOTAL) and per area (a path
# prefix), against the limits in pyproject.toml's [tool.fork.pr.limits]; and the
# share of its added test lines (tests/*.py) with NO_COVER, against upstream's.
TOTAL = "total"
NO_COVER = "pragma: no cover"
TEST_FILES = "tests/*.py"  # a git pathspec: also in tests/'s subfolders


def pr_size_limits(root: Path = ROOT) -> dict[str, int]:
    """
    The PR's size limits, in changed lines (pyproject.toml, [tool.fork.pr.limits]):
    TOTAL, and one per area, a path prefix ending with "/" ("fastapi/", ...).
    """
    limits = _pr_settings(root).get("limits")
    where = "pyproject.toml's [tool.fork.pr.limits]"
    if not isinstance(limits, dict) or TOTAL not in limits:
        raise ForkBuildError(f"{where} must be a table with a {TOTAL!r} limit")
    for key, value in limits.items():
        if key != TOTAL and not key.endswith("/"):
            raise ForkBuildError(
                f"{where}: {key!r} is neither {TOTAL!r} nor a folder (ending with /)"
            )
        if type(value) is not int or value < 0:
            raise ForkBuildError(f"{where}: {key} must be a whole number of lines")
    return dict(limits)


@dataclass(frozen=True, slots=True)
class PrSize:
    """What pr-check measures of the PR's size (measure_pr_size())."""

    # Changed lines (added + removed) per file the PR changes.
    changed: dict[str, int]
    # The lines the PR adds to tests/*.py, and how many of them have NO_COVER.
    test_lines: int
    test_no_cover: int
    # The same of upstream's own tests/*.py (all their lines).
    upstream_test_lines: int
    upstream_test_no_cover: int

    @property
    def total(self) -> int:
        return sum(self.changed.values())

    def area(self, prefix: str) -> int:
        """The changed lines of the files under `prefix`."""
        return sum(n for rel, n in self.changed.items() if rel.startswith(prefix))

    def outside(self, prefixes: Iterable[str]) -> int:
        """The changed lines of the files under none of `prefixes`."""
        areas = tuple(prefixes)
        return sum(n for rel, n in self.changed.items() if not rel.startswith(areas))

    def no_cover_over_upstream(self) -> bool:
        """Whether the PR's tests have a larger share of NO_COVER than upstream's."""
        if not self.test_no_cover:
            return False
        # a/b > c/d without floats (b > 0 here; d == 0: upstream has no tests).
        return (
            self.upstream_test_lines == 0
            or self.test_no_cover * self.upstream_test_lines
            > self.upstream_test_no_cover * self.test_lines
        )


def changed_line_counts(numstat: str) -> dict[str, int]:
    """
    Lines added + removed per file, from `git diff --numstat -z --no-renames` (as
    `git diff --stat` counts them; a binary file counts none).
    """
    changed: dict[str, int] = {}
    for record in numstat.split("\0"):
        if record:
            added, removed, rel = record.split("\t", 2)
            changed[rel] = sum(int(n) for n in (added, removed) if n != "-")
    return changed


def added_text(diff: str) -> dict[str, list[str]]:
    """The lines that a `git diff -U0` adds, per file (new side)."""
    added: dict[str, list[str]] = {}
    current: list[str] = []
    left = 0  # lines of the current hunk's new side still to come
    for line in diff.splitlines():
        if left:
            if line.startswith("+"):
                current.append(line[1:])
                left -= 1
        elif line.startswith("+++ "):
            current = []
            if line.startswith("+++ b/"):
                current = added.setdefault(line[len("+++ b/") :], [])
        elif hunk := _HUNK.match(line):
            left = int(hunk[2] or "1")
    return added


def _count_lines(tree: Path, rev: str, text: str, pathspec: str) -> int:
    """How many lines of the files `pathspec` matches at `rev` contain `text`."""
    result = _run(
        tree,
        ["git", "grep", "--count", "--fixed-strings", "-e", text, rev, "--", pathspec],
        {**os.environ, **TOOL_ENV},
    )
    if result.returncode not in (0, 1):  # 1: no line matches
        raise ForkBuildError(f"git grep failed in {tree}:\n{result.stderr}")
    return sum(int(line.rpartition(":")[2]) for line in result.stdout.splitlines())


def measure_pr_size(tree: Path, base: str = UPSTREAM_TAG, head: str = "HEAD") -> PrSize:
    """The size of the change from `base` (pristine upstream) to `head`."""
    numstat = git(tree, "diff", "--numstat", "-z", "--no-renames", base, head)
    diff = git(
        tree,
        "diff",
        "-U0",
        "--no-renames",
        "--src-prefix=a/",
        "--dst-prefix=b/",
        base,
        head,
        "--",
        TEST_FILES,
    )
    added = [line for lines in added_text(diff).values() for line in lines]
    return PrSize(
        changed=changed_line_counts(numstat),
        test_lines=len(added),
        test_no_cover=sum(NO_COVER in line for line in added),
        # An empty pattern matches every line.
        upstream_test_lines=_count_lines(tree, base, "", TEST_FILES),
        upstream_test_no_cover=_count_lines(tree, base, NO_COVER, TEST_FILES),
    )


def _areas(limits: Mapping[str, int]) -> list[str]:
    return [key for key in limits if key != TOTAL]


def _share(part: int, whole: int) -> str:
    return f"{part:,} of {whole:,} lines ({100 * part / whole if whole else 0:.3f}%)"


def pr_size_problems(size: PrSize, limits: Mapping[str, int]) -> list[str]:
    """Each limit the PR's size is over, with what to cut."""
    problems: list[str] = []
    areas = _areas(limits)
    if size.total > limits[TOTAL]:
        most_over_first = sorted(
            areas, key=lambda area: size.area(area) - limits[area], reverse=True
        )
        parts = [f"{a}: {size.area(a):,} of {limits[a]:,}" for a in most_over_first]
        if other := size.outside(areas):
            parts.append(f"other files: {other:,}")
        problems.append(
            f"the PR changes {size.total:,} lines, over the limit of "
            f"{limits[TOTAL]:,} ({'; '.join(parts)})"
        )
    for area in areas:
        changed = size.area(area)
        if changed > limits[area]:
            problems.append(
                f"the PR changes {changed:,} lines in {area}, over its limit of "
                f"{limits[area]:,} (cut {changed - limits[area]:,})"
            )
    if size.no_cover_over_upstream():
        ours = _share(size.test_no_cover, size.test_lines)
        upstream = _share(size.upstream_test_no_cover, size.upstream_test_lines)
        problems.append(
            f'"{NO_COVER}" is on {ours} the PR adds to {TEST_FILES}, more than '
            f"on upstream's own: {upstream}"
        )
    return problems


def pr_size_table(size: PrSize, limits: Mapping[str, int]) -> str:
    """The PR's changed lines per area and in all, beside the limits."""
    areas = _areas(limits)
    rows: list[tuple[str, int, int | None]] = [
        (area, size.area(area), limits[area]) for area in areas
    ]
    if other := size.outside(areas):
        rows.append(("other files", other, None))
    rows.append((TOTAL, size.total, limits[TOTAL]))
    width = max(len(name) for name, _, _ in rows)
    lines = ["PR size, in changed lines (added + removed, against pristine upstream):"]
    for name, changed, limit in rows:
        line = f"  {name:<{width}}  {changed:>6,}"
        if limit is not None:
            line += f" of {limit:>6,}"
            if changed > limit:
                line += f"  OVER by {changed - limit:,}"
        lines.append(line)
    ours = _share(size.test_no_cover, size.test_lines)
    upstream = _share(size.upstream_test_no_cover, size.upstream_test_lines)
    verdict = "OVER" if size.no_cover_over_upstream() else "at most"
    lines.append(
        f'  "{NO_COVER}": on {ours} the PR adds to {TEST_FILES}; '
        f"{verdict} upstream's share, {upstream}"
    )
    return "\n".join(lines)


def upstream_test_requirements(pyproject: dict[str, Any]) -> list[str]:
    """
    What upstream's tests run with: its "tests" dependency group (with the groups
    it includes), fastapi's dependencies and the extras in PR_TEST_EXTRAS.
    """
    groups = pyproject["dependency-groups"]

    def group(name: str) -> list[str]:
        requirements: list[str] = []
        for item in groups[name]:
            if isinstance(item, dict):
                requirements += group(item["include-group"])
            else:
                requirements.append(item)
        return requirements

    project = pyproject["project"]
    extras = project["optional-dependencies"]
    return [
        *project["dependencies"],
        *(req for extra in PR_TEST_EXTRAS for req in extras[extra]),
        *group("tests"),
    ]


def _pinned(requirement: str, root: Path = ROOT) -> str | None:
    """The version requirements-tests.txt pins for `requirement`, if any."""
    for line in (root / "requirements-tests.txt").read_text().splitlines():
        name, sep, version = line.partition("==")
        if sep and name.strip().lower() == requirement:
            return version.strip()
    return None


def _run(
    cwd: Path, command: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def _hidden_from_mypy(name: str) -> bool:
    """
    Whether pr-check's mypy leaves out a site-packages entry: the installed fastapi
    (not fastapi_cli, ...) and the .pth files (an editable fastapi's among them).
    """
    return (
        name == "fastapi"
        or re.fullmatch(r"fastapi-[^-]+\.(dist|egg)-info", name) is not None
        or (name.startswith(("__editable__", "_editable_impl_")) and "fastapi" in name)
        or name.endswith(".pth")
    )


def _and_modules(count: int) -> str:
    if count == 0:
        return ""
    return (
        " and the module it changes"
        if count == 1
        else f" and the {count} modules it changes"
    )


def _last_line(output: str) -> str:
    return output.strip().rpartition("\n")[2]


def _tail(text: str, count: int = 20) -> str:
    lines = text.rstrip().splitlines()
    shown = lines[-count:]
    more = (
        [f"[... {len(lines) - count} more lines above]"] if len(lines) > count else []
    )
    return "\n".join("    " + line for line in more + shown)


class PrCheck:
    """The state of one pr-check run: the tree, the Python, the baseline."""

    def __init__(self, python: str, work: Path, root: Path = ROOT) -> None:
        self.python = python
        self.work = work
        self.root = root
        self.tree = work / "fastapi"
        self.mypy_python = ""
        self.problems: list[str] = []
        self.ty_baseline: Counter[str] = Counter()
        self.blocked_plugins: list[str] = []
        self.test_env = dict(os.environ)
        # Node ids: the final suite runs these and the PR's tests (None: the
        # whole suite).
        self.upstream_tests: list[str] | None = None

    def py(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return _run(self.tree, [self.python, *args], env)

    def build(self) -> list[str]:
        """The PR tree; its commits, oldest first. Checks that it exports cleanly."""
        env = pr_identity(PR_CHECK_AUTHOR, PR_CHECK_DATE)
        build_pr_tree(self.tree, env, self.root)
        commits = git(
            self.tree, "rev-list", "--reverse", f"{UPSTREAM_TAG}..HEAD"
        ).split()
        whitespace = _run(
            self.tree,
            ["git", "diff", "--check", UPSTREAM_TAG, "HEAD"],
            {**os.environ, **TOOL_ENV},
        )
        if whitespace.returncode != 0:
            self.problems.append(
                "git diff --check: whitespace errors in the PR\n"
                + _tail(whitespace.stdout)
            )
        patches = self.work / "patches"
        git(self.tree, *FORMAT_PATCH, "-o", str(patches), f"{UPSTREAM_TAG}..HEAD")
        fresh = self.work / "am-check"
        _pristine_repository(fresh, self.root, nav=True)
        try:
            git(fresh, "am", "--3way", "--quiet", *map(str, sorted(patches.iterdir())))
        except ForkBuildError as exc:
            raise ForkBuildError(
                f"the PR's format-patch does not apply with git am --3way: {exc}"
            ) from None
        tree_of = [git(t, "rev-parse", "HEAD^{tree}") for t in (self.tree, fresh)]
        if tree_of[0] != tree_of[1]:
            self.problems.append(
                "git am --3way of the PR's format-patch gives another tree"
            )
        shutil.rmtree(fresh)
        print(
            f"PR tree: {len(commits)} commits on {UPSTREAM_TAG} in {self.tree}; its "
            "format-patch applies with git am --3way to a fresh pristine repository "
            "(same tree); git diff --check: "
            + ("clean" if whitespace.returncode == 0 else "FAILED")
        )
        return commits

    def size(self) -> None:
        """The PR's size against its limits (cheap, so before any test run)."""
        size = measure_pr_size(self.tree)
        limits = pr_size_limits(self.root)
        self.problems += pr_size_problems(size, limits)
        print(pr_size_table(size, limits), flush=True)

    def prepare_tests(self) -> None:
        """Make the packages that upstream's tests don't install unimportable."""
        with (self.tree / "pyproject.toml").open("rb") as f:
            roots = upstream_test_requirements(tomllib.load(f))
        given = {"roots": roots, "allow": ["fastapi", *ALSO_IMPORTABLE]}
        result = self.py("-c", UNNEEDED_DISTRIBUTIONS, json.dumps(given))
        if result.returncode != 0:
            raise ForkBuildError(
                "could not list the packages upstream's tests don't install:\n"
                + _tail(result.stdout + result.stderr)
            )
        unneeded = json.loads(result.stdout)
        blocker = self.work / "blocker"
        blocker.mkdir()
        modules = frozenset(unneeded["modules"])
        (blocker / "sitecustomize.py").write_text(
            BLOCKER.format(modules=sorted(modules))
        )
        self.blocked_plugins = unneeded["plugins"]
        self.test_env = {
            **os.environ,
            # Upstream's scripts/test.sh; CONTEXT is what its coverage settings read.
            "PYTHONPATH": f"./docs_src{os.pathsep}{blocker}",
            "CONTEXT": "pr-check",
        }
        if modules:
            probe = f"import importlib.util as u; assert u.find_spec({min(modules)!r}) is None"
            if self.py("-c", probe, env=self.test_env).returncode != 0:
                raise ForkBuildError(f"the import blocker did not hide {min(modules)}")
        print(
            "not importable in the tests (installed, but not in upstream's tests "
            f"group or fastapi[{','.join(PR_TEST_EXTRAS)}]): "
            + (", ".join(unneeded["distributions"]) or "nothing")
        )

    def pytest_args(self) -> list[str]:
        return [arg for name in self.blocked_plugins for arg in ("-p", f"no:{name}")]

    def prepare_mypy(self) -> None:
        """
        A Python for mypy to find the installed packages with, but not fastapi:
        mypy would take a module missing from the tree's fastapi package from an
        installed fastapi (the fork's), where Python (and ty) would not.
        """
        shadow = self.work / "site-packages-without-fastapi"
        shadow.mkdir()
        where = "import json, site; print(json.dumps(site.getsitepackages()))"
        for folder in json.loads(self.py("-c", where).stdout):
            for entry in sorted(Path(folder).iterdir()):
                if (
                    not _hidden_from_mypy(entry.name)
                    and not (shadow / entry.name).exists()
                ):
                    (shadow / entry.name).symlink_to(entry)
        env = self.work / "mypy-python"
        subprocess.run(
            [self.python, "-m", "venv", "--without-pip", str(env)], check=True
        )
        self.mypy_python = str(env / "bin" / "python")
        site = _run(self.work, [self.mypy_python, "-c", where]).stdout
        (Path(json.loads(site)[0]) / "installed.pth").write_text(f"{shadow}\n")
        hidden = "import importlib.util as u; assert u.find_spec('fastapi') is None"
        if _run(env, [self.mypy_python, "-c", hidden]).returncode != 0:
            raise ForkBuildError(f"{self.mypy_python} still finds an installed fastapi")

    def mypy(self) -> list[str]:
        cache = str(self.work / "mypy-cache")
        options = ["--python-executable", self.mypy_python, "--cache-dir", cache]
        return [*PR_LINT["mypy"], *options]

    def ty(
        self, result: subprocess.CompletedProcess[str] | None = None
    ) -> Counter[str]:
        """ty's diagnostics, from `result` (a run of TY) or from a run of it now."""
        result = result or self.py(*TY, "--python", self.python)
        if result.returncode not in (0, 1):
            raise ForkBuildError(
                "ty check did not run:\n" + _tail(result.stdout + result.stderr)
            )
        return ty_diagnostics(result.stdout)

    def baseline(self) -> None:
        """mypy passes on pristine upstream; ty's diagnostics there are the baseline."""
        git(self.tree, "checkout", "-q", UPSTREAM_TAG)
        version = self.py("-m", "ty", "--version")
        if version.returncode != 0:
            raise ForkBuildError(
                f"ty is not installed for {self.python}: pip install -r "
                "requirements-tests.txt"
            )
        pin = _pinned("ty", self.root)
        found = version.stdout.split()[-1]
        if pin is not None and found != pin:
            raise ForkBuildError(
                f"ty {found} for {self.python}, but requirements-tests.txt pins {pin}"
            )
        mypy = self.py(*self.mypy())
        if mypy.returncode != 0:
            raise ForkBuildError(
                "mypy fails on pristine upstream:\n" + _tail(mypy.stdout + mypy.stderr)
            )
        self.ty_baseline = self.ty()
        print(
            f"pristine upstream: mypy passes; ty {found}: "
            f"{sum(self.ty_baseline.values())} diagnostics (the baseline)"
        )

    def commit(self, index: int, count: int, commit: str) -> None:
        """One commit of the PR: imports, lint, ty, the tests it adds or changes."""
        began = time.monotonic()
        git(self.tree, "checkout", "-q", commit)
        subject = git(self.tree, "log", "-1", "--format=%s").strip()
        diff = ["diff", "--name-only", "--no-renames", "--diff-filter=d"]
        names = git(self.tree, *diff, f"{commit}~1", commit).splitlines()
        passed: list[str] = []
        failed: list[str] = []

        def check(what: str, returncode: int, output: str) -> None:
            if returncode == 0:
                passed.append(what)
                return
            failed.append(what)
            self.problems.append(
                f'commit {index}/{count} {commit[:7]} "{subject}": {what} failed\n'
                + _tail(output)
            )

        modules = changed_modules(names)
        checks: dict[str, tuple[list[str], dict[str, str] | None]] = {
            "import fastapi" + _and_modules(len(modules)): (
                ["-W", "error", "-c", IMPORT_CHECK, "fastapi", *modules],
                self.test_env,
            ),
            "mypy": (self.mypy(), None),
            "ruff check": (PR_LINT["ruff check"], None),
            "ruff format": (PR_LINT["ruff format"], None),
            "ty": ([*TY, "--python", self.python], None),
        }
        # Side by side: mypy is single-threaded.
        with ThreadPoolExecutor(len(checks)) as pool:
            running = {
                what: pool.submit(self.py, *args, env=env)
                for what, (args, env) in checks.items()
            }
        results = {what: future.result() for what, future in running.items()}
        ty = results.pop("ty")
        for what, result in results.items():
            check(what, result.returncode, result.stdout + result.stderr)
        new = new_diagnostics(self.ty_baseline, self.ty(ty))
        check("ty", int(bool(new)), "new diagnostics:\n" + "\n".join(new))
        tests = changed_test_files(names)
        if tests:
            pytest = [*PR_SUITE[:2], *PYTEST_QUIET, *self.pytest_args(), *tests]
            result = self.py(*pytest, env=self.test_env)
            what = (
                f"the {len(tests)} test files it changes ({_last_line(result.stdout)})"
            )
            check(what, result.returncode, result.stdout + result.stderr)
        outcome = f"FAILED {', '.join(failed)}; passed" if failed else "ok:"
        untested = "" if tests else ", no test file changed"
        print(
            f"[{index}/{count}] {commit[:7]} {subject}: {outcome} "
            f"{', '.join(passed)}{untested} ({time.monotonic() - began:.0f}s)",
            flush=True,
        )

    def final_suite(self, head: str) -> None:
        """Upstream's suite and the PR's tests, once, on the PR's last commit."""
        began = time.monotonic()
        git(self.tree, "checkout", "-q", head)
        self.py("-m", "coverage", "erase")
        log = self.work / "pytest.log"
        command = [self.python, *PR_SUITE, *PYTEST_QUIET, "-rfE", *self.pytest_args()]
        what = "upstream's suite and the PR's tests"
        if self.upstream_tests is not None:
            diff = ["diff", "--name-only", "--no-renames", "--diff-filter=d"]
            names = git(self.tree, *diff, UPSTREAM_TAG, head).splitlines()
            pr_tests = changed_test_files(names)
            selected, not_in_tree = final_selection(
                self.tree, pr_tests, self.upstream_tests
            )
            command = [
                *(arg for arg in command if arg not in ("tests", "scripts/tests/")),
                *selected,
            ]
            what = (
                f"the PR's {len(pr_tests)} test files and {len(selected) - len(pr_tests)} "
                f"listed upstream tests (and {not_in_tree} listed of files the PR's tree "
                "lacks)"
            )
        with log.open("w") as out:
            suite = subprocess.run(
                command,
                cwd=self.tree,
                env=self.test_env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        output = log.read_text()
        counts = _last_line(output)
        if suite.returncode != 0:
            self.problems.append(
                f"{what} failed ({counts}), log in {log}:\n" + _tail(output, 60)
            )
        print(
            f"{what} on the last commit, with upstream's settings: {counts} "
            f"({time.monotonic() - began:.0f}s)",
            flush=True,
        )
        self.py("-m", "coverage", "combine", "--quiet")
        report = self.work / "coverage.json"
        result = self.py("-m", "coverage", "json", "--quiet", "-o", str(report))
        if result.returncode != 0:
            self.problems.append(
                "coverage json failed:\n" + _tail(result.stdout + result.stderr)
            )
            return
        self.coverage(json.loads(report.read_text()))

    def coverage(self, report: dict[str, Any]) -> None:
        """Every line the PR adds to a measured file is run (upstream: 100%)."""
        diff = git(
            self.tree,
            "diff",
            "-U0",
            "--no-renames",
            "--src-prefix=a/",
            "--dst-prefix=b/",
            "--diff-filter=d",
            UPSTREAM_TAG,
            "HEAD",
            "--",
            "*.py",
        )
        ours = {rel: lines for rel, lines in added_lines(diff).items() if lines}
        files = report["files"]
        measured = sorted(rel for rel in ours if rel in files)
        # Outside the coverage source, or in its omit list (which the PR extends).
        unmeasured = sorted(rel for rel in ours if rel not in files)
        missing = []
        for rel in measured:
            first_line = statement_of((self.tree / rel).read_text())
            not_run = set(files[rel]["missing_lines"])
            missing += [
                f"{rel}:{n}" for n in sorted(ours[rel]) if first_line(n) in not_run
            ]
        if missing:
            self.problems.append(
                "coverage: lines the PR adds or changes that are not run (upstream "
                "requires 100%):\n" + _tail("\n".join(missing))
            )
        print(
            f"coverage: {len(missing) or 'every one'} of the "
            f"{sum(len(ours[rel]) for rel in measured)} lines the PR adds or changes "
            f"in {len(measured)} measured files "
            + ("not run" if missing else "run")
            + f" (the run's total: {report['totals']['percent_covered']:.2f}%)"
            + "; not measured (the tree's coverage settings): "
            + (", ".join(unmeasured) or "none")
        )


def cmd_pr_check(args: argparse.Namespace) -> None:
    began = time.monotonic()
    python = os.path.abspath(args.python)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.workdir is not None:
            work = Path(args.workdir).resolve()
            if work.exists():
                shutil.rmtree(work)
            work.mkdir(parents=True)
        check = PrCheck(python, work)
        if args.upstream_tests is not None:
            listed = Path(args.upstream_tests).read_text().splitlines()
            check.upstream_tests = [line for line in listed if line.strip()]
        commits = check.build()
        check.size()
        check.prepare_tests()
        check.prepare_mypy()
        check.baseline()
        for index, commit in enumerate(commits, 1):
            check.commit(index, len(commits), commit)
        check.final_suite(commits[-1])
    took = f"{time.monotonic() - began:.0f}s"
    if check.problems:
        raise ForkBuildError(
            f"pr-check: {len(check.problems)} "
            f"problem{'s' if len(check.problems) > 1 else ''} ({took}):\n\n"
            + "\n\n".join(check.problems)
        )
    print(f"pr-check: every commit of the PR and the final tree pass ({took})")


def cmd_testdir(args: argparse.Namespace) -> None:
    dest = Path(args.dest).resolve()
    src = dest.parent / (dest.name + "-src")
    for folder in (dest, src):
        if folder.exists():
            shutil.rmtree(folder)
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp)
        if args.pristine:
            upstream = fork_backend.read_upstream()
            fork_backend.unpack_sdist(fork_backend.fetch_sdist(upstream), tree)
        else:
            fork_backend.assemble(tree)
        dest.mkdir(parents=True)
        for rel in TEST_TREE:
            if (tree / rel).is_dir():
                shutil.copytree(tree / rel, dest / rel)
            else:
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(tree / rel, dest / rel)
        # The whole assembled tree beside it, for lint (upstream's lint runs on
        # fastapi/, tests/, docs_src/ and scripts/ with upstream's settings).
        shutil.copytree(tree, src)


def cmd_upstream_sdist(args: argparse.Namespace) -> None:
    print(fork_backend.fetch_sdist(fork_backend.read_upstream()))


def cmd_build_inputs(args: argparse.Namespace) -> None:
    print(build_inputs_digest(ROOT, args.extra))


def statement_of(source: str) -> Callable[[int], int]:
    """
    Map a line to the first line of the statement that holds it, as coverage
    reports it (a line our patch changes inside a multi-line statement counts as
    run when the statement runs).
    """
    from coverage.parser import PythonParser

    parser = PythonParser(text=source)
    parser.parse_source()
    return parser.first_line


def our_lines(pristine: Path, assembled: Path) -> dict[str, set[int]]:
    """Lines of the assembled package that are ours: new files, added or changed lines."""
    lines: dict[str, set[int]] = {}
    for path in sorted(assembled.rglob("*.py")):
        rel = path.relative_to(assembled).as_posix()
        new = path.read_text().splitlines()
        old_path = pristine / rel
        if not old_path.exists():
            lines[rel] = set(range(1, len(new) + 1))
            continue
        old = old_path.read_text().splitlines()
        matcher = difflib.SequenceMatcher(a=old, b=new, autojunk=False)
        changed = {
            line + 1
            for tag, _, _, j1, j2 in matcher.get_opcodes()
            if tag in ("replace", "insert")
            for line in range(j1, j2)
        }
        if changed:
            lines[rel] = changed
    return lines


def load_package_coverage(data_file: str) -> tuple[Any, dict[str, str], float]:
    """Coverage data, the measured files of the fastapi package, and its total."""
    import coverage

    cov = coverage.Coverage(data_file=data_file)
    cov.load()
    measured = {}
    for filename in cov.get_data().measured_files():
        parts = Path(filename).parts
        # The installed package: site-packages/fastapi/... (not tests/ or docs_src/).
        if (
            "site-packages" in parts
            and parts[parts.index("site-packages") + 1] == "fastapi"
        ):
            measured["/".join(parts[parts.index("site-packages") + 1 :])] = filename
    with open(os.devnull, "w") as devnull:
        total = cov.report(include=list(measured.values()), file=devnull)
    return cov, measured, total


def cmd_coverage(args: argparse.Namespace) -> None:
    cov, measured, total = load_package_coverage(args.data_file)
    with tempfile.TemporaryDirectory() as tmp:
        pristine, assembled = Path(tmp) / "pristine", Path(tmp) / "assembled"
        pristine.mkdir()
        assembled.mkdir()
        upstream = fork_backend.read_upstream()
        fork_backend.unpack_sdist(fork_backend.fetch_sdist(upstream), pristine)
        fork_backend.assemble(assembled)
        ours = our_lines(pristine / "fastapi", assembled / "fastapi")
        problems = []
        for rel, lines in sorted(ours.items()):
            key = f"fastapi/{rel}"
            source = (assembled / "fastapi" / rel).read_text()
            for number in sorted(lines):
                if "pragma: no cover" in source.splitlines()[number - 1]:
                    problems.append(f"{key}:{number}: new 'pragma: no cover'")
            if key not in measured:
                problems.append(f"{key}: never imported by the tests")
                continue
            _, statements, excluded, missing, _ = cov.analysis2(measured[key])
            first_line = statement_of(source)
            for number in sorted(lines):
                start = first_line(number)
                if start in missing:
                    problems.append(f"{key}:{number}: our line is not covered")
                elif start in excluded and start not in statements:
                    problems.append(
                        f"{key}:{number}: our line is excluded from coverage"
                    )
        print(f"our lines: {sum(map(len, ours.values()))} in {len(ours)} files")
    print(f"fastapi package total: {total:.2f}% (fork)")
    baseline = args.baseline_total
    if args.baseline is not None:
        baseline = load_package_coverage(args.baseline)[2]
    if baseline is not None:
        print(f"fastapi package total: {baseline:.2f}% (pristine upstream)")
        if total < baseline:
            problems.append(f"package total {total:.2f}% < pristine {baseline:.2f}%")
    if problems:
        raise ForkBuildError("coverage of our lines:\n" + "\n".join(problems))
    print("every line of ours is covered")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    prepare = sub.add_parser("prepare")
    prepare.add_argument("--force", action="store_true")
    prepare.add_argument("--no-venv", action="store_true")
    prepare.set_defaults(func=cmd_prepare)
    export = sub.add_parser("export")
    export.add_argument("--force", action="store_true")
    export.set_defaults(func=cmd_export)
    check = sub.add_parser("check")
    check.add_argument("--work-tree", action="store_true")
    check.set_defaults(func=cmd_check)
    pr = sub.add_parser("pr")
    pr.add_argument("--output", default=str(ROOT / "dist" / "pr"))
    pr.add_argument("--author", help="'Name <email>' (default: your git identity)")
    pr.add_argument("--date", help="the commits' date (default: now)")
    pr.set_defaults(func=cmd_pr)
    testdir = sub.add_parser("testdir")
    testdir.add_argument("dest")
    testdir.add_argument("--pristine", action="store_true")
    testdir.set_defaults(func=cmd_testdir)
    cover = sub.add_parser("coverage")
    cover.add_argument("data_file")
    baselines = cover.add_mutually_exclusive_group()
    baselines.add_argument("--baseline")
    baselines.add_argument("--baseline-total", type=float)
    cover.set_defaults(func=cmd_coverage)
    pr_check = sub.add_parser("pr-check")
    pr_check.add_argument("--python", default=sys.executable)
    pr_check.add_argument("--workdir", help="build and keep the check's files here")
    pr_check.add_argument(
        "--upstream-tests",
        metavar="FILE",
        help="the last commit runs the PR's tests and these upstream tests (node "
        "ids, one a line), not the whole suite",
    )
    pr_check.set_defaults(func=cmd_pr_check)
    sub.add_parser("upstream-sdist").set_defaults(func=cmd_upstream_sdist)
    inputs = sub.add_parser("build-inputs")
    inputs.add_argument("extra", nargs="*")
    inputs.set_defaults(func=cmd_build_inputs)
    bump = sub.add_parser("bump")
    bump.add_argument("version", help="a release on the package index, or 'newest'")
    bump.add_argument("--index-url", help="the simple index (default: PIP_INDEX_URL)")
    bump.add_argument("--force", action="store_true")
    bump.add_argument(
        "--venv", help="regenerate the requirements in this new venv, kept"
    )
    # Imported when it runs: fork_bump imports this module, and needs packages
    # (requirements-tests.txt) that the other commands, run.sh's among them, don't.
    bump.set_defaults(
        func=lambda args: importlib.import_module("fork_bump").cmd_bump(args)
    )
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except ForkBuildError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
