"""
The two commands' own logic: the Python check, run.sh's skipped reinstall, and
the test command's steps (scripts/testrun.py): listing them, running one,
reusing what is up to date, the summary of a failed run.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import fork
import pytest
import testrun
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
        "scripts/testrun.py",
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


def run_test_sh(checkout: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "scripts/test.sh", *args],
        cwd=checkout,
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_list_names_the_steps_and_the_pythons_found(checkout: Path):
    result = run_test_sh(checkout, "--list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    not_in_full_run = lines.index("Not in the full run:")
    listed = [(line[:2], line[2:].split()[0]) for line in lines[1:not_in_full_run]]
    names = [name for _, name in listed]
    assert names[:4] == ["setup", "series", "upstream", "fork"]
    assert names[-1:] == ["coverage"]
    alongside = [name for mark, name in listed if mark == "* "]
    assert alongside == names[4:-1]
    assert {"tooling", "concurrent", "pr-check", "lint", "benchmark"} <= set(alongside)
    assert [line.split()[0] for line in lines[not_in_full_run + 1 :]] == [
        "record-baseline"
    ]
    mine = "%d.%d" % sys.version_info[:2]
    for version in testrun.SUPPORTED_PYTHONS:
        line = next(
            (line for line in result.stdout.splitlines() if f" py{version} " in line),
            None,
        )
        if version == mine:
            # The fork's own tests on this Python run in the step fork.
            assert line is None
            continue
        assert line is not None
        found = testrun.find_python(version)
        assert (found or "none found") in line
    assert not (checkout / "build" / "test").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["nope"], "no step 'nope'; the steps: setup, series, upstream, fork,"),
        (["lint", "-x"], "the step lint takes no arguments (it runs no pytest)"),
        (["setup", "--record"], "the step setup takes no arguments"),
    ],
)
def test_test_sh_refuses_what_does_not_exist(
    checkout: Path, args: list[str], message: str
):
    result = run_test_sh(checkout, *args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert message in result.stderr


def fake_step(name: str, failed_tests: list[str] | None = None) -> testrun.Step:
    def run(runner: testrun.Runner, args: list[str]) -> str:
        runner.sh([sys.executable, "-c", f"print('{name} ran with', {args!r})"])
        if failed_tests is not None:
            runner.failed_tests = failed_tests
            raise testrun.StepFailed("pytest status 1")
        return f"{name} is fine"

    return testrun.Step(name, f"the step {name}", run)


@pytest.fixture
def fake_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[testrun.Step]:
    steps = [
        fake_step("first"),
        fake_step("broken", ["tests/test_a.py::test_b[x y]@group", "tests/test_c.py"]),
        fake_step("last"),
    ]
    monkeypatch.setattr(testrun, "steps", lambda runner=None: steps)
    monkeypatch.setattr(testrun, "BUILD", tmp_path / "build" / "test")
    return steps


def test_full_run_runs_every_step_and_says_how_to_rerun_the_failed_one(
    fake_steps: list[testrun.Step], capsys: pytest.CaptureFixture[str]
):
    assert testrun.main(["-x"]) == 1
    out = capsys.readouterr().out
    for name in ("first", "broken", "last"):
        assert f"{name} ran with ['-x']" in out
    summary = (testrun.BUILD / "summary.md").read_text()
    assert summary in out
    first = summary.splitlines()[0]
    assert first.startswith("FAILED: 2 steps ok, 1 failed, 0 not run, in ")
    assert "pytest arguments -x" in first
    assert "| broken | FAILED |" in summary
    assert "| last | ok |" in summary
    assert summary.endswith(
        "Rerun each failed step (and, below it, only its failed tests):\n\n"
        "    bash scripts/test.sh broken -x\n"
        "    bash scripts/test.sh broken -x 'tests/test_a.py::test_b[x y]' "
        "tests/test_c.py\n"
    )
    log = (testrun.BUILD / "logs" / "broken.log").read_text()
    assert "broken ran with ['-x']" in log
    assert "first ran" not in log


def test_one_step_runs_alone_with_its_pytest_arguments(
    fake_steps: list[testrun.Step], capsys: pytest.CaptureFixture[str]
):
    assert testrun.main(["last", "-k", "thing"]) == 0
    out = capsys.readouterr().out
    assert "last ran with ['-k', 'thing']" in out
    assert "first ran" not in out
    assert "ok: last in " in out
    assert testrun.main(["broken"]) == 1
    out = capsys.readouterr().out
    assert out.endswith(
        "rerun with:\n    bash scripts/test.sh broken\n"
        "    bash scripts/test.sh broken 'tests/test_a.py::test_b[x y]' "
        "tests/test_c.py\n"
    )
    assert not (testrun.BUILD / "summary.md").exists()


def test_steps_alongside_run_side_by_side_their_output_in_their_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.setattr(testrun, "BUILD", tmp_path / "build" / "test")
    # Each of the first two waits for a file that the other one writes: they end
    # only if they run at the same time.
    meet = [tmp_path / "first-here", tmp_path / "second-here"]
    wait = (
        "import pathlib, sys, time; pathlib.Path(sys.argv[1]).touch(); "
        "end = time.monotonic() + 60\n"
        "while not pathlib.Path(sys.argv[2]).exists(): "
        "assert time.monotonic() < end; time.sleep(0.01)\n"
        "print(sys.argv[1], 'met the other step')"
    )
    # CPU time, certain by construction: it spins until it has used 1.2 s.
    spin = "import time\nwhile time.process_time() < 1.2: pass"

    def meeting(mine: Path, other: Path) -> Callable[[testrun.Runner, list[str]], str]:
        def run(runner: testrun.Runner, args: list[str]) -> str:
            runner.sh([sys.executable, "-c", wait, str(mine), str(other)])
            runner.sh([sys.executable, "-c", spin])
            return f"{mine.name} is fine"

        return run

    def failing(runner: testrun.Runner, args: list[str]) -> str:
        runner.sh([sys.executable, "-c", "print('what went wrong')"])
        runner.failed_tests = ["tests/test_a.py::test_b"]
        raise testrun.StepFailed("pytest status 1")

    steps = [
        testrun.Step("one", "step one", meeting(*meet), alongside=True),
        testrun.Step("two", "step two", meeting(*reversed(meet)), alongside=True),
        testrun.Step("three", "step three", failing, alongside=True),
        fake_step("last"),
    ]
    monkeypatch.setattr(testrun, "steps", lambda runner=None: steps)
    assert testrun.main([]) == 1
    out = capsys.readouterr().out
    summary = (testrun.BUILD / "summary.md").read_text()
    rows = [row.split(" | ") for row in summary.splitlines() if row.startswith("| ")]
    assert [row[0] for row in rows[2:]] == ["| one", "| two", "| three", "| last"]
    assert [row[1] for row in rows[2:]] == ["ok", "ok", "FAILED", "ok"]
    # Each one's CPU is its own commands' (1.2 s and a little), not the others'.
    assert [row[3] for row in rows[2:4]] == ["1 s", "1 s"]
    for name, mine in (("one", meet[0]), ("two", meet[1])):
        log = (testrun.BUILD / "logs" / f"{name}.log").read_text()
        assert f"{mine} met the other step" in log
        assert f"{mine} met" not in out
        assert f"=== {name}: step {name} (" in out
        assert f"--- {name}: ok: {mine.name} is fine" in out
    # A failed one's last lines, and how to rerun it.
    assert "--- three: FAILED: pytest status 1" in out
    assert out.count("what went wrong") == 1
    log = testrun.shown(testrun.BUILD / "logs" / "three.log")
    tail = out.partition(f"--- the end of {log}:\n")[2]
    assert tail.startswith("\n=== three: step three (")
    assert "\nwhat went wrong\n--- three: FAILED" in tail
    assert "    bash scripts/test.sh three tests/test_a.py::test_b\n" in summary
    assert "last ran with []" in out


class FakeVenvs:
    """Runner.sh that only records the commands, and makes the venv's python."""

    def __init__(self) -> None:
        self.commands: list[list[str]] = []

    def sh(self, command: list[str], **kwargs: object) -> int:
        self.commands.append(command)
        if command[1:3] == ["-m", "venv"]:
            python = Path(command[3]) / "bin" / "python"
            python.parent.mkdir(parents=True, exist_ok=True)
            python.touch()
        return 0

    def take(self) -> list[str]:
        taken = [
            " ".join([Path(c[0]).name, *c[1:]]).replace(str(testrun.REQUIREMENTS), "R")
            for c in self.commands
        ]
        self.commands = []
        return taken


