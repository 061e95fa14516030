"""
The test command's steps; scripts/test.sh runs this with the Python it checked.

    bash scripts/test.sh                every step, in order; each one runs even
                                        after another failed
    bash scripts/test.sh -x ...         the same, these arguments to every pytest run
    bash scripts/test.sh --record       the same; its summary becomes docs/test-run.md
                                        (and the README's line about it)
    bash scripts/test.sh --list         the steps, and what each one runs
    bash scripts/test.sh STEP [ARG...]  one step (ARGs go to its pytest run),
                                        building what it needs first and reusing
                                        what is up to date

Everything goes to build/test/; a full run starts from an empty build/test. The
summary (build/test/summary.md) lists each step (ok, FAILED or not run; its wall
and CPU time), the pytest counts, the load average seen during the run, and the
command that reruns each failed step. Why the suites run as they do:
CONTRIBUTING.md, "The test command".
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import fork
import fork_backend
from fork_backend import ROOT

BUILD = ROOT / "build" / "test"
PLUGINS = ROOT / "scripts" / "plugins"
REQUIREMENTS = ROOT / "requirements-tests.txt"
# The recorded results of pristine upstream's suite, one file per Python version.
BASELINES = ROOT / "scripts" / "upstream-baseline"
RECORDED_RUN = ROOT / "docs" / "test-run.md"
README = ROOT / "README.md"
README_MARKERS = ("<!-- test-run -->", "<!-- /test-run -->")
# The Python versions the fork's own tests run on, beside the one the command runs
# with; found by name on PATH, then in pyenv's versions.
SUPPORTED_PYTHONS = ("3.11", "3.12", "3.13")
# The installer of the test venvs' requirements (a quarter of pip's time); the
# fork itself is installed with pip, as users install it.
UV = "uv==0.13.9"
# The fork's own tests: what runs on every supported Python.
OUR_TESTS = (
    "tests/test_dependency_lifespan_scope*",
    "tests/test_tutorial/test_lifespan_scoped_dependencies",
)
# How many of the steps that run side by side in a full run (Step.alongside) run
# at once: they spend much of their time waiting (for servers, the network, the
# processes they start), so on 2 cores four at a time take less time than one
# after another (on a machine busy with other jobs, about as long as three).
SIDE_BY_SIDE = 4
# Run apps in server processes of their own: out of the forced-concurrent pass.
SERVER_TESTS = "tests/test_dependency_lifespan_scope_servers"
PYTEST_QUIET = ["-p", "no:sugar", "-p", "no:cacheprovider", "-q", "-rfEsx"]
RECORDS = ["-p", "run_records"]
FORK_VERSION_CHECK = """\
import importlib.metadata, re, sys, fastapi
version = importlib.metadata.version("fastapi")
pinned = re.escape(sys.argv[1])
assert re.fullmatch(rf"{pinned}\\+lifespan\\.\\d+", version), version
assert fastapi.__version__ == version, (fastapi.__version__, version)
assert "site-packages" in fastapi.__file__, fastapi.__file__
print(f"installed fork: fastapi {version}")
"""
UPSTREAM_VERSION_CHECK = """\
import importlib.metadata, sys
version = importlib.metadata.version("fastapi")
assert version == sys.argv[1], version
print(f"installed pristine upstream: fastapi {version}")
"""
# Run with a venv's Python: the fastapi package's coverage in a data file.
COVERAGE_TOTALS = """\
import json, sys
sys.path.insert(0, "scripts")
from fork import load_package_coverage
cov, measured, percent = load_package_coverage(sys.argv[1])
statements = missing = 0
for filename in measured.values():
    _, lines, _, not_run, _ = cov.analysis2(filename)
    statements += len(lines)
    missing += len(not_run)
