"""Move the fork to another upstream FastAPI release: `python scripts/fork.py bump VERSION`.

1. The release's sdist on the package index, with the sha256 the index publishes for
   it (VERSION may be "newest": the newest final release). pip downloads it with
   that digest required, and the file is checked against it again.
2. The work tree of the current pin, built as `fork.py prepare` builds it: its
   commits hold the blobs the patches' `index` lines name, the bases of the
   three-way merges below.
3. requirements-tests.txt, regenerated in a throw-away venv: pip freeze of the new
   release's "tests" dependency group, its dependencies and extras, our build's
   requirements and the packages of [tool.fork.test-requirements] in pyproject.toml.
4. The new pin (version, sha256) in pyproject.toml, then .work/fastapi on the new
   release: the pristine sdist (tag "upstream"), our new files, the old tree's
   commits (tags "upstream-OLD" and "fork-OLD"), the version mark redone as
   VERSION+lifespan.1, and the rest of the series with `git am --3way`.
5. If the series applies: export (patches/ rewritten) and `fork.py check
   --work-tree`. If a patch does not: stop there, in the middle of `git am`, and
   say which patch, which of its hunks, what upstream changed in those places
   between the two releases, and what to do next.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fork
import fork_backend
import requests
import tomlkit
from fork_backend import ROOT, ForkBuildError, Upstream
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version
from pypi_simple import PYPI_SIMPLE_ENDPOINT, NoSuchProjectError, PyPISimple
from unidiff.patch import Hunk, PatchSet

NEWEST = "newest"
# The version mark, the series' first patch: the only lines it may change.
VERSION_LINES = {
    "fastapi/__init__.py": '__version__ = "{}"',
    "pyproject.toml": 'version = "{}"',
}
REQUIREMENTS = "requirements-tests.txt"
# What the hunks and upstream's changes shown for a conflict may take, at most.
SHOWN_LINES = 60
HEADER = """\
# Everything the test command installs beside the fork itself, pinned: pip freeze,
# in a fresh venv, of upstream fastapi {version}'s dependencies,
# its {extras} extras and its "tests" dependency group, our build's
# requirements ([build-system] in pyproject.toml) and the packages of
# [tool.fork.test-requirements] there, which says what each is for. fastapi is
# deliberately absent: the fork (or, for the baseline, pristine upstream) is
# installed next to these.
# `python scripts/fork.py bump VERSION` writes this file (CONTRIBUTING.md); to add a
# package by hand, list it in pyproject.toml and pin it here with what it pulls in.
"""


def default_index_url() -> str:
    return os.environ.get("PIP_INDEX_URL") or PYPI_SIMPLE_ENDPOINT


@dataclass(frozen=True, slots=True)
class Release:
    """An upstream release's sdist as the package index lists it."""

    name: str
    version: str
    sha256: str
    yanked: bool

    @property
    def upstream(self) -> Upstream:
        return Upstream(name=self.name, version=self.version, sha256=self.sha256)


def _version(text: str | None) -> Version | None:
    try:
        return Version(text) if text else None
    except InvalidVersion:
        return None


