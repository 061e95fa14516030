"""Build the fork: pinned upstream FastAPI sdist + our patch series + our new files.

This module is two things:

* The library every fork tool uses to *assemble* the fork's source tree: fetch the
  upstream sdist pinned in ``pyproject.toml`` (``[tool.fork.upstream]``), check its
  sha256, unpack it, lay our new modules (``fastapi/``) over it, apply
  ``patches/*.patch`` in order with ``patch-ng`` (no fuzz: a stale hunk stops the
  build; a fork-only patch may change our modules too) and lay our other new files
  (``tests/``, ``docs_src/``, ``docs/``) over it. A new file may not replace an upstream file:
  changes to upstream files exist only as patches.
* A PEP 517 build backend (``build-backend = "fork_backend"``) that assembles the
  tree in a temporary folder and hands it to upstream's own backend, ``pdm-backend``,
  so the wheel and sdist carry upstream's metadata (dependencies, extras, license,
  the ``fastapi`` console script) unchanged, with the version the series marks.

The sdist built here is the assembled fork (upstream's layout with our changes in
place), so a wheel built from it needs neither the network nor this backend.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PATCHES_DIR = "patches"
# Folders of this repository laid over the upstream tree: our new files, at the
# paths they have upstream. Everything else here (scripts/, patches/, ...) is tooling.
OVERLAY_DIRS = ("fastapi", "tests", "docs_src", "docs/en/docs")
IGNORED_NAMES = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}
VERSION_LABEL = "lifespan"


class ForkBuildError(Exception):
    """The fork cannot be assembled; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Upstream:
    name: str
    version: str
    sha256: str

    @property
    def sdist_name(self) -> str:
        return f"{self.name}-{self.version}.tar.gz"

    @property
    def requirement(self) -> str:
        # "===" (arbitrary equality): "==0.165.0" would also match the fork's own
        # "0.165.0+lifespan.N" if it sat in a wheel cache or find-links folder.
        return f"{self.name}==={self.version}"


def read_upstream(root: Path = ROOT) -> Upstream:
    """Read the pin, the one place that names the upstream release."""
    with (root / "pyproject.toml").open("rb") as f:
        table = tomllib.load(f)["tool"]["fork"]["upstream"]
    return Upstream(
        name=table["name"], version=table["version"], sha256=table["sha256"]
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get("FASTAPI_FORK_CACHE", Path(base) / "fastapi-fork"))


def fetch_sdist(upstream: Upstream) -> Path:
    """Return the verified upstream sdist, downloading it with pip if needed.

    ``FASTAPI_FORK_UPSTREAM_SDIST`` may name a local copy (offline builds); it is
    checked against the pinned sha256 like a download.
    """
    local = os.environ.get("FASTAPI_FORK_UPSTREAM_SDIST")
    path = Path(local) if local else cache_dir() / upstream.sdist_name
    if not path.is_file():
        if local:
            raise ForkBuildError(f"FASTAPI_FORK_UPSTREAM_SDIST={local} does not exist")
        _download(upstream, path)
    digest = _sha256(path)
    if digest != upstream.sha256:
        raise ForkBuildError(
            f"{path} has sha256 {digest}, but pyproject.toml pins "
            f"{upstream.name} {upstream.version} at {upstream.sha256}. The upstream "
            "file changed: delete it to download it again, or, when bumping "
            "upstream on purpose, update [tool.fork.upstream] and rebase the series."
        )
    return path


# What a PEP 517 front-end hands the hook subprocess it runs this backend in:
# pyproject-hooks (pip, build) passes the backend and its in-tree path as
# _PYPROJECT_HOOKS_*, its older releases and the pep517 library as PEP517_*; pip
# also shares its build tracker with the pips it starts itself. The nested pip is
# a front-end of its own for pdm-backend: inheriting these, it looks for
# pdm.backend in *our* backend path (pip 26.3) or joins the outer pip's
# bookkeeping, so it gets none of them.
FRONTEND_PREFIXES = ("_PYPROJECT_HOOKS_", "PEP517_")
FRONTEND_VARIABLES = {"PIP_BUILD_TRACKER", "PIP_REQ_TRACKER"}
# pip options that change *what* it downloads, or for which interpreter, rather
# than where from: they belong to the user's own installs, not to fetching one
# pinned file (a constraints file pinning fastapi to the fork would otherwise
# make the pristine release unsatisfiable). Everything else is kept: the
# index, find-links, proxy, certificate, timeout and cache settings (PIP_*,
# pip.conf), the proxy and certificate variables, and PYTHONPATH and PATH, which
# make the build environment's packages (pdm-backend) visible.
PIP_SELECTION_OPTIONS = {
    "PIP_REQUIREMENT",
    "PIP_CONSTRAINT",
    "PIP_GROUP",
    "PIP_PYTHON",
    "PIP_PLATFORM",
    "PIP_PYTHON_VERSION",
    "PIP_IMPLEMENTATION",
    "PIP_ABI",
}


