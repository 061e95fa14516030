"""
A pytest plugin for scripts/test.sh: what a run did, and running only some tests.

`--record-outcomes FILE` writes each test's outcome (passed, failed, error,
skipped, xfailed, xpassed) as JSON, in the process that reports them (with
xdist, the controller): the summary's counts, the rerun command of failed tests,
and the comparison of upstream's tests on the fork with pristine upstream's.

The tests the concurrency switch can change: `FastAPI(concurrent_lifespan_dependencies=
...)` reaches the code through the app's attribute of that name, which the
wrapper `FastAPI.__call__` puts around the app's ASGI lifespan reads (it builds
that wrapper only for a `"lifespan"` scope). A test during which nothing reads
the attribute runs the same code whatever the switch says. So `scripts/test.sh`
records, in its run of the fork (`--record-lifespan-tests FILE`), every test
during which the attribute was read, a FastAPI app's lifespan started, or one
was still running (a lifespan that a fixture started earlier counts for every
test that runs while it is up), and runs its pass with every app's set-ups
forced concurrent (`--lifespan-tests FILE`) on those tests only. When a lifespan
starts or the attribute is read outside of any test, lifespans ran but the
attribute was never read (the switch would then reach the code some other way),
or an xdist worker ended without handing over its record, the record says so
and that pass runs every test.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Awaitable, Callable, Generator, MutableMapping
from pathlib import Path
from typing import Any

import pytest

# Written to the record when the selection can't be trusted: then every test runs.
OUTSIDE_ANY_TEST = "<outside any test>"
SWITCH_NEVER_READ = "<lifespans ran, the switch was never read>"
WORKER_LOST = "<an xdist worker ended without its record>"
SWITCH = "concurrent_lifespan_dependencies"

ASGIApp = Callable[[Any, MutableMapping[str, Any], Any, Any], Awaitable[None]]


class _Recorder:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.running = 0
        self.lifespans = 0
        self.reads = 0
        self.current: str | None = None
        self.tests: set[str] = set()

    def note(self) -> None:
        self.tests.add(self.current or OUTSIDE_ANY_TEST)

    def install(self, app_class: type) -> None:
        """Watch `app_class`'s lifespans and the reads of its switch."""
        recorder = self
        call: ASGIApp = app_class.__call__

        async def __call__(
            self: Any, scope: MutableMapping[str, Any], receive: Any, send: Any
        ) -> None:
            if scope["type"] != "lifespan":
                return await call(self, scope, receive, send)
            with recorder.lock:
                recorder.running += 1
                recorder.lifespans += 1
                recorder.note()
            try:
                return await call(self, scope, receive, send)
            finally:
                with recorder.lock:
                    recorder.running -= 1

        def get(app: Any) -> Any:
            with recorder.lock:
                recorder.reads += 1
                recorder.note()
            try:
                return vars(app)[SWITCH]
            except KeyError:
                raise AttributeError(SWITCH) from None

        def set_(app: Any, value: Any) -> None:
            vars(app)[SWITCH] = value

        app_class.__call__ = __call__  # type: ignore[method-assign]
        setattr(app_class, SWITCH, property(get, set_))

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(
        self, item: pytest.Item
    ) -> Generator[None, object, object]:
        with self.lock:
            self.current = item.nodeid
            if self.running:
                self.note()
        try:
            return (yield)
        finally:
            with self.lock:
                if self.running:
                    self.note()
                self.current = None

    def summary(self) -> dict[str, Any]:
        return {
            "tests": sorted(self.tests),
            "lifespans": self.lifespans,
            "reads": self.reads,
        }

    def add(self, summary: dict[str, Any]) -> None:
        self.tests.update(summary["tests"])
        self.lifespans += summary["lifespans"]
        self.reads += summary["reads"]

    # With xdist, each worker hands what it saw to the controller (as
    # pytest-cov does), which writes the file.
    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        config = session.config
        if hasattr(config, "workerinput"):
            config.workeroutput["run_records_lifespan"] = self.summary()  # type: ignore[attr-defined]
            return
        tests = set(self.tests)
        if self.lifespans and not self.reads:
            tests.add(SWITCH_NEVER_READ)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(f"{test}\n" for test in sorted(tests)))

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: object) -> None:
        summary = getattr(node, "workeroutput", {}).get("run_records_lifespan")
        if summary is None:
            # A worker that crashed: what it ran can't be known.
            self.tests.add(WORKER_LOST)
        else:
            self.add(summary)


class _Selection:
    def __init__(self, tests: set[str]) -> None:
        self.tests = tests

    # After xdist's --dist loadgroup, which adds "@group" to the node ids it
    # groups, as it did when they were recorded.
    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(
        self, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        config.hook.pytest_deselected(
            items=[item for item in items if item.nodeid not in self.tests]
        )
        items[:] = [item for item in items if item.nodeid in self.tests]


class _Outcomes:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.outcomes: dict[str, str] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call" and report.passed:
            return
        if hasattr(report, "wasxfail"):
            outcome = "xfailed" if report.skipped else "xpassed"
        elif report.failed and report.when != "call":
            outcome = "error"
        else:
            outcome = report.outcome
        if self.outcomes.get(report.nodeid) in ("failed", "error"):
            return  # a teardown after a failure keeps the failure
        self.outcomes[report.nodeid] = outcome

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        # A module that skips itself (pytest.skip(allow_module_level=True)).
        if report.skipped:
            self.outcomes[report.nodeid] = "skipped"
        elif report.failed:
            self.outcomes[report.nodeid] = "error"

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if hasattr(session.config, "workerinput"):
            return  # an xdist worker: the controller writes what it reported
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.outcomes, indent=0, sort_keys=True))


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("run records")
    group.addoption(
        "--record-outcomes",
        metavar="FILE",
        help="write each test's outcome to FILE (JSON)",
    )
    group.addoption(
        "--record-lifespan-tests",
        metavar="FILE",
        help="write to FILE the tests during which a FastAPI app's lifespan "
        "started or ran, or its concurrent_lifespan_dependencies was read",
    )
    group.addoption(
        "--lifespan-tests",
        metavar="FILE",
        help="run only the tests listed in FILE, one node id a line",
    )


def pytest_configure(config: pytest.Config) -> None:
    outcomes = config.getoption("record_outcomes")
    if outcomes is not None:
        config.pluginmanager.register(_Outcomes(Path(outcomes)), "outcomes-recorder")
    record = config.getoption("record_lifespan_tests")
    if record is not None:
        from fastapi.applications import FastAPI

        recorder = _Recorder(Path(record))
        recorder.install(FastAPI)
        config.pluginmanager.register(recorder, "lifespan-tests-recorder")
    listed = config.getoption("lifespan_tests")
    if listed is not None:
        tests = set(Path(listed).read_text().splitlines())
        config.pluginmanager.register(_Selection(tests), "lifespan-tests-selection")