def find_release(name: str, wanted: str, index_url: str) -> Release:
    """The sdist of `name` `wanted` (or the newest final release) and its sha256."""
    target = None if wanted == NEWEST else _version(wanted)
    if wanted != NEWEST and target is None:
        raise ForkBuildError(
            f"{wanted!r} is not a version: give a release such as 0.164.0, or "
            f"'{NEWEST}' for the newest one"
        )
    try:
        with PyPISimple(index_url) as client:
            page = client.get_project_page(name, timeout=60)
    except NoSuchProjectError:
        raise ForkBuildError(
            f"the package index {index_url} has no project {name}"
        ) from None
    except (requests.RequestException, ValueError) as exc:
        raise ForkBuildError(
            f"could not read the project page of {name} on the package index "
            f"{index_url}: {exc}\nThe index is PIP_INDEX_URL, or pypi.org; choose "
            "another with --index-url."
        ) from None
    sdists = {}
    for package in page.packages:
        version = _version(package.version)
        if package.package_type == "sdist" and version is not None:
            sdists[version] = package
    if target is None:
        finals = [
            v for v, p in sdists.items() if not v.is_prerelease and not p.is_yanked
        ]
        if not finals:
            raise ForkBuildError(f"{index_url} lists no final release of {name}")
        target = max(finals)
    found = sdists.get(target)
    if found is None:
        listed = {_version(p.version) for p in page.packages} - {None}
        if target in listed:
            raise ForkBuildError(
                f"{name} {wanted} has no sdist on {index_url}, only wheels: the "
                "fork is built from upstream's sdist"
            )
        newest = sorted(sdists, reverse=True)[:5]
        raise ForkBuildError(
            f"{name} {wanted} is not on the package index {index_url}; its newest "
            f"releases there: {', '.join(map(str, newest)) or 'none'}"
        )
    sha256 = found.digests.get("sha256")
    if not sha256:
        raise ForkBuildError(
            f"{index_url} publishes no sha256 for {found.filename}: the pin needs "
            "the index's own digest"
        )
    release = Release(name, str(found.version), sha256, found.is_yanked)
    if found.filename != release.upstream.sdist_name:
        raise ForkBuildError(
            f"{index_url} names the sdist of {name} {release.version} "
            f"{found.filename}, not {release.upstream.sdist_name} as the build "
            "expects"
        )
    return release


def fetch_release(release: Release) -> Path:
    """Download the release's sdist (pip, the digest required) and check it."""
    try:
        return fork_backend.fetch_sdist(release.upstream)
    except ForkBuildError as exc:
        raise ForkBuildError(
            f"the sdist of {release.name} {release.version} could not be fetched "
            f"with the sha256 the package index publishes for it ({release.sha256}):"
            f"\n{exc}"
        ) from None


def check_clean(root: Path) -> None:
    status = fork.git(root, "status", "--porcelain", "--untracked-files=normal")
    if status.strip():
        raise ForkBuildError(
            "the repository has uncommitted changes: commit or stash them first "
            "(bump rewrites pyproject.toml, requirements-tests.txt and patches/, and "
            "a bump that stops is undone with git checkout):\n" + status.rstrip()
        )


def check_work_tree(root: Path, tree: Path) -> None:
    """Refuse to replace a work tree that holds work the repository lacks."""
    if not tree.exists():
        return
    with tempfile.TemporaryDirectory() as tmp:
        committed, exported = Path(tmp) / "committed", Path(tmp) / "exported"
        fork.committed_layout(root, committed)
        try:
            fork.export_work_tree(tree, exported)
            differing = fork.compare_trees(committed, exported)
        except ForkBuildError as exc:
            differing = [str(exc)]
    if differing:
        raise ForkBuildError(
            f"{tree} holds work that is not in the repository ("
            + "; ".join(differing[:5])
            + "): export it first (python scripts/fork.py export), or pass --force "
            "to let bump replace it"
        )