def test_a_venv_is_rebuilt_only_when_what_it_was_built_from_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    requirements = tmp_path / "requirements-tests.txt"
    requirements.write_text("anyio==4.16.0\n")
    monkeypatch.setattr(testrun, "BUILD", tmp_path / "build" / "test")
    monkeypatch.setattr(testrun, "REQUIREMENTS", requirements)
    monkeypatch.setattr(testrun, "python_version", lambda python: "3.11.7")
    monkeypatch.setattr(fork, "build_inputs_digest", lambda root: "inputs 1")
    fake = FakeVenvs()

    def venv() -> list[str]:
        runner = testrun.Runner(sys.executable, full=False, pytest_args=[])
        monkeypatch.setattr(runner, "sh", fake.sh)
        monkeypatch.setattr(runner, "uv", lambda: "uv")
        runner.venv("venv-fork", "python3.11")
        return fake.take()

    built = venv()
    assert built[0] == "python3.11 -m venv " + str(testrun.BUILD / "venv-fork")
    assert (
        built[1]
        == "uv pip install -q -p "
        + str(testrun.BUILD / "venv-fork" / "bin" / "python")
        + " -r R --compile-bytecode"
    )
    assert "python -m pip install --quiet .[all,standard]" in built
    assert "python -m pip check" in built
    assert venv() == []
    monkeypatch.setattr(fork, "build_inputs_digest", lambda root: "inputs 2")
    reinstalled = venv()
    assert not any(" -m venv " in c or c.startswith("uv ") for c in reinstalled)
    assert (
        "python -m pip install --quiet --force-reinstall --no-deps .[all,standard]"
        in reinstalled
    )
    assert venv() == []
    requirements.write_text("anyio==4.16.1\n")
    assert venv()[0].startswith("python3.11 -m venv ")
    assert venv() == []


