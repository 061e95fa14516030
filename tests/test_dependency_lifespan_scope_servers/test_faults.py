import signal
from pathlib import Path

import pytest

from .conftest import FULL_RUN, Serve

pytestmark = [pytest.mark.servers, pytest.mark.timeout(60)]

SET_UP_BEFORE_THE_FAILURE = [
    "app startup",
    "pool setup",
    "settings setup in AnyIO worker thread",
    "cache setup started",
    "settings teardown",
    "pool teardown",
]


@pytest.mark.parametrize(
    ("server_name", "args"),
    [
        ("uvicorn", []),
        # Hypercorn's supervisor of worker processes exits with 0 whatever its
        # worker did: serve in its own process to see the exit status.
        ("hypercorn", ["--workers", "0"]),
        ("granian", []),
        ("gunicorn", []),
    ],
)
def test_startup_failure_stops_the_server(
    serve: Serve, server_name: str, args: list[str]
):
    server = serve(server_name, *args, LIFESPAN_TEST_FAIL_SETUP="1")

    returncode = server.wait_exit()

    assert returncode != 0, server.log()
    assert "RuntimeError: cache setup failed on purpose" in server.log()
    # What was set up before the failure is torn down, in reverse order; then the
    # app's own lifespan is unwound as at a normal shutdown: its shutdown code runs.
    assert server.lifecycle() == [*SET_UP_BEFORE_THE_FAILURE, "app shutdown"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
@pytest.mark.parametrize("server_name", ["uvicorn", "hypercorn", "granian"])
def test_stop_while_a_dependency_is_setting_up(
    serve: Serve, server_name: str, signum: int
):
    server = serve(server_name, LIFESPAN_TEST_HOLD_SETUP="1")
    server.wait_for_event("cache setup started")

    # The set-up waits at its gate until the signal has reached the server.
    server.process.send_signal(signum)
    if server_name == "granian":
        # Granian's main process passes it on to its worker, which must have it
        # before its set-up ends: granian 2.8.7 loses a stop signal that reaches
        # a worker just as its lifespan startup ends (the worker then serves on).
        server.wait_for_workers_to_be_stopped()
    server.open_gate("setup")

    # These servers let the startup finish, then shut down without serving.
    returncode = server.wait_exit()
    assert returncode in (0, -signum), server.log()
    assert server.lifecycle() == FULL_RUN


@pytest.mark.parametrize("server_name", ["uvicorn", "hypercorn", "granian"])
def test_stop_again_while_a_dependency_is_tearing_down(serve: Serve, server_name: str):
    server = serve(server_name, LIFESPAN_TEST_HOLD_TEARDOWN="1")
    server.wait_ready()
    server.process.send_signal(signal.SIGTERM)
    server.wait_for_event("cache teardown started")
    # A second Ctrl-C while the teardown waits at its gate.
    server.process.send_signal(signal.SIGINT)
    server.open_gate("teardown")

    returncode = server.wait_exit()

    assert returncode in (0, -signal.SIGTERM, -signal.SIGINT), server.log()
    # Every teardown ran, the slow one to its end.
    assert server.lifecycle() == FULL_RUN


def hypercorn_config(tmp_path: Path, **timeouts: int) -> str:
    config = tmp_path / "hypercorn.toml"
    config.write_text("".join(f"{key} = {value}\n" for key, value in timeouts.items()))
    return str(config)


# In the two tests below, the gate never opens: the set-up or the teardown
# outlasts hypercorn's timeout by construction, and only the cancellation ends it.


def test_hard_cancellation_of_a_slow_setup(serve: Serve, tmp_path: Path):
    # Hypercorn cancels the lifespan task when its startup timeout expires.
    config = hypercorn_config(tmp_path, startup_timeout=1)
    server = serve("hypercorn", "--config", config, LIFESPAN_TEST_HOLD_SETUP="1")

    server.wait_exit()

    assert "Timeout whilst awaiting startup" in server.log()
    # The slow set-up was interrupted; what was set up before it is torn down.
    assert server.lifecycle() == SET_UP_BEFORE_THE_FAILURE


def test_hard_cancellation_of_a_slow_teardown(serve: Serve, tmp_path: Path):
    # Hypercorn cancels the lifespan task when its shutdown timeout expires.
    config = hypercorn_config(tmp_path, shutdown_timeout=1)
    server = serve("hypercorn", "--config", config, LIFESPAN_TEST_HOLD_TEARDOWN="1")
    server.wait_ready()

    server.stop(signal.SIGTERM)

    assert "Timeout whilst awaiting shutdown" in server.log()
    # The slow teardown was interrupted at its await; every other teardown of
    # what was set up still ran, and so did the app's own shutdown code.
    assert server.lifecycle() == [
        "app startup",
        "pool setup",
        "settings setup in AnyIO worker thread",
        "cache setup started",
        "cache setup",
        "cache teardown started",
        "settings teardown",
        "pool teardown",
        "app shutdown",
    ]