print(json.dumps({"statements": statements, "missing": missing, "percent": percent}))
"""


class StepFailed(Exception):
    """A step (or what it needs) failed; the message says what."""


class Usage(Exception):
    """The command line asks for something that does not exist."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def python_version(python: str) -> str | None:
    """The version of `python` ("3.12.1"), or None if it does not run."""
    try:
        result = subprocess.run(
            [python, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def _release(path: Path) -> tuple[int, ...]:
    parts = path.parent.parent.name.split(".")
    return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else ()


def find_python(version: str, environ: dict[str, str] | None = None) -> str | None:
    """
    A Python `version` ("3.12"): `pythonX.Y` on PATH if it runs (a pyenv shim of
    a version that is not selected does not), else the newest of pyenv's
    `versions/X.Y.*` (`$PYENV_ROOT`, by default ~/.pyenv).
    """
    environ = dict(os.environ) if environ is None else environ
    name = f"python{version}"
    candidates = []
    on_path = shutil.which(name, path=environ.get("PATH"))
    if on_path:
        candidates.append(on_path)
    pyenv = Path(environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    releases = list((pyenv / "versions").glob(f"{version}.*/bin/{name}"))
    candidates += [str(p) for p in sorted(releases, key=_release, reverse=True)]
    for candidate in candidates:
        found = python_version(candidate)
        if found is not None and minor(found) == version:
            return candidate
    return None


def counts(outcomes: dict[str, str]) -> str:
    """pytest's way: "6377 passed, 9 skipped, 1 xfailed"."""
    order = ["failed", "passed", "skipped", "xfailed", "xpassed", "error"]
    found = Counter(outcomes.values())
    return ", ".join(f"{found[o]} {o}" for o in order if found[o]) or "no tests ran"


def node_path(node_id: str) -> str:
    return node_id.split("::", 1)[0]


def names_tests(folder: Path, args: list[str]) -> bool:
    """Whether the pytest arguments name tests (paths in FOLDER) to run instead."""
    return any(Path(folder, node_path(arg)).exists() for arg in args)


def without_group(node_id: str) -> str:
    """The node id without the "@group" that xdist's --dist loadgroup adds."""
    return re.sub(r"@[^@\[\]:]*$", "", node_id)


def shown(path: Path) -> str:
    """`path` relative to the repository when it is in it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


@dataclass
class Step:
    name: str
    title: str
    run: Callable[[Runner, list[str]], str | None]
    pytest: bool = True
    in_full_run: bool = True
    # In a full run, side by side with the other such steps next to it, its
    # output to its log only.
    alongside: bool = False


@dataclass
class Outcome:
    step: Step
    result: str  # "ok", "FAILED" or "not run"
    wall: float
    cpu: float
    note: str = ""
    rerun: list[str] = field(default_factory=list)


class LoadSampler:
    """The 1-minute load average, sampled every few seconds."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            try:
                self.samples.append(float(Path("/proc/loadavg").read_text().split()[0]))
            except (OSError, ValueError, IndexError):
                return
            if self._stop.wait(5):
                return

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def describe(self, since: int = 0) -> str:
        seen = self.samples[since:]
        if not seen:
            return "not sampled"
        return f"{min(seen):.1f} to {max(seen):.1f}"


class StepState(threading.local):
    """What a running step has of its own, in each thread that runs one."""

    def __init__(self) -> None:
        self.log: IO[bytes] | None = None
        self.console = True
        self.failed_tests: list[str] = []
        # The CPU time of the commands it ran (their processes and what they waited for).
        self.cpu = 0.0


class Runner:
    """One invocation of the test command: what it built, how its steps ended."""

    def __init__(self, python: str, *, full: bool, pytest_args: list[str]) -> None:
        self.python = python
        self.full = full
        self.pytest_args = pytest_args
        self.ready: set[str] = set()
        self.broken: dict[str, str] = {}
        self.step = StepState()
        self.pythons = {
            version: find_python(version)
            for version in SUPPORTED_PYTHONS
            if version != minor(python_version(python) or "")
        }

    # Output: the console and the current step's log.

    @property
    def failed_tests(self) -> list[str]:
        return self.step.failed_tests

    @failed_tests.setter
    def failed_tests(self, tests: list[str]) -> None:
        self.step.failed_tests = tests

    def say(self, text: str, *, console: bool = False) -> None:
        """A line to the step's log, and to the console unless the step runs alongside others."""
        data = (text + "\n").encode()
        if console or self.step.console:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        if self.step.log is not None:
            self.step.log.write(data)

    def sh(
        self,
        command: list[str],
        *,
        cwd: Path = ROOT,
        env: dict[str, str] | None = None,
        check: bool = True,
    ) -> int:
        """Run a command, its output to the step's log (and the console, see say())."""
        with subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        ) as process:
            assert process.stdout is not None
            while chunk := process.stdout.read1(65536):  # type: ignore[attr-defined]
                if self.step.console:
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()
                if self.step.log is not None:
                    self.step.log.write(chunk)
            # Reaped here for its CPU time, which counts what it waited for.
            _, wait_status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(wait_status)
            self.step.cpu += usage.ru_utime + usage.ru_stime
        status = process.returncode
        if check and status != 0:
            raise StepFailed(f"{shlex.join(command)} exited with status {status}")
        return status

    # What steps need, built once per invocation and reused when up to date.

    def need(self, name: str, build: Callable[[], None]) -> None:
        if name in self.ready:
            return
        if name in self.broken:
            raise StepFailed(
                f"needs {name}, which could not be built: {self.broken[name]}"
            )
        try:
            build()
        except StepFailed as error:
            self.broken[name] = str(error)
            raise
        self.ready.add(name)

    def uv(self) -> str:
        venv = BUILD / "venv-uv"
        uv = venv / "bin" / "uv"

        def build() -> None:
            if uv.exists() and (venv / "installed").read_text() == UV:
                return
            shutil.rmtree(venv, ignore_errors=True)
            self.sh([self.python, "-m", "venv", str(venv)])
            self.sh([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", UV])
            (venv / "installed").write_text(UV)

        self.need("venv-uv", build)
        return str(uv)

    def venv(self, name: str, python: str, *, upstream: bool = False) -> str:
        """
        build/test/NAME: `python`'s venv with requirements-tests.txt and the fork
        (or pristine upstream), rebuilt when the Python or the requirements
        changed, the package reinstalled when only its build inputs changed.
        """
        folder = BUILD / name
        venv_python = folder / "bin" / "python"

        def build() -> None:
            version = python_version(python)
            if version is None:
                raise StepFailed(f"{python} does not run")
            stamp_file = BUILD / f"{name}.json"
            environment = sha256(
                f"{os.path.realpath(python)}\0{version}\0{UV}\0".encode()
                + REQUIREMENTS.read_bytes()
            )
            sdist_sha = fork_backend.read_upstream().sha256
            package = sdist_sha if upstream else fork.build_inputs_digest(ROOT)
            stamp = {"environment": environment, "package": package}
            old = json.loads(stamp_file.read_text()) if stamp_file.exists() else {}
            if old == stamp and venv_python.exists():
                self.say(f"{shown(folder)} is up to date (Python {version})")
                return
            stamp_file.unlink(missing_ok=True)
            fresh = old.get("environment") != environment or not venv_python.exists()
            if fresh:
                self.say(f"creating {shown(folder)} with Python {version}")
                shutil.rmtree(folder, ignore_errors=True)
                self.sh([python, "-m", "venv", str(folder)])
                uv = self.uv()
                requirements = ["-r", str(REQUIREMENTS), "--compile-bytecode"]
                self.sh(
                    [uv, "pip", "install", "-q", "-p", str(venv_python), *requirements]
                )
            pip = [str(venv_python), "-m", "pip", "install", "--quiet"]
            if not fresh:
                pip += ["--force-reinstall", "--no-deps"]
            if upstream:
                sdist = fork_backend.fetch_sdist(fork_backend.read_upstream())
                self.sh([*pip, f"fastapi[all,standard] @ {sdist.as_uri()}"])
                check = [UPSTREAM_VERSION_CHECK, fork_backend.read_upstream().version]
            else:
                self.sh([*pip, ".[all,standard]"])
                self.sh([str(folder / "bin" / "fastapi"), "--version"])
                check = [FORK_VERSION_CHECK, fork_backend.read_upstream().version]
            self.sh([str(venv_python), "-m", "pip", "check"])
            self.sh([str(venv_python), "-c", *check])
            stamp_file.write_text(json.dumps(stamp))

        try:
            self.need(name, build)
        except fork_backend.ForkBuildError as error:
            self.broken[name] = str(error)
            raise StepFailed(str(error)) from None
        return str(venv_python)

    def fork_python(self) -> str:
        return self.venv("venv-fork", self.python)

    def upstream_python(self) -> str:
        return self.venv("venv-upstream", self.python, upstream=True)

    def testdir(self, name: str, python: str) -> Path:
        """build/test/NAME (fork or upstream): the folder a suite runs from."""
        folder = BUILD / name

        def build() -> None:
            stamp_file = BUILD / f"{name}-tree.json"
            digest = (
                fork_backend.read_upstream().sha256
                if name == "upstream"
                else fork.build_inputs_digest(ROOT)
            )
            if stamp_file.exists() and stamp_file.read_text() == digest:
                return
            stamp_file.unlink(missing_ok=True)
            pristine = ["--pristine"] if name == "upstream" else []
            self.sh([python, "scripts/fork.py", "testdir", str(folder), *pristine])
            stamp_file.write_text(digest)

        self.need(f"the test folder {name}", build)
        return folder

    # The recorded results of pristine upstream's suite.

    def baseline_inputs(self) -> dict[str, str]:
        upstream = fork_backend.read_upstream()
        version = python_version(self.python) or "unknown"
        return {
            "upstream": f"{upstream.name} {upstream.version} sha256:{upstream.sha256}",
            "requirements-tests.txt": "sha256:" + sha256(REQUIREMENTS.read_bytes()),
            "python": minor(version),
        }

    def recorded_baseline(self) -> tuple[Path, dict[str, Any] | None]:
        path = BASELINES / f"{self.baseline_inputs()['python']}.json"
        return path, (json.loads(path.read_text()) if path.exists() else None)

    def baseline(self) -> dict[str, Any]:
        """The record if current, else this tree's own measurement of it."""
        _, record = self.recorded_baseline()
        if record is not None and record["inputs"] == self.baseline_inputs():
            return record
        measured = BUILD / "upstream" / "records" / "baseline.json"
        if measured.exists():
            found: dict[str, Any] = json.loads(measured.read_text())
            if found["inputs"] == self.baseline_inputs():
                return found
        if self.full:
            raise StepFailed("no baseline of pristine upstream (see the step upstream)")
        self.say(
            "=== no current baseline of pristine upstream: running the step upstream"
        )
        self.measure_baseline([])
        return self.baseline()

    def measure_baseline(self, args: list[str]) -> dict[str, Any] | None:
        """Pristine upstream's suite; its baseline (None when ARGS narrow it)."""
        python = self.upstream_python()
        folder = self.testdir("upstream", python)
        records = folder / "records"
        status = self.whole_suite(folder, python, args)
        if status != 0:
            raise StepFailed(
                f"upstream's suite failed on pristine upstream (pytest status {status})"
            )
        if args:
            return None
        outcomes: dict[str, str] = json.loads((records / "outcomes.json").read_text())
        data = str(folder / "coverage" / ".coverage")
        totals = subprocess.run(
            [python, "-c", COVERAGE_TOTALS, data],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        if totals.returncode != 0:
            raise StepFailed("could not read the coverage data:\n" + totals.stderr)
        baseline = {
            "about": (
                "Pristine upstream's suite (tests/ and scripts/tests/ of the sdist) "
                "on pristine upstream, from `bash scripts/test.sh record-baseline`; "
                "`bash scripts/test.sh upstream` measures it again and compares."
            ),
            "inputs": self.baseline_inputs(),
            "python": python_version(python),
            "tests": outcome_record(outcomes),
            "coverage": json.loads(totals.stdout),
        }
        (records / "baseline.json").write_text(json.dumps(baseline, indent=2) + "\n")
        return baseline

    # The fork's run and what it leaves for other steps.

    def complete_fork_results(self) -> Path | None:
        """build/test/fork/records, if a complete run of the step fork left them."""
        records = BUILD / "fork" / "records"
        complete = records / "complete.json"
        if complete.exists() and json.loads(complete.read_text()) == self.fork_state():
            return records
        return None

    def fork_results(self) -> Path:
        """build/test/fork/records of a complete run of the step fork on this tree."""
        records = self.complete_fork_results()
        if records is not None:
            return records
        if self.full:
            raise StepFailed("the step fork left no complete results")
        self.say(
            "=== no complete results of the step fork for this tree: running it first"
        )
        self.fork_suite([])
        records = self.complete_fork_results()
        if records is None:
            raise StepFailed("the step fork did not complete")
        return records

    def fork_state(self) -> dict[str, str]:
        return {
            name: (BUILD / f"{name}.json").read_text()
            for name in ("venv-fork", "fork-tree")
            if (BUILD / f"{name}.json").exists()
        }

    def fork_suite(self, args: list[str]) -> int:
        python = self.fork_python()
        folder = self.testdir("fork", python)
        records = folder / "records"
        # The real-server tests run in the step servers, unless named here.
        named = names_tests(folder, args)
        status = self.whole_suite(
            folder,
            python,
            args,
            "--record-lifespan-tests",
            "records/lifespan-tests.txt",
            *([] if named else [f"--ignore={SERVER_TESTS}"]),
        )
        if status in (0, 1) and not args:
            (records / "complete.json").write_text(json.dumps(self.fork_state()))
        return status

    def whole_suite(
        self, folder: Path, python: str, args: list[str], *options: str
    ) -> int:
        """The suite of a test folder (tests/, scripts/tests/), under coverage."""
        shutil.rmtree(folder / "records", ignore_errors=True)
        return self.suite(
            folder,
            python,
            ["tests", "scripts/tests/"],
            [
                "--cov",
                "--cov-report=",
                *RECORDS,
                "--record-outcomes",
                "records/outcomes.json",
                *options,
            ],
            args,
            coverage=True,
        )

    def suite(
        self,
        folder: Path,
        python: str,
        paths: list[str],
        options: list[str],
        args: list[str],
        *,
        coverage: bool = False,
        plugins: bool = True,
        workers: str = "auto",
    ) -> int:
        """pytest -n auto in a test folder; its status. ARGS may replace PATHS."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            ["./docs_src", *([str(PLUGINS)] if plugins else [])]
        )
        if coverage:
            self.sh([python, "-m", "coverage", "erase"], cwd=folder, env=env)
        if names_tests(folder, args):
            paths = []
        command = [python, "-m", "pytest", "-n", workers, "--dist", "loadgroup"]
        status = self.sh(
            [*command, *paths, *PYTEST_QUIET, *options, *args],
            cwd=folder,
            env=env,
            check=False,
        )
        # pytest-cov combines the data of its processes; what subprocesses
        # measured on their own is left in parallel files.
        if coverage and list(folder.glob("coverage/.coverage.*")):
            self.sh(
                [python, "-m", "coverage", "combine", "--quiet"], cwd=folder, env=env
            )
        return status

    def outcomes_of(self, path: Path) -> dict[str, str]:
        found: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
        self.failed_tests = sorted(
            t for t, o in found.items() if o in ("failed", "error")
        )
        return found


def outcome_record(outcomes: dict[str, str]) -> dict[str, Any]:
    """What a baseline keeps of a run's outcomes: counts, ids digest, non-passes."""
    ids = "".join(f"{test}\n" for test in sorted(outcomes))
    return {
        "count": len(outcomes),
        "ids_sha256": sha256(ids.encode()),
        "outcomes": dict(sorted(Counter(outcomes.values()).items())),
        "not_passed": {t: o for t, o in sorted(outcomes.items()) if o != "passed"},
    }


def compare(recorded: dict[str, Any], measured: dict[str, Any], what: str) -> list[str]:
    problems = []
    for key in sorted(set(recorded) | set(measured)):
        if recorded.get(key) != measured.get(key):
            problems.append(
                f"{what} {key}: recorded {recorded.get(key)!r}, measured {measured.get(key)!r}"
            )
    return problems


# The steps.


def step_setup(runner: Runner, args: list[str]) -> str:
    fork_python = runner.fork_python()
    runner.testdir("fork", fork_python)
    return (
        "the fork's venv and test folder in build/test/ (the others are built by "
        "the steps that use them)"
    )


def step_series(runner: Runner, args: list[str]) -> str:
    runner.sh([runner.fork_python(), "scripts/fork.py", "check"])
    return "the series and our files reproduce the tree"


def step_upstream(runner: Runner, args: list[str]) -> str:
    path, record = runner.recorded_baseline()
    rel = path.relative_to(ROOT)
    current = record is not None and record["inputs"] == runner.baseline_inputs()
    if runner.full and current and not args:
        return f"not run: {rel} is current (same sdist, requirements and Python)"
    measured = runner.measure_baseline(args)
    runner.outcomes_of(BUILD / "upstream" / "records" / "outcomes.json")
    if measured is None:
        return "not compared with the record (pytest arguments narrow the run)"
    if record is None:
        return f"no record for this Python ({rel}): bash scripts/test.sh record-baseline writes it"
    if not current:
        raise StepFailed(
            f"{rel} was recorded with other inputs than this tree's "
            f"({record['inputs']} != {runner.baseline_inputs()}): record it again "
            f"with: PYTHON={runner.python} bash scripts/test.sh record-baseline"
        )
    problems = compare(record["tests"], measured["tests"], "tests")
    problems += compare(record["coverage"], measured["coverage"], "coverage")
    if problems:
        raise StepFailed(
            f"pristine upstream's run differs from {rel}:\n" + "\n".join(problems)
        )
    return f"the same as {rel}"


def step_record_baseline(runner: Runner, args: list[str]) -> str:
    measured = runner.measure_baseline([])
    assert measured is not None
    path, _ = runner.recorded_baseline()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(measured, indent=2) + "\n")
    return f"wrote {path.relative_to(ROOT)}"


def step_fork(runner: Runner, args: list[str]) -> str:
    status = runner.fork_suite(args)
    outcomes = runner.outcomes_of(BUILD / "fork" / "records" / "outcomes.json")
    if status != 0:
        raise StepFailed(f"pytest status {status}")
    if args:
        return "upstream's tests not compared with the baseline (pytest arguments narrow the run)"
    ours = set(fork_backend.overlay_files(ROOT))
    upstream = {t: o for t, o in outcomes.items() if node_path(t) not in ours}
    mine = counts({t: o for t, o in outcomes.items() if t not in upstream})
    try:
        baseline = runner.baseline()
    except StepFailed as error:
        return (
            f"ours: {mine}; upstream's tests ({counts(upstream)}) not compared: {error}"
        )
    problems = compare(baseline["tests"], outcome_record(upstream), "upstream's tests")
    if problems:
        raise StepFailed(
            "upstream's tests did not run on the fork as on pristine upstream:\n"
            + "\n".join(problems)
        )
    return (
        f"upstream's {len(upstream)} tests ran as on pristine upstream "
        f"({counts(upstream)}); ours: {mine}"
    )


def step_concurrent(runner: Runner, args: list[str]) -> str:
    records = runner.fork_results()
    python = runner.fork_python()
    folder = runner.testdir("fork", python)
    recorded = set((records / "lifespan-tests.txt").read_text().splitlines())
    untrusted = untrusted_records(recorded)
    selection = sorted(
        t
        for t in recorded
        if t.startswith("tests/") and not t.startswith(SERVER_TESTS + "/")
    )
    options = ["-p", "concurrent_lifespan_dependencies", *RECORDS]
    options += ["--record-outcomes", "records/concurrent-outcomes.json"]
    if untrusted:
        note = f"every test (the step fork recorded {', '.join(untrusted)})"
        paths = ["tests", f"--ignore={SERVER_TESTS}"]
    else:
        listed = records / "concurrent-selection.txt"
        listed.write_text("".join(f"{t}\n" for t in selection))
        options += ["--lifespan-tests", str(listed.relative_to(folder))]
        paths = sorted({node_path(t) for t in selection})
        note = (
            f"the {len(selection)} tests (in {len(paths)} files) during which a "
            "FastAPI app's lifespan ran in the step fork"
        )
    status = runner.suite(folder, python, paths, options, args)
    outcomes = runner.outcomes_of(records / "concurrent-outcomes.json")
    if status != 0:
        raise StepFailed(f"pytest status {status}")
    missing = sorted(set(selection) - set(outcomes))
    if missing and not args and not untrusted:
        raise StepFailed(
            f"{len(missing)} of the selected tests did not run, e.g. {missing[0]}"
        )
    return f"{note}: {counts(outcomes)}"


def untrusted_records(recorded: Iterable[str]) -> list[str]:
    """
    What the step fork's record of lifespan tests says beside test ids ("<...>":
    a lifespan outside any test, a worker without its record): the record can't
    be used to select tests.
    """
    return sorted(t for t in recorded if t.startswith("<"))


def run_ours(
    runner: Runner, python: str, name: str, paths: list[str], args: list[str]
) -> str:
    """Our tests at PATHS, in the fork's test folder, without coverage; their counts."""
    folder = runner.testdir("fork", python)
    outcome_file = f"records/{name}-outcomes.json"
    (folder / "records").mkdir(exist_ok=True)
    status = runner.suite(
        folder, python, paths, [*RECORDS, "--record-outcomes", outcome_file], args
    )
    outcomes = runner.outcomes_of(folder / outcome_file)
    if status != 0:
        raise StepFailed(f"pytest status {status}")
    return counts(outcomes)


def step_servers(runner: Runner, args: list[str]) -> str:
    return run_ours(runner, runner.fork_python(), "servers", [SERVER_TESTS], args)


def python_step(version: str) -> Callable[[Runner, list[str]], str]:
    def step(runner: Runner, args: list[str]) -> str:
        python = runner.pythons.get(version)
        if python is None:
            raise StepFailed(f"no Python {version} found")
        name = f"py{version}"
        venv_python = runner.venv(f"venv-{name}", python)
        folder = runner.testdir("fork", venv_python)
        paths = sorted(
            str(p.relative_to(folder))
            for pattern in OUR_TESTS
            for p in folder.glob(pattern)
        )
        ran = run_ours(runner, venv_python, name, paths, args)
        return f"Python {python_version(venv_python)} ({python}): {ran}"

    return step


def step_tooling(runner: Runner, args: list[str]) -> str:
    python = runner.fork_python()
    env = dict(os.environ, PYTHONPATH=str(PLUGINS))
    outcome_file = BUILD / "tooling-outcomes.json"
    paths = [] if names_tests(ROOT, args) else ["scripts/tests"]
    status = runner.sh(
        [
            python,
            "-m",
            "pytest",
            # Each file in one process: the docs tests share build/venv-docs.
            "-n",
            "2",
            "--dist",
            "loadfile",
            *paths,
            *PYTEST_QUIET,
            *RECORDS,
            "--record-outcomes",
            str(outcome_file),
            *args,
        ],
        env=env,
        check=False,
    )
    outcomes = runner.outcomes_of(outcome_file)
    if status != 0:
        raise StepFailed(f"pytest status {status}")
    return counts(outcomes)


def step_pr_check(runner: Runner, args: list[str]) -> str:
    python = runner.fork_python()
    workdir = BUILD / "pr-check"
    command = [python, "scripts/fork.py", "pr-check", "--python", python]
    # Of upstream's suite, only the tests that ran an app's lifespan can take
    # another path on the PR's tree than on the fork's (CONTRIBUTING.md).
    records = runner.complete_fork_results()
    recorded = (records / "lifespan-tests.txt").read_text() if records else ""
    if records is None:
        what = "upstream's whole suite and the PR's tests (no complete results of the step fork)"
    elif untrusted_records(recorded.splitlines()):
        what = "upstream's whole suite and the PR's tests (the step fork recorded lifespans outside tests)"
    else:
        listed = workdir.parent / "pr-check-upstream-tests.txt"
        listed.write_text(
            "".join(f"{without_group(t)}\n" for t in recorded.splitlines())
        )
        command += ["--upstream-tests", str(listed)]
        what = "the PR's tests and the upstream tests that ran an app's lifespan in the step fork"
    runner.sh([*command, "--workdir", str(workdir)])
    log = workdir / "pytest.log"
    last = log.read_text().strip().rpartition("\n")[2] if log.exists() else ""
    return f"the PR's last commit, {what}: {last.strip('= ')}"


def step_lint(runner: Runner, args: list[str]) -> str:
    python = runner.fork_python()
    runner.testdir("fork", python)
    source = BUILD / "fork-src"
    runner.sh([python, "-m", "mypy", "fastapi"], cwd=source)
    runner.sh(
        [python, "-m", "ruff", "check", "fastapi", "tests", "docs_src", "scripts"],
        cwd=source,
    )
    runner.sh(
        [python, "-m", "ruff", "format", "fastapi", "tests", "--check"], cwd=source
    )
    runner.sh([python, "-m", "ruff", "check", "scripts"])
    runner.sh([python, "-m", "ruff", "format", "scripts", "--check"])
    runner.sh([python, "-m", "mypy"])
    return "mypy, ruff check and ruff format on the package and on our tooling"


def step_benchmark(runner: Runner, args: list[str]) -> str:
    fork_python, upstream_python = runner.fork_python(), runner.upstream_python()
    output = BUILD / "bench"
    runner.sh(
        [
            fork_python,
            "scripts/benchmark.py",
            "--quick",
            "--fork-python",
            fork_python,
            "--upstream-python",
            upstream_python,
            "--output",
            str(output),
        ]
    )
    results = output / "results.md"
    if "## 3. Scale" not in results.read_text():
        raise StepFailed(f"{results} has no section 3")
    if not (output / "results.png").stat().st_size:
        raise StepFailed(f"{output / 'results.png'} is empty")
    return f"{shown(results)} and results.png written (quick mode)"


def step_coverage(runner: Runner, args: list[str]) -> str:
    records = runner.fork_results()
    baseline = runner.baseline()
    data = records.parent / "coverage" / ".coverage"
    runner.sh(
        [
            runner.fork_python(),
            "scripts/fork.py",
            "coverage",
            str(data),
            "--baseline-total",
            repr(baseline["coverage"]["percent"]),
        ]
    )
    return (
        "every line of ours run; the package total not below pristine upstream's "
        f"(its run on Python {baseline['python']})"
    )


def steps(runner: Runner | None = None) -> list[Step]:
    pythons = runner.pythons if runner is not None else {}
    found = []
    for version, python in pythons.items():
        where = (
            f"{python}"
            if python
            else f"none found: python{version} on PATH, pyenv's versions"
        )
        found.append(
            Step(
                f"py{version}",
                f"the fork's own tests on Python {version} ({where})",
                python_step(version),
                alongside=True,
            )
        )
    return [
        Step(
            "setup",
            "the fork's venv (requirements-tests.txt, then the fork with pip install "
            "'.[all,standard]') and the folder the suites run from",
            step_setup,
            pytest=False,
        ),
        Step(
            "series",
            "the series check (scripts/fork.py check)",
            step_series,
            pytest=False,
        ),
        Step(
            "upstream",
            "upstream's suite on pristine upstream, compared with its record in "
            "scripts/upstream-baseline/ (in the full run only when that record is "
            "not current)",
            step_upstream,
        ),
        Step(
            "fork",
            "upstream's suite and ours but the real-server tests on the installed "
            "fork, under coverage; upstream's tests must run as on pristine upstream",
            step_fork,
        ),
        # The longest first: SIDE_BY_SIDE of these run at once in a full run.
        Step(
            "tooling",
            "our tooling's tests (scripts/tests/), the install test among them",
            step_tooling,
            alongside=True,
        ),
        Step(
            "servers",
            f"the real-server tests ({SERVER_TESTS}/) on the installed fork",
            step_servers,
            alongside=True,
        ),
        *found,
        Step(
            "concurrent",
            "again with every app's lifespan dependencies set up concurrently, the "
            "tests during which an app's lifespan ran in the step fork",
            step_concurrent,
            alongside=True,
        ),
        Step(
            "pr-check",
            "the upstream pull request check (scripts/fork.py pr-check)",
            step_pr_check,
            pytest=False,
            alongside=True,
        ),
        Step(
            "lint",
            "upstream's scripts/lint.sh on the assembled package; ruff and mypy --strict on our tooling",
            step_lint,
            pytest=False,
            alongside=True,
        ),
        # Quick mode measures nothing that is read: it needs no quiet machine.
        Step(
            "benchmark",
            "the benchmark in quick mode (it runs; no timing asserted)",
            step_benchmark,
            pytest=False,
            alongside=True,
        ),
        Step(
            "coverage",
            "every line of ours is run in the step fork, and the package total is "
            "not below pristine upstream's",
            step_coverage,
            pytest=False,
        ),
        Step(
            "record-baseline",
            "run upstream's suite on pristine upstream and write its record "
            "(scripts/upstream-baseline/PYTHON.json)",
            step_record_baseline,
            pytest=False,
            in_full_run=False,
        ),
    ]


def run_step(
    runner: Runner,
    step: Step,
    args: list[str],
    started: float,
    *,
    console: bool = True,
) -> Outcome:
    """Run a step; with console=False, its output goes to its log only."""
    BUILD.joinpath("logs").mkdir(parents=True, exist_ok=True)
    log_path = BUILD / "logs" / f"{step.name}.log"
    began = time.monotonic()
    state = runner.step
    state.cpu, state.failed_tests, state.console = 0.0, [], console
    with log_path.open("wb") as log:
        state.log = log
        beside = "" if console else f"; beside others, its output in {shown(log_path)}"
        runner.say(
            f"\n=== {step.name}: {step.title} ({duration(began - started)} in{beside})",
            console=True,
        )
        result, note = "ok", ""
        try:
            note = step.run(runner, args) or ""
        except StepFailed as error:
            result, note = "FAILED", str(error)
        except fork_backend.ForkBuildError as error:
            result, note = "FAILED", str(error)
        if note:
            runner.say(f"--- {step.name}: {result}: {note}", console=True)
        state.log = None
    if result == "FAILED" and not console:
        tail = log_path.read_text(errors="replace").splitlines()[-40:]
        print(f"--- the end of {shown(log_path)}:\n" + "\n".join(tail), flush=True)
    outcome = Outcome(step, result, time.monotonic() - began, state.cpu, note)
    if result == "FAILED":
        rerun = ["bash", "scripts/test.sh", step.name, *args]
        outcome.rerun.append(shlex.join(rerun))
        if step.pytest and 0 < len(runner.failed_tests) <= 10:
            tests = [without_group(test) for test in runner.failed_tests]
            outcome.rerun.append(shlex.join([*rerun, *tests]))
    return outcome


def summary(
    outcomes: list[Outcome], wall: float, load: str, pytest_args: list[str]
) -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    found = Counter(o.result for o in outcomes)
    python = python_version(sys.executable)
    lines = [
        f"{'FAILED' if found['FAILED'] else 'Green'}: {found['ok']} steps ok, "
        f"{found['FAILED']} failed, {found['not run']} not run, in {duration(wall)} "
        f"({now}; Python {python}; {os.cpu_count()} cores, load average {load} "
        "during the run"
        + (f"; pytest arguments {shlex.join(pytest_args)}" if pytest_args else "")
        + ").",
        "",
        "| step | result | wall | CPU | what |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for o in outcomes:
        what = o.note.splitlines()[0] if o.note else o.step.title
        lines.append(
            f"| {o.step.name} | {o.result} | {duration(o.wall)} | {duration(o.cpu)} "
            f"| {what.replace('|', '/')} |"
        )
    rerun = [command for o in outcomes for command in o.rerun]
    if rerun:
        lines += [
            "",
            "Rerun each failed step (and, below it, only its failed tests):",
            "",
        ]
        lines += [f"    {command}" for command in rerun]
    return "\n".join(lines) + "\n"


def record_run(text: str) -> None:
    """docs/test-run.md from a full run's summary, and the README's line from it."""
    RECORDED_RUN.write_text(
        "# The last recorded run of the test command\n\n"
        "Written by `bash scripts/test.sh --record` (a full run; its summary, "
        "build/test/summary.md, follows). The README's line about how long the "
        "test command takes comes from it.\n\n---\n\n" + text
    )
    readme = README.read_text()
    start, end = README_MARKERS
    before, _, rest = readme.partition(start)
    _, _, after = rest.partition(end)
    README.write_text(before + start + readme_line(text) + end + after)


def readme_line(text: str) -> str:
    """The README's words about the last recorded run, from its summary."""
    first = text.splitlines()[0]
    match = re.match(
        r"(?P<verdict>Green|FAILED): (?P<ok>\d+) steps ok, (?P<failed>\d+) failed, "
        r"(?P<not_run>\d+) not run, in (?P<took>.+?) \((?P<day>\S+) .*?; "
        r"Python (?P<python>\S+); (?P<cores>\d+) cores, load average (?P<load>.+?) "
        r"during the run(?:; .*)?\)\.$",
        first,
    )
    if match is None:
        raise ValueError(f"not the first line of a full run's summary: {first!r}")
    verdict = f"{match['verdict'].lower()}: {match['ok']} steps ok"
    if match["verdict"] == "FAILED":
        verdict = f"FAILED: {match['ok']} steps ok, {match['failed']} failed"
    if match["not_run"] != "0":
        verdict += f", {match['not_run']} not run"
    return (
        f"the last recorded full run took {match['took']} on {match['cores']} "
        f"cores (load average {match['load']}; Python {match['python']}; "
        f"{match['day']}; {verdict}; [its steps](docs/test-run.md))"
    )


def full_run(runner: Runner, record: bool) -> int:
    started = time.monotonic()
    if BUILD.exists():
        shutil.rmtree(BUILD)
    BUILD.mkdir(parents=True)
    outcomes: list[Outcome] = []
    batch: list[Step] = []

    def run(step: Step, console: bool) -> Outcome:
        if step.name.startswith("py") and runner.pythons.get(step.name[2:]) is None:
            return Outcome(step, "not run", 0, 0, f"no Python {step.name[2:]} found")
        args = runner.pytest_args if step.pytest else []
        return run_step(runner, step, args, started, console=console)

    def run_batch() -> None:
        with ThreadPoolExecutor(SIDE_BY_SIDE) as pool:
            outcomes.extend(pool.map(lambda step: run(step, False), batch))
        batch.clear()

    with LoadSampler() as load:
        for step in steps(runner):
            if not step.in_full_run:
                continue
            if step.alongside:
                batch.append(step)
                continue
            if batch:
                run_batch()
            outcomes.append(run(step, True))
        if batch:
            run_batch()
    text = summary(
        outcomes, time.monotonic() - started, load.describe(), runner.pytest_args
    )
    (BUILD / "summary.md").write_text(text)
    print(
        f"\n=== summary (build/test/summary.md; each step's output in build/test/logs/)\n\n{text}"
    )
    failed = sum(o.result == "FAILED" for o in outcomes)
    if record:
        if runner.pytest_args:
            print("not recorded: pytest arguments narrow the run")
        else:
            record_run(text)
            print(f"recorded: {RECORDED_RUN.relative_to(ROOT)} and the README's line")
    return 1 if failed else 0


def one_step(runner: Runner, step: Step, args: list[str]) -> int:
    if args and not step.pytest:
        raise Usage(f"the step {step.name} takes no arguments (it runs no pytest)")
    if step.name.startswith("py") and runner.pythons.get(step.name[2:]) is None:
        raise Usage(
            f"no Python {step.name[2:]} found (python{step.name[2:]} on PATH, pyenv's versions)"
        )
    BUILD.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    outcome = run_step(runner, step, args, started)
    print(f"\n{outcome.result}: {step.name} in {duration(outcome.wall)}")
    if outcome.result == "FAILED":
        print("rerun with:\n" + "\n".join(f"    {c}" for c in outcome.rerun))
        return 1
    return 0


def list_steps(runner: Runner) -> str:
    everything = steps(runner)
    width = max(len(s.name) for s in everything)
    lines = [
        "The full run's steps, in order (bash scripts/test.sh STEP [pytest args] runs "
        f"one; those marked * run {SIDE_BY_SIDE} at a time, side by side):"
    ]
    lines += [
        f"{'*' if s.alongside else ' '} {s.name:<{width}}  {s.title}"
        for s in everything
        if s.in_full_run
    ]
    lines += ["Not in the full run:"]
    lines += [
        f"  {s.name:<{width}}  {s.title}" for s in everything if not s.in_full_run
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    runner_python = sys.executable
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    record = argv[:1] == ["--record"]
    if record:
        argv = argv[1:]
    runner = Runner(
        runner_python, full=not argv or argv[0].startswith("-"), pytest_args=[]
    )
    try:
        if argv[:1] == ["--list"]:
            print(list_steps(runner))
            return 0
        if runner.full:
            runner.pytest_args = argv
            return full_run(runner, record)
        by_name = {s.name: s for s in steps(runner)}
        if argv[0] not in by_name:
            raise Usage(f"no step {argv[0]!r}; the steps: {', '.join(by_name)}")
        if record:
            raise Usage("--record records a full run, not one step")
        return one_step(runner, by_name[argv[0]], argv[1:])
    except Usage as error:
        print(f"scripts/test.sh: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