def _pyproject(root: Path) -> dict[str, Any]:
    with (root / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def our_test_requirements(root: Path) -> list[Requirement]:
    """Our build's requirements and the packages of [tool.fork.test-requirements]."""
    pyproject = _pyproject(root)
    listed = [
        *pyproject["build-system"]["requires"],
        *pyproject["tool"]["fork"]["test-requirements"]["packages"],
    ]
    return [Requirement(item) for item in listed]


def _run(command: list[str], cwd: Path, what: str) -> str:
    result = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    if result.returncode != 0:
        raise ForkBuildError(
            f"{what} failed ({' '.join(command)}, exit code {result.returncode}):\n"
            + fork._tail(result.stdout + result.stderr, 40)
        )
    return result.stdout


def regenerate_requirements(
    root: Path, upstream: Path, version: str, venv: Path | None = None
) -> str:
    """
    requirements-tests.txt for the release unpacked in `upstream`: what its
    tests, extras and our packages need, as pip installs it in a fresh venv (a
    throw-away one, or `venv`, kept).
    """
    requirements = fork.upstream_test_requirements(_pyproject(upstream))
    ours = our_test_requirements(root)
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(tmp) / "venv" if venv is None else venv
        _run([sys.executable, "-m", "venv", str(where)], Path(tmp), "creating a venv")
        pip = [str(where / "bin" / "python"), "-m", "pip"]
        install = [*pip, "install", "--quiet", "--no-compile", *requirements]
        _run(
            install + [str(requirement) for requirement in ours],
            Path(tmp),
            f"installing fastapi {version}'s test requirements and ours",
        )
        frozen = _run([*pip, "freeze", "--exclude", "fastapi"], Path(tmp), "pip freeze")
    markers = {canonicalize_name(r.name): r.marker for r in ours if r.marker}
    pins = []
    for line in frozen.splitlines():
        name, sep, _ = line.partition("==")
        if not sep or not re.fullmatch(r"[A-Za-z0-9._-]+", name):
            raise ForkBuildError(
                f"pip freeze gave {line!r}, which is not a pin from the index"
            )
        marker = markers.get(canonicalize_name(name))
        pins.append(f"{line} ; {marker}" if marker else line)
    extras = " and ".join(f'"{extra}"' for extra in fork.PR_TEST_EXTRAS)
    return HEADER.format(version=version, extras=extras) + "".join(
        f"{pin}\n" for pin in sorted(pins, key=str.lower)
    )


def write_pin(root: Path, release: Release) -> None:
    """Set [tool.fork.upstream] version and sha256, keeping the file's comments."""
    path = root / "pyproject.toml"
    document = tomlkit.parse(path.read_text())
    tool: Any = document["tool"]
    tool["fork"]["upstream"]["version"] = release.version
    tool["fork"]["upstream"]["sha256"] = release.sha256
    path.write_text(tomlkit.dumps(document))


def _git_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, **fork.TOOL_ENV, **(extra or {})}


def _mail(patch: Path, cwd: Path) -> tuple[str, dict[str, str]]:
    """A patch's commit message and author, as git am reads them."""
    with tempfile.TemporaryDirectory() as tmp, patch.open("rb") as mail:
        body = Path(tmp) / "msg"
        info = subprocess.run(
            ["git", "mailinfo", str(body), str(Path(tmp) / "diff")],
            cwd=cwd,
            stdin=mail,
            capture_output=True,
            env=_git_env(),
        )
        if info.returncode != 0:
            raise ForkBuildError(f"git mailinfo cannot read {patch.name}")
        fields = dict(
            line.split(": ", 1)
            for line in info.stdout.decode().splitlines()
            if ": " in line
        )
        text = body.read_text(encoding="utf-8")
    message = fields["Subject"] + ("\n\n" + text.strip() if text.strip() else "")
    author = {
        "GIT_AUTHOR_NAME": fields["Author"],
        "GIT_AUTHOR_EMAIL": fields["Email"],
        "GIT_AUTHOR_DATE": fields["Date"],
    }
    return message + "\n", author


def check_version_mark(patch: Path) -> None:
    """The first patch may change the version lines only (bump redoes them)."""
    problems = []
    files = PatchSet(patch.read_text(encoding="utf-8"))
    if {f.path for f in files} != set(VERSION_LINES):
        problems.append(f"it changes {', '.join(sorted(f.path for f in files))}")
    for patched in files:
        pattern = VERSION_LINES.get(patched.path, "{}").format('[^"]*')
        for hunk in patched:
            for line in hunk:
                if (line.is_added or line.is_removed) and not re.fullmatch(
                    pattern, line.value.rstrip("\n")
                ):
                    problems.append(f"{patched.path}: {line.value.strip()!r}")
    if problems:
        raise ForkBuildError(
            f"{patch.name} is not only the version mark ({'; '.join(problems[:5])}): "
            "bump redoes the first patch on the new release as the version mark, "
            "the version lines of " + " and ".join(VERSION_LINES) + " and nothing "
            "else; move other changes to a patch of their own"
        )


