"""The GitHub Actions workflows (.github/workflows/): actionlint and zizmor find
nothing in them, and they run what they should, with pinned actions and no more
permissions than they need."""

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from fork_backend import ROOT

WORKFLOWS = ROOT / ".github" / "workflows"
BIN = Path(sys.executable).parent
# A workflow with what both tools must report: an untrusted value expanded in a
# script, an unpinned action that keeps its credentials, an unquoted variable.
BAD_WORKFLOW = """\
name: Bad
on:
  issues:
    types: [opened]
jobs:
  echo:
    runs-on: ubuntu-24.04
    steps:
      - uses: actions/checkout@v6
      - run: echo "${{ github.event.issue.title }}" $HOME
"""


def tool(name: str) -> Path:
    path = BIN / name
    assert path.is_file(), f"{path} is missing: install requirements-tests.txt"
    return path


def actionlint(*files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(tool("actionlint")),
            "-no-color",
            f"-shellcheck={tool('shellcheck')}",
            "-pyflakes=",
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def zizmor(folder: Path) -> subprocess.CompletedProcess[str]:
    # --offline: no GitHub API (the audits that need it check the pinned commits
    # against the actions' tags); auditor: every audit, at every confidence.
    return subprocess.run(
        [
            str(tool("zizmor")),
            "--offline",
            "--persona=auditor",
            "--no-progress",
            "--color=never",
            str(folder),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def workflow(name: str) -> dict[Any, Any]:
    loaded = yaml.safe_load((WORKFLOWS / name).read_text())
    assert isinstance(loaded, dict)
    return loaded


def triggers(loaded: dict[Any, Any]) -> dict[str, Any]:
    # YAML 1.1 reads the key `on` as True.
    found = loaded[True] if True in loaded else loaded["on"]
    assert isinstance(found, dict)
    return found


def steps(loaded: dict[Any, Any]) -> list[dict[str, Any]]:
    return [step for job in loaded["jobs"].values() for step in job["steps"]]


@pytest.fixture(scope="module")
def files() -> list[Path]:
    found = sorted(WORKFLOWS.glob("*.yml"))
    assert [p.name for p in found] == ["follow-upstream.yml", "test.yml"]
    return found


def test_actionlint_finds_nothing(files: list[Path], tmp_path: Path) -> None:
    result = actionlint(*files)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
    bad = tmp_path / ".github" / "workflows" / "bad.yml"
    bad.parent.mkdir(parents=True)
    bad.write_text(BAD_WORKFLOW)
    found = actionlint(bad)
    assert found.returncode == 1
    assert '"github.event.issue.title" is potentially untrusted' in found.stdout
    assert "SC2086" in found.stdout  # shellcheck ran on the script


def test_zizmor_finds_nothing(files: list[Path], tmp_path: Path) -> None:
    result = zizmor(WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No findings to report" in result.stdout
    bad = tmp_path / ".github" / "workflows" / "bad.yml"
    bad.parent.mkdir(parents=True)
    bad.write_text(BAD_WORKFLOW)
    found = zizmor(tmp_path)
    assert found.returncode != 0
    for audit in ("template-injection", "unpinned-uses", "artipacked"):
        assert f"[{audit}]" in found.stdout, found.stdout


def test_every_action_is_pinned_and_every_job_has_its_own_permissions(
    files: list[Path],
) -> None:
    for path in files:
        loaded = workflow(path.name)
        assert loaded["permissions"] == {}, path.name
        for job in loaded["jobs"].values():
            assert job["permissions"].get("contents") == "read", path.name
            assert set(job["permissions"].values()) <= {"read", "write"}
        for step in steps(loaded):
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", step["uses"])
            if step.get("uses", "").startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False


def test_the_test_workflow_runs_the_test_command() -> None:
    loaded = workflow("test.yml")
    assert set(triggers(loaded)) == {"push", "pull_request"}
    (job,) = loaded["jobs"].values()
    assert job["strategy"]["matrix"]["python-version"] == ["3.11", "3.12", "3.13"]
    runs = [step["run"] for step in steps(loaded) if "run" in step]
    assert runs == ["bash scripts/test.sh"]
    # What CI runs here too.
    assert "exec bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
    assert job["permissions"] == {"contents": "read"}


def test_the_scheduled_workflow_bumps_and_reports_a_failure() -> None:
    loaded = workflow("follow-upstream.yml")
    on = triggers(loaded)
    assert set(on) == {"schedule", "workflow_dispatch"}
    assert on["schedule"][0]["cron"]
    (job,) = loaded["jobs"].values()
    assert job["permissions"] == {"contents": "read", "issues": "write"}
    by_id = {step.get("id"): step for step in job["steps"]}
    assert "python scripts/fork.py bump newest" in by_id["bump"]["run"]
    assert by_id["bump"]["continue-on-error"] is True
    reports = [s for s in job["steps"] if "gh issue" in s.get("run", "")]
    assert len(reports) == 1
    assert reports[0]["if"] == "steps.bump.outcome == 'failure'"
    assert "gh issue create" in reports[0]["run"]
    assert "gh issue comment" in reports[0]["run"]
    assert job["steps"][-1] == {
        "name": "Fail the run when the bump failed",
        "if": "steps.bump.outcome == 'failure'",
        "run": "exit 1",
    }
