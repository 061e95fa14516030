"""Install the fork the way a new user does, with the front-ends of the day.

Each test starts from nothing: a fresh clone of the working tree (committed to a
temporary repository, so uncommitted changes are in it), fresh venvs, the newest
pip, build and uv from the registry (unpinned: a front-end release that breaks the
build breaks this test the same day), and empty caches (pip's, uv's and the fork's
own, so the build downloads the upstream sdist through the configured index for
real). Only the first test installs the dependencies too; the others pass
--no-deps, since the build is what they are about.
"""

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import fork
import fork_backend
import pytest
from fork_backend import ROOT

# The oldest pip the README supports: what `python3 -m venv` gives on Debian 12.
OLDEST_PIP = "23.0.1"
# Debian 12's own python3: CPython 3.11.2, older than tarfile's extraction filters.
SYSTEM_PYTHON = Path("/usr/bin/python3.11")
TIMEOUT = 600


def expected_version() -> str:
    """The version the series marks (the first patch sets it)."""
    for patch in fork_backend.patch_files():
        found = re.search(r'^\+__version__ = "([^"]+)"', patch.read_text(), re.M)
        if found:
            return found.group(1)
    raise AssertionError("no patch marks the version")


VERSION = expected_version()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The working tree (tracked and new files, not ignored ones) as one commit."""
    repo = tmp_path_factory.mktemp("source")
    listed = fork.git(
        ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard"
    )
    for rel in listed.split("\0"):
        if rel and (ROOT / rel).is_file():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, repo / rel)
    fork.git(repo, "init", "-q", "-b", "main")
    fork.git(repo, "add", "-A")
    fork.git(repo, "commit", "-q", "-m", "the working tree under test")
    return repo


@dataclass
class User:
    """A new user: empty caches, their own folder, the machine's pip configuration."""

    home: Path
    env: dict[str, str]

    def run(self, *command: str | Path, cwd: Path | None = None) -> str:
        result = subprocess.run(
            [str(c) for c in command],
            cwd=cwd or self.home,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        if result.returncode != 0:
            pytest.fail(
                f"{' '.join(map(str, command))} failed (exit code {result.returncode}):\n"
                f"{result.stdout}{result.stderr}",
                pytrace=False,
            )
        return result.stdout

    def venv(
        self, name: str, python: Path | str = sys.executable, pip: str | None = "newest"
    ) -> Path:
        """A fresh venv with the newest pip, pip==PIP, or (None) the one venv gives."""
        path = self.home / name
        self.run(python, "-m", "venv", path)
        if pip is not None:
            requirement = "pip" if pip == "newest" else f"pip=={pip}"
            self.pip(path, "--upgrade", requirement)
        return path

    def pip(self, venv: Path, *args: str) -> None:
        """`pip install --quiet ARGS` in a venv."""
        self.run(venv / "bin" / "python", "-m", "pip", "install", "--quiet", *args)

    def clone(self, source: Path) -> Path:
        path = self.home / "fastapi-fork"
        self.run("git", "clone", "--quiet", source, path)
        return path

    def tool(self, package: str) -> Path:
        """The newest release of a front-end, in a venv of its own; its bin/."""
        path = self.venv(f"tool-{package}")
        self.pip(path, "--upgrade", package)
        return path / "bin"

    @property
    def downloaded_sdist(self) -> Path:
        upstream = fork_backend.read_upstream()
        return self.home / "cache" / "fastapi-fork" / upstream.sdist_name

    def installed(self, venv: Path) -> str:
        """The installed distribution's version, after checking it is the fork."""
        out = self.run(
            venv / "bin" / "python",
            "-c",
            "import importlib.metadata as m; d = m.distribution('fastapi'); "
            "print(d.version); "
            "print(any(str(f) == 'fastapi/dependencies/lifespan.py' for f in d.files))",
        )
        version, has_lifespan_module = out.split()
        assert has_lifespan_module == "True", out
        return version


@pytest.fixture
def user(tmp_path: Path) -> User:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("FASTAPI_FORK_", "UV_", "VIRTUAL_ENV"))
        and name
        not in {"PIP_CACHE_DIR", "PIP_NO_CACHE_DIR", "PYTHONPATH", "XDG_CACHE_HOME"}
    }
    env["PIP_CACHE_DIR"] = str(tmp_path / "cache" / "pip")
    env["UV_CACHE_DIR"] = str(tmp_path / "cache" / "uv")
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")  # the fork's: cache/fastapi-fork
    env["UV_PYTHON_DOWNLOADS"] = "never"
    return User(home=tmp_path, env=env)