def mark_version(tree: Path, patch: Path, old: str, new: str) -> str:
    """
    Redo the version mark (the first patch) on the new release in `tree`: its
    version lines become NEW+lifespan.1; its message and author are kept, with
    OLD replaced by NEW. Return the mark.
    """
    check_version_mark(patch)
    mark = f"{new}+{fork_backend.VERSION_LABEL}.1"
    for rel, line in VERSION_LINES.items():
        path = tree / rel
        lines = path.read_text().splitlines(keepends=True)
        found = [
            i for i, text in enumerate(lines) if text.rstrip("\n") == line.format(new)
        ]
        if len(found) != 1:
            raise ForkBuildError(
                f"upstream {new}'s {rel} has {len(found)} lines '{line.format(new)}', "
                "not one: mark the version by hand"
            )
        lines[found[0]] = line.format(mark) + "\n"
        path.write_text("".join(lines))
    message, author = _mail(patch, tree)
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".txt") as file:
        file.write(message.replace(old, new))
        file.flush()
        fork.git(tree, "add", "-A")
        fork.git(
            tree, "commit", "-q", "--cleanup=verbatim", "-F", file.name, env=author
        )
    return mark


def build_new_tree(root: Path, tree: Path, old_tree: Path, old: str) -> None:
    """
    `tree` as `fork.py prepare` lays it out for the new pin, but without the
    series: the pristine sdist and our new files (the work tree that export
    reads must hold them before the series stops anywhere). The old tree's
    commits come along: tags upstream-OLD (its pristine sdist) and fork-OLD.
    """
    with tempfile.TemporaryDirectory() as tmp:
        layout = Path(tmp)
        shutil.copyfile(root / "pyproject.toml", layout / "pyproject.toml")
        for rel in fork_backend.overlay_files(root):
            (layout / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / rel, layout / rel)
        fork.build_work_tree(tree, layout)
    fork.git(
        tree,
        "fetch",
        "--quiet",
        "--no-tags",
        str(old_tree),
        f"refs/tags/{fork.UPSTREAM_TAG}:refs/tags/{fork.UPSTREAM_TAG}-{old}",
        f"HEAD:refs/tags/fork-{old}",
    )
    # Built from the repository's series, as far as export is concerned.
    (tree / fork.FINGERPRINT).write_text(fork.layout_fingerprint(root))


@dataclass(frozen=True, slots=True)
class Stop:
    """Where `git am` stopped: the patch, and what git said."""

    patch: Path
    output: str


def apply_series(tree: Path, patches: list[Path]) -> tuple[list[str], Stop | None]:
    """
    `git am --3way` the patches in one session; how each applied ("as it was" or
    "with a three-way merge"), and where it stopped, if it did.
    """
    result = subprocess.run(
        ["git", "am", "--3way", *map(str, patches)],
        cwd=tree,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        stdin=subprocess.DEVNULL,
        env=_git_env(),
    )
    blocks = re.split(r"^Applying: ", result.stdout, flags=re.MULTILINE)[1:]
    how = [
        "with a three-way merge"
        if "Falling back to patching base and 3-way merge" in block
        else "as it was"
        for block in blocks
    ]
    if result.returncode == 0:
        return how, None
    state = tree / ".git" / "rebase-apply"
    if not (state / "next").is_file():
        raise ForkBuildError(f"git am failed in {tree}:\n{result.stdout}")
    failed = int((state / "next").read_text()) - 1
    return how[:failed], Stop(patches[failed], result.stdout)


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def _show(tree: Path, rev: str, rel: str) -> str | None:
    result = subprocess.run(
        ["git", "show", f"{rev}:{rel}"],
        cwd=tree,
        capture_output=True,
        text=True,
        env=_git_env(),
    )
    return result.stdout if result.returncode == 0 else None


def _hunk_patch(path: str, hunk: Hunk) -> str:
    return f"diff --git a/{path} b/{path}\n--- a/{path}\n+++ b/{path}\n{hunk}"


