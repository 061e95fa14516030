"""The two commands' own logic: the Python check, and run.sh's skipped reinstall."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import fork
import pytest
from fork_backend import ROOT

FAKE_PYTHON = """#!/bin/sh
echo "$*" >>"$(dirname "$0")/calls.log"
case "$1" in -c) echo 0.165.0+lifespan.0 ;; esac
"""
FAKE_UVICORN = """#!/bin/sh
echo "uvicorn $*" >>"$(dirname "$0")/calls.log"
"""


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of what run.sh reads, with a stand-in venv that logs its calls."""
    copy = tmp_path / "repo"
    for rel in [
        *fork.build_inputs(ROOT),
        "scripts/run.sh",
        "scripts/test.sh",
        "scripts/fork.py",
    ]:
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / rel, copy / rel)
    bin_dir = copy / "build" / "venv-demo" / "bin"
    bin_dir.mkdir(parents=True)
    for name, text in (("python", FAKE_PYTHON), ("uvicorn", FAKE_UVICORN)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return copy


def run_sh(checkout: Path, **env: str) -> tuple[str, list[str]]:
    """Run run.sh; its output, and the calls it made to the venv since the last run."""
    log = checkout / "build" / "venv-demo" / "bin" / "calls.log"
    log.unlink(missing_ok=True)
    result = subprocess.run(
        ["bash", "scripts/run.sh"],
        cwd=checkout,
        env={**os.environ, "PYTHON": sys.executable, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout, log.read_text().splitlines()


def installs(calls: list[str]) -> list[str]:
    return [call for call in calls if call.startswith("-m pip install")]


def test_run_sh_installs_only_when_an_input_changed(checkout: Path):
    out, calls = run_sh(checkout)
    assert "installing into build/venv-demo" in out
    assert installs(calls) == ["-m pip install --quiet .[standard] SQLAlchemy==2.1.9"]
    assert calls[-1].startswith("uvicorn --app-dir scripts demo:app")

    out, calls = run_sh(checkout)
    assert "build/venv-demo is up to date" in out
    assert installs(calls) == []
    assert calls[-1].startswith("uvicorn ")

    patch = sorted((checkout / "patches").glob("*.patch"))[-1]
    patch.write_text(patch.read_text() + "\n")
    out, calls = run_sh(checkout)
    assert len(installs(calls)) == 1

    out, calls = run_sh(
        checkout, DATABASE_URL="postgresql+psycopg://u:p@127.0.0.1/notes"
    )
    assert installs(calls) == [
        "-m pip install --quiet .[standard] SQLAlchemy==2.1.9 psycopg[binary]==3.3.9"
    ]
    (checkout / "fastapi" / "dependencies" / "lifespan.py").write_text("# changed\n")
    out, calls = run_sh(
        checkout, DATABASE_URL="postgresql+psycopg://u:p@127.0.0.1/notes"
    )
    assert len(installs(calls)) == 1


def test_run_sh_installs_again_after_a_failed_install(checkout: Path):
    run_sh(checkout)
    stamp = checkout / "build" / "venv-demo" / "fork-build-inputs"
    assert stamp.is_file()
    # An interrupted install removed the stamp before it began.
    stamp.unlink()
    _, calls = run_sh(checkout)
    assert len(installs(calls)) == 1


@pytest.mark.parametrize("script", ["run.sh", "test.sh"])
@pytest.mark.parametrize(
    "python, says",
    [
        (
            "/nonexistent/python3",
            "PYTHON=/nonexistent/python3 was not found or did not run",
        ),
        ("old", "is Python 3.10"),
    ],
)
def test_commands_refuse_a_python_upstream_does_not_support(
    checkout: Path, script: str, python: str, says: str
):
    if python == "old":
        # What Python 3.10 prints for the scripts' check (and its exit status).
        python = str(checkout / "python3.10")
        Path(python).write_text("#!/bin/sh\necho 3.10.13\nexit 1\n")
        Path(python).chmod(0o755)
    before = sorted(p.relative_to(checkout) for p in checkout.rglob("*"))
    result = subprocess.run(
        ["bash", f"scripts/{script}"],
        cwd=checkout,
        env={**os.environ, "PYTHON": python},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(
        f"scripts/{script}: fastapi 0.165.0 needs Python 3.11 or newer, but "
    )
    assert says in line
    assert sorted(p.relative_to(checkout) for p in checkout.rglob("*")) == before
