import json
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from .conftest import (
    CLIENT_TIMEOUT,
    HYPERCORN_APPLIES_GRACEFUL_TIMEOUT,
    Serve,
    Server,
)

pytestmark = [pytest.mark.servers, pytest.mark.timeout(120)]

# The gate the slow requests wait at (app.py): the test opens it when it decides.
GATE = "requests"


def get_json(url: str) -> Any:
    response = httpx.get(url, timeout=CLIENT_TIMEOUT)
    assert response.status_code == 200, response.text
    return response.json()


def stream_lines(url: str) -> list[str]:
    with httpx.stream("GET", url, timeout=CLIENT_TIMEOUT) as response:
        assert response.status_code == 200
        return list(response.iter_lines())


@contextmanager
def open_websocket(server: Server) -> Iterator[ClientConnection]:
    """A WebSocket that its endpoint has answered once."""
    with connect(
        f"ws://127.0.0.1:{server.port}/ws",
        open_timeout=CLIENT_TIMEOUT,
        close_timeout=CLIENT_TIMEOUT,
    ) as websocket:
        websocket.send("hello")
        websocket.recv(timeout=CLIENT_TIMEOUT)
        yield websocket


def teardown_comes_after(server: Server, *requests: str) -> None:
    events = server.event_names()
    assert not [event for event in events if "after teardown" in event]
    first_teardown = events.index("cache teardown started")
    for request in requests:
        assert f"request {request}" in events[:first_teardown], events


# Hypercorn gets a graceful timeout longer than the test can take (a bound only):
# what hypercorn does at its graceful timeout is the next test's.
@pytest.mark.parametrize(
    ("server_name", "args"),
    [("uvicorn", []), ("hypercorn", ["--graceful-timeout", "60"]), ("granian", [])],
    ids=["uvicorn", "hypercorn", "granian"],
)
def test_in_flight_work_ends_before_teardown(
    serve: Serve, server_name: str, args: list[str]
):
    server = serve(server_name, *args)
    worker = server.wait_ready()
    with ThreadPoolExecutor(3) as executor, open_websocket(server) as websocket:
        slow = executor.submit(get_json, f"{server.url}/slow?gate={GATE}")
        slow_sync = executor.submit(get_json, f"{server.url}/slow-sync?gate={GATE}")
        stream = executor.submit(
            stream_lines, f"{server.url}/stream?chunks=10&gate={GATE}"
        )
        for event in ("slow started", "slow sync started", "stream started"):
            server.wait_for_event(f"request {event}")

        server.process.send_signal(signal.SIGTERM)
        # The server is shutting down, and every request is still running: it
        # can't have ended before the gate opens.
        server.wait_for_shutdown_to_begin(worker)
        server.open_gate(GATE)

        assert slow.result(timeout=CLIENT_TIMEOUT)["closed"] is False
        assert slow_sync.result(timeout=CLIENT_TIMEOUT)["closed"] is False
        assert stream.result(timeout=CLIENT_TIMEOUT) == [str(n) for n in range(10)]
        if server_name == "hypercorn":
            # Hypercorn still serves the WebSocket, with the live values, until
            # its client closes it.
            websocket.send("while shutting down")
            answer = json.loads(websocket.recv(timeout=CLIENT_TIMEOUT))
            assert answer["pool"]["closed"] is False
            websocket.close()
        else:
            # Uvicorn and granian close it themselves.
            with pytest.raises(ConnectionClosed):
                websocket.recv(timeout=CLIENT_TIMEOUT)
    server.wait_exit()

    teardown_comes_after(
        server, "slow done", "slow sync done", "stream done", "ws ended"
    )


GRACEFUL_TIMEOUT = 1


def test_hypercorn_graceful_timeout(serve: Serve):
    server = serve("hypercorn", "--graceful-timeout", str(GRACEFUL_TIMEOUT))
    worker = server.wait_ready()
    with ThreadPoolExecutor(1) as executor, open_websocket(server) as websocket:
        slow = executor.submit(
            httpx.get, f"{server.url}/slow?gate={GATE}", timeout=CLIENT_TIMEOUT
        )
        server.wait_for_event("request slow started")

        server.process.send_signal(signal.SIGTERM)
        server.wait_for_shutdown_to_begin(worker)

        if HYPERCORN_APPLIES_GRACEFUL_TIMEOUT:
            # The gate stays shut: the request outlasts the graceful timeout by
            # construction. Hypercorn cancels its endpoint (and answers 500) and
            # the WebSocket's, and drops the connection.
            response = slow.result(timeout=CLIENT_TIMEOUT)
            assert response.status_code == 500, response.text
            with pytest.raises(ConnectionClosed):
                websocket.recv(timeout=CLIENT_TIMEOUT)
            server.wait_exit()
            events = server.event_names()
            assert "request slow done" not in events
            assert not [event for event in events if "ws closed" in event]
            teardown_comes_after(server, "ws ended")
            return

        # From Python 3.12 on (hypercorn issue #308), hypercorn waits for both
        # well past its graceful timeout, and would wait as long as they run.
        time.sleep(GRACEFUL_TIMEOUT + 2)
        assert not slow.done()
        websocket.send("after the graceful timeout")
        answer = json.loads(websocket.recv(timeout=CLIENT_TIMEOUT))
        assert answer["pool"]["closed"] is False
        server.open_gate(GATE)
        response = slow.result(timeout=CLIENT_TIMEOUT)
        assert response.status_code == 200, response.text
        assert response.json()["closed"] is False
        websocket.close()
    server.wait_exit()

    teardown_comes_after(server, "slow done", "ws ended")