def failing_hunks(tree: Path, patch: Path) -> list[tuple[str, Hunk]]:
    """The patch's hunks that do not apply, as they are, to HEAD."""
    failing = []
    with tempfile.TemporaryDirectory() as tmp:
        env = _git_env({"GIT_INDEX_FILE": str(Path(tmp) / "index")})
        subprocess.run(["git", "read-tree", "HEAD"], cwd=tree, env=env, check=True)
        for patched in PatchSet(patch.read_text(encoding="utf-8")):
            for hunk in patched:
                check = subprocess.run(
                    ["git", "apply", "--cached", "--check", "-"],
                    cwd=tree,
                    input=_hunk_patch(patched.path, hunk),
                    capture_output=True,
                    text=True,
                    env=env,
                )
                if check.returncode != 0:
                    failing.append((patched.path, hunk))
    return failing


def _preimages(patch: Path) -> dict[str, str]:
    """The blob each file of the patch applies to (its `index` line)."""
    found = re.findall(
        r"^diff --git a/(\S+) b/\S+\n(?:.*\n)*?index ([0-9a-f]+)\.\.",
        patch.read_text(encoding="utf-8"),
        flags=re.MULTILINE,
    )
    return dict(found)


def to_pristine(
    pristine: list[str], preimage: list[str], start: int, end: int
) -> tuple[int, int]:
    """
    Lines start..end (1-based, inclusive) of a file as the earlier patches left
    it, as lines of the pristine file it came from.
    """
    lows, highs = [], []
    matcher = difflib.SequenceMatcher(a=pristine, b=preimage, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if j1 == j2:
            # Pristine lines an earlier patch removed: in the region if inside it.
            if start - 1 < j1 < end:
                lows.append(i1 + 1)
                highs.append(i2)
            continue
        low, high = max(start - 1, j1), min(end, j2)
        if low >= high:
            continue
        if tag == "equal":
            lows.append(i1 + low - j1 + 1)
            highs.append(i1 + high - j1)
        else:
            # Lines an earlier patch added or changed: where they stand.
            lows.append(max(i1, 1))
            highs.append(max(i2, i1 + 1))
    return (min(lows), max(highs)) if lows else (start, end)


def upstream_changes(
    tree: Path, rel: str, old_tag: str, region: tuple[int, int]
) -> list[str]:
    """upstream's diff between the two releases, the hunks that touch `region`."""
    diff = fork.git(
        tree,
        "diff",
        "--no-renames",
        "--src-prefix=a/",
        "--dst-prefix=b/",
        old_tag,
        fork.UPSTREAM_TAG,
        "--",
        rel,
    )
    shown = []
    for patched in PatchSet(diff):
        for hunk in patched:
            first = hunk.source_start
            last = first + max(hunk.source_length, 1) - 1
            if first <= region[1] and region[0] <= last:
                shown.append(str(hunk))
    return shown


def _cut(text: str, limit: int = SHOWN_LINES, more: str = "") -> str:
    lines = text.rstrip("\n").splitlines()
    kept = [f"    {line}" for line in lines[:limit]]
    if len(lines) > limit:
        kept.append(f"    [... {len(lines) - limit} more lines{more}]")
    return "\n".join(kept) + "\n"


# git am's own advice after a failure: the report says what to do instead.
GIT_ADVICE = (
    "hint:",
    "Patch failed at ",
    "When you have resolved this problem",
    "If you prefer to skip this patch",
    "To restore the original branch",
)


def conflict_report(
    root: Path, tree: Path, stop: Stop, old: str, new: str, applied: list[str]
) -> str:
    """What stopped, where, why, and what to do next."""
    old_tag = f"{fork.UPSTREAM_TAG}-{old}"
    unmerged = fork.git(tree, "diff", "--name-only", "--diff-filter=U").split()
    patch = stop.patch.relative_to(root)
    said = stop.output.rpartition("Applying: ")[2]
    out = [
        f"bump {old} -> {new}: {patch} does not apply to fastapi {new}.\n",
        f"The patches before it applied: the version mark (redone), "
        f"{applied.count('as it was')} as they were, "
        f"{len(applied) - applied.count('as it was')} with a three-way merge.\n\n",
        "git am --3way said:\n",
        _cut(
            "Applying: "
            + "\n".join(
                line for line in said.splitlines() if not line.startswith(GIT_ADVICE)
            ),
            30,
        ),
    ]
    failing = failing_hunks(tree, stop.patch)
    preimages = _preimages(stop.patch)
    out.append(
        f"\nIts hunks that do not apply as they are ({len(failing)}; git merged "
        "what it could of them\nand marked the rest as conflicts):\n"
    )
    for rel, hunk in failing:
        out.append(f"\n  {rel}:\n")
        out.append(_cut(str(hunk)))
        pristine = _show(tree, old_tag, rel)
        if _show(tree, fork.UPSTREAM_TAG, rel) is None:
            out.append(f"  fastapi {new} has no {rel}.\n")
            continue
        if pristine is None:
            out.append(f"  fastapi {old} had no {rel}.\n")
            continue
        preimage = (
            fork.git(tree, "cat-file", "-p", preimages[rel])
            if rel in preimages
            else pristine
        )
        end = hunk.source_start + max(hunk.source_length, 1) - 1
        region = to_pristine(_lines(pristine), _lines(preimage), hunk.source_start, end)
        changes = upstream_changes(tree, rel, old_tag, region)
        command = f"git diff {old_tag} {fork.UPSTREAM_TAG} -- {rel}"
        where = f"lines {region[0]}-{region[1]} of {rel} in {old}"
        if changes:
            out.append(f"  What upstream changed there, {where} ({command}):\n")
            out.append(_cut("".join(changes), more=f": {command}"))
        else:
            out.append(
                f"  Upstream changed nothing in {where}: the hunk meets what an "
                f"earlier patch made of them ({command} shows all of upstream's "
                "changes to the file).\n"
            )
    work = tree.relative_to(root)
    conflicts = (
        f"with conflict markers in {', '.join(unmerged)}"
        if unmerged
        else "without conflict markers (git could not merge: apply the hunks by "
        "hand, with git apply --reject .git/rebase-apply/patch, say)"
    )
    left = textwrap.fill(
        f"Left for you: {work}, stopped in git am at this patch, {conflicts}; "
        f"its tags {old_tag} and fork-{old} are fastapi {old} and the series on "
        f"it. pyproject.toml pins fastapi {new} and {REQUIREMENTS} is "
        "regenerated; patches/ changes when you export.",
        width=84,
        break_on_hyphens=False,
    )
    out.append(
        f"""
{left}

Next:
  1. cd {work}; resolve the conflicts (git status lists them; the whole patch:
     git am --show-current-patch=diff) and git add the files.
  2. git am --continue (1 and 2 again for each patch that stops).
  3. Back here: python3 scripts/fork.py export
  4. python3 scripts/fork.py check --work-tree
  5. Review git diff, run bash scripts/test.sh, commit.
To give up: git checkout -- pyproject.toml {REQUIREMENTS}
"""
    )
    return "".join(out)


def _pins(text: str) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, version = line.partition("==")
        if sep and not line.startswith("#"):
            pins[canonicalize_name(name)] = version.split(";")[0].strip()
    return pins


def requirements_summary(before: str, after: str) -> str:
    old, new = _pins(before), _pins(after)
    changed = sorted(n for n in old.keys() & new.keys() if old[n] != new[n])
    shown = ", ".join(f"{n} {old[n]} -> {new[n]}" for n in changed[:8])
    more = ", ..." if len(changed) > 8 else ""
    return "; ".join(
        [
            f"{len(old)} -> {len(new)} pins",
            f"{len(changed)} changed" + (f" ({shown}{more})" if changed else ""),
            f"added: {', '.join(sorted(new.keys() - old.keys())) or 'none'}",
            f"removed: {', '.join(sorted(old.keys() - new.keys())) or 'none'}",
        ]
    )


def naming_old_version(root: Path, old: str) -> list[str]:
    """Files that still name the old release (prose, scripts: yours to update)."""
    result = subprocess.run(
        ["git", "grep", "-c", "-F", old, "--", ".", ":!patches", f":!{REQUIREMENTS}"],
        cwd=root,
        capture_output=True,
        text=True,
        env=_git_env(),
    )
    return [
        f"{name} ({count})"
        for name, _, count in (line.rpartition(":") for line in result.stdout.split())
    ]


def bump(
    wanted: str,
    index_url: str,
    force: bool,
    venv: Path | None = None,
    root: Path = ROOT,
) -> None:
    tree = fork.WORK_TREE
    if os.environ.get("FASTAPI_FORK_UPSTREAM_SDIST"):
        raise ForkBuildError(
            "FASTAPI_FORK_UPSTREAM_SDIST names one local sdist, the old one: unset "
            "it, bump downloads the new release"
        )
    if venv is not None and venv.exists():
        raise ForkBuildError(f"--venv {venv}: it exists; name a new folder")
    check_clean(root)
    if not force:
        check_work_tree(root, tree)
    patches = fork_backend.patch_files(root)
    if not patches:
        raise ForkBuildError("patches/ is empty: there is no series to move")
    check_version_mark(patches[0])
    current = fork_backend.read_upstream(root)
    release = find_release(current.name, wanted, index_url)
    old, new = current.version, release.version
    if new == old:
        print(f"pyproject.toml already pins {current.name} {new}: nothing to do")
        return
    print(f"bump {old} -> {new}: sdist sha256 {release.sha256} (from {index_url})")
    if release.yanked:
        print(f"note: {current.name} {new} is yanked on the index")
    sdist = fetch_release(release)
    print(f"downloaded and verified: {sdist}")
    with tempfile.TemporaryDirectory() as tmp:
        old_tree, pristine = Path(tmp) / "old", Path(tmp) / "new"
        fork.build_work_tree(old_tree, root)
        pristine.mkdir()
        fork_backend.unpack_sdist(sdist, pristine)
        where = "a throw-away venv" if venv is None else venv
        print(f"regenerating {REQUIREMENTS} in {where} ...", flush=True)
        requirements = regenerate_requirements(root, pristine, new, venv)
        before = (root / REQUIREMENTS).read_text()
        write_pin(root, release)
        (root / REQUIREMENTS).write_text(requirements)
        print(f"{REQUIREMENTS}: {requirements_summary(before, requirements)}")
        try:
            if tree.exists():
                shutil.rmtree(tree)
            build_new_tree(root, tree, old_tree, old)
            mark = move_series(root, tree, patches, old, new)
        except SeriesStop:
            raise
        except ForkBuildError as exc:
            raise ForkBuildError(
                f"{exc}\n\nbump {old} -> {new} stopped there, with pyproject.toml and "
                f"{REQUIREMENTS} rewritten (and patches/ if it got to export). The "
                "repository was clean before: git stash --include-untracked sets "
                "the bump's changes aside."
            ) from None
    naming = naming_old_version(root, old)
    print(
        f"\nbumped to fastapi {new} ({mark}): pyproject.toml, {REQUIREMENTS} and "
        f"patches/ rewritten, {tree.relative_to(root)} prepared on it.\n"
        + (
            f"Still naming {old} (update them by hand): {', '.join(naming)}\n"
            if naming
            else ""
        )
        + "Next: review git diff, run bash scripts/test.sh, commit."
    )


class SeriesStop(ForkBuildError):
    """A patch does not apply: the message is the conflict report."""


def move_series(root: Path, tree: Path, patches: list[Path], old: str, new: str) -> str:
    """Redo the version mark, git am --3way the rest, export and check."""
    mark = mark_version(tree, patches[0], old, new)
    print(f"  {patches[0].name}: the version mark, redone as {mark}")
    applied, stop = apply_series(tree, patches[1:])
    for patch, how in zip(patches[1:], applied, strict=False):
        print(f"  {patch.name}: applied {how}")
    if stop is not None:
        raise SeriesStop(conflict_report(root, tree, stop, old, new, applied))
    fork.cmd_export(argparse.Namespace(force=False))
    fork.cmd_check(argparse.Namespace(work_tree=True))
    return mark


def cmd_bump(args: argparse.Namespace) -> None:
    venv = None if args.venv is None else Path(args.venv).resolve()
    bump(args.version, args.index_url or default_index_url(), args.force, venv)