def nested_pip_environment(environ: dict[str, str]) -> dict[str, str]:
    """The environment of the nested ``pip download``: the user's, without what
    the front-end running this backend set for itself."""
    return {
        name: value
        for name, value in environ.items()
        if not name.startswith(FRONTEND_PREFIXES)
        and name not in FRONTEND_VARIABLES
        and name not in PIP_SELECTION_OPTIONS
    }


# pip logs each index page it could not fetch ("Could not fetch URL <url>:
# <reason> - skipping") in its verbose log only, and then finds no file; a 4xx
# answer means the index was reached and does not have the page. A failure to
# fetch the file itself shows in pip's own message.
_FETCH_FAILURE = re.compile(r"Could not fetch URL .*")
_NETWORK_ERROR = re.compile(
    r"Failed to establish a new connection|Connection refused|Max retries exceeded"
    r"|Temporary failure in name resolution|Name or service not known"
    r"|Network is unreachable|timed out|ProxyError|CERTIFICATE_VERIFY_FAILED"
    r"|SSLError|Connection reset|RemoteDisconnected"
)


def _indented(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return "".join(f"  {line}\n" for line in lines) or "  (no output)\n"


def _download(upstream: Upstream, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        requirements = Path(tmp) / "requirements.txt"
        log = Path(tmp) / "pip.log"
        download_dir = Path(tmp) / "download"
        # pip checks the digest too (--require-hashes) before it saves anything.
        requirements.write_text(
            f"{upstream.requirement} --hash=sha256:{upstream.sha256}\n"
        )
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--require-hashes",
            "--dest",
            str(download_dir),
            "--log",
            str(log),
            "-r",
            str(requirements),
        ]
        if importlib.util.find_spec("pdm") is not None:
            # pip prepares the sdist's metadata with pdm-backend: where it is at
            # hand (the build environment), skip a second isolated environment.
            command.append("--no-build-isolation")
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            # An empty folder: not the project being built (python -m puts the
            # working directory on sys.path, and pip reads ./pyproject.toml for
            # --group).
            cwd=tmp,
            env=nested_pip_environment(dict(os.environ)),
        )
        downloaded = download_dir / upstream.sdist_name
        if result.returncode != 0 or not downloaded.is_file():
            verbose = log.read_text(errors="replace") if log.is_file() else ""
            raise ForkBuildError(
                _download_failure(upstream, result, verbose, downloaded)
            )
        shutil.move(str(downloaded), dest)


def _download_failure(
    upstream: Upstream,
    result: subprocess.CompletedProcess[str],
    verbose_log: str,
    downloaded: Path,
) -> str:
    """Say which part of the download failed, with pip's own words."""
    said = f"{result.stdout}{result.stderr}"
    what = f"could not download the upstream sdist ({upstream.requirement}) with pip"
    pip_said = f"pip said:\n{_indented(said)}"
    if "DO NOT MATCH THE HASHES" in said:
        return (
            f"{what}: the file the package index serves does not have the sha256 "
            f"pyproject.toml pins ([tool.fork.upstream] sha256 = {upstream.sha256}).\n"
            f"{pip_said}Either the pin is wrong (when bumping upstream, take the "
            "sha256 pip reports for the release) or the index serves another file "
            "under that name."
        )
    unreachable = [
        line
        for line in _FETCH_FAILURE.findall(verbose_log)
        if not re.search(r"\b4\d\d Client Error", line)
    ]
    not_found = "No matching distribution found" in said
    if (not_found and unreachable) or _NETWORK_ERROR.search(said):
        return (
            f"{what}: the package index could not be reached.\n"
            + (f"{_indented(chr(10).join(unreachable))}" if unreachable else "")
            + f"{pip_said}The build fetches the sdist from the index your pip "
            "configuration names (PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, "
            "PIP_FIND_LINKS or pip.conf; a proxy through HTTPS_PROXY or "
            "PIP_PROXY). To build offline, set FASTAPI_FORK_UPSTREAM_SDIST to a "
            f"local copy of {upstream.sdist_name}."
        )
    if not_found:
        return (
            f"{what}: the package index was reached but has no sdist of "
            f"{upstream.name} {upstream.version}.\n{pip_said}Check the index your "
            "pip configuration names (PIP_INDEX_URL, pip.conf): it must serve "
            f"{upstream.sdist_name}."
        )
    if result.returncode == 0:
        return f"{what}: pip succeeded but did not save {downloaded.name}.\n{pip_said}"
    return (
        f"{what}: the nested 'pip download' failed (exit code "
        f"{result.returncode}).\n{pip_said}"
    )