def test_find_python_skips_what_does_not_run_and_takes_pyenvs_newest(
    tmp_path: Path,
):
    def fake(path: Path, version: str | None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            f"#!/bin/sh\necho {version}\n" if version else "#!/bin/sh\nexit 127\n"
        )
        path.chmod(0o755)

    shims = tmp_path / "shims"
    fake(shims / "python3.12", None)  # a pyenv shim of a version not selected
    pyenv = tmp_path / "pyenv"
    for version in ("3.12.1", "3.12.10", "3.12.9"):
        fake(pyenv / "versions" / version / "bin" / "python3.12", version)
    env = {"PATH": str(shims), "PYENV_ROOT": str(pyenv)}
    found = testrun.find_python("3.12", env)
    assert found == str(pyenv / "versions" / "3.12.10" / "bin" / "python3.12")
    assert testrun.find_python("3.13", env) is None
    fake(shims / "python3.12", "3.12.3")
    assert testrun.find_python("3.12", env) == str(shims / "python3.12")


RECORDED_APP = """
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

pytest.importorskip("fastapi")
app = FastAPI()


@pytest.fixture(scope="module")
def running():
    with TestClient(app) as client:
        yield client


def test_no_lifespan():
    assert TestClient(app).get("/nothing").status_code == 404


def test_lifespan():
    with TestClient(FastAPI()) as client:
        assert client.get("/").status_code == 404


def test_reads_the_switch():
    assert FastAPI(concurrent_lifespan_dependencies=True).concurrent_lifespan_dependencies


@pytest.mark.xfail(strict=True)
def test_expected_to_fail():
    raise AssertionError


def test_fails():
    raise AssertionError


def test_starts_the_module_lifespan(running):
    pass


def test_while_it_runs(running):
    pass
"""


