"""
Real servers for the lifespan-scope tests: each test starts server processes on
127.0.0.1, in their own process group, and leaves nothing running.
"""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

APP = "tests.test_dependency_lifespan_scope_servers.app:app"
ROOT = Path(__file__).parents[2]
# Generous bounds for a loaded 2-core machine; a passing run takes far less.
START_TIMEOUT = 20.0
STOP_TIMEOUT = 20.0
# How long a client waits for an answer or a message: a bound for a hang only.
CLIENT_TIMEOUT = 30.0

# Hypercorn 0.18.0 awaits asyncio's Server.wait_closed() before it starts its
# graceful timeout (hypercorn issue #308), and from CPython 3.12 on that waits for
# every open connection (cpython gh-79033; 3.11 returned at once). So from 3.12 on,
# hypercorn never applies --graceful-timeout: it neither cancels a request still
# running nor drops an open WebSocket, it waits until each one has ended.
HYPERCORN_APPLIES_GRACEFUL_TIMEOUT = sys.version_info < (3, 12)

# The events of one run of app.py without faults, in order.
FULL_RUN = [
    "app startup",
    "pool setup",
    "settings setup in AnyIO worker thread",
    "cache setup started",
    "cache setup",
    "cache teardown started",
    "cache teardown",
    "settings teardown",
    "pool teardown",
    "app shutdown",
]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "servers: starts real server processes or runs long load and soak loops "
        "(run them alone with -m servers, skip them with -m 'not servers')",
    )


def join_new_threads(
    baseline: Collection[threading.Thread], timeout: float = STOP_TIMEOUT
) -> list[threading.Thread]:
    """
    Wait for the threads started since the baseline to end (a TestClient's or an
    event loop's worker threads end soon after their run); those still alive after
    the timeout, which a run that keeps a thread would leave.
    """
    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if thread not in baseline:
            thread.join(max(0.0, deadline - time.monotonic()))
    return [thread for thread in threading.enumerate() if thread not in baseline]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_command(server: str, port: int, app: str = APP) -> list[str]:
    python = [sys.executable, "-m"]
    if server == "uvicorn":
        return [*python, "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)]
    if server == "hypercorn":
        return [*python, "hypercorn", app, "--bind", f"127.0.0.1:{port}"]
    if server == "granian":
        return [
            *python,
            "granian",
            "--interface",
            "asgi",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            app,
        ]
    assert server == "gunicorn"
    return [
        *python,
        "gunicorn",
        "--worker-class",
        "uvicorn_worker.UvicornWorker",
        "--bind",
        f"127.0.0.1:{port}",
        app,
    ]


class Server:
    def __init__(
        self, command: list[str], port: int, directory: Path, env: dict[str, str]
    ) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.events_file = directory / "events.txt"
        self.events_file.touch()
        self.log_file = directory / "server.log"
        environment = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
            "LIFESPAN_TEST_EVENTS": str(self.events_file),
            "LIFESPAN_TEST_GATES": str(directory),
            **env,
        }
        with self.log_file.open("w") as log:
            self.process = subprocess.Popen(
                command,
                cwd=directory,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def open_gate(self, name: str) -> None:
        """Let the work waiting at the gate ``name`` go on (see app.py)."""
        (self.events_file.parent / name).touch()

    def log(self) -> str:
        return self.log_file.read_text()

    def events(self) -> list[tuple[int, str]]:
        lines = self.events_file.read_text().splitlines()
        return [
            (int(pid), event) for pid, event in (line.split(" ", 1) for line in lines)
        ]

    def event_names(self) -> list[str]:
        return [event for _, event in self.events()]

    def lifecycle(self) -> list[str]:
        """The events of the app's lifespan and its dependencies, in order."""
        return [
            event for event in self.event_names() if not event.startswith("request ")
        ]

    def wait_for(
        self,
        condition: Callable[[], bool],
        what: str,
        timeout: float = START_TIMEOUT,
    ) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None:
                pytest.fail(f"server exited while waiting for {what}:\n{self.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}:\n{self.log()}")
            time.sleep(0.05)

    def wait_for_event(self, event: str, count: int = 1) -> None:
        self.wait_for(
            lambda: self.event_names().count(event) >= count,
            f"{count} x {event!r}",
        )

    def wait_ready(self) -> int:
        """Wait until the server answers; the process id of the worker that did."""
        answers: list[int] = []

        def ready() -> bool:
            try:
                response = httpx.get(f"{self.url}/health", timeout=1)
            except httpx.TransportError:
                return False
            if response.status_code != 200:
                return False
            answers.append(response.json()["pid"])
            return True

        self.wait_for(ready, "the server to answer")
        return answers[-1]

    def wait_for_workers_to_be_stopped(self) -> None:
        """
        Wait until the server's main process waits for its workers to exit (its
        main thread in the kernel's do_wait): granian's does once it has passed a
        stop signal on to them (terminate, then join), and not before.
        """
        wchan = Path(f"/proc/{self.process.pid}/wchan")
        self.wait_for(
            lambda: wchan.read_text() == "do_wait",
            "the main process to wait for its workers",
            STOP_TIMEOUT,
        )

    def sockets_on_port(self, worker: int) -> list[str]:
        """The states of the worker's TCP sockets on the port (none after it exits)."""
        try:
            connections = psutil.Process(worker).net_connections("tcp")
        except psutil.NoSuchProcess:
            return []
        return [c.status for c in connections if c.laddr.port == self.port]

    def wait_for_shutdown_to_begin(self, worker: int) -> None:
        """
        Wait until the worker process has closed its listening socket: the first
        thing uvicorn, hypercorn and granian do when they start to shut down, before
        they wait for the requests and connections still open. (Hypercorn's
        supervisor keeps its own copy of the socket open until it exits: ask the
        worker.)
        """

        self.wait_for(
            lambda: psutil.CONN_LISTEN not in self.sockets_on_port(worker),
            f"worker {worker} to stop listening (its shutdown to begin)",
            STOP_TIMEOUT,
        )

    def wait_for_connections_to_close(self, worker: int) -> None:
        """
        Wait until the worker process has closed every connection on its port
        but its listening socket: the clients that left are gone from the server
        too. (uvicorn stopped while it still holds a WebSocket connection it has
        already rejected crashes in its shutdown: websockets' `send_eof()` asserts
        that no EOF was sent yet.)
        """

        self.wait_for(
            lambda: set(self.sockets_on_port(worker)) <= {psutil.CONN_LISTEN},
            f"worker {worker} to close its connections",
            STOP_TIMEOUT,
        )

    def wait_exit(self, timeout: float = STOP_TIMEOUT) -> int:
        try:
            returncode = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"server still running after {timeout} s:\n{self.log()}")
        # Nothing of the server (workers included) may outlive it.
        self.wait_for_group_exit()
        return returncode

    def stop(self, signum: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        self.process.send_signal(signum)
        return self.wait_exit(timeout)

    def group_alive(self) -> bool:
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def wait_for_group_exit(self) -> None:
        deadline = time.monotonic() + 5
        while self.group_alive():
            if time.monotonic() > deadline:
                pytest.fail(f"server processes left running:\n{self.log()}")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.group_alive():
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(STOP_TIMEOUT)


Serve = Callable[..., Server]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    servers: list[Server] = []

    def start(server: str, *args: str, app: str = APP, **env: str) -> Server:
        port = free_port()
        directory = tmp_path / f"server{len(servers)}"
        directory.mkdir()
        started = Server(
            [*server_command(server, port, app), *args], port, directory, env
        )
        servers.append(started)
        return started

    yield start
    for started in servers:
        started.kill()