# tarfile's extraction filters (filter="data") exist from Python 3.11.4; Debian
# 12's python3 is 3.11.2, and upstream supports every 3.11.
HAS_TAR_FILTERS = hasattr(tarfile, "data_filter")


def unpack_sdist(sdist: Path, dest: Path) -> None:
    """Unpack the sdist's single top folder into ``dest``."""
    with tarfile.open(sdist) as tar:
        members = tar.getmembers()
        prefix = members[0].name.split("/")[0] + "/"
        for member in members:
            if not member.name.startswith(prefix):
                continue
            member.name = member.name[len(prefix) :]
            if HAS_TAR_FILTERS:
                tar.extract(member, dest, filter="data")
            else:
                _extract_without_filters(tar, member, sdist, dest)


def _extract_without_filters(
    tar: tarfile.TarFile, member: tarfile.TarInfo, sdist: Path, dest: Path
) -> None:
    """
    Extract one folder or regular file below ``dest`` where tarfile has no
    extraction filters: refuse absolute paths, ``..`` and anything but folders
    and regular files (an sdist has no links or devices); no special mode bits.
    """
    name = member.name
    parts = PurePosixPath(name).parts
    if name.startswith("/") or ".." in parts:
        raise ForkBuildError(
            f"{sdist} holds {name!r}, a path outside the folder it unpacks into: "
            "refusing to unpack it."
        )
    if not parts:
        return
    target = dest.joinpath(*parts)
    if member.isdir():
        target.mkdir(parents=True, exist_ok=True)
        return
    if not member.isfile():
        raise ForkBuildError(
            f"{sdist} holds {name!r}, which is not a regular file or folder (a "
            "link or device): refusing to unpack it."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    source = tar.extractfile(member)
    assert source is not None  # a regular file always has content
    with source, target.open("wb") as out:
        shutil.copyfileobj(source, out)
    target.chmod(0o755 if member.mode & 0o111 else 0o644)
    os.utime(target, (member.mtime, member.mtime))


def patch_files(root: Path = ROOT) -> list[Path]:
    return sorted((root / PATCHES_DIR).glob("*.patch"))


def apply_patch(patch: Path, tree: Path) -> None:
    """Apply one ``git format-patch`` file exactly, or raise a clear error."""
    import patch_ng

    messages = io.StringIO()
    handler = logging.StreamHandler(messages)
    handler.setLevel(logging.WARNING)
    logger = logging.getLogger("patch_ng")
    logger.addHandler(handler)
    try:
        patchset = patch_ng.fromfile(str(patch))
        # patch-ng strips git's a/ and b/ itself.
        ok = bool(patchset) and patchset.apply(strip=0, root=str(tree))
    finally:
        logger.removeHandler(handler)
    if not ok:
        raise ForkBuildError(
            f"{patch.name} does not apply to the pinned upstream sdist:\n"
            f"{messages.getvalue()}The patch is stale: rebase the series in the work "
            "tree (python scripts/fork.py prepare), then export it."
        )


def overlay_files(root: Path = ROOT) -> list[str]:
    """Our new files, as paths relative to the repository root."""
    found = []
    for top in OVERLAY_DIRS:
        for dirpath, dirnames, filenames in os.walk(root / top):
            dirnames[:] = sorted(
                d for d in dirnames if d not in IGNORED_NAMES and not d.startswith(".")
            )
            for name in sorted(filenames):
                if name.endswith((".pyc", ".pyo")) or name.startswith("."):
                    continue
                found.append(
                    Path(dirpath, name).relative_to(root).as_posix(),
                )
    return found


def new_modules(files: list[str]) -> list[str]:
    """
    Our new modules (under ``fastapi/``): laid before the series, which may change
    them with fork-only patches, so that the files here are what the upstream pull
    request adds.
    """
    return [rel for rel in files if rel.startswith("fastapi/")]


def lay_overlay(tree: Path, files: list[str], root: Path = ROOT) -> None:
    """Copy our new files into ``tree``; refuse to replace an upstream file."""
    for rel in files:
        target = tree / rel
        if target.exists():
            raise ForkBuildError(
                f"{rel} exists in upstream {read_upstream(root).version}: our tree "
                "may only add new files. Change an upstream file with a patch "
                f"({PATCHES_DIR}/), never with a copy."
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / rel, target)


def check_version(tree: Path, upstream: Upstream) -> str:
    """
    The series must mark the version as ``<upstream>+lifespan.N``, the same in
    ``fastapi/__init__.py`` and in the static version of ``pyproject.toml`` (which
    the wheel's metadata comes from).
    """
    init = (tree / "fastapi" / "__init__.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"', init, re.MULTILINE)
    version = match.group(1) if match else ""
    if not re.fullmatch(
        rf"{re.escape(upstream.version)}\+{VERSION_LABEL}\.\d+", version
    ):
        raise ForkBuildError(
            f"the assembled fastapi/__init__.py has __version__ = {version!r}; the "
            f"patch series must mark it as '{upstream.version}+{VERSION_LABEL}.N'."
        )
    with (tree / "pyproject.toml").open("rb") as f:
        static_version = tomllib.load(f)["project"].get("version")
    if static_version != version:
        raise ForkBuildError(
            f"the assembled pyproject.toml has version = {static_version!r} but "
            f"fastapi/__init__.py has {version!r}: the first patch must mark both."
        )
    return version


def assemble(dest: Path, root: Path = ROOT) -> str:
    """Assemble the fork's source tree into ``dest``; return its version."""
    upstream = read_upstream(root)
    unpack_sdist(fetch_sdist(upstream), dest)
    files = overlay_files(root)
    modules = new_modules(files)
    lay_overlay(dest, modules, root)
    for patch in patch_files(root):
        apply_patch(patch, dest)
    lay_overlay(dest, [rel for rel in files if rel not in modules], root)
    return check_version(dest, upstream)


@contextlib.contextmanager
def _assembled() -> Iterator[None]:
    """Assemble into a temporary folder and work from there (pdm-backend uses cwd)."""
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="fastapi-fork-") as tmp:
        try:
            assemble(Path(tmp))
        except ForkBuildError as exc:
            # Frontends show the last lines of a traceback: make them the reason.
            raise SystemExit(f"fastapi fork build failed: {exc}") from None
        os.chdir(tmp)
        try:
            yield
        finally:
            os.chdir(cwd)


def _absolute(directory: str) -> str:
    return str(Path(directory).resolve())


# PEP 517 hooks. Each one assembles the fork and delegates to pdm-backend.


def get_requires_for_build_wheel(
    config_settings: dict[str, Any] | None = None,
) -> list[str]:
    return []


def get_requires_for_build_sdist(
    config_settings: dict[str, Any] | None = None,
) -> list[str]:
    return []


def prepare_metadata_for_build_wheel(
    metadata_directory: str, config_settings: dict[str, Any] | None = None
) -> str:
    import pdm.backend

    directory = _absolute(metadata_directory)
    with _assembled():
        return pdm.backend.prepare_metadata_for_build_wheel(directory, config_settings)


def build_wheel(
    wheel_directory: str,
    config_settings: dict[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    import pdm.backend

    directory = _absolute(wheel_directory)
    with _assembled():
        return pdm.backend.build_wheel(directory, config_settings)


def build_sdist(
    sdist_directory: str, config_settings: dict[str, Any] | None = None
) -> str:
    import pdm.backend

    directory = _absolute(sdist_directory)
    with _assembled():
        return pdm.backend.build_sdist(directory, config_settings)


def build_editable(
    wheel_directory: str,
    config_settings: dict[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    raise SystemExit(
        "fastapi fork: this repository holds patches, not an editable tree. Run "
        "'python scripts/fork.py prepare' for an editable work tree in .work/."
    )