def run_records(folder: Path, *args: str) -> dict[str, str]:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "run_records",
            "-p",
            "no:cacheprovider",
            "--record-outcomes",
            "outcomes.json",
            *args,
        ],
        cwd=folder,
        env={**os.environ, "PYTHONPATH": str(ROOT / "scripts" / "plugins")},
        capture_output=True,
        check=False,
        timeout=120,
    )
    return dict(json.loads((folder / "outcomes.json").read_text()))


@pytest.mark.parametrize("workers", [[], ["-n", "2"]])
def test_run_records_tests_that_run_a_lifespan_and_runs_only_those(
    tmp_path: Path, workers: list[str]
):
    (tmp_path / "test_app.py").write_text(RECORDED_APP)
    (tmp_path / "test_skipped_module.py").write_text(
        "import pytest\npytest.skip('not here', allow_module_level=True)\n"
    )
    outcomes = run_records(tmp_path, *workers, "--record-lifespan-tests", "tests.txt")
    assert outcomes == {
        "test_app.py::test_no_lifespan": "passed",
        "test_app.py::test_lifespan": "passed",
        "test_app.py::test_starts_the_module_lifespan": "passed",
        "test_app.py::test_while_it_runs": "passed",
        "test_app.py::test_reads_the_switch": "passed",
        "test_app.py::test_expected_to_fail": "xfailed",
        "test_app.py::test_fails": "failed",
        "test_skipped_module.py": "skipped",
    }
    recorded = set((tmp_path / "tests.txt").read_text().splitlines())
    lifespan_tests = {
        "test_app.py::test_lifespan",
        "test_app.py::test_starts_the_module_lifespan",
        "test_app.py::test_while_it_runs",
        "test_app.py::test_reads_the_switch",
    }
    assert recorded == lifespan_tests
    (tmp_path / "selection.txt").write_text("".join(f"{t}\n" for t in sorted(recorded)))
    (tmp_path / "outcomes.json").unlink()
    selected = run_records(
        tmp_path, *workers, "--lifespan-tests", "selection.txt", "test_app.py"
    )
    assert set(selected) == lifespan_tests


def test_readme_states_the_recorded_run():
    recorded = (ROOT / "docs" / "test-run.md").read_text()
    summary = recorded.partition("\n\n---\n\n")[2]
    start, end = testrun.README_MARKERS
    readme = (ROOT / "README.md").read_text()
    assert readme.count(start) == 1
    line = readme.partition(start)[2].partition(end)[0]
    assert line == testrun.readme_line(summary)


def test_readme_line_says_how_the_run_ended():
    green = textwrap.dedent(
        """\
        Green: 12 steps ok, 0 failed, 1 not run, in 15 min 3 s (2026-12-03 10:00 UTC; Python 3.11.7; 2 cores, load average 2.1 to 5.3 during the run).
        """
    )
    assert testrun.readme_line(green) == (
        "the last recorded full run took 15 min 3 s on 2 cores (load average 2.1 "
        "to 5.3; Python 3.11.7; 2026-12-03; green: 12 steps ok, 1 not run; "
        "[its steps](docs/test-run.md))"
    )
    failed = green.replace(
        "Green: 12 steps ok, 0 failed", "FAILED: 11 steps ok, 1 failed"
    )
    assert "FAILED: 11 steps ok, 1 failed, 1 not run" in testrun.readme_line(failed)