def report(what: str, *versions: str) -> None:
    """Say which front-end versions were used (pytest -rP shows it)."""
    print(f"{what}: {', '.join(versions)}")


def version_of(user: User, *command: str | Path) -> str:
    return user.run(*command, "--version").split("\n")[0].strip()


def test_newest_pip_installs_the_fork_with_its_dependencies(user: User, source: Path):
    venv = user.venv("venv")
    clone = user.clone(source)
    assert not user.downloaded_sdist.exists()
    user.run(venv / "bin" / "python", "-m", "pip", "install", ".[standard]", cwd=clone)
    assert user.downloaded_sdist.is_file()  # a real download, through the index
    user.run(venv / "bin" / "python", "-m", "pip", "check")
    user.run(venv / "bin" / "fastapi", "--version")
    out = user.run(
        venv / "bin" / "python",
        "-c",
        "import importlib.metadata, fastapi; "
        "print(importlib.metadata.version('fastapi'), fastapi.__version__, fastapi.__file__)",
    )
    installed, imported, location = out.split()
    assert installed == imported == VERSION
    assert str(venv) in location
    report("pip install .[standard]", version_of(user, venv / "bin" / "pip"))


def test_oldest_supported_pip_installs_the_fork(user: User, source: Path):
    venv = user.venv("venv", pip=OLDEST_PIP)
    clone = user.clone(source)
    user.run(
        venv / "bin" / "python", "-m", "pip", "install", "--no-deps", ".", cwd=clone
    )
    assert user.downloaded_sdist.is_file()
    assert user.installed(venv) == VERSION
    report("pip install --no-deps .", version_of(user, venv / "bin" / "pip"))


def test_python_m_build_makes_an_sdist_and_a_wheel_that_installs(
    user: User, source: Path
):
    tools = user.tool("build")
    clone = user.clone(source)
    dist = user.home / "dist"
    user.run(tools / "python", "-m", "build", "--outdir", dist, cwd=clone)
    assert user.downloaded_sdist.is_file()
    (sdist,) = dist.glob("*.tar.gz")
    (wheel,) = dist.glob("*.whl")
    assert sdist.name == f"fastapi-{VERSION}.tar.gz"
    assert wheel.name == f"fastapi-{VERSION}-py3-none-any.whl"
    venv = user.venv("venv", pip=None)
    user.run(venv / "bin" / "python", "-m", "pip", "install", "--no-deps", wheel)
    assert user.installed(venv) == VERSION
    report("python -m build", version_of(user, tools / "python", "-m", "build"))


def test_uv_pip_installs_the_fork(user: User, source: Path):
    tools = user.tool("uv")
    clone = user.clone(source)
    venv = user.home / "venv"
    user.run(tools / "uv", "venv", "--quiet", "--python", sys.executable, venv)
    user.run(
        tools / "uv",
        "pip",
        "install",
        "--python",
        venv / "bin" / "python",
        "--no-deps",
        ".",
        cwd=clone,
    )
    assert user.downloaded_sdist.is_file()
    assert user.installed(venv) == VERSION
    report("uv pip install --no-deps .", version_of(user, tools / "uv"))


def test_newest_pip_installs_the_fork_from_a_git_url(user: User, source: Path):
    venv = user.venv("venv")
    url = f"fastapi @ git+file://{source}"
    user.run(venv / "bin" / "python", "-m", "pip", "install", "--no-deps", url)
    assert user.downloaded_sdist.is_file()
    assert user.installed(venv) == VERSION
    report(
        "pip install --no-deps 'fastapi @ git+file://...'",
        version_of(user, venv / "bin" / "pip"),
    )


@pytest.mark.skipif(
    not SYSTEM_PYTHON.is_file(),
    reason=f"{SYSTEM_PYTHON} does not exist here: the build on Debian 12's own Python "
    "(3.11.2, no tarfile extraction filters) is not tested on this machine",
)
def test_debian_python_with_its_own_pip_installs_the_fork(user: User, source: Path):
    # What a Debian 12 user has: python3 -m venv, and the pip that venv comes with.
    venv = user.venv("venv", python=SYSTEM_PYTHON, pip=None)
    clone = user.clone(source)
    user.run(
        venv / "bin" / "python", "-m", "pip", "install", "--no-deps", ".", cwd=clone
    )
    assert user.downloaded_sdist.is_file()
    assert user.installed(venv) == VERSION
    report(
        "Debian's python3.11 + its venv's pip, pip install --no-deps .",
        version_of(user, venv / "bin" / "python"),
        version_of(user, venv / "bin" / "pip"),
    )
